"""gevent: the flusher as one of its greenlets, and what a greenlet must not do.

Under ``gunicorn -k gevent`` or ``uWSGI --gevent`` the app patches ``threading``,
so the flusher is a greenlet on the process's one thread. Two of the flusher's
tools assume a thread of its own: the deadline timer (a thread to cut the
request's socket) and the minting child (a subprocess waited for). As
greenlets, the timer's end raised ``KeyError`` in gevent's ``threading``, and
the child's fork ran gevent's fork hook, which failed an assertion: two
tracebacks in the app's log for every report. Under gevent the deadline is a
``gevent.Timeout``, and stamps are minted here, in slices that let the app's
greenlets run between them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

#: The process whose gevent was asked to call back after its patching.
_subscribed_in: int | None = None


def threads_are_green() -> bool:
    """Whether gevent has patched ``threading`` in this process."""
    return _says_patched("gevent.monkey", "is_module_patched", "threading")


def _says_patched(module: str, probe: str, name: str) -> bool:
    """Whether the patching library's ``module``, if imported, says (its
    function ``probe``) that it has patched ``name`` in this process."""
    library = sys.modules.get(module)
    if library is None:
        return False
    try:
        return bool(getattr(library, probe)(name))
    except Exception:  # not the library this was written for: threads are threads
        return False


def green_threads_coming() -> bool:
    """Whether this process is a gevent worker that has not patched ``threading`` yet.

    gunicorn's gevent workers, and uWSGI's ``--gevent``, patch in each worker
    after the fork, after Python's fork hooks and uWSGI's post-fork hook ran.
    A real thread started before that runs beside gevent's hub, and its
    flushes failed (the minting child cannot be waited for from there);
    started after, it is a greenlet like the app's. Only those servers say a
    patch is coming: gevent merely imported (a library's optional use, a
    test suite's) is no sign of one, and a flusher waiting for it never ran.
    """
    if threads_are_green():
        return False
    uwsgi = sys.modules.get("uwsgi")
    options = getattr(uwsgi, "opt", None)
    if isinstance(options, dict) and ("gevent" in options or b"gevent" in options):
        return True  # uWSGI's --gevent: its late patch imports gevent after our hook ran
    # gunicorn -k gevent: the master loaded the worker class, and gevent with it.
    if "gevent" in sys.modules and "gunicorn.workers.ggevent" in sys.modules:
        return True
    # gunicorn -k eventlet: its worker calls eventlet.monkey_patch() after the
    # fork too. A real thread started before ran beside eventlet's hub: past
    # its startup report it sent nothing, and at exit its wait for the final
    # report failed ("Cannot switch to a different thread"). Started at the
    # worker's first request instead (eventlet says nothing once it patched),
    # it is one of eventlet's green threads.
    return "gunicorn.workers.geventlet" in sys.modules and not _eventlet_patched_threading()


def _eventlet_patched_threading() -> bool:
    """Whether eventlet has patched ``threading`` in this process."""
    return _says_patched("eventlet.patcher", "is_monkey_patched", "thread")


def when_patched(callback: Callable[[], None]) -> None:
    """Call ``callback`` once gevent has patched this process (its
    ``GeventDidPatchAllEvent``, which gunicorn's and uWSGI's gevent workers
    trigger with ``patch_all``); once per process, however often asked.

    The callback must not raise: it runs inside the server's patching.
    """
    global _subscribed_in
    if _subscribed_in == os.getpid():
        return
    try:
        from gevent import events
    except Exception:  # not the gevent this was written for: the first request starts it
        return
    _subscribed_in = os.getpid()
    done = False

    def subscriber(event: object) -> None:
        nonlocal done
        if not done and isinstance(event, events.GeventDidPatchAllEvent):
            done = True
            callback()

    events.subscribers.append(subscriber)
