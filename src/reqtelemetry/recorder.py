"""Thread-safe, bounded, in-memory aggregation of request measurements.

One key per ``(method, route, status)``; memory grows with the number of keys,
never with traffic. Past ``max_keys`` distinct keys, requests land in a single
overflow key and are counted as dropped, so a scanner or a route-less app with
identifiers in its paths cannot grow memory or the payload.

The flusher takes an atomic snapshot-and-reset (:meth:`Recorder.collect`); when
a send fails it merges the batch back (:meth:`Recorder.merge`), and because
every statistic here is a sum, a count, a min, a max or a histogram, merged
batches add up exactly.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .histogram import _LOG_GAMMA, MAX_INDEX, MAX_TRACKED, MIN_INDEX, MIN_TRACKED, Histogram

#: The key that absorbs requests once ``max_keys`` distinct keys exist.
OVERFLOW_KEY = ("_OTHER", "<overflow>", 0)
DEFAULT_MAX_KEYS = 1000


class Stats:
    """Aggregates for one key. Mutated only under the recorder's lock."""

    __slots__ = (
        "bins",
        "count",
        "histogram",
        "latency_max",
        "latency_min",
        "latency_sum",
        "request_bytes",
        "response_bytes",
    )

    def __init__(self) -> None:
        self.count = 0
        self.histogram = Histogram()
        self.bins = self.histogram.bins  # the same dict: the hot path skips one attribute
        self.latency_sum = 0.0
        self.latency_min = math.inf
        self.latency_max = 0.0
        self.request_bytes = 0
        self.response_bytes = 0

    def to_record(self, key: tuple[str, str, int]) -> dict[str, Any]:
        method, route, status = key
        histogram = self.histogram
        return {
            "method": method,
            "route": route,
            "status": status,
            "count": self.count,
            "latency": {
                "p50": histogram.quantile(0.50),
                "p95": histogram.quantile(0.95),
                "p99": histogram.quantile(0.99),
                "sum": self.latency_sum,
                "min": self.latency_min if self.count else None,
                "max": self.latency_max if self.count else None,
                "histogram": histogram.to_pairs(),
            },
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
        }


@dataclass
class Batch:
    """What the recorder held between two collections, in JSON-ready form."""

    records: list[dict[str, Any]]
    dropped: int
    period_start: float
    period_end: float
    extra: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.records) or self.dropped > 0


class Recorder:
    """The in-memory aggregate store; every public method is safe across threads."""

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys!r}")
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str, int], Stats] = {}
        self._dropped = 0
        self._period_start = time.time()

    def __len__(self) -> int:
        return len(self._stats)

    @property
    def dropped(self) -> int:
        """Requests that landed in the overflow key since the last collection."""
        return self._dropped

    def record(
        self,
        method: str,
        route: str,
        status: int,
        duration: float,
        request_bytes: int,
        response_bytes: int,
        scheme: str = "http",
        *,
        _log: Any = math.log,
        _ceil: Any = math.ceil,
    ) -> None:
        """Add one request. The hot path: a tuple, a log, one locked dict update.

        ``scheme`` is accepted so that every integration can call one signature;
        the aggregates do not keep it (only the OpenTelemetry instruments do).
        The math functions are bound as defaults: one lookup less per call.
        """
        if duration <= MIN_TRACKED:
            index = MIN_INDEX
        elif duration >= MAX_TRACKED:
            index = MAX_INDEX
        else:
            index = _ceil(_log(duration) / _LOG_GAMMA)
        key = (method, route, status)
        lock = self._lock
        lock.acquire()
        try:
            stats = self._stats.get(key)
            if stats is None:
                stats = self._new_stats(key)
            stats.count += 1
            bins = stats.bins
            bins[index] = bins.get(index, 0) + 1
            stats.latency_sum += duration
            if duration < stats.latency_min:
                stats.latency_min = duration
            if duration > stats.latency_max:
                stats.latency_max = duration
            stats.request_bytes += request_bytes
            stats.response_bytes += response_bytes
        finally:
            lock.release()

    def _new_stats(self, key: tuple[str, str, int]) -> Stats:
        """Create the stats for a new key, or route to the overflow key past the cap.

        Called with the lock held.
        """
        if len(self._stats) >= self.max_keys and key != OVERFLOW_KEY:
            self._dropped += 1
            stats = self._stats.get(OVERFLOW_KEY)
            if stats is None:
                stats = self._stats[OVERFLOW_KEY] = Stats()
            return stats
        stats = self._stats[key] = Stats()
        return stats

    def snapshot(self) -> list[dict[str, Any]]:
        """The current aggregates as JSON-ready records, without resetting them."""
        with self._lock:
            return [stats.to_record(key) for key, stats in self._stats.items()]

    def collect(self) -> Batch:
        """Atomically take everything recorded so far and start a new, empty period."""
        now = time.time()
        with self._lock:
            stats, self._stats = self._stats, {}
            dropped, self._dropped = self._dropped, 0
            start, self._period_start = self._period_start, now
        # Building records outside the lock keeps request threads unblocked.
        records = [value.to_record(key) for key, value in stats.items()]
        return Batch(records=records, dropped=dropped, period_start=start, period_end=now)

    def merge(self, batch: Batch | Iterable[Mapping[str, Any]], dropped: int = 0) -> None:
        """Add records (from :meth:`collect` or :meth:`snapshot`) back in.

        Used when a send failed: the next report then covers both periods. The
        key cap still holds; merged keys past it land in the overflow key.
        """
        if isinstance(batch, Batch):
            records: Iterable[Mapping[str, Any]] = batch.records
            dropped += batch.dropped
            period_start: float | None = batch.period_start
        else:
            records, period_start = batch, None
        with self._lock:
            if period_start is not None and period_start < self._period_start:
                self._period_start = period_start
            self._dropped += dropped
            for record in records:
                key = (str(record["method"]), str(record["route"]), int(record["status"]))
                count = int(record["count"])
                stats = self._stats.get(key)
                if stats is None:
                    before = self._dropped
                    stats = self._new_stats(key)
                    if self._dropped != before:  # landed in overflow: count all its requests
                        self._dropped += count - 1
                latency = record["latency"]
                stats.count += count
                stats.histogram.merge_bins(latency["histogram"])
                stats.latency_sum += float(latency["sum"])
                if latency["min"] is not None:
                    stats.latency_min = min(stats.latency_min, float(latency["min"]))
                if latency["max"] is not None:
                    stats.latency_max = max(stats.latency_max, float(latency["max"]))
                stats.request_bytes += int(record["request_bytes"])
                stats.response_bytes += int(record["response_bytes"])

    def reset(self) -> None:
        """Forget everything, with a fresh lock: used in a child process after fork,
        where the parent's lock may have been held by a thread that does not exist here."""
        self._lock = threading.Lock()
        self._stats = {}
        self._dropped = 0
        self._period_start = time.time()
