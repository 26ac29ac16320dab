"""WSGI middleware measuring each request, in the manner of Werkzeug's ``ProxyFix``.

Wrap any WSGI app: ``flask_app.wsgi_app = WSGIMiddleware(flask_app.wsgi_app,
telemetry=telemetry)``. A WSGI request does not end when the app returns but
when the server has consumed the response iterable or called its ``close()``
(PEP 3333), whichever comes first, so the clock stops there: a streaming response is measured to its
last byte, and response bytes are counted as they pass. Two responses are
handed over unwrapped: the server's own ``wsgi.file_wrapper``, which the
server may send with ``sendfile`` only if it gets it back as it made it
(see :meth:`_Measured.hand_over`), and a body of one chunk in a list or
tuple, recorded when the app returns it: waitress, granian and wsgiref
declare such a body's length by its ``len()`` (wrapped, it went out chunked,
and an HTTP/1.0 client lost its connection).

The route template comes from Flask's request (see
:mod:`reqtelemetry.integrations.flask`, installed automatically when the
wrapped app is a Flask app), from what a router left in the environ (Bottle's),
or from the app itself through :func:`reqtelemetry.note_route` (see
:mod:`reqtelemetry.route_hook`). Without any, the path is anonymized.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from typing import Any

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
    parse_content_length,
)
from ..traits import framework_of_app

#: Werkzeug keeps the live request object here while the app runs; Flask's has
#: the matched ``url_rule`` on it when the app calls ``start_response``.
WERKZEUG_REQUEST_KEY = "werkzeug.request"
#: Set to the telemetry that recorded a request as a 500 when its error
#: propagated out of the app: a middleware or ``init_app`` of that telemetry
#: outside (an app mounted in another that ``init_app`` measures) which sees
#: the same error records nothing of it. It does not know the route, and
#: recorded the request a second time under its anonymized path.
RECORDED_FAILURE_KEY = "reqtelemetry.recorded_failure"
_STATUS_CODES: dict[str, int] = {}

#: Frameworks told apart by their app's class, for the ``framework`` trait:
#: without it, the trait names whichever known framework the process imported.
WSGI_FRAMEWORKS = frozenset({"bottle", "django", "falcon", "pyramid"})

_NOT_STARTED, _ITERATING, _EXHAUSTED = 0, 1, 2

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WSGIMiddleware:
    """Records method, route template, status, latency and sizes of WSGI requests."""

    def __init__(
        self, app: WSGIApp, telemetry: Telemetry | None = None, **options: Unpack[Options]
    ) -> None:
        if telemetry is None:
            telemetry = Telemetry(**options)
        elif options:
            raise TypeError("pass either telemetry= or keyword options, not both")
        self.app = app
        self.telemetry = telemetry
        self._active = telemetry.enabled
        self._excluded = telemetry.excluded
        self._excluded_mark = ExcludedMark(telemetry)
        self._first_request = True
        from .flask import install_if_flask

        install_if_flask(app, telemetry, self._active)
        package = framework_of_app(app, WSGI_FRAMEWORKS)
        if package is not None:  # the app is that framework's (Flask notes its own)
            telemetry.note_framework(package)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if not self._active:
            return self.app(environ, start_response)
        excluded = self._excluded
        if excluded is not None and excluded(environ.get("PATH_INFO", "")):
            # Marked, so that nothing of this telemetry inside (a mounted
            # app's init_app, which sees the path without the mount's
            # prefix) measures it (see ExcludedMark). Left in the environ,
            # which goes with the request: the mark holds nothing of it.
            environ.setdefault(MEASURED_KEY, self._excluded_mark)
            return self.app(environ, start_response)
        telemetry = self.telemetry
        mark = environ.get(MEASURED_KEY)
        if mark is not None and marked_by(mark, telemetry):
            return self.app(environ, start_response)  # a middleware around this one measures
        if self._first_request:
            self._first_request = False
            telemetry.note_first_request(environ.get("HTTP_HOST"))
        if "HTTP_TRANSFER_ENCODING" in environ and not environ.get("CONTENT_LENGTH"):
            count_what_is_read(environ)
        measured = _Measured(telemetry, environ, start_response)
        environ[MEASURED_KEY] = measured  # taken away again by finish()
        measured.start = perf_counter()
        try:
            # Any: its concrete type decides below how it is handed over.
            iterable: Any = self.app(environ, measured.start_response)
        except BaseException:
            measured.status = 500
            measured.finish()
            if not measured.taken_over:  # recorded here
                environ[RECORDED_FAILURE_KEY] = telemetry
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if file_wrapper is not None and (  # _is_servers_file, without its call
            type(iterable) is file_wrapper
            or (type(file_wrapper) is not type and hasattr(iterable, "read"))
        ):
            return measured.hand_over_file(iterable)
        kind = type(iterable)
        if (
            (
                kind is list
                or kind is tuple
                or (isinstance(iterable, (list, tuple)) and _a_plain_sequence(iterable))
            )
            and len(iterable) == 1
            and measured.status
        ):
            # One chunk in memory (what a plain app returns): recorded now, as
            # Flask's buffered responses are, and handed over as the app made
            # it. A server sizes such a body by its len() (waitress, granian,
            # wsgiref declare its length; wrapped, it went out chunked), and
            # wrapping it would only cost the request instructions.
            measured.response_bytes += len(iterable[0])  # after any write()s
            measured.finish()
            return iterable
        measured.iterable = iterable  # what hand_over does, without its call, for the rest
        sized = _SIZED_KINDS.get(kind)  # what _is_sized asks first, without its call
        if sized is None:
            sized = _is_sized(kind)
        if sized:
            measured.__class__ = _SizedMeasured
        return measured


def _a_plain_sequence(sequence: list[bytes] | tuple[bytes, ...]) -> bool:
    """Whether ``sequence`` (a list or tuple, of a subclass) iterates, indexes
    and counts as its base does (a framework's own list): a server sizes it
    by its ``len()`` as it does a list, and its one chunk is what indexing
    gives. One that overrides any of those is measured as it passes."""
    base = list if isinstance(sequence, list) else tuple
    kind = type(sequence)
    return all(
        getattr(kind, name) is getattr(base, name)
        for name in ("__iter__", "__getitem__", "__len__")
    )


def _parse_status(status: str) -> int:
    """The code of a status line; 500 for one that starts with no number,
    which some servers (waitress) send as it is: the app's ``start_response``
    must not fail where the bare app's did not, and no code can be told."""
    try:
        code = int(status[:3])
    except (TypeError, ValueError):
        return 500
    if len(_STATUS_CODES) < 256:  # a handful in practice; bounded whatever apps send
        _STATUS_CODES[status] = code
    return code


class _Measured(Mark):
    """One request: the ``start_response`` the app calls, and the response
    iterable handed to the server, whose ``close()`` ends the request.

    Why one object with slots and bound methods: a request touches this state
    a dozen times, and closures would cost a cell per variable.
    """

    __slots__ = (
        "_start_response",
        "_write",
        "environ",
        "finished",
        "headers",
        "iterable",
        "progress",
        "response_bytes",
        "route",
        "start",
        "status",
        "taken_over",
        "telemetry",
    )

    def __init__(
        self, telemetry: Telemetry, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> None:
        self.telemetry = telemetry
        self.environ = environ
        self._start_response = start_response
        self._write: Callable[[bytes], Any] | None = None
        self.iterable: Iterable[bytes] = ()
        self.status = 0
        self.response_bytes = 0
        self.start = 0.0
        self.finished = False
        self.progress = _NOT_STARTED
        #: The template, None for "the router matched nothing", or UNKNOWN_ROUTE.
        self.route: Any = UNKNOWN_ROUTE
        #: Whether a framework's integration measured the request instead
        #: (see :class:`~reqtelemetry.telemetry.Mark`).
        self.taken_over = False

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        """The app's ``start_response``: note the status (and Flask's rule), then pass on."""
        code = _STATUS_CODES.get(status)
        self.status = code if code is not None else _parse_status(status)
        request = self.environ.get(WERKZEUG_REQUEST_KEY)
        # Asked of the class: Flask's declares ``url_rule``, plain Werkzeug's
        # does not; ``getattr(request, "url_rule", default)`` costs several times
        # as much on every Flask request.
        if request is not None and hasattr(type(request), "url_rule"):
            rule = request.url_rule  # a Flask request: its router ran
            if rule is None:  # a 404, or a path the router refused (405, 308)
                from .flask import rule_despite_refusal

                rule = rule_despite_refusal()
            self.route = rule.rule if rule is not None else None
        self.headers = headers
        self._write = self._start_response(status, headers, exc_info)
        return self.write

    def hand_over(self, iterable: Iterable[bytes], declared_length: int | None = None) -> Any:
        """What the server gets for the app's ``iterable``: this object around
        it, or the server's own file as it made it (:meth:`hand_over_file`)."""
        if _is_servers_file(iterable, self.environ.get("wsgi.file_wrapper")):
            return self.hand_over_file(iterable, declared_length)
        self.iterable = iterable
        if _is_sized(type(iterable)):
            self.__class__ = _SizedMeasured
        return self

    def hand_over_file(self, response: Any, declared_length: int | None = None) -> Any:
        """The server's own file (see :func:`_is_servers_file`), handed back as
        the server made it; this object around it only where its size cannot
        be told.

        Why a file goes out unwrapped: a server sends it with ``sendfile``
        only when the response *is* what its ``wsgi.file_wrapper`` made
        (gunicorn checks with ``isinstance``; uWSGI's wrapper returns the file
        it was given, and uWSGI uses ``sendfile`` only when the response is
        that very file), and copying a large download through Python instead
        would slow the host app down: under uWSGI a 300 MB ``send_file`` took
        4.1 s and 612 MB of memory wrapped, 0.2 s and 26 MB unwrapped. No
        bytes pass through here then: the size is the declared
        ``Content-Length``, else what the server sends of the file (gunicorn:
        from the file's position; uWSGI: all of it), and the request ends when
        the server closes the response. Only a file that is no file on disk
        and declares no length is wrapped and counted as it passes: no server
        sends that with ``sendfile`` anyway.
        """
        length = declared_length if declared_length is not None else self._declared_length()
        if length is None:
            whole = type(response) is not self.environ.get("wsgi.file_wrapper")
            length = _bytes_in_file(response, whole)
        if length is None:
            self.iterable = response
            return self
        return self._around_file(response, length)

    def _around_file(self, wrapper: Any, length: int) -> Any:
        """``wrapper`` itself, its ``close()`` recording the request with ``length`` bytes."""
        close = getattr(wrapper, "close", None)

        def close_then_record() -> None:
            try:
                if close is not None:
                    close()
            finally:
                self.response_bytes = length
                self.finish()

        try:
            wrapper.close = close_then_record
        except AttributeError:
            # An object whose close() takes no hook (one with slots): recorded
            # as it goes to the server, as a buffered response is, rather
            # than copied through Python.
            self.response_bytes = length
            self.finish()
        return wrapper

    def _declared_length(self) -> int | None:
        """The ``Content-Length`` the app declared; None when it declared none."""
        return _content_length(getattr(self, "headers", None))

    def write(self, data: bytes) -> Any:
        """The legacy ``write()`` callable (PEP 3333): counted like iterated chunks."""
        self.response_bytes += len(data)
        assert self._write is not None  # start_response returned it before any write
        return self._write(data)

    def __iter__(self) -> Iterator[bytes]:
        self.progress = _ITERATING
        try:
            for chunk in self.iterable:
                self.response_bytes += len(chunk)
                yield chunk
        except GeneratorExit:  # closed early: close() records it as a client disconnect
            raise
        except BaseException:
            self.status = 500
            raise
        self.progress = _EXHAUSTED
        self.finish()  # the last byte has been handed over; close() may come much later

    def close(self) -> None:
        try:
            iterable = self.iterable
            if type(iterable) is not list:  # the one common response without close()
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
        finally:
            self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        end = perf_counter()
        if self.environ.get(MEASURED_KEY) is self:
            del self.environ[MEASURED_KEY]  # it referred to this: no cycle left behind
        if self.taken_over:
            return  # a framework's integration inside measured it
        if (
            self.progress == _ITERATING
            and self.status != 500
            # A HEAD's answer is complete with its headers: a server that
            # iterates its body anyway (uWSGI, wsgiref, Werkzeug's) stops
            # when the client, rightly, has closed after them.
            and self.environ.get("REQUEST_METHOD") != "HEAD"
        ):
            # The server stopped iterating early: the client went away.
            self.status = CLIENT_CLOSED_STATUS
        size = self.response_bytes
        if not size:  # an empty body: perhaps a file the front server sends
            size = length_sent_by_front_server(getattr(self, "headers", None))
        record_request(
            self.telemetry,
            self.environ,
            self.route,
            self.status or 500,
            end - self.start,
            size,
        )


class _SizedMeasured(_Measured):
    """A :class:`_Measured` around a body that has a length, which it gives as its own.

    Why: waitress and wsgiref size a body by its ``len()`` (one chunk: they
    declare its ``Content-Length``); wrapped in an object without one, a body
    that went out with its length went out chunked, and an HTTP/1.0 client
    lost its connection. Lists and tuples of one chunk go out unwrapped (see
    :meth:`WSGIMiddleware.__call__`); this is for any other body with a length.
    """

    __slots__ = ()

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]


#: Whether a type of response body has a length (see :class:`_SizedMeasured`),
#: by type: asked of every wrapped body, and a failed ``hasattr`` raises inside.
_SIZED_KINDS: dict[type, bool] = {}


def _is_sized(kind: type) -> bool:
    """Whether bodies of type ``kind`` have a ``len()``, remembered for the next one."""
    sized = _SIZED_KINDS.get(kind)
    if sized is not None:
        return sized
    sized = hasattr(kind, "__len__")
    if len(_SIZED_KINDS) < 256:  # a handful of body types in practice
        _SIZED_KINDS[kind] = sized
    return sized


#: Headers with which an app hands the sending of a file to the server in
#: front (Apache's and lighttpd's ``X-Sendfile``, which Flask's
#: ``USE_X_SENDFILE`` sets; nginx's ``X-Accel-Redirect``), lower-cased.
_FRONT_SERVER_FILE_HEADERS = frozenset({"x-sendfile", "x-accel-redirect"})


def length_sent_by_front_server(headers: Any) -> int:
    """The ``Content-Length`` of a response whose body the server in front
    sends (see :data:`_FRONT_SERVER_FILE_HEADERS`); 0 for any other.

    Why: such a response leaves the app with no body, and the client gets
    the file, as long as the app declared. Asked only of an empty body.
    """
    try:
        names = {str(name).lower() for name, _ in headers or ()}
        if names.isdisjoint(_FRONT_SERVER_FILE_HEADERS):
            return 0
        return _content_length(headers) or 0
    except Exception:  # headers the server refuses anyway: no length to tell
        return 0


def _content_length(headers: Any) -> int | None:
    """The ``Content-Length`` among ``headers`` (name, value pairs); None if none."""
    for name, value in headers or ():
        if str(name).lower() == "content-length":
            return parse_content_length(value)
    return None


def _is_servers_file(response: Any, file_wrapper: Any) -> bool:
    """Whether ``response`` is what the server's ``wsgi.file_wrapper`` made.

    A wrapper that is a class (gunicorn's, waitress's, wsgiref's) makes
    objects of its type; one that is not (uWSGI's, a built-in function) hands
    back the file it was given, so a response with ``read`` is taken for it.
    """
    return file_wrapper is not None and (
        type(response) is file_wrapper
        or (type(file_wrapper) is not type and hasattr(response, "read"))
    )


def _bytes_in_file(response: Any, whole: bool) -> int | None:
    """The bytes a server sends of the file behind ``response`` (the server's
    wrapper, or the file itself): the whole file's size, or (``whole`` False)
    its size past the file's position, as gunicorn works it out for
    ``sendfile``; None when it is no regular file and cannot seek.

    A file in memory (``io.BytesIO``) has no descriptor, but it seeks, and
    waitress sizes it so, past its position, to declare its length: it is
    measured the same way, and so goes out unwrapped as well. Wrapped, it
    went out chunked. (A ``SpooledTemporaryFile`` still in memory gives a
    descriptor when asked, rolling itself over to disk first.)
    """
    for name in ("filelike", "file"):  # gunicorn's and wsgiref's; waitress's
        inner = getattr(response, name, None)
        if inner is not None:
            response = inner
            break
    try:
        descriptor = response.fileno()
    except (AttributeError, OSError, ValueError, TypeError):
        return _bytes_by_seeking(response)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            return None
        if whole:
            return int(status.st_size)
        return max(status.st_size - os.lseek(descriptor, 0, os.SEEK_CUR), 0)
    except (OSError, ValueError, TypeError):
        return None


def _bytes_by_seeking(file: Any) -> int | None:
    """The bytes of a file without a descriptor past its position (what a
    server that reads it sends), found by seeking to its end and back; None
    when it cannot seek (a pipe, a generator's reader), or says anything odd."""
    try:
        if not file.seekable():
            return None
        position = file.tell()
        try:
            end = file.seek(0, os.SEEK_END)
        finally:
            file.seek(position)  # where the server starts reading, whatever happened
    except Exception:  # no seekable(), or a seek that fails: not ours to size
        return None
    if type(position) is not int or type(end) is not int:
        return None
    return max(end - position, 0)


class CountedInput:
    """``wsgi.input`` of a request that declared no length (a chunked upload),
    counting the bytes the app reads of it.

    Why only then: a declared ``Content-Length`` is the body's size, read or
    not, at no cost per request; without one, reading is the only measure.
    """

    __slots__ = ("_stream", "bytes_read")

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.bytes_read = 0

    def read(self, *args: Any, **kwargs: Any) -> bytes:
        data: bytes = self._stream.read(*args, **kwargs)
        self.bytes_read += len(data)
        return data

    def readline(self, *args: Any, **kwargs: Any) -> bytes:
        line: bytes = self._stream.readline(*args, **kwargs)
        self.bytes_read += len(line)
        return line

    def readlines(self, *args: Any, **kwargs: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*args, **kwargs)
        self.bytes_read += sum(map(len, lines))
        return lines

    def readinto(self, buffer: Any) -> int:
        """What Werkzeug's ``LimitedStream`` reads with (Flask's
        ``MAX_CONTENT_LENGTH``): counted too, whether the server's stream
        has ``readinto`` or only ``read``."""
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            count = readinto(buffer) or 0
        else:
            data = self._stream.read(len(buffer))
            count = len(data)
            buffer[:count] = data
        self.bytes_read += count
        return int(count)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def __getattr__(self, name: str) -> Any:  # what else the server's stream offers
        # Not the stream's own protocol (``__getstate__``: before Python 3.11 a
        # copy took the stream's state for its own), nor ``_stream`` while a
        # copy is being made and has none yet.
        if name == "_stream" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._stream, name)


class CountedInputWith(CountedInput):
    """A :class:`CountedInput` of a stream that takes ``with`` (Werkzeug's, for
    a chunked upload), as that stream does: it closes the stream at the end.
    Only for such a stream: of one that does not (gunicorn's), ``with`` fails
    as it did, and ``hasattr(stream, "__enter__")`` still says so."""

    __slots__ = ()

    def __enter__(self) -> CountedInputWith:
        self._stream.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        return self._stream.__exit__(*exc_info)


def count_what_is_read(environ: dict[str, Any]) -> None:
    """Count what the app reads of ``wsgi.input``: for a request without a
    declared length, whose size nothing else tells."""
    stream = environ.get("wsgi.input")
    if stream is not None and not isinstance(stream, CountedInput):
        counted = CountedInputWith if hasattr(type(stream), "__enter__") else CountedInput
        environ["wsgi.input"] = counted(stream)


def measure_iterable(
    telemetry: Telemetry,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    iterable: Iterable[bytes],
    start: float,
    status: int,
    route: Any,
    declared_length: int | None = None,
    headers: Iterable[tuple[str, str]] | None = None,
) -> Iterable[bytes]:
    """Hand the server ``iterable`` counted, recorded at its last byte or ``close()``.

    For a framework integration that learnt status and route itself and has
    only a streamed body left to measure; ``declared_length`` is the body's
    ``Content-Length``, counted if the server sends the body itself (see
    :meth:`_Measured.hand_over`), and ``headers`` the response's, read if no
    byte passes (see :func:`length_sent_by_front_server`).
    """
    measured = _Measured(telemetry, environ, start_response)
    measured.start = start
    measured.status = status
    measured.route = route
    if headers is not None:
        measured.headers = headers
    return measured.hand_over(iterable, declared_length)  # type: ignore[no-any-return]


def record_request(
    telemetry: Telemetry,
    environ: dict[str, Any],
    route: Any,
    status: int,
    seconds: float,
    response_bytes: int,
) -> None:
    """Queue one finished WSGI request; never raises.

    ``route`` is the template, None when the framework's router matched
    nothing, or :data:`UNKNOWN_ROUTE` when no router we know saw the request.
    """
    try:
        if route is UNKNOWN_ROUTE:  # no router told the request: ask the hooks
            route = told_route(environ, status)
        if route is UNKNOWN_ROUTE:  # no router we know: anonymize; a 404 is unmatched
            route = telemetry.route_for_unrouted(
                environ.get("PATH_INFO", ""),
                environ.get("QUERY_STRING", ""),
                status != 404,
            )
        elif route is None:  # the router matched nothing
            route = telemetry.route_for_unrouted(environ.get("PATH_INFO", ""), "", False)
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in KNOWN_METHODS:
            method = OTHER_METHOD
        length = environ.get("CONTENT_LENGTH")
        if length:
            request_bytes = parse_content_length(length)
        elif "HTTP_TRANSFER_ENCODING" not in environ:  # most requests: no body
            request_bytes = 0
        else:  # a chunked body, of any method (a search API's GET): what the app read
            stream = environ.get("wsgi.input")
            request_bytes = stream.bytes_read if isinstance(stream, CountedInput) else 0
        if method == "HEAD":  # a server sends no body in answer to HEAD
            response_bytes = 0
        request = (method, route, status, seconds, request_bytes, response_bytes)
        queue = telemetry.queue
        if queue is not None:  # what Recorder.record does, without its call
            queue.append(request)
            if len(queue) >= PENDING_LIMIT:
                telemetry.recorder.aggregate_pending()
        else:
            telemetry.record(*request, environ.get("wsgi.url_scheme", "http"))
    except Exception as error:  # never let telemetry break a response
        telemetry.internal_error(error)
