"""A bug inside telemetry never breaks a response: it is counted and logged once."""

from __future__ import annotations

import asyncio
import logging
import warnings

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from flask import Flask, Response

from reqtelemetry import ASGIMiddleware, WSGIMiddleware
from reqtelemetry.flask import init_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


class TelemetryBug(Exception):
    pass


@pytest.fixture
def broken(monkeypatch):
    """``broken(telemetry)``: make recording raise, as a bug in telemetry would."""

    class BrokenQueue:
        def append(self, request):
            raise TelemetryBug("bug inside telemetry")

        def __len__(self):
            return 0

    def breaker(telemetry):
        def record(*args, **kwargs):
            raise TelemetryBug("bug inside telemetry")

        monkeypatch.setattr(telemetry, "record", record)
        # The middlewares queue into the recorder directly: that breaks too.
        # (Before the middleware is built: the ASGI one reads it once.)
        monkeypatch.setattr(telemetry, "queue", BrokenQueue())
        return telemetry

    return breaker


def internal_error_logs(caplog):
    return [
        r for r in caplog.records if r.name == "reqtelemetry" and "internal error" in r.getMessage()
    ]


def test_asgi_responses_survive(telemetry, broken, caplog):
    broken(telemetry)
    app = FastAPI()

    @app.get("/items/{item_id}")
    def item(item_id: int):
        return {"id": item_id}

    @app.get("/stream")
    def stream():
        return StreamingResponse(iter([b"a", b"b", b"c"]))

    @app.get("/fail")
    def fail():
        raise RuntimeError("the app's own error")

    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    client = TestClient(app, raise_server_exceptions=False)
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        for i in range(5):
            response = client.get(f"/items/{i}")
            assert response.status_code == 200
            assert response.json() == {"id": i}
        assert client.get("/stream").content == b"abc"
        assert client.get("/nope").status_code == 404
        assert client.get("/fail").status_code == 500
    # The app's own error still propagates as the app's, not telemetry's.
    with pytest.raises(RuntimeError, match="the app's own error"):
        TestClient(app).get("/fail")
    assert telemetry.internal_errors == 9
    logs = internal_error_logs(caplog)
    assert len(logs) == 1
    assert isinstance(logs[0].exc_info[1], TelemetryBug)
    assert telemetry.snapshot() == []


def test_asgi_concurrent_requests_survive(telemetry, broken):
    broken(telemetry)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"fine"})

    async def run():
        transport = httpx.ASGITransport(app=ASGIMiddleware(app, telemetry=telemetry))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await asyncio.gather(*(client.get(f"/{i}") for i in range(50)))

    responses = asyncio.run(run())
    assert [r.content for r in responses] == [b"fine"] * 50
    assert telemetry.internal_errors == 50


def test_wsgi_flask_responses_survive(telemetry, broken, caplog):
    broken(telemetry)
    app = Flask(__name__)

    @app.route("/items/<int:item_id>")
    def item(item_id):
        return f"item {item_id}"

    @app.route("/stream")
    def stream():
        return Response(iter([b"x", b"y"]))

    init_app(app, telemetry)
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        for i in range(5):
            assert client.get(f"/items/{i}").data == f"item {i}".encode()
        assert client.get("/stream").data == b"xy"
        missing = client.get("/nope")
        assert missing.status_code == 404 and missing.data
        response = client.get("/stream")
        iterator = iter(response.response)
        next(iterator)
        response.close()  # closing early still must not raise
    assert telemetry.internal_errors == 8
    assert len(internal_error_logs(caplog)) == 1


def test_wsgi_plain_app_survives_route_failure(telemetry, monkeypatch):
    def explode(*args, **kwargs):
        raise TelemetryBug("anonymizer bug")

    monkeypatch.setattr(telemetry, "route_for_unrouted", explode)

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]

    middleware = WSGIMiddleware(app, telemetry=telemetry)
    iterable = middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, lambda *a: None)
    assert b"".join(iterable) == b"ok"
    getattr(iterable, "close", lambda: None)()  # as a server does
    assert telemetry.internal_errors == 1


def test_django_responses_survive(django_telemetry, broken, caplog):
    from django.test import AsyncClient, Client

    broken(django_telemetry)
    client = Client(raise_request_exception=False)
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        response = client.get("/api/items/3/")
        assert response.status_code == 200
        assert response.json() == {"pk": 3}
        assert client.get("/nope/").status_code == 404
        assert client.get("/boom/").status_code == 500
        streamed = client.get("/stream/")
        assert b"".join(streamed.streaming_content).startswith(b"line 0")

        async def run():
            async_client = AsyncClient()
            response = await async_client.get("/api/v2/async/5/")
            streamed = await async_client.get("/async-stream/")
            body = b"".join([chunk async for chunk in streamed.streaming_content])
            return response, body

        response, body = asyncio.run(run())
        assert response.json() == {"pk": 5, "async": True}
        assert body.startswith(b"async 0")
    assert django_telemetry.internal_errors == 6
    assert len(internal_error_logs(caplog)) == 1
