"""The throughput benchmark runs end to end (quick mode); no number is judged.

It starts real servers (uvicorn and gunicorn) on loopback and drives them with
wrk when installed, else with the bundled load generator, which is also tested
on its own so that the fallback works on machines that have wrk.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import contenders, throughput

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(110)
def test_throughput_quick_run_reports_every_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    report = throughput.run()
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    for kind in throughput.SERVERS:
        for route in throughput.ROUTES:
            for contender in throughput.CONTENDERS:
                prefix = (
                    f"| {throughput.SERVER_LABELS[kind]} | {throughput.ROUTE_LABELS[route]} "
                    f"| {throughput.CONTENDER_LABELS[contender]} |"
                )
                matching = [row for row in rows if row.startswith(prefix)]
                assert len(matching) == 1, prefix
                peer = throughput.PEER_FOR.get((kind, contender))
                why = contenders.missing(peer) if peer else None
                if why is None:
                    assert "skipped" not in matching[0], matching[0]
                else:
                    assert f"skipped: {why}" in matching[0], matching[0]
    # Exactly the uvicorn + reqtelemetry cells are judged against the budget.
    assert report.count("PASS") + report.count("MISS") == len(throughput.ROUTES)
    # The instrumented servers measured the traffic they were sent.
    recorded = [line for line in report.splitlines() if line.startswith("- recorded by")]
    assert any("+ reqtelemetry:" in line for line in recorded)
    for line in recorded:
        count = int(line.split(": ")[1].split(" requests")[0])
        assert count > 0, line


def test_loadgen_falls_back_without_wrk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_LOADGEN", raising=False)
    monkeypatch.setattr(throughput.shutil, "which", lambda name: None)
    assert throughput.loadgen_name() == "python"
    monkeypatch.setenv("BENCH_LOADGEN", "python")
    monkeypatch.setattr(throughput.shutil, "which", lambda name: "/usr/bin/wrk")
    assert throughput.loadgen_name() == "python"


@pytest.mark.timeout(60)
def test_bundled_loadgen_drives_a_real_server(tmp_path: Path) -> None:
    server = throughput.Server("uvicorn", "reqtelemetry")
    try:
        server.wait_ready()
        result = throughput.LoadGenerator("python", tmp_path).run(server.url("/items/42"), 1, 4)
        assert result.requests > 0 and result.errors == 0
        assert 0 < result.p50_us <= result.p99_us
        # Every completed request reached the app and was recorded (plus the readiness probe).
        assert server.stats()["recorded"] >= result.requests
    finally:
        server.stop()
