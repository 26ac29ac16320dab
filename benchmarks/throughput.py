"""Throughput and tail latency under real servers: bare app, reqtelemetry, OpenTelemetry.

:mod:`benchmarks.overhead` times the middleware's Python work alone; this
module asks what a user sees: how many requests a server process answers per
second, and how slow the slowest are, with and without telemetry.

- **Servers**, each its own process on 127.0.0.1, all started before the first
  measurement and left idle while another is measured:

  - ASGI: uvicorn, one process, ``--loop uvloop --http httptools`` where those
    are installed (the ``bench`` extra pins them, as ``uvicorn[standard]``
    brings them), ``asyncio``/``h11`` otherwise; a Starlette app;
  - WSGI: gunicorn, one worker (``gthread``, 4 threads, so that keep-alive
    connections are kept), a Flask app.

  One worker each, so the comparison is per process: a multi-worker server
  multiplies all contenders alike.
- **Routes**, the same in every app: a hello world (``GET /hello``, 13 bytes of
  text) and a JSON route with a path parameter (``GET /items/42`` of
  ``/items/{item_id}``, a small object).
- **Contenders**: the bare app; the app with reqtelemetry's middleware
  (enabled, no endpoint: it records every request, and nothing is sent, so no
  flush competes: :mod:`benchmarks.flush_latency` measures that); the app with
  OpenTelemetry's ASGI/WSGI middleware and an SDK configured as in
  :mod:`benchmarks.contenders` (skipped when the ``bench`` extra is missing).
- **Load**: ``wrk`` where it is on ``PATH`` (one thread, keep-alive
  connections, closed loop), otherwise the bundled generator below: one
  process of asyncio clients on raw keep-alive sockets. Python is slower than
  the servers' own request handling, so with the bundled generator the ratios
  mean more than the rates. ``BENCH_LOADGEN=python`` forces the bundled one.
- **Cores**: with two or more CPUs, every server process is pinned to the
  last one and the load generator (with this process) to the others, so they
  do not trade places mid-run and a server is one core's worth of capacity, as
  a single Python process is anyway.
- **Timing**: every (server, route, contender) cell runs for a bounded time,
  in interleaved rounds (the contender order rotates each round), after a
  warm-up of each server and route. Per cell: requests/s and p99 latency as
  the load generator saw them, and the server's CPU time per request (user +
  system, its processes from ``psutil``), which a busy neighbour disturbs
  less than the rate; a contender's ratio is the median over rounds of its
  rate (or CPU per request) divided by the bare app's on the same server and
  route in the same round.
- **p99 is a closed loop's at saturation**: each connection sends its next
  request when the last is answered and times it from the send, so a server
  stall that holds back sending is not counted (coordinated omission), and at
  a fixed number of connections the p99 ratio mostly mirrors the rate's
  (Little's law). :mod:`benchmarks.flush_latency`'s open loop measures
  latency under stalls.
- **Budget** (design): under uvicorn, reqtelemetry's throughput within 5 % of
  the bare app's (ratio ≥ 0.95). Reported, never enforced. The verdict is the
  median ratio's, marked *unsettled* where the median's order-statistic
  interval (``benchmarks.median_bounds``; with 8 rounds the lowest to the
  highest round) holds 0.95.

After the run each server says what it recorded (a ``/_bench/stats`` route in
every app), and an instrumented server that did not record exactly the
requests the load generator completed (give or take those it left in flight)
gets **BROKEN** instead of a verdict: its figures measured something else.

Run alone with ``python -m benchmarks throughput``; ``BENCH_QUICK=1`` cuts it
to a smoke test of about 15 seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from benchmarks import (
    ROOT,
    answer_head,
    child_environment,
    contenders,
    load_average,
    median_bounds_text,
    paired_ratios,
    percentile,
    quick,
    unsettled_note,
)

CONTENDER_ENV = "BENCH_THROUGHPUT_CONTENDER"
STATS_PATH = "/_bench/stats"

#: The design's budget: reqtelemetry under uvicorn keeps ≥ 95 % of the bare rate.
THROUGHPUT_BUDGET_RATIO = 0.95

CONTENDERS = ("bare", "reqtelemetry", "otel")
CONTENDER_LABELS = {
    "bare": "bare app",
    "reqtelemetry": "reqtelemetry",
    "otel": "OpenTelemetry (SDK)",
}
#: The peer each contender needs, per server kind (None: nothing beyond dev).
PEER_FOR = {
    ("uvicorn", "otel"): "otel-asgi",
    ("gunicorn", "otel"): "otel-wsgi",
}
SERVERS = ("uvicorn", "gunicorn")
ROUTES = {"hello": "/hello", "json": "/items/42"}
ROUTE_LABELS = {"hello": "hello world", "json": "JSON `/items/{item_id}`"}
GUNICORN_THREADS = 4


@dataclass(frozen=True)
class Settings:
    rounds: int
    #: Load per cell, in whole seconds (wrk's unit).
    seconds: int
    #: Load per server and route before the first round (0: none).
    warmup_seconds: int
    connections: int


#: 8 rounds, not 10: 24 s less, for the ten-minute total of `make bench`
#: (9 min 47 s from a fresh clone with 10 on 2026-12-06); the verdict is the
#: median of the per-round ratios, which 8 rounds still give.
FULL = Settings(rounds=8, seconds=1, warmup_seconds=1, connections=16)
QUICK = Settings(rounds=1, seconds=1, warmup_seconds=0, connections=4)


# -- the apps (imported by the servers) --------------------------------------------------


def _item(item_id: int) -> dict[str, Any]:
    return {
        "id": item_id,
        "name": f"item {item_id}",
        "price": 12.5,
        "tags": ["red", "large", "sale"],
        "in_stock": True,
    }


def _contender() -> str:
    # Stripped: the instruction count pads every name to one width.
    contender = os.environ.get(CONTENDER_ENV, "bare").strip()
    if contender not in CONTENDERS:
        raise ValueError(f"{CONTENDER_ENV} must be one of {', '.join(CONTENDERS)}")
    return contender


def _reqtelemetry_count(telemetry: Any) -> int:
    return sum(record["count"] for record in telemetry.snapshot())


def asgi_app() -> Any:
    """The Starlette app for uvicorn (``--factory``), wrapped as the contender variable says."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from benchmarks.overhead import _telemetry

    contender = _contender()
    stats: dict[str, Any] = {"contender": contender}

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("Hello, World!")

    async def item(request: Request) -> JSONResponse:
        return JSONResponse(_item(request.path_params["item_id"]))

    async def bench_stats(request: Request) -> JSONResponse:
        return JSONResponse(
            {key: value() if callable(value) else value for key, value in stats.items()}
        )

    app: Any = Starlette(
        routes=[
            Route("/hello", hello),
            Route("/items/{item_id:int}", item),
            Route(STATS_PATH, bench_stats),
        ]
    )
    if contender == "reqtelemetry":
        from reqtelemetry import ASGIMiddleware

        telemetry = _telemetry(opt_out=False)
        stats["recorded"] = lambda: _reqtelemetry_count(telemetry)
        app = ASGIMiddleware(app, telemetry=telemetry)
    elif contender == "otel":
        sdk = contenders.otel_sdk()
        stats["recorded"] = sdk.duration_count
        app = contenders.otel_asgi(app, sdk)
    return app


def wsgi_app() -> Any:
    """The Flask app for gunicorn (``benchmarks.throughput:wsgi_app()``), wrapped likewise."""
    from flask import Flask

    from benchmarks.overhead import _telemetry

    contender = _contender()
    stats: dict[str, Any] = {"contender": contender}
    app = Flask("bench")

    @app.get("/hello")
    def hello() -> Any:
        return "Hello, World!", 200, {"Content-Type": "text/plain; charset=utf-8"}

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        return _item(item_id)

    @app.get(STATS_PATH)
    def bench_stats() -> Any:
        return {key: value() if callable(value) else value for key, value in stats.items()}

    if contender == "reqtelemetry":
        from reqtelemetry.flask import init_app

        telemetry = _telemetry(opt_out=False)
        stats["recorded"] = lambda: _reqtelemetry_count(telemetry)
        init_app(app, telemetry)
    elif contender == "otel":
        sdk = contenders.otel_sdk()
        stats["recorded"] = sdk.duration_count
        app.wsgi_app = contenders.otel_wsgi(app.wsgi_app, sdk)  # type: ignore[method-assign]
    return app


# -- the servers ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def uvicorn_choices() -> tuple[str, str]:
    """The event loop and HTTP parser uvicorn is told to use."""
    fast = all(importlib.util.find_spec(name) is not None for name in ("uvloop", "httptools"))
    return ("uvloop", "httptools") if fast else ("asyncio", "h11")


def server_command(kind: str, port: int) -> list[str]:
    if kind == "uvicorn":
        loop, http_impl = uvicorn_choices()
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "benchmarks.throughput:asgi_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            loop,
            "--http",
            http_impl,
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        "1",
        "--worker-class",
        "gthread",
        "--threads",
        str(GUNICORN_THREADS),
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "benchmarks.throughput:wsgi_app()",
    ]


def cpu_plan() -> tuple[set[int], set[int]] | None:
    """(server CPUs, load generator CPUs), or None where pinning is impossible or pointless."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])


class Server:
    """One server process serving one contender's app."""

    def __init__(self, kind: str, contender: str, cpus: set[int] | None = None) -> None:
        self.kind = kind
        self.contender = contender
        self.port = _free_port()
        env = child_environment(**{CONTENDER_ENV: contender})
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            server_command(kind, self.port),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.cpus = cpus
        self.pin()

    def _processes(self) -> list[Any]:
        import psutil

        try:
            parent = psutil.Process(self.proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.Error:
            return []

    def pin(self) -> None:
        """Pin the server and the workers it has forked so far to ``cpus``."""
        if self.cpus is None:
            return
        import psutil

        for process in self._processes():
            with contextlib.suppress(psutil.Error):
                process.cpu_affinity(sorted(self.cpus))

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's processes so far."""
        import psutil

        total = 0.0
        for process in self._processes():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} ({self.contender}) exited: {self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.get("/hello", timeout=2.0)[0] == 200:
                    self.pin()  # gunicorn's worker exists by now
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.kind} ({self.contender}) did not start: {self.log_tail()}"
                )
            time.sleep(0.1)

    def stats(self) -> dict[str, Any]:
        status, body = self.get(STATS_PATH)
        if status != 200:
            raise RuntimeError(f"{self.kind} ({self.contender}): {STATS_PATH} answered {status}")
        return json.loads(body)

    def log_tail(self, limit: int = 2000) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-limit:] or "(no output)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        self._log.close()


# -- load generators ------------------------------------------------------------------------

WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    errors: int
    #: The server's CPU time over the run, set by the caller.
    server_cpu_seconds: float = 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_seconds / self.requests * 1e6 if self.requests else float("nan")

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def loadgen_name() -> str:
    """``wrk`` when installed (and not overridden), else ``python`` (the bundled one)."""
    wanted = os.environ.get("BENCH_LOADGEN", "").strip().lower()
    if wanted == "python":
        return "python"
    if shutil.which("wrk") is not None:
        return "wrk"
    if wanted == "wrk":
        raise RuntimeError("BENCH_LOADGEN=wrk, but wrk is not on PATH")
    return "python"


class LoadGenerator:
    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.script = workdir / "report.lua"
        self.script.write_text(WRK_SCRIPT, encoding="utf-8")

    def describe(self) -> str:
        if self.name == "wrk":
            found = shutil.which("wrk") or "wrk"
            try:
                done = subprocess.run([found, "-v"], capture_output=True, text=True, timeout=10)
                version = (done.stdout or done.stderr).splitlines()[0].split(" Copyright")[0]
            except (OSError, IndexError, subprocess.SubprocessError):
                version = "wrk"
            return f"`{version}`, 1 thread, keep-alive, closed loop"
        return (
            "the bundled generator (no wrk on PATH, or BENCH_LOADGEN=python): one process of "
            "asyncio clients on raw keep-alive sockets, closed loop; it may saturate before "
            "the server does, so read the ratios rather than the rates"
        )

    def run(self, url: str, seconds: int, connections: int) -> LoadResult:
        if self.name == "wrk":
            command = [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "5s",
                "-s",
                str(self.script),
                url,
            ]
        else:
            command = [
                sys.executable,
                "-m",
                "benchmarks.throughput",
                "--loadgen",
                url,
                str(seconds),
                str(connections),
            ]
        env = child_environment()
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 60
        )
        line = next(
            (line for line in reversed(done.stdout.splitlines()) if line.startswith("{")), None
        )
        if done.returncode != 0 or line is None:
            raise RuntimeError(
                f"{self.name} failed ({done.returncode}): "
                f"{done.stdout[-1000:]} {done.stderr[-1000:]}"
            )
        answer = json.loads(line)
        return LoadResult(
            requests=answer["requests"],
            seconds=answer["duration_us"] / 1e6,
            p50_us=answer["p50_us"],
            p99_us=answer["p99_us"],
            errors=answer["errors"],
        )


async def _client(
    host: str, port: int, request: bytes, deadline: int, latencies: list[int], errors: list[int]
) -> None:
    """One keep-alive connection sending requests back to back until ``deadline``."""
    clock = time.perf_counter_ns
    reader = writer = None
    while clock() < deadline:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                errors[0] += 1
                await asyncio.sleep(0.01)
                continue
        assert reader is not None
        start = clock()
        try:
            writer.write(request)
            answer = answer_head(await reader.readuntil(b"\r\n\r\n"))
            if answer.length is not None:
                await reader.readexactly(answer.length)
            elif answer.chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            errors[0] += 1
            writer.close()
            writer = None
            continue
        latencies.append((clock() - start) // 1000)
        if answer.status != 200:
            errors[0] += 1
        if answer.closing:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def _load(url: str, seconds: float, connections: int) -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench-loadgen\r\n\r\n"
    ).encode("ascii")
    latencies: list[int] = []
    errors = [0]
    started = time.perf_counter_ns()
    deadline = started + int(seconds * 1e9)
    clients = [
        _client(host, port, request, deadline, latencies, errors) for _ in range(connections)
    ]
    await asyncio.wait_for(asyncio.gather(*clients), timeout=seconds + 30)
    elapsed = time.perf_counter_ns() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "duration_us": elapsed // 1000,
        "p50_us": percentile(latencies, 0.50),
        "p99_us": percentile(latencies, 0.99),
        "errors": errors[0],
    }


def _loadgen_main(url: str, seconds: str, connections: str) -> None:
    """The bundled load generator: prints one JSON line, as the wrk script does."""
    try:
        import uvloop  # the client is the bottleneck: give it the faster loop when there

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    print(json.dumps(run(_load(url, float(seconds), int(connections)))), flush=True)


# -- the run ------------------------------------------------------------------------------


@dataclass
class Cell:
    results: list[LoadResult] = field(default_factory=list)


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _median_ratio(mine: list[float], theirs: list[float]) -> tuple[float, float, float]:
    ratios = paired_ratios(mine, theirs)
    return statistics.median(ratios), min(ratios), max(ratios)


def rate_verdict(ratios: list[float]) -> str:
    """The budget's verdict from the median of per-round rate ratios, and how sure it is.

    Why the caveat: a median of 8 rounds is pinned down no closer than the
    lowest to the highest round, and the rounds of a run have spread from
    0.63x to 1.27x; a PASS or a MISS whose interval holds 0.95 is the median's
    word alone, as the overhead table says of its own.
    """
    passed = statistics.median(ratios) >= THROUGHPUT_BUDGET_RATIO
    verdict = f"≥ {THROUGHPUT_BUDGET_RATIO:.2f}x: **{'PASS' if passed else 'MISS'}**"
    return verdict + unsettled_note(ratios, THROUGHPUT_BUDGET_RATIO)


@dataclass(frozen=True)
class Recorded:
    """What an instrumented server recorded during the timed runs, against what it served."""

    count: int
    #: Responses the load generator received (any status).
    completed: int
    #: Requests it may have sent without receiving an answer (transport errors, and
    #: wrk's requests in flight when a run ends), which the server may still record.
    unanswered: int

    @property
    def expected(self) -> int:
        # + 1: the `/_bench/stats` request that read the count before the runs is
        # recorded once answered, so the count read after them includes it.
        return self.completed + 1

    @property
    def matches(self) -> bool:
        return self.expected <= self.count <= self.expected + self.unanswered

    def text(self) -> str:
        return f"recorded {self.count} of {self.expected}"


def table(
    cells: dict[tuple[str, str, str], Cell],
    skipped: dict[tuple[str, str], str],
    recorded: dict[tuple[str, str], Recorded] | None = None,
) -> str:
    recorded = recorded or {}
    rows = [
        "| server | route | contender | req/s | ratio vs bare (range) | server CPU µs/req "
        "| CPU/req vs bare (range) | p99 ms, closed loop | p99 vs bare, closed loop "
        "| errors | budget |",
        "|---|---|---|---:|---|---:|---|---:|---:|---:|---|",
    ]
    for kind in SERVERS:
        for route in ROUTES:
            bare = cells[(kind, route, "bare")].results
            for contender in CONTENDERS:
                label = (
                    f"| {SERVER_LABELS[kind]} | {ROUTE_LABELS[route]} "
                    f"| {CONTENDER_LABELS[contender]} |"
                )
                if (kind, contender) in skipped:
                    rows.append(
                        f"{label} — | — | — | — | — | — | — | skipped: {skipped[kind, contender]} |"
                    )
                    continue
                mine = cells[(kind, route, contender)].results
                rate = statistics.median(r.rate for r in mine)
                cpu = statistics.median(r.cpu_us_per_request for r in mine)
                p99 = statistics.median(r.p99_us for r in mine)
                errors = sum(r.errors for r in mine)
                if contender == "bare":
                    ratio_text = cpu_text = p99_text = "—"
                    verdict = "(baseline)"
                else:
                    rates = paired_ratios([r.rate for r in mine], [r.rate for r in bare])
                    ratio = statistics.median(rates)
                    cpu_ratio, cpu_low, cpu_high = _median_ratio(
                        [r.cpu_us_per_request for r in mine], [r.cpu_us_per_request for r in bare]
                    )
                    p99_ratio = _median_ratio([r.p99_us for r in mine], [r.p99_us for r in bare])[0]
                    shown = f"**{ratio:.3f}x**" if contender == "reqtelemetry" else f"{ratio:.3f}x"
                    ratio_text = f"{shown} ({min(rates):.2f} to {max(rates):.2f})"
                    cpu_text = f"{cpu_ratio:.3f}x ({cpu_low:.2f} to {cpu_high:.2f})"
                    p99_text = f"{p99_ratio:.2f}x"
                    verdict = "—"
                    if contender == "reqtelemetry" and kind == "uvicorn":
                        verdict = rate_verdict(rates)
                    check = recorded.get((kind, contender))
                    if check is not None and not check.matches:
                        verdict = f"**BROKEN** ({check.text()})"
                rows.append(
                    f"{label} {rate:.0f} | {ratio_text} | {cpu:.0f} | {cpu_text} | {_ms(p99)} "
                    f"| {p99_text} | {errors} | {verdict} |"
                )
    return "\n".join(rows)


SERVER_LABELS = {
    "uvicorn": "uvicorn + Starlette",
    "gunicorn": "gunicorn + Flask",
}


def _sharing_text(plan: tuple[set[int], set[int]] | None) -> str:
    """Whether the load generator competes with the servers for a core (see ``cpu_plan``)."""
    if plan is None:
        return "the load generator and the server share the machine's cores"
    return (
        "the load generator has its own core(s), the server its own: they do not compete "
        "for CPU (the machine's other work may)"
    )


def _pinning_text(plan: tuple[set[int], set[int]] | None) -> str:
    if plan is None:
        return "not pinned (fewer than two CPUs, or no sched_setaffinity)"
    servers, load = (",".join(str(cpu) for cpu in sorted(cpus)) for cpus in plan)
    return f"servers pinned to CPU {servers}, the load generator (and this process) to CPU {load}"


def run() -> str:
    """Measure every cell and return the markdown section."""
    settings = QUICK if quick() else FULL
    load_before = load_average()
    skipped: dict[tuple[str, str], str] = {}
    for (kind, contender), peer in PEER_FOR.items():
        why = contenders.missing(peer)
        if why is not None:
            skipped[kind, contender] = why
    cells = {
        (kind, route, contender): Cell()
        for kind in SERVERS
        for route in ROUTES
        for contender in CONTENDERS
    }
    recorded: list[str] = []
    checks: dict[tuple[str, str], Recorded] = {}
    plan = cpu_plan()
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-tput-")))
        loadgen = LoadGenerator(loadgen_name(), workdir)
        servers: dict[tuple[str, str], Server] = {}
        for kind in SERVERS:
            for contender in CONTENDERS:
                if (kind, contender) in skipped:
                    continue
                server = Server(kind, contender, plan[0] if plan else None)
                stack.callback(server.stop)
                servers[kind, contender] = server
        if plan is not None:
            # This process and the load generators it starts keep off the servers' core.
            own = os.sched_getaffinity(0)
            os.sched_setaffinity(0, plan[1])
            stack.callback(os.sched_setaffinity, 0, own)
        for server in servers.values():
            server.wait_ready()
            for path in ROUTES.values():
                status, _body = server.get(path)
                if status != 200:
                    raise RuntimeError(
                        f"{server.kind} ({server.contender}): {path} answered {status}"
                    )
        if settings.warmup_seconds:
            for server in servers.values():
                for path in ROUTES.values():
                    loadgen.run(server.url(path), settings.warmup_seconds, settings.connections)
        before = {key: server.stats().get("recorded", 0) for key, server in servers.items()}

        cell_index = 0
        for round_ in range(settings.rounds):
            for kind in SERVERS:
                for route, path in ROUTES.items():
                    present = [c for c in CONTENDERS if (kind, c) in servers]
                    shift = (round_ + cell_index) % len(present)
                    cell_index += 1
                    for contender in present[shift:] + present[:shift]:
                        server = servers[kind, contender]
                        cpu_before = server.cpu_seconds()
                        result = loadgen.run(
                            server.url(path), settings.seconds, settings.connections
                        )
                        result.server_cpu_seconds = server.cpu_seconds() - cpu_before
                        cells[(kind, route, contender)].results.append(result)

        for (kind, contender), server in servers.items():
            if contender == "bare":
                continue
            results = [r for route in ROUTES for r in cells[(kind, route, contender)].results]
            # `requests` already counts error responses (`errors` counts them too, with
            # the transport errors): the answers received are `requests` alone.
            in_flight = settings.connections * len(results) if loadgen.name == "wrk" else 0
            check = Recorded(
                count=server.stats().get("recorded", 0) - before[kind, contender],
                completed=sum(r.requests for r in results),
                unanswered=sum(r.errors for r in results) + in_flight,
            )
            checks[kind, contender] = check
            recorded.append(
                f"- recorded by {SERVER_LABELS[kind]} + {CONTENDER_LABELS[contender]}: "
                f"{check.count} requests during the timed runs (the load generator completed "
                f"{check.completed}, + 1 for the `{STATS_PATH}` request before them; up to "
                f"{check.unanswered} more may have been sent unanswered): "
                + ("as expected" if check.matches else f"**BROKEN** ({check.text()})")
            )
    elapsed = time.perf_counter() - started

    loop, http_impl = uvicorn_choices()
    mode = "quick (BENCH_QUICK=1: rough, for smoke tests)" if quick() else "full"
    lines = [
        "## Throughput and p99 under real servers",
        "",
        f"- mode: {mode}; {elapsed:.0f} s; load average (1/5/15 min) before: {load_before}, "
        f"after: {load_average()}; CPU count: {os.cpu_count()}",
        f"- servers, one process each on 127.0.0.1: uvicorn {_version('uvicorn')} "
        f"(`--loop {loop} --http {http_impl}`, one process) + Starlette "
        f"{_version('starlette')}; gunicorn {_version('gunicorn')} (1 worker, `gthread`, "
        f"{GUNICORN_THREADS} threads) + Flask {_version('flask')}",
        "- routes: hello world `GET /hello` (13 bytes of text); JSON `GET /items/42` of "
        "`/items/{item_id}` (a 5-field object)",
        "- contenders: the bare app; reqtelemetry's middleware (enabled, no endpoint: every "
        "request recorded, nothing sent); " + contenders.describe("otel"),
        f"- cores: {_pinning_text(plan)}",
        f"- load: {loadgen.describe()}; {settings.connections} connections, "
        f"{settings.seconds} s per cell, {settings.rounds} interleaved round(s) (contender "
        f"order rotating), after {settings.warmup_seconds} s of warm-up per server and route; "
        + _sharing_text(plan),
        "- req/s: median over rounds; ratio vs bare: median over rounds of the rate divided by "
        "the bare app's on the same server and route in the same round (lowest to highest "
        "round in parentheses); server CPU µs/req: median over rounds of the server processes' "
        "user + system time per completed request, and its ratio vs bare paired by round "
        "likewise (steadier than the rate, as the load generator's own limits do not move "
        f"it; information, not a budget: a ≥ {THROUGHPUT_BUDGET_RATIO:.2f}x rate on a "
        f"CPU-bound server means ≤ {1 / THROUGHPUT_BUDGET_RATIO:.3f}x CPU per request)",
        "- p99, closed loop at saturation: the median over rounds of each run's p99, timed by "
        "the load generator from the send of each request; each connection sends its next "
        "request only after the last answer, so stalls that hold back sending are not "
        "counted (coordinated omission), and with a fixed number of connections the p99 ratio "
        "mostly mirrors the rate's (Little's law); see the flushing table's open loop for "
        "latency under stalls",
        f"- budget: under uvicorn, reqtelemetry keeps ≥ {THROUGHPUT_BUDGET_RATIO:.2f}x the bare "
        "app's rate, judged on the median of the per-round ratios; *unsettled* where that "
        "median's order-statistic interval holds the budget ("
        + median_bounds_text(settings.rounds)
        + "); **BROKEN** instead of a verdict where the server did not record the requests "
        "it served (below); reported, never enforced",
        *recorded,
        "",
        table(cells, skipped, checks),
    ]
    return "\n".join(lines)


def _main(argv: list[str]) -> None:
    if argv[:1] == ["--loadgen"] and len(argv) == 4:
        _loadgen_main(*argv[1:])
    else:
        print(run())


if __name__ == "__main__":
    _main(sys.argv[1:])
