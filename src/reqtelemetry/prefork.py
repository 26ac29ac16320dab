"""uWSGI: the flusher thread starts in each worker, never in the master.

Why: by default uWSGI loads the app in its master process and then forks the
workers from it in C, without Python's fork hooks (``os.register_at_fork``
callbacks run only with ``--py-call-uwsgi-fork-hooks``). A thread of the
master that holds the GIL at that moment (the flusher, busy with its startup
report) holds it in every worker's copy too, where that thread does not
exist: each worker then waited for the GIL forever, and the app answered no
request at all. Workers forked without the hooks would also have kept the
master's instance id and salt.

So while uWSGI's app is loaded before its workers exist, nothing is started:
each worker starts its own instance from uWSGI's post-fork hook (which runs
in every worker, the one that was never forked included), or, should that
hook have been replaced by code that does not chain it, on its first request.
With ``--lazy-apps`` each worker loads the app itself, and everything starts as
anywhere else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

_installed = False
_exit_installed = False


def uwsgi_module() -> Any:
    """uWSGI's own module when this process runs under uWSGI, else None.

    It exists only inside uWSGI, which creates it; a ``sys.modules`` lookup
    costs nothing elsewhere, where an import would search the whole path.
    """
    module = sys.modules.get("uwsgi")
    return module if module is not None and hasattr(module, "worker_id") else None


def not_a_worker() -> bool:
    """Whether this is a uWSGI process that serves no request (worker id 0): the
    master, a mule or the spooler. uWSGI runs its post-fork hook in the last
    two too, and each reported as an idle instance of the deployment.
    """
    uwsgi = uwsgi_module()
    if uwsgi is None:
        return False
    try:
        return bool(uwsgi.worker_id() == 0)
    except Exception:  # not the uWSGI this was written for: start as elsewhere
        return False


def workers_fork_later() -> bool:
    """Whether this process is uWSGI's, loading the app before forking its
    workers: the master, which is no worker (with ``--lazy-apps`` each worker
    loads the app itself, and has an id of its own)."""
    return not_a_worker()


def _chained(function: Callable[[], None], then: Callable[[], None] | None) -> Callable[[], None]:
    """A hook that calls ``function``, then the hook it replaces (``then``), whatever happens."""

    def hook() -> None:
        try:
            function()
        finally:
            if then is not None:
                then()

    return hook


def call_in_each_worker(function: Callable[[], None]) -> None:
    """Have uWSGI call ``function`` in each worker once it is forked (once per process).

    Chained after any hook already set, and into ``uwsgidecorators``' chain
    when the app uses that module (importing it here would replace the app's
    spooler, and it refuses to load without a master process).
    """
    global _installed
    if _installed:
        return
    uwsgi = uwsgi_module()
    decorators = sys.modules.get("uwsgidecorators")
    chain = getattr(decorators, "postfork_chain", None)
    hook = getattr(uwsgi, "post_fork_hook", None)
    if isinstance(chain, list) and hook is getattr(decorators, "postfork_chain_hook", None):
        chain.append(function)
    else:
        uwsgi.post_fork_hook = _chained(function, hook)
    _installed = True


def call_at_worker_exit(function: Callable[[], None]) -> None:
    """Have uWSGI call ``function`` as each worker exits (once per process).

    Why: under ``--gevent`` uWSGI's workers exit without running Python's
    ``atexit`` functions, and their final report was lost; uWSGI's own
    ``uwsgi.atexit`` runs there. Chained after any the app set; never called
    in the master, a mule or the spooler, which report nothing.
    """
    global _exit_installed
    uwsgi = uwsgi_module()
    if uwsgi is None or _exit_installed:
        return

    def in_a_worker() -> None:
        if not not_a_worker():
            function()

    uwsgi.atexit = _chained(in_a_worker, getattr(uwsgi, "atexit", None))
    _exit_installed = True
