"""A bare ASGI app that, like Django's ``ASGIHandler``, refuses the lifespan
scope, wrapped by the generic middleware: served by uvicorn in
``test_asgi_lifespan`` (its settings come from ``REQTELEMETRY_*`` variables)."""

from __future__ import annotations

from typing import Any

from reqtelemetry import ASGIMiddleware


async def refuses_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise ValueError(f"only http, not {scope['type']}")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


app = ASGIMiddleware(refuses_lifespan, app_name="refuses-lifespan")
