"""In-process overhead of the middlewares: what reqtelemetry, and each peer, adds to one request.

No sockets and no server: each app is called through its own interface in a
tight loop, so the numbers are the framework's and the middleware's Python
work alone, the part a middleware can make cheaper or dearer. One table holds
every contender, each against the bare app timed in the same rounds.

- ASGI: a bare Starlette app with one route (``/items/{item_id}`` returning a
  small ``PlainTextResponse``) is awaited directly inside one event loop, with a
  prebuilt scope (copied per call, as a server hands each request a fresh one)
  and no-op ``receive``/``send``; then the same app wrapped by
  ``reqtelemetry.ASGIMiddleware`` with an enabled and with an opted-out
  ``Telemetry``; wrapped by OpenTelemetry's ASGI middleware; and with
  starlette-exporter's middleware.
- WSGI: a bare Flask app with ``/items/<int:item_id>`` called through its WSGI
  interface with a prebuilt environ (copied per call) and a no-op
  ``start_response``, the response iterated and closed as a server would; then
  instrumented with ``reqtelemetry.flask.init_app``, enabled and opted out
  (opted out, it leaves the app untouched); with the generic
  ``reqtelemetry.WSGIMiddleware`` around ``app.wsgi_app`` instead, as any
  other WSGI app is measured (it must wrap ``start_response`` and the response
  iterable, which ``init_app`` avoids); wrapped by OpenTelemetry's WSGI
  middleware (around ``app.wsgi_app``); and with prometheus-flask-exporter.
  Every WSGI row calls the Flask app object, as a server does.
- ``Recorder.record`` alone, the one call every enabled request makes.
- A calibration probe: a fixed piece of Python work (:func:`probe`, a loop
  that touches nothing of reqtelemetry's) timed alone, and run by a plain
  wrapper in front of each bare app. Why: an added instruction costs Flask
  about three times what it costs Starlette, and these rows show how much of
  a middleware's overhead is the framework's context rather than the
  middleware's code. The same work, timed where a middleware's runs, reads as
  a ratio (:func:`context_line`) that a budget per framework can be set from.

After the timing, each of reqtelemetry's rows is checked for having measured
at all: what its aggregates hold is counted against every request its app was
given (timed, calibration and check requests; none for an opted-out row), and
its ``Telemetry.internal_errors`` read. A middleware that fails on every
request catches the error and lets the request through, so it looks fast; such
a row reads BROKEN (recorded x of y, n internal errors) instead of a verdict.
The peers' rows print what they recorded, unchecked.

How each peer is configured is :mod:`benchmarks.contenders`' business (and is
printed under the table). A peer whose package is not installed (the ``bench``
extra installs them all, pinned) is reported as skipped.

Every variant gets its own app instance, so hooks a middleware installs stay
with its own row. (``init_app`` replaces three methods on its own app
instance; the bare row's app is untouched.)

Timing uses interleaved rounds. In each round, every contender's batch sits
between two batches of its bare app (bare, contender 1, bare, contender 2, ...,
bare; the contenders in a rotating order), and its paired difference is its
time minus the mean of those two neighbours, timed a fraction of a second
before and after. Why so tight: on a shared machine the speed drifts over
seconds by more than the budgets, and only neighbours see the same drift. A
variant's figure is the median over rounds of its per-request time, and its
overhead the median over rounds of its paired difference; a budget verdict is
that median's, and is marked *unsettled* where the median's 95 % confidence
interval (:func:`median_interval`) holds the budget. The garbage
collector is off during timed batches and run between them.

Timing uses ``time.perf_counter_ns`` (wall clock). On a shared or loaded
machine, ``BENCH_CLOCK=thread`` switches to ``time.thread_time_ns`` (this
thread's CPU time), which leaves out time spent descheduled; every loop here is
CPU-bound and single-threaded, so nothing else is lost.

Run alone with ``python -m benchmarks.overhead``; ``BENCH_QUICK=1`` cuts it to
a smoke test of about a second.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks import contenders, iqr, load_average, median_bounds, quick
from reqtelemetry import ASGIMiddleware, Config, Telemetry, WSGIMiddleware
from reqtelemetry.flask import init_app
from reqtelemetry.recorder import Recorder

#: ``BENCH_CLOCK=thread`` times with the thread's CPU clock instead of the wall
#: clock: on a shared or loaded machine that leaves out time the process spent
#: descheduled, and the spread drops by an order of magnitude.
CLOCKS = {"perf_counter": time.perf_counter_ns, "thread": time.thread_time_ns}


def clock_name() -> str:
    name = os.environ.get("BENCH_CLOCK", "perf_counter").strip().lower() or "perf_counter"
    if name not in CLOCKS:
        raise ValueError(f"BENCH_CLOCK must be one of {', '.join(CLOCKS)}, got {name!r}")
    return name


#: The peers in the table, as :func:`benchmarks.contenders.describe` names them.
PEERS = ("otel", "starlette-exporter", "prometheus-flask-exporter")

#: Budgets from the design: what an enabled middleware may add per request,
#: and what an opted-out one may add (it should only call the inner app).
ENABLED_BUDGET_US = 3.0
OPTED_OUT_BUDGET_US = 0.5

#: Row labels, in table order (the smoke test checks they are all present).
VARIANT_LABELS = (
    "(a) Starlette, bare",
    "(b) Starlette + ASGIMiddleware, enabled",
    "(c) Starlette + ASGIMiddleware, opted out",
    "(d) Starlette + OpenTelemetry ASGI (SDK)",
    "(e) Starlette + starlette-exporter",
    "(f) Flask, bare",
    "(g) Flask + init_app, enabled",
    "(h) Flask + init_app, opted out",
    "(i) Flask + WSGIMiddleware (any WSGI app), enabled",
    "(j) Flask + OpenTelemetry WSGI (SDK)",
    "(k) Flask + prometheus-flask-exporter",
    "(l) Recorder.record alone",
    "(m) the probe alone (fixed Python work)",
    "(n) Starlette + the probe, in an ASGI wrapper",
    "(o) Flask + the probe, around wsgi_app",
)

#: The calibration rows (m), (n), (o): the probe alone, in Starlette, in Flask.
PROBE_LABELS = VARIANT_LABELS[12:15]

#: Loop steps of :func:`probe`: in a tight loop, a little under the 3 µs budget.
PROBE_STEPS = 100


@dataclass(frozen=True)
class Settings:
    rounds: int
    #: Wall time one timed batch should take; sets the batch size per variant.
    sample_seconds: float
    #: Wall time spent warming each variant up before calibration.
    warmup_seconds: float


FULL = Settings(rounds=15, sample_seconds=0.12, warmup_seconds=0.3)
QUICK = Settings(rounds=3, sample_seconds=0.004, warmup_seconds=0.01)


# -- the apps ------------------------------------------------------------------


def _telemetry(*, opt_out: bool) -> Telemetry:
    """A Telemetry that ignores the caller's environment and command line.

    ``DO_NOT_TRACK=1`` in the shell that runs the benchmark must not silently
    turn the "enabled" rows into opted-out ones.
    """
    config = Config.resolve(environ={}, argv=[], app_name="bench", opt_out=opt_out)
    telemetry = Telemetry(config=config)
    if telemetry.enabled == opt_out:
        raise RuntimeError(f"could not build a Telemetry with opt_out={opt_out}")
    return telemetry


def starlette_app(middleware: list[Any] | None = None, more_routes: list[Any] | None = None) -> Any:
    """The benchmark's Starlette app; a peer may add middleware and routes after ours."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"item {request.path_params['item_id']}")

    return Starlette(
        routes=[Route("/items/{item_id}", item), *(more_routes or [])], middleware=middleware
    )


def flask_app() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return f"item {item_id}"

    return app


def asgi_scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/items/42",
        "raw_path": b"/items/42",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench/1.0")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def wsgi_environ() -> dict[str, Any]:
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(path="/items/42", headers={"User-Agent": "bench/1.0"})
    try:
        return builder.get_environ()
    finally:
        builder.close()


_REQUEST = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> dict[str, Any]:
    return _REQUEST


async def _send(message: Any) -> None:
    return None


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
    return _write


def _write(data: bytes) -> None:
    return None


# -- the timed loops -----------------------------------------------------------


async def _asgi_loop(app: Any, scope: dict[str, Any], n: int, clock: Callable[[], int]) -> int:
    copy, receive, send = scope.copy, _receive, _send
    start = clock()
    for _ in range(n):
        await app(copy(), receive, send)
    return clock() - start


def _wsgi_loop(app: Any, environ: dict[str, Any], n: int, clock: Callable[[], int]) -> int:
    copy, start_response = environ.copy, _start_response
    start = clock()
    for _ in range(n):
        response = app(copy(), start_response)
        for _chunk in response:
            pass
        close = getattr(response, "close", None)
        if close is not None:
            close()
    return clock() - start


def _record_loop(recorder: Recorder, n: int, clock: Callable[[], int]) -> int:
    record = recorder.record
    start = clock()
    for _ in range(n):
        record("GET", "/items/{item_id}", 200, 0.0000237, 0, 7)
    return clock() - start


def probe() -> int:
    """Fixed Python work for the calibration rows: a short loop of integer arithmetic.

    It allocates nothing that outlives it and reads no shared state, so what it
    costs inside a request, beyond what it costs alone, is the request's
    context: the caches and branch history the framework's own work leaves.
    """
    total = 0
    for step in range(PROBE_STEPS):
        total += step * 2
    return total


def _probe_loop(n: int, clock: Callable[[], int]) -> int:
    run_probe = probe
    start = clock()
    for _ in range(n):
        run_probe()
    return clock() - start


def probed_asgi(app: Any) -> Any:
    """``app`` behind an ASGI wrapper that runs the probe, then the app."""

    async def probed(scope: Any, receive: Any, send: Any) -> None:
        probe()
        await app(scope, receive, send)

    return probed


def probed_flask(app: Any) -> Any:
    """``app`` with its ``wsgi_app`` behind a plain function that runs the probe."""
    wsgi_app = app.wsgi_app

    def probed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        probe()
        return wsgi_app(environ, start_response)

    app.wsgi_app = probed
    return app


def _empty_loop(n: int, clock: Callable[[], int]) -> int:
    start = clock()
    for _ in range(n):
        pass
    return clock() - start


@dataclass
class Variant:
    label: str
    #: ``"asgi"``, ``"wsgi"``, ``"record"`` or ``"probe"``: how ``target`` is called.
    kind: str
    #: The app (for ``"record"``, the recorder; for ``"probe"``, None) being measured.
    target: Any
    #: The row this one is compared with, and its budget in µs (None: no budget).
    bare: Variant | None = None
    budget_us: float | None = None
    telemetry: Telemetry | None = None
    #: Why the row could not be measured (a peer not installed), or None.
    skipped: str | None = None
    #: After the run: what the instrument recorded, as proof it measured.
    recorded: Callable[[], str] | None = None
    n: int = 1
    #: Requests this row's app (or recorder) was given: timed, calibration and checks.
    served: int = 0
    #: After the run, for reqtelemetry's rows: what it recorded against what it served.
    accounting: Accounting | None = None
    samples_us: list[float] = field(default_factory=list)
    #: Per round: this row's µs/request minus the mean of the bare batches
    #: timed just before and just after it.
    paired_us: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Accounting:
    """What a reqtelemetry row recorded, against what it should have.

    Why: a middleware that fails on every request counts an internal error and
    lets the request through, so it looks fast and would get a verdict; these
    figures say whether the row measured what it claims to.
    """

    #: Requests in the row's aggregates (every key's count, the overflow's included).
    recorded: int
    #: Requests it should hold: every request served, or none when opted out.
    expected: int
    internal_errors: int

    @property
    def broken(self) -> bool:
        return self.recorded != self.expected or self.internal_errors > 0

    def cell(self) -> str:
        """The budget column's text for a broken row."""
        return (
            f"**BROKEN** (recorded {self.recorded:,} of {self.expected:,}, "
            f"{self.internal_errors:,} internal errors)"
        )


def account(variant: Variant) -> Accounting | None:
    """Count what a reqtelemetry row recorded; None for the bare apps and the peers.

    An enabled ``Telemetry`` must hold every request its app served and an
    opted-out one none; ``Recorder.record`` alone must hold every call.
    """
    if variant.telemetry is not None:
        telemetry = variant.telemetry
        recorded = sum(record["count"] for record in telemetry.snapshot())
        expected = variant.served if telemetry.enabled else 0
        return Accounting(recorded, expected, telemetry.internal_errors)
    if variant.kind == "record":
        recorded = sum(record["count"] for record in variant.target.snapshot())
        return Accounting(recorded, variant.served, 0)
    return None


class Bench:
    """Owns the event loop and the prebuilt inputs; times batches of one variant."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self.clock = clock
        self.loop = asyncio.new_event_loop()
        self.scope = asgi_scope()
        self.environ = wsgi_environ()

    def close(self) -> None:
        self.loop.close()

    def batch(self, variant: Variant, n: int) -> int:
        """Nanoseconds for ``n`` requests, collector off; garbage collected before."""
        kind, target = variant.kind, variant.target
        variant.served += n
        if kind == "asgi":
            coroutine = _asgi_loop(target, self.scope, n, self.clock)
            gc.collect()
            gc.disable()
            try:
                return self.loop.run_until_complete(coroutine)
            finally:
                gc.enable()
        gc.collect()
        gc.disable()
        try:
            if kind == "wsgi":
                return _wsgi_loop(target, self.environ, n, self.clock)
            if kind == "probe":
                return _probe_loop(n, self.clock)
            return _record_loop(target, n, self.clock)
        finally:
            gc.enable()

    def check(self, variant: Variant) -> tuple[int, bytes]:
        """One request with a recording send: the status and body the app answers."""
        variant.served += 1
        if variant.kind == "asgi":
            sent: list[dict[str, Any]] = []

            async def send(message: Any) -> None:
                sent.append(message)

            self.loop.run_until_complete(variant.target(asgi_scope(), _receive, send))
            status = next(m["status"] for m in sent if m["type"] == "http.response.start")
            body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
            return status, body
        statuses: list[str] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            statuses.append(status)
            return _write

        response = variant.target(wsgi_environ(), start_response)
        try:
            body = b"".join(response)
        finally:
            response.close()
        return int(statuses[0][:3]), body


def variants(cleanup: list[Callable[[], None]] | None = None) -> list[Variant]:
    """Every row, each app its own instance (hooks must not leak across rows).

    Teardown steps (the OpenTelemetry SDKs' background threads) are appended to
    ``cleanup``, to be run once the timing is over.
    """
    cleanup = cleanup if cleanup is not None else []
    asgi_on, asgi_off = _telemetry(opt_out=False), _telemetry(opt_out=True)
    wsgi_on, wsgi_off = _telemetry(opt_out=False), _telemetry(opt_out=True)
    wsgi_generic = _telemetry(opt_out=False)
    a, b, c, d, e, f, g, h, i, j, k, l, m, n, o = VARIANT_LABELS  # noqa: E741
    bare_asgi = Variant(a, "asgi", starlette_app())
    bare_wsgi = Variant(f, "wsgi", flask_app())
    # ``init_app`` instruments the app from inside when enabled, and leaves it
    # untouched opted out.
    flask_on, flask_off = flask_app(), flask_app()
    init_app(flask_on, wsgi_on)
    init_app(flask_off, wsgi_off)
    flask_generic = flask_app()
    flask_generic.wsgi_app = WSGIMiddleware(flask_generic.wsgi_app, telemetry=wsgi_generic)
    rows = [
        bare_asgi,
        Variant(
            b,
            "asgi",
            ASGIMiddleware(starlette_app(), telemetry=asgi_on),
            bare_asgi,
            ENABLED_BUDGET_US,
            asgi_on,
            recorded=lambda: _recorded(asgi_on),
        ),
        Variant(
            c,
            "asgi",
            ASGIMiddleware(starlette_app(), telemetry=asgi_off),
            bare_asgi,
            OPTED_OUT_BUDGET_US,
            asgi_off,
        ),
        _otel_asgi_variant(d, bare_asgi, cleanup),
        _starlette_exporter_variant(e, bare_asgi),
        bare_wsgi,
        Variant(
            g,
            "wsgi",
            flask_on,
            bare_wsgi,
            ENABLED_BUDGET_US,
            wsgi_on,
            recorded=lambda: _recorded(wsgi_on),
        ),
        Variant(
            h,
            "wsgi",
            flask_off,
            bare_wsgi,
            OPTED_OUT_BUDGET_US,
            wsgi_off,
        ),
        Variant(
            i,
            "wsgi",
            flask_generic,
            bare_wsgi,
            ENABLED_BUDGET_US,
            wsgi_generic,
            recorded=lambda: _recorded(wsgi_generic),
        ),
        _otel_wsgi_variant(j, bare_wsgi, cleanup),
        _flask_exporter_variant(k, bare_wsgi),
        Variant(l, "record", Recorder()),
        Variant(m, "probe", None),
        Variant(n, "asgi", probed_asgi(starlette_app()), bare_asgi),
        Variant(o, "wsgi", probed_flask(flask_app()), bare_wsgi),
    ]
    return rows


def _otel_asgi_variant(label: str, bare: Variant, cleanup: list[Callable[[], None]]) -> Variant:
    why = contenders.missing("otel-asgi")
    if why is not None:
        return Variant(label, "asgi", None, bare, skipped=why)
    sdk = contenders.otel_sdk()
    cleanup.append(sdk.shutdown)
    app = contenders.otel_asgi(starlette_app(), sdk)
    return Variant(label, "asgi", app, bare, recorded=sdk.summary)


def _otel_wsgi_variant(label: str, bare: Variant, cleanup: list[Callable[[], None]]) -> Variant:
    why = contenders.missing("otel-wsgi")
    if why is not None:
        return Variant(label, "wsgi", None, bare, skipped=why)
    sdk = contenders.otel_sdk()
    cleanup.append(sdk.shutdown)
    app = flask_app()
    app.wsgi_app = contenders.otel_wsgi(app.wsgi_app, sdk)  # type: ignore[method-assign]
    return Variant(label, "wsgi", app, bare, recorded=sdk.summary)


def _starlette_exporter_variant(label: str, bare: Variant) -> Variant:
    why = contenders.missing("starlette-exporter")
    if why is not None:
        return Variant(label, "asgi", None, bare, skipped=why)
    middleware, routes = contenders.starlette_exporter_parts()
    app = starlette_app(middleware=middleware, more_routes=routes)
    # The default registry is process-wide: report what this run added.
    before = contenders.starlette_exporter_count("/items/{item_id}")

    def recorded() -> str:
        added = contenders.starlette_exporter_count("/items/{item_id}") - before
        return f"{added} x GET /items/{{item_id}} 200 in `starlette_requests_total`"

    return Variant(label, "asgi", app, bare, recorded=recorded)


def _flask_exporter_variant(label: str, bare: Variant) -> Variant:
    why = contenders.missing("prometheus-flask-exporter")
    if why is not None:
        return Variant(label, "wsgi", None, bare, skipped=why)
    app = flask_app()
    exporter = contenders.prometheus_flask(app)

    def recorded() -> str:
        count = exporter.count("/items/<int:item_id>")
        return f"{count} x GET /items/<int:item_id> 200 in `flask_http_request_duration_seconds`"

    return Variant(label, "wsgi", app, bare, recorded=recorded)


def _recorded_line(variant: Variant) -> str:
    """The "recorded by" note of a row, with what it served where that is counted."""
    what = variant.recorded() if variant.recorded is not None else "nothing"
    line = f"- recorded by {variant.label[:3]}: {what}"
    accounting = variant.accounting
    if accounting is not None:
        line += (
            f" (requests served: {variant.served:,}; internal errors: "
            f"{accounting.internal_errors:,})"
        )
    return line


def _recorded(telemetry: Telemetry | None) -> str:
    """What an enabled Telemetry holds after the run: proof the path was measured."""
    records = telemetry.snapshot() if telemetry is not None else []
    return (
        "; ".join(f"{r['count']} x {r['method']} {r['route']} {r['status']}" for r in records)
        or "nothing"
    )


# -- running and reporting -----------------------------------------------------


def _groups(timed: list[Variant]) -> list[tuple[Variant, list[Variant]]]:
    """Each bare app with the rows compared with it; rows without a bare app alone."""
    groups: dict[int, tuple[Variant, list[Variant]]] = {}
    for variant in timed:
        if variant.bare is None:
            groups.setdefault(id(variant), (variant, []))
        else:
            groups.setdefault(id(variant.bare), (variant.bare, []))[1].append(variant)
    return list(groups.values())


def _time_round(bench: Bench, bare: Variant, contenders_: list[Variant]) -> None:
    """Time ``bare, c1, bare, c2, ..., bare``: each contender between two bare batches."""

    def per_request_us(variant: Variant) -> float:
        return bench.batch(variant, variant.n) / variant.n / 1000

    before = per_request_us(bare)
    bare.samples_us.append(before)
    for variant in contenders_:
        mine = per_request_us(variant)
        after = per_request_us(bare)
        variant.samples_us.append(mine)
        variant.paired_us.append(mine - (before + after) / 2)
        bare.samples_us.append(after)
        before = after


def _calibrate(bench: Bench, variant: Variant, settings: Settings) -> None:
    """Warm the variant up, then size its batch to about ``sample_seconds``."""
    n = 16
    deadline = time.perf_counter() + settings.warmup_seconds
    while True:
        per_call_ns = max(bench.batch(variant, n) / n, 1.0)
        if time.perf_counter() >= deadline:
            break
        n = min(n * 2, max(16, int(settings.warmup_seconds * 1e9 / per_call_ns / 4)))
    variant.n = max(16, int(settings.sample_seconds * 1e9 / per_call_ns))


def context_line(rows: list[Variant]) -> str | None:
    """What the framework's context adds to the probe's fixed work, or None if unmeasured.

    The probe's overhead inside each app, over its cost alone: 1.00x would mean
    the framework leaves a middleware's code running as fast as in a tight loop.
    A ratio for this probe's size only: in one trial, a 400-step probe (12.4 µs
    alone) added 14.0 µs to a Flask request, 1.13x, so the extra time does not
    grow in proportion to the work.
    """
    alone, in_starlette, in_flask = (
        next(row for row in rows if row.label == label) for label in PROBE_LABELS
    )
    if not (alone.samples_us and in_starlette.paired_us and in_flask.paired_us):
        return None
    alone_us = statistics.median(alone.samples_us)
    starlette_us = statistics.median(in_starlette.paired_us)
    flask_us = statistics.median(in_flask.paired_us)
    return (
        f"- context: the probe's fixed work (a {PROBE_STEPS}-step loop) takes {alone_us:.2f} µs "
        f"alone (m); run in front of the app, it adds {starlette_us:.2f} µs to a Starlette "
        f"request ({starlette_us / alone_us:.2f}x; its wrapper is also one more coroutine) (n) "
        f"and {flask_us:.2f} µs to a Flask request ({flask_us / alone_us:.2f}x) (o): the same "
        "code costs more inside a bigger framework's request, so a budget in µs buys a "
        "middleware less work in Flask than in Starlette"
    )


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


#: How sure the interval around a median overhead is.
CONFIDENCE = 0.95


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A distribution-free confidence interval for the median of ``values``.

    Why: a verdict is the median's, and a median 0.1 µs over a 3 µs budget
    says little unless the rounds pin it down that closely. Whatever the
    distribution of independent rounds, the true median lies between the k-th
    smallest and the k-th largest of n values with probability
    ``1 - 2 * P(Binomial(n, 1/2) < k)``; k is the largest that keeps that at
    least ``confidence``. Raises ``ValueError`` when n is too small for any k
    (fewer than 6 values at 95 %).
    """
    low, high, coverage = median_bounds(values, confidence)
    if coverage < confidence:
        raise ValueError(
            f"{len(values)} values cannot give a {confidence:.0%} interval of the median"
        )
    return low, high


def paired_ratio(bare_us: float, overhead_us: float) -> float:
    """The row's time over the bare app's, from the paired overhead.

    ``(bare + overhead) / bare``, with the bare app's median over all its
    batches and the median paired difference. Why not the row's median over
    the bare app's: the two medians come from batches timed at different
    moments, so on a drifting machine that ratio disagrees with the overhead
    column (one run: 1.551x beside +2.86 µs on an 8.7 µs bare app, which
    would mean +4.8 µs); built from the overhead, it says the same thing.
    """
    return (bare_us + overhead_us) / bare_us


def _table(variants: list[Variant]) -> str:
    rows = [
        "| variant | µs/request | IQR | overhead µs vs bare | overhead IQR | ratio vs bare "
        "| budget |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for variant in variants:
        if variant.skipped is not None:
            rows.append(f"| {variant.label} | — | — | — | — | — | skipped: {variant.skipped} |")
            continue
        samples = variant.samples_us
        median = statistics.median(samples)
        overhead = spread = ratio = None
        budget = "—"
        if variant.bare is not None:
            paired = variant.paired_us
            overhead, spread = statistics.median(paired), iqr(paired)
            ratio = paired_ratio(statistics.median(variant.bare.samples_us), overhead)
            if variant.budget_us is not None:
                verdict = "PASS" if overhead <= variant.budget_us else "MISS"
                budget = f"≤ {variant.budget_us:g} µs: **{verdict}**"
                try:
                    low, high = median_interval(paired)
                except ValueError:  # too few rounds (quick mode) for an interval
                    low, high = math.inf, -math.inf
                if low <= variant.budget_us <= high:
                    # The verdict is the median's; the rounds do not settle it.
                    budget += (
                        f" (unsettled: the median's {CONFIDENCE:.0%} interval, {low:.2f} to "
                        f"{high:.2f} µs, holds the budget; see the instruction counts)"
                    )
        if variant.accounting is not None and variant.accounting.broken:
            # No verdict: the row did not measure what it claims to.
            budget = variant.accounting.cell()
        ratio_text = "—" if ratio is None else f"{ratio:.3f}x"
        rows.append(
            f"| {variant.label} | {median:.2f} | {iqr(samples):.2f} | {_fmt(overhead)} "
            f"| {_fmt(spread)} | {ratio_text} | {budget} |"
        )
    return "\n".join(rows)


def run() -> str:
    """Measure every variant and return the markdown section."""
    settings = QUICK if quick() else FULL
    clock = clock_name()
    cleanup: list[Callable[[], None]] = []
    rows = variants(cleanup)
    timed = [variant for variant in rows if variant.skipped is None]
    bench = Bench(CLOCKS[clock])
    load_before = load_average()
    try:
        for variant in timed:
            if variant.kind in ("asgi", "wsgi") and bench.check(variant) != (200, b"item 42"):
                raise RuntimeError(f"{variant.label}: answered {bench.check(variant)!r}")
        for variant in timed:
            _calibrate(bench, variant, settings)
        loop_us = min(_empty_loop(100_000, CLOCKS[clock]) for _ in range(5)) / 100_000 / 1000
        started = time.perf_counter()
        for round_ in range(settings.rounds):
            for bare, contenders_ in _groups(timed):
                shift = round_ % max(len(contenders_), 1)
                _time_round(bench, bare, contenders_[shift:] + contenders_[:shift])
        timed_seconds = time.perf_counter() - started
        for variant in timed:
            variant.accounting = account(variant)
        recorded = [_recorded_line(variant) for variant in timed if variant.recorded is not None]
    finally:
        bench.close()
        for step in cleanup:
            step()

    batches = ", ".join(f"{variant.label[:3]} {variant.n}" for variant in timed)
    mode = "quick (BENCH_QUICK=1: rough, for smoke tests)" if quick() else "full"
    lines = [
        "## In-process overhead per request",
        "",
        "Apps called through their ASGI/WSGI interface in a tight loop: no sockets, "
        "no server, one event loop for all ASGI calls. Scope/environ are prebuilt and "
        "copied per call; `receive`/`send`/`start_response` are no-ops; WSGI responses "
        "are iterated and closed. Each row has its own app instance.",
        "",
        f"- mode: {mode}; {settings.rounds} interleaved rounds; in each, every "
        "contender's batch is timed between two batches of its bare app (bare, "
        "contender, bare, contender, ..., bare; contenders in a rotating order) "
        f"({timed_seconds:.1f} s timed)",
        f"- requests per batch: {batches}",
        f"- clock: `time.{CLOCKS[clock].__name__}` (`BENCH_CLOCK={clock}`); load average "
        f"(1/5/15 min) before: {load_before}, after: {load_average()}",
        "- µs/request: median over rounds (a bare app: over all its batches); overhead: "
        "median over rounds of the paired difference, the row's time minus the mean of "
        "the two bare batches timed just before and just after it; IQR: interquartile "
        "range of the column to its left (how far to trust a verdict); ratio vs bare: "
        "(bare app's µs/request + overhead) / bare app's µs/request, so it agrees with the "
        "overhead column (the row's own median over the bare app's would mix batches timed "
        "at different moments)",
        "- the garbage collector is **disabled during timed batches** (gc.disable/"
        "gc.enable) and run between them, to reduce noise; collections that "
        "allocations would trigger in production are not counted",
        f"- Python loop overhead included in every row: ~{loop_us:.3f} µs per iteration "
        "(matters only for (l) and (m))",
        f"- budgets: an enabled reqtelemetry middleware adds ≤ {ENABLED_BUDGET_US:g} µs, an "
        f"opted-out one ≤ {OPTED_OUT_BUDGET_US:g} µs; reported, never enforced; the peers "
        "have no budget, their rows are for comparison; a verdict is the median "
        f"overhead's, and reads *unsettled* where the median's {CONFIDENCE:.0%} confidence "
        "interval (from the rounds' order statistics, whatever their distribution) holds "
        "the budget; a reqtelemetry row whose aggregates do not hold every request it "
        "served (none, opted out), or that counted internal errors, reads BROKEN instead "
        "of a verdict: it did not measure what it claims to",
        "- peers: " + "; ".join(contenders.describe(name) for name in PEERS),
        f"- peer versions: {contenders.versions_line()}",
        *recorded,
        "",
        _table(rows),
    ]
    context = context_line(rows)
    if context is not None:
        lines += ["", context]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
