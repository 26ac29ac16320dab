"""The latency histogram: bounded relative error, exact merges, bounded memory."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reqtelemetry.histogram import (
    MAX_INDEX,
    MAX_TRACKED,
    MIN_INDEX,
    MIN_TRACKED,
    RELATIVE_ACCURACY,
    Histogram,
    bucket_index,
    bucket_value,
)

QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
# Floating point at a bucket boundary may cost a few ulps beyond the bound.
TOLERANCE = RELATIVE_ACCURACY * (1 + 1e-9)


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def histogram_of(values: list[float]) -> Histogram:
    histogram = Histogram()
    for value in values:
        histogram.add(value)
    return histogram


def assert_accurate(values: list[float], quantiles=QUANTILES) -> None:
    histogram = histogram_of(values)
    for q in quantiles:
        exact = exact_quantile(values, q)
        estimate = histogram.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) <= TOLERANCE * exact, (q, exact, estimate)


def clamp(value: float) -> float:
    return min(max(value, MIN_TRACKED), MAX_TRACKED)


def uniform(rng: random.Random, n: int) -> list[float]:
    return [rng.uniform(0.001, 2.0) for _ in range(n)]


def lognormal(rng: random.Random, n: int) -> list[float]:
    # Median around 50 ms with a long tail: what request latencies look like.
    return [clamp(rng.lognormvariate(math.log(0.05), 1.5)) for _ in range(n)]


def bimodal(rng: random.Random, n: int) -> list[float]:
    # Cache hits around 2 ms, misses around 300 ms.
    return [
        clamp(rng.gauss(0.002, 0.0003) if rng.random() < 0.7 else rng.gauss(0.3, 0.05))
        for _ in range(n)
    ]


def wide(rng: random.Random, n: int) -> list[float]:
    # Log-uniform over the whole tracked range, microseconds to an hour.
    low, high = math.log(MIN_TRACKED), math.log(MAX_TRACKED)
    return [clamp(math.exp(rng.uniform(low, high))) for _ in range(n)]


@pytest.mark.parametrize("distribution", [uniform, lognormal, bimodal, wide])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 17, 1000, 20_000])
def test_quantiles_within_relative_accuracy(distribution, seed, n):
    values = distribution(random.Random(seed), n)
    assert_accurate(values)


def test_bucket_value_is_within_accuracy_of_bucket_members():
    rng = random.Random(7)
    for _ in range(10_000):
        value = math.exp(rng.uniform(math.log(MIN_TRACKED), math.log(MAX_TRACKED)))
        representative = bucket_value(bucket_index(value))
        assert abs(representative - value) <= TOLERANCE * value


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=MIN_TRACKED, max_value=MAX_TRACKED, allow_nan=False),
        min_size=1,
        max_size=300,
    ),
    q=st.floats(min_value=0.0, max_value=1.0),
)
def test_quantile_property(values, q):
    assert_accurate(values, quantiles=(q,))


@settings(max_examples=100, deadline=None)
@given(
    left=st.lists(st.floats(min_value=0.0, max_value=2 * MAX_TRACKED), max_size=100),
    right=st.lists(st.floats(min_value=0.0, max_value=2 * MAX_TRACKED), max_size=100),
)
def test_merge_property(left, right):
    merged = histogram_of(left)
    merged.merge_bins(histogram_of(right).to_pairs())
    together = histogram_of(left + right)
    assert merged.bins == together.bins
    assert merged.count == together.count == len(left) + len(right)


def test_merge_equals_histogram_of_concatenated_data():
    rng = random.Random(11)
    first, second = lognormal(rng, 5000), bimodal(rng, 3000)
    merged = histogram_of(first)
    merged.merge_bins(histogram_of(second).to_pairs())
    together = histogram_of(first + second)
    assert merged.bins == together.bins
    assert merged.count == together.count == 8000
    for q in QUANTILES:
        assert merged.quantile(q) == together.quantile(q)


def test_pairs_round_trip():
    values = wide(random.Random(5), 2000)
    histogram = histogram_of(values)
    pairs = histogram.to_pairs()
    assert pairs == sorted(pairs)
    assert sum(count for _, count in pairs) == 2000
    copy = Histogram.from_pairs(pairs)
    assert copy.bins == histogram.bins and copy.count == histogram.count
    from_mapping = Histogram.from_pairs(dict(histogram.bins))
    assert from_mapping.bins == histogram.bins and from_mapping.count == 2000


def test_merge_ignores_non_positive_counts_and_clamps_indices():
    histogram = Histogram()
    histogram.merge_bins([(0, 0), (1, -5), (MIN_INDEX - 1000, 2), (MAX_INDEX + 1000, 3)])
    assert histogram.bins == {MIN_INDEX: 2, MAX_INDEX: 3}
    assert histogram.count == 5


@pytest.mark.parametrize("value", [-1.0, 0.0, 1e-12, 1e-7, MIN_TRACKED])
def test_values_below_range_clamp_to_min(value):
    histogram = Histogram()
    histogram.add(value)
    assert histogram.bins == {MIN_INDEX: 1}
    assert bucket_index(value) == MIN_INDEX
    estimate = histogram.quantile(0.5)
    assert abs(estimate - MIN_TRACKED) <= TOLERANCE * MIN_TRACKED


@pytest.mark.parametrize("value", [MAX_TRACKED, 3601.0, 1e9, math.inf])
def test_values_above_range_clamp_to_max(value):
    histogram = Histogram()
    histogram.add(value)
    assert histogram.bins == {MAX_INDEX: 1}
    assert bucket_index(value) == MAX_INDEX
    estimate = histogram.quantile(1.0)
    assert abs(estimate - MAX_TRACKED) <= TOLERANCE * MAX_TRACKED


def test_number_of_bins_is_bounded():
    histogram = Histogram()
    rng = random.Random(3)
    for _ in range(50_000):
        histogram.add(math.exp(rng.uniform(math.log(1e-12), math.log(1e9))))
    for index in range(MIN_INDEX - 10, MAX_INDEX + 10):
        histogram.add(bucket_value(index))
    limit = MAX_INDEX - MIN_INDEX + 1
    assert len(histogram.bins) <= limit
    assert min(histogram.bins) == MIN_INDEX
    assert max(histogram.bins) == MAX_INDEX
    assert histogram.count == 50_000 + limit + 19
    assert limit < 1000  # "about 500": a histogram stays small whatever the traffic


def test_empty_and_invalid_quantiles():
    histogram = Histogram()
    assert histogram.quantile(0.5) is None
    assert histogram.to_pairs() == []
    histogram.add(0.1)
    for q in (-0.01, 1.01):
        with pytest.raises(ValueError):
            histogram.quantile(q)
