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

import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from .green import threads_are_green
from .hashcash import GROUP_STOP_SIGNALS

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

    The stop signals are ignored from there on: the worker is on its way out,
    and one more SIGINT (the master's, after the terminal's) would end it
    mid-report (see :func:`leave_signals_to_the_main_thread`). The report's
    wait is bounded by ``shutdown_timeout``.
    """
    global _exit_installed
    uwsgi = uwsgi_module()
    if uwsgi is None or _exit_installed:
        return

    def in_a_worker() -> None:
        if not not_a_worker():
            _ignore_stop_signals()
            function()

    uwsgi.atexit = _chained(in_a_worker, getattr(uwsgi, "atexit", None))
    _exit_installed = True


#: What the kernel raises in the very thread that faulted: never blocked.
_FAULTS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT})


def leave_signals_to_the_main_thread() -> None:
    """Under uWSGI, block the process's signals in the calling thread (one of
    reqtelemetry's), as uWSGI does in each thread of its own.

    Why: a uWSGI worker handles SIGINT in C, by calling ``exit()``, which runs
    the exit hook that sends the final report inside that handler, on the
    main thread, where SIGINT is then blocked. At Ctrl-C the master's own
    SIGINT to each worker follows the terminal's within a microsecond, and
    the kernel gave it to a thread that did not block it: the flusher, which
    called ``exit()`` again, and the worker died mid-report (the final reports
    of 7 runs in 10 were lost). Blocked here, it waits while the main thread
    reports. Elsewhere nothing changes, nor on the main thread, nor for a
    greenlet (under gevent, reqtelemetry's "threads" run on the main thread,
    which would then never see its SIGINT). Never raises.
    """
    if (
        uwsgi_module() is None
        or threads_are_green()
        or threading.current_thread() is threading.main_thread()
    ):
        return
    with contextlib.suppress(OSError, ValueError, AttributeError):
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _FAULTS)


def _ignore_stop_signals() -> None:
    """Ignore the stop signals from now on, in a uWSGI worker that is exiting:
    the app's own threads take signals too, and a second SIGINT there would
    end the report as well. Only possible on the main thread, where uWSGI
    calls its exit hook."""
    for number in GROUP_STOP_SIGNALS:  # what ends a worker, from its master or a terminal
        with contextlib.suppress(OSError, ValueError):
            signal.signal(number, signal.SIG_IGN)
