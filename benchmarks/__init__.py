"""Benchmarks for reqtelemetry, run with ``make bench`` (``python -m benchmarks``).

Each benchmark is a module in this package exposing ``run() -> str``, which
measures something and returns a markdown section (a heading, notes and a
table). :mod:`benchmarks.__main__` runs every module listed in ``MODULES`` in
turn, prints the sections and writes them, under a header describing the
machine and the versions measured, to ``benchmarks/results/latest.md`` (a run
of named modules, or a quick one, to a file of its own: see
:func:`benchmarks.__main__.results_path`).

To add a benchmark: write ``benchmarks/<name>.py`` with a ``run()`` and append
``"<name>"`` to ``MODULES`` (or to ``EXTRA_MODULES``, run only when named).
:mod:`benchmarks.contenders` is not one: it configures the peers
(OpenTelemetry, starlette-exporter, prometheus-flask-exporter, pinned in the
``bench`` extra) that the benchmarks compare reqtelemetry with. Benchmarks
report; they never fail a build over a number. ``BENCH_QUICK=1`` (or
``--quick``) asks every module for a short, rough run, used by the smoke
tests; ``BENCH_CLOCK=thread`` (or ``--cpu-clock``) asks for the thread's CPU
clock instead of the wall clock, which is far steadier on a shared or busy
machine.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

#: The checkout: child processes import ``benchmarks`` from here.
ROOT = Path(__file__).resolve().parents[1]

#: Benchmark modules run by ``python -m benchmarks``, in this order.
MODULES: tuple[str, ...] = (
    "overhead",
    "instructions",
    "memory",
    "throughput",
    "server_instructions",
    "flush_latency",
    "collector",
)
#: Modules run only when named (``python -m benchmarks profile``): kept out of
#: the default run, which must stay under ten minutes on a 2-core machine.
EXTRA_MODULES: tuple[str, ...] = ("profile", "bytecodes", "retention", "dashboard")


def quick() -> bool:
    """True when a short smoke-test run was asked for (``BENCH_QUICK=1``)."""
    return os.environ.get("BENCH_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}


def load_average() -> str:
    """The 1/5/15-minute load average, to judge how busy the machine was."""
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:  # not available on this platform
        return "n/a"


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment for a child that imports ``benchmarks``, plus ``extra``.

    ``benchmarks`` lives at the repository root, not in the installed package,
    so the root goes first on the child's ``PYTHONPATH``.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH", "")])])
    env.update(extra)
    return env


def paired_ratios(mine: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """Each round's value over the baseline's in the same round, for the
    rounds where both were measured (neither nan, the baseline not 0).

    Why shared: the throughput and the flush tables judge their budgets on
    these per-round ratios alike.
    """
    return [
        m / t
        for m, t in zip(mine, theirs, strict=True)
        if t and not math.isnan(m) and not math.isnan(t)
    ]


class AnswerHead(NamedTuple):
    """What a load generator needs from the head of an HTTP/1.1 answer."""

    status: int
    #: Its Content-Length, None where it has none.
    length: int | None
    chunked: bool
    #: ``Connection: close``: the server closes the connection after it.
    closing: bool


def answer_head(head: bytes) -> AnswerHead:
    """Read an answer's status line and headers (with or without the blank
    line that ends them); ValueError where a number in them is not one.

    Why shared: both load generators (the throughput table's, asyncio, and
    the flush table's, a thread per connection) read answers this way.
    """
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    length = None
    if at >= 0:
        end = lower.find(b"\r\n", at + 2)
        length = int(lower[at + 17 : end if end >= 0 else len(lower)])
    return AnswerHead(
        status=int(head[9:12]),
        length=length,
        chunked=b"\r\ntransfer-encoding: chunked" in lower,
        closing=b"\r\nconnection: close" in lower,
    )


def iqr(values: Sequence[float]) -> float:
    """Interquartile range: how far apart the middle half of the samples lie (0 for one)."""
    if len(values) < 2:
        return 0.0
    quartiles = statistics.quantiles(values, n=4)
    return quartiles[2] - quartiles[0]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of an already sorted sequence: rank ceil(q·n).

    Why ``ceil``: the rank once computed as ``round(q * n + 0.5) - 1`` came out
    one too high whenever q·n was an odd whole number, as Python rounds halves
    to even (the p99 of 100 values was their maximum). Shared so that every
    table of p50s and p99s ranks alike.
    """
    if not sorted_values:
        return float("nan")
    return float(sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)])


def median_bounds(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(low, high, coverage): an order-statistic interval for the median of ``values``.

    Why: a verdict taken from a median of a few rounds is only as sure as the
    rounds pin that median down. Whatever their distribution, the true median
    of independent rounds lies between the k-th smallest and the k-th largest
    of n with probability ``coverage = 1 - 2 * P(Binomial(n, 1/2) < k)``. k is
    the largest that keeps ``coverage`` at least ``confidence`` (the interval
    of ``benchmarks.overhead.median_interval``); with too few rounds for that,
    k = 1, the lowest to the highest round, and ``coverage`` says how much less
    sure it is (75 % for 3 rounds), instead of raising. One value: coverage 0.
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values")

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], max(0.0, coverage(k))


def unsettled_note(values: Sequence[float], budget: float, *, name_extent: bool = False) -> str:
    """`` (unsettled: ...)`` where the order-statistic interval of the median of
    ``values`` (:func:`median_bounds`) holds ``budget``, else ``""`` (and with
    fewer than two values, which give no interval: quick mode's one round).

    Why shared: the throughput and the flush tables judge a ratio budget on
    the median round alike, and must word an undecided verdict alike.
    ``name_extent`` says so where the interval is the lowest to the highest
    value (the flush table's 3 rounds, whose interval is far less sure).
    """
    if len(values) < 2:
        return ""
    low, high, coverage = median_bounds(values)
    if not low <= budget <= high:
        return ""
    extent = (
        " (lowest to highest round)"
        if name_extent and (low, high) == (min(values), max(values))
        else ""
    )
    return (
        f" (unsettled: the median's {coverage:.0%} interval{extent}, {low:.2f} to "
        f"{high:.2f}x, holds {budget:.2f}x)"
    )


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``11th``: for notes that name a round by its rank."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def median_bounds_text(rounds: int) -> str:
    """Which rounds bound the median's interval, and how often such bounds hold the median.

    Why spelled out: with the few rounds a run affords, the interval is far
    less sure than the 95 % the overhead table's is, and the reader should know.
    """
    if rounds < 2:
        return "with 1 round there is none, and the verdict is that round's"
    low, _high, coverage = median_bounds([float(i) for i in range(rounds)])
    rank = int(low) + 1
    which = (
        "the lowest to the highest round"
        if rank == 1
        else f"the {ordinal(rank)} lowest to the {ordinal(rank)} highest round"
    )
    short = ", fewer rounds than a 95 % interval needs" if coverage < 0.95 else ""
    return (
        f"with {rounds} rounds, {which}: it holds the true median {coverage:.0%} of the time{short}"
    )
