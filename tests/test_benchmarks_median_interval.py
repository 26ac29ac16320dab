"""The confidence interval that tells a settled overhead verdict from an unsettled one."""

from __future__ import annotations

import math
import random

import pytest

from benchmarks import overhead


def _coverage(n: int, k: int) -> float:
    """P(the k-th smallest of n <= median <= the k-th largest) = 1 - 2 P(Binomial(n, 1/2) < k)."""
    return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n


def test_fifteen_rounds_give_the_fourth_smallest_and_the_fourth_largest() -> None:
    values = [float(v) for v in range(1, 16)]
    random.Random(3).shuffle(values)
    assert overhead.median_interval(values) == (4.0, 12.0)


@pytest.mark.parametrize("n", range(6, 41))
def test_the_interval_is_the_narrowest_that_keeps_95_percent(n: int) -> None:
    values = [float(v) for v in range(n)]
    low, high = overhead.median_interval(values)
    k = int(low) + 1  # the k-th smallest value is k - 1 here
    assert high == n - k
    assert _coverage(n, k) >= 0.95
    assert _coverage(n, k + 1) < 0.95


def test_too_few_rounds_raise_a_clear_error() -> None:
    with pytest.raises(ValueError, match="5 values cannot give a 95% interval"):
        overhead.median_interval([1.0, 2.0, 3.0, 4.0, 5.0])


def _row(paired: list[float]) -> str:
    bare = overhead.Variant("(a) bare", "asgi", None, samples_us=[10.0] * len(paired))
    enabled = overhead.Variant(
        "(b) enabled",
        "asgi",
        None,
        bare=bare,
        budget_us=3.0,
        samples_us=[10.0 + value for value in paired],
        paired_us=paired,
    )
    return overhead._table([bare, enabled]).splitlines()[-1]


def test_a_verdict_the_rounds_do_not_settle_says_so() -> None:
    straddling = [2.7, 2.8, 2.9, 3.0, 3.05, 3.1, 3.1, 3.1, 3.15, 3.2, 3.3, 3.4, 3.5, 3.6, 3.7]
    row = _row(straddling)
    assert "**MISS**" in row  # the median's verdict stays
    assert "unsettled: the median's 95% interval, 3.00 to 3.40 µs, holds the budget" in row


def test_a_settled_verdict_carries_no_caveat() -> None:
    row = _row([3.3 + 0.01 * i for i in range(15)])
    assert "**MISS**" in row and "unsettled" not in row
    row = _row([2.0 + 0.01 * i for i in range(15)])
    assert "**PASS**" in row and "unsettled" not in row


def test_quick_mode_rounds_get_a_verdict_without_an_interval() -> None:
    row = _row([3.0, 3.1, 3.2])
    assert "**MISS**" in row and "unsettled" not in row


def test_the_ratio_follows_the_paired_overhead() -> None:
    """The ratio column says what the overhead column says, whatever the row's own median."""
    bare = overhead.Variant("(a) bare", "asgi", None, samples_us=[8.7] * 15)
    enabled = overhead.Variant(
        "(b) enabled",
        "asgi",
        None,
        bare=bare,
        budget_us=3.0,
        samples_us=[13.5] * 15,  # timed while the machine was slower: 1.552x on its own
        paired_us=[2.86] * 15,
    )
    assert overhead.paired_ratio(8.7, 2.86) == pytest.approx((8.7 + 2.86) / 8.7)
    row = overhead._table([bare, enabled]).splitlines()[-1]
    assert "| 2.86 |" in row and "| 1.329x |" in row, row


def test_a_row_that_recorded_less_than_it_served_reads_broken() -> None:
    bare = overhead.Variant("(a) bare", "asgi", None, samples_us=[10.0] * 15)
    enabled = overhead.Variant(
        "(b) enabled",
        "asgi",
        None,
        bare=bare,
        budget_us=3.0,
        samples_us=[11.0] * 15,
        paired_us=[1.0] * 15,
        accounting=overhead.Accounting(recorded=0, expected=725, internal_errors=725),
    )
    row = overhead._table([bare, enabled]).splitlines()[-1]
    assert "**BROKEN** (recorded 0 of 725, 725 internal errors)" in row
    assert "PASS" not in row
    enabled.accounting = overhead.Accounting(recorded=725, expected=725, internal_errors=0)
    assert "≤ 3 µs: **PASS**" in overhead._table([bare, enabled]).splitlines()[-1]
    enabled.accounting = overhead.Accounting(recorded=725, expected=725, internal_errors=1)
    assert "BROKEN" in overhead._table([bare, enabled]).splitlines()[-1]
