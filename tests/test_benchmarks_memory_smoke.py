"""The memory benchmark runs end to end (quick mode); no number is judged here.

What is checked is what the benchmark relies on: the cap holds (never more
than ``max_keys`` keys plus the overflow key) and the overflow counts what it
absorbed.
"""

from __future__ import annotations

import pytest

from benchmarks import memory
from reqtelemetry.recorder import DEFAULT_MAX_KEYS


def _cells(report: str, label: str) -> list[str]:
    row = next(line for line in report.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


@pytest.mark.timeout(60)
def test_memory_quick_run_reports_every_scenario(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    report = memory.run()
    for label in memory.SCENARIO_LABELS:
        cells = _cells(report, label)
        keys = int(cells[2].replace(",", ""))
        assert 1 <= keys <= DEFAULT_MAX_KEYS + 1, cells
        assert float(cells[7].strip("*")) > 0, cells
        assert "PASS" in cells[-1] or "MISS" in cells[-1], cells
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
