"""The statistics the throughput and flush tables share: percentiles and the median's interval."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from benchmarks import (
    answer_head,
    flush_latency,
    median_bounds,
    median_bounds_text,
    overhead,
    paired_ratios,
    percentile,
    retention,
    throughput,
)


@pytest.mark.parametrize(
    ("n", "q", "rank"),
    [
        # Nearest rank: the ceil(q * n)-th smallest, counted from 1 (worked by hand).
        (1, 0.99, 1),
        (1, 0.50, 1),
        (2, 0.50, 1),  # 0.5 * 2 = 1
        (3, 0.50, 2),  # 1.5 -> 2
        (4, 0.50, 2),
        (10, 0.99, 10),  # 9.9 -> 10
        (100, 0.99, 99),  # 99 exactly: not the maximum (the old rank gave 100)
        (100, 0.50, 50),
        (101, 0.50, 51),  # 50.5 -> 51
        (200, 0.99, 198),
        (300, 0.99, 297),  # 297 exactly (an odd whole number: the old rank gave 298)
        (1000, 0.99, 990),
        (1001, 0.99, 991),  # 990.99 -> 991
    ],
)
def test_percentile_is_the_nearest_rank(n: int, q: float, rank: int) -> None:
    values = list(range(1, n + 1))
    assert percentile(values, q) == rank


def test_percentile_matches_exact_arithmetic() -> None:
    """No float error in q * n moves the rank, over the sizes the tables see."""
    for q in (0.5, 0.99):
        exact = Fraction(str(q))
        for n in range(1, 20_001):
            expected = max(1, math.ceil(exact * n))
            assert percentile(range(1, n + 1), q) == expected, (n, q)


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 0.99))


@pytest.mark.parametrize("ending", [b"", b"\r\n\r\n"])
def test_both_load_generators_read_an_answers_head_alike(ending: bytes) -> None:
    head = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 12" + ending
    assert answer_head(head) == (404, 12, False, True)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked" + ending
    assert answer_head(chunked) == (200, None, True, False)
    with pytest.raises(ValueError):
        answer_head(b"HTTP/1.1 200 OK\r\nContent-Length: many" + ending)


def test_paired_ratios_leave_out_rounds_not_measured() -> None:
    assert paired_ratios([2.0, float("nan"), 3.0, 4.0], [1.0, 1.0, 0.0, float("nan")]) == [2.0]
    assert throughput.paired_ratios is flush_latency.paired_ratios is paired_ratios


def test_both_tables_use_the_shared_percentile() -> None:
    assert throughput.percentile is percentile
    assert flush_latency.percentile is percentile


def test_the_retention_p99_is_the_nearest_rank_as_every_other_tables() -> None:
    """The quiet phase stores exactly 300 reports: its p99 is the 297th, not the 298th."""
    for n in (100, 200, retention.QUIET_REPORTS, 1000, 1001):
        values = [float(v) for v in range(n, 0, -1)]
        assert retention._p99(values) == percentile(sorted(values), 0.99), n


@pytest.mark.parametrize("n", range(6, 61))
def test_median_bounds_agree_with_the_overhead_tables_interval(n: int) -> None:
    values = [float(v) for v in range(n)]
    low, high, coverage = median_bounds(values)
    assert (low, high) == overhead.median_interval(values)
    assert coverage >= 0.95


@pytest.mark.parametrize(
    ("n", "coverage"),
    [(1, 0.0), (2, 0.5), (3, 0.75), (4, 0.875), (5, 0.9375), (8, 1 - 2 / 256)],
)
def test_too_few_rounds_give_the_range_and_say_how_sure_it_is(n: int, coverage: float) -> None:
    values = [float(v) for v in range(n, 0, -1)]
    assert median_bounds(values) == (1.0, float(n), pytest.approx(coverage))


# -- the throughput table's verdicts -------------------------------------------------------


def _throughput_cells(ratios: list[float]) -> dict[tuple[str, str, str], throughput.Cell]:
    cells = {}
    for kind in throughput.SERVERS:
        for route in throughput.ROUTES:
            for contender in throughput.CONTENDERS:
                factor = [1.0] * len(ratios) if contender == "bare" else ratios
                cells[kind, route, contender] = throughput.Cell(
                    [
                        throughput.LoadResult(
                            requests=int(10_000 * f),
                            seconds=1.0,
                            p50_us=500,
                            p99_us=2000,
                            errors=0,
                            server_cpu_seconds=0.4 * f,
                        )
                        for f in factor
                    ]
                )
    return cells


def _uvicorn_reqtelemetry_rows(report: str) -> list[str]:
    prefix = f"| {throughput.SERVER_LABELS['uvicorn']} |"
    return [r for r in report.splitlines() if r.startswith(prefix) and "| reqtelemetry |" in r]


def test_throughput_verdict_the_rounds_do_not_settle_says_so() -> None:
    # 8 rounds: the interval is the lowest to the highest round, here 0.90 to 1.00.
    ratios = [0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.98, 1.00]
    rows = _uvicorn_reqtelemetry_rows(throughput.table(_throughput_cells(ratios), {}))
    assert len(rows) == 2
    for row in rows:
        assert "**0.945x** (0.90 to 1.00)" in row
        assert "≥ 0.95x: **MISS** (unsettled: the median's 99% interval, 0.90 to 1.00x" in row


def test_throughput_verdict_a_settled_miss_has_no_caveat() -> None:
    ratios = [0.80, 0.82, 0.83, 0.84, 0.85, 0.86, 0.88, 0.90]
    for row in _uvicorn_reqtelemetry_rows(throughput.table(_throughput_cells(ratios), {})):
        assert row.endswith("≥ 0.95x: **MISS** |"), row


def test_a_server_that_did_not_record_what_it_served_gets_no_verdict() -> None:
    cells = _throughput_cells([1.0, 1.0])
    nothing = throughput.Recorded(count=0, completed=40_000, unanswered=0)
    report = throughput.table(cells, {}, {("uvicorn", "reqtelemetry"): nothing})
    rows = _uvicorn_reqtelemetry_rows(report)
    assert rows and all("**BROKEN** (recorded 0 of 40001)" in row for row in rows)
    assert "PASS" not in "".join(rows) and "MISS" not in "".join(rows)


@pytest.mark.parametrize(
    ("count", "unanswered", "matches"),
    [
        (101, 0, True),  # every answer, + 1 for the stats request read before the runs
        (100, 0, False),  # one answered request unrecorded
        (102, 0, False),  # one more than the server was sent
        (105, 4, True),  # requests left in flight may or may not have been recorded
        (106, 4, False),
    ],
)
def test_recorded_must_match_completed(count: int, unanswered: int, matches: bool) -> None:
    check = throughput.Recorded(count=count, completed=100, unanswered=unanswered)
    assert check.matches is matches


# -- the flush table's verdicts ---------------------------------------------------------------


def test_p99_verdict_follows_the_median_round_not_the_pooled_p99() -> None:
    # The reviewer's case: pooled 1.04x, rounds 1.17, 1.45 and 0.67.
    flushing = flush_latency.PhaseSamples(
        during_p99=[1170.0, 1450.0, 2010.0], apart_p99=[1000.0, 1000.0, 3000.0]
    )
    flushing.during_us = [500] * 98 + [3120] * 2  # p99: the 99th of 100
    flushing.apart_us = [500] * 98 + [3000] * 2
    flushing.elapsed = 1.0
    cells = flush_latency._latency_cells("flush", flushing, null=[0.98, 1.01, 1.30])
    assert "| 3.12 / 3.00 |" in cells  # the pooled p99s
    assert "**1.17x** (1.17, 1.45, 0.67)" in cells
    assert (
        "**MISS** (unsettled: the median's 75% interval (lowest to highest round), "
        "0.67 to 1.45x, holds 1.10x); null 1.01x, rounds 0.98 to 1.30"
    ) in cells


def test_a_round_with_an_empty_sample_gives_no_ratio() -> None:
    """A round whose windows caught no request (a stamp longer than the phase)
    has no p99 there: it is left out of the median, not read as 0 or nan."""
    samples = flush_latency.PhaseSamples(
        during_p99=[float("nan"), 1200.0], apart_p99=[1000.0, 1000.0]
    )
    assert flush_latency.round_ratios(samples) == [1.2]


@pytest.mark.parametrize(
    ("ratios", "verdict"),
    [
        ([1.17, 1.45, 1.20], "**MISS**"),  # every round over: settled
        ([0.95, 0.99, 1.02], "**PASS**"),  # every round under: settled
        ([1.05], "**PASS**"),  # quick mode: one round, no interval
        ([0.9, 1.0, 1.2], "**PASS** (unsettled: the median's 75% interval"),
    ],
)
def test_p99_verdicts(ratios: list[float], verdict: str) -> None:
    text = flush_latency.p99_verdict(ratios)
    assert text.startswith(verdict)
    if verdict.endswith("**"):
        assert text == verdict


def test_the_null_is_given_beside_the_verdict() -> None:
    """The quiet phase's empty windows, read the same way, say what the
    instrument finds where there is nothing: beside the verdict, not in it."""
    verdict = flush_latency.p99_verdict([1.34, 3.00, 1.70])
    text = flush_latency.with_the_null(verdict, [0.93, 1.21, 1.02])
    assert text == "**MISS**; null 1.02x, rounds 0.93 to 1.21"
    assert flush_latency.with_the_null("**PASS**", [1.04]) == "**PASS**; null 1.04x"
    assert flush_latency.with_the_null("**PASS**", []) == "**PASS**; null: no round measured"
    # No round of its own: nothing for the null to leave unresolved.
    unmeasured = flush_latency.with_the_null("no round measured", [1.2, 1.3])
    assert unmeasured == "no round measured; null 1.25x, rounds 1.20 to 1.30"


def test_a_null_over_the_budget_leaves_the_verdict_unresolved() -> None:
    verdict = flush_latency.p99_verdict([1.02, 1.05, 1.04])
    text = flush_latency.with_the_null(verdict, [1.04, 1.17, 1.57])
    assert text == (
        "**UNRESOLVED**: the null is over the budget itself (alone: **PASS**); "
        "null 1.17x, rounds 1.04 to 1.57"
    )


def test_the_cross_check_divides_by_the_quiet_phase_of_the_same_round() -> None:
    flushing = flush_latency.PhaseSamples(
        during_p99=[1200.0, float("nan"), 900.0], apart_p99=[1000.0, 1000.0, 1000.0]
    )
    quiet = flush_latency.PhaseSamples(all_p99=[1000.0, 1000.0, 600.0])
    assert flush_latency.against_quiet(flushing, quiet) == [1.2, 1.5]
    flushing.during_us = flushing.apart_us = [500] * 100
    flushing.elapsed = 1.0
    cells = flush_latency._latency_cells("flush", flushing, [1.0], [1.2, 1.5])
    assert "; null 1.00x; against the quiet phase 1.35x |" in cells


def test_a_small_sample_has_no_p99() -> None:
    """The nearest-rank p99 of fewer than 100 requests is their maximum."""
    assert math.isnan(flush_latency.p99_of(list(range(99)), 100))
    assert flush_latency.p99_of(list(range(1, 101)), 100) == 99


def test_a_window_whose_work_fails_is_recorded_and_its_row_says_so() -> None:
    """The row says the phase failed, and the run goes on: ``make bench``
    writes its tables only at its end, and one stamp that timed out must not
    lose every module's."""

    def work() -> None:
        raise TimeoutError("minting took too long")

    with flush_latency.Windows(work) as windows:
        windows._thread.join(5)
    assert isinstance(windows.failure, TimeoutError)
    assert len(windows.windows) == 1  # its requests are in a window, not apart
    samples = flush_latency.PhaseSamples()
    answer = {
        "dues_ns": [],
        "latencies_us": [],
        "lags_us": [],
        "behind": 0,
        "errors": 0,
        "elapsed": 1.0,
        "cpu_seconds": 0.1,
    }
    flush_latency.keep(samples, answer, windows, flush_latency.QUICK)
    cells = flush_latency._latency_cells("mint", samples, [1.0])
    assert "**FAILED**: the work raised TimeoutError('minting took too long')" in cells


def test_a_failed_preparation_is_recorded_too() -> None:
    def refill() -> None:
        raise MemoryError

    with flush_latency.Windows(lambda: None, prepare=refill) as windows:
        windows._thread.join(5)
    assert isinstance(windows.failure, MemoryError)
    assert windows.windows == []


MS = 1_000_000  # nanoseconds


@pytest.mark.parametrize(
    ("due_ms", "where"),
    [
        (5, "apart"),  # before the first window, far enough
        (9, "guard"),  # within 2 ms before the first window
        (10, "during"),  # a window includes its start ...
        (19, "during"),
        (20, "guard"),  # ... not its end, and right after it is guarded
        (21, "guard"),
        (22, "apart"),  # the guard's end
        (27, "apart"),
        (28, "guard"),  # 2 ms before the second window
        (30, "during"),
        (40, "guard"),
        (42, "apart"),  # after the last window
        (1_000, "apart"),
    ],
)
def test_requests_are_sorted_by_when_they_fell_due(due_ms: int, where: str) -> None:
    windows = [(10 * MS, 20 * MS), (30 * MS, 40 * MS)]
    during, apart = flush_latency.split_by_windows([due_ms * MS], [777], windows, 2 * MS)
    found = "during" if during else "apart" if apart else "guard"
    assert found == where
    assert (during or apart or [777]) == [777]  # the latency goes with its request


def test_without_windows_every_request_is_apart() -> None:
    during, apart = flush_latency.split_by_windows([1, 2, 3], [10, 20, 30], [], 5)
    assert (during, apart) == ([], [10, 20, 30])


def test_the_split_keeps_each_latency_with_its_own_request() -> None:
    dues = [5 * MS, 15 * MS, 25 * MS, 35 * MS]
    during, apart = flush_latency.split_by_windows(
        dues, [1, 2, 3, 4], [(10 * MS, 20 * MS), (30 * MS, 40 * MS)], MS
    )
    assert during == [2, 4]
    assert apart == [1, 3]


def test_the_build_table_keeps_the_paced_encoding_out_of_the_total() -> None:
    labels = flush_latency.BUILD_LABELS
    result = flush_latency.BuildResult(
        collect_ms=[1.0],
        build_ms=[20.0],
        gzip_ms=[5.0],
        total_ms=[26.0],
        paced_ms=[140.0],
        baseline_ms=[13.0],
        cpu_ms={label: [10.0] for label in labels},
    )
    rows = flush_latency.build_table(result).splitlines()
    assert rows[3].startswith("| payload.build_reports(..., pacing=UNPACED) | 20.0 |")
    assert rows[3].endswith("| 77% | 1.54x |")
    paced = rows[6]
    assert paced.startswith(f"| {labels[4]} | 140.0 |")
    assert "mostly pauses" in paced and "— (not in the total) | — |" in paced


def test_median_bounds_text_names_the_rounds_and_their_coverage() -> None:
    assert "lowest to the highest round: it holds the true median 75%" in median_bounds_text(3)
    assert "fewer rounds than a 95 % interval needs" in median_bounds_text(3)
    assert median_bounds_text(8).endswith("99% of the time")
    assert "the 4th lowest to the 4th highest" in median_bounds_text(15)
