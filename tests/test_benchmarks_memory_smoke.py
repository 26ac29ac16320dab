"""The memory benchmark runs end to end (quick mode); no number is judged here.

What is checked is what the benchmark relies on: the cap holds (never more
than ``max_keys`` keys plus the overflow key) and the overflow counts what it
absorbed.
"""

from __future__ import annotations

import sys

import pytest

from benchmarks import memory
from reqtelemetry.recorder import DEFAULT_MAX_KEYS


def _cells(report: str, label: str) -> list[str]:
    row = next(line for line in report.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def _column(report: str, name: str) -> int:
    header = next(line for line in report.splitlines() if line.startswith("| scenario |"))
    return [cell.strip() for cell in header.strip("|").split("|")].index(name)


@pytest.mark.timeout(60)
def test_memory_quick_run_reports_every_scenario(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    report = memory.run()
    total = _column(report, "total MiB")
    for label in memory.SCENARIO_LABELS:
        cells = _cells(report, label)
        keys = int(cells[2].replace(",", ""))
        assert 1 <= keys <= DEFAULT_MAX_KEYS + 2, cells  # the cap, and two overflow keys
        assert float(cells[total].strip("*")) > 0, cells
        assert "PASS" in cells[-1] or "MISS" in cells[-1], cells
    # (a) counts Telemetry's path cache, full; (a) and (b) are read half-way too.
    cache = _column(report, "+ path cache MiB")
    assert float(_cells(report, memory.SCENARIO_LABELS[0])[cache]) > 0
    halfway = _column(report, "half-way: buckets / total MiB")
    for label in memory.SCENARIO_LABELS[:2]:
        assert " / " in _cells(report, label)[halfway]
    # (a) has far more distinct paths than the cap: the overflow took the rest.
    unmatched = _cells(report, memory.SCENARIO_LABELS[0])
    assert int(unmatched[2].replace(",", "")) == DEFAULT_MAX_KEYS + 1
    assert int(unmatched[3].replace(",", "")) > 0
    assert "baseline: an empty `Recorder()`" in report


def test_unmatched_paths_become_distinct_keys() -> None:
    from benchmarks.overhead import _telemetry

    telemetry = _telemetry(opt_out=False)
    paths = memory.unmatched_paths(200)
    assert len(set(paths)) == 200
    routes = {telemetry.route_for_unrouted(path, "", matched=True) for path in paths}
    assert len(routes) == 200
    assert not any(path in routes for path in paths)  # hashed, never the raw path


def test_templated_traffic_draws_every_call_on_its_own() -> None:
    """No period: a stream that repeats itself stops adding keys and buckets."""
    requests = 3 * memory.CHUNK // 2  # across a chunk boundary
    traffic = memory.templated_traffic(500, requests)
    assert len(traffic.routes) == len(traffic.statuses) == len(traffic.durations) == requests
    assert len(set(traffic.durations)) == requests
    for period in (4096, 65536):
        if period < requests:
            assert traffic.routes[:1000] != traffic.routes[period : period + 1000]
    assert max(traffic.routes) < 500
    assert set(traffic.statuses) <= {status for status, _ in memory.STATUS_MIX}


def test_a_recorder_that_loses_calls_reads_broken() -> None:
    def lossy(recorder: object, checkpoint: memory.Checkpoint) -> int:
        recorder.record("GET", "/a", 200, 0.01, 0, 1)  # type: ignore[attr-defined]
        return 2  # claims two calls

    result = memory.measure(memory.SCENARIO_LABELS[1], lossy, DEFAULT_MAX_KEYS)
    assert memory.verdict(result) == "**BROKEN** (recorded 1 of 2 calls)"
    fine = memory.measure(memory.SCENARIO_LABELS[1], lambda r, c: 0, DEFAULT_MAX_KEYS)
    assert memory.verdict(fine) == "**PASS**"


def test_the_path_caches_bound_is_filled_with_the_widest_paths_it_keeps() -> None:
    """What the notes give as the cache's bound holds the most bytes any
    paths can make it hold: paths of emoji as long (a server decodes them
    from percent-encoding, 4 bytes a character) took it 3 MiB past it."""
    from benchmarks.memory import longest_cached_paths
    from benchmarks.overhead import _telemetry

    bound = longest_cached_paths(64)
    widest_kept = max(sys.getsizeof(path) for path in bound)
    wide = [path.translate(EMOJI_DIGITS) for path in bound]
    short = [path[:8] for path in wide]
    telemetry = _telemetry(opt_out=False)
    for path in bound + wide + short:
        telemetry.route_for_unrouted(path, "", matched=True)
    cached = [path for path, _query in telemetry._anonymized]
    assert set(bound) <= set(cached)
    assert max(sys.getsizeof(path) for path in cached) <= widest_kept


#: Each hexadecimal digit as an emoji: a path as long, four times the bytes.
EMOJI_DIGITS = str.maketrans({d: chr(0x1F600 + n) for n, d in enumerate("0123456789abcdef")})
