"""The calibration probe: fixed work, run in front of each bare app, and the line that reads it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from benchmarks import overhead


def test_the_probe_does_the_same_work_every_call() -> None:
    expected = sum(2 * step for step in range(overhead.PROBE_STEPS))
    assert overhead.probe() == expected
    assert overhead.probe() == expected


@pytest.mark.parametrize(
    ("kind", "wrap", "build"),
    [
        ("asgi", overhead.probed_asgi, overhead.starlette_app),
        ("wsgi", overhead.probed_flask, overhead.flask_app),
    ],
    ids=["starlette", "flask"],
)
def test_a_probed_app_runs_the_probe_once_and_answers_as_the_bare_app(
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    wrap: Callable[[Any], Any],
    build: Callable[[], Any],
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(overhead, "probe", lambda: calls.append(1) or 0)
    bench = overhead.Bench(overhead.CLOCKS["perf_counter"])
    try:
        bare = bench.check(overhead.Variant("bare", kind, build()))
        probed = bench.check(overhead.Variant("probed", kind, wrap(build())))
    finally:
        bench.close()
    assert probed == bare == (200, b"item 42")
    assert calls == [1]


def test_a_probe_batch_times_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(overhead, "probe", lambda: calls.append(1) or 0)
    bench = overhead.Bench(overhead.CLOCKS["perf_counter"])
    try:
        assert bench.batch(overhead.Variant("probe", "probe", None), 7) >= 0
    finally:
        bench.close()
    assert len(calls) == 7


def _rows(alone: list[float], starlette: list[float], flask: list[float]) -> list[overhead.Variant]:
    m, n, o = overhead.PROBE_LABELS
    return [
        overhead.Variant(m, "probe", None, samples_us=alone),
        overhead.Variant(n, "asgi", None, paired_us=starlette),
        overhead.Variant(o, "wsgi", None, paired_us=flask),
    ]


def test_the_context_line_reads_the_probe_rows_as_ratios() -> None:
    line = overhead.context_line(_rows([2.0, 2.0, 2.1], [2.4, 2.5, 2.3], [3.6, 3.5, 3.7]))
    assert line is not None
    assert "takes 2.00 µs alone (m)" in line
    assert "it adds 2.40 µs to a Starlette request (1.20x;" in line
    assert "3.60 µs to a Flask request (1.80x) (o)" in line


def test_no_context_line_when_a_probe_row_was_not_timed() -> None:
    assert overhead.context_line(_rows([2.0], [], [3.6])) is None
    assert overhead.context_line(_rows([], [2.4], [3.6])) is None
