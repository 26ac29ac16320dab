"""Django's ASGIHandler behind a wrapper that passes the lifespan on (OpenTelemetry's
ASGI middleware, as its docs show for Django): the warning c8349bf silenced for
the bare handler still fires at every start."""

from __future__ import annotations

import asyncio
import logging

import pytest


def _run_lifespan(app):
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message["type"])

    asyncio.run(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    return sent


@pytest.mark.parametrize("wrapper", ["otel", "plain"])
def test_a_wrapped_django_handler_is_answered_without_a_warning(wrapper, django_telemetry, caplog):
    from django.core.asgi import get_asgi_application

    from reqtelemetry import ASGIMiddleware

    django_app = get_asgi_application()
    if wrapper == "otel":
        # A peer pinned in the bench extra, not in the test environment.
        otel_asgi = pytest.importorskip("opentelemetry.instrumentation.asgi")
        inner = otel_asgi.OpenTelemetryMiddleware(django_app)
    else:

        async def inner(scope, receive, send):  # a logging/sentry-style pass-through
            await django_app(scope, receive, send)

    app = ASGIMiddleware(inner, telemetry=django_telemetry)
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        sent = _run_lifespan(app)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not [r.getMessage() for r in caplog.records if "lifespan" in r.getMessage()]
