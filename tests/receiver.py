"""A real HTTP collector stand-in for the test suite, and a socket that must stay silent.

:class:`Receiver` is a small Starlette app served by uvicorn in a background
thread on ``127.0.0.1``. It records every request it gets (path, headers, the
raw body, the gunzipped and decoded JSON payload, and whether that payload is
valid against the shipped JSON Schema) and answers as the test programs it:
a queue of responses (status, headers such as ``Retry-After``, a JSON body such
as ``{"next_interval": 120}``, a delay), then a default. It can be stopped and
started again on the same port, for the "collector down, then back" cases.

It speaks the collector protocol (``docs/protocol.md``): ``/v1/session``
grants a token (at ``bits`` of proof of work, low so tests stay fast), and a
report is an envelope whose stamp is verified with the real
:mod:`reqtelemetry.hashcash`. Like a real collector it stores a report before
answering, even when the client hangs up on a delayed answer, and answers a
second copy of a stored stamp with ``409``; so ``reports`` (the payloads
stored) shows exactly whether anything was lost or counted twice.

:class:`SilentEndpoint` is a plain listening socket whose accept queue must
stay empty: point an opted-out client at it and prove no connection is made.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import select
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reqtelemetry import hashcash
from reqtelemetry.schema_loader import load_payload_schema

#: The receiver's difficulty: real stamps, minted in a millisecond or two.
RECEIVER_BITS = 8
#: The collector's own ``503`` body: it stored nothing (a ``503`` without it may
#: be a proxy's, from behind a report that was stored).
UNAVAILABLE = {"error": "unavailable", "detail": "the collector cannot store reports right now"}

_VALIDATOR = jsonschema.Draft202012Validator(
    load_payload_schema(), format_checker=jsonschema.FormatChecker()
)


def schema_errors(payload: Any) -> list[str]:
    """Every way ``payload`` breaks the payload schema (empty when valid)."""
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {_shorten(error.message)}"
        for error in _VALIDATOR.iter_errors(payload)
    ]


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ServerThread:
    """An ASGI app served by uvicorn on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: Callable[..., Any], port: int = 0, lifespan: str = "off") -> None:
        self.app = app
        self.port = port
        self.lifespan = lifespan
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        # proto=IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted
        # sockets whose proto says TCP, and without it every answer waits ~40 ms
        # (Nagle against delayed ACKs).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))  # port 0 the first time, then the same again
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan=self.lifespan,
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])),
            name=f"test-server-{self.port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"the test server on port {self.port} did not start")
            time.sleep(0.005)

    def stop(self, timeout: float = 10.0, graceful: bool = False) -> None:
        """Stop; ``graceful`` waits for open connections and runs the lifespan shutdown."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        # Forced: do not wait for idle keep-alive connections (nor run the lifespan shutdown).
        server.force_exit = not graceful
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the test server on port {self.port} did not stop")
        self._server = self._thread = None


@dataclass
class Planned:
    """One programmed answer."""

    status: int = 200
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    client: tuple[str, int] | None
    received_at: float
    #: The query string, as sent.
    query: str = ""
    #: The body as sent, gunzipped when ``Content-Encoding: gzip`` (bytes).
    body: bytes | None = None
    #: The decoded JSON payload, or None when the body was not JSON.
    payload: Any = None
    #: The protocol envelope around a report (token, stamp, payload text).
    envelope: Any = None
    #: A second report with an already stored stamp (answered 409).
    replay: bool = False
    decode_error: str | None = None
    schema_errors: list[str] = field(default_factory=list)
    status: int | None = None
    #: The client hung up before a delayed answer was due.
    abandoned: bool = False
    answered: threading.Event = field(default_factory=threading.Event)

    @property
    def accepted(self) -> bool:
        """The collector stored it (2xx, not a replay), whether or not the
        client waited for the answer: a real collector stores before answering."""
        return not self.replay and self.status is not None and 200 <= self.status < 300


class Receiver:
    """A programmable collector on loopback; every public method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._requests: list[ReceivedRequest] = []
        self._plan: deque[Planned] = deque()
        self._default = Planned(json={})
        self._release = threading.Event()  # cuts every pending delay short
        self.bits = RECEIVER_BITS
        #: Like the collector's body cap: a report body over this many bytes (as
        #: sent, or gunzipped) is answered ``413 too_large`` (None: no cap).
        self.max_body_bytes: int | None = None
        self._stored_stamps: set[str] = set()
        #: Session requests, kept apart from reports: ``requests`` lists only
        #: report traffic, as the tests reason about reports.
        self.sessions: list[dict[str, Any]] = []
        self._session_plan: deque[Planned] = deque()
        app = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self._handle,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                )
            ]
        )
        self.server = ServerThread(app)

    # -- control ------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        """Start (again, on the same port)."""
        self._release.clear()
        self.server.start()

    def stop(self) -> None:
        """Stop listening: connections are then refused until :meth:`start`."""
        self._release.set()
        self.server.stop()

    def respond_with(
        self,
        status: int = 200,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        times: int = 1,
    ) -> None:
        """Queue the answer for the next ``times`` requests."""
        planned = Planned(
            status=status,
            json={} if json is None else json,
            headers=dict(headers or {}),
            delay=delay,
        )
        with self._lock:
            self._plan.extend([planned] * times)

    def respond_always(
        self,
        status: int = 200,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """The answer once the queue is empty (initially ``200 {}``)."""
        with self._lock:
            self._default = Planned(
                status=status,
                json={} if json is None else json,
                headers=dict(headers or {}),
                delay=delay,
            )

    def respond_to_session_with(
        self,
        status: int,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Queue an answer for the next ``times`` session requests (normally granted)."""
        planned = Planned(
            status=status, json={} if json is None else json, headers=dict(headers or {})
        )
        with self._lock:
            self._session_plan.extend([planned] * times)

    def reset(self) -> None:
        """Forget requests and programming; release pending delays; be running."""
        self._release.set()
        with self._lock:
            self._requests.clear()
            self._plan.clear()
            self._session_plan.clear()
            self.sessions.clear()
            self._stored_stamps.clear()
            self.bits = RECEIVER_BITS
            self.max_body_bytes = None
            self._default = Planned(json={})
        if not self.server.running:
            self.start()
        self._release.clear()

    # -- what arrived -------------------------------------------------------------

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received, in order of arrival."""
        with self._lock:
            return list(self._requests)

    @property
    def payloads(self) -> list[Any]:
        """Every decoded payload received, accepted or not."""
        return [r.payload for r in self.requests if r.payload is not None]

    @property
    def reports(self) -> list[dict[str, Any]]:
        """The decoded payloads the collector accepted (2xx, answer delivered)."""
        return [r.payload for r in self.requests if r.accepted and r.payload is not None]

    def reports_from(self, instance_id: str) -> list[dict[str, Any]]:
        return [p for p in self.reports if p.get("instance_id") == instance_id]

    def all_schema_errors(self) -> list[str]:
        return [
            f"request {i} ({r.path}): {message}"
            for i, r in enumerate(self.requests)
            for message in ([r.decode_error] if r.decode_error else []) + r.schema_errors
        ]

    def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(self)`` holds (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if predicate(self):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.05))

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        return self.wait_for(lambda r: len(r._requests) >= count, timeout)

    def wait_for_reports(self, count: int, timeout: float = 5.0, kind: str | None = None) -> bool:
        def enough(receiver: Receiver) -> bool:
            found = [p for p in receiver.reports if kind is None or p.get("kind") == kind]
            return len(found) >= count

        return self.wait_for(enough, timeout)

    # -- the app -----------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        if request.url.path.endswith("/v1/session"):
            return await self._session(request)
        raw = await request.body()
        client = (request.client.host, request.client.port) if request.client else None
        entry = ReceivedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            raw_body=raw,
            client=client,
            received_at=time.monotonic(),
        )
        _decode(entry, self.bits)
        with self._lock:
            cap = self.max_body_bytes
            if cap is not None and max(len(raw), len(entry.body or b"")) > cap:
                # The collector's first check, before any programmed answer.
                planned = Planned(status=413, json={"error": "too_large"})
            else:
                planned = self._plan.popleft() if self._plan else self._default
            stamp = entry.envelope.get("stamp") if isinstance(entry.envelope, dict) else None
            if 200 <= planned.status < 300 and stamp in self._stored_stamps:
                # What a real collector's unique index does with a second copy
                # (answered when the programmed answer would have been).
                entry.replay = True
                planned = Planned(status=409, json={"error": "replay"}, delay=planned.delay)
            elif 200 <= planned.status < 300 and stamp is not None:
                self._stored_stamps.add(stamp)
            entry.status = planned.status
            self._requests.append(entry)
            self._lock.notify_all()
        if planned.delay > 0:
            due = time.monotonic() + planned.delay
            while time.monotonic() < due and not self._release.is_set():
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.01)
            if await request.is_disconnected():
                entry.abandoned = True
        with self._lock:
            entry.answered.set()
            self._lock.notify_all()
        return JSONResponse(planned.json, status_code=planned.status, headers=planned.headers)

    async def _session(self, request: Request) -> Response:
        body = json.loads(await request.body())
        with self._lock:
            self.sessions.append(body)
            planned = self._session_plan.popleft() if self._session_plan else None
            self._lock.notify_all()
        if planned is not None:
            return JSONResponse(planned.json, status_code=planned.status, headers=planned.headers)
        token = f"test-token-{body['instance_id']}-{len(self.sessions)}"
        return JSONResponse({"token": token, "expires_at": time.time() + 3600, "bits": self.bits})


def _decode(entry: ReceivedRequest, bits: int) -> None:
    """Unwrap the protocol envelope and check the stamp, as the collector would."""
    body = entry.raw_body
    try:
        if entry.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        entry.body = body
        entry.envelope = json.loads(body)
        payload_text = entry.envelope["payload"]
        entry.payload = json.loads(payload_text)
        hashcash.verify(
            entry.envelope["stamp"],
            hashcash.payload_resource(entry.envelope["token"], payload_text.encode()),
            bits,
        )
    except Exception as error:
        entry.decode_error = f"{type(error).__name__}: {error}"
        return
    if entry.path.endswith("/v1/report"):
        entry.schema_errors = schema_errors(entry.payload)


# -- reading payloads ---------------------------------------------------------

Key = tuple[str, str, int]


def record_counts(reports: Iterable[dict[str, Any]]) -> Counter[Key]:
    """Requests per (method, route, status), summed over ``reports`` (the collector's view)."""
    counts: Counter[Key] = Counter()
    for report in reports:
        for record in report["batch"]["records"]:
            counts[(record["method"], record["route"], record["status"])] += record["count"]
    return counts


def counter_totals(reports: Iterable[dict[str, Any]]) -> Counter[str]:
    """App counters summed over ``reports``."""
    totals: Counter[str] = Counter()
    for report in reports:
        for name, value in report["metrics"]["counters"].items():
            totals[name] += value
    return totals


# -- a socket that must see no connection -----------------------------------------


class SilentEndpoint:
    """A listening socket on loopback; any connection to it is a failure."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.setblocking(False)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0

    def connections(self, wait: float = 0.2) -> int:
        """Connections attempted so far, waiting ``wait`` seconds for late ones."""
        deadline = time.monotonic() + wait
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self._sock], [], [], remaining)
            if not readable:
                return self.accepted
            try:
                connection, _ = self._sock.accept()
            except BlockingIOError:
                continue
            connection.close()
            self.accepted += 1

    def assert_no_connection(self, wait: float = 0.2) -> None:
        seen = self.connections(wait)
        assert seen == 0, f"{seen} connection(s) were made to an endpoint that must stay silent"

    def close(self) -> None:
        self._sock.close()


def settle(telemetry: Any, timeout: float = 10.0) -> None:
    """Wait until the flusher's startup report has been built and its send has ended.

    The instance is taken to serve (its first request noted), which is what
    sends the startup report. After this, programmed answers apply to the
    test's own flushes, and the startup report carries none of the traffic the
    test records next.
    """
    telemetry.note_first_request(None)
    flusher = telemetry.flusher
    deadline = time.monotonic() + timeout
    while flusher.sequence < 1:
        if time.monotonic() > deadline:
            raise AssertionError("the flusher never built its startup report")
        time.sleep(0.005)
    if not flusher._flush_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise AssertionError("the startup flush did not end")
    flusher._flush_lock.release()
