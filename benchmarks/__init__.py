"""Benchmarks for reqtelemetry, run with ``make bench`` (``python -m benchmarks``).

Each benchmark is a module in this package exposing ``run() -> str``, which
measures something and returns a markdown section (a heading, notes and a
table). :mod:`benchmarks.__main__` runs every module listed in ``MODULES`` in
turn, prints the sections and writes them, under a header describing the
machine and the versions measured, to ``benchmarks/results/latest.md``.

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

import os
from pathlib import Path

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
EXTRA_MODULES: tuple[str, ...] = ("profile", "retention")


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
