"""Thread-safe, bounded, in-memory aggregation of request measurements.

One key per ``(method, route, status)``; memory grows with the number of keys,
never with traffic. Past ``max_keys`` distinct keys, requests land in an
overflow key (server errors in one of their own) and are counted as dropped,
so a scanner or a route-less app with identifiers in its paths cannot grow
memory or the payload.

The flusher takes an atomic snapshot-and-reset (:meth:`Recorder.collect`); when
a send fails it merges the batch back (:meth:`Recorder.merge`), and because
every statistic here is a sum, a count, a min, a max or a histogram, merged
batches add up exactly.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .histogram import _LOG_GAMMA, MAX_INDEX, MAX_TRACKED, MIN_INDEX, MIN_TRACKED, Histogram

Key = tuple[str, str, int]
#: The quantiles every record reports.
QUANTILES = (0.50, 0.95, 0.99)
#: Keys merged back per hold of the lock.
MERGE_SLICE = 64
#: Requests queued before the one that adds the last aggregates them all: small
#: enough that the pause it takes (about 0.1 ms) stays out of the p99.
PENDING_LIMIT = 256

#: Statuses whose response has no body (RFC 9110): whatever an app hands the
#: server with one (``JSONResponse(None, status_code=204)`` sends ``null``),
#: the client gets none of it, and every ASGI server drops it. Their keys'
#: response bytes are written as 0, once per key, and no request pays for it.
NO_BODY_STATUSES = frozenset({*range(100, 200), 204, 304})
#: The key that absorbs requests once ``max_keys`` distinct keys exist.
OVERFLOW_KEY = ("_OTHER", "<overflow>", 0)
#: The one that absorbs server errors then (status 500 and up). Why apart: a
#: key is method, route and status, so once the cap is full, a route's first
#: 500 is a new key too, and under status 0 the collector, which counts
#: errors by status, showed an outage on a capped client as 0 % errors.
OVERFLOW_ERROR_KEY = ("_OTHER", "<overflow>", 500)
_OVERFLOW_KEYS = frozenset({OVERFLOW_KEY, OVERFLOW_ERROR_KEY})
DEFAULT_MAX_KEYS = 1000
#: The largest integer a record carries (``request_bytes``, ``response_bytes``):
#: the collector's 64-bit columns refuse more, and the whole report with it.
#: Each request's count is fitted to it (``Telemetry.record``, and a declared
#: ``Content-Length`` of at most 18 digits), but a key's sum of them is not:
#: ten requests declaring 999,999,999,999,999,999 bytes, which any client of a
#: WSGI app can send, got every record of the period refused. A sum past it is
#: written as this bound, as a counter past it is (``metrics``).
MAX_RECORD_INTEGER = 2**63 - 1


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

    def to_record(self, key: Key) -> dict[str, Any]:
        """The JSON-ready record (``snapshot()`` and the wire format's shape)."""
        method, route, status = key
        request_bytes, response_bytes = self._wire_bytes(status)
        histogram = self.histogram
        p50, p95, p99 = histogram.quantiles(QUANTILES)
        return {
            "method": method,
            "route": route,
            "status": status,
            "count": self.count,
            "latency": {
                "p50": p50,
                "p95": p95,
                "p99": p99,
                "sum": self.latency_sum,
                "min": self.latency_min if self.count else None,
                "max": self.latency_max if self.count else None,
                "histogram": histogram.to_pairs(),
            },
            "request_bytes": request_bytes,
            "response_bytes": response_bytes,
        }

    def _wire_bytes(self, status: int) -> tuple[int, int]:
        """The byte sums as a record carries them: none for a status without a
        body, and neither past :data:`MAX_RECORD_INTEGER`."""
        response_bytes = 0 if has_no_body(status) else self.response_bytes
        return min(self.request_bytes, MAX_RECORD_INTEGER), min(response_bytes, MAX_RECORD_INTEGER)

    def to_json(self, key: Key) -> str:
        """The same record as compact JSON text, written directly.

        Why not ``json.dumps(to_record())``: the flusher runs this for every key
        on a thread that shares the GIL with request threads. Writing text
        creates no dicts or lists per bin (no work for the garbage collector,
        whose full collections stall every thread) and costs about half.
        """
        method, route, status = key
        request_bytes, response_bytes = self._wire_bytes(status)
        bins = self.bins
        order = sorted(bins)
        count = self.count
        p50, p95, p99 = self.histogram.quantiles(QUANTILES)
        histogram = ",".join([f"[{index},{bins[index]}]" for index in order])
        return (
            f'{{"method":{_text(method)},"route":{_text(route)},"status":{int(status)},'
            f'"count":{count},"latency":{{"p50":{_number(p50)},"p95":{_number(p95)},'
            f'"p99":{_number(p99)},"sum":{_number(self.latency_sum)},'
            f'"min":{_number(self.latency_min if count else None)},'
            f'"max":{_number(self.latency_max if count else None)},'
            f'"histogram":[{histogram}]}},"request_bytes":{request_bytes},'
            f'"response_bytes":{response_bytes}}}'
        )

    def absorb(self, other: Stats) -> None:
        """Add ``other``'s aggregates into these (every statistic adds up)."""
        self.count += other.count
        bins = self.bins
        for index, count in other.bins.items():
            bins[index] = bins.get(index, 0) + count
        self.latency_sum += other.latency_sum
        if other.latency_min < self.latency_min:
            self.latency_min = other.latency_min
        if other.latency_max > self.latency_max:
            self.latency_max = other.latency_max
        self.request_bytes += other.request_bytes
        self.response_bytes += other.response_bytes

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Stats:
        """Stats from a record as :meth:`to_record` makes it (validated by type)."""
        stats = cls()
        latency = record["latency"]
        stats.count = int(record["count"])
        stats.histogram.merge_bins(latency["histogram"])
        stats.latency_sum = float(latency["sum"])
        if latency["min"] is not None:
            stats.latency_min = float(latency["min"])
        if latency["max"] is not None:
            stats.latency_max = float(latency["max"])
        stats.request_bytes = int(record["request_bytes"])
        stats.response_bytes = int(record["response_bytes"])
        return stats


def has_no_body(status: object) -> bool:
    """Whether a response of ``status`` has no body (:data:`NO_BODY_STATUSES`);
    a status of any other type (from a caller of ``Telemetry.record``) has one."""
    return isinstance(status, int) and status in NO_BODY_STATUSES


class _Bodiless:
    """The overflow record as a request of a status without body adds to it
    (:data:`NO_BODY_STATUSES`): all of it but its response bytes.

    Why: such a key's bytes are written as 0 when its record is built, but
    past ``max_keys`` its requests land in the overflow record, whose status
    is 0, and the bytes the server dropped were counted there. Made only for
    a request past the cap; every other one adds to its key's stats.
    """

    __slots__ = ("_stats",)

    def __init__(self, stats: Stats) -> None:
        object.__setattr__(self, "_stats", stats)

    def __getattr__(self, name: str) -> Any:
        return 0 if name == "response_bytes" else getattr(self._stats, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "response_bytes":
            setattr(self._stats, name, value)

    def absorb(self, other: Stats) -> None:
        kept = self._stats.response_bytes
        self._stats.absorb(other)
        self._stats.response_bytes = kept


def _text(value: str) -> str:
    return json.dumps(value, ensure_ascii=True)


def _number(value: float | None) -> str:
    if value is None:
        return "null"
    if value != value or value in (math.inf, -math.inf):
        raise ValueError(f"not a finite number: {value!r}")
    return repr(float(value))


@dataclass
class Batch:
    """What the recorder held between two collections.

    It keeps the live :class:`Stats` objects (taking them is one swap under the
    lock): encoding happens later, off the lock, and a batch that could not be
    sent is merged back without a round trip through JSON.
    """

    stats: dict[Key, Stats]
    dropped: int
    period_start: float
    period_end: float

    @property
    def records(self) -> list[dict[str, Any]]:
        """The batch as JSON-ready records (the shape of ``snapshot()``)."""
        return [stats.to_record(key) for key, stats in self.stats.items()]

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        dropped: int = 0,
        period_start: float = 0.0,
        period_end: float = 0.0,
    ) -> Batch:
        """A batch from records as ``snapshot()`` returns them (same keys add up)."""
        stats: dict[Key, Stats] = {}
        for record in records:
            if int(record["count"]) == 0:
                # Nothing to add, and a record of no requests is one the wire
                # format refuses (``count`` at least 1): the whole report with it.
                continue
            key = (str(record["method"]), str(record["route"]), int(record["status"]))
            incoming = Stats.from_record(record)
            if key in stats:
                stats[key].absorb(incoming)
            else:
                stats[key] = incoming
        return cls(stats=stats, dropped=dropped, period_start=period_start, period_end=period_end)

    def __bool__(self) -> bool:
        return bool(self.stats) or self.dropped > 0


class Recorder:
    """The in-memory aggregate store; every public method is safe across threads."""

    def __init__(
        self, max_keys: int = DEFAULT_MAX_KEYS, excluded_route: Callable[[str], bool] | None = None
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys!r}")
        self.max_keys = max_keys
        #: Routes never to keep (see :meth:`_new_stats`); None keeps every route.
        self.excluded_route = excluded_route
        #: Where an excluded route's requests go: a key's statistics that no
        #: collection or snapshot ever reads.
        self._discarded = Stats()
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str, int], Stats] = {}
        self._dropped = 0
        self._period_start = time.time()
        #: Requests recorded but not aggregated yet (see :meth:`record`). The
        #: same object for the recorder's lifetime: an integration on the hot
        #: path appends ``(method, route, status, duration, request_bytes,
        #: response_bytes)`` to it directly, and calls :meth:`aggregate_pending`
        #: once it holds :data:`PENDING_LIMIT` requests, saving a call per request.
        self.queue: deque[tuple[str, str, int, float, int, int]] = deque()

    def __len__(self) -> int:
        self.aggregate_pending()
        return len(self._stats)

    @property
    def dropped(self) -> int:
        """Requests that landed in the overflow key since the last collection."""
        self.aggregate_pending()
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
    ) -> None:
        """Add one request. The hot path: one tuple appended to a queue.

        Aggregating is deferred: once :data:`PENDING_LIMIT` requests wait, the
        request that adds the last one aggregates them all in one loop (after
        its own clock stopped), and :meth:`collect`, :meth:`snapshot` and every
        reading aggregate whatever waits. Why: inside a framework, the
        per-request aggregation ran with cold caches at several times its cost
        in a tight loop; a batch pays that once. ``deque.append`` is atomic, so
        request threads take no lock here.

        ``scheme`` is accepted so that every integration can call one
        signature; the aggregates do not keep it (only the OpenTelemetry
        instruments do).
        """
        pending = self.queue
        pending.append((method, route, status, duration, request_bytes, response_bytes))
        if len(pending) >= PENDING_LIMIT:
            self.aggregate_pending()

    def aggregate_pending(self, *, _log: Any = math.log2, _ceil: Any = math.ceil) -> None:
        """Fold every queued request into its key's statistics.

        Only a thread holding the lock takes items off the queue, and it takes
        no more than were there when it started, so concurrent appends are
        never lost and two aggregating threads never race for an item. The
        math functions are bound as defaults: one lookup less per item.
        """
        pending = self.queue
        take = pending.popleft
        with self._lock:
            all_stats = self._stats
            for _ in range(len(pending)):
                method, route, status, duration, request_bytes, response_bytes = take()
                if duration <= MIN_TRACKED:
                    index = MIN_INDEX
                elif duration >= MAX_TRACKED:
                    index = MAX_INDEX
                else:
                    index = _ceil(_log(duration) / _LOG_GAMMA)
                key = (method, route, status)
                stats = all_stats.get(key)
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

    def _new_stats(self, key: tuple[str, str, int], screened: bool = False) -> Stats:
        """Create the stats for a new key, or route to the overflow key past the cap.

        A key whose route the operator excluded is never made: its requests
        are added where nothing reads them. Why here and not only where the
        request comes in (``Telemetry.is_excluded``, on the request's path):
        a route template can be reached by a path the exclusion does not
        cover, and a template can hold a secret (a hidden admin URL). A
        request for ``/SecretAdmin``, which the router redirects to
        ``/SecretAdmin/``, is recorded under that template, and
        ``exclude_prefixes=["/SecretAdmin/"]`` did not stop it. Asked as a key
        is first seen: only an excluded route's requests ask every time, its
        key never being kept, and only in apps that exclude anything.

        Called with the lock held.
        """
        excluded_route = self.excluded_route
        if excluded_route is not None and not screened and excluded_route(key[1]):
            return self._discarded
        if len(self._stats) >= self.max_keys and key not in _OVERFLOW_KEYS:
            self._dropped += 1
            overflow = OVERFLOW_ERROR_KEY if key[2] >= 500 else OVERFLOW_KEY
            stats = self._stats.get(overflow)
            if stats is None:
                stats = self._stats[overflow] = Stats()
            if has_no_body(key[2]):
                return _Bodiless(stats)  # type: ignore[return-value]
            return stats
        stats = self._stats[key] = Stats()
        return stats

    def snapshot(self) -> list[dict[str, Any]]:
        """The current aggregates as JSON-ready records, without resetting them."""
        self.aggregate_pending()
        with self._lock:
            return [stats.to_record(key) for key, stats in self._stats.items()]

    def collect(self) -> Batch:
        """Atomically take everything recorded so far and start a new, empty period.

        One swap under the lock, after aggregating what is queued: request
        threads are never kept waiting (they queue without the lock).
        """
        self.aggregate_pending()
        now = time.time()
        with self._lock:
            stats, self._stats = self._stats, {}
            dropped, self._dropped = self._dropped, 0
            start, self._period_start = self._period_start, now
        return Batch(stats=stats, dropped=dropped, period_start=start, period_end=now)

    def merge(self, batch: Batch | Iterable[Mapping[str, Any]], dropped: int = 0) -> None:
        """Add a batch (from :meth:`collect`) or records (from :meth:`snapshot`) back in.

        Used when a send failed: the next report then covers both periods. The
        key cap still holds; merged keys past it land in the overflow key and
        their requests count as dropped. The lock is taken for a few dozen keys
        at a time, so request threads never wait long.
        """
        self.aggregate_pending()  # requests already queued claim their keys first
        if not isinstance(batch, Batch):
            batch = Batch.from_records(batch)
            period_start: float | None = None
        else:
            period_start = batch.period_start
        with self._lock:
            if period_start is not None and period_start < self._period_start:
                self._period_start = period_start
            self._dropped += dropped + batch.dropped
        items = list(batch.stats.items())
        for start in range(0, len(items), MERGE_SLICE):
            with self._lock:
                for key, incoming in items[start : start + MERGE_SLICE]:
                    stats = self._stats.get(key)
                    if stats is None:
                        before = self._dropped
                        # Screened as it was first made: a key merged back
                        # has lost what told an anonymized one from a template.
                        stats = self._new_stats(key, screened=True)
                        if self._dropped != before:  # overflow: count all its requests
                            self._dropped += incoming.count - 1
                    stats.absorb(incoming)

    def reset(self) -> None:
        """Forget everything, with a fresh lock: used in a child process after fork,
        where the parent's lock may have been held by a thread that does not exist here."""
        self._lock = threading.Lock()
        self._stats = {}
        self._dropped = 0
        self._period_start = time.time()
        self.queue.clear()  # the same object: integrations hold it
