"""The instruction-count benchmark runs (quick counts) and tells the rows apart.

No number is judged against a budget here; what is checked is that the method
measures something real: the enabled middleware executes more instructions
per request than the bare app, and the opted-out one far fewer than that;
and that it gives the same count in every run (the scripted clock).
"""

from __future__ import annotations

import itertools
import shutil
import statistics
import sys
import time

import pytest

from benchmarks import instructions
from reqtelemetry.histogram import bucket_index

VALGRIND = shutil.which("valgrind")


@pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed")
@pytest.mark.timeout(180)
def test_enabled_costs_instructions_and_opted_out_almost_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    bare, enabled, opted_out = list(instructions.VARIANTS)[:3]
    assert VALGRIND is not None
    found = instructions.per_request(VALGRIND, [bare, enabled, opted_out], instructions.counts())
    added = found[enabled] - found[bare]
    assert added > 1_000, found
    assert abs(found[opted_out] - found[bare]) < added / 5, found


def test_without_valgrind_the_section_says_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    report = instructions.run()
    assert report.startswith("## Instructions per request")
    assert "skipped: `valgrind` is not installed" in report


@pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed")
@pytest.mark.timeout(180)
def test_two_runs_count_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flask's enabled row: timed by the real clock, two runs differed by 20 to 190."""
    monkeypatch.setenv("BENCH_QUICK", "1")
    row = "(e) Flask + init_app, enabled"
    assert VALGRIND is not None
    first, second = (
        instructions.per_request(VALGRIND, [row], instructions.counts())[row] for _ in range(2)
    )
    assert abs(first - second) < 10, (first, second)


def test_every_row_is_told_its_row_in_arguments_of_one_length() -> None:
    """Labels of different lengths made rows that run the same code count apart."""
    plans = (instructions.Counts(low=256, high=512), instructions.Counts(low=256, high=768))
    arguments = {
        (label, plan): instructions.child_arguments(label, plan)
        for label in instructions.VARIANTS
        for plan in plans
    }
    assert len({tuple(map(len, given)) for given in arguments.values()}) == 1, arguments
    for (label, plan), (row, low, high) in arguments.items():
        assert instructions.label_of(row) == label
        assert (int(low), int(high)) == (plan.low, plan.high)


def test_each_childs_total_is_found_by_its_process_id() -> None:
    """The parent's own total, and a child that did not say what it served, are left out."""
    stderr = (
        "==100== Cachegrind, a cache and branch-prediction profiler\n"
        "counted child: 256 requests in process 101\n"
        "==101== I   refs:      1,000,000\n"
        "counted child: 768 requests in process 102\n"
        "==102== I   refs:      1,512,000\n"
        "==103== I   refs:      9,999\n"
        "==100== I   refs:      700,000\n"
    )
    assert instructions.children_totals(stderr) == {256: 1_000_000, 768: 1_512_000}


def test_a_row_is_compared_with_its_bare_row_layout_by_layout() -> None:
    """Per layout first: medians taken apart would give 20 here, not 10."""
    row = {0: 110.0, 40: 150.0, 70: 120.0}
    bare = {0: 100.0, 40: 145.0, 70: 100.0}
    added = instructions.over_bare(row, bare)
    assert (added.median, added.low, added.high, added.layouts) == (10.0, 5.0, 20.0, 3)


def test_a_full_run_counts_the_flask_rows_in_several_layouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BENCH_QUICK", raising=False)
    for label, (kind, _) in instructions.VARIANTS.items():
        expected = instructions.LAYOUT_PADDINGS if kind == "wsgi" else (0,)
        assert instructions.layouts_of(label) == expected, label
    assert len(set(instructions.LAYOUT_PADDINGS)) == len(instructions.LAYOUT_PADDINGS)
    monkeypatch.setenv("BENCH_QUICK", "1")
    assert all(len(instructions.layouts_of(label)) == 1 for label in instructions.VARIANTS)


def test_the_scripted_clock_is_the_same_every_time_and_moves_forward() -> None:
    readings = list(instructions.scripted_clock(1000))
    assert readings == list(instructions.scripted_clock(1000))
    steps = [later - earlier for earlier, later in itertools.pairwise(readings)]
    assert len(steps) == 999 and min(steps) > 0
    median = statistics.median(steps)
    assert 0.8 < median / instructions.SCRIPTED_MEDIAN < 1.25, median
    assert len({bucket_index(step) for step in steps}) > 10  # many bins, not one


def test_the_scripted_clock_replaces_perf_counter_in_the_integrations_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import reqtelemetry.integrations.asgi
    import reqtelemetry.integrations.flask
    import reqtelemetry.integrations.wsgi
    import reqtelemetry.payload

    timed = [name for name in sys.modules if name.startswith("reqtelemetry.integrations.")]
    for name in timed:  # put back after the test, whatever install does
        if hasattr(sys.modules[name], "perf_counter"):
            monkeypatch.setattr(sys.modules[name], "perf_counter", time.perf_counter)
    readings = instructions.install_scripted_clock()
    for module in (
        reqtelemetry.integrations.asgi,
        reqtelemetry.integrations.flask,
        reqtelemetry.integrations.wsgi,
    ):
        assert module.perf_counter.__self__ is readings
    assert next(readings) < reqtelemetry.integrations.flask.perf_counter()
    assert reqtelemetry.payload.perf_counter is time.perf_counter  # not a request's clock
