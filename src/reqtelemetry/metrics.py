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
from collections.abc import Callable, Mapping
from numbers import Integral, Real

from .payload import MAX_METRIC_VALUE, metric_value_fits

logger = logging.getLogger("reqtelemetry")

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
MAX_NAME_LENGTH = 64


#: Names found valid already, so that a name's pattern is matched once, not at
#: every call (bounded: past the cap a name is matched each time).
_VALID_NAMES: set[str] = set()
_VALID_NAMES_CAP = 4096


def validate_name(name: object) -> str:
    if type(name) is str and name in _VALID_NAMES:
        return name
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.match(name):
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
    """
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
    """``repr(value)``, cut: ``10**400`` would otherwise put 401 digits in a message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


class AppMetrics:
    """Counters (deltas between reports) and gauges (sampled at each report)."""

    def __init__(self, max_names: int = 100) -> None:
        self.max_names = max_names
        self._lock = threading.Lock()
        self._counters: dict[str, float] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self.refused = 0
        self._warned: set[str] = set()

    def count(self, name: str, value: float = 1) -> None:
        """Add ``value`` (default 1, never negative) to the counter ``name``."""
        value = check_count(name, value)
        with self._lock:
            if name not in self._counters and self._names() >= self.max_names:
                self._refuse(name)
                return
            saturated = self._add(name, value)
        if saturated:
            self._say_saturated(name)

    def gauge(self, name: str, callback: Callable[[], float]) -> None:
        """Sample ``callback()`` at every report as the gauge ``name``."""
        check_gauge(name, callback)
        with self._lock:
            if name not in self._gauges and self._names() >= self.max_names:
                self._refuse(name)
                return
            self._gauges[name] = callback

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

    def _say_saturated(self, name: str) -> None:
        key = "saturated:" + name  # ":" is in no metric name
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(
                "reqtelemetry: counter %r went past 2**63 - 1 within one report; it is "
                "reported as 2**63 - 1 and the excess is not counted (said once)",
                name,
            )

    def _names(self) -> int:
        return len(self._counters.keys() | self._gauges.keys())

    def _refuse(self, name: str) -> None:
        self.refused += 1
        if "cap" not in self._warned:
            self._warned.add("cap")
            logger.warning(
                "reqtelemetry: more than %d metric names; %r and later ones are not recorded",
                self.max_names,
                name,
            )

    def collect(self) -> dict[str, dict[str, float]]:
        """Take the counters (resetting them) and sample every gauge."""
        with self._lock:
            counters, self._counters = self._counters, {}
            gauges = list(self._gauges.items())
        sampled: dict[str, float] = {}
        for name, callback in gauges:
            try:
                sampled[name] = _validate_number(callback(), f"gauge {name!r}")
            except Exception as error:  # the app's callback must not stop a report
                if name not in self._warned:
                    self._warned.add(name)
                    logger.warning("reqtelemetry: gauge %r failed: %s", name, error)
        return {"counters": counters, "gauges": sampled}

    def merge(self, metrics: Mapping[str, Mapping[str, float]]) -> None:
        """Put counters of an undelivered report back (gauges are sampled afresh).

        The name cap still holds: names counted since the report was taken may
        have filled it, and then a merged-back name is refused like a new one.
        A sum saturates as in :meth:`count`: an outage cannot add a report's
        counter and the live one up past what a report can carry.
        """
        saturated = []
        with self._lock:
            for name, value in metrics.get("counters", {}).items():
                if not metric_value_fits(value, counter=True):
                    continue  # never taken from here: a report must not bring one in
                if name not in self._counters and self._names() >= self.max_names:
                    self._refuse(name)
                    continue
                if self._add(name, value):
                    saturated.append(name)
        for name in saturated:
            self._say_saturated(name)

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._counters = {}
