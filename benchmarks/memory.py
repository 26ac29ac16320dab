"""Recorder memory after a million requests: bounded by the key cap, not by traffic.

Design decision 1 says memory grows with the number of keys, never with
traffic, and that past ``max_keys`` requests land in an overflow key (two:
server errors apart, so that they stay errors). This
module feeds a ``Recorder`` at the default cap a million ``record`` calls and
measures, with ``tracemalloc``, what it holds afterwards:

- (a) **100,000 distinct unmatched paths** (scanner probes and identifier-bearing
  URLs of an app without route templates), each turned into its key by
  ``Telemetry.route_for_unrouted(path, matched=True)``, so that every path
  really is a different hashed key (``matched=False`` would fold them all into
  ``<unmatched>``): the cap is reached after 1,000 keys and the rest must
  land in the overflow key. A route-less app also keeps ``Telemetry``'s
  path-to-key cache (:data:`reqtelemetry.telemetry.ANONYMIZED_CACHE_SIZE`
  raw paths and their keys, emptied when full), so (a) adds that cache at its
  fullest, measured on its own (:func:`measure_path_cache`). Why apart: turning
  every one of the million paths into its key under ``tracemalloc`` takes
  longer (about 25 s) than the rest of the module; the cache is filled with
  as many paths as it holds, its high-water mark for paths like these. Its
  bytes grow with the paths' length, so the notes also give it filled with
  the longest paths it keeps (:func:`longest_cached_paths`), its bound.
- (b) **500 templated routes** of a large API with realistic traffic: a
  Zipf-like popularity (a few routes get most requests), a method per route, a
  status mix (90 % 200, then 201, 204, 304 and the common 4xx/5xx) and a
  log-normal latency per route (median between 2 ms and 300 ms, a spread that
  occupies tens of histogram buckets per key). Route, status and latency are
  drawn independently for every one of the calls (:func:`templated_traffic`),
  so rare statuses keep adding keys and the histograms' tails keep growing as
  they would under real traffic; a stream that repeated itself would stop
  growing after its first period. The traced memory is also read half-way, to
  show how much it still grows.
- (c) **the cap's worst case**: ``max_keys`` keys whose latency histograms each
  occupy every bucket the histogram can have (1 µs to 1 hour). No traffic
  looks like this; it is the bound that the cap guarantees.

The inputs (paths, keys, latencies) are built before tracing starts; what is
traced is the recorder and everything it allocates. (b)'s draws are kept in
typed arrays (about 12 MB for a million calls, against some 50 MB as lists of
Python objects) and are not counted. The route strings its keys
keep alive were allocated by the caller (as an app's templates, or the
anonymizer's output, are), so their size is added separately. The garbage
collector runs before each reading, after the recorder has aggregated the
requests still queued. The baseline is an empty ``Recorder``. A scenario whose
recorder does not account for every call it was fed (the counts of its keys,
the overflow key's included) is marked BROKEN instead of given a verdict.

Run alone with ``python -m benchmarks memory``; ``BENCH_QUICK=1`` cuts it to a
smoke test of a couple of seconds.
"""

from __future__ import annotations

import gc
import itertools
import math
import random
import sys
import time
import tracemalloc
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import load_average, quick

#: The design's budget at the default key cap, after the million requests.
BUDGET_MIB = 5.0
MIB = 1024 * 1024

#: Row labels, in table order (the smoke test checks they are all present).
SCENARIO_LABELS = (
    "(a) 100,000 distinct unmatched paths",
    "(b) 500 templated routes",
    "(c) worst case: every key's histogram full",
)


@dataclass(frozen=True)
class Settings:
    requests: int
    distinct_paths: int
    templates: int


FULL = Settings(requests=1_000_000, distinct_paths=100_000, templates=500)
QUICK = Settings(requests=50_000, distinct_paths=5_000, templates=500)


@dataclass(frozen=True)
class Reading:
    """The recorder as it stood after ``calls`` record calls (with the key strings it holds)."""

    calls: int
    bins: int
    traced_bytes: int
    route_bytes: int


@dataclass
class Result:
    label: str
    requests: int
    keys: int
    dropped: int
    bins: int
    traced_bytes: int
    peak_bytes: int
    route_bytes: int
    seconds: float
    #: What the recorder's keys count together (the overflow key's included):
    #: every call fed, or the recorder lost some.
    recorded: int = 0
    #: The reading half-way through the calls, where the scenario takes one.
    halfway: Reading | None = None
    #: ``Telemetry``'s path-to-key cache at its fullest, where the scenario needs it.
    cache_bytes: int = 0
    cache_entries: int = 0

    @property
    def recorder_bytes(self) -> int:
        """The recorder and the key strings it holds."""
        return self.traced_bytes + self.route_bytes

    @property
    def total_bytes(self) -> int:
        return self.recorder_bytes + self.cache_bytes

    @property
    def broken(self) -> bool:
        """True when the recorder does not account for every call it was fed."""
        return self.recorded != self.requests


#: What a scenario's feed is given besides the recorder: call it with the
#: number of calls made so far to take a reading half-way (optional).
Checkpoint = Callable[[int], None]


def _bins(recorder: Any) -> int:
    return sum(len(entry.bins) for entry in recorder._stats.values())


def _route_bytes(recorder: Any) -> int:
    """``sys.getsizeof`` of each distinct route string the recorder's keys hold."""
    routes = {id(route): route for _method, route, _status in recorder._stats}
    return sum(sys.getsizeof(route) for route in routes.values())


def measure(label: str, feed: Callable[[Any, Checkpoint], int], max_keys: int) -> Result:
    """Trace a fresh ``Recorder(max_keys)`` while ``feed`` records into it.

    Each reading comes after the recorder has aggregated what it still had
    queued, and after a garbage collection; the time a half-way reading takes
    is left out of ``seconds``.
    """
    from reqtelemetry.recorder import Recorder

    halfway: list[Reading] = []
    paused = 0.0

    def checkpoint(calls: int) -> None:
        nonlocal paused
        began = time.perf_counter()
        recorder.aggregate_pending()
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
        halfway.append(Reading(calls, _bins(recorder), current - base, _route_bytes(recorder)))
        paused += time.perf_counter() - began

    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        recorder = Recorder(max_keys=max_keys)
        started = time.perf_counter()
        requests = feed(recorder, checkpoint)
        recorder.aggregate_pending()
        seconds = time.perf_counter() - started - paused
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stats = recorder._stats
    return Result(
        label=label,
        requests=requests,
        keys=len(stats),
        dropped=recorder.dropped,
        bins=_bins(recorder),
        traced_bytes=current - base,
        peak_bytes=peak - base,
        route_bytes=_route_bytes(recorder),
        seconds=seconds,
        recorded=sum(entry.count for entry in stats.values()),
        halfway=halfway[0] if halfway else None,
    )


# -- (a) distinct unmatched paths ------------------------------------------------------


def unmatched_paths(count: int, seed: int = 7) -> list[str]:
    """Paths a scanner or an app with identifiers in its URLs produces."""
    rng = random.Random(seed)
    words = ("admin", "backup", "config", "old", "test", "wp", "phpmyadmin", "shell", "cgi-bin")
    shapes: tuple[Callable[[], str], ...] = (
        lambda: f"/wp-content/plugins/{rng.choice(words)}{rng.randrange(10**6)}/readme.txt",
        lambda: f"/api/v1/users/{rng.getrandbits(128):032x}/avatar",
        lambda: f"/files/{rng.randrange(10**9)}/{rng.getrandbits(64):016x}.pdf",
        lambda: f"/.{rng.choice(words)}.{rng.randrange(10**6)}",
        lambda: f"/share/{rng.getrandbits(96):024x}",
        lambda: f"/orders/{rng.randrange(10**8)}/items/{rng.randrange(1000)}",
    )
    seen: set[str] = set()
    paths: list[str] = []
    while len(paths) < count:
        path = rng.choice(shapes)()
        if path not in seen:
            seen.add(path)
            paths.append(path)
    return paths


def latencies(count: int, median: float, sigma: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(math.log(median), sigma) for _ in range(count)]


def feed_unmatched(routes: list[str], requests: int) -> Callable[[Any, Checkpoint], int]:
    n = len(routes)
    stride = 7919  # prime, so coprime with any count made of 2s and 5s: every path is visited
    if math.gcd(stride, n) != 1:
        stride = 1
    durations = latencies(4096, 0.004, 0.8, seed=11)
    statuses = (404,) * 12 + (200, 200, 301, 403)

    def feed(recorder: Any, checkpoint: Checkpoint) -> int:
        record = recorder.record
        half = requests // 2
        for begin, end in ((0, half), (half, requests)):
            for i in range(begin, end):
                record(
                    "GET", routes[(i * stride) % n], statuses[i & 15], durations[i & 4095], 0, 153
                )
            if begin == 0:
                checkpoint(half)
        return requests

    return feed


def longest_cached_paths(count: int) -> list[str]:
    """``count`` distinct paths as long as the path cache keeps
    (:data:`~reqtelemetry.telemetry.ANONYMIZED_CACHE_MAX_LENGTH`), of 8-digit
    hexadecimal segments, each hashed: their keys are as long as keys get.

    Why: the cache's bytes grow with its paths' and keys' lengths, so its
    bound is not what the benchmark's short paths fill it with. ASCII, since
    the cache keeps no path outside it (stored at up to 4 bytes a
    character), so no path it keeps takes more than these.
    """
    from reqtelemetry.telemetry import ANONYMIZED_CACHE_MAX_LENGTH

    segments = ANONYMIZED_CACHE_MAX_LENGTH // 9 + 1
    return [
        ("/" + "/".join(f"{(n * 131 + i * 17) & 0xFFFFFFFF:08x}" for i in range(segments)))[
            :ANONYMIZED_CACHE_MAX_LENGTH
        ]
        for n in range(count)
    ]


def measure_path_cache(paths: list[str]) -> tuple[int, int]:
    """Entries and bytes of ``Telemetry``'s path-to-key cache at its fullest.

    A route-less app turns each request's path into its key through
    ``Telemetry.route_for_unrouted``, which keeps up to
    :data:`~reqtelemetry.telemetry.ANONYMIZED_CACHE_SIZE` raw paths and their
    keys, and empties the cache when it is full. Why measure it at all: it is
    memory the app holds because of reqtelemetry, beside the recorder. Why
    full, and apart from the recorder's million calls: how full it is after the
    run depends only on the number of calls modulo its size, while its high
    water mark is reached under any traffic of that many distinct paths (its
    bytes, with their length: see :func:`longest_cached_paths`), and
    filling it takes a fraction of a second where running the million calls
    through it under ``tracemalloc`` would more than double the module's time.

    Traced: what a fresh ``Telemetry`` allocates while its cache fills (the
    dict, its keys, the hashed route strings). The raw paths were the
    caller's, as a server allocates them per request; the cache keeps them
    alive, so their ``sys.getsizeof`` is added.
    """
    from benchmarks.overhead import _telemetry
    from reqtelemetry.telemetry import ANONYMIZED_CACHE_SIZE

    telemetry = _telemetry(opt_out=False)
    route_for = telemetry.route_for_unrouted
    sample = paths[:ANONYMIZED_CACHE_SIZE]
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for path in sample:
            route_for(path, "", matched=True)
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    cache = telemetry._anonymized
    if len(cache) != len(sample):
        raise RuntimeError(f"expected {len(sample)} cached paths, found {len(cache)}")
    raw = sum(sys.getsizeof(path) for path, _query in cache)
    return len(cache), current - base + raw


# -- (b) templated routes ---------------------------------------------------------------

RESOURCES = (
    "users",
    "teams",
    "projects",
    "issues",
    "comments",
    "orders",
    "invoices",
    "payments",
    "products",
    "reviews",
    "files",
    "webhooks",
    "tokens",
    "reports",
    "exports",
    "events",
    "notifications",
    "settings",
    "audit-log",
    "search",
    "tags",
    "labels",
    "milestones",
    "releases",
    "deployments",
)
SUFFIXES = (
    "",
    "/{id}",
    "/{id}/members",
    "/{id}/history",
    "/{id}/children/{child_id}",
    "/{id}/actions/{action}",
    "/{id}/attachments",
    "/{id}/attachments/{attachment_id}",
    "/export",
    "/bulk",
)
METHODS = ("GET", "GET", "GET", "GET", "POST", "PUT", "PATCH", "DELETE")
#: (status, share of requests): mostly 200, then what a busy API answers.
STATUS_MIX = (
    (200, 0.90),
    (201, 0.02),
    (204, 0.01),
    (304, 0.02),
    (400, 0.01),
    (401, 0.01),
    (403, 0.005),
    (404, 0.015),
    (409, 0.002),
    (422, 0.003),
    (429, 0.002),
    (500, 0.002),
    (502, 0.0005),
    (503, 0.0005),
)


def templated_routes(count: int) -> list[tuple[str, str]]:
    """``count`` distinct (method, template) pairs of a large API."""
    routes = [
        f"/api/v{version}/{resource}{suffix}"
        for version in (1, 2)
        for resource in RESOURCES
        for suffix in SUFFIXES
    ]
    if count > len(routes):
        raise ValueError(f"at most {len(routes)} templates")
    rng = random.Random(5)
    return [(rng.choice(METHODS), route) for route in routes[:count]]


@dataclass(frozen=True)
class Traffic:
    """One independent draw per call: the route's index, the status, the latency (s).

    Typed arrays, so that a million calls' draws take 12 MB, not the 50 MB or
    so of lists of Python ints and floats; built before tracing starts.
    """

    routes: array[int]
    statuses: array[int]
    durations: array[float]


#: Draws are made in chunks of this many calls, so that the Python lists
#: ``random.choices`` returns stay small before they are packed into arrays.
CHUNK = 65_536


def templated_traffic(route_count: int, requests: int, seed: int = 3) -> Traffic:
    """Draw route, status and latency independently for each of ``requests`` calls.

    Routes by a Zipf-like popularity (weight ``1 / rank**1.1``), statuses from
    :data:`STATUS_MIX`, and each route's latency log-normal with sigma 0.6
    around a median of its own, drawn log-uniformly between 2 ms and 300 ms.
    Why every call its own draw: the recorder's memory grows with the distinct
    (method, route, status) keys and histogram buckets the traffic reaches, and
    a stream that repeats a shorter one reaches no more than that one does.
    """
    rng = random.Random(seed)
    route_weights = list(itertools.accumulate(1 / (rank + 1) ** 1.1 for rank in range(route_count)))
    codes = [status for status, _ in STATUS_MIX]
    status_weights = list(itertools.accumulate(share for _, share in STATUS_MIX))
    log_medians = [rng.uniform(math.log(0.002), math.log(0.3)) for _ in range(route_count)]
    indices = range(route_count)
    lognormal = rng.lognormvariate
    traffic = Traffic(array("H"), array("H"), array("d"))
    for begin in range(0, requests, CHUNK):
        size = min(CHUNK, requests - begin)
        chunk = rng.choices(indices, cum_weights=route_weights, k=size)
        traffic.routes.extend(chunk)
        traffic.statuses.extend(rng.choices(codes, cum_weights=status_weights, k=size))
        traffic.durations.extend([lognormal(log_medians[index], 0.6) for index in chunk])
    return traffic


def feed_templated(
    routes: list[tuple[str, str]], requests: int
) -> Callable[[Any, Checkpoint], int]:
    """Record ``requests`` calls over ``routes``, each call drawn on its own.

    The draws (:func:`templated_traffic`) are made here, before tracing starts.
    """
    traffic = templated_traffic(len(routes), requests)

    def feed(recorder: Any, checkpoint: Checkpoint) -> int:
        record = recorder.record
        half = requests // 2
        for begin, end in ((0, half), (half, requests)):
            # islice walks the arrays without copying them (a slice would be
            # a copy, allocated under tracing).
            draws = zip(
                itertools.islice(traffic.routes, begin, end),
                itertools.islice(traffic.statuses, begin, end),
                itertools.islice(traffic.durations, begin, end),
                strict=True,
            )
            for index, status, duration in draws:
                method, route = routes[index]
                record(method, route, status, duration, 0 if method == "GET" else 420, 2_300)
            if begin == 0:
                checkpoint(half)
        return requests

    return feed


# -- (c) the cap's worst case ---------------------------------------------------------


def feed_worst_case(max_keys: int) -> Callable[[Any, Checkpoint], int]:
    from reqtelemetry.histogram import MAX_INDEX, MIN_INDEX, bucket_value

    # One value per bucket, from 1 µs to an hour; counts above 256 are real int objects.
    values = [bucket_value(index) for index in range(MIN_INDEX, MAX_INDEX + 1)]
    keys = [("GET", f"/worst/{n}/{{id}}", 200) for n in range(max_keys)]

    def feed(recorder: Any, checkpoint: Checkpoint) -> int:
        record = recorder.record
        calls = 0
        for method, route, status in keys:
            for value in values:
                record(method, route, status, value, 0, 100)
                calls += 1
        # Large counts, as after a busy period (small ints are shared singletons).
        recorder.aggregate_pending()
        for entry in recorder._stats.values():
            for index in entry.bins:
                entry.bins[index] = 1_000_003 + index
        return calls

    return feed


# -- the run ----------------------------------------------------------------------------


def _mib(value: int) -> str:
    return f"{value / MIB:.2f}"


def verdict(result: Result) -> str:
    """The budget cell: PASS or MISS, or BROKEN where the recorder lost calls.

    Why BROKEN comes first: a recorder that dropped requests on the floor
    would look lean, and its memory says nothing about the budget.
    """
    if result.broken:
        return f"**BROKEN** (recorded {result.recorded:,} of {result.requests:,} calls)"
    passed = result.total_bytes < BUDGET_MIB * MIB
    worst = result.label == SCENARIO_LABELS[2]
    return f"**{'PASS' if passed else 'MISS'}**" + (" (bound, not traffic)" if worst else "")


def table(results: list[Result], empty: int) -> str:
    rows = [
        "| scenario | record calls | keys held | dropped to overflow | histogram buckets "
        "| traced MiB | + key strings MiB | + path cache MiB | total MiB | bytes per key "
        "| peak MiB | half-way: buckets / total MiB | seconds "
        f"| budget < {BUDGET_MIB:g} MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        per_key = result.recorder_bytes / result.keys if result.keys else 0
        cache = _mib(result.cache_bytes) if result.cache_entries else "—"
        halfway = "—"
        if result.halfway is not None:
            reading = result.halfway
            at_half = reading.traced_bytes + reading.route_bytes + result.cache_bytes
            halfway = f"{reading.bins:,} / {_mib(at_half)}"
        rows.append(
            f"| {result.label} | {result.requests:,} | {result.keys:,} | {result.dropped:,} "
            f"| {result.bins:,} | {_mib(result.traced_bytes)} | {_mib(result.route_bytes)} "
            f"| {cache} | **{_mib(result.total_bytes)}** | {per_key:,.0f} "
            f"| {_mib(result.peak_bytes)} | {halfway} | {result.seconds:.1f} "
            f"| {verdict(result)} |"
        )
    rows.append(
        f"| baseline: an empty `Recorder()` | 0 | 0 | 0 | 0 | {_mib(empty)} | 0.00 | — "
        f"| {_mib(empty)} | — | — | — | — | — |"
    )
    return "\n".join(rows)


def run() -> str:
    """Measure every scenario and return the markdown section."""
    from benchmarks.overhead import _telemetry
    from reqtelemetry.histogram import MAX_INDEX, MIN_INDEX
    from reqtelemetry.recorder import DEFAULT_MAX_KEYS

    settings = QUICK if quick() else FULL
    load_before = load_average()
    started = time.perf_counter()
    telemetry = _telemetry(opt_out=False)
    max_keys = telemetry.config.max_keys
    if max_keys != DEFAULT_MAX_KEYS:
        raise RuntimeError(f"expected the default key cap, got max_keys={max_keys}")

    paths = unmatched_paths(settings.distinct_paths)
    unmatched = [telemetry.route_for_unrouted(path, "", matched=True) for path in paths]
    distinct_keys = len(set(unmatched))
    templated = templated_routes(settings.templates)

    empty = measure("empty", lambda recorder, checkpoint: 0, max_keys).traced_bytes
    unmatched_result = measure(
        SCENARIO_LABELS[0], feed_unmatched(unmatched, settings.requests), max_keys
    )
    unmatched_result.cache_entries, unmatched_result.cache_bytes = measure_path_cache(paths)
    from reqtelemetry.telemetry import ANONYMIZED_CACHE_MAX_LENGTH, ANONYMIZED_CACHE_SIZE

    _, cache_bound = measure_path_cache(longest_cached_paths(ANONYMIZED_CACHE_SIZE))
    results = [
        unmatched_result,
        measure(SCENARIO_LABELS[1], feed_templated(templated, settings.requests), max_keys),
        measure(SCENARIO_LABELS[2], feed_worst_case(max_keys), max_keys),
    ]
    elapsed = time.perf_counter() - started

    mode = "quick (BENCH_QUICK=1: rough, for smoke tests)" if quick() else "full"
    buckets = MAX_INDEX - MIN_INDEX + 1
    lines = [
        "## Recorder memory after a million requests",
        "",
        f"- mode: {mode}; {elapsed:.0f} s; load average (1/5/15 min) before: {load_before}, "
        f"after: {load_average()}",
        f"- a `Recorder` at the default key cap (`max_keys={max_keys}`), measured with "
        "`tracemalloc` (current traced memory after the queued requests are aggregated and "
        "`gc.collect()` has run, minus the reading before the recorder was made; peak: the "
        "highest reading during the calls); the route strings its keys hold were allocated "
        "by the caller and are added as `sys.getsizeof` of each distinct string; bytes per "
        "key: the recorder and its key strings over the keys held; half-way: the same "
        "reading after half the calls, with the same additions; seconds: the record calls "
        "under `tracemalloc`, which slows allocation severalfold",
        f"- (a): {settings.requests:,} calls over {settings.distinct_paths:,} distinct paths "
        f"({distinct_keys:,} distinct keys after "
        "`Telemetry.route_for_unrouted(path, matched=True)`: hashed segments), each path "
        "visited in turn; statuses 404 (75 %), 200, 301, 403; latencies log-normal around "
        "4 ms (4,096 draws, reused in turn); + path cache: what a route-less app also holds, "
        f"`Telemetry`'s path-to-key cache at its fullest ({unmatched_result.cache_entries:,} "
        "raw paths and their keys, measured on its own by filling a fresh `Telemetry`'s "
        "cache with this scenario's paths; it is emptied when full, so this is its "
        "high-water mark for paths like these), counted in the total and the budget; "
        f"with the longest paths it keeps ({ANONYMIZED_CACHE_SIZE:,} of "
        f"{ANONYMIZED_CACHE_MAX_LENGTH} characters, every segment hashed, the longest keys) "
        f"the cache holds {_mib(cache_bound)} MiB, and (a) would total "
        f"{_mib(unmatched_result.recorder_bytes + cache_bound)} MiB",
        f"- (b): {settings.requests:,} calls over {settings.templates} (method, template) "
        "routes, each call's route, status and latency drawn independently (no stream "
        "repeated): Zipf-like popularity (weight 1/rank^1.1), "
        + ", ".join(f"{status} {share:.1%}" for status, share in STATUS_MIX[:4])
        + " and the common 4xx/5xx for the rest; per-route log-normal latency, median "
        "2-300 ms, sigma 0.6; request and response sizes counted; the draws, kept in typed "
        "arrays built before tracing, are not counted",
        f"- (c): {max_keys:,} keys x all {buckets} histogram buckets (1 µs to 1 hour), counts "
        "above a million: the most the cap lets a recorder hold, whatever the traffic",
        f"- budget: under {BUDGET_MIB:g} MiB at the default cap after the million requests of "
        "(a) and (b); reported, never enforced; a scenario whose keys do not count every "
        "call fed reads BROKEN instead of a verdict",
        "",
        table(results, empty),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
