"""Pure ASGI middleware measuring each HTTP request.

Written in the manner of Starlette's own pure middlewares (no
``BaseHTTPMiddleware``, which costs throughput and breaks streaming): it wraps
``receive`` to count request body bytes and ``send`` to see the status, count
response body bytes and stop the clock when the app hands the server the last
body chunk. Work the app does after that (background tasks) is not counted.
``websocket`` and ``lifespan`` scopes pass through untouched.

Usable as ``app.add_middleware(ASGIMiddleware, telemetry=telemetry)`` in
FastAPI and Starlette, or around any ASGI application.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from time import perf_counter
from types import CodeType
from typing import Any, overload

import anyio
import anyio.to_thread

from ..config import Options, Unpack
from ..recorder import PENDING_LIMIT
from ..route_hook import UNKNOWN_ROUTE, told_route
from ..telemetry import (
    CLIENT_CLOSED_STATUS,
    KNOWN_METHODS,
    MEASURED_KEY,
    OTHER_METHOD,
    ExcludedMark,
    Mark,
    Telemetry,
    marked_by,
)
from ..traits import framework_of_app
from .starlette import (
    UNTEMPLATED,
    RouteTemplates,
    route_path,
    routes_of_unrouted_app,
)

logger = logging.getLogger("reqtelemetry")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: What :class:`ASGIMiddleware` wraps: any ASGI app, whoever typed it. Not
#: :data:`ASGIApp`: Quart, Litestar, Falcon and Django (django-stubs) type
#: their apps' ``scope`` as a ``dict`` or a union of ``TypedDict``s, which a
#: ``MutableMapping`` parameter is not, so a checker refused every app but
#: Starlette's and FastAPI's. A WSGI app (which answers no awaitable) is
#: still refused.
AnyASGIApp = Callable[..., Awaitable[Any]]


#: Packages whose app object names the framework (anything else: detection by imports).
ASGI_FRAMEWORKS = frozenset(
    {"fastapi", "starlette", "django", "quart", "litestar", "sanic", "falcon"}
)
#: Each known method to itself, anything else to ``_OTHER``: one lookup per request,
#: and the recorder's keys then share their method strings.
_METHODS = {method: method for method in KNOWN_METHODS}
#: How many exceptions (along ``__context__``, and in exception groups) a
#: failure of the server's ``send`` is looked for among.
_CONTEXT_DEPTH = 16


class ASGIMiddleware:
    """Records method, route template, status, latency and sizes of HTTP requests.

    An opted-out instance becomes a plain pass-through (its class is switched
    to :class:`_PassThrough`), so it costs one extra ``await`` and nothing else.
    """

    @overload
    def __init__(
        self, app: AnyASGIApp, /, telemetry: Telemetry | None = None, **options: Unpack[Options]
    ) -> None: ...

    @overload
    def __init__(
        self, *, app: AnyASGIApp, telemetry: Telemetry | None = None, **options: Unpack[Options]
    ) -> None: ...

    def __init__(
        self, app: AnyASGIApp, telemetry: Telemetry | None = None, **options: Unpack[Options]
    ) -> None:
        # Typed as taking the app first and alone by position (the first
        # form): Starlette's add_middleware is typed for a middleware whose
        # ``app`` cannot clash with its keyword options, and it was a type
        # error in the README's first snippet. Older Starlettes (0.37) pass
        # ``app=`` by name (the second form), which still works.
        if telemetry is None:
            telemetry = Telemetry(**options)
        elif options:
            raise TypeError("pass either telemetry= or keyword options, not both")
        self.app = as_asgi3(app)
        self.telemetry = telemetry
        if not telemetry.enabled:
            self.__class__ = _PassThrough
            return
        self._record = telemetry.record
        self._queue = telemetry.queue
        self._aggregate = telemetry.recorder.aggregate_pending
        self._templates = RouteTemplates(app)
        self._template = self._templates.template
        self._excluded = telemetry.excluded
        self._excluded_mark = ExcludedMark(telemetry)
        self._first_request = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if self._excluded is not None and self._excluded(
            route_path(scope["path"], scope.get("root_path", ""))
        ):
            # Compared as the app routes it, without the prefix a proxy or a
            # mount put in front (what WSGI's PATH_INFO holds): ``/healthz`` is
            # excluded under ``--root-path /api`` too. Only apps that exclude
            # anything pay for taking the prefix off.
            await _pass_excluded(self.app, scope, receive, send, self._excluded_mark)
            return
        mark = scope.get(MEASURED_KEY)
        if mark is not None and marked_by(mark, self.telemetry):
            # A middleware of this telemetry around this one measures the
            # request already (this app is mounted in one it measures, or the
            # middleware is both added and wrapped around the app): once is enough.
            await self.app(scope, receive, send)
            return
        if self._first_request:
            self._on_first_request(scope)

        entry_root_path = scope.get("root_path", "")
        exchange = _Exchange(receive, send, self.telemetry)
        scope[MEASURED_KEY] = exchange
        start = perf_counter()
        status = 500
        try:
            await self.app(scope, exchange.receive, exchange.send)
            if exchange.end != 0.0:
                status = exchange.status
            elif exchange.disconnected:
                # The app returned without completing a response because the
                # client went away (streaming stopped). Otherwise the server
                # answers 500 for it (or, with the status line already out,
                # cuts the response short).
                status = _client_left(exchange, scope)
        except asyncio.CancelledError:
            # Cancelled after the last byte (in a background task, say): the
            # client had its whole response, and that is what it is recorded as.
            status = exchange.status if exchange.end != 0.0 else _client_left(exchange, scope)
            raise
        except BaseException as error:
            if _failed_in_send(error, send):
                exchange.send_failed()
            elif exchange.disconnected and _left_during_upload(error):
                # ``http.disconnect`` came while the app read its body (no send
                # failed: that is a stream cut short, above): whatever the app
                # answered then (Starlette's 500 for the disconnect, from inside
                # when the middleware is wrapped around the app) the server
                # dropped: none of it is counted, and the request is the 499
                # below. Added with ``add_middleware``, it was one already.
                exchange.response_bytes = 0
                exchange.end = 0.0
            if exchange.end != 0.0:
                # The response was complete (an exception handler's answer, or a
                # background task that failed after it): the client got that status.
                status = exchange.status
            elif exchange.disconnected or _is_cancellation(error):
                # Cancelled by a server on another event loop than asyncio's
                # (trio's ``Cancelled``): as above, the client had no answer.
                status = _client_left(exchange, scope)
            elif _answered_by_body_limit(error, bool(exchange.status)):
                status = 413
            raise
        finally:
            # The mark goes: the scope held the exchange, which holds the
            # server's send, whose owner (uvicorn's cycle) holds the scope:
            # left, each request was a reference cycle for the collector.
            if scope.get(MEASURED_KEY) is exchange:
                del scope[MEASURED_KEY]
            # Every way out is recorded here, once. A failure here is
            # telemetry's, never the app's: it is counted, and whatever the app
            # raised goes on as it was.
            try:
                if not exchange.taken_over:  # else Django's middleware, inside, measured it
                    end = exchange.end or perf_counter()
                    if type(status) is not int:  # hypercorn passes on a status of "201"
                        status = _status_code(status)
                    route = self._template(scope, entry_root_path, status)
                    if route is None or route is UNTEMPLATED:
                        route = self._unrouted(scope, status, route is UNTEMPLATED)
                    method = _METHODS.get(scope["method"], OTHER_METHOD)
                    # No body goes out in answer to HEAD, whatever the app hands the server.
                    response_bytes = exchange.response_bytes if method != "HEAD" else 0
                    request = (
                        method,
                        route,
                        status,
                        end - start,
                        exchange.request_bytes,
                        response_bytes,
                    )
                    queue = self._queue
                    if queue is not None:  # what Recorder.record does, without its call
                        queue.append(request)
                        if len(queue) >= PENDING_LIMIT:
                            self._aggregate()
                    else:
                        self._record(*request, scope.get("scheme", "http"))
            except Exception as error:
                self.telemetry.internal_error(error)

    def _on_first_request(self, scope: Scope) -> None:
        """Once: tell the traits which framework this is and whether it looks like a dev run."""
        self._first_request = False
        try:
            if "router" in scope:
                # A router already took this request: the app is mounted in
                # another one, whose mount is in scope["route"] before this app
                # routes. Only then is the dearer method worth its cost.
                self._template = self._templates.nested_template
            elif self._templates.has_root_mount() or (
                self._templates.own_routes() is None and "starlette.routing" in sys.modules
            ):
                # Also where a Starlette router runs but cannot be reached
                # (behind a wrapper with neither ``.app`` nor ``.router``, as
                # Connexion's apps are): a root mount it left in scope["route"]
                # keyed every request it did not record ``/{path}``, each of
                # the app's endpoints, 404s and 500s alike. An app without
                # Starlette (Quart, Falcon) keeps the plain method.
                self._template = self._templates.root_mounted_template
            # Starlette sets scope["app"] on its way in; wrapped from outside,
            # the middleware sees the request first and only knows its app.
            app = scope.get("app", self.app)
            package = framework_of_app(app, ASGI_FRAMEWORKS)
            if package is not None:
                self.telemetry.note_framework(package)
            _warn_of_middleware_outside(app)
            for name, value in scope.get("headers", ()):
                if name == b"host":
                    self.telemetry.note_first_request(value.decode("latin-1"))
                    break
        except Exception as error:  # never let telemetry break a response
            self.telemetry.internal_error(error)

    def _unrouted(self, scope: Scope, status: int, untemplated: bool = False) -> str:
        told = told_route(scope, status)
        if told is not UNKNOWN_ROUTE:
            # An app without routes we read told its template (note_route),
            # or left it where we know to look (Litestar's router).
            if told is not None:
                return told  # type: ignore[no-any-return]
            return self.telemetry.route_for_unrouted(scope["path"], "", False)
        # A Starlette router saw the request and matched nothing, or a
        # route-less app answered 404: both are "unmatched".
        matched = False
        route = scope.get("route")
        if untemplated:
            # Matched again, the route that took the request has no template
            # (a Host in front of an app without routes, a custom route, which
            # a Starlette before 1.7 does not record in scope["route"]): as below.
            matched = status != 404
        elif route is not None and not hasattr(route, "path_format"):
            # The router chose a route without a path template (a Host, a
            # custom route). With routes of its own behind it, they matched
            # nothing; without, the app behind it served the request, and its
            # path is anonymized as a route-less app's is.
            matched = not getattr(route, "routes", None) and status != 404
        elif "router" not in scope:
            routes = routes_of_unrouted_app(scope)
            if routes is None:
                # No Starlette app saw it: a middleware wrapped around the app
                # from outside answered (a CORS preflight, a rate limit), or
                # the app has no routes. The app's routes, found through the
                # wrappers, say what the router would have chosen; else a
                # per-path key for each answer would fill the key cap.
                routes = self._templates.own_routes()
            if routes is None:
                matched = status != 404  # a route-less app: its path is anonymized
            else:
                # A Starlette or FastAPI app answered before routing (a CORS
                # preflight, say): its template is what the router would have
                # chosen, and a path no route takes is unmatched, so that such
                # answers cannot make a key per path. Matched once per request
                # target and remembered: matched every time, each preflight
                # paid for every route of the app on the event loop.
                template = self._templates.by_matching(routes, scope)
                if isinstance(template, str):
                    return template
                matched = template is UNTEMPLATED
        elif self._templates.own_routes() is None:
            # A route-less app mounted in a router (which recorded its mount):
            # its path is anonymized, as anywhere else.
            matched = status != 404
        return self.telemetry.route_for_unrouted(
            scope["path"], scope.get("query_string", b"").decode("latin-1"), matched
        )

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the lifespan on to the app, with the final flush at its
        shutdown; answer it here for an app that takes none.

        Why: an app that refuses lifespan (Django's ``ASGIHandler``, a bare
        ASGI callable that serves only ``http``) raises, or returns, before
        it reads the startup. uvicorn then serves without lifespan, and after
        SIGTERM ends the process in a way that skips ``atexit``: the final
        report, with all that was served since the last one, was lost. An app
        that read the startup and then failed is left to fail as it would.
        One that raised before reading it is said at WARNING, with what it
        raised: a startup that failed so (a check before the first
        ``receive``) looks the same from here, and the server, answered, now
        serves where ``--lifespan on`` stopped it with the error.
        """
        taken = False
        refused: Exception | None = None

        async def receive_noted() -> Message:
            nonlocal taken
            taken = True
            return await receive()

        flush_then_send = self._flush_on_shutdown(send)

        async def send_noted(message: Message) -> None:
            nonlocal taken
            taken = True
            await flush_then_send(message)

        try:
            await self.app(scope, receive_noted, send_noted)
        except Exception as error:
            if taken:
                raise
            refused = error
        if taken:
            return
        if refused is not None and not _refuses_lifespan_by_design(refused):
            logger.warning(
                "reqtelemetry: the app raised %s: %s for the lifespan before reading its "
                "startup; taken as an app without lifespan, which reqtelemetry answers so "
                "that the final report goes at shutdown. If that was its startup failing, "
                "it was not stopped.",
                type(refused).__name__,
                refused,
            )
        while True:  # the app takes no lifespan: answered here, with the flush
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await flush_then_send({"type": "lifespan.shutdown.complete"})
                return

    def _flush_on_shutdown(self, send: Send) -> Send:
        """Wrap lifespan ``send``: once the app has shut down, make the final flush.

        The flush runs in a worker thread (it does I/O) and is bounded by
        ``shutdown_timeout``, so the server's shutdown is never held up for long.
        The thread comes from anyio, which runs on whichever event loop the
        server uses: asyncio's executor is not there under trio (hypercorn's
        ``--worker-class trio``), and the last report was lost.
        """

        async def send_then_flush(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                try:
                    await anyio.to_thread.run_sync(self.telemetry.close)
                except Exception as error:  # never let telemetry break shutdown
                    self.telemetry.internal_error(error)
            await send(message)

        return send_then_flush


class _Exchange(Mark):
    """One request's view of the messages: ``receive`` and ``send`` as the app sees them.

    Why an object with slots and not two closures: the state is read and
    written a dozen times per request, and one small object costs fewer
    allocations and instructions than a cell per variable.
    """

    __slots__ = (
        "_receive",
        "_send",
        "chunk",
        "delivered",
        "disconnected",
        "end",
        "head",
        "request_bytes",
        "response_bytes",
        "status",
        "taken_over",
        "telemetry",
    )

    def __init__(self, receive: Receive, send: Send, telemetry: Telemetry) -> None:
        self._receive = receive
        self._send = send
        self.telemetry = telemetry
        #: Whether Django's middleware measured the request instead (see
        #: :class:`~reqtelemetry.telemetry.Mark`).
        self.taken_over = False
        self.status = 0
        self.request_bytes = 0
        self.response_bytes = 0
        #: Bytes of the last body chunk handed to the server.
        self.chunk = 0
        #: When the app handed the server the last body chunk; 0.0 until then.
        self.end = 0.0
        self.disconnected = False

    async def receive(self) -> Message:
        message = await self._receive()
        kind = message["type"]
        if kind == "http.request":
            self.request_bytes += len(message.get("body") or b"")  # None: a server's tolerance
        elif kind == "http.disconnect":
            if not self.status:
                self._send = _unanswered(self, self._send)
            elif not self.end and not self.disconnected:
                self.chunk = 0  # what went before the disconnect was delivered
                self._send = _cut_short(self, self._send)
            self.disconnected = True
        return message

    def send(self, message: Message) -> Awaitable[None]:
        """Note what the app hands the server, and return the server's own awaitable.

        Why not a coroutine that awaits the server's ``send``: that costs a
        coroutine per message, about 850 instructions, a twelfth of what the
        middleware adds to a request. The price is that this method does not
        see the server's ``send`` fail; the middleware finds that out from the
        exception the app raises (:func:`_failed_in_send`) and takes the chunk
        back (:meth:`send_failed`).
        """
        kind = message["type"]
        if kind == "http.response.body":
            if self.end:  # after the last chunk: the server drops it, or refuses it
                return self._send(message)
            # ``or``: uvicorn sends a body of None as an empty one, and so must we.
            chunk = len(message.get("body") or b"")
            self.response_bytes += chunk
            self.chunk = chunk
            if not message.get("more_body", False):
                self.end = perf_counter()
                return self._send(message)
            # A chunk before the last is delivered once the server took it
            # (see _had_whole_body); a response sent in one message pays nothing.
            return self._delivered(message)
        elif kind == "http.response.start":
            self.status = message["status"]
            # Read only when the client leaves (:func:`_client_left`): its
            # headers say whether the body it was sent was all there was.
            self.head = message
        elif kind == "http.response.pathsend":
            # The server sends the whole file itself: its size is the body's.
            self.end = perf_counter()
            self.chunk = _file_size(message)
            self.response_bytes += self.chunk
        elif kind == "http.response.zerocopysend":
            # A body chunk the server sends from a file descriptor itself.
            self.chunk = _zerocopy_size(message)
            self.response_bytes += self.chunk
            if not message.get("more_body", False):
                self.end = perf_counter()
            else:
                # Delivered once the server took it, as a body chunk before the last.
                return self._delivered(message)
        elif (
            kind == "http.response.trailers"
            and self.status
            and not message.get("more_trailers", False)
        ):
            # Announced in the start message, trailers end the response.
            self.end = perf_counter()
        return self._send(message)

    async def _delivered(self, message: Message) -> None:
        """The server's ``send`` of a body chunk before the last, awaited;
        then the body bytes the server has taken are noted.

        Why: uvicorn's ``send`` waits while its write buffer is full, and a
        client that leaves meanwhile wakes the app's ``receive`` first; the
        ``send`` then returns without writing. Counted when handed over, the
        last chunk of a download left at 1 MB of 16 made the bytes the
        ``Content-Length`` declared, and the request a 200.
        """
        upto = self.response_bytes
        await self._send(message)
        if not self.disconnected:
            self.delivered = upto

    def send_failed(self) -> None:
        """The server's ``send`` raised: the client is gone, and the last chunk never passed."""
        self.disconnected = True
        self.response_bytes -= self.chunk
        self.chunk = 0
        self.end = 0.0


def _unanswered(exchange: _Exchange, send: Send) -> Send:
    """The server's ``send`` for a request whose client left before any answer.

    Why: a server answers ``http.disconnect`` only once the connection is
    gone, and drops whatever the app sends after it. FastAPI turns the
    ``ClientDisconnect`` of a body it could not read (a pydantic model, a
    form, a file) into its 400, which it sends and returns: every upload a
    client abandoned was a 400 with bytes never sent, added or wrapped
    alike. Nothing sent then is counted, and the request is the 499 it is
    when the app raises. Installed only at such a disconnect: no request
    that is answered pays for it.
    """

    def dropped(message: Message) -> Awaitable[None]:
        exchange.status = 0
        exchange.response_bytes = exchange.chunk = 0
        exchange.end = 0.0
        return send(message)

    return dropped


def _cut_short(exchange: _Exchange, send: Send) -> Send:
    """The server's ``send`` for a response whose client left after its status line.

    Why: a server drops what the app sends once the client is gone (uvicorn's
    ``send`` returns without a word), and an app that reads the disconnect
    may still end its stream as if it completed: ``BaseHTTPMiddleware``
    (``@app.middleware("http")``) sends the last chunk of the stream it
    relays when the route's stream stops, and so does an SSE loop that breaks
    on ``request.is_disconnected()``. Each such client was recorded as a whole
    200. Nothing sent after the disconnect is counted and the response never
    ends, so the request is the 499 a stream cut short is. Installed only at
    such a disconnect: no request that completes pays for it.
    """

    def dropped(message: Message) -> Awaitable[None]:
        exchange.response_bytes -= exchange.chunk
        exchange.chunk = 0
        exchange.end = 0.0
        return send(message)

    return dropped


def as_asgi3(app: Any) -> ASGIApp:
    """``app`` as an ASGI 3 app: itself, or an adapter where it is an ASGI 2
    one (``app(scope)`` makes an instance, awaited with ``receive`` and ``send``).

    Why: the server adapts an ASGI 2 app it is handed, but the middleware
    in front of it is the app the server sees, and every request of the app
    it wrapped failed (a ``TypeError``: 500). A class is told apart as
    uvicorn does it: ASGI 3 only if its instances can be awaited. Anything
    else by what it can be called with: ASGI 2 where it takes the scope alone
    and not three arguments. Not as uvicorn guesses there (no coroutine
    function: ASGI 2), which would take a plain function that returns the
    coroutine of an ASGI 3 app for ASGI 2: called so by a framework's mount,
    such an app works as it is.
    An app whose signature cannot be read is left as it is. Its own
    signature, not the one ``functools.wraps`` copied from the app it wraps:
    an ASGI 3 adapter made so around an ASGI 2 app is ASGI 3.
    """
    as_it_is: ASGIApp = app
    if inspect.isclass(app):
        # A class is instantiated with the scope alone (ASGI 2) unless its
        # instances can be awaited, as uvicorn tells them apart: its
        # signature says nothing where it takes ``*args``.
        return as_it_is if hasattr(app, "__await__") else _ASGI2App(app)
    try:
        signature = inspect.signature(app, follow_wrapped=False)
    except Exception:  # none of its own (a C wrapper such as wrapt's): the wrapped app's
        try:
            signature = inspect.signature(app)
        except Exception:  # none at all (a builtin, a proxy that raises): as it is
            return as_it_is
    try:
        signature.bind(None, None, None)
        return as_it_is
    except TypeError:
        pass
    try:
        signature.bind(None)
    except TypeError:
        return as_it_is  # neither way: it fails as it did
    return _ASGI2App(app)


class _ASGI2App:
    """An ASGI 2 app, called the ASGI 3 way (see :func:`as_asgi3`)."""

    def __init__(self, app: Callable[[Scope], Any]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        instance = self.app(scope)
        await instance(receive, send)


def _warn_of_middleware_outside(app: Any) -> None:
    """Warn, naming them, where middleware was added to ``app`` after this one.

    Why: Starlette's ``add_middleware`` puts each new middleware outside those
    added before it, and the README adds this one first. What those answer on
    their own (a CORS preflight, ``TrustedHostMiddleware``'s 400,
    ``HTTPSRedirectMiddleware``'s redirect, a rate limiter's 429) went
    unrecorded, and ``GZipMiddleware``'s compression unseen (the sizes were
    the uncompressed ones), without a word; Django's middleware says so where
    it is not listed first. Looked at once, at the first request: an app
    wrapped from outside lists no such middleware, and nothing is said.
    """
    listed = getattr(app, "user_middleware", None)  # Starlette's, outermost first
    if not isinstance(listed, list):
        return
    outside = []
    for entry in listed:
        factory = getattr(entry, "cls", None)
        if isinstance(factory, type) and issubclass(factory, ASGIMiddleware):
            break
        outside.append(getattr(factory, "__name__", None) or repr(factory))
    else:
        return  # not added to this app's list
    if outside:
        logger.warning(
            "reqtelemetry: ASGIMiddleware was added before %s, which run outside it; the "
            "answers those give on their own (CORS preflights, redirects, refusals) are "
            "not recorded, and sizes are counted before they change them (compression): "
            "add ASGIMiddleware last",
            ", ".join(outside),
        )


def _refuses_lifespan_by_design(refused: BaseException) -> bool:
    """Whether ``refused`` is Django's ASGI handler refusing the lifespan, as
    it refuses every one, with a ValueError before reading it: the app this
    answer was made for, whose refusal is no failed startup to warn of at
    every start (as ``LifespanFlush``, which answers it without a word).

    Told by where it was raised, not by the app the middleware wraps: Django
    behind a wrapper that passes the lifespan on (OpenTelemetry's
    ``OpenTelemetryMiddleware``, Sentry's, a logging one) was warned of at
    every start. Django is looked for only where it was imported.
    """
    module = sys.modules.get("django.core.handlers.asgi")
    if module is None or not isinstance(refused, ValueError):
        return False
    trace = refused.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next  # the frame that raised it
    return trace is not None and trace.tb_frame.f_code is module.ASGIHandler.__call__.__code__


def _client_left(exchange: _Exchange, scope: Scope) -> Any:
    """The status of a request whose response the client left before its end: 499.

    But a HEAD whose status went out: its answer is complete with its
    headers, and a client closes once it has them (uvicorn then fails the
    app's next body ``send``, or Starlette's stream sees the disconnect). The
    WSGI middleware and Django's decide so too. Asked only of a response cut
    short, never of one that completed.
    """
    if exchange.status and (scope.get("method") == "HEAD" or _had_whole_body(exchange)):
        return exchange.status
    return CLIENT_CLOSED_STATUS


def _had_whole_body(exchange: _Exchange) -> bool:
    """Whether the body bytes sent before the client left are all its
    ``Content-Length`` declared.

    Why: a client that has the declared length has the whole answer, and
    closes (curl, a script's one request) before the app's closing empty
    message, which Starlette's ``FileResponse`` sends after a last chunk of
    exactly its 64 KiB and ``@app.middleware("http")`` after any stream it
    relays: such a request was a 499 beside a client that had its 200.
    """
    head = getattr(exchange, "head", None)  # unset until a start went out
    if head is None:
        return False
    # The bytes the server took before the client left, not those handed to
    # it: a chunk the server still held when it left never went out.
    delivered = getattr(exchange, "delivered", 0)  # unset until a chunk was taken
    try:
        for name, value in head.get("headers") or ():
            if name.lower() == b"content-length":
                return int(value) == delivered
    except (AttributeError, TypeError, ValueError):
        pass  # headers the server refuses anyway
    return False


def _status_code(status: Any) -> int:
    """The status an app sent as something other than an ``int`` (a
    string, which hypercorn accepts), as the ``int`` every other request of
    that status is keyed by; 500 where it is no number."""
    try:
        return int(status)
    except (TypeError, ValueError):
        return 500


def _file_size(message: Message) -> int:
    """The size of the file an ``http.response.pathsend`` message names; 0 if unknown."""
    try:
        return os.stat(message["path"]).st_size
    except (KeyError, TypeError, ValueError, OSError):
        return 0  # the server reports a missing file its own way


def _zerocopy_size(message: Message) -> int:
    """The bytes an ``http.response.zerocopysend`` message has the server send:
    its ``count``, else its file from ``offset`` (or the file's position) to
    the end; 0 if unknown."""
    count = message.get("count")
    if type(count) is int:
        return max(count, 0)
    try:
        file = message["file"]
        descriptor = file if type(file) is int else file.fileno()
        offset = message.get("offset")
        if type(offset) is not int:
            offset = os.lseek(descriptor, 0, os.SEEK_CUR)
        return max(os.fstat(descriptor).st_size - offset, 0)
    except (KeyError, AttributeError, TypeError, ValueError, OSError):
        return 0  # the server reports a bad descriptor its own way


def _is_cancellation(error: BaseException) -> bool:
    """Whether ``error`` is trio's ``Cancelled``, the one event loop's
    cancellation besides asyncio's ``CancelledError`` (caught before this is
    asked). Runs only when the app raised.

    Why not ``anyio.get_cancelled_exc_class()``: its first call imports
    anyio's backend for the running loop, which blocked a raw ASGI app's event
    loop for 13 to 24 ms at its first exception (Starlette loads it anyway).
    """
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(error, trio.Cancelled)


#: Starlette's body limit (``max_body_size``, and FastAPI's, built on it)
#: signals with these, raised through the app: it answers ``413`` itself, to
#: the server, from outside this middleware once it is added to the app.
_BODY_LIMIT_MODULE = "starlette.middleware.body_limit"
#: Raised once its ``413`` went out: the client had it, whatever wraps the signal.
_BODY_LIMIT_SENT = ("_RequestBodyLimitResponseSent",)
#: Raised for a body over the limit: answered ``413`` only when it is what
#: reaches that middleware (its ``except`` catches nothing else).
_BODY_TOO_LARGE = "_RequestBodyTooLarge"


def _answered_by_body_limit(error: BaseException, started: bool) -> bool:
    """Whether ``error`` is Starlette's body limit telling its own middleware,
    outside this one, to answer ``413``, or one within it (see :func:`_within`)
    says that middleware has answered so already. ``started``: whether the
    app's status line went out (that middleware then answers nothing).

    Why: that middleware sends its ``413`` to the server itself, past this
    middleware's ``send``, and every upload over the limit was recorded as a
    500 with no body. The signals are private classes, so they are looked up
    by name (:func:`_raised_within`). A body too large is a ``413`` only when
    its signal itself is what the app raised: gathered in an exception group
    (read in a task group), or the context of what the app raised while
    handling it (``raise UploadFailed() from error``), it passes that
    middleware's ``except`` by, and the client gets Starlette's 500, which
    was recorded as a 413. Nor after the app's status line went out (a
    chunked upload over the limit, read as the answer streams): the client
    has that status and a body cut short, a 500 as any answer that fails.
    """
    module = sys.modules.get(_BODY_LIMIT_MODULE)
    too_large = getattr(module, _BODY_TOO_LARGE, None)
    if not started and isinstance(too_large, type) and isinstance(error, too_large):
        return True
    return _raised_within(error, _BODY_LIMIT_MODULE, _BODY_LIMIT_SENT)


def _left_during_upload(error: BaseException) -> bool:
    """Whether ``error`` (or one within it: see :func:`_within`) is Starlette's
    ``ClientDisconnect``, raised where the app reads a body whose client left.

    Why: wrapped around a Starlette or FastAPI app, the middleware saw the
    500 that Starlette's outermost middleware sends for it, and every upload
    a client abandoned midway was recorded as a server error, with bytes the
    server never sent.
    """
    return _raised_within(error, "starlette.requests", ("ClientDisconnect",))


def _raised_within(error: BaseException, module_name: str, names: tuple[str, ...]) -> bool:
    """Whether ``error``, or one within it (:func:`_within`), is one of the
    classes ``names`` of the module ``module_name``: looked up by name, only
    when the app raised, and only if the module is loaded (never imported)."""
    module = sys.modules.get(module_name)
    if module is None:
        return False
    looked_up = (getattr(module, name, None) for name in names)
    classes = tuple(found for found in looked_up if isinstance(found, type))
    return bool(classes) and any(isinstance(raised, classes) for raised in _within(error))


async def _pass_excluded(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, mark: ExcludedMark
) -> None:
    """Run an excluded request, marked so that no middleware of the same
    telemetry inside measures it (see :class:`ExcludedMark`); a mark that is
    there already (another telemetry's, or an outer one of this) stays."""
    if MEASURED_KEY in scope:
        await app(scope, receive, send)
        return
    scope[MEASURED_KEY] = mark
    try:
        await app(scope, receive, send)
    finally:
        if scope.get(MEASURED_KEY) is mark:
            del scope[MEASURED_KEY]


def _failed_in_send(error: BaseException, send: Send) -> bool:
    """Whether ``error``, an exception it was raised while handling, or one of
    an exception group's members, is an ``OSError`` that came out of the
    server's ``send``.

    An ASGI server's ``send`` raises ``OSError`` once the client is gone (spec
    2.4), and the app may let it through (most do), wrap it (Starlette raises
    ``ClientDisconnect`` from it) or gather it in an exception group (a task
    group's: Starlette's streaming before 1.x, anyio 4): either way the
    ``OSError``'s traceback runs through the server's ``send``, whose code
    object is known. Where it is not (a ``send`` that is no Python function),
    any ``OSError`` counts. Runs only when the app raised; looks at no more
    than :data:`_CONTEXT_DEPTH` exceptions.
    """
    code: CodeType | None = getattr(getattr(send, "__func__", send), "__code__", None)
    for current in _within(error):
        if isinstance(current, OSError):
            if code is None:
                return True
            trace = current.__traceback__
            while trace is not None:
                if trace.tb_frame.f_code is code:
                    return True
                trace = trace.tb_next
    return False


def _within(error: BaseException) -> Iterator[BaseException]:
    """``error``, the members of the exception groups in it, and the
    exceptions each was raised while handling (``__context__``): at most
    :data:`_CONTEXT_DEPTH` of them, members before contexts."""
    pending: list[BaseException] = [error]
    seen = 0
    while pending and seen < _CONTEXT_DEPTH:
        current = pending.pop()
        seen += 1
        yield current
        members = getattr(current, "exceptions", None)  # an exception group's
        if isinstance(members, tuple):
            pending.extend(reversed(members))
        if current.__context__ is not None:
            pending.insert(0, current.__context__)


class _PassThrough(ASGIMiddleware):
    """What an opted-out :class:`ASGIMiddleware` becomes: the app, and nothing else."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
