"""Pure ASGI middleware measuring each HTTP request.

Written in the manner of Starlette's own pure middlewares (no
``BaseHTTPMiddleware``, which costs throughput and breaks streaming): it wraps
``receive`` to count request body bytes and ``send`` to see the status, count
response body bytes and stop the clock when the last body chunk has been
handed to the server. Work the app does after that (background tasks) is not
counted. ``websocket`` and ``lifespan`` scopes pass through untouched.

Usable as ``app.add_middleware(ASGIMiddleware, telemetry=telemetry)`` in
FastAPI and Starlette, or around any ASGI application.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

from ..telemetry import CLIENT_CLOSED_STATUS, KNOWN_METHODS, OTHER_METHOD, Telemetry
from .starlette import RouteTemplates

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ASGIMiddleware:
    """Records method, route template, status, latency and sizes of HTTP requests."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry | None = None, **options: Any) -> None:
        if telemetry is None:
            telemetry = Telemetry(**options)
        elif options:
            raise TypeError("pass either telemetry= or keyword options, not both")
        self.app = app
        self.telemetry = telemetry
        self._active = telemetry.enabled
        self._routes = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._active or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        telemetry = self.telemetry
        path = scope["path"]
        if path in telemetry.exclude_paths or (
            telemetry.exclude_prefixes and path.startswith(telemetry.exclude_prefixes)
        ):
            await self.app(scope, receive, send)
            return

        entry_root_path = scope.get("root_path", "")
        status = 0
        request_bytes = 0
        response_bytes = 0
        end = 0.0
        disconnected = False

        async def receive_counting() -> Message:
            nonlocal request_bytes, disconnected
            message = await receive()
            kind = message["type"]
            if kind == "http.request":
                request_bytes += len(message.get("body", b""))
            elif kind == "http.disconnect":
                disconnected = True
            return message

        async def send_measuring(message: Message) -> None:
            nonlocal status, response_bytes, end, disconnected
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body":
                response_bytes += len(message.get("body", b""))
                if not message.get("more_body", False):
                    try:
                        await send(message)
                    except OSError:
                        disconnected = True
                        raise
                    end = perf_counter()
                    return
            elif kind == "http.response.pathsend":
                await send(message)
                end = perf_counter()
                return
            try:
                await send(message)
            except OSError:
                disconnected = True
                raise

        start = perf_counter()
        try:
            await self.app(scope, receive_counting, send_measuring)
        except asyncio.CancelledError:
            self._finish(scope, entry_root_path, CLIENT_CLOSED_STATUS, start, end,
                         request_bytes, response_bytes)
            raise
        except BaseException:
            self._finish(scope, entry_root_path,
                         CLIENT_CLOSED_STATUS if disconnected and end == 0.0 else 500,
                         start, end, request_bytes, response_bytes)
            raise
        if end == 0.0:
            # The app returned without completing a response: the client went
            # away (streaming stopped), or the server will answer 500 for it.
            status = CLIENT_CLOSED_STATUS if disconnected else (status or 500)
        self._finish(scope, entry_root_path, status, start, end, request_bytes, response_bytes)

    def _finish(self, scope: Scope, entry_root_path: str, status: int, start: float, end: float,
                request_bytes: int, response_bytes: int) -> None:
        """Resolve the route and record; a failure here is telemetry's, never the app's."""
        try:
            if end == 0.0:
                end = perf_counter()
            route = self._routes.template(scope, entry_root_path)
            if route is None:
                telemetry = self.telemetry
                # A Starlette router saw the request and matched nothing, or a
                # route-less app answered 404: both are "unmatched".
                matched = "router" not in scope and status != 404
                route = telemetry.route_for_unrouted(
                    scope["path"], scope.get("query_string", b"").decode("latin-1"), matched
                )
            method = scope["method"]
            if method not in KNOWN_METHODS:
                method = OTHER_METHOD
            self.telemetry.record(method, route, status, end - start, request_bytes,
                                  response_bytes)
        except Exception as error:  # never let telemetry break a response
            self.telemetry.internal_error(error)
