"""an upload over HTTP/2 (or HTTP/3) that declares no
Content-Length, under ASGI Django. Django's ASGI handler reads it whole before
the view; the record said 0 request bytes."""

from __future__ import annotations

import asyncio

import pytest


def serve_asgi_http2(path, method, chunks, http_version="2"):
    from django.core.asgi import get_asgi_application

    async def go():
        app = get_asgi_application()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": http_version,
            "method": method,
            "scheme": "https",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            # HTTP/2 forbids Transfer-Encoding, and a streamed body declares no length.
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 443),
        }
        body = list(chunks)
        sent = []

        async def receive():
            if body:
                return {"type": "http.request", "body": body.pop(0), "more_body": bool(body)}
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return sent

    return asyncio.run(go())


@pytest.mark.parametrize("http_version", ["2", "3"])
def test_an_upload_over_http2_without_a_length_counts_its_bytes(
    django_telemetry, records, http_version
):
    chunks = [b"z" * 70_000] * 3
    sent = serve_asgi_http2("/api/items/", "POST", chunks, http_version)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert sent[0]["status"] == 201 and body == b"created 210000 bytes"
    record = records(django_telemetry)["POST", "/api/items/", 201]
    assert record["request_bytes"] == 210_000


def test_a_get_over_http2_counts_no_request_bytes(django_telemetry, records):
    sent = serve_asgi_http2("/api/items/", "GET", [b""])
    assert sent[0]["status"] == 200
    assert records(django_telemetry)["GET", "/api/items/", 200]["request_bytes"] == 0
