"""The retention benchmark (storing while rolling up and pruning) runs end to end
(quick mode); no timing is asserted."""

from __future__ import annotations

import re

import pytest

from benchmarks import retention

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(90)
def test_retention_quick_run_reports_every_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    report = retention.run()
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    quiet = [row for row in rows if row.startswith("| SQLite | quiet |")]
    pruning = [row for row in rows if row.startswith("| SQLite | while pruning |")]
    rolling = [row for row in rows if row.startswith("| SQLite | while rolling up |")]
    assert len(quiet) == len(rolling) == len(pruning) == 1
    assert f"the roll-up added {retention.OLD_DAYS} days up into" in report
    assert f"| {retention.QUICK_QUIET_REPORTS} |" in quiet[0]
    assert re.search(r"\| \d+\.\d\dx \|$", pruning[0]), pruning[0]
    # Every old report was deleted, with its instance and deployment.
    old = retention.QUICK_OLD_REPORTS
    assert f"the prune deleted {old:,} reports ({old * 50:,} aggregate rows)" in report
    assert any(row.startswith("| PostgreSQL | — | skipped: not in quick mode") for row in rows)
