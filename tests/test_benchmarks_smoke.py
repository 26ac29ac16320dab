"""The overhead benchmark runs end to end (quick mode); no timing is asserted."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from benchmarks import contenders, overhead

#: The peer rows of the table, and the peer each one needs.
PEER_ROWS = {
    overhead.VARIANT_LABELS[3]: "otel-asgi",
    overhead.VARIANT_LABELS[4]: "starlette-exporter",
    overhead.VARIANT_LABELS[9]: "otel-wsgi",
    overhead.VARIANT_LABELS[10]: "prometheus-flask-exporter",
}


@pytest.mark.timeout(30)
def test_overhead_quick_run_reports_every_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    monkeypatch.delenv("BENCH_CLOCK", raising=False)
    report = overhead.run()
    rows = [line for line in report.splitlines() if line.startswith("| (")]
    assert len(rows) == len(overhead.VARIANT_LABELS)
    for label, row in zip(overhead.VARIANT_LABELS, rows, strict=True):
        assert row.startswith(f"| {label} |")
    assert report.count("PASS") + report.count("MISS") == 5
    assert "gc.disable" in report
    assert "- context: the probe's fixed work" in report
    # The enabled middlewares really measured the route templates.
    assert "GET /items/{item_id} 200" in report
    assert "GET /items/<int:item_id> 200" in report
    # Each peer row is measured when its package is installed, skipped with the reason if not.
    for label, peer in PEER_ROWS.items():
        row = next(line for line in rows if line.startswith(f"| {label} |"))
        why = contenders.missing(peer)
        if why is None:
            assert "skipped" not in row, row
            assert f"- recorded by {label[:3]}: " in report
        else:
            assert f"skipped: {why}" in row, row


@pytest.mark.timeout(30)
def test_overhead_flags_a_middleware_that_records_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A middleware failing on every request lets it through fast: no verdict for it."""
    from reqtelemetry.integrations import asgi

    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("simulated bug in telemetry")

    all_variants = overhead.variants

    def without_peers(cleanup: list[Callable[[], None]] | None = None) -> list[overhead.Variant]:
        """Every row but the peers', which are slow and beside the point here."""
        rows = all_variants(cleanup)
        for row in rows:
            if row.label in PEER_ROWS:
                row.skipped = "left out of this test"
        return rows

    monkeypatch.setenv("BENCH_QUICK", "1")
    monkeypatch.delenv("BENCH_CLOCK", raising=False)
    monkeypatch.setattr(overhead, "variants", without_peers)
    # ASGIMiddleware binds its route lookup when it is made, inside run().
    monkeypatch.setattr(asgi.RouteTemplates, "template", broken)
    report = overhead.run()
    row = next(
        line for line in report.splitlines() if line.startswith(f"| {overhead.VARIANT_LABELS[1]} |")
    )
    assert "**BROKEN** (recorded 0 of " in row, row
    assert "PASS" not in row and "MISS" not in row, row
    # The Flask rows do not go through the ASGI route lookup: still judged.
    flask_row = next(
        line for line in report.splitlines() if line.startswith(f"| {overhead.VARIANT_LABELS[6]} |")
    )
    assert "BROKEN" not in flask_row, flask_row
