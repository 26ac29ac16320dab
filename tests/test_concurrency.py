"""Counts add up exactly under concurrent load, threaded (WSGI) and async (ASGI)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi import FastAPI
from flask import Flask

from reqtelemetry import ASGIMiddleware, WSGIMiddleware
from reqtelemetry.flask import init_app
from reqtelemetry.telemetry import UNMATCHED_ROUTE


def run_threads(count, target):
    barrier = threading.Barrier(count)
    errors = []

    def work(n):
        barrier.wait()
        try:
            target(n)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_threaded_flask_load(telemetry, records):
    app = Flask(__name__)

    @app.route("/items/<int:item_id>")
    def item(item_id):
        return "x" * (item_id % 7)

    @app.route("/echo", methods=["POST"])
    def echo():
        from flask import request

        return request.get_data()

    init_app(app, telemetry)
    threads, per_thread = 16, 100

    def load(n):
        client = app.test_client()
        for i in range(per_thread):
            if i % 4 == 0:
                response = client.post("/echo", data=b"b" * n)
                assert response.data == b"b" * n
            elif i % 4 == 1:
                assert client.get(f"/missing/{n}/{i}").data
            else:
                assert client.get(f"/items/{i}").data == b"x" * (i % 7)

    run_threads(threads, load)
    found = records(telemetry)
    quarter = threads * per_thread // 4
    assert {key: r["count"] for key, r in found.items()} == {
        ("POST", "/echo", 200): quarter,
        ("GET", UNMATCHED_ROUTE, 404): quarter,
        ("GET", "/items/<int:item_id>", 200): 2 * quarter,
    }
    echoed = found["POST", "/echo", 200]
    assert (
        echoed["request_bytes"]
        == echoed["response_bytes"]
        == (per_thread // 4) * sum(range(threads))
    )
    expected_item_bytes = threads * sum(i % 7 for i in range(per_thread) if i % 4 >= 2)
    assert found["GET", "/items/<int:item_id>", 200]["response_bytes"] == expected_item_bytes
    assert sum(len(r["latency"]["histogram"]) > 0 for r in found.values()) == 3


def test_direct_wsgi_calls_from_a_thread_pool(telemetry, counts):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"a", b"b"]

    middleware = WSGIMiddleware(app, telemetry=telemetry)
    path = "/same/path"

    def one_request(_):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": ""}
        iterable = middleware(environ, lambda status, headers, exc_info=None: None)
        try:
            return b"".join(iterable)
        finally:
            iterable.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        bodies = list(pool.map(one_request, range(4000)))
    assert bodies == [b"ab"] * 4000
    assert counts(telemetry) == {("GET", telemetry.anonymizer.path(path), 200): 4000}


def test_many_concurrent_async_requests(telemetry, records):
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        await asyncio.sleep(0)
        return {"id": item_id}

    @app.post("/upload")
    async def upload(payload: dict):
        await asyncio.sleep(0)
        return {"n": len(payload["data"])}

    @app.get("/sync/{n}")
    def sync_view(n: int):
        return n

    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    total = 500

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:

            async def one(i):
                if i % 5 == 0:
                    return await client.post("/upload", json={"data": "z" * i})
                if i % 5 == 1:
                    return await client.get(f"/nothing/{i}")
                if i % 5 == 2:
                    return await client.get(f"/sync/{i}")
                return await client.get(f"/items/{i}")

            return await asyncio.gather(*(one(i) for i in range(total)))

    responses = asyncio.run(run())
    found = records(telemetry)
    fifth = total // 5
    assert {key: r["count"] for key, r in found.items()} == {
        ("POST", "/upload", 200): fifth,
        ("GET", UNMATCHED_ROUTE, 404): fifth,
        ("GET", "/sync/{n}", 200): fifth,
        ("GET", "/items/{item_id}", 200): 2 * fifth,
    }
    upload_requests = [r for i, r in enumerate(responses) if i % 5 == 0]
    assert found["POST", "/upload", 200]["request_bytes"] == sum(
        len(r.request.content) for r in upload_requests
    )
    for key, method, route in [
        (("GET", "/items/{item_id}", 200), "GET", "/items/"),
        (("POST", "/upload", 200), "POST", "/upload"),
    ]:
        sent = sum(
            len(r.content)
            for r in responses
            if r.request.method == method and r.request.url.path.startswith(route)
        )
        assert found[key]["response_bytes"] == sent


def test_threaded_django_load(django_telemetry, counts):
    from django.test import Client

    threads, per_thread = 8, 50

    def load(n):
        client = Client()
        for i in range(per_thread):
            assert client.get(f"/api/items/{i}/").status_code == 200
            assert client.get(f"/nope/{n}/{i}/").status_code == 404

    run_threads(threads, load)
    assert counts(django_telemetry) == {
        ("GET", "/api/items/<int:pk>/", 200): threads * per_thread,
        ("GET", UNMATCHED_ROUTE, 404): threads * per_thread,
    }
