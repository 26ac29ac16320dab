"""The background thread that turns aggregates into reports.

Every interval (±10 % jitter, so that a fleet started together does not report
in waves) it takes the recorder's batch, the app metrics and the traits, builds
the report bodies and hands them to the transport — or, in debug mode, writes
them to stderr. A batch that cannot be delivered is merged back into the
recorder, so an outage loses nothing (until the key cap, which is counted).
A report the collector may have stored although no answer said so (each was
lost, or held past the timeout by a proxy) is not merged back: it is kept as it
is (:class:`Unconfirmed`) and goes first at the next flush, with its stamp, so
that the collector stores it once whatever happened to it.

Nothing here runs on a request thread or the event loop. ``flush()`` can be
called from any thread (it serialises with the timer through one lock). The
timer thread runs at the lowest CPU priority (see
:func:`lower_this_threads_priority`), so its flushes use only CPU the app leaves.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import IO, TYPE_CHECKING

from .config import redacted_url
from .metrics import GAUGE_SAMPLE_SECONDS
from .payload import Envelope, Pacing, Report, build_reports
from .prefork import leave_signals_to_the_main_thread
from .recorder import Batch
from .said_once import warn_once
from .supervisors import (
    helper_loop,
    prefork_master,
    started_by_multiprocessing,
    supervisor_loop,
)
from .traits import deployment_id_for, detect_test_runner, load_deployment_id
from .transport import Outcome, Result, Sent, Transport, started, waitable

if TYPE_CHECKING:
    from .telemetry import Telemetry

logger = logging.getLogger("reqtelemetry")

JITTER = 0.10
#: Consecutive undelivered flushes after which the reason is logged at WARNING (once
#: per process; DEBUG otherwise). One failure is an outage the data waits out; two
#: in a row (the startup report and the next) more often mean a proxy, a private CA
#: or a wrong endpoint, which only the operator can fix, and only if told.
FAILURES_BEFORE_WARNING = 2
_failure_warned = False
#: The flusher thread's nice value: the lowest priority, which any process may ask for.
FLUSHER_NICE = 19
#: The smallest body size reports are split at after a ``413`` (the collector's
#: body cap is below ``max_payload_bytes``). A report's own fields and the
#: envelope take some 2 KB, so below this little room is left for records; a
#: collector whose cap is that small refuses nearly every report anyway. A
#: single record larger than this still goes, alone in its part.
MIN_SPLIT_BYTES = 4096
#: A ``Retry-After`` longer than this is said at WARNING (once per process): the
#: reports it holds back are not failures, so nothing else would tell the
#: operator that nothing is sent, nor that a process ending meanwhile loses its
#: data, for up to ``max_flush_interval``.
LONG_RETRY_AFTER = 3600.0
#: Seconds the final flush is waited for past the shutdown budget: what it does
#: after its last request ends at the budget (merging an undelivered batch back).
FINAL_FLUSH_GRACE = 0.2
#: The most of a flush's budget its gauges may take (and at most
#: :data:`~reqtelemetry.metrics.GAUGE_SAMPLE_SECONDS`): a slow gauge must leave
#: the report time to go, in the 2 s shutdown budget too.
GAUGE_SHARE = 0.25
#: The most of a flush's budget (what is left of it once the batch is
#: collected) its encoding and delivery may spend in the pauses they make for
#: request threads; past it, they run on without them. A full batch pauses
#: for about 1.5 s: well within a periodic flush's 30 s, but without this
#: limit ``Telemetry.flush(timeout=1.5)`` never delivered one, and kept it
#: for the next flush, which failed as well.
PAUSING_SHARE = 0.25
#: Seconds an instance waits for its first request before it announces itself
#: anyway (or the flush interval, if shorter). A process that loads the app
#: only for a moment (``flask routes``, ``manage.py migrate``, a script that
#: writes the OpenAPI schema) is no instance: it sends nothing, and its exit
#: waits for nothing. Nor is one that leaves serving to processes it started
#: (a pre-fork master, a reloader parent: see :mod:`.supervisors`), however
#: long it lives: it announces itself only once it serves.
STARTUP_GRACE = 60.0
#: How often a waiting instance looks whether anything was recorded without an
#: integration (``Telemetry.record`` called directly).
IDLE_POLL_SECONDS = 1.0


def lower_this_threads_priority() -> bool:
    """Give the calling thread, and only it, the lowest CPU priority (nice 19).

    Why: a flush is some 40 ms of CPU in bursts, and the GIL is not the only
    thing it shares. On a small machine the thread otherwise takes its turn on
    a core from the app's own request threads, its other worker processes and
    whatever else serves the app, and that shows in their p99 (measured by
    ``python -m benchmarks flush_latency``). Niced, it runs in time nobody
    else wants, and a report waits a little longer.

    Why nice and not ``SCHED_IDLE``, as the minting child has: this thread
    holds the GIL in short bursts, and a thread taken off the CPU while it
    holds the GIL makes every request thread of the process wait until it runs
    again. Under ``SCHED_IDLE`` that can be a long time on a busy machine;
    nice 19 keeps a small, steady share, so the wait stays short.

    Linux only: there, ``setpriority(PRIO_PROCESS, tid)`` sets one thread's
    nice value; never the main thread's, whose id is the process's. Elsewhere
    it sets the whole process's, the app's included, so nothing is done and
    False is returned (as when the call is refused).
    """
    if not sys.platform.startswith("linux"):
        return False
    thread_id = threading.get_native_id()
    if thread_id == os.getpid():
        # The process's main thread: where a green thread runs (gevent's
        # monkey-patched threading, under gunicorn -k gevent or uWSGI --gevent).
        # Reniced, the whole worker ran at nice 19, every request with it.
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, thread_id, FLUSHER_NICE)
    except OSError:  # a sandbox may refuse it: the thread then keeps the app's priority
        return False
    return True


@dataclass
class Unconfirmed:
    """A report the collector may have stored, though no answer said so.

    Why it is kept whole, and not merged back into the recorder as an
    undelivered batch is: merged, its data went again under a new stamp, and
    a collector that had stored it counted it twice. A proxy that held every
    answer past the timeout made each flush store the data of all the
    earlier ones again (a soak counted one period four times). Kept, it goes
    again with its own stamp (:class:`~reqtelemetry.transport.Sent`), and the
    collector stores it once: ``409 replay`` if it has it, stored now if not.

    At most one is kept: a flush stops at the first report not delivered, and
    the next one sends this one before anything else.
    """

    report: Report
    sent: Sent
    #: What the report carries, merged back only if it must go under a new stamp.
    part: Batch
    metrics: dict[str, dict[str, float]]


class Flusher:
    """Owns the timer thread and the report sequence of one Telemetry instance."""

    def __init__(
        self,
        telemetry: Telemetry,
        transport: Transport | None,
        debug_stream: Callable[[], IO[str]] | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.config = telemetry.config
        self.transport = transport
        self._debug_stream = debug_stream or (lambda: sys.stderr)
        self.interval = self.config.flush_interval
        self._rng = random.Random()
        self._init_state()

    def _init_state(self) -> None:
        """Fresh locks and counters: at start, and in a child after fork."""
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        #: Set at the first request (or by ``close``): the startup report waits for it.
        self._first_use = threading.Event()
        self._closing = False
        #: When ``close`` gives up on its final report (monotonic), once it is called.
        self._close_deadline = math.inf
        #: The kind of the flush under way (``startup``, ``periodic``, ``shutdown``).
        self._flush_kind = "periodic"
        #: The flush under way's (each makes its own): set by ``close``, whose
        #: final report waits for it within the shutdown budget, and by a flush
        #: that waits for it within its own budget. The flush then stops pausing.
        self._hurry = threading.Event()
        #: Whether the app served a request (see :meth:`note_use`).
        self.used = False
        #: Whether the thread went on to the startup report: then this is an
        #: instance, and its exit sends the final report.
        self.announced = False
        #: Whether this process forked since the flusher was made (see :meth:`note_fork`).
        self.forked = False
        #: Whether this instance was made anew in a forked child, from its parent's.
        self.inherited = False
        #: Why this process did not announce itself after the grace: it leaves
        #: serving to processes it started (see :mod:`.supervisors`).
        self.serving_elsewhere: str | None = None
        #: The supervising loop its main thread was seen running while it
        #: counted and served nothing (see :meth:`_idle`); None until then.
        self.supervising: str | None = None
        self._thread: threading.Thread | None = None
        #: The thread that may flush: the one :meth:`start` made last. A green
        #: flusher (a greenlet, under gevent) survives a fork, unlike a thread,
        #: and in the child it must stop once the child's own has started.
        self._runner: object = None
        self.sequence = 0
        self.gone = False
        #: Why this process turned out to run tests (then nothing more is sent).
        self.test_run: str | None = None
        self._not_before = 0.0  # monotonic time before which the server asked us to wait
        self.deployment_id: str | None = None
        self.last_result: Result | None = None
        #: Flushes in a row whose reports were not delivered (kept).
        self.failed_flushes = 0
        #: The body size learnt from the collector's ``413`` answers, if any (see
        #: :attr:`max_payload_bytes`).
        self.collector_max_bytes: int | None = None
        #: The report the collector may hold unbeknown to us; a forked child
        #: starts without it (the parent sends it).
        self.unconfirmed: Unconfirmed | None = None

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        runner = self._runner = object()
        self._thread = threading.Thread(
            target=self._run, args=(runner,), name="reqtelemetry-flusher", daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def after_fork_in_child(self, restart: bool = True) -> None:
        """The parent's thread does not exist here: start over with our own
        (unless ``restart`` is False: the caller starts it later).

        What the collector told the parent still holds for its workers: after a
        ``410`` they stay silent, they too wait out a ``Retry-After``, and they
        split reports at the size its ``413`` answers taught.
        """
        had_thread = self._thread is not None
        # The parent's generator, copied, would draw every sibling's jitter
        # too: a deployment's workers would flush in step.
        self._rng = random.Random()
        gone, not_before, cap = self.gone, self._not_before, self.collector_max_bytes
        self._init_state()
        self.gone, self._not_before, self.collector_max_bytes = gone, not_before, cap
        self.inherited = True
        if self.transport is not None:
            self.transport.after_fork_in_child()
        if had_thread and restart:
            self.start()

    def note_use(self) -> None:
        """The app served its first request: the startup report goes now.

        A test runner is looked for here too, while the request is served:
        pytest says it runs a test (``PYTEST_CURRENT_TEST``) only then, and
        ``pytest.main()`` called from a script (as editors run tests) shows
        no other sign. Once seen, nothing is sent.
        """
        if self.used:
            return
        self.used = True
        self._under_a_test_runner()
        self._first_use.set()

    def note_fork(self) -> None:
        """This process forked a child, which is an instance of its own (the
        fork hooks made it one). Called in the parent, by the fork hook.

        Why: a pre-fork server's master (gunicorn ``--preload``) loads the app,
        forks the workers that serve and serves nothing itself, yet reported
        as one more, idle, instance after the grace. A process that forks
        helpers (a ``multiprocessing`` pool) and serves is an instance all the
        same: its first request announces it, as anywhere.
        """
        self.forked = True

    def _idle(self) -> bool:
        """Whether this process never was an instance: no report went, the app
        served nothing, and nothing was recorded or counted.

        Counts make an instance (a script, a process pool's parent, a queue's
        worker that only counts: their counts must go), but not of a process
        that supervises the ones that serve: a preloading gunicorn master
        that counts as it loads the app (``telemetry.count("app.boot")`` at
        import) reported as one more instance, every hour, serving nothing
        (its workers start their counts afresh). Such a process is known by
        what its main thread runs (see :func:`.supervisors.prefork_master`),
        looked at while it counts, and remembered: at exit, its stack is gone.
        """
        if self._requested():
            return False
        if not self.telemetry.metrics.has_counts():
            return True
        if self.supervising is None:
            self.supervising = prefork_master() or supervisor_loop() or helper_loop()
        return self.supervising is not None

    def _requested(self) -> bool:
        """Whether a report went, the app served, or a request was recorded."""
        if self.announced or self.used or self.sequence:
            return True
        recorder = self.telemetry.recorder
        return bool(len(recorder) or recorder.queue)

    def close(self, timeout: float | None = None) -> bool:
        """Stop the thread and make a final flush, never taking more than ``timeout``
        (and :data:`FINAL_FLUSH_GRACE`); none for a process that never was an
        instance (see :data:`STARTUP_GRACE`), which returns at once."""
        budget = self.config.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        self._close_deadline = deadline
        self._closing = True
        self._hurry.set()
        self._first_use.set()
        self._wake.set()
        if self._idle():
            if self.transport is not None:
                self.transport.close()
            return False
        if self.transport is not None:
            self.transport.interrupt()
        if budget <= 0:  # no time left for it (the exit's budget is spent)
            return False
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(waitable(deadline - time.monotonic()))
        return self._final_flush(deadline)

    def _final_flush(self, deadline: float) -> bool:
        """The shutdown report, sent from a thread of its own that is waited for until ``deadline``.

        Why a thread: a request's deadline cuts its socket (see
        ``Transport._deadline``), but looking the collector's name up comes
        before any socket, and an unanswering resolver holds the caller for
        as long as the C library retries (10 s and more per nameserver with
        glibc's defaults). The final report's connection is nearly always a
        new one, its keep-alive long expired. Left behind, the thread is a
        daemon and ends with the process. Where no thread can be started
        (Python 3.12 refuses one in an ``atexit`` function), the report is
        sent from the calling thread.
        """
        delivered: list[bool] = []

        def flush_then_close() -> None:
            try:
                budget = waitable(deadline - time.monotonic())
                delivered.append(self.flush(kind="shutdown", budget=budget))
            finally:
                if self.transport is not None:
                    self.transport.close()

        def in_its_own_thread() -> None:
            leave_signals_to_the_main_thread()  # this thread's, never the caller's
            flush_then_close()

        worker = threading.Thread(
            target=in_its_own_thread, name="reqtelemetry-final-flush", daemon=True
        )
        if started(worker):
            worker.join(waitable(deadline - time.monotonic()) + FINAL_FLUSH_GRACE)
        else:
            flush_then_close()
        return bool(delivered and delivered[0])

    def _run(self, runner: object = None) -> None:
        """The flusher's loop, as long as it is this process's (``runner``).

        Why the check: under gevent the flusher is a greenlet, and a greenlet
        survives ``fork()``. A master that patched gevent itself and loaded
        the app (``gunicorn --preload -k gevent``, ``monkey.patch_all()`` in
        the app) left its flusher in every worker, beside the worker's own:
        two startup reports and twice the flushes per worker. The parent's
        stops the first time it wakes in a child (see :func:`_park`).
        """
        leave_signals_to_the_main_thread()
        lower_this_threads_priority()
        self._wait_for_first_use(runner)
        if runner is not self._runner:
            _park()
        if self._closing:
            return
        self.announced = True
        self.flush(kind="startup")
        while not self._closing and not self.gone and self.test_run is None:
            if self._wake.wait(self._next_delay()):
                break
            if runner is not self._runner:
                _park()
            self.flush()

    def _wait_for_first_use(self, runner: object = None) -> None:
        """Until the app's first request, or :data:`STARTUP_GRACE` (the flush
        interval, if shorter), or ``close``. Looked at every
        :data:`IDLE_POLL_SECONDS` too, for apps that record or count through
        ``Telemetry`` directly, without an integration to say so. A process
        that leaves serving to others has no grace: it waits for its own use."""
        deadline = time.monotonic() + min(self.interval, STARTUP_GRACE)
        while not self._first_use.wait(
            waitable(min(IDLE_POLL_SECONDS, deadline - time.monotonic()))
        ):
            if runner is not self._runner:
                return  # the parent's, woken in a forked child (see :meth:`_run`)
            if not self._idle():
                return
            if time.monotonic() >= deadline:
                if not self._leaves_serving_to_others():
                    return
                deadline = math.inf

    def _leaves_serving_to_others(self) -> bool:
        """Whether this process, idle when its grace is over, is no instance:
        processes it started serve instead, or it is a ``multiprocessing``
        helper, forked from the one that serves or started anew to run its
        jobs (see :mod:`.supervisors`)."""
        if self.forked:
            self.serving_elsewhere = "it forked the processes that serve"
        elif self.inherited and started_by_multiprocessing():
            self.serving_elsewhere = "multiprocessing forked it from the process that serves"
        else:
            loop = helper_loop() or supervisor_loop()
            if loop is None:
                return False
            self.serving_elsewhere = f"it runs {loop}"
        logger.debug(
            "reqtelemetry: this process serves nothing (%s): no report unless it serves",
            self.serving_elsewhere,
        )
        return True

    @property
    def max_payload_bytes(self) -> int:
        """The size reports are split at: ``max_payload_bytes``, or less for the
        rest of the process's life once the collector refused a body as too large."""
        limit = self.config.max_payload_bytes
        learnt = self.collector_max_bytes
        return limit if learnt is None else min(limit, learnt)

    def _next_delay(self) -> float:
        delay = self.interval * self._rng.uniform(1 - JITTER, 1 + JITTER)
        return waitable(max(delay, self._not_before - time.monotonic()))

    # -- one flush ---------------------------------------------------------------------

    def flush(self, kind: str = "periodic", budget: float | None = None) -> bool:
        """Send what is recorded now; True when every part was delivered."""
        budget = waitable(self.config.timeout * 2 if budget is None else budget)
        deadline = time.monotonic() + budget
        if self._held_back():
            if kind == "shutdown":
                self._say_final_report_held_back()
            return False  # no report can go: the app's gauges are not called for nothing
        gauges = self._sample_gauges(min(GAUGE_SAMPLE_SECONDS, budget * GAUGE_SHARE))
        if not self._flush_lock.acquire(blocking=False):
            self._hurry.set()  # the flush under way: no more pauses, we are waiting
            if not self._flush_lock.acquire(timeout=waitable(deadline - time.monotonic())):
                return False  # another flush holds the lock past our budget
        if self._closing:  # close() came first, and may have set the one before
            self._hurry.set()
        try:
            if self._held_back() or self._under_a_test_runner():
                return False
            return self._flush_locked(kind, deadline, gauges)
        except Exception as error:  # a telemetry bug must not kill the thread
            self.telemetry.internal_error(error)
            return False
        finally:
            # The next holder's, made before it can hold the lock: a flush that
            # finds the lock taken sets the very event its holder checks.
            self._hurry = threading.Event()
            self._flush_lock.release()

    def _say_final_report_held_back(self) -> None:
        """Say a final report that a ``Retry-After`` holds back as one that failed.

        Why: its data ends with the process all the same. A short run whose
        startup report got the collector's own ``503`` (its database down,
        ``Retry-After: 60``) exited without a word above DEBUG, where one
        whose final report failed says that the requests are lost.
        """
        if self.gone or self.test_run is not None:
            return  # nothing is wanted, or nothing was ever to be sent
        self._flush_kind = "shutdown"
        self._say_not_delivered(
            Result(Outcome.FAILED, error="held back by the collector's Retry-After")
        )

    def _held_back(self) -> bool:
        """Whether no report may go now, by what is already known.

        After a ``410`` nothing goes, nor once a test runner was seen; and
        while the collector asked us to wait (Retry-After), not even the final
        flush: a fleet restarting into an overloaded collector must not answer
        its 429s with a burst of reports.
        """
        return self.gone or self.test_run is not None or time.monotonic() < self._not_before

    def _sample_gauges(self, timeout: float) -> dict[str, float]:
        """The gauges' samples for the next report, taken before the flush lock.

        Why before, and not with the batch: the samples take up to ``timeout``,
        and meanwhile neither the lock nor the recorder's batch is held, so a
        slow gauge delays this report only, and by a bounded time.
        """
        try:
            return self.telemetry.metrics.sample_gauges(timeout)
        except Exception as error:  # a telemetry bug must not kill the thread
            self.telemetry.internal_error(error)
            return {}

    def _under_a_test_runner(self) -> bool:
        """Checked again before each send, not only at start.

        Why: pytest sets ``PYTEST_CURRENT_TEST`` only while a test runs, not
        while it imports test modules, where an app's module-level
        ``Telemetry(...)`` is made; Django's test environment is set up after
        settings are read. Once seen, the process sends nothing more.
        """
        if self.test_run is not None:
            return True
        if self.transport is None or self.config.send_in_tests:
            return False  # debug output goes nowhere but stderr
        reason = detect_test_runner()
        if reason is None:
            return False
        self.test_run = reason
        self.telemetry.sending = False
        logger.info("reqtelemetry: running under a test runner (%s); nothing more is sent", reason)
        return True

    def _flush_locked(self, kind: str, deadline: float, gauges: dict[str, float]) -> bool:
        self._flush_kind = kind
        if self.deployment_id is None:
            kept, how = load_deployment_id(self.config.deployment_id_path)
            config = self.config
            self.deployment_id = deployment_id_for(kept, config.app_name, config.endpoint)
            if how != "persisted":
                logger.info("reqtelemetry: deployment id kept for this process only (%s)", how)
        pacing = Pacing(
            # At shutdown this process serves no more requests: no pauses for them.
            paced=kind != "shutdown",
            hurry=self._hurry,
            until=time.monotonic() + PAUSING_SHARE * max(0.0, deadline - time.monotonic()),
        )
        held = self.unconfirmed
        if held is not None and pacing.paced:
            if not self._settle_unconfirmed(deadline, pacing):
                return False  # nothing else goes while the collector does not answer
            held = None
        delivered = self._send_batch(kind, deadline, gauges, pacing)
        if held is None or self.gone:
            return delivered
        # At shutdown the newest data goes first, and the held report with
        # what is left: the budget (2 s) is all the time this process has,
        # and the held report's attempt, which may wait for ``timeout``, took
        # it all while the collector's answers were lost. (Held again now, or
        # the batch's own report held, either is lost with the process.)
        self.unconfirmed = held
        return self._settle_unconfirmed(deadline, pacing) and delivered

    def _send_batch(
        self,
        kind: str,
        deadline: float,
        gauges: dict[str, float],
        pacing: Pacing,
    ) -> bool:
        """Collect what is recorded and send it, in as many reports as it takes."""
        telemetry = self.telemetry
        assert self.deployment_id is not None
        batch = telemetry.recorder.collect()
        metrics = {"counters": telemetry.metrics.take_counters(), "gauges": gauges}
        # From here on the batch lives only in this frame: whatever fails, not
        # only an httpx error (a malformed answer, a bug), what was neither
        # delivered nor refused goes back into the recorder.
        reports: list[Report] | None = None
        pending = 0  # reports[pending:] are neither delivered nor refused
        try:
            traits, withheld = telemetry.traits.current()
            envelope = Envelope(
                kind=kind,
                sequence=self.sequence,
                deployment_id=self.deployment_id,
                instance_id=telemetry.instance_id,
                traits=traits,
                withheld=withheld,
                metrics=metrics,
                internal_errors=telemetry.internal_errors,
            )
            self.sequence += 1
            reports = self._build(envelope, batch, pacing)
            if self.config.debug or self.transport is None:
                stream = self._debug_stream()
                for report in reports:
                    stream.write(report.body.decode("ascii") + "\n")
                stream.flush()
                pending = len(reports)
                return True
            all_delivered = True
            stored = False  # whether a part of envelope.sequence reached the collector
            index = 0
            while index < len(reports):
                result = self.transport.deliver(
                    reports[index].body,
                    max(0.0, deadline - time.monotonic()),
                    self.deployment_id,
                    telemetry.instance_id,
                    pacing=pacing,
                )
                if result.outcome in (Outcome.DELIVERED, Outcome.REJECTED):
                    pending = index + 1
                elif result.outcome is Outcome.GONE:
                    pending = len(reports)  # the collector wants none of it, ever
                self.last_result = result
                self._apply_pacing(result)
                if result.outcome is Outcome.TOO_LARGE:
                    smaller = self._split_smaller(
                        envelope, batch, reports[index:], result, stored, pacing
                    )
                    if smaller is None:  # several records, and no smaller to go: kept
                        pending = len(reports)  # handed back here, not again below
                        self._put_back(batch, reports[index:], metrics)
                        self._say_not_delivered(result)
                        return False
                    envelope, reports, dropped = smaller
                    index = pending = 0
                    stored = False
                    if dropped is not None:
                        all_delivered = False
                        self._drop_too_large(batch, dropped, result)
                    continue
                if result.outcome is Outcome.DELIVERED:
                    stored = True
                    self.failed_flushes = 0
                    index += 1
                    continue
                if result.outcome is Outcome.GONE:
                    self.gone = True
                    logger.info(
                        "reqtelemetry: the collector answered 410 Gone; "
                        "no more reports from this process"
                    )
                    return False
                if result.outcome is Outcome.REJECTED:
                    telemetry.internal_errors += 1
                    logger.warning(
                        "reqtelemetry: the collector refused a report (HTTP %s): %s",
                        result.status,
                        result.error,
                    )
                    all_delivered = False  # refused for good: not kept, but not delivered either
                    index += 1
                    continue
                pending = len(reports)  # handed back here, not again below
                undelivered = reports[index:]
                if result.sent is not None and result.sent.maybe_stored:
                    self.unconfirmed = Unconfirmed(
                        report=reports[index],
                        sent=result.sent,
                        part=_part_of(batch, [reports[index]]),
                        metrics=metrics,
                    )
                    undelivered = reports[index + 1 :]
                self._put_back(batch, undelivered, metrics)
                self._say_not_delivered(result)
                return False
            return all_delivered
        except Exception:
            if reports is None:
                self._put_back_everything(batch, metrics)
            elif pending < len(reports):
                self._put_back(batch, reports[pending:], metrics)
            raise  # flush() counts it as an internal error

    def _settle_unconfirmed(self, deadline: float, pacing: Pacing) -> bool:
        """Send :attr:`unconfirmed` again, with its stamp; True when the flush may go on.

        The collector answers ``409 replay`` when it has it, stores it
        otherwise, or refuses its stamp as too old (or its token as expired)
        after it looked it up and did not find it: then it goes under a new
        stamp. Only when it can no longer go as it is (a new stamp could not be
        sent, or it is now too large) does its data go back into the recorder.
        """
        held = self.unconfirmed
        assert held is not None and self.transport is not None and self.deployment_id is not None
        result = self.transport.deliver(
            held.report.body,
            max(0.0, deadline - time.monotonic()),
            self.deployment_id,
            self.telemetry.instance_id,
            pacing=pacing,
            sent=held.sent,
        )
        self.last_result = result
        self._apply_pacing(result)
        outcome = result.outcome
        if outcome is Outcome.FAILED and result.sent is not None and result.sent.maybe_stored:
            held.sent = result.sent
            self._say_not_delivered(result)
            return False
        self.unconfirmed = None
        if outcome is Outcome.DELIVERED:
            self.failed_flushes = 0
            return True
        if outcome is Outcome.GONE:
            self.gone = True
            logger.info(
                "reqtelemetry: the collector answered 410 Gone; no more reports from this process"
            )
            return False
        if outcome is Outcome.REJECTED:
            self.telemetry.internal_errors += 1
            logger.warning(
                "reqtelemetry: the collector refused a report (HTTP %s): %s",
                result.status,
                result.error,
            )
            return True
        # Known not stored, but not sent as it is either: its data joins this
        # flush's batch (a report now too large is split with it).
        if outcome is Outcome.TOO_LARGE:
            self._learn_the_collectors_cap(result.refused_bytes or len(held.report.body))
        self._put_back(held.part, [held.report], held.metrics)
        if outcome is Outcome.FAILED:
            self._say_not_delivered(result)
            return False
        return True

    def _build(self, envelope: Envelope, batch: Batch, pacing: Pacing) -> list[Report]:
        limit = self.max_payload_bytes
        # Below max_payload_bytes (a 413 taught it), a record that needs more goes alone.
        lowered = limit < self.config.max_payload_bytes
        return build_reports(
            envelope,
            batch,
            limit,
            pacing=pacing,
            oversized_alone=lowered,
        )

    def _split_smaller(
        self,
        envelope: Envelope,
        batch: Batch,
        rest: list[Report],
        result: Result,
        stored: bool,
        pacing: Pacing,
    ) -> tuple[Envelope, list[Report], Report | None] | None:
        """After a ``413`` for ``rest[0]``: what ``rest`` carried, split smaller.

        Lowers :attr:`max_payload_bytes` to half the refused body (not below
        :data:`MIN_SPLIT_BYTES`) and builds ``rest`` again at that size, as a
        batch of its own. Its parts are numbered afresh, under the same
        sequence if none of it reached the collector yet, else under the next
        one (the parts delivered keep theirs). Returns the new envelope, the
        reports to send, and the refused report if it is dropped: one record
        cannot be split (it is counted as dropped). A part 0 of one record is
        first tried without its totals, which wait for the next report. None
        when the refused report holds no record, or several and cannot get
        smaller (at the floor): the caller keeps it.
        """
        refused = rest[0]
        size = result.refused_bytes or len(refused.body)
        self._learn_the_collectors_cap(size)
        limit = self.max_payload_bytes
        dropped: Report | None = None
        if not refused.keys:
            return None  # the report's own fields are over the cap: nothing to split
        if len(refused.keys) == 1 and refused.carries_totals:
            # The totals (metrics, dropped count) may be what is too large: they
            # wait for the next report, and the record is tried without them.
            self._put_back(batch, [replace(refused, keys=[])], envelope.metrics)
            envelope = replace(envelope, metrics={"counters": {}, "gauges": {}})
            rest = [replace(report, carries_totals=False) for report in rest]
            carried = rest
        elif len(refused.keys) == 1:
            dropped, carried = refused, rest[1:]
        elif limit < size:
            carried = rest
        else:
            return None
        keys = [key for report in carried for key in report.keys]
        totals = any(report.carries_totals for report in rest)  # the dropped one's too
        if not keys and not totals:
            return envelope, [], dropped
        sequence = envelope.sequence
        if stored:
            sequence = self.sequence
            self.sequence += 1
        envelope = replace(
            envelope,
            sequence=sequence,
            metrics=envelope.metrics if totals else {"counters": {}, "gauges": {}},
            internal_errors=envelope.internal_errors if totals else 0,
        )
        part = Batch(
            stats={key: batch.stats[key] for key in keys},
            dropped=batch.dropped if totals else 0,
            period_start=batch.period_start,
            period_end=batch.period_end,
        )
        reports = build_reports(
            envelope,
            part,
            limit,
            pacing=pacing,
            oversized_alone=True,
        )
        if not totals:  # part 0 of the rest: the totals already went with the first part 0
            reports = [replace(report, carries_totals=False) for report in reports]
        return envelope, reports, dropped

    def _learn_the_collectors_cap(self, refused_bytes: int) -> None:
        """Split at half the refused size from now on; say so once per process."""
        lowered = max(MIN_SPLIT_BYTES, refused_bytes // 2)
        if lowered >= self.max_payload_bytes:
            return
        self.collector_max_bytes = lowered
        warn_once(
            "collector cap",
            "reqtelemetry: the collector refused a report body of %d bytes as too large "
            "(HTTP 413): its size cap is smaller than max_payload_bytes=%d. Reports are split "
            "at %d bytes from now on (halved again at each 413, down to %d), for the life of "
            "this process; raise the collector's cap or lower max_payload_bytes to match it.",
            refused_bytes,
            self.config.max_payload_bytes,
            lowered,
            MIN_SPLIT_BYTES,
        )

    def _drop_too_large(self, batch: Batch, report: Report, result: Result) -> None:
        """A single record over the collector's cap: lost, but counted as dropped.

        Its requests are added to the recorder's dropped count, as requests
        past the key cap are, so the next report shows the loss.
        """
        requests = sum(batch.stats[key].count for key in report.keys)
        self.telemetry.recorder.merge([], dropped=requests)
        # Once per process at WARNING: a gateway that refuses every body drops
        # the records one by one, and said each time that was a line per key.
        warn_once(
            "record too large",
            "reqtelemetry: the collector refused a report of one record (%d requests) as too "
            "large (HTTP 413, %d bytes); a record cannot be split, so its requests are dropped "
            "and counted as dropped in the next report. (Said once; then at DEBUG.)",
            requests,
            result.refused_bytes or len(report.body),
        )

    def _say_not_delivered(self, result: Result) -> None:
        """Log why a report was kept: at WARNING once per process when it keeps happening."""
        global _failure_warned
        reason = result.error or f"HTTP {result.status}"
        cut_short = self._closing and time.monotonic() < self._close_deadline
        # Unless none can follow (a Retry-After this flush was just answered
        # holds the final report back): then this is the last word on its data.
        if cut_short and self._flush_kind != "shutdown" and not self._held_back():
            # A flush under way when close() came, and cut short by it: the
            # final report, which follows within close()'s budget, carries its
            # data, and it alone can tell whether that data is lost. Said so
            # here, a final report then delivered was logged as lost.
            self.failed_flushes += 1
            logger.debug("reqtelemetry: report not delivered before shutdown (%s)", reason)
            return
        if self._closing:
            # Alone, a report cut short by close() is no sign of a proxy or a
            # wrong endpoint. After a flush that failed before shutdown it is
            # the second in a row, and its data now ends with the process: for
            # a short run (a developer trying it out, an hourly interval) the
            # only moment anyone can be told that nothing ever arrived.
            if self.failed_flushes and not _failure_warned:
                _failure_warned = True
                logger.warning(
                    "reqtelemetry: the final report could not be delivered to %s (%s), nor "
                    "the one before it: the requests since the last delivered report are "
                    "lost. Check that the endpoint is the collector's URL and that it is "
                    "running; behind a proxy or a private CA, set REQTELEMETRY_PROXY or "
                    "REQTELEMETRY_CA_BUNDLE.",
                    redacted_url(self.config.endpoint or ""),
                    reason,
                )
                return
            logger.debug("reqtelemetry: report not delivered at shutdown (%s)", reason)
            return
        self.failed_flushes += 1
        if self.failed_flushes >= FAILURES_BEFORE_WARNING and not _failure_warned:
            _failure_warned = True
            logger.warning(
                "reqtelemetry: %d reports in a row could not be delivered to %s (last: %s); "
                "they are kept and retried. Check that the endpoint is the collector's URL "
                "(its root: the client adds /v1/session and /v1/report) and that it is "
                "running; behind a proxy or a private CA, set REQTELEMETRY_PROXY or "
                "REQTELEMETRY_CA_BUNDLE. (Said once; then at DEBUG.)",
                self.failed_flushes,
                redacted_url(self.config.endpoint or ""),
                reason,
            )
            return
        logger.debug("reqtelemetry: report not delivered (%s); kept for the next one", reason)

    def _apply_pacing(self, result: Result) -> None:
        if result.next_interval is not None:
            low, high = self.config.min_flush_interval, self.config.max_flush_interval
            self.interval = min(max(result.next_interval, low), high)
        if result.retry_after is not None:
            # Capped: a collector (or a proxy in front) answering an absurd
            # Retry-After must not silence this client for longer than the
            # slowest pace the operator allows.
            wait = min(result.retry_after, self.config.max_flush_interval)
            self._not_before = time.monotonic() + wait
            if wait > LONG_RETRY_AFTER:
                self._say_long_wait(wait)

    def _say_long_wait(self, wait: float) -> None:
        """Say a long ``Retry-After`` once at WARNING: the flushes it holds back
        count as no failure, and nothing else would say that nothing is sent."""
        warn_once(
            "long retry-after",
            "reqtelemetry: the collector asked for no reports for %.0f s (Retry-After); "
            "data is kept until then, and lost by a process that exits before. "
            "(Said once; then at DEBUG.)",
            wait,
        )

    def _put_back_everything(
        self, batch: Batch, metrics: Mapping[str, Mapping[str, float]]
    ) -> None:
        """Merge a batch back whole (it failed before it was cut into reports)."""
        self.telemetry.recorder.merge(batch)
        self.telemetry.metrics.merge(metrics)

    def _put_back(
        self, batch: Batch, undelivered: list[Report], metrics: Mapping[str, Mapping[str, float]]
    ) -> None:
        """Merge what did not reach the collector back into the live aggregates."""
        self.telemetry.recorder.merge(_part_of(batch, undelivered))
        if any(report.carries_totals for report in undelivered):
            self.telemetry.metrics.merge(metrics)


def _park() -> None:
    """Where a parent's green flusher ends in a forked child: asleep for good.

    Why not return: its greenlet would end, and gevent's threading, asked to
    forget a thread that the child's own bookkeeping never held, wrote a
    ``KeyError`` traceback into the worker's log. Asleep it costs the child a
    greenlet and nothing else. Never reached by a real thread, which does
    not survive a fork.
    """
    threading.Event().wait()


def _part_of(batch: Batch, reports: list[Report]) -> Batch:
    """What ``reports`` carry of ``batch``: their records, and the dropped count
    if one of them carries the totals."""
    totals = any(report.carries_totals for report in reports)
    return Batch(
        stats={key: batch.stats[key] for report in reports for key in report.keys},
        dropped=batch.dropped if totals else 0,
        period_start=batch.period_start,
        period_end=batch.period_end,
    )
