"""The bytecode count charges each request's work to the code that runs it.

No speed is judged: a count of bytecodes is the same on every machine with
the same interpreter and libraries. What is checked is what the count is for:
it finds the middleware's own functions where it runs, nothing of ours where
an opted-out app is left untouched, the same figures twice over, and a
section that names the rows and reqtelemetry's lines.
"""

from __future__ import annotations

import operator
import sys
import time

import pytest

from benchmarks import bytecodes
from benchmarks.instructions import READINGS_PER_REQUEST, VARIANTS
from reqtelemetry.integrations import asgi, wsgi
from reqtelemetry.recorder import PENDING_LIMIT

STARLETTE_BARE, STARLETTE_ON, STARLETTE_OFF, FLASK_BARE, FLASK_ON, FLASK_OFF, GENERIC = VARIANTS


def functions_of(row: bytecodes.RowCount) -> set[str]:
    return {name for name, _ in bytecodes.by_function(row)}


def qualified(file: str, name: str) -> str:
    """How :func:`bytecodes.by_function` names a function: code objects carry
    a qualified name from Python 3.11 on, only the plain name before."""
    return f"{file}: {name if sys.version_info >= (3, 11) else name.rsplit('.', 1)[-1]}"


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
        qualified("asgi.py", "ASGIMiddleware.__call__"),
        qualified("asgi.py", "_Exchange.send"),
        qualified("recorder.py", "Recorder.aggregate_pending"),
    } <= functions_of(enabled)
    assert "flask.py" in " ".join(functions_of(by_label[FLASK_ON]))
    assert qualified("wsgi.py", "_Measured.start_response") in functions_of(by_label[GENERIC])
    # Opted out, the middleware is one await: a handful of bytecodes, all in its pass-through.
    assert functions_of(opted_out) == {qualified("asgi.py", "_PassThrough.__call__")}
    assert 0 < opted_out.own_per_request < 30
    # The framework ran the same bytecodes with the middleware as without it.
    bare = by_label[STARLETTE_BARE]
    assert enabled.per_request - enabled.own_per_request == pytest.approx(bare.per_request)
    assert enabled.own_per_request > 10 * opted_out.own_per_request


@pytest.mark.timeout(60)
def test_the_count_is_the_same_every_time_and_the_clock_is_given_back() -> None:
    """The scripted clock files the same latencies, so the same bins, each
    time: a whole queue batch is counted, so its aggregation files them."""
    (first,) = bytecodes.count_rows([STARLETTE_ON])
    (second,) = bytecodes.count_rows([STARLETTE_ON])
    assert first.requests == PENDING_LIMIT
    assert first.by_line == second.by_line
    assert qualified("recorder.py", "Recorder.aggregate_pending") in functions_of(first)
    assert asgi.perf_counter is time.perf_counter  # the real clock again, for what runs next


def test_the_integrations_read_the_scripted_clock_while_counted() -> None:
    modules = bytecodes.clocked_modules()
    assert asgi in modules and wsgi in modules
    try:
        readings = bytecodes.script_the_clock(modules, requests=1)
        assert asgi.perf_counter() == 1.0  # the scripted clock's first reading
        assert wsgi.perf_counter() > 1.0  # the same clock: its next one
        assert operator.length_hint(readings) == READINGS_PER_REQUEST - 2
    finally:
        for module in modules:
            module.perf_counter = time.perf_counter


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
