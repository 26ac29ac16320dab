"""Flask: measure each request from inside the app, without wrapping its response.

:func:`init_app` instruments one Flask app at three methods Flask documents:

- ``app.wsgi_app`` (the extension point Flask gives middleware) is wrapped by
  a plain function that starts the clock, and stops it when Flask returns:
  after the view, the ``after_request`` and ``teardown`` handlers and the
  response headers;
- ``app.full_dispatch_request`` and ``app.handle_exception``, the two methods
  that produce a response, leave their :class:`~flask.Response` and the
  matched ``url_rule`` in the environ, so status, body size and route template
  are read from Flask's own objects.

Why not the generic :class:`~reqtelemetry.integrations.wsgi.WSGIMiddleware`:
to see status and bytes from outside, a WSGI middleware must wrap
``start_response``, the response iterable and its ``close()``. Timed on
Flask, that wrapping alone cost 2.6 to 2.9 µs per request, about as much as
the whole 3 µs budget. A buffered body (what a view's ``return`` builds) is in
memory when Flask returns, so its length is known then. A body Flask holds as
an iterator (a generator, ``stream_with_context``, ``send_file``, Werkzeug's
default error pages) is still wrapped: it is measured to its last byte,
counted as it passes, and a client that goes away mid-stream is recorded as
499, as the generic middleware does. A file the server offered to send itself
(``send_file`` under a server with ``wsgi.file_wrapper``) goes out unwrapped,
so that the server can still use ``sendfile``; it counts its declared length.

What differs from the generic middleware: a buffered response is recorded
when Flask hands it to the server, so the time the server then takes to write
it to the socket is not in the latency (an ASGI server buffers its writes the
same way), and a client that disconnects during that write is not seen.
Requests that another WSGI app serves (a ``DispatcherMiddleware`` set as
``app.wsgi_app`` before ``init_app``) are not Flask's and are not recorded;
wrap the dispatcher in ``WSGIMiddleware`` to measure those too: the requests
Flask serves are then still measured here, the middleware leaving them to
this (see :data:`~reqtelemetry.telemetry.MEASURED_KEY`).

:func:`install` is the hook :class:`WSGIMiddleware` uses when it is handed a
Flask app directly: it notes the framework and, for exceptions that propagate
out of Flask, copies the matched rule into the environ.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from types import GeneratorType
from typing import Any
from urllib.parse import unquote, urlsplit

from ..recorder import PENDING_LIMIT
from ..route_hook import ROUTE_KEY, UNKNOWN_ROUTE
from ..telemetry import (
    KNOWN_METHODS,
    MEASURED_KEY,
    OTHER_METHOD,
    ExcludedMark,
    Telemetry,
    marked_by,
    parse_content_length,
)
from .wsgi import (
    RECORDED_FAILURE_KEY,
    CountedInput,
    WSGIApp,
    WSGIMiddleware,
    _Measured,
    count_what_is_read,
    length_sent_by_front_server,
    measure_iterable,
    record_request,
)

_INSTALLED_FLAG = "_reqtelemetry_route_hook"
#: Set on a Flask app a :class:`WSGIMiddleware` wraps (or its ``wsgi_app``),
#: opted out too, so that :func:`init_app` refuses it either way.
_WRAPPED_FLAG = "_reqtelemetry_wrapped"
#: Set on an app :func:`init_app` has instrumented, and on the ``wsgi_app`` it installed.
INSTRUMENTED_FLAG = "_reqtelemetry_instrumented"
#: Where Flask's response and matched rule wait, between the method that made
#: the response and the wrapped ``wsgi_app``: a list the wrapped ``wsgi_app``
#: puts in the environ, which the method appends them to. (Werkzeug's request
#: object is gone from the environ by then: Flask clears it when the request
#: ends.) A list, not the pair itself, so that it reaches the wrapped
#: ``wsgi_app`` through a middleware that copies the environ on its way in (a
#: prefix-stripping ``dict(environ)``): the copy holds the same list.
KEPT_KEY = "reqtelemetry.flask"


class _Propagated:
    """What stands for Flask's response when its error propagated out of it
    (``TESTING``, ``PROPAGATE_EXCEPTIONS``, an exception that is no
    ``Exception``): a 500, whose body is whatever answers in Flask's place.

    Why not None: a middleware set as ``app.wsgi_app`` before :func:`init_app`
    may answer the error itself (an error page) and return normally; the
    request is then measured from this, its body counted as it passes
    (``response`` is no list). With None, reading its status failed: the
    request went unrecorded, as an internal error of reqtelemetry.
    """

    status_code = 500
    response = None
    content_length = None
    headers = None


#: The one :class:`_Propagated`.
PROPAGATED = _Propagated()


def _copy_rule_on_exception(sender: Any, **_: Any) -> None:
    from flask import request

    rule = request.url_rule
    request.environ[ROUTE_KEY] = rule.rule if rule is not None else None


def _note_flask(flask_app: Any, telemetry: Any) -> None:
    telemetry.note_framework("flask")
    if flask_app.debug:
        telemetry.note_development("Flask debug mode")


def install(flask_app: Any, telemetry: Any = None) -> None:
    """Connect the exception-path hook that :class:`WSGIMiddleware` needs (idempotent)."""
    if telemetry is not None:
        _note_flask(flask_app, telemetry)
    if getattr(flask_app, _INSTALLED_FLAG, False):
        return
    from flask import got_request_exception

    got_request_exception.connect(_copy_rule_on_exception, flask_app, weak=False)
    setattr(flask_app, _INSTALLED_FLAG, True)


def install_if_flask(app: WSGIApp, telemetry: Any = None, enabled: bool = True) -> None:
    """Install the hook when ``app`` is a Flask app or its bound ``wsgi_app``
    (only marked as wrapped where telemetry is not ``enabled``).

    Raises ``RuntimeError`` when :func:`init_app` already measures that app: a
    second measurement would count every request twice. Opted out too, so
    that the mistake shows where it is made, not first in production.
    """
    flask = sys.modules.get("flask")
    if flask is None:
        return
    if getattr(app, INSTRUMENTED_FLAG, False):  # the wsgi_app init_app installed
        raise RuntimeError("this Flask app is already instrumented by reqtelemetry.init_app")
    candidate = getattr(app, "__self__", app)
    if isinstance(candidate, flask.Flask):
        if getattr(candidate, INSTRUMENTED_FLAG, False):
            raise RuntimeError("this Flask app is already instrumented by reqtelemetry.init_app")
        setattr(candidate, _WRAPPED_FLAG, True)
        if enabled:
            install(candidate, telemetry)
    elif enabled:
        # Around something else (a DispatcherMiddleware in front of Flask
        # apps): the hook for every Flask app, whose rule the middleware
        # reads from the request otherwise gone when an exception propagates.
        # Without it, each such 500 was keyed by its hashed path, one key per id.
        flask.got_request_exception.connect(_copy_rule_on_exception, weak=False)


def init_app(flask_app: Any, telemetry: Telemetry) -> None:
    """Measure a Flask app's requests, in the manner of Flask extensions.

    Opted out, the app is left as it was: nothing is installed (only a flag
    is set on it), so an opted-out deployment pays nothing per request.

    Raises ``RuntimeError`` when the app is already instrumented (by
    ``init_app`` or a ``WSGIMiddleware`` around it or its ``wsgi_app``): a second
    measurement would count every request twice. Opted out too, so that the
    mistake shows where it is made, not first where telemetry is on.
    """
    if (
        isinstance(flask_app.wsgi_app, WSGIMiddleware)
        or getattr(flask_app, INSTRUMENTED_FLAG, False)
        # a WSGIMiddleware around the app object (or its wsgi_app)
        or getattr(flask_app, _WRAPPED_FLAG, False)
        or getattr(flask_app, _INSTALLED_FLAG, False)
    ):
        raise RuntimeError("this Flask app is already instrumented by reqtelemetry")
    setattr(flask_app, INSTRUMENTED_FLAG, True)
    if not telemetry.enabled:
        return
    _note_flask(flask_app, telemetry)
    request_context = _request_context_getter()
    full_dispatch_request = flask_app.full_dispatch_request
    handle_exception = flask_app.handle_exception

    def keep(response: Any) -> None:
        """Leave ``response`` and the matched rule for the wrapped ``wsgi_app``."""
        try:
            context = request_context()
        except (LookupError, RuntimeError):  # Flask failed before it pushed one
            return
        try:
            request = context.request
            kept = request.environ.get(KEPT_KEY)
            if kept is None:  # called outside the wrapped wsgi_app: nothing waits
                return
            rule = request.url_rule
            if rule is None:
                rule = rule_despite_refusal(context)
            kept.append((response, rule))
        except Exception as error:  # never let telemetry break a response
            telemetry.internal_error(error)

    def full_dispatch_request_measured() -> Any:
        try:
            response = full_dispatch_request()
        except BaseException:  # handle_exception answers, or the error propagates
            keep(PROPAGATED)
            raise
        try:  # what keep() does, without its call: this is every request's path
            context = request_context()
            request = context.request
            kept = request.environ.get(KEPT_KEY)
            if kept is not None:  # else called outside the wrapped wsgi_app
                rule = request.url_rule
                if rule is None:  # a 404, or a path the router refused (405, 308)
                    rule = rule_despite_refusal(context)
                kept.append((response, rule))
        except Exception as error:
            telemetry.internal_error(error)
        return response

    def handle_exception_measured(error: Exception) -> Any:
        try:
            response = handle_exception(error)
        except BaseException:  # propagated: TESTING, PROPAGATE_EXCEPTIONS
            keep(PROPAGATED)
            raise
        keep(response)
        return response

    flask_app.full_dispatch_request = full_dispatch_request_measured
    flask_app.handle_exception = handle_exception_measured
    flask_app.wsgi_app = _measured_wsgi_app(flask_app.wsgi_app, telemetry)


def _measured_wsgi_app(wsgi_app: WSGIApp, telemetry: Telemetry) -> WSGIApp:
    """``wsgi_app`` timed, its request recorded from the response Flask left.

    A closure rather than a middleware object: calling an object's
    ``__call__`` costs more than calling a function, on every request.
    """
    excluded = telemetry.excluded
    excluded_mark = ExcludedMark(telemetry)
    first_request = True

    def reqtelemetry_wsgi_app(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        nonlocal first_request
        if excluded is not None and excluded(environ.get("PATH_INFO", "")):
            # Marked, as WSGIMiddleware marks it: an app of this telemetry
            # mounted inside (a DispatcherMiddleware set as wsgi_app) sees the
            # path without the mount's prefix, and measured what was left out.
            environ.setdefault(MEASURED_KEY, excluded_mark)
            return wsgi_app(environ, start_response)
        # A WSGIMiddleware's mark, if one is around the app (around a
        # dispatcher in front of it): a request Flask serves is measured here,
        # where the rule is known whatever lies between, and left to this by
        # that one (see reqtelemetry.telemetry.Mark); any other, to that one.
        mark = environ.get(MEASURED_KEY)
        if mark is not None:
            if not marked_by(mark, telemetry):
                mark = None  # another telemetry's: it measures for its own maintainer
            elif mark.excluded:  # a middleware of this telemetry around it left it out
                return wsgi_app(environ, start_response)
        if first_request:
            first_request = False
            telemetry.note_first_request(environ.get("HTTP_HOST"))
        if "HTTP_TRANSFER_ENCODING" in environ and not environ.get("CONTENT_LENGTH"):
            count_what_is_read(environ)
        kept: list[tuple[Any, Any]] = []
        environ[KEPT_KEY] = kept
        start = perf_counter()
        try:
            iterable = wsgi_app(environ, start_response)
        except BaseException:  # propagated (TESTING, PROPAGATE_EXCEPTIONS), or not an Exception
            environ.pop(KEPT_KEY, None)
            # Flask's request, or nobody around records it and nothing of this
            # telemetry inside (an app mounted in this one) has.
            if kept or (mark is None and environ.get(RECORDED_FAILURE_KEY) is not telemetry):
                if mark is not None:
                    mark.taken_over = True
                route = _route(kept[-1][1]) if kept else UNKNOWN_ROUTE
                record_request(telemetry, environ, route, 500, perf_counter() - start, 0)
                environ[RECORDED_FAILURE_KEY] = telemetry
            raise
        environ.pop(KEPT_KEY, None)  # the response and rule go with the request
        if not kept:  # another app behind a dispatcher answered: not Flask's request
            if mark is None and type(iterable) is GeneratorType:
                # Or Flask has not run yet: a middleware inside that is a
                # generator (Werkzeug's DebuggedApplication) runs it only as
                # the server iterates.
                return _measured_when_served(
                    telemetry, environ, start_response, kept, iterable, start
                )
            return iterable
        if mark is not None:
            mark.taken_over = True
        try:
            response, rule = kept[-1]
            status = response.status_code
            body = response.response
            if type(body) is list and len(body) == 1 and type(body[0]) is bytes:
                size = len(body[0])  # what Flask's make_response builds
            elif isinstance(body, (list, tuple)):
                size = sum(map(len, response.iter_encoded()))
                if not size:  # send_file under USE_X_SENDFILE: the front server sends it
                    size = length_sent_by_front_server(response.headers)
            else:  # streamed: measured to its last byte, as it passes
                return measure_iterable(
                    telemetry,
                    environ,
                    start_response,
                    iterable,
                    start,
                    status,
                    _route(rule),
                    response.content_length,
                    response.headers,
                )
            # What record_request does, without its call (this is every request's path).
            method = environ.get("REQUEST_METHOD", "GET")
            if method not in KNOWN_METHODS:
                method = OTHER_METHOD
            elif method == "HEAD":  # a server sends no body in answer to HEAD
                size = 0
            # A 1xx, 204 or 304 one's bytes are written as 0 with its key's
            # record (recorder.NO_BODY_STATUSES), for every integration.
            length = environ.get("CONTENT_LENGTH")
            if length:
                request_bytes = parse_content_length(length)
            elif "HTTP_TRANSFER_ENCODING" not in environ:  # most requests: no body
                request_bytes = 0
            else:  # a chunked body, of any method (a search API's GET): what the app read
                stream = environ.get("wsgi.input")
                request_bytes = stream.bytes_read if isinstance(stream, CountedInput) else 0
            if rule is not None:
                route = rule.rule
            else:  # the router matched nothing
                route = telemetry.route_for_unrouted(environ.get("PATH_INFO", ""), "", False)
            request = (method, route, status, perf_counter() - start, request_bytes, size)
            queue = telemetry.queue
            if queue is not None:
                queue.append(request)
                if len(queue) >= PENDING_LIMIT:
                    telemetry.recorder.aggregate_pending()
            else:
                telemetry.record(*request, environ.get("wsgi.url_scheme", "http"))
        except Exception as error:  # never let telemetry break a response
            telemetry.internal_error(error)
        return iterable

    reqtelemetry_wsgi_app.__wrapped__ = wsgi_app  # type: ignore[attr-defined]
    setattr(reqtelemetry_wsgi_app, INSTRUMENTED_FLAG, True)
    return reqtelemetry_wsgi_app


def _measured_when_served(
    telemetry: Telemetry,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    kept: list[tuple[Any, Any]],
    iterable: Iterable[bytes],
    start: float,
) -> Iterable[bytes]:
    """A generator ``wsgi_app`` returned before Flask left anything, counted as
    it passes and recorded at its end from what Flask left by then.

    Why: a middleware set as ``app.wsgi_app`` before :func:`init_app` that is
    a generator (Werkzeug's ``DebuggedApplication``, the debugger under a
    server other than ``flask run``; any ``yield from app(environ,
    start_response)``) calls Flask only when the server first iterates it:
    taken for another app's answer, every request of the app went unrecorded.
    A generator of another app behind a dispatcher leaves nothing, and is
    still not recorded.
    """
    measured = _MeasuredWhenServed(telemetry, environ, start_response)
    measured.kept = kept
    measured.start = start
    measured.iterable = iterable
    return measured


class _MeasuredWhenServed(_Measured):
    """A :class:`~reqtelemetry.integrations.wsgi._Measured` whose status and
    rule are Flask's, read when the request ends (see :func:`_measured_when_served`)."""

    __slots__ = ("kept",)

    kept: list[tuple[Any, Any]]

    def __iter__(self) -> Iterator[bytes]:
        # Where Flask, once it runs, leaves its response: put in the environ
        # only now, as the server starts on the body. Put there when this was
        # made, it went again at once when an app that init_app measures
        # mounted this one (a DispatcherMiddleware set as its wsgi_app): that
        # app takes its own list out of the environ as its wsgi_app returns.
        self.environ[KEPT_KEY] = self.kept
        return super().__iter__()

    def finish(self) -> None:
        if self.finished:
            return
        if self.environ.get(KEPT_KEY) is self.kept:
            del self.environ[KEPT_KEY]
        if not self.kept:  # another app's generator after all: not Flask's request
            self.taken_over = True  # recorded by nobody here, as before
        else:
            response, rule = self.kept[-1]
            self.route = _route(rule)
            # An empty body may be the front server's file (None: PROPAGATED's).
            self.headers = response.headers
            if self.status != 500:  # else the body failed as it was iterated
                self.status = response.status_code  # PROPAGATED's: 500
        super().finish()


def _request_context_getter() -> Callable[[], Any]:
    """A callable that returns the current request context (``.request`` is Flask's request).

    Flask 3.0 and 3.1 keep the request context in ``flask.globals._cv_request``,
    a ``ContextVar``: reading it directly skips the ``flask.request`` proxy's
    Python-level lookup, about 1,300 machine instructions on every request.
    Should a later Flask rename it, the public ``request_ctx`` proxy, and
    failing that ``flask.request`` itself, still work, only slower.
    """
    import flask.globals as flask_globals

    context_var = getattr(flask_globals, "_cv_request", None)
    if context_var is not None:
        return context_var.get  # type: ignore[no-any-return]
    proxy = getattr(flask_globals, "request_ctx", None)
    if proxy is not None:
        return proxy._get_current_object  # type: ignore[no-any-return]
    # flask.request is a LocalProxy, typed as the Request it stands for.
    current_request = flask_globals.request._get_current_object  # type: ignore[attr-defined]

    def context() -> Any:
        return _Context(current_request())

    return context


class _Context:
    __slots__ = ("request",)

    def __init__(self, request: Any) -> None:
        self.request = request


def rule_despite_refusal(context: Any = None) -> Any:
    """The rule a request's path matched when Flask's router refused the request
    anyway; None when no rule matched it (a real 404).

    Why: Werkzeug's router refuses a method the rule does not allow (405) and
    redirects a path to its canonical form (the 308 to a rule's trailing
    slash, or with doubled slashes merged), and leaves ``request.url_rule``
    unset for both. Such requests are for an endpoint that exists, and are
    recorded under its template, as Starlette's router records a 405;
    ``<unmatched>`` is for paths no route takes. The rule is found by matching
    again: for a 405 with the allowed methods in sorted order (Werkzeug
    collects them in a set, so in any order, and where two rules take the path
    every worker must pick the same one); for a redirect at its target, but
    only when the target is this path made canonical. Any other redirect (a
    rule's ``redirect_to``, to an alias or another site) says nothing about
    the rules of this app, and stays unmatched. Runs only when no rule was set.

    ``context`` is Flask's request context (``request`` and ``url_adapter``);
    by default the current one.
    """
    try:
        if context is None:
            context = _request_context_getter()()
        adapter = context.url_adapter
        request = context.request
        error = request.routing_exception
        if adapter is None or error is None:
            return None
        from werkzeug.exceptions import MethodNotAllowed
        from werkzeug.routing import RequestRedirect

        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            for method in sorted(error.valid_methods):
                try:
                    rule, _ = adapter.match(method=method, return_rule=True)
                except Exception:  # refused again with this method: try the next
                    continue
                return rule
            return None
        if isinstance(error, RequestRedirect):
            target = urlsplit(error.new_url)
            # Host names are case-insensitive, and Werkzeug writes the
            # target's in lower case. Its own redirects go to the request's
            # host, or to the one the router is bound to: with ``SERVER_NAME``
            # set, a request that came in on another name (Flask 3.1 serves
            # those) is redirected there, to this path made canonical all the same.
            netloc = target.netloc.lower()
            if netloc and netloc not in (request.host.lower(), adapter.get_host(None).lower()):
                return None
            path = unquote(target.path)
            root = request.root_path
            if root and path.startswith(root):
                path = path[len(root) :]
            if _canonical(path) != _canonical(request.path):
                return None
            rule, _ = adapter.match(path_info=path, method=request.method, return_rule=True)
            return rule
    except Exception:  # matched nothing after all, or a Flask this does not know
        return None
    return None


def _canonical(path: str) -> str:
    """``path`` as Werkzeug's canonical redirects leave it equal: doubled slashes
    merged, no trailing slash."""
    return re.sub("/{2,}", "/", path).rstrip("/")


def _route(rule: Any) -> str | None:
    """The template of Flask's matched rule; None when its router matched nothing."""
    return rule.rule if rule is not None else None
