"""The peer comparison never needs the peers to be installed; no timing is asserted.

``make test`` installs the dev extra only, so OpenTelemetry's instrumentation,
starlette-exporter and prometheus-flask-exporter may be missing: each peer row
must then be reported as skipped, with the way to install it, and the rest of
the table must still be measured. Here every peer is made to look missing, so
that the path is taken whatever is installed.
"""

from __future__ import annotations

import pytest

from benchmarks import contenders, overhead


def test_missing_names_the_distribution_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = contenders.importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        if name.startswith("opentelemetry.instrumentation"):
            raise ModuleNotFoundError(name)  # what a missing parent package raises
        if name == "starlette_exporter":
            return None
        return real_find_spec(name, *args)

    monkeypatch.setattr(contenders.importlib.util, "find_spec", find_spec)
    assert contenders.missing("otel-asgi") == (
        "opentelemetry-instrumentation-asgi not installed (`pip install -e '.[bench]'`)"
    )
    assert contenders.missing("starlette-exporter") == (
        "starlette-exporter not installed (`pip install -e '.[bench]'`)"
    )


@pytest.mark.timeout(30)
def test_overhead_without_peers_skips_their_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    monkeypatch.delenv("BENCH_CLOCK", raising=False)
    monkeypatch.setattr(contenders, "missing", lambda peer: f"{peer} not installed (test)")
    report = overhead.run()
    rows = [line for line in report.splitlines() if line.startswith("| (")]
    assert len(rows) == len(overhead.VARIANT_LABELS)
    skipped = [row for row in rows if "skipped:" in row]
    assert [row.split(" |")[0] for row in skipped] == [
        f"| {label}"
        for label in (
            overhead.VARIANT_LABELS[3],
            overhead.VARIANT_LABELS[4],
            overhead.VARIANT_LABELS[9],
            overhead.VARIANT_LABELS[10],
        )
    ]
    assert "skipped: otel-asgi not installed (test)" in report
    # reqtelemetry's own rows are still measured and judged.
    assert report.count("PASS") + report.count("MISS") == 5
    assert "- recorded by (b): " in report and "- recorded by (d)" not in report


def test_otel_sdk_counts_what_the_middleware_records() -> None:
    if contenders.missing("otel-asgi") is not None:
        pytest.skip(contenders.missing("otel-asgi"))
    import asyncio

    sdk = contenders.otel_sdk()
    try:
        app = contenders.otel_asgi(overhead.starlette_app(), sdk)
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        asyncio.run(app(overhead.asgi_scope(), receive, send))
        assert sent[0]["status"] == 200
        assert sdk.summary() == "3 spans exported, 1 requests in the server-duration histogram"
    finally:
        sdk.shutdown()
