"""The dashboard benchmark runs end to end (quick mode); no timing is asserted.

It also checks, at the benchmark's shape of data, what the roll-up promises:
the dashboard and the CSV answer the same with the rolled-up days as from
the raw rows alone (a run whose storage has no ``roll_up``).
"""

from __future__ import annotations

import pytest

from benchmarks import dashboard
from reqtelemetry.collector.storage.sql import SQLStorage

pytestmark = pytest.mark.e2e


def answers(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("- summary, ") or "CSV" in line]


@pytest.mark.timeout(120)
def test_dashboard_quick_run_answers_the_same_rolled_up_or_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    rolled = dashboard.run()
    assert "SQLite roll-up: " in rolled and "days=" in rolled
    rows = [line for line in rolled.splitlines() if line.startswith("| summary, 30 days |")]
    assert len(rows) == 1 and "skipped: not in quick mode" in rows[0]
    with monkeypatch.context() as without:
        without.setattr(SQLStorage, "roll_up", None)
        raw = dashboard.run()
    assert "SQLite roll-up: no roll-up in this version" in raw
    # Five views, each with its requests, endpoints and a digest of what it lists.
    assert len([line for line in answers(raw) if line.startswith("- ")]) == 5
    assert [line for line in answers(rolled) if line.startswith("- ")] == [
        line for line in answers(raw) if line.startswith("- ")
    ]
