"""The bytecode count charges each request's work to the code that runs it.

No speed is judged: a count of bytecodes is the same on every machine with
the same interpreter and libraries. What is checked is what the count is for:
it finds the middleware's own functions where it runs, nothing of ours where
an opted-out app is left untouched, the same figures twice over, and a
section that names the rows and reqtelemetry's lines.
"""

from __future__ import annotations

import pytest

from benchmarks import bytecodes
from benchmarks.instructions import VARIANTS

STARLETTE_BARE, STARLETTE_ON, STARLETTE_OFF, FLASK_BARE, FLASK_ON, FLASK_OFF, GENERIC = VARIANTS


def functions_of(row: bytecodes.RowCount) -> set[str]:
    return {name for name, _ in bytecodes.by_function(row)}


@pytest.mark.timeout(60)
def test_opted_out_flask_runs_not_one_bytecode_of_ours() -> None:
    """``init_app`` opted out leaves the app as it was: the same request, bytecode for bytecode."""
    bare, opted_out = bytecodes.count_rows([FLASK_BARE, FLASK_OFF], requests=3)
    assert bare.per_request > 1000  # a Flask request was served and counted
    assert opted_out.own_per_request == 0
    assert opted_out.by_line == bare.by_line


@pytest.mark.timeout(60)
def test_the_enabled_rows_charge_their_own_functions() -> None:
    rows = bytecodes.count_rows([STARLETTE_BARE, STARLETTE_ON, STARLETTE_OFF, FLASK_ON, GENERIC])
    by_label = {row.label: row for row in rows}
    enabled, opted_out = by_label[STARLETTE_ON], by_label[STARLETTE_OFF]
    # One queue batch was counted, so its one aggregation is among the functions.
    assert {
        "asgi.py: ASGIMiddleware.__call__",
        "asgi.py: _Exchange.send",
        "recorder.py: Recorder.aggregate_pending",
    } <= functions_of(enabled)
    assert "flask.py" in " ".join(functions_of(by_label[FLASK_ON]))
    assert "wsgi.py: _Measured.start_response" in functions_of(by_label[GENERIC])
    # Opted out, the middleware is one await: a handful of bytecodes, all in its pass-through.
    assert functions_of(opted_out) == {"asgi.py: _PassThrough.__call__"}
    assert 0 < opted_out.own_per_request < 30
    # The framework ran the same bytecodes with the middleware as without it.
    bare = by_label[STARLETTE_BARE]
    assert enabled.per_request - enabled.own_per_request == pytest.approx(bare.per_request)
    assert enabled.own_per_request > 10 * opted_out.own_per_request


@pytest.mark.timeout(60)
def test_the_count_is_the_same_every_time() -> None:
    """The scripted clock files the same latencies, so the same bins, each time."""
    (first,) = bytecodes.count_rows([STARLETTE_ON], requests=20)
    (second,) = bytecodes.count_rows([STARLETTE_ON], requests=20)
    assert first.by_line == second.by_line
    assert first.own_per_request > 0


@pytest.mark.timeout(60)
def test_the_quick_section_names_every_row_and_our_lines(monkeypatch) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    section = bytecodes.run()
    assert section.startswith("## Bytecodes per request, by line")
    for label in VARIANTS:
        assert f"| {label} |" in section
    assert "1 request(s) per row" in section
    assert "the batched aggregation not among them" in section
    assert "`asgi.py:" in section and "`wsgi.py:" in section  # lines, with their file
    assert f"| {FLASK_OFF} | " in section and "| +0.0 | 0.0 | +0.0 |" in section
