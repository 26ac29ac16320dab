"""Bytecodes per request, by function and line: where the middlewares' work is, counted exactly.

:mod:`benchmarks.instructions` counts the machine instructions a request
costs under cachegrind: how much, steadily, but not where in our code. The
sampling profile (:mod:`benchmarks.profile`) says where, but only roughly for
a path of a few microseconds. This counts every bytecode the interpreter runs
for a request, by the code object and line that runs it, so that the added
work can be read line by line, and a change to the hot path judged before and
after by a number that does not move between runs.

Method: the rows of :mod:`benchmarks.instructions` (the same apps, built by
:func:`~benchmarks.instructions.build_all`, served by the overhead table's
loops), all in this process. The integrations read the scripted clock of
that module, so each request files the same latency in every run. After a
warm-up of a whole number of the recorder's queue batches, ``sys.settrace``
with opcode events counts the bytecodes of ``PENDING_LIMIT`` requests (one
batched aggregation among them, as in production), with the garbage
collector off; per request is that total over the requests. The serving
loop is the same for every row, so it cancels out of the figures over the
bare app.

What a count is not: a C function (``dict.get``, ``perf_counter``, the JSON
encoder) runs no bytecode, and is counted only as the few bytecodes that call
it; and a bytecode may cost a few machine instructions or hundreds. On these
rows the two counts go together: on 2026-12-07 (CPython 3.11) each added
bytecode cost 43 to 52 machine instructions in the enabled rows (Flask's
``init_app`` +311 bytecodes and +13,228 instructions, the generic WSGI
middleware +487 and +23,702, Starlette's +403 and +20,984).

A few seconds; not part of the default ``make bench``
(``make bench ARGS=bytecodes``). ``BENCH_QUICK=1`` counts a single request per
row after the warm-up (the batched aggregation then falls outside it).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import linecache
import operator
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import reqtelemetry
from benchmarks import load_average, quick
from benchmarks.instructions import READINGS_PER_REQUEST, VARIANTS, build_all, scripted_clock
from reqtelemetry.recorder import PENDING_LIMIT

#: Where reqtelemetry's own code lives: a code object from here is the library's.
PACKAGE_DIR = str(Path(reqtelemetry.__file__).resolve().parent) + os.sep
#: Requests served before counting: whole queue batches, so the queue is empty then.
WARMUP_BATCHES = 2
#: Lines of reqtelemetry listed per enabled row.
TOP_LINES = 12

Line = tuple[CodeType, int]


@dataclass
class RowCount:
    """What one row's counted requests ran, per request."""

    label: str
    requests: int
    #: Bytecodes per (code object, line), summed over the counted requests.
    by_line: collections.Counter[Line] = field(default_factory=collections.Counter)

    @property
    def per_request(self) -> float:
        return sum(self.by_line.values()) / self.requests

    @property
    def own_per_request(self) -> float:
        """Bytecodes of reqtelemetry's own code per request."""
        own = sum(n for (code, _), n in self.by_line.items() if is_own(code))
        return own / self.requests


def is_own(code: CodeType) -> bool:
    """Whether ``code`` is reqtelemetry's (the package directory, not a test or a benchmark)."""
    return code.co_filename.startswith(PACKAGE_DIR)


def count_bytecodes(serve: Callable[[], None]) -> collections.Counter[Line]:
    """Every bytecode ``serve()`` runs, by code object and line.

    Why keyed by code object: a string per bytecode (file and function
    names) would cost the tracer more than the bytecode; names are looked up
    once, for the table.
    """
    counts: collections.Counter[Line] = collections.Counter()

    def each_bytecode(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":  # line 0: a bytecode of no line (a generator's cleanup)
            counts[frame.f_code, frame.f_lineno or 0] += 1
        return each_bytecode

    def each_frame(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        return each_bytecode

    gc.collect()
    gc.disable()
    before = sys.gettrace()  # a debugger's or coverage's tracer, given back after
    sys.settrace(each_frame)
    try:
        serve()
    finally:
        sys.settrace(before)
        gc.enable()
    return counts


def servers(apps: dict[str, Any]) -> dict[str, Callable[[int], None]]:
    """For each row, a function serving ``n`` requests as the overhead table does."""
    from benchmarks.overhead import _asgi_loop, _wsgi_loop, asgi_scope, wsgi_environ

    loop = asyncio.new_event_loop()
    clock = time.perf_counter_ns
    serving: dict[str, Callable[[int], None]] = {}
    for label, app in apps.items():
        if VARIANTS[label][0] == "asgi":
            scope = asgi_scope()

            def serve(n: int, app: Any = app, scope: dict[str, Any] = scope) -> None:
                loop.run_until_complete(_asgi_loop(app, scope, n, clock))
        else:
            environ = wsgi_environ()

            def serve(n: int, app: Any = app, environ: dict[str, Any] = environ) -> None:
                _wsgi_loop(app, environ, n, clock)

        serving[label] = serve
    return serving


def clocked_modules() -> list[Any]:
    """The integrations' modules that read ``time.perf_counter`` as their own ``perf_counter``."""
    return [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("reqtelemetry.integrations.")
        and getattr(module, "perf_counter", None) is time.perf_counter
    ]


def script_the_clock(modules: list[Any], requests: int) -> Iterator[float]:
    """Give ``modules`` a fresh scripted clock (:func:`~benchmarks.instructions.scripted_clock`)
    for ``requests`` requests: every row then files the same latencies, in every
    run. Returns the readings, to check they did not run out."""
    readings = scripted_clock(READINGS_PER_REQUEST * requests)
    for module in modules:
        module.perf_counter = readings.__next__
    return readings


def count_rows(labels: list[str] | None = None, requests: int | None = None) -> list[RowCount]:
    """Count the rows named (all of :data:`~benchmarks.instructions.VARIANTS` by
    default), ``requests`` each after the warm-up (default: one queue batch,
    ``PENDING_LIMIT``; fewer leaves the batched aggregation out)."""
    apps = build_all()
    modules = clocked_modules()
    serving = servers(apps)
    counted = PENDING_LIMIT if requests is None else requests
    warmup = WARMUP_BATCHES * PENDING_LIMIT
    rows = []
    try:
        for label in labels or list(VARIANTS):
            serve = serving[label]
            readings = script_the_clock(modules, warmup + counted)
            serve(warmup)
            counts = count_bytecodes(functools.partial(serve, counted))
            if operator.length_hint(readings) == 0:
                # A middleware that met the end counted an internal error instead.
                raise RuntimeError("the scripted clock ran out: raise READINGS_PER_REQUEST")
            rows.append(RowCount(label, counted, counts))
    finally:
        for module in modules:
            module.perf_counter = time.perf_counter
    return rows


def _name(code: CodeType) -> str:
    """The code's qualified name (Python 3.11 on), else its plain name."""
    return str(getattr(code, "co_qualname", code.co_name))


def _where(line: Line) -> str:
    code, number = line
    return f"`{Path(code.co_filename).name}:{number}` {_name(code)}"


def _source(line: Line) -> str:
    code, number = line
    text = linecache.getline(code.co_filename, number).strip().replace("|", "\\|")
    return f"`{text}`" if text else ""


def summary_table(rows: list[RowCount]) -> str:
    by_label = {row.label: row for row in rows}
    lines = [
        "| variant | bytecodes/request | over bare | reqtelemetry's own | elsewhere, over bare |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        bare = by_label.get(VARIANTS[row.label][1] or "")
        if bare is None:
            lines.append(f"| {row.label} | {row.per_request:,.1f} | — | — | — |")
            continue
        over = row.per_request - bare.per_request
        elsewhere = over - row.own_per_request
        lines.append(
            f"| {row.label} | {row.per_request:,.1f} | {over:+,.1f} | "
            f"{row.own_per_request:,.1f} | {elsewhere:+,.1f} |"
        )
    return "\n".join(lines)


def by_function(row: RowCount) -> list[tuple[str, float]]:
    """reqtelemetry's functions in ``row``, with their bytecodes per request, busiest first."""
    functions: collections.Counter[str] = collections.Counter()
    for (code, _), n in row.by_line.items():
        if is_own(code):
            functions[f"{Path(code.co_filename).name}: {_name(code)}"] += n
    return [(name, n / row.requests) for name, n in functions.most_common()]


def functions_table(row: RowCount) -> str:
    lines = [
        f"{row.label}: reqtelemetry's functions",
        "",
        "| bytecodes/request | share of its own | function |",
        "|---:|---:|---|",
    ]
    own = row.own_per_request
    for name, per_request in by_function(row):
        share = per_request / own if own else 0.0
        lines.append(f"| {per_request:,.1f} | {share:.0%} | {name} |")
    return "\n".join(lines)


def lines_table(row: RowCount, top: int = TOP_LINES) -> str:
    own = [(line, n) for line, n in row.by_line.items() if is_own(line[0])]
    own.sort(key=lambda item: (-item[1], item[0][0].co_filename, item[0][1]))  # steady order
    total = sum(n for _, n in own)
    lines = [
        f"{row.label}: the {min(top, len(own))} busiest of {len(own)} lines of reqtelemetry",
        "",
        "| bytecodes/request | share of its own | where | source |",
        "|---:|---:|---|---|",
    ]
    for line, n in own[:top]:
        share = n / total if total else 0.0
        lines.append(
            f"| {n / row.requests:,.2f} | {share:.0%} | {_where(line)} | {_source(line)} |"
        )
    return "\n".join(lines)


def run() -> str:
    """Count every row and return the markdown section."""
    started = time.perf_counter()
    load_before = load_average()
    rows = count_rows(requests=1 if quick() else None)
    elapsed = time.perf_counter() - started
    counted = rows[0].requests if rows else 0
    enabled = [row for row in rows if VARIANTS[row.label][1] and row.own_per_request > 0]
    parts = [
        "## Bytecodes per request, by line",
        "",
        f"- mode: {'quick' if quick() else 'full'}; {elapsed:.1f} s; load average "
        f"(1/5/15 min) before: {load_before}; Python {sys.version.split()[0]}",
        "- the instruction table's rows and apps, in one process, the integrations on "
        "a scripted clock; after a warm-up of "
        f"{WARMUP_BATCHES * PENDING_LIMIT} requests, {counted} request(s) per row "
        "counted under `sys.settrace` opcode events, garbage collector off"
        + (
            " (one batched aggregation among them)"
            if counted == PENDING_LIMIT
            else " (the batched aggregation not among them)"
        ),
        "- a C function runs no bytecode: it counts as the bytecodes that call it; "
        "*elsewhere, over bare*: the framework's and the serving loop's bytecodes "
        "that a row adds (or saves) beside reqtelemetry's own",
        "",
        summary_table(rows),
    ]
    for row in enabled:
        parts += ["", functions_table(row), "", lines_table(row)]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(run())
