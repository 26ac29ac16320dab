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
``receive``/``send``/``start_response``). After a warm-up the process forks
twice: one child serves ``LOW`` requests, the other ``HIGH``, and the
difference of the two children's totals (each includes everything before the
fork) divided by ``HIGH - LOW`` is the cost of one request, start-up and
warm-up cancelled out. Both children have the parent's memory layout, and the
start-up, most of a counted process's instructions, runs once for the two.
The garbage collector stays on, as in production, but the heap built
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
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
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
#: Digits of a counted process's arguments: its row, and each request count
#: (see :func:`child_arguments`).
_ROW_WIDTH = 2
_COUNT_WIDTH = 6
#: The variable whose length gives a counted process another memory layout.
LAYOUT_VARIABLE = "BENCH_LAYOUT_PADDING"
#: Its lengths in a full run, for the Flask rows (see :func:`layouts_of`).
#: Padding of 2 to 13 bytes gave one and the same layout; these three differ.
LAYOUT_PADDINGS = (0, 40, 70)


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


def _child(label: str, counts: Counts) -> None:
    """In the counted process: warm up, then fork a child per count to serve it.

    Each child announces itself on stderr (:data:`_SERVED`), so that the
    benchmark can find that child's total in valgrind's report.
    """
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

        def serve(requests: int) -> None:
            loop.run_until_complete(_asgi_loop(app, scope, requests, clock))
    else:
        environ = wsgi_environ()

        def serve(requests: int) -> None:
            _wsgi_loop(app, environ, requests, clock)

    serve(WARMUP)
    _freeze_heap()
    for requests in (counts.low, counts.high):
        pid = os.fork()
        if pid == 0:  # the counted child: serve, report, and leave without clean-up
            code = 1
            try:
                serve(requests)
                if operator.length_hint(readings) == 0:
                    # A middleware that met the end would have counted an internal error.
                    raise RuntimeError("the scripted clock ran out: raise READINGS_PER_REQUEST")
                sys.stderr.write(_SERVED.format(requests=requests, pid=os.getpid()))
                code = 0
            except BaseException:
                traceback.print_exc()  # os._exit below would otherwise swallow it
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"the child serving {requests} requests failed")


#: What a counted child writes once it has served its requests.
_SERVED = "counted child: {requests} requests in process {pid}\n"
_SERVED_PATTERN = re.compile(r"counted child: (\d+) requests in process (\d+)")


_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")
#: The same total as valgrind reports it for each process it ran, forked children included.
_REFS_BY_PID = re.compile(r"==(\d+)== " + _REFS.pattern)


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


def child_arguments(label: str, counts: Counts) -> list[str]:
    """What the counted process is told: its row's position and its two request
    counts, each at a fixed width, so that every row's command line is as long
    as every other's.

    Why not the label itself: the labels differ in length, and so did each
    process's argument strings, which shifted where the interpreter put
    everything allocated after them. Rows that run exactly the same code (a
    bare Flask app and an opted-out one) then counted up to 4,500 instructions
    apart, through collisions in CPython's type-attribute cache. With arguments
    of one width they count within a few hundred of each other.
    """
    return [
        f"{list(VARIANTS).index(label):0{_ROW_WIDTH}d}",
        f"{counts.low:0{_COUNT_WIDTH}d}",
        f"{counts.high:0{_COUNT_WIDTH}d}",
    ]


def label_of(argument: str) -> str:
    """The row a counted process was given by :func:`child_arguments`."""
    return list(VARIANTS)[int(argument)]


def layouts_of(label: str) -> tuple[int, ...]:
    """The environment paddings a row is counted with: each one layout of memory.

    Why several for the Flask rows: where the interpreter puts its objects
    decides which entries of CPython's type-attribute cache collide, and a
    Flask request, with its many classes, pays for collisions by the
    thousand. With one source, the enabled Flask row's difference from the
    bare one was 10,573 to 12,230 instructions in nine layouts and 6,064
    in another (the bare request alone rose by 6,700 there), and the layout
    also moves with the source of any imported module. The median over three
    layouts stands for the code, not for one layout. The Starlette rows take
    one: counted in these three layouts, each of them stayed within 39
    instructions, and three would add 13 s to ``make bench``. So does a quick
    run.
    """
    if quick() or VARIANTS[label][0] != "wsgi":
        return LAYOUT_PADDINGS[:1]
    return LAYOUT_PADDINGS


def count_instructions(
    valgrind: str, label: str, counts: Counts, padding: int = 0
) -> dict[int, int]:
    """Instructions each counted child executed (start-up and warm-up included), by its
    request count."""
    command = [
        valgrind,
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        *child_arguments(label, counts),
    ]
    env = counted_environment(**{LAYOUT_VARIABLE: "x" * padding})
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    totals = children_totals(result.stderr)
    if result.returncode != 0 or set(totals) != {counts.low, counts.high}:
        raise RuntimeError(f"cachegrind run of {label!r} failed:\n{result.stderr[-2000:]}")
    return totals


def children_totals(stderr: str) -> dict[int, int]:
    """Each counted child's total instructions, by the requests it served, from
    valgrind's report (``==pid== I refs: n``) and the children's own lines."""
    refs = {int(pid): int(total.replace(",", "")) for pid, total in _REFS_BY_PID.findall(stderr)}
    return {
        int(requests): refs[int(pid)]
        for requests, pid in _SERVED_PATTERN.findall(stderr)
        if int(pid) in refs
    }


def per_layout(valgrind: str, labels: list[str], plan: Counts) -> dict[str, dict[int, float]]:
    """Instructions per request of each row, in each of its layouts (by padding).

    One counted process per row and layout, one per core at a time.
    """
    warm_bytecode_cache()
    jobs = [(label, padding) for label in labels for padding in layouts_of(label)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        found = list(pool.map(lambda job: count_instructions(valgrind, job[0], plan, job[1]), jobs))
    per_job = {
        job: (totals[plan.high] - totals[plan.low]) / (plan.high - plan.low)
        for job, totals in zip(jobs, found, strict=True)
    }
    return {
        label: {padding: per_job[label, padding] for padding in layouts_of(label)}
        for label in labels
    }


def per_request(valgrind: str, labels: list[str], plan: Counts) -> dict[str, float]:
    """Instructions per request of each row: the median over its layouts."""
    return {
        label: statistics.median(counted.values())
        for label, counted in per_layout(valgrind, labels, plan).items()
    }


@dataclass(frozen=True)
class OverBare:
    """A row's instructions over its bare row's: the median and range over layouts."""

    median: float
    low: float
    high: float
    layouts: int


def over_bare(row: Mapping[int, float], bare: Mapping[int, float]) -> OverBare:
    """Differences taken layout by layout (each row and its bare row in the same
    layout), then summarised: a layout that is dear for both cancels out."""
    differences = [row[padding] - bare[padding] for padding in row]
    return OverBare(
        median=statistics.median(differences),
        low=min(differences),
        high=max(differences),
        layouts=len(differences),
    )


def counted_per_request(
    names: Iterable[str], plan: Counts, count: Callable[[str, int], int]
) -> dict[str, float]:
    """Per request: ``count(name, high) - count(name, low)`` over ``high - low``
    (two processes per name: the in-server count starts a server afresh for each).

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
    measured = per_layout(valgrind, list(VARIANTS), plan)
    paddings = ", ".join(str(padding) for padding in LAYOUT_PADDINGS)
    layouts = (
        "one layout for every row (quick run)"
        if quick()
        else f"the Flask rows in {len(LAYOUT_PADDINGS)} memory layouts ({LAYOUT_VARIABLE} "
        f"of {paddings} bytes), the Starlette rows, which move far less, in the first"
    )
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
        "- every counted process gets arguments of one length (its row's number and its "
        "request counts, at a fixed width): given the rows' labels, whose lengths differ, a "
        "bare and an opted-out Flask app, which run the same code, counted up to 4,500 "
        "instructions apart",
        "- where objects lie in memory decides which entries of CPython's type-attribute "
        "cache collide, and a Flask request pays for collisions by the thousand: one source "
        "gave the enabled Flask row 10,573 to 12,230 instructions over bare in nine "
        "layouts and 6,064 in another; the source of any imported module moves the layout "
        f"too. So: {layouts}; a row and its bare row are compared layout by layout; the table "
        "gives the median and, where there are several, the range over layouts; read a "
        "difference between two versions within that range as no difference",
        "- the count runs one process per core: instructions do not depend on the load",
        "- a count, not a time: the same on every run, so it shows what a change to the "
        "hot path saved; it leaves out cache misses (see the timings above)",
        "",
        "| variant | instructions/request | over bare | range over layouts | ratio vs bare |",
        "|---|---:|---:|---|---:|",
    ]
    for label, (_, bare) in VARIANTS.items():
        value = statistics.median(measured[label].values())
        if bare is None:
            lines.append(f"| {label} | {value:,.0f} | — | — | — |")
            continue
        added = over_bare(measured[label], measured[bare])
        spread = (
            f"{added.low:+,.0f} to {added.high:+,.0f} ({added.layouts} layouts)"
            if added.layouts > 1
            else "— (1 layout)"
        )
        base = statistics.median(measured[bare].values())
        lines.append(
            f"| {label} | {value:,.0f} | {added.median:+,.0f} | {spread} | "
            f"{(base + added.median) / base:.3f}x |"
        )
    return "\n".join(lines) + "\n"


def _main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        _child(label_of(argv[1]), Counts(low=int(argv[2]), high=int(argv[3])))
        return
    print(run())


if __name__ == "__main__":
    _main(sys.argv[1:])
