"""Finding the route template of a Starlette or FastAPI request after the fact.

Starlette's router records the route it picked as ``scope["route"]``; FastAPI's
nested routers (``include_router``) record the effective route, whose
``path_format`` already carries every router prefix. What neither records is
the template of the *mounts* a request went through: a mount only extends
``scope["root_path"]`` with the concrete prefix it consumed. So the template is
the route's own ``path_format``, preceded by the templates of the mounts that
consumed that prefix, found once per distinct prefix by matching the mount
routes (Starlette's public ``Mount.matches``) and cached. Apps without mounts
never reach that code.

Nothing here imports Starlette at module level: a plain ASGI app never pays for it.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any, Final

#: Distinct concrete mount prefixes remembered; only mounts with path
#: parameters ever produce more than a handful. Each at most
#: :data:`MATCHED_REQUEST_MAX_LENGTH` ASCII characters with its ``Host``.
MAX_CACHED_PREFIXES = 256
#: Requests answered before routing whose template is remembered per
#: middleware (see :class:`MatchedTemplates`): their keys hold raw paths, so
#: the cache is emptied when full.
MAX_MATCHED_REQUESTS = 4096
#: Requests whose path, ``root_path``, method and ``Host`` header together
#: are longer than this are matched each time, not remembered: 4096 keys of
#: at most 256 characters, all ASCII, is the whole of what the cache can hold.
MATCHED_REQUEST_MAX_LENGTH = 256
#: Distinct route lists (one per app whose answers before routing are
#: matched) whose shape is remembered per middleware; usually one.
MAX_MATCHED_ROUTE_LISTS = 8

Scope = MutableMapping[str, Any]


def route_path(path: str, root_path: str) -> str:
    """The path an app routes on: ``path`` without the ``root_path`` in front of it.

    ASGI servers put the prefix a proxy stripped (``uvicorn --root-path``) both
    in ``root_path`` and in front of ``path``; a mount adds what it consumed to
    ``root_path`` alone. Starlette's routers match what is left after taking
    ``root_path`` off (``starlette._utils.get_route_path``), and so does this,
    rule for rule, so that exclusions and re-matching see the path the router
    saw, as ``PATH_INFO`` is under WSGI. Plain string work, no Starlette import.
    """
    if not root_path or not path.startswith(root_path):
        return path
    if len(path) == len(root_path):
        return ""
    if path[len(root_path)] == "/":
        return path[len(root_path) :]
    return path


class RouteTemplates:
    """Per-middleware cache from a concrete mount prefix to its template.

    ``app`` is what the middleware wraps. Its router, not ``scope["router"]``,
    is where mounts are followed from: Starlette sets ``scope["router"]`` only
    when it is missing, so in an app mounted inside another it names the outer
    app's router, whose routes the inner app's prefixes are not found in.
    """

    __slots__ = ("_app", "_app_root_path", "_matched", "_mount_prefixes", "_own_router")

    def __init__(self, app: Any = None) -> None:
        self._app = app
        self._matched = MatchedTemplates()
        self._mount_prefixes: dict[tuple[int, str, str], _Mounted | _ByHost] = {}
        #: The router of ``app``, found on the first request that needs it:
        #: ``_UNRESOLVED`` until then, None when ``app`` leads to no router.
        self._own_router: Any = _UNRESOLVED
        #: The ``root_path`` the wrapped app puts in place of the server's
        #: (``FastAPI(root_path=...)`` wrapped from outside), else None.
        self._app_root_path: str | None = None

    def template(
        self, scope: Scope, entry_root_path: str, status: int = 200
    ) -> str | _Untemplated | None:
        """The full route template, None when the router matched no route, or
        :data:`UNTEMPLATED` when the route that took the request has no template."""
        route = scope.get("route")
        if route is None:
            # FastAPI records ``scope["route"]`` only for its own API routes, not
            # for plain routes (``/docs``, ``add_route``) nor for mounts.
            return self._unrecorded(scope, entry_root_path, scope.get("root_path", ""), status)
        path_format: str | None = None
        fastapi_scope = scope.get("fastapi")
        if fastapi_scope is not None:
            context = fastapi_scope.get("effective_route_context")
            if context is not None:
                # Plain attribute access (FastAPI's own code reads it so):
                # getattr with a default costs several times more per request.
                try:
                    if context.original_route is route:
                        path_format = context.path_format
                except AttributeError:
                    pass
        if path_format is None:
            # Plain attribute access, not getattr(route, name, None): with a
            # default, getattr costs several times more on every request.
            try:
                path_format = route.path_format
            except AttributeError:
                if _is_mount_or_host(route):
                    # A ``Host`` (no path of its own) whose app's router recorded
                    # no route of its own: a FastAPI plain route, a redirect to
                    # a route's trailing slash.
                    root_path = scope.get("root_path", "")
                    return self._unrecorded(scope, entry_root_path, root_path, status)
                return None
            if path_format is None:
                return None
        root_path = scope.get("root_path", "")
        if root_path == entry_root_path:
            return path_format
        entry_root_path = self._routed_from(scope, entry_root_path)
        if root_path == entry_root_path:
            return path_format
        if _is_mount(route):
            # The last route recorded is a mount: a non-router app (static
            # files, a WSGI app), or a router that matched nothing (Starlette)
            # or whose route it did not record (FastAPI).
            return self._unrecorded(scope, entry_root_path, root_path, status)
        mounted = self._mount_prefix(scope, entry_root_path, root_path)
        if mounted is None:
            return None
        return mounted[0] + path_format

    def nested_template(
        self, scope: Scope, entry_root_path: str, status: int = 200
    ) -> str | _Untemplated | None:
        """:meth:`template` for an app that is itself mounted in another app's router.

        The outer router recorded the ``Mount`` (or ``Host``) that led here in
        ``scope["route"]`` before this app ran. Where this app's router
        records nothing over it (it matched nothing, or FastAPI's plain routes),
        that outer route is still there and is no route of this app. The
        middleware switches to this method at its first request when it finds
        a router already at work, so that an app mounted nowhere never pays for
        the check.
        """
        route = scope.get("route")
        root_path = scope.get("root_path", "")
        outer = route is not None and root_path == entry_root_path and _is_mount_or_host(route)
        if (route is None or outer) and self._own() is None:
            # No router of its own that recorded a route (a route-less app, or
            # one behind a wrapper that hides it): the outer router's routes are
            # not its own, and matched against them gave another app's templates.
            return None
        if outer:
            return self._unrecorded(scope, entry_root_path, root_path, status)
        return self.template(scope, entry_root_path, status)

    def has_root_mount(self) -> bool:
        """Whether the wrapped app's router mounts an app with routes at its
        root (``Mount("", app=router)``): the middleware then keys its
        requests with :meth:`root_mounted_template`, and no other app pays
        for the check."""
        return any(_is_root_mount_of_a_router(route) for route in self.own_routes() or ())

    def root_mounted_template(
        self, scope: Scope, entry_root_path: str, status: int = 200
    ) -> str | _Untemplated | None:
        """:meth:`template` for an app that mounts another at its root.

        Such a mount leaves ``root_path`` as it was, so :meth:`template` took
        it for a route of its own, and its catch-all format (``/{path}``)
        keyed every request its app's router did not record (a 404, a slash
        redirect, FastAPI's plain routes such as ``/docs``) alike. They are
        found as for any mount whose app recorded nothing. (An app without
        routes mounted there, ``StaticFiles``, keeps the mount's format, as
        one mounted anywhere else does.)
        """
        route = scope.get("route")
        if (
            route is not None
            and scope.get("root_path", "") == entry_root_path
            and _is_root_mount_of_a_router(route)
        ):
            return self._unrecorded(scope, entry_root_path, entry_root_path, status)
        return self.template(scope, entry_root_path, status)

    def by_matching(self, routes: Sequence[Any], scope: Scope) -> str | _Untemplated | None:
        """:func:`template_by_matching` for a request answered before routing,
        remembered per request target (see :class:`MatchedTemplates`)."""
        return self._matched.template(routes, scope)

    def own_routes(self) -> Sequence[Any] | None:
        """The routes of the app this middleware wraps, found through the
        wrappers in front of it; None when it leads to no router."""
        own = self._own()
        return None if own is None else own.routes

    def _own(self) -> Any:
        """The router of the app this middleware wraps (see :func:`_router_of`), or None."""
        own = self._own_router
        if own is _UNRESOLVED:
            own, self._app_root_path = _router_of(self._app)
            self._own_router = own
        return own

    def _router(self, scope: Scope) -> Any:
        """The router of the app this middleware wraps, else ``scope["router"]``."""
        own = self._own()
        return own if own is not None else scope.get("router")

    def _routed_from(self, scope: Scope, entry_root_path: str) -> str:
        """The ``root_path`` the wrapped app's router started from.

        The one the middleware saw on the way in, unless the app replaced it
        before routing: ``FastAPI(root_path="/api")`` does, so that wrapped
        from outside the change from ``""`` to ``"/api"`` is the app's own
        setting, not a mount to look for (none would be found, and every
        request would be ``<unmatched>``). Only runs once ``root_path`` changed.
        """
        self._router(scope)
        return self._app_root_path or entry_root_path

    def _unrecorded(
        self, scope: Scope, entry_root_path: str, root_path: str, status: int
    ) -> str | _Untemplated | None:
        """The template when the router left no (useful) ``scope["route"]``."""
        if scope.get("router") is None:
            return None  # no router saw the request (a route-less app): one dict lookup
        router = self._router(scope)
        entry_root_path = self._routed_from(scope, entry_root_path)
        if root_path == entry_root_path:
            frontend = _frontend_template(router, scope, root_path, "")
            if frontend is not None:
                return frontend
            owner, prefix, routes = router, "", getattr(router, "routes", [])
            if status == 404 and not _served_by_a_route(routes, scope):
                return None  # the top router matched nothing: don't match again
        else:
            mounted = self._mount_prefix(scope, entry_root_path, root_path)
            if mounted is None:
                return None
            prefix, last_mount = mounted
            frontend = _frontend_template(last_mount.app, scope, root_path, prefix)
            if frontend is not None:
                return frontend
            owner, routes = last_mount.app, last_mount.routes
            if not routes:
                # A mounted non-router app: the mount's own format
                # (``/static/{path}``) is the template; drop its path from the
                # prefix so that it is not counted twice.
                own = len(_mount_template(last_mount))
                return prefix[: len(prefix) - own] + last_mount.path_format  # type: ignore[no-any-return]
        template = _match_plain_route(routes, scope, root_path, prefix)
        if template is None and 300 <= status < 400:
            return _slash_redirect_template(owner, routes, scope, root_path, prefix)
        return template

    def _mount_prefix(self, scope: Scope, entry_root_path: str, root_path: str) -> _Mounted:
        """The templates of the mounts that turned ``entry_root_path`` into
        ``root_path``, and the last of them; cached by concrete prefix.

        Where a ``Host`` route stood on the way, the mounts taken depend on the
        request's ``Host`` header as well (two hosts may mount different apps
        at the same prefix), and the answer is cached per header under the
        prefix. Apps without hosts never read the header.
        """
        router = self._router(scope)
        if router is None:
            return None
        key = (id(router), entry_root_path, root_path)
        cache = self._mount_prefixes
        cached = cache.get(key, _MISSING)
        if isinstance(cached, _ByHost):
            host = _host_header(scope)
            found = cached.get(host, _MISSING)
            if found is not _MISSING:
                return found  # type: ignore[no-any-return]
        elif cached is not _MISSING:
            return cached  # type: ignore[no-any-return]
        found, by_host = _walk_mounts(router, scope, entry_root_path, root_path)
        host = _host_header(scope) if by_host else None
        if not _rememberable(entry_root_path, root_path, host):
            return found  # walked each time: a client chooses these, and their length
        if len(cache) >= MAX_CACHED_PREFIXES:
            cache.clear()
        if by_host:
            hosts = cache.get(key)
            if not isinstance(hosts, _ByHost) or len(hosts) >= MAX_CACHED_HOSTS:
                hosts = cache[key] = _ByHost()
            hosts[host] = found
        else:
            cache[key] = found
        return found


def _rememberable(entry_root_path: str, root_path: str, host: bytes | None) -> bool:
    """Whether a concrete mount prefix (and host) may be a key of the prefix cache.

    Why: a mount with a path parameter makes a prefix of whatever the client
    put in that segment, and the ``Host`` header is the client's too. Those
    of more than :data:`MATCHED_REQUEST_MAX_LENGTH` characters together, or
    with any outside ASCII (stored at up to 4 bytes each), are walked each
    time, as the preflight cache does, so that the cache's memory has a bound
    in bytes: 256 prefixes of a megabyte each held 256 MB.
    """
    length = len(entry_root_path) + len(root_path) + (len(host) if host is not None else 0)
    return length <= MATCHED_REQUEST_MAX_LENGTH and _all_ascii(entry_root_path, root_path, host)


def _all_ascii(*parts: str | bytes | None) -> bool:
    """Whether every part of a cache key (None: absent) is ASCII.

    Why the caches keep only such keys: CPython stores a string holding any
    character outside ASCII at up to 4 bytes a character (a path of emoji,
    decoded by the server), and their bounds are in bytes.
    """
    return all(part is None or part.isascii() for part in parts)


#: Mount templates joined, and the last mount; None when no mount accounts for a prefix.
_Mounted = tuple[str, Any] | None
#: Distinct ``Host`` headers remembered per concrete mount prefix.
MAX_CACHED_HOSTS = 32
#: A cache miss (None is a cached answer).
_MISSING: Any = object()


class _ByHost(dict[bytes | None, _Mounted]):
    """What one concrete prefix means under each ``Host`` header seen."""

    __slots__ = ()


def _host_header(scope: Scope) -> bytes | None:
    """The request's first ``Host`` header, as Starlette's ``Host`` route reads it."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return value  # type: ignore[no-any-return]
    return None


#: :attr:`RouteTemplates._own_router` before it was looked for.
_UNRESOLVED: Any = object()
#: How many wrappers deep (middleware, each holding the next as ``.app``) a router is looked for.
_WRAPPER_DEPTH = 32


def _router_of(app: Any) -> tuple[Any, str | None]:
    """The Starlette router ``app`` routes with (or None), and the ``root_path``
    the app sets in front of that router (or None).

    Followed through ``.router`` (a Starlette or FastAPI app, wrapped from
    outside) and ``.app`` (the middleware stack ``add_middleware`` builds, whose
    innermost app is the router). Runs once per middleware.

    Starlette is looked up, not imported: it is no dependency of a plain
    ASGI app's (Quart, Litestar, Django), where the import failed on every
    request and nothing was recorded; and any Starlette app imported it.
    """
    routing = sys.modules.get("starlette.routing")
    if routing is None:
        return None, None
    Router = routing.Router
    for _ in range(_WRAPPER_DEPTH):
        if isinstance(app, Router):
            return app, None
        router = getattr(app, "router", None)
        if isinstance(router, Router):
            return router, _root_path_set_by(app)
        app = getattr(app, "app", None)
        if app is None:
            break
    return None, None


def _root_path_set_by(app: Any) -> str | None:
    """``FastAPI(root_path=...)``'s prefix, which it writes over the server's on
    every request before its middleware and router run."""
    fastapi = sys.modules.get("fastapi")
    if fastapi is None or not isinstance(app, fastapi.FastAPI):
        return None
    root_path = getattr(app, "root_path", None)
    return root_path if isinstance(root_path, str) and root_path else None


def _walk_mounts(
    router: Any, scope: Scope, entry_root_path: str, target_root_path: str
) -> tuple[_Mounted, bool]:
    """Follow the mounts that turned ``entry_root_path`` into ``target_root_path``.

    Routes are tried in order, as the router tried them, and a ``Host`` that
    matches the request's headers is entered as a ``Mount`` is (it consumes no
    path), as is a router FastAPI included. The second value says whether a
    ``Host`` was tried at all: then the answer holds for this ``Host`` header
    only.
    """
    from starlette.routing import Host, Match, Mount

    routes = getattr(router, "routes", [])
    root_path = entry_root_path
    templates: list[str] = []
    last = None
    by_host = False
    probe = {
        "type": "http",
        "path": scope["path"],
        "root_path": root_path,
        "method": "GET",
        "headers": scope.get("headers", []),
    }
    while root_path != target_root_path:
        probe["root_path"] = root_path
        for route in routes:
            if isinstance(route, Mount):
                match, child_scope = route.matches(probe)
                if match is Match.FULL:
                    templates.append(_mount_template(route))
                    root_path = child_scope["root_path"]
                    routes = route.routes
                    last = route
                    break
            elif isinstance(route, Host):
                by_host = True
                if route.matches(probe)[0] is Match.FULL:
                    routes = route.routes
                    break
            else:
                # A router FastAPI included consumes no path either: the
                # mount may be one of its routes.
                included = _included_routes(route)
                if included is not None and route.matches(probe)[0] is not Match.NONE:
                    routes = included
                    break
        else:
            return None, by_host
        if not target_root_path.startswith(root_path):
            return None, by_host
    return ("".join(templates), last), by_host


#: The ``path_format`` of a ``Mount`` at the root of its router.
_ROOT_MOUNT_FORMAT = "/{path}"


def _mount_template(mount: Any) -> str:
    """A mount's own part of a template: its path as its ``path_format`` writes
    it, without the ``/{path}`` that every mount's ends in.

    Why not ``mount.path``: that keeps each parameter's convertor
    (``/t/{tenant:int}``), which the routes' own ``path_format`` drops, and
    so do FastAPI's prefixes: ``/t/{tenant:int}/items/{id}`` was one key,
    and the same app's or another deployment's routes written without the
    convertor another.
    """
    path_format = mount.path_format
    if isinstance(path_format, str) and path_format.endswith(_ROOT_MOUNT_FORMAT):
        return path_format[: -len(_ROOT_MOUNT_FORMAT)]
    return mount.path  # type: ignore[no-any-return]


def _is_root_mount_of_a_router(route: Any) -> bool:
    """Whether ``route`` mounts an app with routes of its own at the root."""
    return _is_mount(route) and route.path_format == _ROOT_MOUNT_FORMAT and bool(route.routes)


def _is_mount(route: Any) -> bool:
    from starlette.routing import Mount  # cached by the import system after the first call

    return isinstance(route, Mount)


def _is_mount_or_host(route: Any) -> bool:
    from starlette.routing import Host, Mount

    return isinstance(route, (Mount, Host))


#: Per routes list: ``id(endpoint)`` → the plain routes serving it, so a request
#: whose route the router did not record is resolved by a dict lookup, not by
#: matching every route's regex again; whether the list holds routes with
#: routes behind them (a ``Host``, a router FastAPI included), which only
#: matching through them finds; and whether it holds a route of the app's own
#: making (neither Starlette's ``Route``, ``WebSocketRoute``, ``Mount`` nor
#: ``Host``, nor a subclass); and its mounts at the root (``path == ""``).
#: Rebuilt when the list changes length.
_ENDPOINT_INDEX: dict[int, tuple[int, Any, dict[int, list[Any]], bool, bool, list[Any]]] = {}


def _endpoint_index(routes: Any) -> tuple[dict[int, list[Any]], bool, bool, list[Any]]:
    """``routes``' plain routes by ``id(endpoint)``, whether any route is a
    ``Host`` or a router FastAPI included, whether any is a custom route, and
    its mounts at the root."""
    entry = _ENDPOINT_INDEX.get(id(routes))
    if entry is None or entry[0] != len(routes) or entry[1] is not routes:
        from starlette.routing import Host, Mount, Route, WebSocketRoute

        index: dict[int, list[Any]] = {}
        for route in routes:
            if isinstance(route, Route):
                index.setdefault(id(route.endpoint), []).append(route)
        match_through = any(
            isinstance(route, Host) or _is_included_router(route) for route in routes
        )
        has_custom = any(
            not isinstance(route, (Route, WebSocketRoute, Mount, Host)) for route in routes
        )
        root_mounts = [route for route in routes if isinstance(route, Mount) and route.path == ""]
        if len(_ENDPOINT_INDEX) >= MAX_CACHED_PREFIXES:
            _ENDPOINT_INDEX.clear()
        entry = _ENDPOINT_INDEX[id(routes)] = (
            len(routes),
            routes,
            index,
            match_through,
            has_custom,
            root_mounts,
        )
    return entry[2], entry[3], entry[4], entry[5]


def _served_by_a_route(routes: Any, scope: Scope) -> bool:
    """Whether the endpoint the router left in the scope is one of ``routes``' own.

    Why: a route's handler may answer 404 itself (no such item), and a
    Starlette before 1.7 records no route for it, only its endpoint; a router
    that matched nothing leaves none (or, in an app mounted in another, the
    outer mount's). One dict lookup, so that scanners' 404s are not matched again.
    """
    endpoint = scope.get("endpoint")
    return endpoint is not None and id(endpoint) in _endpoint_index(routes)[0]


def _match_plain_route(
    routes: Any, scope: Scope, root_path: str, prefix: str
) -> str | _Untemplated | None:
    """Match the request against plain routes, as the router did (full match first).

    Where the routes hold a ``Host``, the request may have been served behind
    it, by a route of the host's app that is not in this list (FastAPI's plain
    routes, or any route under a Starlette before 1.7, record no
    ``scope["route"]``); an endpoint shared with a route of this list would
    give that route's template. Those requests are matched through the hosts,
    as the router matched them; so are requests where the list holds a router
    FastAPI included, whose plain routes are in no list of Starlette's.
    :data:`UNTEMPLATED` when the route that takes the request has no template:
    a ``Host`` in front of an app without routes, or a custom route, which a
    Starlette before 1.7 does not record either.

    Under a Starlette before 1.7 every request comes here: the route that
    served it is found first by its endpoint, a dict lookup, before anything
    else is set up.
    """
    index, match_through, has_custom, root_mounts = _endpoint_index(routes)
    if not match_through:
        endpoint = scope.get("endpoint")
        candidates = index.get(id(endpoint)) if endpoint is not None else None
        if candidates is not None and len(candidates) == 1:
            return prefix + candidates[0].path_format  # type: ignore[no-any-return]
    from starlette.routing import Match, Route

    probe = {
        "type": "http",
        "path": scope["path"],
        "root_path": root_path,
        "method": scope["method"],
    }
    if match_through:
        probe["headers"] = scope.get("headers", [])
        return template_by_matching(routes, probe, prefix)
    partial = None
    for route in candidates or routes:
        if not isinstance(route, Route):  # mounts are behind us; routers record their own
            continue
        match, _ = route.matches(probe)
        if match is Match.FULL:
            return prefix + route.path_format
        if match is Match.PARTIAL and partial is None:
            partial = route
    if partial is not None:
        return prefix + partial.path_format
    if has_custom and template_by_matching(routes, probe, prefix) is UNTEMPLATED:
        return UNTEMPLATED
    # A mount at the root (FastAPI's ``app.mount("/", StaticFiles(html=True))``
    # under a single-page app, a legacy app behind the routes) leaves the
    # root_path as it was: it is not behind us, and FastAPI records no route.
    if root_mounts:
        return template_by_matching(root_mounts, probe, prefix)
    return None


#: FastAPI's key, in ``scope["fastapi"]``, for the file a frontend route serves.
_FRONTEND_FILE_KEY = "frontend_path"
#: Per router: the router, its route count, and the paths its frontends are served at.
_FRONTEND_PATHS: dict[int, tuple[Any, int, tuple[str, ...]]] = {}


def _frontend_template(owner: Any, scope: Scope, root_path: str, prefix: str) -> str | None:
    """``<frontend path>/{path}`` for a file FastAPI's ``app.frontend()`` served, else None.

    FastAPI serves a static frontend build from low-priority routes and records
    no ``scope["route"]`` for them, only the file asked for
    (``scope["fastapi"]["frontend_path"]``). That file is never part of the
    key: it is whatever the client asked for (``/app/users/alice``, with the
    ``index.html`` fallback). The key is one of the paths the app configured,
    the longest the request falls under, as FastAPI's router chooses it, and
    named as FastAPI's own telemetry names it (``/app/{path}``). Where the
    frontends cannot be read (another FastAPI version), the request stays
    ``<unmatched>``.
    """
    fastapi_scope = scope.get("fastapi")
    if not isinstance(fastapi_scope, dict) or _FRONTEND_FILE_KEY not in fastapi_scope:
        return None
    router = _router_of(owner)[0]
    if router is None:
        return None
    path = route_path(scope["path"], root_path)
    under = [
        frontend
        for frontend in _frontend_paths(router)
        if frontend == "/" or path == frontend or path.startswith(frontend + "/")
    ]
    if not under:
        return None
    return prefix + max(under, key=len).rstrip("/") + "/{path}"


def _frontend_paths(router: Any) -> tuple[str, ...]:
    """Every path a frontend is served at by ``router`` and the routers it includes.

    Read from FastAPI's own structures (its low-priority route groups, and the
    effective contexts of included routers), which are not public: anything
    unexpected there yields no path rather than an error. Cached per router
    while its route count stays the same.
    """
    routes = getattr(router, "routes", ())
    cached = _FRONTEND_PATHS.get(id(router))
    if cached is not None and cached[0] is router and cached[1] == len(routes):
        return cached[2]
    paths: list[str] = []
    try:
        for group in getattr(router, "_low_priority_routes", ()):
            paths.extend(_static_paths(group, ""))
        for route in routes:
            contexts = getattr(route, "effective_low_priority_routes", None)
            if callable(contexts):
                for context in contexts():
                    group = getattr(context, "original_route", None)
                    paths.extend(_static_paths(group, getattr(context, "frontend_prefix", "")))
    except Exception:  # a FastAPI that builds these otherwise: no frontend known
        paths = []
    if len(_FRONTEND_PATHS) >= MAX_CACHED_PREFIXES:
        _FRONTEND_PATHS.clear()
    _FRONTEND_PATHS[id(router)] = (router, len(routes), tuple(paths))
    return tuple(paths)


def _static_paths(group: Any, include_prefix: Any) -> list[str]:
    """The paths of a frontend group's routes: literal paths, each serving static files.

    Why so strict: these become keys, so only a path the app's code spelled
    out qualifies, never one with a parameter in it, nor a route of another kind.
    """
    from starlette.staticfiles import StaticFiles

    if not isinstance(include_prefix, str) or "{" in include_prefix:
        return []
    paths = []
    for route in getattr(group, "routes", ()):
        path = getattr(route, "path", None)
        if (
            isinstance(path, str)
            and path.startswith("/")
            and "{" not in path
            and isinstance(getattr(route, "app", None), StaticFiles)
        ):
            # Joined as FastAPI joins an included router's prefix to a frontend path.
            paths.append(include_prefix + path if path != "/" else include_prefix or "/")
    return paths


def _slash_redirect_template(
    owner: Any, routes: Sequence[Any], scope: Scope, root_path: str, prefix: str
) -> str | None:
    """The template at the other end of Starlette's ``redirect_slashes`` redirect, or None.

    A router that matches nothing tries the path with its trailing slash
    toggled and, when a route takes that, answers a redirect there (307)
    without recording a route. That route does take the path, so the
    redirect is keyed by its template, as Flask's 308 to a rule's slash is.
    Matched again here as the router matched it, for 3xx answers alone.
    """
    router = _router_of(owner)[0]
    if router is None or not getattr(router, "redirect_slashes", False):
        return None
    path = scope["path"]
    routed = route_path(path, root_path)
    if routed == "/":
        return None
    probe = {
        "type": "http",
        "path": path.rstrip("/") if routed.endswith("/") else path + "/",
        "root_path": root_path,
        "method": scope["method"],
        "headers": scope.get("headers", []),
    }
    template = template_by_matching(routes, probe, prefix)
    return template if isinstance(template, str) else None


def routes_of_unrouted_app(scope: Scope) -> Sequence[Any] | None:
    """The routes of the Starlette or FastAPI app that answered before its router ran.

    Middleware inside the app can answer without routing: a CORS preflight,
    ``TrustedHostMiddleware``, an authentication check. Such a request has
    ``scope["app"]`` but no ``scope["router"]``. None for any other app (and
    when Starlette was never imported, which then costs a dict lookup).
    """
    applications = sys.modules.get("starlette.applications")
    if applications is None:
        return None
    app = scope.get("app")
    if not isinstance(app, applications.Starlette):
        return None
    return app.router.routes  # type: ignore[no-any-return]


class _Untemplated(enum.Enum):
    """The type of :data:`UNTEMPLATED`: an enum of one member, so that a type
    checker narrows ``route is UNTEMPLATED`` as it narrows ``route is None``."""

    UNTEMPLATED = "untemplated"


#: What :func:`template_by_matching` returns when a route takes the request but
#: has no path template: a ``Host`` in front of an app without routes, or a
#: custom route. Such a request was served; its path is anonymized, as a
#: route-less app's is.
UNTEMPLATED: Final = _Untemplated.UNTEMPLATED


def template_by_matching(
    routes: Sequence[Any], scope: Scope, prefix: str = ""
) -> str | _Untemplated | None:
    """The template of the route the router would have chosen, or None.

    Matched as Starlette's router matches (its public ``matches``): the first
    full match wins, else the first route whose path matched with another
    method; a mount or host that matches is entered and never left. Runs only
    for requests answered before routing, and costs what routing them would.
    """
    from starlette.routing import Host, Match, Mount

    partial = None
    for route in routes:
        try:
            match, child_scope = route.matches(scope)
        except Exception:  # a custom route that cannot judge this request: not its
            continue
        if match is Match.NONE:
            continue
        if isinstance(route, (Mount, Host)):
            inner = route.routes
            if not inner:  # a mounted app without routes: the mount's own format
                return prefix + route.path_format if isinstance(route, Mount) else UNTEMPLATED
            path = _mount_template(route) if isinstance(route, Mount) else ""
            return template_by_matching(inner, {**scope, **child_scope}, prefix + path)
        path_format = getattr(route, "path_format", None)
        if not isinstance(path_format, str):
            included = _included_routes(route)
            if included is not None:
                # A router FastAPI included: its routes say which one matched.
                found = template_by_matching(included, scope, prefix)
                if match is Match.FULL:
                    return found
                if partial is None and isinstance(found, str):
                    partial = found
                continue
            if match is Match.FULL:
                return UNTEMPLATED
            continue
        if match is Match.FULL:
            return prefix + path_format
        if partial is None:
            partial = prefix + path_format
    return partial


def _included_routes(route: Any) -> list[Any] | None:
    """The routes behind a router FastAPI included, with their full templates; None otherwise.

    FastAPI (from 0.165) includes a router as one route of its own, without a
    path template, and matches its routes only when it handles the request;
    its public ``matches`` says that one of them takes the path, not which.
    Its effective route contexts (not public) hold each route with the
    include's prefix applied: a FastAPI route's context matches and has the
    full ``path_format``; any other route's (a plain route, a mount) is
    rebuilt under the prefix as ``starlette_route``. Anything unexpected there
    yields None: the request is then matched no further, as before.
    """
    if not _is_included_router(route):
        return None
    try:
        return [
            getattr(context, "starlette_route", None) or context
            for context in route.effective_route_contexts()
        ]
    except Exception:  # a FastAPI that keeps these otherwise
        return None


def _is_included_router(route: Any) -> bool:
    """Whether ``route`` is a router FastAPI included (see :func:`_included_routes`)."""
    return callable(getattr(route, "effective_route_contexts", None))


#: The modules whose routes' ``matches`` read nothing of a request but its
#: type, path, ``root_path``, method and ``Host`` header: Starlette's ``Route``,
#: ``WebSocketRoute``, ``Mount`` and ``Host``, and FastAPI's routes and
#: included routers (they read FastAPI's own keys in ``scope["fastapi"]`` too,
#: which only routing sets: see :meth:`MatchedTemplates.template`).
_PLAIN_MATCHING_MODULES = frozenset({"starlette.routing", "fastapi.routing"})


class _RawRequests(dict[tuple[Any, ...], "str | _Untemplated | None"]):
    """Raw request targets and the template each was matched to.

    The keys are raw paths: held in memory only, never shown, and never
    copied out of the process (no pickling, no copy), as the anonymizer's
    salt is not.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{len(self)} matched requests>"

    def __reduce__(self) -> Any:
        raise TypeError("matched requests cannot be pickled or copied: their keys are raw paths")


#: A route list as :class:`MatchedTemplates` remembers it: the list, the
#: lengths of the lists met through it, whether a ``Host`` is among them, and
#: whether its answers may be remembered at all.
_Shape = tuple[Any, tuple[tuple[Any, int], ...], bool, bool]


class MatchedTemplates:
    """Per-middleware cache of :func:`template_by_matching`'s answers for
    requests answered before routing.

    Why: a CORS preflight (or a rate limiter's refusal) never reaches the
    router, so its template is found by matching the request against every
    route again, as the router would have: with 500 routes about 160 µs per
    preflight, on the event loop, for every preflight a browser sends. The
    same few request targets come back again and again, and their answer is
    a dict lookup after the first.

    What the answer depends on, and so the key: the route list (by identity),
    the scope's type, method, ``path`` and ``root_path`` (a mount's matching
    adds to that), and where a ``Host`` route stands anywhere among the routes,
    the request's first ``Host`` header (as ``Host.matches`` reads it). The
    value is what :func:`template_by_matching` returned: the template string,
    :data:`UNTEMPLATED`, or None (a path no route takes: still "unmatched",
    never a key of its own).

    Remembered only where that is all the answer can depend on: every route,
    through every mount, host and router FastAPI included, matches with
    Starlette's or FastAPI's own ``matches`` (:data:`_PLAIN_MATCHING_MODULES`).
    A route of the app's own making, or one whose ``matches`` was replaced,
    may read anything (a header, the query): such an app is matched each time,
    as before. So is a request whose ``scope["fastapi"]`` holds anything
    (FastAPI's routes read its routing state there; no routing ran here).

    Routes added at runtime (``add_route``, ``include_router``, ``mount``,
    routes added to an included router or a mounted app) are seen: the
    length of every route list met on the way is noted with the list's shape,
    and a change in any of them forgets what was matched. Not seen: a route
    replaced by another in place (the list's length unchanged), a mounted
    app's route list replaced by another list, or a route's own attributes
    changed; an app that does so is matched against its old routes until
    the cache is emptied. A change racing a request in another thread may
    likewise leave that request's answer in place.

    Memory: at most :data:`MAX_MATCHED_REQUESTS` keys, each of at most
    :data:`MATCHED_REQUEST_MAX_LENGTH` ASCII characters of path, ``root_path``,
    method and host (longer requests, and any outside ASCII, are matched each
    time); emptied when
    full. Plus the shapes of at most :data:`MAX_MATCHED_ROUTE_LISTS` route
    lists. Thread-safe as dict reads and writes are; ASGI calls it from one
    event loop anyway.
    """

    __slots__ = ("_shapes", "_templates")

    def __init__(self) -> None:
        #: ``id(routes)`` → the list, its shape (see :func:`_matching_shape`).
        self._shapes: dict[int, _Shape] = {}
        self._templates = _RawRequests()

    def template(self, routes: Sequence[Any], scope: Scope) -> str | _Untemplated | None:
        """What ``template_by_matching(routes, scope)`` returns, remembered."""
        shape = self._shapes.get(id(routes))
        if shape is None or shape[0] is not routes or not _same_lengths(shape[1]):
            shape = self._new_shape(routes)
        if not shape[3] or scope.get("fastapi"):
            return template_by_matching(routes, scope)
        path = scope["path"]
        root_path = scope.get("root_path", "")
        method = scope["method"]
        host = _host_header(scope) if shape[2] else None
        length = len(path) + len(root_path) + len(method)
        if host is not None:
            length += len(host)
        if length > MATCHED_REQUEST_MAX_LENGTH:
            return template_by_matching(routes, scope)
        key = (id(routes), scope["type"], method, root_path, path, host)
        cache = self._templates
        found = cache.get(key, _MISSING)
        if found is _MISSING:
            found = template_by_matching(routes, scope)
            if _all_ascii(path, root_path, method, host):  # the bound is in bytes
                if len(cache) >= MAX_MATCHED_REQUESTS:
                    cache.clear()
                cache[key] = found
        return found  # type: ignore[no-any-return]

    def _new_shape(self, routes: Sequence[Any]) -> _Shape:
        """Note the shape of ``routes``, seen for the first time or changed since.

        Whatever was matched against a changed list may no longer hold, and
        the answers are forgotten, every list's at once (a rare event: routes
        changed at runtime, or more route lists than are remembered).
        """
        shapes = self._shapes
        if id(routes) in shapes or len(shapes) >= MAX_MATCHED_ROUTE_LISTS:
            shapes.clear()
            self._templates.clear()
        lengths, by_host, cacheable = _matching_shape(routes)
        shape = shapes[id(routes)] = (routes, lengths, by_host, cacheable)
        return shape


def _same_lengths(lengths: tuple[tuple[Any, int], ...]) -> bool:
    """Whether every route list noted in a shape has the length it had then.

    A loop, not ``all()`` over a generator: this runs on every such request.
    """
    for routes, length in lengths:  # noqa: SIM110
        if len(routes) != length:
            return False
    return True


def _matching_shape(routes: Sequence[Any]) -> tuple[tuple[tuple[Any, int], ...], bool, bool]:
    """Every route list :func:`template_by_matching` may go through from ``routes``
    (each with its length), whether a ``Host`` stands among them, and whether
    every route there matches by Starlette's or FastAPI's own ``matches``.

    Runs when a route list is first matched against, and after it changed:
    once per route, through mounts, hosts and the routers FastAPI included.
    The walk stops at the first route of another kind; the lists noted until
    then include that route's, so that its removal is seen.
    """
    from starlette.routing import Host, Mount

    lengths: list[tuple[Any, int]] = []
    seen: set[int] = set()
    by_host = False
    pending: list[tuple[Any, int]] = [(routes, 0)]
    while pending:
        current, depth = pending.pop()
        if not isinstance(current, list) or depth > _WRAPPER_DEPTH:
            return tuple(lengths), by_host, False
        if id(current) in seen:
            continue
        seen.add(id(current))
        lengths.append((current, len(current)))
        for route in current:
            matches = getattr(getattr(route, "matches", None), "__func__", None)
            if getattr(matches, "__module__", None) not in _PLAIN_MATCHING_MODULES:
                return tuple(lengths), by_host, False
            if isinstance(route, (Mount, Host)):
                by_host = by_host or isinstance(route, Host)
                pending.append((route.routes, depth + 1))
            elif _is_included_router(route):
                # FastAPI matches through its routes (``effective_route_contexts``),
                # rebuilt from the router's own list whenever that changes.
                inner = getattr(getattr(route, "original_router", None), "routes", None)
                pending.append((inner, depth + 1))
    return tuple(lengths), by_host, True
