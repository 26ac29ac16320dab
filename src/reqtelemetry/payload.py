"""The versioned wire format, documented in ``docs/payload.md``.

One report is a JSON object (schema: ``schema/payload-v1.json``). A batch too
big for one request body (``max_payload_bytes`` before compression, or more
than the schema's 10 000 records) is split into parts; each part is a
complete, valid report carrying a share of the records, and only part 0
carries the dropped count and the app metrics, so nothing is counted twice
when the collector adds parts up.

Records are serialised one at a time and joined, which both measures them for
splitting and keeps each stretch of C-level JSON encoding short, so the
flusher thread never holds the GIL long against request threads.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .histogram import MAX_TRACKED, MIN_TRACKED, RELATIVE_ACCURACY
from .recorder import Batch, Key
from .said_once import warn_once

if TYPE_CHECKING:
    import threading


SCHEMA_VERSION = 1
#: Most records in one report (the schema's ``maxItems``); more start a new part.
MAX_RECORDS_PER_REPORT = 10000
#: The schema's limit on a route; longer ones are cut (rare: deep anonymized paths).
MAX_ROUTE_LENGTH = 512
TRUNCATED_SUFFIX = "/..."
#: The most UTF-8 bytes a record's ``app_name``, ``method``, ``route`` and
#: ``app_version`` may take together (the collector refuses a report with a
#: longer one). PostgreSQL indexes the four as one entry
#: (``aggregates_app_endpoint``) and refuses an entry over 2704 bytes (a third
#: of an 8 KiB page); with their headers and padding (measured: at most 27
#: bytes), 2400 leaves room to spare. The schema's own maxima allow 3088.
MAX_ENDPOINT_KEY_BYTES = 2400
#: What a route may take of that, in UTF-8 bytes, beside the longest method
#: (16) and app name and version (128 characters each, up to 4 bytes a
#: character). Only routes outside ASCII can reach it.
MAX_ROUTE_BYTES = MAX_ENDPOINT_KEY_BYTES - 16 - 2 * 4 * 128
#: Seconds of encoding between two moments where the flusher lets request threads run.
#: While flushes ran back to back, a thread waking from a 1 ms sleep got the GIL
#: 0.32 ms late at the median with 0.5 ms here, 0.08 ms with 0.1 ms (as when quiet).
YIELD_EVERY = 0.0001
#: ... and how long it pauses then: fifty times as long, so that a flush holds the GIL
#: about a fiftieth of the time. The GIL is what a busy server queues for, and its
#: queue grows steeply with each share taken from it: at a 1:1 rhythm a flush held
#: it 40 % of the time, and at 1:5 a sixth. At that rhythm uvicorn's p99, at a
#: quarter of its capacity, was 2.77x that of the same seconds without a flush
#: (the median of 8 rounds, 2.12x to 4.72x; ``benchmarks/flush_latency.py``'s
#: windows, 2026-12-07), and 1.72x (1.06x to 2.78x) at 1:50. A full batch's
#: encoding then takes about a second and a half instead of a quarter, paced
#: only within a share of the flush's budget (``flusher.PAUSING_SHARE``), and
#: not at all once a shutdown hurries it.
YIELD_PAUSE = 0.005
#: The largest magnitude a metric value may have on the wire, int or float.
#: Why 2^63 - 1 for both: the collector refuses an integer past 64 bits (and
#: with it the whole report), and it adds metric values up in a float column,
#: where PostgreSQL's ``SUM`` fails on overflow; values this small cannot reach
#: the largest float however many reports are added up.
MAX_METRIC_VALUE = 2**63 - 1
#: The longest latency a record carries, in seconds: the collector refuses a
#: ``min``, ``max`` or percentile past it (docs/payload.md, "Limits").
MAX_LATENCY_SECONDS = 1e9
#: Room kept in every request body for the envelope's token and stamp.
ENVELOPE_ALLOWANCE = 1024
KINDS = ("startup", "periodic", "shutdown")
HISTOGRAM_SPEC = {
    "kind": "log",
    "relative_accuracy": RELATIVE_ACCURACY,
    "min_tracked": MIN_TRACKED,
    "max_tracked": MAX_TRACKED,
}


@dataclass(frozen=True)
class Envelope:
    """Everything in a report except the records."""

    kind: str
    sequence: int
    deployment_id: str
    instance_id: str
    traits: Mapping[str, Any]
    withheld: Sequence[str]
    metrics: Mapping[str, Mapping[str, float]]
    internal_errors: int = 0


@dataclass(frozen=True)
class Report:
    """One request body, and what it carries (to put back if it is not delivered)."""

    body: bytes
    #: The batch's keys whose records are in this body.
    keys: list[Key]
    #: Part 0 carries the batch's dropped count and the app metrics.
    carries_totals: bool


@dataclass(frozen=True)
class Pacing:
    """How one flush's CPU-bound steps make way for request threads.

    One value for the whole flush, handed from the flusher to the encoding,
    the envelope and the POSTs, because all three must stop pausing at the
    same moment: when the flush is hurried or its share of the budget for
    pauses is spent (see :class:`Pacer` for why it pauses at all).
    """

    #: False for the final flush at shutdown: no request of this process waits
    #: for the GIL any more, and the shutdown budget is better spent sending.
    paced: bool = True
    #: Set when something waits for this flush (a shutdown, or a caller's
    #: ``flush(timeout=...)``): no more pauses from then on.
    hurry: threading.Event | None = None
    #: A ``time.monotonic()`` reading past which no pause begins: the share
    #: of the flush's budget that pausing may take.
    until: float = math.inf

    def pauses_over(self) -> bool:
        """Whether a paced flush must stop pausing: hurried, or past :attr:`until`.
        Asked by the encoding's :class:`Pacer` and by the transport's pauses
        around each POST alike."""
        hurry = self.hurry
        return (hurry is not None and hurry.is_set()) or time.monotonic() >= self.until


#: Paced, never hurried, no limit: what a periodic flush's steps do by default.
PACED = Pacing()
#: No pauses at all: the final flush at shutdown, and tools that encode offline.
UNPACED = Pacing(paced=False)


class Pacer:
    """Lets other threads run every ``every`` seconds of a long loop.

    The flusher shares the GIL with request threads; CPython hands the GIL
    over only every switch interval (5 ms) unless the holder lets go. A short
    real sleep every tenth of a millisecond of work keeps a request thread
    from waiting longer than that for it, each time it needs the GIL again
    (a request needs it several times: after every socket read and write).
    (``sleep(0)`` is not enough: the flusher, still on the CPU, usually takes
    the GIL straight back.) Pausing fifty times as long as it works, the
    flusher holds the GIL and a core about a fiftieth of the time, so request
    threads rarely find it held, and a busy server's queue for it hardly
    grows. Encoding a full batch then takes a second or two instead of some
    40 ms, which a periodic flush's budget (30 s by default) easily holds.
    The pauses stop where something does wait (see :meth:`Pacing.pauses_over`):
    a shutdown, whose final report waits for the flush under way, or a caller
    of ``Telemetry.flush(timeout=1)``, whose short budget leaves pausing a
    short share.
    """

    __slots__ = ("_due", "_pacing", "every")

    def __init__(self, pacing: Pacing = PACED) -> None:
        #: An unpaced one never pauses.
        self.every = YIELD_EVERY if pacing.paced else math.inf
        self._due = perf_counter() + self.every
        self._pacing = pacing

    def tick(self) -> None:
        now = perf_counter()
        if now >= self._due:
            if self._pacing.pauses_over():
                self.every = self._due = math.inf  # no more pauses
                return
            time.sleep(YIELD_PAUSE)
            self._due = perf_counter() + self.every


def truncate_route(route: str) -> str:
    """Cut a route to the schema's limit at a segment boundary, marking the cut."""
    if len(route) <= MAX_ROUTE_LENGTH:
        return route
    keep = route[: MAX_ROUTE_LENGTH - len(TRUNCATED_SUFFIX)]
    cut = keep.rfind("/")
    return (keep[:cut] if cut > 0 else keep) + TRUNCATED_SUFFIX


#: What the schema takes as a method.
_METHOD = re.compile(r"[A-Z]{1,16}|_OTHER")


def _fit_key(key: Key) -> Key:
    """``key`` as the wire format takes it.

    The integrations only make keys that fit, but ``Telemetry.record`` is
    open to any caller, and the collector refuses a whole report for one
    record it cannot take, the good records with it. So an unknown method
    becomes ``_OTHER`` (as the integrations record it), a status outside
    0-999 becomes 0 (unknown, as the overflow record's), text that is not
    valid Unicode or holds NUL is mended, and a long route is cut (to the
    schema's characters, and to the bytes the collector's index can hold).
    """
    method, route, status = key
    if type(status) is not int:
        # An integer of another type is that status: ``HTTPStatus.CREATED``,
        # which Django keeps as a view assigns it to ``response.status_code``
        # (and its key is the same as 201's), was sent as 0, "unknown".
        status = int(status) if isinstance(status, Integral) and type(status) is not bool else 0
    if not 0 <= status <= 999:
        status = 0
    if not _METHOD.fullmatch(method):
        method = "_OTHER"
    if not route.isascii() or "\x00" in route:
        route = route.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    if len(route) > MAX_ROUTE_LENGTH:
        route = truncate_route(route)
    if not route.isascii():
        route = _within_bytes(route)
    return (method, route, status)


def _within_bytes(route: str) -> str:
    """``route`` cut, as :func:`truncate_route` cuts, until it takes at most
    :data:`MAX_ROUTE_BYTES` of UTF-8 (a long route of four-byte characters)."""
    limit = MAX_ROUTE_LENGTH
    while len(route.encode("utf-8")) > MAX_ROUTE_BYTES:
        limit -= 16
        keep = route[: limit - len(TRUNCATED_SUFFIX)]
        cut = keep.rfind("/")
        route = (keep[:cut] if cut > 0 else keep) + TRUNCATED_SUFFIX
    return route


def metric_value_fits(value: object, *, counter: bool) -> bool:
    """Whether the collector takes ``value`` as a metric: an int (not a bool)
    or a finite float, within :data:`MAX_METRIC_VALUE`, and not negative for a
    counter. Exact types only: anything else would be a bug upstream."""
    lowest = 0 if counter else -MAX_METRIC_VALUE
    if type(value) is int:
        return lowest <= value <= MAX_METRIC_VALUE
    if type(value) is float:
        return math.isfinite(value) and lowest <= value <= MAX_METRIC_VALUE
    return False


def _fit_metrics(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``metrics`` without the values the collector could not take.

    :mod:`.metrics` checks every value where the app gives it, so nothing
    should go here. Why check again: one value the collector cannot hold
    costs the whole report, the request records with it, and one JSON cannot
    encode (``inf``) fails the flush, which puts it back for the next flush
    to fail on, for good. Dropping a bad value costs only that value.
    """
    fitted: dict[str, dict[str, float]] = {}
    dropped: list[str] = []
    for group in ("counters", "gauges"):
        values = metrics.get(group, {})
        fitted[group] = {
            name: value
            for name, value in values.items()
            if metric_value_fits(value, counter=group == "counters")
        }
        dropped += [name for name in values if name not in fitted[group]]
    if dropped:
        warn_once(
            "unfit metrics",
            "reqtelemetry: metrics %s left out of a report: values it cannot carry",
            dropped,
        )
    return fitted


def _escaped_length(text: str) -> int:
    """Length of ASCII JSON ``text`` once embedded in a JSON string (without its quotes).

    Our JSON is ASCII with no control characters: only quotes and backslashes
    gain a backslash.
    """
    return len(text) + text.count('"') + text.count("\\")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def build_reports(
    envelope: Envelope,
    batch: Batch,
    max_bytes: int,
    *,
    pacing: Pacing = PACED,
    oversized_alone: bool = False,
) -> list[Report]:
    """Encode the batch as one or more JSON bodies, none larger than ``max_bytes``.

    ``pacing`` says how the encoding makes way for request threads (see
    :class:`Pacing`); :data:`UNPACED` encodes in one go, for the final flush
    at shutdown and for tools that build reports offline.

    A record that does not fit in ``max_bytes`` even alone raises ValueError,
    unless ``oversized_alone``: it then gets a part of its own, the only one
    over ``max_bytes``. The flusher asks for that once a collector's smaller
    body cap (a ``413``) made it go below ``max_payload_bytes``: the collector
    may still take such a part, and only it can tell.
    """
    if envelope.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {envelope.kind!r}")
    metrics = _fit_metrics(envelope.metrics)
    pacer = Pacer(pacing)
    keys = list(batch.stats)
    encoded = []
    for key in keys:
        encoded.append(batch.stats[key].to_json(_fit_key(key)))
        pacer.tick()
    empty_metrics: dict[str, dict[str, float]] = {"counters": {}, "gauges": {}}

    def head(part: int, parts: int) -> dict[str, Any]:
        first = part == 0
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": envelope.kind,
            "sent_at": round(time.time(), 3),
            "sequence": envelope.sequence,
            "part": part,
            "parts": parts,
            "deployment_id": envelope.deployment_id,
            "instance_id": envelope.instance_id,
            "traits": dict(envelope.traits),
            "withheld": sorted(set(envelope.withheld)),
            "metrics": metrics if first else empty_metrics,
            "internal_errors": envelope.internal_errors if first else 0,
            "batch": {
                "period_start": batch.period_start,
                "period_end": batch.period_end,
                "dropped": batch.dropped if first else 0,
                "histogram": HISTOGRAM_SPEC,
                "records": [],
            },
        }

    # Room left for records once the rest of the report is in (a generous
    # allowance for the part counters and the time stamp, whose digits vary).
    # The report travels as a JSON string inside the protocol's envelope, where
    # every quote is escaped: sizes are measured in that escaped form, and the
    # envelope's own fields (token, stamp) get a fixed allowance.
    overhead = _escaped_length(_dumps(head(0, 1))) + 64 + ENVELOPE_ALLOWANCE
    room = max_bytes - overhead
    groups: list[list[int]] = [[]]
    used = 0
    for position, item in enumerate(encoded):
        size = _escaped_length(item) + 1
        pacer.tick()
        if size > room:
            if not oversized_alone:
                raise ValueError(
                    f"one record needs {size} bytes but max_payload_bytes leaves {room}; "
                    "raise max_payload_bytes"
                )
            if groups[-1]:
                groups.append([])
            groups[-1].append(position)
            groups.append([])  # nothing joins it
            used = 0
            continue
        if (used + size > room or len(groups[-1]) >= MAX_RECORDS_PER_REPORT) and groups[-1]:
            groups.append([])
            used = 0
        groups[-1].append(position)
        used += size
    # An empty batch is still one (empty) report; otherwise no part is empty.
    groups = [group for group in groups if group] or [[]]

    reports = []
    marker = '"records":[]'
    for part, group in enumerate(groups):
        text = _dumps(head(part, len(groups)))
        # Splice the pre-encoded records into the empty list that ends the text.
        index = text.rindex(marker) + len(marker) - 1
        body = text[:index] + ",".join([encoded[i] for i in group]) + text[index:]
        pacer.tick()
        reports.append(
            Report(
                body=body.encode("ascii"),
                keys=[keys[i] for i in group],
                carries_totals=part == 0,
            )
        )
    return reports
