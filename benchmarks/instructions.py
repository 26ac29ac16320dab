"""Instructions per request: the middlewares' cost, counted rather than timed.

Why a count next to the timings of :mod:`benchmarks.overhead`: on a shared or
small machine, a 3 µs difference between two 11 µs requests moves with the
neighbours from one run to the next, while the number of machine instructions
the interpreter executes for a request does not. Counting them under
Valgrind's cachegrind (``--cache-sim=no``: instructions only) gives a
before/after figure that is the same on every run, and so shows whether a
change to the hot path made it cheaper. It does not replace the timings: a
count ignores cache misses, which inside a framework make our lines two to
three times dearer than in a tight loop.

Each variant runs in its own process, the same app and call loop as
:mod:`benchmarks.overhead` (prebuilt scope/environ copied per call, no-op
``receive``/``send``/``start_response``), with ``LOW`` and then ``HIGH``
requests after a warm-up; the difference of the two totals divided by
``HIGH - LOW`` is the cost of one request, start-up and warm-up cancelled
out. The garbage collector stays on, as in production, but the heap built
before the counted requests is frozen (``gc.freeze``): collections then cost
what the requests allocated, not a walk over the framework's modules that
happens to fall into one count and not the other. The middlewares read a
scripted clock (:func:`scripted_clock`) instead of ``perf_counter``: the
latencies they file, and so the count, are then the same in every run,
whatever the machine's load.

Skipped, with a note, where ``valgrind`` is not installed. Run alone with
``python -m benchmarks instructions``; ``BENCH_QUICK=1`` counts fewer requests.
"""

from __future__ import annotations

import asyncio
import compileall
import gc
import itertools
import math
import operator
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from benchmarks import ROOT, load_average, quick
from reqtelemetry.recorder import PENDING_LIMIT

#: Row label → (kind, bare row it is compared with or None).
VARIANTS: dict[str, tuple[str, str | None]] = {
    "(a) Starlette, bare": ("asgi", None),
    "(b) Starlette + ASGIMiddleware, enabled": ("asgi", "(a) Starlette, bare"),
    "(c) Starlette + ASGIMiddleware, opted out": ("asgi", "(a) Starlette, bare"),
    "(d) Flask, bare": ("wsgi", None),
    "(e) Flask + init_app, enabled": ("wsgi", "(d) Flask, bare"),
    "(f) Flask + init_app, opted out": ("wsgi", "(d) Flask, bare"),
    "(g) Flask + WSGIMiddleware (any WSGI app), enabled": ("wsgi", "(d) Flask, bare"),
}
WARMUP = 300
#: The latencies the scripted clock gives the counted requests: log-normal,
#: between what the in-process table's Starlette (8 µs) and Flask (41 µs)
#: requests take, over a few dozen histogram bins, as a busy route fills them.
SCRIPTED_MEDIAN = 20e-6
SCRIPTED_SIGMA = 0.3
#: Clock readings a request takes at most, in any row (start, end, and the
#: ASGI middleware's fallback when no last body went out).
READINGS_PER_REQUEST = 3
#: The most requests a counted process serves (after the warm-up).
MOST_REQUESTS = 3 * PENDING_LIMIT


@dataclass(frozen=True)
class Counts:
    low: int
    high: int


def counts() -> Counts:
    """Request counts whose difference is a multiple of the recorder's queue
    limit, so the batched aggregation is counted exactly as often as it runs."""
    step = PENDING_LIMIT
    return Counts(low=step, high=2 * step) if quick() else Counts(low=step, high=MOST_REQUESTS)


def build_all() -> dict[str, Any]:
    """The app of every row, built as :mod:`benchmarks.overhead` builds them.

    Every counted process builds all of them, in the same order, and serves
    only its own row. Why: what a process created before (types above all)
    changes how often the interpreter's caches miss, by up to 1,500
    instructions per Flask request; building the same objects everywhere
    leaves only the row itself to tell two counts apart.
    """
    from benchmarks.overhead import _telemetry, flask_app, starlette_app
    from reqtelemetry import ASGIMiddleware, WSGIMiddleware
    from reqtelemetry.flask import init_app

    enabled_flask, opted_out_flask, generic_flask = flask_app(), flask_app(), flask_app()
    init_app(enabled_flask, _telemetry(opt_out=False))
    init_app(opted_out_flask, _telemetry(opt_out=True))
    generic_flask.wsgi_app = WSGIMiddleware(
        generic_flask.wsgi_app, telemetry=_telemetry(opt_out=False)
    )
    apps = [
        starlette_app(),
        ASGIMiddleware(starlette_app(), telemetry=_telemetry(opt_out=False)),
        ASGIMiddleware(starlette_app(), telemetry=_telemetry(opt_out=True)),
        flask_app(),
        enabled_flask,
        opted_out_flask,
        generic_flask,
    ]
    return dict(zip(VARIANTS, apps, strict=True))


def scripted_clock(readings: int, seed: int = 0) -> Iterator[float]:
    """Clock readings that are the same in every run, to stand in for ``time.perf_counter``.

    Why: a middleware files each request's latency under a histogram bin, and
    a bin's first request costs more than the next ones. Timed by the real
    clock (under valgrind, beside another counted process), the latencies, so
    the bins, so the count, moved with the machine's load: the same Flask row
    counted from 12,769 to 13,060 instructions per request over five runs of
    the same code. Here each reading is the previous one plus a step drawn,
    once and with a fixed seed, from a log-normal distribution, so every run
    files the same latencies under the same bins.

    The readings are made in advance and served by a list iterator, without
    an allocation: a reading costs about what ``perf_counter`` costs (counted:
    about 70 instructions less).
    """
    random_steps = random.Random(seed)
    median = math.log(SCRIPTED_MEDIAN)
    steps = [random_steps.lognormvariate(median, SCRIPTED_SIGMA) for _ in range(readings - 1)]
    return iter(list(itertools.accumulate(steps, initial=1.0)))


def install_scripted_clock() -> Iterator[float]:
    """Give the integrations' modules a scripted clock.

    Every counted process makes the same number of readings, however many
    requests it serves: making them costs instructions, and a cost that grew
    with the requests would land in the per-request figure. Returns the
    readings, so that the caller can check they did not run out. Only the
    counted processes do this: the timed tables keep the real clock.
    """
    readings = scripted_clock(READINGS_PER_REQUEST * (WARMUP + MOST_REQUESTS))
    for name, module in list(sys.modules.items()):
        if name.startswith("reqtelemetry.integrations.") and (
            getattr(module, "perf_counter", None) is time.perf_counter
        ):
            module.perf_counter = readings.__next__  # type: ignore[attr-defined]
    return readings


def _freeze_heap() -> None:
    gc.collect()
    gc.freeze()


def _child(label: str, requests: int) -> None:
    """In the counted process: warm up, then serve ``requests`` requests."""
    from benchmarks.overhead import (
        _asgi_loop,
        _wsgi_loop,
        asgi_scope,
        wsgi_environ,
    )

    kind = VARIANTS[label][0]
    app = build_all()[label]
    readings = install_scripted_clock()
    clock = time.perf_counter_ns
    if kind == "asgi":
        loop = asyncio.new_event_loop()
        scope = asgi_scope()
        loop.run_until_complete(_asgi_loop(app, scope, WARMUP, clock))
        _freeze_heap()
        loop.run_until_complete(_asgi_loop(app, scope, requests, clock))
        loop.close()
    else:
        environ = wsgi_environ()
        _wsgi_loop(app, environ, WARMUP, clock)
        _freeze_heap()
        _wsgi_loop(app, environ, requests, clock)
    if operator.length_hint(readings) == 0:
        # A middleware that met the end would have counted an internal error instead.
        raise RuntimeError("the scripted clock ran out: raise READINGS_PER_REQUEST")


_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def counted_environment(**extra: str) -> dict[str, str]:
    """The whole environment of a counted process: fixed, whoever runs the benchmark.

    Why: the environment's size shifts where the interpreter puts its objects,
    and with them how dictionaries keyed by objects collide. Run from ``make``
    (which adds its own variables) or from a shell, the same Flask request
    counted up to 1,500 instructions apart; with this environment, the same.
    """
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONHASHSEED": "0",
        # No counted process writes bytecode: each finds what the one before found.
        "PYTHONDONTWRITEBYTECODE": "1",
        **extra,
    }


def warm_bytecode_cache() -> None:
    """Compile this checkout's modules before anything is counted.

    Why: in a fresh clone the first counted process compiles them and the
    next one reads its bytecode, and since start-up is cancelled out by taking
    the difference of two processes' totals, that compile landed in the
    per-request figure (a bare Starlette request counted 4,000 instructions
    short). The installed packages were compiled when they were installed;
    the counted processes import nothing else of the checkout.
    """
    for folder in ("src", "benchmarks"):
        compileall.compile_dir(ROOT / folder, quiet=1)


def count_instructions(valgrind: str, label: str, requests: int) -> int:
    """Instructions the whole child process executed (start-up and warm-up included)."""
    command = [
        valgrind,
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        label,
        str(requests),
    ]
    env = counted_environment()
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    found = _REFS.search(result.stderr)
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"cachegrind run of {label!r} failed:\n{result.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_request(valgrind: str, labels: list[str], plan: Counts) -> dict[str, float]:
    """Instructions per request of each row."""
    return counted_per_request(
        labels, plan, lambda label, requests: count_instructions(valgrind, label, requests)
    )


def counted_per_request(
    names: Iterable[str], plan: Counts, count: Callable[[str, int], int]
) -> dict[str, float]:
    """Per request: ``count(name, high) - count(name, low)`` over ``high - low``.

    ``count`` runs one counted process and returns its total; the processes
    run one per core, after the checkout's bytecode is compiled.
    """
    warm_bytecode_cache()
    names = list(names)
    jobs = [(name, n) for name in names for n in (plan.low, plan.high)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        totals = list(pool.map(lambda job: count(*job), jobs))
    found = dict(zip(jobs, totals, strict=True))
    return {
        name: (found[name, plan.high] - found[name, plan.low]) / (plan.high - plan.low)
        for name in names
    }


def run() -> str:
    began = time.monotonic()
    lines = ["## Instructions per request (cachegrind)", ""]
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        lines.append("- skipped: `valgrind` is not installed (`apt install valgrind`)")
        return "\n".join(lines) + "\n"
    plan = counts()
    measured = per_request(valgrind, list(VARIANTS), plan)
    lines += [
        f"- mode: {'quick' if quick() else 'full'}; {time.monotonic() - began:.0f} s; "
        f"load average (1/5/15 min) after: {load_average()}",
        "- the apps and call loops of the in-process overhead table; each row in its own "
        f"process under `valgrind --tool=cachegrind --cache-sim=no`, {WARMUP} warm-up "
        f"requests, then {plan.low} and, in a second process, {plan.high}; per request: "
        f"the difference of the two totals over {plan.high - plan.low} requests",
        "- every counted process builds every row's app, in the same order, and serves only "
        "its own; the heap is frozen (`gc.freeze`) after the warm-up: what a process created "
        "before otherwise moved a Flask request's count by up to 1,500 instructions",
        "- the middlewares read a scripted clock instead of `perf_counter`: latencies "
        f"log-normal around {SCRIPTED_MEDIAN * 1e6:.0f} µs (standard deviation of the log "
        f"{SCRIPTED_SIGMA}), the same in every run, so the histogram bins they fill, and the "
        "count, do not move with the machine's load (timed by the real clock, a Flask row "
        "moved by 300 instructions from one run to the next)",
        "- what the count still depends on: where objects lie in memory decides which "
        "entries of CPython's type-attribute cache collide, so a Flask row moves by up to "
        "about 2,000 instructions when the source of any module the process imports changes "
        "(the benchmarks' own included); read a smaller difference between two versions "
        "as no difference",
        "- the count runs one process per core: instructions do not depend on the load",
        "- a count, not a time: the same on every run, so it shows what a change to the "
        "hot path saved; it leaves out cache misses (see the timings above)",
        "",
        "| variant | instructions/request | over bare | ratio vs bare |",
        "|---|---:|---:|---:|",
    ]
    for label, (_, bare) in VARIANTS.items():
        value = measured[label]
        if bare is None:
            lines.append(f"| {label} | {value:,.0f} | — | — |")
        else:
            base = measured[bare]
            lines.append(f"| {label} | {value:,.0f} | {value - base:+,.0f} | {value / base:.3f}x |")
    return "\n".join(lines) + "\n"


def _main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        _child(argv[1], int(argv[2]))
        return
    print(run())


if __name__ == "__main__":
    _main(sys.argv[1:])
