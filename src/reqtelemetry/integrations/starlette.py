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

from collections.abc import MutableMapping
from typing import Any

#: Distinct concrete mount prefixes remembered; only mounts with path
#: parameters ever produce more than a handful.
MAX_CACHED_PREFIXES = 256

Scope = MutableMapping[str, Any]


class RouteTemplates:
    """Per-middleware cache from a concrete mount prefix to its template."""

    __slots__ = ("_mount_prefixes",)

    def __init__(self) -> None:
        self._mount_prefixes: dict[tuple[int, str, str], tuple[str, Any] | None] = {}

    def template(self, scope: Scope, entry_root_path: str) -> str | None:
        """The full route template, or None when the router matched no route."""
        route = scope.get("route")
        if route is None:
            return None
        path_format = None
        fastapi_scope = scope.get("fastapi")
        if fastapi_scope is not None:
            context = fastapi_scope.get("effective_route_context")
            if context is not None and getattr(context, "original_route", None) is route:
                path_format = context.path_format
        if path_format is None:
            path_format = getattr(route, "path_format", None)
            if path_format is None:
                return None
        root_path = scope.get("root_path", "")
        if root_path == entry_root_path:
            return path_format
        mounted = self._mount_prefix(scope, entry_root_path, root_path)
        if mounted is None:
            return None
        prefix, last_mount = mounted
        if route is last_mount:
            # A mount of a non-router app (static files, a WSGI app): the mount's
            # own format (``/static/{path}``) is the template; drop its path from
            # the prefix so it is not counted twice.
            return prefix[: len(prefix) - len(route.path)] + path_format
        return prefix + path_format

    def _mount_prefix(
        self, scope: Scope, entry_root_path: str, root_path: str
    ) -> tuple[str, Any] | None:
        router = scope.get("router")
        if router is None:
            return None
        key = (id(router), entry_root_path, root_path)
        cache = self._mount_prefixes
        if key in cache:
            return cache[key]
        found = _walk_mounts(router, scope["path"], entry_root_path, root_path)
        if len(cache) >= MAX_CACHED_PREFIXES:
            cache.clear()
        cache[key] = found
        return found


def _walk_mounts(
    router: Any, path: str, entry_root_path: str, target_root_path: str
) -> tuple[str, Any] | None:
    """Follow the mounts that turned ``entry_root_path`` into ``target_root_path``."""
    from starlette.routing import Match, Mount

    routes = getattr(router, "routes", [])
    root_path = entry_root_path
    templates: list[str] = []
    last = None
    while root_path != target_root_path:
        probe = {"type": "http", "path": path, "root_path": root_path, "method": "GET"}
        for route in routes:
            if not isinstance(route, Mount):
                continue
            match, child_scope = route.matches(probe)
            if match is Match.FULL:
                templates.append(route.path)
                root_path = child_scope["root_path"]
                routes = route.routes
                last = route
                break
        else:
            return None
        if not target_root_path.startswith(root_path):
            return None
    return "".join(templates), last
