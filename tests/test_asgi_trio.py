"""The ASGI middleware on trio's event loop, under a real server (hypercorn's trio worker).

The middleware once reached for asyncio directly: under trio its shutdown flush
failed (no asyncio loop runs there) and the last report was lost, and a request
the server cancelled was recorded as a server error.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

trio = pytest.importorskip("trio")
hypercorn_config = pytest.importorskip("hypercorn.config")
hypercorn_trio = pytest.importorskip("hypercorn.trio")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from receiver import record_counts  # noqa: E402
from reqtelemetry import ASGIMiddleware, Telemetry  # noqa: E402
from reqtelemetry.telemetry import CLIENT_CLOSED_STATUS  # noqa: E402


def trio_app(telemetry: Telemetry, started: threading.Event) -> ASGIMiddleware:
    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"]})

    async def slow(request: Request) -> PlainTextResponse:
        started.set()
        await trio.sleep(30)
        return PlainTextResponse("too late")

    app = Starlette(routes=[Route("/items/{item_id}", item), Route("/slow", slow)])
    return ASGIMiddleware(app, telemetry=telemetry)


class TrioServer:
    """hypercorn serving ``app`` on trio in a thread of its own, stopped on demand."""

    def __init__(self, app: Any, graceful_timeout: float = 5.0) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.config = hypercorn_config.Config()
        self.config.bind = [f"127.0.0.1:{self.port}"]
        self.config.graceful_timeout = graceful_timeout
        self.config.accesslog = None
        self.app = app
        self._stop = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._serve,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self) -> None:
        async def stop_requested() -> None:
            while not self._stop.is_set():
                await trio.sleep(0.02)

        await hypercorn_trio.serve(self.app, self.config, shutdown_trigger=stop_requested)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("hypercorn did not start listening")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=20)
        assert not self._thread.is_alive(), "hypercorn did not stop"


@pytest.fixture
def served(make_sender: Any) -> Iterator[tuple[Telemetry, TrioServer, threading.Event]]:
    telemetry = make_sender()
    started = threading.Event()
    server = TrioServer(trio_app(telemetry, started), graceful_timeout=0.3)
    server.start()
    try:
        yield telemetry, server, started
    finally:
        server.stop()


def test_trio_server_shutdown_makes_the_final_flush(served, receiver):
    telemetry, server, _ = served
    with httpx.Client(base_url=server.url, trust_env=False) as client:
        for i in range(3):
            assert client.get(f"/items/{i}").status_code == 200
    server.stop()
    assert telemetry.flusher is None  # closed by the lifespan shutdown
    last = receiver.reports_from(telemetry.instance_id)[-1]
    assert last["kind"] == "shutdown"
    assert record_counts([last]) == {("GET", "/items/{item_id}", 200): 3}


def test_request_trio_cancelled_at_shutdown_is_recorded_as_client_closed(served, receiver):
    """The server stops with a request in flight and cancels it: the client
    got no answer, as when asyncio cancels one (499, not 500)."""
    telemetry, server, started = served
    outcome: list[BaseException | int] = []

    def wait_for_slow() -> None:
        try:
            outcome.append(httpx.get(f"{server.url}/slow", timeout=20, trust_env=False).status_code)
        except httpx.HTTPError as error:
            outcome.append(error)

    waiting = threading.Thread(target=wait_for_slow)
    waiting.start()
    assert started.wait(10)
    server.stop()
    waiting.join(20)
    assert outcome and not isinstance(outcome[0], int), outcome  # no answer came
    counts = record_counts(receiver.reports_from(telemetry.instance_id))
    assert counts == {("GET", "/slow", CLIENT_CLOSED_STATUS): 1}
