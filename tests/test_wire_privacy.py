"""The privacy canary, checked on the wire.

A real app (Starlette behind uvicorn, on loopback) is hit with requests whose
paths, query strings, headers, cookies, bodies and forwarded addresses carry
canary values; the process environment carries some too. Then every body the
client POSTed to the collector — gunzipped, exactly as sent, the startup,
periodic and shutdown reports, and a report that failed and was sent again —
and every request header must be free of all of them.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import socket
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from receiver import UNAVAILABLE, ServerThread
from reqtelemetry import ASGIMiddleware

pytestmark = pytest.mark.e2e

EMAIL = "alice.canary@example.org"
ORDER = "4711"  # short: checked as a whole path segment or number, not as a substring
LONG_ID = "987654321987"
CANARIES = {
    "email": EMAIL,
    "long id": LONG_ID,
    "query value": "canary-query-value",
    "query key": "canary_query_key",
    "cookie": "canary-cookie-value",
    "bearer token": "canary-bearer-token",
    "user agent": "canary-user-agent",
    "referer": "canary-referer",
    "forwarded address": "203.0.113.77",
    "client address": "127.0.0.1",
    "request body": "canary-request-body",
    "response body": "canary-response-body",
    "password": "canary-password",
    "environment value": "canary-env-value-5521",
    "ci value": "canary-ci-value-8830",
    "unmatched path": "canary-scanner-path",
    "raw app path": "canary-raw-segment",
}


#: What the machine's name and the user's are made to read, wherever the real
#: ones are too short to look for ("vm", "root") without false alarms.
CANARY_HOSTNAME = "canary-host-3301"
CANARY_USER = "canary-user-7702"


def identifiers_of_this_machine() -> dict[str, str]:
    found = {"cwd": os.getcwd(), "home": os.path.expanduser("~")}
    hostname = socket.gethostname()
    found["hostname"] = hostname if len(hostname) >= 4 else CANARY_HOSTNAME
    try:
        user = getpass.getuser()
    except Exception:
        user = ""
    found["user"] = user if len(user) >= 5 else CANARY_USER
    return {k: v for k, v in found.items() if v and v != "/"}


def give_this_machine_long_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the machine's and user's names are too short to search the wire
    for, every way Python tells them reads a canary instead, so that the check
    still runs (on a machine called "vm", run as "root", it passed unrun)."""
    import platform

    if len(socket.gethostname()) < 4:
        monkeypatch.setattr(socket, "gethostname", lambda: CANARY_HOSTNAME)
        monkeypatch.setattr(platform, "node", lambda: CANARY_HOSTNAME)
        uname = os.uname()
        monkeypatch.setattr(
            os,
            "uname",
            lambda: os.uname_result(
                (uname.sysname, CANARY_HOSTNAME, uname.release, uname.version, uname.machine)
            ),
        )
        monkeypatch.setattr(platform, "_uname_cache", None)
        monkeypatch.setenv("HOSTNAME", CANARY_HOSTNAME)
    try:
        user = getpass.getuser()
    except Exception:
        user = ""
    if len(user) < 5:
        monkeypatch.setattr(getpass, "getuser", lambda: CANARY_USER)
        for name in ("USER", "LOGNAME", "USERNAME"):
            monkeypatch.setenv(name, CANARY_USER)


def build_app() -> Starlette:
    async def orders(request: Request) -> JSONResponse:
        return JSONResponse({"note": CANARIES["response body"]})

    async def login(request: Request) -> PlainTextResponse:
        await request.body()
        return PlainTextResponse(CANARIES["response body"])

    async def raw_files(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"file"})

    return Starlette(
        routes=[
            Route("/users/{user_id}/orders/{order_id}", orders),
            Route("/login", login, methods=["POST"]),
            Mount("/files", app=raw_files),
        ]
    )


async def route_less_app(scope: Any, receive: Any, send: Any) -> None:
    """An app without routing information: its paths must be anonymized."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def strings_and_numbers(value: Any, strings: list[str], numbers: list[float]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            strings.append(key)
            strings_and_numbers(item, strings, numbers)
    elif isinstance(value, list):
        for item in value:
            strings_and_numbers(item, strings, numbers)
    elif isinstance(value, str):
        strings.append(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        numbers.append(value)


def assert_no_canary(body: bytes, payload: Any, extra: dict[str, str], salt: str) -> None:
    text = body.decode("ascii")
    for what, canary in {**CANARIES, **extra}.items():
        assert canary not in text, f"the {what} ({canary!r}) was sent"
        unsalted = hashlib.sha256(canary.encode()).hexdigest()
        assert unsalted not in text, f"an unsalted hash of the {what} was sent"
    assert salt not in text, "the salt was sent"
    assert EMAIL.split("@")[0] not in text
    strings: list[str] = []
    numbers: list[float] = []
    strings_and_numbers(payload, strings, numbers)
    for value in strings:
        assert ORDER not in re.split(r"[/?&=#;,\s]", value), f"{ORDER} sent in {value!r}"
    assert int(ORDER) not in numbers


#: Unmatched requests (a key each, hashed) that make a report large enough
#: to be split after a 413 (at least twice :data:`~reqtelemetry.flusher.MIN_SPLIT_BYTES`).
SPLIT_REQUESTS = 60


def test_no_identifier_reaches_the_wire(make_sender, receiver, monkeypatch):
    give_this_machine_long_names(monkeypatch)
    monkeypatch.setenv("REQTELEMETRY_CANARY_SECRET", CANARIES["environment value"])
    monkeypatch.setenv("CI", CANARIES["ci value"])
    telemetry = make_sender(
        record_query=True,
        allowed_query_keys=["email"],
        allowed_path_segments=["download"],
        group_unmatched=False,  # even unmatched paths go out, anonymized
    )
    salt = telemetry.anonymizer._salt
    app = ASGIMiddleware(build_app(), telemetry=telemetry)
    raw = ASGIMiddleware(route_less_app, telemetry=telemetry)
    server = ServerThread(app, lifespan="on")  # its shutdown makes the final flush
    raw_server = ServerThread(raw)
    server.start()
    raw_server.start()
    headers = {
        "Cookie": f"session={CANARIES['cookie']}",
        "Authorization": f"Bearer {CANARIES['bearer token']}",
        "User-Agent": CANARIES["user agent"],
        "Referer": f"https://example.org/{CANARIES['referer']}",
        "X-Forwarded-For": CANARIES["forwarded address"],
        "X-Real-IP": CANARIES["forwarded address"],
    }
    query = (
        f"email={EMAIL}&token={CANARIES['query value']}"
        f"&{CANARIES['query key']}={CANARIES['query value']}"
    )
    try:
        with httpx.Client(trust_env=False, headers=headers) as client:
            for order in (ORDER, LONG_ID):
                response = client.get(f"{server.url}/users/{EMAIL}/orders/{order}?{query}")
                assert response.status_code == 200
            response = client.post(
                f"{server.url}/login",
                json={
                    "user": EMAIL,
                    "password": CANARIES["password"],
                    "note": CANARIES["request body"],
                },
            )
            assert response.status_code == 200
            assert client.get(f"{server.url}/files/{EMAIL}/{ORDER}").status_code == 200
            assert (
                client.get(f"{server.url}/{CANARIES['unmatched path']}/{EMAIL}?{query}").status_code
                == 404
            )
            for path in (
                f"/download/{EMAIL}/{ORDER}?{query}",
                f"/{CANARIES['raw app path']}/{LONG_ID}/{ORDER}",
            ):
                assert client.get(f"{raw_server.url}{path}").status_code == 200
            # One report fails and is sent again, merged into the next (a 503
            # stored nothing; a report that may be stored goes again as it was).
            receiver.respond_with(503, json=UNAVAILABLE, times=3)
            assert telemetry.flush() is False
            assert client.get(f"{server.url}/users/{EMAIL}/orders/{ORDER}").status_code == 200
            assert telemetry.flush() is True
            # A proxy's 504: the report may be stored, and goes again as it is, first.
            assert client.get(f"{server.url}/files/{EMAIL}/{ORDER}").status_code == 200
            receiver.respond_with(504, times=3)
            assert telemetry.flush() is False
            assert telemetry.flusher.unconfirmed is not None
            assert telemetry.flush() is True
            # A collector whose body cap is smaller (413): the same data goes
            # again in smaller parts, built anew from the batch.
            for n in range(SPLIT_REQUESTS):
                path = f"/{CANARIES['unmatched path']}/{EMAIL}/{n}?{query}"
                assert client.get(f"{server.url}{path}").status_code == 404
            receiver.respond_with(413, json={"error": "too_large"})
            assert telemetry.flush() is True
            assert client.get(f"{server.url}/users/{EMAIL}/orders/{LONG_ID}").status_code == 200
    finally:
        raw_server.stop()
        server.stop(graceful=True)

    sent = [
        r
        for r in receiver.requests
        if r.payload and r.payload.get("instance_id") == telemetry.instance_id
    ]
    kinds = [r.payload["kind"] for r in sent]
    assert kinds[0] == "startup" and kinds[-1] == "shutdown"
    assert any(r.status == 503 for r in sent) and any(r.status == 504 for r in sent)
    refused = [r for r in sent if r.status == 413]
    assert len(refused) == 1 and refused[0].payload["parts"] == 1
    sequence = refused[0].payload["sequence"]
    split = [r for r in sent if r.accepted and r.payload["sequence"] == sequence]
    assert len(split) >= 2  # sent again in parts
    routes = {record["route"] for r in sent for record in r.payload["batch"]["records"]}
    assert "/users/{user_id}/orders/{order_id}" in routes
    assert "/files/{path}" in routes
    assert any(route.startswith("/download/") for route in routes)  # allow-listed, then hashed
    total = sum(
        record["count"] for r in sent if r.accepted for record in r.payload["batch"]["records"]
    )
    assert total == 10 + SPLIT_REQUESTS

    extra = identifiers_of_this_machine()
    for request in sent:
        assert_no_canary(request.body, request.payload, extra, salt)
        allowed = {
            "host",
            "accept",
            "accept-encoding",
            "connection",
            "user-agent",
            "content-type",
            "content-encoding",
            "content-length",
            "reqtelemetry-wait",  # this attempt's timeout, in seconds (docs/protocol.md)
        }
        assert set(request.headers) <= allowed, set(request.headers) - allowed
        if "reqtelemetry-wait" in request.headers:
            assert re.fullmatch(r"[0-9]+\.[0-9]{3}", request.headers["reqtelemetry-wait"])
        header_text = json.dumps(request.headers)
        for what, canary in {**CANARIES, **extra}.items():
            if what == "client address":  # the Host header names the collector
                continue
            assert canary not in header_text, f"the {what} was sent in a header"


def test_no_identifier_reaches_the_opentelemetry_instruments(make_telemetry):
    """``otel=True`` sends the same measurements through the operator's own
    OpenTelemetry pipeline: the canary requests, the data points they make."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from reqtelemetry.otel import OTelInstruments

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = make_telemetry(
        record_query=True,
        allowed_query_keys=["email"],
        allowed_path_segments=["download"],
        group_unmatched=False,
    )
    # What otel=True makes, with a provider of this test's own (the global
    # one can be set once per process): the instruments, and every request
    # through Telemetry.record rather than straight into the recorder's queue.
    telemetry._otel = OTelInstruments(meter_provider=provider)
    telemetry.queue = None
    headers = {
        "Cookie": f"session={CANARIES['cookie']}",
        "Authorization": f"Bearer {CANARIES['bearer token']}",
        "User-Agent": CANARIES["user agent"],
        "X-Forwarded-For": CANARIES["forwarded address"],
        "X-Forwarded-Proto": CANARIES["query value"],
    }
    query = f"email={EMAIL}&{CANARIES['query key']}={CANARIES['query value']}"

    async def drive() -> None:
        for app in (build_app(), route_less_app):
            transport = httpx.ASGITransport(app=ASGIMiddleware(app, telemetry=telemetry))
            async with httpx.AsyncClient(
                transport=transport, base_url="http://testserver", headers=headers
            ) as client:
                for path in (
                    f"/users/{EMAIL}/orders/{ORDER}?{query}",
                    f"/files/{EMAIL}/{LONG_ID}",
                    f"/{CANARIES['unmatched path']}/{EMAIL}?{query}",
                    f"/download/{EMAIL}/{ORDER}?{query}",
                ):
                    await client.get(path)
                await client.post("/login", json={"password": CANARIES["password"]})

    import asyncio

    asyncio.run(drive())
    data = reader.get_metrics_data()
    assert data is not None
    text = data.to_json()
    assert "/users/{user_id}/orders/{order_id}" in text  # the requests were recorded
    points = json.loads(text)
    salt = telemetry.anonymizer._salt
    assert_no_canary(text.encode("ascii", "backslashreplace"), points, {}, salt)
    provider.shutdown()
