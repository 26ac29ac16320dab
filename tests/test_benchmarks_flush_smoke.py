"""The flush-latency benchmark runs end to end (quick mode); no timing is asserted."""

from __future__ import annotations

import re
import sys

import pytest

from benchmarks import flush_latency

pytestmark = pytest.mark.e2e


def _rows(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("| ")]


@pytest.mark.timeout(90)
def test_flush_latency_quick_run_reports_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    report = flush_latency.run()
    rows = _rows(report)

    # Part 1: every step of building a full batch, and the baseline.
    assert "### Building and compressing a full batch (1000 keys)" in report
    for label in flush_latency.BUILD_LABELS:
        assert any(row.startswith(f"| {label} |") for row in rows), label

    # Part 2: a row per server, load and phase, every one of them measured.
    for load_key, load in flush_latency.LOAD_LABELS.items():
        for server in flush_latency.SERVER_LABELS.values():
            for key, phase in flush_latency.PHASE_LABELS.items():
                matching = [
                    row for row in rows if row.startswith(f"| {server} | {load} | {phase} |")
                ]
                # The control phase (d) runs under the open loop only.
                expected = 0 if key == "floor" and load_key == "closed" else 1
                assert len(matching) == expected, (server, load, phase)
                if not matching:
                    continue
                row = matching[0]
                assert "skipped" not in row
                if key != "quiet" and load_key == "closed":
                    assert "saturated, reported only" in row, row
                if key == "floor":
                    assert "(control)" in row, row
    # Verdicts on the open-loop rows only: the saturated ones are reported, not judged.
    open_rows = [row for row in rows if f"| {flush_latency.LOAD_LABELS['open']} |" in row]
    closed_rows = [row for row in rows if f"| {flush_latency.LOAD_LABELS['closed']} |" in row]
    judged = 2 * 2  # each server, while flushing and while minting; not the control
    verdicts = ("**PASS**", "**MISS**")
    assert sum(any(v in row for v in verdicts) for row in open_rows) == judged
    assert not any(v in row for v in verdicts for row in closed_rows)
    # The open loop ran at a rate taken from this run, and says whether it kept up.
    assert re.search(r"ASGI \d+ req/s, WSGI \d+ req/s", report)
    for row in open_rows:
        assert re.search(r"\| \d+\.\d\d \(\d+\) \|$", row), row

    # Every flush reached the collector stand-in, and the middlewares measured the routes.
    assert "GET /items/{item_id} 200" in report
    assert "GET /items/<int:item_id> 200" in report
    # The flushing thread ran at the flusher thread's own priority.
    if sys.platform.startswith("linux"):
        assert "- (b): on a thread at the flusher thread's priority (nice 19;" in report
    flush_lines = [line for line in report.splitlines() if line.startswith("- flushes in (b)")]
    assert len(flush_lines) == 4  # each server, each load
    for line in flush_lines:
        found = re.search(r": (\d+) flushes, (\d+)/(\d+) delivered", line)
        assert found is not None, line
        assert int(found[1]) >= 1 and found[2] == found[3] == found[1], line

    # Stamps were minted beside every (c) phase.
    stamp_lines = [line for line in report.splitlines() if line.startswith("- stamps in (c)")]
    assert len(stamp_lines) == 4  # each server, each load
    for line in stamp_lines:
        found = re.search(r": (\d+) stamps;", line)
        assert found is not None, line
        assert int(found[1]) >= 1, line

    # The control's child really ran at idle priority (Linux names the policy).
    control = next(line for line in report.splitlines() if line.startswith("- (d)"))
    if sys.platform.startswith("linux"):
        assert "policy seen: SCHED_IDLE)" in control, control
