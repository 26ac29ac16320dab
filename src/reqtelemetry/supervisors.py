"""Processes that load the app but leave serving it to processes they start.

An instance is a process that serves (see :data:`.flusher.STARTUP_GRACE`). A
few processes build the app's ``Telemetry`` and never serve, for as long as
they live, because they start other processes that do:

* a pre-fork server's master that loads the app before it forks its workers
  (gunicorn ``--preload``, servers built on ``os.fork`` or ``multiprocessing``'s
  fork): each worker becomes an instance of its own as it is forked, and the
  master then sat idle and reported as one more for its whole life. That is
  known from the fork itself (``os.register_at_fork``), whatever the server.
* a development server's reloader parent, which runs the app's module and then
  starts the server anew in a child process at each change: Werkzeug's
  (``flask run --debug``, ``app.run(debug=True)``), Django's ``runserver`` (where
  the settings build the ``Telemetry``), and uvicorn's supervisors when a script
  calls ``uvicorn.run("module:app", reload=True)`` or ``workers=2``. Those start
  the child as a new program (no fork hooks run), so they are known by the
  loop their main thread runs: :data:`SUPERVISOR_LOOPS`.

* a helper that ``multiprocessing`` forked from the process that serves (a
  ``Pool``'s or a ``ProcessPoolExecutor``'s worker, which inherits the app's
  instance, made anew): it runs the app's jobs, not its requests, and
  announced itself as one more idle instance after the grace. Known by
  ``multiprocessing.parent_process()`` in a child whose instance was
  inherited. Servers whose ``multiprocessing`` workers load the app
  themselves (granian, ``uvicorn --workers``, spawned) make an instance of
  their own in each, which is announced as in any process, idle or not.

Such a process is no instance: it does not announce itself after the grace,
and its exit sends nothing. Should it serve, record or count after all, it
is one from then on, as any process. Nothing here runs per request: the
fork hook sets a flag, and the main thread's stack is looked at once, when
the grace is over.
"""

from __future__ import annotations

import sys
import threading
from types import FrameType

#: The loops a process's main thread runs while it starts and restarts the
#: processes that serve, as (module, function). Looked for anywhere on the
#: main thread's stack: each of them waits for its child in a call of its own.
#: The children themselves never run these (Werkzeug's and Django's watch files
#: in ``ReloaderLoop.run`` and ``start_django``; uvicorn's are new programs).
SUPERVISOR_LOOPS: frozenset[tuple[str, str]] = frozenset(
    {
        ("werkzeug._reloader", "restart_with_reloader"),  # ReloaderLoop's method
        ("django.utils.autoreload", "restart_with_reloader"),
        ("uvicorn.supervisors.basereload", "run"),  # BaseReload.run: --reload
        ("uvicorn.supervisors.multiprocess", "run"),  # Multiprocess.run: --workers
    }
)


def supervisor_loop() -> str | None:
    """The supervisor loop this process's main thread runs, as ``module.function``;
    None when it runs none of :data:`SUPERVISOR_LOOPS`.

    Called from the flusher's thread, once. Why the main thread: the reloaders
    run there (Werkzeug's and Django's children also watch files on their main
    thread, but in other functions), and it is the one thread every process has.
    Never raises (a Python without ``sys._current_frames`` finds none): the
    flusher's thread must go on to report.
    """
    try:
        frame: FrameType | None = sys._current_frames().get(threading.main_thread().ident or 0)
    except Exception:
        return None
    while frame is not None:
        where = (frame.f_globals.get("__name__", ""), frame.f_code.co_name)
        if where in SUPERVISOR_LOOPS:
            return ".".join(where)
        frame = frame.f_back
    return None


def started_by_multiprocessing() -> bool:
    """Whether this process was started by ``multiprocessing`` (its parent is
    known to it). Looked up, not imported: a process that never imported it
    was not started by it."""
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None:
        return False
    try:
        return multiprocessing.parent_process() is not None
    except Exception:  # another multiprocessing than the standard library's
        return False
