"""A client that leaves a declared-length download partway, while the server
still holds the app's last chunk (its write buffer full), is a 499: the
chunk was handed to the server, never sent."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from reqtelemetry import ASGIMiddleware
from reqtelemetry.telemetry import CLIENT_CLOSED_STATUS
from test_asgi import bodiless_request_then_leaving, http_scope

HALF = b"h" * 100_000


async def halves():
    yield HALF
    yield HALF


async def download(request):
    return StreamingResponse(halves(), headers={"content-length": str(2 * len(HALF))})


def serve_to_a_slow_client_that_leaves(app, path: str) -> int:
    """One GET of ``path`` as uvicorn serves a client that reads slowly: after
    the first body chunk the write buffer is full, so the server's ``send`` of
    the next one waits; the client leaves meanwhile. uvicorn then wakes the
    app's ``receive`` (``http.disconnect``) first, and the waiting ``send``,
    which returns without writing. Returns the body bytes written."""
    gone = asyncio.Event()
    written = []
    receive = bodiless_request_then_leaving(gone)

    async def send(message):
        if gone.is_set():
            return
        if message["type"] == "http.response.body" and written[1:]:
            asyncio.get_running_loop().call_later(0.01, gone.set)  # leaves while this waits
            await gone.wait()
            return
        written.append(message)

    asyncio.run(app(http_scope("GET", path, [(b"host", b"testserver")]), receive, send))
    return sum(len(m.get("body") or b"") for m in written)


def test_a_client_that_left_while_the_server_held_the_last_chunk_is_499(make_telemetry, records):
    telemetry = make_telemetry()
    app = Starlette(routes=[Route("/download", download)])
    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    assert serve_to_a_slow_client_that_leaves(app, "/download") == len(HALF)  # half of it
    assert set(records(telemetry)) == {("GET", "/download", CLIENT_CLOSED_STATUS)}
