"""The collector benchmark runs end to end (quick mode); no timing is asserted."""

from __future__ import annotations

import re

import pytest

from benchmarks import collector

pytestmark = pytest.mark.e2e


def _rows(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("| ")]


@pytest.mark.timeout(90)
def test_collector_quick_run_reports_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    monkeypatch.delenv("BENCH_CLOCK", raising=False)
    report = collector.run()
    rows = _rows(report)

    # Part 1: a row per difficulty, the budget judged once, at the default bits.
    assert "### Minting vs verifying a stamp" in report
    for bits in collector.MINT_BITS:
        matching = [row for row in rows if row.startswith(f"| {bits} |")]
        assert len(matching) == 1, bits
    default_row = next(row for row in rows if row.startswith(f"| {collector.DEFAULT_BITS} |"))
    assert "**PASS**" in default_row or "**MISS**" in default_row
    assert report.count("**PASS**") + report.count("**MISS**") == 1
    assert "hash rate over all in-process stamps" in report

    # Part 2: SQLite measured (baseline and reports), every report answered 200 stored;
    # PostgreSQL skipped in quick mode, with a row saying so.
    assert "### Reports ingested per second" in report
    sqlite = collector.BACKEND_LABELS["sqlite"]
    for phase in collector.PHASE_LABELS.values():
        matching = [row for row in rows if row.startswith(f"| {sqlite} | {phase} |")]
        assert len(matching) == 1, phase
    report_row = next(
        row for row in rows if row.startswith(f"| {sqlite} | {collector.PHASE_LABELS['report']}")
    )
    stored = re.search(r"\| (\d+)/(\d+) ✓ \|$", report_row)
    assert stored is not None, report_row
    assert int(stored[1]) == int(stored[2]) >= 1
    postgres = collector.BACKEND_LABELS["postgres"]
    assert any(row.startswith(f"| {postgres} | — | skipped:") for row in rows)
    assert "MISMATCH" not in report
    assert f"requires {collector.INGEST_BITS}-bit stamps" in report
