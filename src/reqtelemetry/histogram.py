"""A mergeable latency histogram with a bounded relative error.

Why this shape: the collector must add up latency distributions from many
instances and many flush periods, and still answer p50/p95/p99. Exact quantiles
cannot be merged; a fixed set of linear buckets cannot cover microseconds and
minutes at once. Logarithmic buckets (the DDSketch idea) can: bucket ``i`` holds
values in ``(gamma**(i-1), gamma**i]`` and reports its midpoint
``2 * gamma**i / (gamma + 1)``, which is within ``RELATIVE_ACCURACY`` of every
value in the bucket. Merging is adding counts per index.

Memory is bounded by construction: values are clamped to
``[MIN_TRACKED, MAX_TRACKED]`` seconds, so a histogram never holds more than
``MAX_INDEX - MIN_INDEX + 1`` buckets (about 500), whatever the traffic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

#: Every quantile estimate is within this relative error of the exact value at
#: rank ``floor(q * (count - 1))`` (0-based), for values inside the tracked range.
RELATIVE_ACCURACY = 0.02
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
#: Base-2 logarithms: ``math.log2`` takes one argument and is called without
#: argument parsing, ``math.log`` (optional base) parses a tuple per call.
_LOG_GAMMA = math.log2(GAMMA)

#: One microsecond: below it the clock itself is noise.
MIN_TRACKED = 1e-6
#: One hour: a request that takes longer is reported as taking an hour.
MAX_TRACKED = 3600.0
MIN_INDEX = math.ceil(math.log2(MIN_TRACKED) / _LOG_GAMMA)
MAX_INDEX = math.ceil(math.log2(MAX_TRACKED) / _LOG_GAMMA)


def bucket_index(value: float) -> int:
    """The index of the bucket that holds ``value`` seconds (clamped to the range)."""
    if value <= MIN_TRACKED:
        return MIN_INDEX
    if value >= MAX_TRACKED:
        return MAX_INDEX
    return math.ceil(math.log2(value) / _LOG_GAMMA)


def bucket_value(index: int) -> float:
    """The representative value of bucket ``index``: within the relative accuracy of its members."""
    return 2.0 * GAMMA**index / (GAMMA + 1.0)


class Histogram:
    """Counts per logarithmic bucket. Not thread-safe: the recorder holds the lock."""

    __slots__ = ("bins",)

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}

    @property
    def count(self) -> int:
        """Values added. Derived, so the recorder's hot path updates only ``bins``."""
        return sum(self.bins.values())

    def add(self, value: float) -> None:
        index = bucket_index(value)
        bins = self.bins
        bins[index] = bins.get(index, 0) + 1

    def merge_bins(self, bins: Iterable[tuple[int, int]]) -> None:
        """Add another histogram's ``(index, count)`` pairs into this one."""
        own = self.bins
        for index, count in bins:
            index = min(max(int(index), MIN_INDEX), MAX_INDEX)
            count = int(count)
            if count <= 0:
                continue
            own[index] = own.get(index, 0) + count

    def quantile(self, q: float) -> float | None:
        """The estimate of the ``q`` quantile (0..1), or None when empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: tuple[float, ...]) -> list[float | None]:
        """Estimates of several quantiles (ascending or not) in one pass over the bins."""
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile must be within [0, 1], got {q!r}")
        bins = self.bins
        count = sum(bins.values())
        if not count:
            return [None] * len(qs)
        order = sorted(range(len(qs)), key=lambda i: qs[i])
        ranks = [math.floor(qs[i] * (count - 1)) for i in order]
        found: list[float | None] = [None] * len(qs)
        seen = 0
        wanted = 0
        for index in sorted(bins):
            seen += bins[index]
            while wanted < len(order) and seen > ranks[wanted]:
                found[order[wanted]] = bucket_value(index)
                wanted += 1
            if wanted == len(order):
                break
        return found

    def to_pairs(self) -> list[list[int]]:
        """Sparse, JSON-ready form: ``[[index, count], ...]`` sorted by index."""
        return [[index, self.bins[index]] for index in sorted(self.bins)]

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]] | Mapping[int, int]) -> Histogram:
        histogram = cls()
        items = pairs.items() if isinstance(pairs, Mapping) else pairs
        histogram.merge_bins(items)
        return histogram
