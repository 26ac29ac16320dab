"""An app that takes no lifespan still gets its final report at the server's shutdown."""

from __future__ import annotations

import asyncio
import logging

import pytest

from receiver import record_counts
from reqtelemetry import ASGIMiddleware


async def refuses_lifespan(scope, receive, send):
    """Like Django's ASGIHandler: anything but http is refused before it is read."""
    if scope["type"] != "http":
        raise ValueError(f"only http, not {scope['type']}")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def serve_one(app, path):
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "scheme": "http",
    }
    await app(scope, receive, send)


async def run_lifespan(app):
    incoming = asyncio.Queue()
    await incoming.put({"type": "lifespan.startup"})
    sent = []

    async def send(message):
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            for _ in range(20):
                await serve_one(app, "/items")
            await incoming.put({"type": "lifespan.shutdown"})

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, incoming.get, send)
    return sent


def test_an_app_that_takes_no_lifespan_sends_its_final_report_at_shutdown(make_sender, receiver):
    telemetry = make_sender()
    app = ASGIMiddleware(refuses_lifespan, telemetry=telemetry)
    sent = asyncio.run(run_lifespan(app))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    shutdown = [r for r in receiver.reports if r["kind"] == "shutdown"]
    assert len(shutdown) == 1
    assert sum(record_counts(shutdown).values()) == 20


def test_an_app_whose_startup_fails_still_fails():
    async def failing(scope, receive, send):
        await receive()
        raise RuntimeError("startup failed")

    app = ASGIMiddleware(failing, send_in_tests=False)

    async def receive():
        return {"type": "lifespan.startup"}

    async def send(message):
        pass

    with pytest.raises(RuntimeError):
        asyncio.run(app({"type": "lifespan"}, receive, send))


def test_under_uvicorn_an_app_that_takes_no_lifespan_reports_at_sigterm(receiver, tmp_path):
    """The real server: uvicorn serves such an app without lifespan, and
    after SIGTERM ends the process without running ``atexit``; the final
    report, with every request since the startup report, was never sent."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tests = Path(__file__).resolve().parent
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("REQTELEMETRY_", "PYTEST"))},
        "PYTHONPATH": os.pathsep.join([str(tests), *sys.path]),
        "REQTELEMETRY_ENDPOINT": receiver.url,
        "REQTELEMETRY_DEPLOYMENT_ID_PATH": str(tmp_path / "deployment-id"),
        "REQTELEMETRY_FLUSH_INTERVAL": "3600",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--port", str(port), "lifespan_refusing_app:app"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
            for _ in range(200):
                try:
                    client.get("/ready")
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            for n in range(30):
                assert client.get(f"/items/{n}").text == "ok"
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    served = sum(record_counts(receiver.reports).values())
    assert [r["kind"] for r in receiver.reports][-1:] == ["shutdown"], err.decode()
    assert served == 31  # the first request and thirty more


def lifespan_answers(app):
    """Start and shut ``app`` down through the lifespan, as a server does:
    the types of the messages it answered with."""
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = []

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message["type"])

    asyncio.run(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    return sent


def test_a_startup_that_fails_before_reading_is_not_swallowed_in_silence(caplog):
    """Since 4adbfa1 the middleware answers the lifespan of an app that
    raised before its first ``receive``: under ``uvicorn --lifespan on`` such
    a startup failure stopped the server with the error, and now it serves,
    with not one line said (uvicorn's own INFO or ERROR line is gone too)."""

    async def fails_before_reading(scope, receive, send):
        raise RuntimeError("DATABASE_URL is not set")

    async def returns_at_once(scope, receive, send):
        return None

    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        assert lifespan_answers(ASGIMiddleware(fails_before_reading, send_in_tests=False)) == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
    (said,) = [r.getMessage() for r in caplog.records if "lifespan" in r.getMessage()]
    assert "RuntimeError: DATABASE_URL is not set" in said

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        lifespan_answers(ASGIMiddleware(returns_at_once, send_in_tests=False))
    assert not [r for r in caplog.records if "lifespan" in r.getMessage()]
