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
  inherited.
* a helper that ``multiprocessing`` started anew (the ``spawn`` and
  ``forkserver`` start methods: the default on macOS and Windows, and from
  Python 3.14 on Linux): a pool's worker (``Pool``, ``ProcessPoolExecutor``)
  or a ``Manager``'s server. It runs the parent's main program again, or
  imports the app's module to unpickle its jobs, and so makes an instance
  of its own: each announced itself as one more idle instance after the
  grace, a pool of 8 as 8 of them. Known by the loop its main thread runs:
  :data:`HELPER_LOOPS`. (A fork server that loads the main program, as
  Python's does from 3.13.8, is a pre-fork master: its workers inherit its
  instance, as above.) Servers whose ``multiprocessing`` workers load the
  app themselves (granian, ``uvicorn --workers``) run none of these loops:
  their workers are announced as in any process, idle or not.

Such a process is no instance: it does not announce itself after the grace,
and its exit sends nothing. Should it serve or record after all, it is one
from then on, as any process. Should it count, so is it, unless its main
thread runs one of the loops here, or a pre-fork master's arbiter
(:func:`prefork_master`), when it counts (see ``Flusher._idle``). Nothing
here runs per request: the fork hook sets a flag, and the main thread's
stack is looked at when the grace is over, and as a process that served
nothing is first seen counting.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from types import FrameType

from .green import threads_are_green

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


#: The loops a ``multiprocessing`` helper's main thread runs for its whole
#: life, as (module, function): each takes jobs or requests from the process
#: that started it, never an HTTP request itself. A server that one of its
#: jobs starts (``uvicorn.run`` in a pool) is announced at its first request,
#: not idle after the grace. A loop a later Python renames is only missed:
#: its helpers are announced after the grace, as before.
HELPER_LOOPS: frozenset[tuple[str, str]] = frozenset(
    {
        ("multiprocessing.pool", "worker"),  # a Pool's worker process
        ("concurrent.futures.process", "_process_worker"),  # ProcessPoolExecutor's
        ("multiprocessing.managers", "serve_forever"),  # a Manager()'s server process
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
    return main_thread_runs(SUPERVISOR_LOOPS)


#: Pre-fork servers whose master may load the app (``--preload``): the module
#: its master runs in, from loading the app to its last loop, and the modules
#: a worker it forked runs in (whose stack still holds the master's frames
#: it was forked from).
PREFORK_MASTERS: dict[str, str] = {"gunicorn.arbiter": "gunicorn.workers"}


def prefork_master() -> str | None:
    """The pre-fork server whose master this process is, as its module;
    None when it is none (a worker of one included).

    Why not "this process forked": a script's process pool forks too, and
    its counts must go. Why the main thread's stack: gunicorn's master loads
    a ``--preload`` app inside its arbiter, then runs its loop there, so it
    is seen at any time after the app counted; a worker's stack holds those
    frames too, under its own. Never raises.
    """
    found = None
    for frame in _main_thread_frames():
        module = frame.f_globals.get("__name__", "")
        for master, workers in PREFORK_MASTERS.items():
            if module.startswith(workers):
                return None  # a worker of it
            if module == master:
                found = master
    return found


def helper_loop() -> str | None:
    """The ``multiprocessing`` helper's loop this process's main thread runs,
    as ``module.function``; None when it runs none of :data:`HELPER_LOOPS`.

    The main thread, because ``multiprocessing`` runs a helper's work there,
    under its bootstrap; the job a pool's worker runs at that moment is above
    the loop on the same stack, and does not hide it. Never raises.
    """
    return main_thread_runs(HELPER_LOOPS)


def main_thread_runs(loops: frozenset[tuple[str, str]]) -> str | None:
    """The first of ``loops`` found on the main thread's stack, innermost
    first, as ``module.function``; None when none is there (or the stack
    cannot be read)."""
    for frame in _main_thread_frames():
        where = (frame.f_globals.get("__name__", ""), frame.f_code.co_name)
        if where in loops:
            return ".".join(where)
    return None


def _main_thread_frames() -> Iterator[FrameType]:
    """The main thread's frames, innermost first; none where they cannot be read."""
    try:
        frame: FrameType | None = sys._current_frames().get(threading.main_thread().ident or 0)
        if frame is None and threads_are_green():
            frame = _main_greenlets_frame()
    except Exception:
        return
    while frame is not None:
        yield frame
        frame = frame.f_back


def _main_greenlets_frame() -> FrameType | None:
    """Under gevent, what the main thread runs: the frame of the root greenlet
    of this OS thread (the one gevent's hub switches back to), or this very
    frame when that greenlet is the one running now; None without greenlets.

    Why: once gevent patched ``threading`` (``monkey.patch_all()`` in the app,
    under ``gunicorn --preload``), the main thread's ident is a greenlet's,
    which ``sys._current_frames()`` does not know: no stack was found, and a
    master that counted as it loaded the app reported as an instance.
    """
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return None
    current = greenlet.getcurrent()
    root = current
    while root.parent is not None:
        root = root.parent
    if root is current:
        return sys._getframe(1)
    frame: FrameType | None = root.gr_frame
    return frame


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
