"""Django middleware, for WSGI and ASGI Django alike.

Add ``"reqtelemetry.django.TelemetryMiddleware"`` at the top of
``MIDDLEWARE`` and put the options in ``settings.REQTELEMETRY`` (a dict of
:class:`~reqtelemetry.config.Config` fields). The route template is Django's
own ``request.resolver_match.route``, which already joins the prefixes of
``include()``; requests that resolve to no URL pattern count as unmatched.
Streaming responses are measured to their last chunk by wrapping
``streaming_content`` (sync or async, as the response has it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from time import perf_counter
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from ..telemetry import CLIENT_CLOSED_STATUS, KNOWN_METHODS, OTHER_METHOD, Telemetry

_shared: Telemetry | None = None
_shared_lock = threading.Lock()


def get_telemetry() -> Telemetry:
    """The process-wide :class:`Telemetry` built from ``settings.REQTELEMETRY``.

    Django may build its middleware chain more than once (each test client
    does); all of them share this one instance, so counts are never split.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            from django.conf import settings

            options = dict(getattr(settings, "REQTELEMETRY", {}) or {})
            instance = options.pop("telemetry", None)
            _shared = instance if instance is not None else Telemetry(**options)
        return _shared


def reset_telemetry() -> None:
    """Forget the shared instance (for tests that change settings)."""
    global _shared
    with _shared_lock:
        _shared = None


def _never(path: str) -> bool:
    return False


class TelemetryMiddleware:
    """Measures each request; place it first so that it sees everything.

    Opted out, it raises Django's ``MiddlewareNotUsed`` when the chain is
    built, and Django leaves it out of the chain.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.telemetry = get_telemetry()
        if not self.telemetry.enabled:
            # Django's own way out: it leaves this middleware out of the chain,
            # so an opted-out deployment pays nothing per request.
            from django.core.exceptions import MiddlewareNotUsed

            raise MiddlewareNotUsed(f"reqtelemetry: {self.telemetry.config.opt_out_reason}")
        self._first_request = True
        excluded = self.telemetry.excluded
        self._is_excluded = excluded if excluded is not None else _never
        from django.conf import settings

        self.telemetry.note_framework("django")
        if getattr(settings, "DEBUG", False):
            self.telemetry.note_development("Django DEBUG")
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self.__acall__(request)
        if self._is_excluded(request.path_info):
            return self.get_response(request)
        start = perf_counter()
        try:
            response = self.get_response(request)
        except BaseException:
            self._record(request, 500, start, perf_counter(), 0)
            raise
        return self._observe(request, response, start)

    async def __acall__(self, request: Any) -> Any:
        if self._is_excluded(request.path_info):
            return await self.get_response(request)
        start = perf_counter()
        try:
            response = await self.get_response(request)
        except BaseException:
            self._record(request, 500, start, perf_counter(), 0)
            raise
        return self._observe(request, response, start)

    def _observe(self, request: Any, response: Any, start: float) -> Any:
        try:
            if response.streaming:
                if getattr(response, "is_async", False):
                    response.streaming_content = self._measure_async(
                        request, response.status_code, start, response.streaming_content
                    )
                else:
                    response.streaming_content = self._measure_sync(
                        request, response.status_code, start, response.streaming_content
                    )
            else:
                self._record(
                    request, response.status_code, start, perf_counter(), len(response.content)
                )
        except Exception as error:  # never let telemetry break a response
            self.telemetry.internal_error(error)
        return response

    def _measure_sync(
        self, request: Any, status: int, start: float, content: Iterator[bytes]
    ) -> Iterator[bytes]:
        sent = 0
        complete = False
        try:
            for chunk in content:
                sent += len(chunk)
                yield chunk
            complete = True
        except GeneratorExit:
            raise
        except BaseException:
            status = 500
            complete = True
            raise
        finally:
            self._record(
                request, status if complete else CLIENT_CLOSED_STATUS, start, perf_counter(), sent
            )

    async def _measure_async(
        self, request: Any, status: int, start: float, content: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        sent = 0
        complete = False
        try:
            async for chunk in content:
                sent += len(chunk)
                yield chunk
            complete = True
        except GeneratorExit:
            raise
        except BaseException:
            status = 500
            complete = True
            raise
        finally:
            self._record(
                request, status if complete else CLIENT_CLOSED_STATUS, start, perf_counter(), sent
            )

    def _record(
        self, request: Any, status: int, start: float, end: float, response_bytes: int
    ) -> None:
        telemetry = self.telemetry
        try:
            match = getattr(request, "resolver_match", None)
            if match is not None and match.route is not None:
                # A top-level ``re_path`` keeps its ``^`` (Django drops it from
                # nested ones): drop it here too, so all templates look alike.
                route = "/" + match.route.lstrip("^/")
            else:
                route = telemetry.route_for_unrouted(
                    request.path_info, request.META.get("QUERY_STRING", ""), False
                )
            method = request.method
            if method not in KNOWN_METHODS:
                method = OTHER_METHOD
            length = request.META.get("CONTENT_LENGTH")
            request_bytes = int(length) if length and str(length).isdigit() else 0
            if method == "HEAD":  # no body goes out in answer to HEAD
                response_bytes = 0
            telemetry.record(
                method, route, status, end - start, request_bytes, response_bytes, request.scheme
            )
            if self._first_request:
                self._first_request = False
                telemetry.note_first_request(request.META.get("HTTP_HOST"))
        except Exception as error:  # never let telemetry break a response
            telemetry.internal_error(error)


class LifespanFlush:
    """Django's ASGI application, answering ASGI lifespan events with a final flush.

    Why: Django ignores lifespan, so the last report of an ASGI Django app
    waits for ``atexit``, and uvicorn ends the process after SIGTERM (what
    ``docker stop``, Kubernetes and systemd send) in a way that skips
    ``atexit``: the last interval's requests were lost. Wrap the application
    in ``asgi.py``: ``application = LifespanFlush(get_asgi_application())``.
    The flush runs in a worker thread and is bounded by ``shutdown_timeout``.
    """

    def __init__(self, application: Callable[..., Any]) -> None:
        self.application = application

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.application(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    loop = asyncio.get_running_loop()
                    await loop.run_in_executor(None, get_telemetry().close)
                except Exception as error:  # never let telemetry break shutdown
                    get_telemetry().internal_error(error)
                await send({"type": "lifespan.shutdown.complete"})
                return
