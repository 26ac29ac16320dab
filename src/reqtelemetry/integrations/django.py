"""Django middleware, for WSGI and ASGI Django alike.

Add ``"reqtelemetry.django.TelemetryMiddleware"`` at the top of
``MIDDLEWARE`` and put the options in ``settings.REQTELEMETRY`` (a dict of
:class:`~reqtelemetry.config.Config` fields). The route template is Django's
own ``request.resolver_match.route``, which already joins the prefixes of
``include()``; requests that resolve to no URL pattern count as unmatched.
Localized URL patterns are the exception: Django builds that route in the
active language, so ``i18n_patterns`` and ``gettext_lazy`` routes are keyed
from the matched patterns instead, with :data:`LANGUAGE_PREFIX` for the
language and translated routes in ``settings.LANGUAGE_CODE``.
Streaming responses are measured to their last chunk by wrapping
``streaming_content`` (sync or async, as the response has it) in an iterator
whose ``close()`` records the request if nothing did before. A ``FileResponse``
of a file keeps its body, so that a WSGI server can still send the file with
its ``wsgi.file_wrapper``: it is recorded when the response is closed, with the
length Django declared in ``Content-Length`` as its size.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from time import perf_counter
from typing import Any
from urllib.parse import urlsplit

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
except ImportError as missing:  # asgiref comes with Django: say which one is missing
    raise ImportError(
        "reqtelemetry's Django integration needs Django: pip install 'reqtelemetry[django]'",
        name=missing.name,
    ) from missing

from ..recorder import PENDING_LIMIT
from ..telemetry import (
    CLIENT_CLOSED_STATUS,
    KNOWN_METHODS,
    LANGUAGE_PREFIX,
    MEASURED_KEY,
    OTHER_METHOD,
    Telemetry,
    marked_by,
    parse_content_length,
    take_over,
)

#: Bounds each template cache. Keys come from the URLconf, not from requests,
#: so this is never reached in practice; past it, templates are worked out
#: again on each request instead of growing memory.
_TEMPLATE_CACHE_LIMIT = 4096
#: The longest path of a cached page whose key is remembered (see
#: ``TelemetryMiddleware._route_of_cached_page``).
_CACHED_PAGE_PATH_LIMIT = 256

logger = logging.getLogger("reqtelemetry")
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
            if instance is not None and options:
                # They would be ignored: the instance has its options already.
                from django.core.exceptions import ImproperlyConfigured

                raise ImproperlyConfigured(
                    "settings.REQTELEMETRY gives a 'telemetry' instance and other keys "
                    f"({', '.join(sorted(map(str, options)))}), which it would ignore: "
                    "pass those to the Telemetry(...) you build instead"
                )
            _shared = instance if instance is not None else Telemetry(**options)
        return _shared


def _existing_telemetry() -> Telemetry | None:
    """The shared instance if one was built; None, without building one."""
    with _shared_lock:
        return _shared


def reset_telemetry() -> None:
    """Forget the shared instance (for tests that change settings)."""
    global _shared
    with _shared_lock:
        _shared = None


def _never(path: str) -> bool:
    return False


#: The ``MIDDLEWARE`` lists already checked by :func:`_listed_more_than_once`.
_checked_middleware: dict[tuple[str, ...], bool] = {}
#: Set on a request the outermost instance measures, where there are several.
_MEASURED_FLAG = "_reqtelemetry_measured"


def _listed_more_than_once() -> bool:
    """Whether ``settings.MIDDLEWARE`` lists :class:`TelemetryMiddleware` more
    than once, warning (once per list) of that and of any middleware listed
    before it.

    Why: listed twice, every request was counted twice, silently. Listed
    after another middleware, the answers that one gives on its own (a
    ``SecurityMiddleware`` redirect, an ``APPEND_SLASH`` 301, a 304 of
    ``ConditionalGetMiddleware``) were missed or recorded as they were before
    it changed them: the README says to list it first, and a warning at start
    says so where it is not. Checked once per list, when a chain is built.
    """
    from django.conf import settings
    from django.utils.module_loading import import_string

    listed = tuple(str(entry) for entry in (getattr(settings, "MIDDLEWARE", None) or ()))
    known = _checked_middleware.get(listed)
    if known is not None:
        return known
    ours = []
    for position, entry in enumerate(listed):
        try:
            found = import_string(entry)
        except Exception:  # Django itself says what is wrong with it
            continue
        if isinstance(found, type) and issubclass(found, TelemetryMiddleware):
            ours.append(position)
    if len(ours) > 1:
        logger.warning(
            "reqtelemetry: settings.MIDDLEWARE lists TelemetryMiddleware %d times; "
            "only the first measures, so that no request counts twice: list it once",
            len(ours),
        )
    if ours and ours[0] > 0:
        logger.warning(
            "reqtelemetry: settings.MIDDLEWARE lists TelemetryMiddleware after %s; the "
            "answers those give on their own (redirects, 304s) are missed or recorded as "
            "they were before those changed them: list it first",
            ", ".join(listed[: ours[0]]),
        )
    if len(_checked_middleware) < 64:  # a handful of lists, even in tests
        _checked_middleware[listed] = len(ours) > 1
    return len(ours) > 1


def _take_over(request: Any, telemetry: Telemetry) -> bool:
    """Take ``request`` over from a middleware of ``telemetry`` around the
    Django app (a ``WSGIMiddleware`` or an ``ASGIMiddleware``, whose mark is in
    the environ, ``request.META`` under WSGI, or the scope), which then leaves
    it to this one: it knows the route, they do not. False where that
    middleware left the request out (see :class:`~..telemetry.ExcludedMark`):
    it goes unmeasured here too."""
    mark = request.META.get(MEASURED_KEY)
    if mark is None:
        scope = request.__dict__.get("scope")  # under ASGI
        if scope is None:
            return True
        mark = scope.get(MEASURED_KEY)
        if mark is None:
            return True
    if marked_by(mark, telemetry) and mark.excluded:
        return False
    take_over(mark, telemetry)
    return True


def _measured_before(request: Any) -> bool:
    """Whether an outer :class:`TelemetryMiddleware` measures ``request``; marks it if not."""
    if getattr(request, _MEASURED_FLAG, False):
        return True
    setattr(request, _MEASURED_FLAG, True)
    return False


def _body_size(response: Any) -> int:
    """The size of a buffered response's body, without joining its chunks.

    Why: ``len(response.content)`` joins them into one more copy of the
    body. A response written in many pieces (``csv.writer`` into an
    ``HttpResponse``: 500,000 rows, 15 MB) took 36 ms and 55 MB more per
    request that way; a server iterates the chunks and never joins them.
    """
    chunks = getattr(response, "_container", None)  # where HttpResponse keeps them
    if type(chunks) is list:
        return sum(map(len, chunks))
    return len(response.content)


def _spooled_body_size(request: Any) -> int:
    """The size of a body Django holds whole, 0 for one it does not.

    Why: a chunked upload declares no length. Django's ASGI handler reads the
    whole body into a spooled file before the view runs (its ``_stream``),
    whose size is the body's; under WSGI Django reads no body without a
    declared length at all, and its stream cannot seek (0).
    """
    stream = getattr(request, "_stream", None)
    try:
        position = stream.tell()  # type: ignore[union-attr]
        size = stream.seek(0, 2)  # type: ignore[union-attr]
        stream.seek(position)  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):  # no file, or closed
        return 0
    return size if type(size) is int else 0


def _framed_by_protocol(request: Any) -> bool:
    """Whether ``request`` came over HTTP/2 or HTTP/3 (under ASGI), whose
    bodies need declare no length.

    Why: those protocols frame a body themselves and forbid
    ``Transfer-Encoding``, so an upload that declares no ``Content-Length``
    (a streamed one: ``curl -T -``, ``fetch()`` with a stream body) has no
    chunked header either. Django's ASGI handler reads it whole all the same,
    and it counted 0 bytes.
    """
    scope = request.__dict__.get("scope")  # under ASGI only
    return scope is not None and scope.get("http_version") in ("2", "3")


def _template(route: str) -> str:
    """A route as a key: a top-level ``re_path`` keeps its ``^`` (Django drops
    it from nested ones), so it is dropped here too, and all keys start with ``/``."""
    return "/" + route.lstrip("^/")


def _joined(parts: Iterable[str]) -> str:
    """Joins pattern strings as Django joins ``resolver_match.route``: every
    ``^`` but a leading one is dropped, so that the result can be compared to it."""
    route = ""
    for part in parts:
        route = route + part.removeprefix("^") if route else part
    return route


def _matched_chain(match: Any) -> tuple[Any, ...] | None:
    """The URL patterns the request went through, outermost first.

    Django's resolver lists every pattern it tried in ``tried``, the matched
    chain last; ``None`` when a resolver (a custom one) left that out.
    """
    tried = getattr(match, "tried", None)
    if not tried:
        return None
    chain = tuple(tried[-1])
    return chain or None


def _is_localized(chain: tuple[Any, ...]) -> bool:
    """Whether the chain's route text depends on the active language: an
    ``i18n_patterns`` prefix, or a route given as a lazy translation (Django
    itself tells those apart by their not being ``str``)."""
    from django.urls import LocalePrefixPattern

    for node in chain:
        pattern = getattr(node, "pattern", None)
        if isinstance(pattern, LocalePrefixPattern):
            return True
        for raw in (getattr(pattern, "_route", None), getattr(pattern, "_regex", None)):
            if raw is not None and not isinstance(raw, str):
                return True
    return False


def _is_foreign(pattern: Any) -> bool:
    """Whether a URL pattern is of a class other than Django's own.

    Why: such a class may read differently per request. django-tenants'
    subfolder mode routes every request through a ``TenantPrefixPattern``
    whose text is the current tenant's subfolder (``clients/acme-corp/``):
    Django's route text then held the tenant's name, and each tenant's
    requests were keyed apart, by name. Its text is never read here (that
    one queries the database for it).
    """
    from django.urls import LocalePrefixPattern
    from django.urls.resolvers import RegexPattern, RoutePattern

    return not isinstance(pattern, (RoutePattern, RegexPattern, LocalePrefixPattern))


def _by_foreign_class(chain: tuple[Any, ...]) -> tuple[Any, ...]:
    """``chain`` as a cache key: a node whose pattern is of another class
    (:func:`_is_foreign`) by that class, which is all its key is made of.

    Why: django-tenants' subfolder middleware clears Django's URL caches at
    every request, and its URLconf then wraps the routes in a new
    ``URLResolver(TenantPrefixPattern(), ...)``: cached by that node, each
    request added a chain, and each kept a resolver with its reverse
    dictionaries alive (200 kB a request for 300 routes) up to the cache's
    bound. A chain of Django's own patterns is its own key.
    """
    return tuple(type(node.pattern) if _is_foreign(node.pattern) else node for node in chain)


def _localized_template(chain: tuple[Any, ...], route: str) -> str | None:
    """One template for all languages: the language prefix as
    :data:`LANGUAGE_PREFIX`, each translated route as it reads in
    ``settings.LANGUAGE_CODE`` (as written in the URLconf, unless the default
    language has a catalog of its own for it).

    ``None`` when the chain, read in the active language, is not the route
    Django matched: then the chain cannot be trusted to be the request's.
    """
    from django.conf import settings
    from django.urls import LocalePrefixPattern
    from django.utils import translation

    foreign = [_is_foreign(node.pattern) for node in chain]
    if not any(foreign) and _joined(str(node.pattern) for node in chain) != route:
        return None
    last = len(chain) - 1
    with translation.override(settings.LANGUAGE_CODE):
        parts = [
            f"{LANGUAGE_PREFIX}/"
            if isinstance(node.pattern, LocalePrefixPattern)
            # A pattern of another class, by its class's name (see _is_foreign).
            else f"<{type(node.pattern).__name__}>" + ("/" if position < last else "")
            if foreign[position]
            else str(node.pattern)
            for position, node in enumerate(chain)
        ]
    return _template(_joined(parts))


def _remember(cache: dict[Any, str], key: Any, template: str) -> None:
    if len(cache) < _TEMPLATE_CACHE_LIMIT:
        cache[key] = template


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
        # Django's route text -> key, for routes that read the same in every
        # language: the common case, one dict lookup per request.
        self._plain_templates: dict[str, str] = {}
        # Matched chain of URL patterns -> key, for localized ones.
        self._localized_templates: dict[tuple[Any, ...], str] = {}
        # (URLconf, path) of a page the cache answered -> its key, or None
        # (see _route_of_cached_page). Raw paths: in memory only.
        self._cached_page_routes: dict[tuple[Any, str], str | None] = {}
        excluded = self.telemetry.excluded
        self._is_excluded = excluded if excluded is not None else _never
        self._listed_twice = _listed_more_than_once()
        from django.conf import settings

        self.telemetry.note_framework("django")
        if getattr(settings, "DEBUG", False):
            self.telemetry.note_development("Django DEBUG")
        try:  # the languages of i18n_patterns' prefixes, for exclusions written with one
            self.telemetry.note_language_codes(
                str(language[0]) for language in getattr(settings, "LANGUAGES", ())
            )
        except Exception as error:  # malformed settings: exclusions as written
            self.telemetry.internal_error(error)
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self.__acall__(request)
        if self._is_excluded(request.path_info) or (
            self._listed_twice and _measured_before(request)
        ):
            return self.get_response(request)
        if not _take_over(request, self.telemetry):
            return self.get_response(request)
        start = perf_counter()
        try:
            response = self.get_response(request)
        except asyncio.CancelledError:
            # Sync mode under ASGI too: a sync-only middleware after this one
            # puts the chain in a worker thread, and the cancellation Django
            # sends when the client disconnects comes up through it.
            self._record(request, CLIENT_CLOSED_STATUS, start, perf_counter(), 0)
            raise
        except BaseException:
            self._record(request, 500, start, perf_counter(), 0)
            raise
        return self._observe(request, response, start)

    async def __acall__(self, request: Any) -> Any:
        if self._is_excluded(request.path_info) or (
            self._listed_twice and _measured_before(request)
        ):
            return await self.get_response(request)
        if not _take_over(request, self.telemetry):
            return await self.get_response(request)
        start = perf_counter()
        try:
            response = await self.get_response(request)
        except asyncio.CancelledError:
            # Django cancels the request's task when the client disconnects.
            self._record(request, CLIENT_CLOSED_STATUS, start, perf_counter(), 0)
            raise
        except BaseException:
            self._record(request, 500, start, perf_counter(), 0)
            raise
        return self._observe(request, response, start)

    def _observe(self, request: Any, response: Any, start: float) -> Any:
        try:
            if response.streaming:
                status = response.status_code
                if (
                    getattr(response, "file_to_stream", None) is not None
                    and response.has_header("Content-Length")
                    and request.META.get("wsgi.file_wrapper") is not None
                ):
                    self._record_at_close(request, response, status, start)
                elif getattr(response, "is_async", False):
                    content = aiter(response.streaming_content)
                    response.streaming_content = _MeasuredAsyncStream(
                        self, request, status, start, content
                    )
                else:
                    content = iter(response.streaming_content)
                    response.streaming_content = _MeasuredStream(
                        self, request, status, start, content
                    )
            else:
                self._record(
                    request,
                    response.status_code,
                    start,
                    perf_counter(),
                    _body_size(response),
                    response,
                )
        except Exception as error:  # never let telemetry break a response
            self.telemetry.internal_error(error)
        return response

    def _record_at_close(self, request: Any, response: Any, status: int, start: float) -> None:
        """A ``FileResponse`` of a file, served under WSGI with a declared length:
        its body is left alone, so that Django's WSGI handler can still give the
        file to the server's ``wsgi.file_wrapper`` (gunicorn sends that with
        ``sendfile()``; wrapping the body would copy every byte through Python).
        It is recorded when the response is closed, which the server does when
        the file has gone out, with the length Django declared in
        ``Content-Length``: with ``sendfile()`` no byte passes here. Under ASGI,
        or without a declared length, the body is counted as it passes instead.
        """
        size = parse_content_length(response.get("Content-Length"))

        def record() -> None:
            self._record(request, status, start, perf_counter(), size)

        # Run, then forgotten, by the response's close() (Django >= 3.0): the
        # WSGI handler points the file's close() at the response's, and
        # servers close the file wrapper.
        response._resource_closers.append(record)

    def _template_of(self, match: Any) -> str:
        """The key of a route met for the first time, or of a localized one.

        Django's route text is the key unless the matched patterns are
        localized: in 99 languages one endpoint would be 99 keys, enough for a
        crawler to fill ``max_keys`` with a dozen endpoints. A localized
        chain's text differs by language, so its key is cached by the chain
        instead; only those requests pay for reading the chain again. If
        anything about the chain is unexpected, Django's route text stands.

        A plain chain's text is cached by the text itself. Should a localized
        chain produce the very same text (a literal ``path("fr/about/")`` next
        to ``i18n_patterns``), once that literal route has been seen the
        localized request is keyed as it: a template the app has anyway.
        """
        route = match.route
        plain = _template(route)
        try:
            chain = _matched_chain(match)
            if chain is not None:
                template = self._localized_templates.get(chain)
                if template is not None:
                    return template
            if chain is None or not (
                _is_localized(chain) or any(_is_foreign(node.pattern) for node in chain)
            ):
                _remember(self._plain_templates, route, plain)
                return plain
            key = _by_foreign_class(chain)
            template = self._localized_templates.get(key)
            if template is not None:
                return template
            template = _localized_template(chain, route)
        except Exception:  # an unforeseen resolver: Django's own route text
            return plain
        if template is None:
            return plain
        _remember(self._localized_templates, key, template)
        return template

    def _route_resolved_anyway(self, request: Any, status: int, response: Any = None) -> str | None:
        """The key of the route a request answered before URL resolution is
        for (see :func:`_resolved_anyway`); None where no route takes it.

        Read in the language it was resolved in: a localized chain is checked
        against the route text Django matched, which reads so only then.
        """
        found = _resolved_anyway(request, status, response)
        if found is None:
            return None
        match, language, target = found
        if target != request.path_info and self._is_excluded(target):
            # A redirect into an excluded page (APPEND_SLASH's, LocaleMiddleware's)
            # is excluded by the path it leads to, as the page is. Its template
            # may not say so: a ``re_path``'s is its regex (``/healthz/$``, an
            # escaped secret URL), which an exclusion written as a path never matched.
            return _EXCLUDED_TARGET
        if match.route is None:
            return None
        route = self._plain_templates.get(match.route)
        if route is not None:
            return route
        if language is None:
            return self._template_of(match)
        from django.utils import translation

        with translation.override(language):
            return self._template_of(match)

    def _route_of_cached_page(self, request: Any) -> str | None:
        """The key of a page ``FetchFromCacheMiddleware`` answered from the
        cache (before URL resolution); None where no route takes its path.

        Why: a site cached per page (``UpdateCacheMiddleware`` ...
        ``FetchFromCacheMiddleware``) answers every hit before Django resolves
        the URL, and the hits were ``<unmatched>``, or a key per id with
        ``group_unmatched`` off, filling ``max_keys``. Django marks a hit
        (``request._cache_update_cache`` is False; a miss is resolved as any
        request is). The path is resolved as the router would have, once per
        path: a cached page's path comes back, which is why it was cached.
        At most :data:`_TEMPLATE_CACHE_LIMIT` paths of at most
        :data:`_CACHED_PAGE_PATH_LIMIT` ASCII characters are remembered
        (emptied when full; a longer one, or one outside ASCII, is resolved
        each time).
        """
        path = request.path_info
        key = (getattr(request, "urlconf", None), path)
        cache = self._cached_page_routes
        if key in cache:
            return cache[key]
        route = self._route_resolved_anyway(request, 200)
        # ASCII only: CPython stores a path outside it at up to 4 bytes a
        # character, and the bound is in bytes.
        if len(path) <= _CACHED_PAGE_PATH_LIMIT and path.isascii():
            if len(cache) >= _TEMPLATE_CACHE_LIMIT:
                cache.clear()
            cache[key] = route
        return route

    def _record(
        self,
        request: Any,
        status: int,
        start: float,
        end: float,
        response_bytes: int,
        response: Any = None,
    ) -> None:
        telemetry = self.telemetry
        try:
            route: str | None = None
            match = getattr(request, "resolver_match", None)
            if match is None:
                if status in _REDIRECTS or (request.method == "OPTIONS" and status != 404):
                    # Not a 404: Django resolved that one and found nothing.
                    route = self._route_resolved_anyway(request, status, response)
                    if route is _EXCLUDED_TARGET:
                        return
                elif (
                    getattr(request, "_cache_update_cache", None) is False
                    and request.method in _CACHED_METHODS
                ):
                    # A hit: the cache middleware marks every other method so
                    # too, and those went on to URL resolution (a 404 among
                    # them must not be resolved again).
                    route = self._route_of_cached_page(request)
            if route is None:
                if match is not None and match.route is not None:
                    route = self._plain_templates.get(match.route)
                    if route is None:
                        route = self._template_of(match)
                else:
                    route = telemetry.route_for_unrouted(
                        request.path_info, request.META.get("QUERY_STRING", ""), False
                    )
            method = request.method
            if method not in KNOWN_METHODS:
                method = OTHER_METHOD
            meta = request.META
            length = meta.get("CONTENT_LENGTH")
            if length:
                request_bytes = parse_content_length(length)
            elif "HTTP_TRANSFER_ENCODING" in meta or _framed_by_protocol(request):
                # A body that declares no length: chunked, or over HTTP/2 or 3.
                request_bytes = _spooled_body_size(request)
            else:
                request_bytes = 0
            if method == "HEAD":  # no body goes out in answer to HEAD
                response_bytes = 0
            measured = (method, route, status, end - start, request_bytes, response_bytes)
            queue = telemetry.queue
            if queue is not None:  # what Recorder.record does, without its call
                queue.append(measured)
                if len(queue) >= PENDING_LIMIT:
                    telemetry.recorder.aggregate_pending()
            else:
                # Only OpenTelemetry's instruments read the scheme, and Django's
                # ``request.scheme`` costs about a third of this method.
                telemetry.record(*measured, request.scheme)
            if self._first_request:
                self._first_request = False
                telemetry.note_first_request(request.META.get("HTTP_HOST"))
        except Exception as error:  # never let telemetry break a response
            telemetry.internal_error(error)


#: The methods whose answers Django's cache middleware keeps and serves.
_CACHED_METHODS = frozenset({"GET", "HEAD"})
#: The redirects middleware answers before URL resolution for a route's sake.
_REDIRECTS = frozenset({301, 302, 307, 308})
#: What :meth:`TelemetryMiddleware._route_resolved_anyway` gives for an answer
#: that leads to an excluded path: it is not recorded (no template starts with "<").
_EXCLUDED_TARGET = "<excluded>"


def _resolved_anyway(
    request: Any, status: int, response: Any = None
) -> tuple[Any, str | None, str] | None:
    """The match of the route a request answered before URL resolution is
    for, the language it was resolved in (None: the active one) and the path
    that resolved to it; None where no route takes it.

    Middleware answers some requests before Django resolves them: a CORS
    preflight (django-cors-headers answers in ``process_request``),
    ``CommonMiddleware``'s ``APPEND_SLASH`` redirect to the route with its
    slash, and ``LocaleMiddleware``'s redirect to the same path under a
    language prefix. They were
    ``<unmatched>``, or a key per id with ``group_unmatched`` off, where
    Flask's and Starlette's are keyed by their route. Only these answers
    (redirects and ``OPTIONS``, and pages the cache answered, once per path)
    pay for resolving: not a 404, nor the files a WhiteNoise serves, each of
    which cost a walk of the whole URLconf.

    Each candidate is resolved in the language LocaleMiddleware would give
    it (see :func:`_language_of`): an ``i18n_patterns`` route matches only
    the active language's prefix, and middleware that answers before
    LocaleMiddleware (SecurityMiddleware's redirect to HTTPS, a preflight)
    leaves active whatever language the thread's last request had, or the
    default under ASGI: ``/fr/about/2/`` was unmatched.
    """
    from django.urls import Resolver404, resolve
    from django.utils import translation

    path = request.path_info
    candidates = [path]
    if status in _REDIRECTS:  # APPEND_SLASH: the route has the slash the path lacks
        candidates.append(path[:-1] if path.endswith("/") else path + "/")
        target = _local_target(request, response)
        if target is not None and target.partition("/")[2].partition("/")[2] in (
            path[1:],
            path[1:] + "/",  # LocaleMiddleware appends the slash too (APPEND_SLASH)
        ):
            # The same path under one more leading segment: LocaleMiddleware's
            # language prefix. Any other redirect is not for its target's
            # route (an alias, a moved page), and stays unmatched as Flask's do.
            candidates.append(target)
    urlconf = getattr(request, "urlconf", None)
    for candidate in candidates:
        language = _language_of(candidate, urlconf)
        try:
            if language is None:
                return resolve(candidate, urlconf), None, candidate
            with translation.override(language):
                return resolve(candidate, urlconf), language, candidate
        except Resolver404:
            continue
    return None


def _language_of(path: str, urlconf: Any) -> str | None:
    """The language LocaleMiddleware activates for ``path``, where the path
    tells it; None where the request's own headers or cookie choose it (the
    language active now is then the one to resolve in).

    As LocaleMiddleware decides: the language of the path's prefix, else the
    default language where ``i18n_patterns`` leave it unprefixed
    (``prefix_default_language=False``).
    """
    from django.conf import settings
    from django.conf.urls.i18n import is_language_prefix_patterns_used
    from django.utils import translation

    language: str | None = translation.get_language_from_path(path)
    if language is not None:
        return language
    used, prefixed_default = is_language_prefix_patterns_used(urlconf or settings.ROOT_URLCONF)
    if used and not prefixed_default:
        return str(settings.LANGUAGE_CODE)
    return None


def _local_target(request: Any, response: Any) -> str | None:
    """The path on this site a redirect sends to, as ``path_info`` reads; None otherwise."""
    location = response.get("Location") if response is not None else None
    if not location:
        return None
    target = urlsplit(location)
    if target.netloc and target.netloc != request.META.get("HTTP_HOST"):
        return None
    script_name = request.META.get("SCRIPT_NAME", "").rstrip("/")
    path: str = target.path
    if not path.startswith(script_name + "/"):
        return None
    return path[len(script_name) :]


class _Measurement:
    """A streamed body handed on chunk by chunk, counted, and recorded exactly
    once: at its last chunk, when it fails, or at ``close()``, whichever comes
    first. Closed after some chunks but before the last, the client went away
    (499); closed before the first (a HEAD, a body the server dropped), the
    response's own status stands, as in :mod:`reqtelemetry.integrations.wsgi`.

    Why an object, not a generator: ``close()`` on a generator that never
    started does not run its ``finally``, and the request would go unrecorded.
    """

    __slots__ = (
        "content",
        "finished",
        "middleware",
        "request",
        "sent",
        "start",
        "started",
        "status",
    )

    def __init__(
        self,
        middleware: TelemetryMiddleware,
        request: Any,
        status: int,
        start: float,
        content: Any,
    ) -> None:
        self.middleware = middleware
        self.request = request
        self.status = status
        self.start = start
        self.content = content
        self.sent = 0
        self.started = False
        self.finished = False

    def close(self) -> None:
        """Called by the response's ``close()``, which every server calls.

        A HEAD's answer is complete with its headers: Django leaves its body
        for the server to drop, and a server that iterates it anyway (uWSGI,
        wsgiref, Werkzeug's) stops when the client has closed after them.
        """
        left = self.started and self.request.method != "HEAD"
        self.finish(CLIENT_CLOSED_STATUS if left else self.status)

    def cancelled(self) -> None:
        """Under ASGI, the stream cancelled because the client left: 499,
        but for a HEAD, whose answer went out whole with its headers, as at
        :meth:`close` (uvicorn drops its body, and the client closes once it
        has them)."""
        self.finish(self.status if self.request.method == "HEAD" else CLIENT_CLOSED_STATUS)

    def finish(self, status: int) -> None:
        if not self.finished:
            self.finished = True
            self.middleware._record(self.request, status, self.start, perf_counter(), self.sent)


class _MeasuredStream(_Measurement):
    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        self.started = True
        try:
            chunk: bytes = next(self.content)
        except StopIteration:
            self.finish(self.status)
            raise
        except asyncio.CancelledError:
            # Under ASGI Django consumes a sync body in a worker thread; a body
            # that awaits through async_to_sync gets the disconnect's cancellation.
            self.cancelled()
            raise
        except BaseException:
            self.finish(500)
            raise
        self.sent += len(chunk)
        return chunk


class _MeasuredAsyncStream(_Measurement):
    """The async body's twin; ``close()`` stays synchronous, as Django calls it
    from the response's ``close()``."""

    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        self.started = True
        try:
            chunk: bytes = await self.content.__anext__()
        except StopAsyncIteration:
            self.finish(self.status)
            raise
        except asyncio.CancelledError:  # the client disconnected mid-stream
            self.cancelled()
            raise
        except BaseException:
            self.finish(500)
            raise
        self.sent += len(chunk)
        return chunk


class LifespanFlush:
    """Django's ASGI application, answering ASGI lifespan events with a final flush.

    Why: Django ignores lifespan, so the last report of an ASGI Django app
    waits for ``atexit``, and uvicorn ends the process after SIGTERM (what
    ``docker stop``, Kubernetes and systemd send) in a way that skips
    ``atexit``: the last interval's requests were lost. Wrap the application
    in ``asgi.py``: ``application = LifespanFlush(get_asgi_application())``.
    The flush runs in a worker thread and is bounded by ``shutdown_timeout``.

    Wrapped around an application that answers lifespan itself (a Starlette
    app mounting Django, with startup and shutdown hooks of its own), the
    events go on to it, and the flush comes as it reports its shutdown
    complete: answered here instead, its hooks never ran (its health check
    answered 503 for ever). One that takes no lifespan (Django's handler,
    Channels' router without a lifespan application) is answered here.
    """

    def __init__(self, application: Callable[..., Any]) -> None:
        self.application = application

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.application(scope, receive, send)
            return
        if _answers_no_lifespan(self.application):
            await _answer_lifespan(receive, send)
            return
        received: list[Any] = []
        answered: list[str] = []

        async def receive_noted() -> Any:
            message = await receive()
            received.append(message)
            return message

        async def send_then_flush(message: Any) -> None:
            kind = message.get("type")
            answered.append(kind)
            if kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await _close_telemetry()
            await send(message)

        try:
            await self.application(scope, receive_noted, send_then_flush)
        except Exception:
            if not answered and not received:
                # Refused before it read anything (Channels' router without a
                # lifespan application): it takes no lifespan, as the server
                # would have said. Answered below.
                logger.info(
                    "reqtelemetry: the application takes no lifespan events; "
                    "LifespanFlush answers them"
                )
            elif not answered:
                # It read the startup and failed before answering: a startup
                # that failed. The server would have said so (and, with
                # --lifespan on, stopped); answered below, it is said here.
                logger.warning(
                    "reqtelemetry: the application's lifespan startup failed; "
                    "LifespanFlush answers the lifespan events instead",
                    exc_info=True,
                )
            elif answered == ["lifespan.startup.complete"]:
                # Started, then failed while it ran (before its shutdown): the
                # server serves on, and the final report must still go at its
                # shutdown. Said here, as the server would have said it.
                logger.warning(
                    "reqtelemetry: the application's lifespan failed after its startup; "
                    "LifespanFlush answers its shutdown",
                    exc_info=True,
                )
            else:  # its startup failed, or its shutdown: as it would have unwrapped
                raise
        if not answered:
            # It takes no lifespan (it raised, or returned, before answering
            # anything): answered here, from what it had already taken.
            await _answer_lifespan(receive, send, received)
        elif answered == ["lifespan.startup.complete"]:
            # Gone after its startup (failed, or returned without waiting for
            # the shutdown): its shutdown is answered here, with the flush.
            pending = [m for m in received if m.get("type") == "lifespan.shutdown"]
            await _answer_lifespan(receive, send, pending)


def _answers_no_lifespan(application: Any) -> bool:
    """Whether ``application`` is Django's own ASGI handler, which refuses lifespan."""
    try:
        from django.core.handlers.asgi import ASGIHandler
    except ImportError:  # pragma: no cover - this module is Django's integration
        return False
    return application is None or isinstance(application, ASGIHandler)


async def _answer_lifespan(receive: Any, send: Any, received: list[Any] | None = None) -> None:
    """Answer the lifespan events for an application that takes none: startup
    at once, shutdown after the final flush. ``received``: events already taken."""
    pending = list(received or ())
    while True:
        message = pending.pop(0) if pending else await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await _close_telemetry()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _close_telemetry() -> None:
    """The final flush, in a worker thread, bounded by ``shutdown_timeout``.

    Only of an instance the middleware built: without one (the middleware
    not listed), there is nothing to send, and building one now would
    announce telemetry as the app stops.
    """
    telemetry = _existing_telemetry()
    if telemetry is not None and telemetry.enabled:  # opted out, no thread either
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, telemetry.close)
        except Exception as error:  # never let telemetry break shutdown
            telemetry.internal_error(error)
