"""App-defined usage metrics: counters and gauges with validated names.

Why: request counts say which endpoints are used, not which *features* are, nor
how many of a thing exist (ORY, Caddy and Phusion all wanted both). The app
counts what it cares about (``telemetry.count("feature.export_pdf")``) or
registers a callback sampled at each flush (``telemetry.gauge("registered_apps",
fn)``). Names follow a short dotted pattern, which keeps free text (an
e-mail address, a URL) out, and their number is capped, so memory and payload
stay bounded. A name is sent exactly as written, though: the pattern cannot
tell ``user.4711`` or ``login.alice`` from a feature's name, so names must be
constants in the app's code, never built from a request's data.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from numbers import Integral, Real

from .config import shown_value
from .payload import MAX_METRIC_VALUE, metric_value_fits

logger = logging.getLogger("reqtelemetry")

#: Seconds a report waits for its gauges' samples, all of them together (the
#: flusher may give them less: a share of a short flush budget).
GAUGE_SAMPLE_SECONDS = 1.0

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
MAX_NAME_LENGTH = 64


#: Names found valid already, so that a name's pattern is matched once, not at
#: every call (bounded: past the cap a name is matched each time).
_VALID_NAMES: set[str] = set()
_VALID_NAMES_CAP = 4096


def validate_name(name: object) -> str:
    if type(name) is str and name in _VALID_NAMES:
        return name
    # fullmatch: the pattern's "$" also matches before a final newline, and
    # "jobs.done\n" was a counter of its own (ECMA's "$", which the schema
    # means, refuses it: another validator would refuse the whole report).
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"metric name must be lowercase dotted words like 'feature.export_pdf' "
            f"(at most {MAX_NAME_LENGTH} characters), got {name!r}"
        )
    if type(name) is str and len(_VALID_NAMES) < _VALID_NAMES_CAP:
        _VALID_NAMES.add(name)
    return name


def _validate_number(value: object, what: str) -> float:
    """``value`` as the wire takes it: an int, or a finite float, of magnitude
    at most :data:`MAX_METRIC_VALUE`; ValueError otherwise.

    Why this strict: the collector refuses a whole report for one value it
    cannot hold, the app's request records with it. An integer becomes an
    ``int`` (a numpy integer too, which stays exact), anything else a
    ``float``; a value too large for a float (``10**400``, a huge
    ``Fraction``) is a ValueError like any other bad value, not the
    OverflowError ``float()`` would raise. ``True`` is an int to Python but
    as a count or a sample it is a mistake (a predicate passed for a number).
    A ``Decimal`` is a number too, though not a ``Real`` to Python: what a
    database driver gives for a ``SUM`` or a ``NUMERIC`` column (psycopg's,
    sqlite3's with a converter), so a gauge reading one was left out of
    every report; a whole one stays exact.
    """
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{what} must be a finite number, got {_shown(value)}")
        if not value.is_zero() and value.adjusted() > 18:  # 10**19 up, before int() writes it
            raise ValueError(f"{what} must be at most 2**63 - 1 in magnitude, got {_shown(value)}")
        value = int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{what} must be a number, got {_shown(value)}")
    number: float
    if isinstance(value, Integral):
        number = int(value)
    else:
        try:
            number = float(value)
        except (OverflowError, ValueError, TypeError):
            number = math.inf
        if not math.isfinite(number):
            raise ValueError(f"{what} must be a finite number, got {_shown(value)}")
    if abs(number) > MAX_METRIC_VALUE:
        raise ValueError(f"{what} must be at most 2**63 - 1 in magnitude, got {_shown(value)}")
    return number


def _shown(value: object) -> str:
    """``value`` as a message shows it: at most 40 characters (see :func:`shown_value`)."""
    return shown_value(value, 40)


def check_count(name: object, value: object) -> float:
    """The checks of :meth:`AppMetrics.count`; the increment as a number.

    Also run when telemetry is off, so that a bad call fails the same way
    whether or not telemetry is on: on a developer's machine with
    ``DO_NOT_TRACK=1``, not first in production.
    """
    validate_name(name)
    number = _validate_number(value, f"the increment of counter {name!r}")
    if number < 0:
        raise ValueError(f"a counter only goes up; got increment {value!r} for {name!r}")
    return number


def check_gauge(name: object, callback: object) -> None:
    """The checks of :meth:`AppMetrics.gauge` (also run when telemetry is off)."""
    validate_name(name)
    if not callable(callback):
        raise ValueError(f"a gauge needs a callable returning a number, got {callback!r}")


class _Sample:
    """One run of a gauge's callback, on a helper thread, and what it gave."""

    __slots__ = ("callback", "done", "error", "value")

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback = callback
        self.done = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self.callback()
        except BaseException as error:  # reported by the report waiting for it
            # BaseException too: a callback's sys.exit() on a helper thread
            # ends nothing but that thread, and must not leave the gauge
            # marked as running for good.
            self.error = error
        finally:
            self.done.set()


class AppMetrics:
    """Counters (deltas between reports) and gauges (sampled at each report)."""

    def __init__(self, max_names: int = 100) -> None:
        self.max_names = max_names
        self._lock = threading.Lock()
        self._counters: dict[str, float] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self.refused = 0
        #: The names taken so far, at most ``max_names``, for the process's
        #: life: past the cap, the names left out are the same in every report.
        self._taken: set[str] = set()
        self._warned: set[str] = set()
        #: The gauges whose callback still runs, each with its run.
        self._sampling: dict[str, _Sample] = {}
        #: Each gauge's last good value: what a report carries where no
        #: thread can be started to sample it (at exit on Python 3.12).
        self._last_good: dict[str, float] = {}

    def count(self, name: str, value: float = 1) -> None:
        """Add ``value`` (default 1, never negative) to the counter ``name``."""
        value = check_count(name, value)
        saturated = say_capped = False
        with self._lock:
            if self._takes(name):
                saturated = self._add(name, value)
            else:
                say_capped = self._refuse()
        if say_capped:
            self._say_capped(name)
        if saturated:
            self._say_saturated(name)

    def gauge(self, name: str, callback: Callable[[], float]) -> None:
        """Sample ``callback()`` at every report as the gauge ``name``."""
        check_gauge(name, callback)
        with self._lock:
            if self._takes(name):
                self._gauges[name] = callback
                return
            say_capped = self._refuse()
        if say_capped:
            self._say_capped(name)

    def _add(self, name: str, value: float) -> bool:
        """Add ``value`` to the counter, saturating at :data:`MAX_METRIC_VALUE`;
        True when it saturated. Called with the lock held.

        Why saturate rather than carry the excess to later reports: a counter
        past 2^63 - 1 within one report is a bug in what the app counts, not
        usage; carrying it would make every later report a saturated one. A
        float sum is bounded the same way, so it can never overflow to
        infinity, which no JSON report can carry.
        """
        total = self._counters.get(name, 0) + value
        if total > MAX_METRIC_VALUE:
            self._counters[name] = MAX_METRIC_VALUE
            return True
        self._counters[name] = total
        return False

    def _first_time(self, key: str) -> bool:
        """True the first time ``key`` is asked about: for warnings said once.

        Locked, as reports may sample gauges from several threads at once.
        """
        with self._lock:
            if key in self._warned:
                return False
            self._warned.add(key)
            return True

    def _say_saturated(self, name: str) -> None:
        if self._first_time("saturated:" + name):  # ":" is in no metric name
            logger.warning(
                "reqtelemetry: counter %r went past 2**63 - 1 within one report; it is "
                "reported as 2**63 - 1 and the excess is not counted (said once)",
                name,
            )

    def _takes(self, name: str) -> bool:
        """Whether ``name`` is one of the names kept, taking it if there is room.

        Why for the process's life, not per report: counters start afresh at
        each report, and a cap counted per report left out whichever names
        came last in that period, a different one each time, with one
        warning for the first only. Called with the lock held.
        """
        if name in self._taken:
            return True
        if len(self._taken) >= self.max_names:
            return False
        self._taken.add(name)
        return True

    def _refuse(self) -> bool:
        """Count a name refused by the cap; True the first time, when the
        caller is to say so (:meth:`_say_capped`) once it has let go of the lock.

        Called with the lock held, so it logs nothing itself: a logging
        handler may be the app's own, and one that counts what it logs
        (``telemetry.count("logs.warning")``) took the same lock again, and
        hung the app's thread for good, with every later count() and report.
        Not _first_time(), which takes the lock. ":" is in no metric name, so
        no gauge's own key ("failed:" + its name) can be this one.
        """
        self.refused += 1
        if "cap:" in self._warned:
            return False
        self._warned.add("cap:")
        return True

    def _say_capped(self, name: str) -> None:
        logger.warning(
            "reqtelemetry: more than %d metric names; %r and every other name past "
            "the first %d is not recorded, for the life of the process",
            self.max_names,
            name,
            self.max_names,
        )

    def collect(self, timeout: float = GAUGE_SAMPLE_SECONDS) -> dict[str, dict[str, float]]:
        """Sample every gauge (see :meth:`sample_gauges`) and take the counters."""
        gauges = self.sample_gauges(timeout)
        return {"counters": self.take_counters(), "gauges": gauges}

    def has_counts(self) -> bool:
        """Whether any counter was added to since the last report."""
        return bool(self._counters)

    def take_counters(self) -> dict[str, float]:
        """The counters' growth since they were last taken (resetting them)."""
        with self._lock:
            counters, self._counters = self._counters, {}
        return counters

    def sample_gauges(self, timeout: float = GAUGE_SAMPLE_SECONDS) -> dict[str, float]:
        """Each gauge's value now, from its callback run on a helper thread.

        Why threads and a time limit: a callback is the app's code (a database
        query, say), and may be slow or hang. Run on the flusher, a hung one
        held the report, its batch and the flush lock for good, and every
        later flush and close() waited out its budget. Here the callbacks run
        side by side and are waited for ``timeout`` seconds in all; a gauge
        that has not answered by then is left out of this report (WARNING
        once per gauge, and only once a report has really waited that long),
        and is not started again while its run goes on: the next report
        waits for that run instead, so a hung gauge ties up one thread, not
        one more per report.

        The helper threads inherit the priority of the thread that starts
        them: nice 19 when it is the flusher's, as the callbacks had when they
        ran on it. Where no thread can be started (at interpreter shutdown on
        Python 3.12), each gauge's last good value stands in, rather than risk
        a hang there by running the callback.
        """
        deadline = time.monotonic() + timeout
        running, unsampled = self._start_samples()
        sampled: dict[str, float] = {}
        if unsampled:  # no thread to be had: the last good values stand in
            with self._lock:
                sampled = {
                    name: self._last_good[name] for name in unsampled if name in self._last_good
                }
        for name, sample in running:
            left = min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX)
            if not sample.done.wait(left):
                self._say_slow(name, timeout)
                continue
            if sample.error is not None:  # the app's callback must not stop a report
                self._say_failed(name, sample.error)
                continue
            try:
                sampled[name] = _validate_number(sample.value, "its value")
            except ValueError as error:
                self._say_failed(name, error)
        with self._lock:
            self._last_good.update(sampled)
        return sampled

    def _start_samples(self) -> tuple[list[tuple[str, _Sample]], list[str]]:
        """A run of each gauge: started now, or the one still going.

        A run another report started (two flushes at once, or a slow gauge
        still running from the last report) is waited for, not started
        again: a hung gauge ties up one thread, not one more per report, and
        a gauge that merely takes longer than the other report waited still
        reaches this one. Also returns the gauges no thread could be started
        for (at interpreter shutdown on Python 3.12).
        """
        with self._lock:
            gauges = list(self._gauges.items())
        running: list[tuple[str, _Sample]] = []
        for position, (name, callback) in enumerate(gauges):
            sample = _Sample(callback)
            with self._lock:
                ongoing = self._sampling.get(name)
                if ongoing is not None:
                    running.append((name, ongoing))
                    continue
                self._sampling[name] = sample
            thread = threading.Thread(
                target=self._run_sample,
                args=(name, sample),
                name=f"reqtelemetry-gauge-{name}",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError:  # no new threads at interpreter shutdown (3.12)
                with self._lock:
                    self._sampling.pop(name, None)
                logger.debug("reqtelemetry: no thread to sample gauges; their last values stand in")
                return running, [name for name, _ in gauges[position:]]
            running.append((name, sample))
        return running, []

    def _run_sample(self, name: str, sample: _Sample) -> None:
        try:
            sample.run()
        finally:
            with self._lock:
                if self._sampling.get(name) is sample:
                    del self._sampling[name]

    def _say_failed(self, name: str, problem: BaseException) -> None:
        """Name the gauge and the exception's type at WARNING (once), never its text.

        Why: a gauge queries a database or an API, and the text of what it
        raises typically holds host names, addresses, user names, even a
        password from a connection string; WARNING goes to whoever reads the
        app's logs. The text and traceback are for whoever turns on DEBUG.
        """
        if self._first_time("failed:" + name):
            logger.warning(
                "reqtelemetry: gauge %r failed (%s) and is left out of the report; "
                "said once, the details are logged at DEBUG",
                name,
                type(problem).__name__,
            )
        logger.debug("reqtelemetry: gauge %r failed", name, exc_info=problem)

    def _say_slow(self, name: str, timeout: float) -> None:
        if self._first_time("slow:" + name):
            logger.warning(
                "reqtelemetry: gauge %r did not answer within %.2g s; it is left out of "
                "reports until its callback returns (said once)",
                name,
                timeout,
            )

    def merge(self, metrics: Mapping[str, Mapping[str, float]]) -> None:
        """Put counters of an undelivered report back (gauges are sampled afresh).

        The name cap still holds: names counted since the report was taken may
        have filled it, and then a merged-back name is refused like a new one.
        A sum saturates as in :meth:`count`: an outage cannot add a report's
        counter and the live one up past what a report can carry.
        """
        saturated = []
        capped = None
        with self._lock:
            for name, value in metrics.get("counters", {}).items():
                if not metric_value_fits(value, counter=True):
                    continue  # never taken from here: a report must not bring one in
                if not self._takes(name):
                    if self._refuse():
                        capped = name
                    continue
                if self._add(name, value):
                    saturated.append(name)
        if capped is not None:
            self._say_capped(capped)
        for name in saturated:
            self._say_saturated(name)

    def reset(self) -> None:
        """Start over in a child after fork: the parent's counts are the
        parent's to report, and its sampling threads do not exist here."""
        self._lock = threading.Lock()
        self._counters = {}
        self._sampling = {}
        self._last_good = {}
