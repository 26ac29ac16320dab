"""A client that has every byte its ``Content-Length`` declared, and closes
before the app's closing empty message (curl, a script's one request): it had
the whole answer, and is recorded with its status, not as a 499."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import FileResponse, StreamingResponse
from starlette.routing import Route

from reqtelemetry import ASGIMiddleware
from reqtelemetry.telemetry import CLIENT_CLOSED_STATUS
from test_asgi import body_bytes, http_scope, serve_then_leave

FILE_CHUNK = 64 * 1024  # FileResponse's chunk_size


BODY = b"x" * 1000


async def body_then_cleanup():
    yield BODY
    await asyncio.sleep(0.05)  # closes an upstream response, a cursor: after the last byte


async def declared(request):
    return StreamingResponse(body_then_cleanup(), headers={"content-length": str(len(BODY))})


async def declared_twice(request):
    async def more():
        yield BODY
        await asyncio.sleep(0.05)
        yield BODY

    return StreamingResponse(more(), headers={"content-length": str(2 * len(BODY))})


class Relay(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        return await call_next(request)


def build(telemetry, tmp_path, relayed: bool):
    (tmp_path / "exact.bin").write_bytes(b"f" * FILE_CHUNK)

    async def exact(request):
        return FileResponse(tmp_path / "exact.bin")

    app = Starlette(
        routes=[
            Route("/exact", exact),
            Route("/declared", declared),
            Route("/declared-twice", declared_twice),
        ]
    )
    if relayed:
        app.add_middleware(Relay)
    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    return app


def test_a_file_of_exactly_its_chunks_had_by_a_client_that_closed_is_200(
    make_telemetry, records, tmp_path
):
    for relayed in (False, True):
        telemetry = make_telemetry()
        app = build(telemetry, tmp_path, relayed)
        assert body_bytes(serve_then_leave(app, "/exact", FILE_CHUNK)) == FILE_CHUNK  # all of it
        assert set(records(telemetry)) == {("GET", "/exact", 200)}, relayed
        assert records(telemetry)["GET", "/exact", 200]["response_bytes"] == FILE_CHUNK


def test_a_declared_stream_had_whole_before_its_end_is_200(make_telemetry, records, tmp_path):
    for relayed in (False, True):
        telemetry = make_telemetry()
        app = build(telemetry, tmp_path, relayed)
        assert body_bytes(serve_then_leave(app, "/declared", len(BODY))) == len(BODY)
        assert set(records(telemetry)) == {("GET", "/declared", 200)}, relayed


def test_a_declared_stream_left_halfway_is_still_499(make_telemetry, records, tmp_path):
    for relayed in (False, True):
        telemetry = make_telemetry()
        app = build(telemetry, tmp_path, relayed)
        assert body_bytes(serve_then_leave(app, "/declared-twice", len(BODY))) == len(BODY)
        assert set(records(telemetry)) == {("GET", "/declared-twice", CLIENT_CLOSED_STATUS)}


def test_zerocopysend_of_the_whole_length_then_leaving_keeps_the_status(
    make_telemetry, records, tmp_path
):
    path = tmp_path / "five.bin"
    path.write_bytes(b"12345")

    async def app(scope, receive, send):
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
        )
        with open(path, "rb") as file:
            await send(
                {
                    "type": "http.response.zerocopysend",
                    "file": file.fileno(),
                    "count": 5,
                    "more_body": True,
                }
            )
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def send(message):
        pass

    async def receive():
        return {"type": "http.disconnect"}

    telemetry = make_telemetry()
    asyncio.run(
        ASGIMiddleware(app, telemetry=telemetry)(
            http_scope("GET", "/f", [(b"host", b"t")]), receive, send
        )
    )
    assert [(key[2], r["count"]) for key, r in records(telemetry).items()] == [(200, 1)]
