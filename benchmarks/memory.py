"""Recorder memory after a million requests: bounded by the key cap, not by traffic.

Design decision 1 says memory grows with the number of keys, never with
traffic, and that past ``max_keys`` requests land in one overflow key. This
module feeds a ``Recorder`` at the default cap a million ``record`` calls and
measures, with ``tracemalloc``, what it holds afterwards:

- (a) **100,000 distinct unmatched paths** (scanner probes and identifier-bearing
  URLs of an app without route templates), each turned into its key by
  ``Telemetry.route_for_unrouted(path, matched=True)``, so that every path
  really is a different hashed key (``matched=False`` would fold them all into
  ``<unmatched>``): the cap is reached after 1,000 keys and the rest must
  land in the overflow key.
- (b) **500 templated routes** of a large API with realistic traffic: a
  Zipf-like popularity (a few routes get most requests), a method per route, a
  status mix (90 % 200, then 201, 204, 304 and the common 4xx/5xx) and a
  log-normal latency per route (median between 2 ms and 300 ms, a spread that
  occupies tens of histogram buckets per key).
- (c) **the cap's worst case**: ``max_keys`` keys whose latency histograms each
  occupy every bucket the histogram can have (1 µs to 1 hour). No traffic
  looks like this; it is the bound that the cap guarantees.

The inputs (paths, keys, latencies) are built before tracing starts; what is
traced is the recorder and everything it allocates. The route strings its keys
keep alive were allocated by the caller (as an app's templates, or the
anonymizer's output, are), so their size is added separately. The garbage
collector runs before each reading. The baseline is an empty ``Recorder``.

Run alone with ``python -m benchmarks memory``; ``BENCH_QUICK=1`` cuts it to a
smoke test of a couple of seconds.
"""

from __future__ import annotations

import gc
import math
import random
import sys
import time
import tracemalloc
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

    @property
    def total_bytes(self) -> int:
        return self.traced_bytes + self.route_bytes


def measure(label: str, feed: Callable[[Any], int], max_keys: int) -> Result:
    """Trace a fresh ``Recorder(max_keys)`` while ``feed`` records into it."""
    from reqtelemetry.recorder import Recorder

    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        recorder = Recorder(max_keys=max_keys)
        started = time.perf_counter()
        requests = feed(recorder)
        seconds = time.perf_counter() - started
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stats = recorder._stats
    routes = {id(route): route for _method, route, _status in stats}
    return Result(
        label=label,
        requests=requests,
        keys=len(stats),
        dropped=recorder.dropped,
        bins=sum(len(entry.bins) for entry in stats.values()),
        traced_bytes=current - base,
        peak_bytes=peak - base,
        route_bytes=sum(sys.getsizeof(route) for route in routes.values()),
        seconds=seconds,
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


def feed_unmatched(routes: list[str], requests: int) -> Callable[[Any], int]:
    n = len(routes)
    stride = 7919  # prime, so coprime with any count made of 2s and 5s: every path is visited
    if math.gcd(stride, n) != 1:
        stride = 1
    durations = latencies(4096, 0.004, 0.8, seed=11)
    statuses = (404,) * 12 + (200, 200, 301, 403)

    def feed(recorder: Any) -> int:
        record = recorder.record
        for i in range(requests):
            record("GET", routes[(i * stride) % n], statuses[i & 15], durations[i & 4095], 0, 153)
        return requests

    return feed


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


def feed_templated(routes: list[tuple[str, str]], requests: int) -> Callable[[Any], int]:
    rng = random.Random(3)
    # A Zipf-like popularity: a request's route, by rank, with weight 1 / rank**1.1.
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(routes))]
    pick = rng.choices(range(len(routes)), weights=weights, k=65536)
    statuses = rng.choices(
        [status for status, _ in STATUS_MIX], weights=[w for _, w in STATUS_MIX], k=4096
    )
    per_route = [
        latencies(1024, math.exp(rng.uniform(math.log(0.002), math.log(0.3))), 0.6, seed=index)
        for index in range(len(routes))
    ]

    def feed(recorder: Any) -> int:
        record = recorder.record
        for i in range(requests):
            index = pick[i & 65535]
            method, route = routes[index]
            record(
                method,
                route,
                statuses[(i >> 3) & 4095],
                per_route[index][(i >> 6) & 1023],
                0 if method == "GET" else 420,
                2_300,
            )
        return requests

    return feed


# -- (c) the cap's worst case ---------------------------------------------------------


def feed_worst_case(max_keys: int) -> Callable[[Any], int]:
    from reqtelemetry.histogram import MAX_INDEX, MIN_INDEX, bucket_value

    # One value per bucket, from 1 µs to an hour; counts above 256 are real int objects.
    values = [bucket_value(index) for index in range(MIN_INDEX, MAX_INDEX + 1)]
    keys = [("GET", f"/worst/{n}/{{id}}", 200) for n in range(max_keys)]

    def feed(recorder: Any) -> int:
        record = recorder.record
        calls = 0
        for method, route, status in keys:
            for value in values:
                record(method, route, status, value, 0, 100)
                calls += 1
        # Large counts, as after a busy period (small ints are shared singletons).
        for entry in recorder._stats.values():
            for index in entry.bins:
                entry.bins[index] = 1_000_003 + index
        return calls

    return feed


# -- the run ----------------------------------------------------------------------------


def _mib(value: int) -> str:
    return f"{value / MIB:.2f}"


def table(results: list[Result], empty: int) -> str:
    rows = [
        "| scenario | record calls | keys held | dropped to overflow | histogram buckets "
        "| traced MiB | + key strings MiB | total MiB | bytes per key | peak MiB | seconds "
        f"| budget < {BUDGET_MIB:g} MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        per_key = result.total_bytes / result.keys if result.keys else 0
        worst = result.label == SCENARIO_LABELS[2]
        passed = result.total_bytes < BUDGET_MIB * MIB
        verdict = f"**{'PASS' if passed else 'MISS'}**" + (" (bound, not traffic)" if worst else "")
        rows.append(
            f"| {result.label} | {result.requests:,} | {result.keys:,} | {result.dropped:,} "
            f"| {result.bins:,} | {_mib(result.traced_bytes)} | {_mib(result.route_bytes)} "
            f"| **{_mib(result.total_bytes)}** | {per_key:,.0f} | {_mib(result.peak_bytes)} "
            f"| {result.seconds:.1f} | {verdict} |"
        )
    rows.append(
        f"| baseline: an empty `Recorder()` | 0 | 0 | 0 | 0 | {_mib(empty)} | 0.00 "
        f"| {_mib(empty)} | — | — | — | — |"
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

    empty = measure("empty", lambda recorder: 0, max_keys).traced_bytes
    results = [
        measure(SCENARIO_LABELS[0], feed_unmatched(unmatched, settings.requests), max_keys),
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
        "`tracemalloc` (current traced memory after `gc.collect()`, minus the reading "
        "before the recorder was made; peak: the highest reading during the calls); the "
        "route strings its keys hold were allocated by the caller and are added as "
        "`sys.getsizeof` of each distinct string; seconds: the record calls under "
        "`tracemalloc`, which slows allocation severalfold",
        f"- (a): {settings.requests:,} calls over {settings.distinct_paths:,} distinct paths "
        f"({distinct_keys:,} distinct keys after "
        "`Telemetry.route_for_unrouted(path, matched=True)`: hashed segments), each path "
        "visited in turn; statuses 404 (75 %), 200, 301, 403; latencies log-normal around 4 ms",
        f"- (b): {settings.requests:,} calls over {settings.templates} (method, template) "
        "routes, Zipf-like popularity (weight 1/rank^1.1), "
        + ", ".join(f"{status} {share:.1%}" for status, share in STATUS_MIX[:4])
        + " and the common 4xx/5xx for the rest; per-route log-normal latency, median "
        "2-300 ms, sigma 0.6; request and response sizes counted",
        f"- (c): {max_keys:,} keys x all {buckets} histogram buckets (1 µs to 1 hour), counts "
        "above a million: the most the cap lets a recorder hold, whatever the traffic",
        f"- budget: under {BUDGET_MIB:g} MiB at the default cap after the million requests of "
        "(a) and (b); reported, never enforced",
        "",
        table(results, empty),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
