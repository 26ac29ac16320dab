"""Django's ASGIHandler, bare or behind a wrapper that passes the lifespan on
(OpenTelemetry's ASGI middleware, as its docs show for Django): it refuses every
lifespan with a ValueError before reading it, and the middleware answers it
without the warning a failed startup gets (f4cb475 said it at every start;
c8349bf silenced it for the bare handler only)."""

from __future__ import annotations

import logging

import pytest

from test_asgi_lifespan import lifespan_answers


@pytest.mark.parametrize("wrapper", ["bare", "otel", "plain"])
def test_a_wrapped_django_handler_is_answered_without_a_warning(wrapper, django_telemetry, caplog):
    from django.core.asgi import get_asgi_application

    from reqtelemetry import ASGIMiddleware

    django_app = get_asgi_application()
    inner = django_app
    if wrapper == "otel":
        # A peer pinned in the bench extra, not in the test environment.
        otel_asgi = pytest.importorskip("opentelemetry.instrumentation.asgi")
        inner = otel_asgi.OpenTelemetryMiddleware(django_app)
    elif wrapper == "plain":

        async def inner(scope, receive, send):  # a logging/sentry-style pass-through
            await django_app(scope, receive, send)

    app = ASGIMiddleware(inner, telemetry=django_telemetry)
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        sent = lifespan_answers(app)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not [r.getMessage() for r in caplog.records if "lifespan" in r.getMessage()]
