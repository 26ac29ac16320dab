"""The route template an app tells the middleware: :func:`note_route`.

Why: reqtelemetry reads the matched route's template from the routers it
knows (Starlette and FastAPI, Flask, Django, Litestar, Bottle). Any other
framework (Falcon, Pyramid, Quart, Sanic, a router of one's own) was keyed by
its paths anonymized, one key per distinct path: ``/items/1``, ``/items/2``
and so on each took a key, and the key cap filled up. The app knows the
template it matched; one line in the framework's own request hook hands it
over, in the WSGI environ or the ASGI scope that the middleware holds too.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, cast

from .said_once import warn_once

#: The environ (WSGI) or scope (ASGI) key :func:`note_route` sets: the
#: matched template, or None when the app's router matched nothing.
ROUTE_KEY = "reqtelemetry.route"
#: A route nobody has told (distinct from None, "the router matched nothing").
UNKNOWN_ROUTE: Any = object()


def note_route(environ_or_scope: Mapping[str, Any], template: str | None) -> None:
    """Tell the middleware which route template this request matched.

    ``environ_or_scope`` is the request's WSGI environ or ASGI scope (Falcon's
    ``req.env`` or ``req.scope``, Pyramid's ``request.environ``, Quart's
    ``request.scope``), and ``template`` the route as the app declares it
    (``/items/{item_id}``), never the path: it leaves the process as it is
    written. None says the app's router matched nothing, so that the request
    is counted with the other unmatched ones (``<unmatched>``).

    Called from the framework's hook after routing, before the response ends.
    A wrong value raises here, in the line that passed it, rather than being
    sent or silently dropped.

    Typed as taking a ``Mapping``, though it writes into it: Quart types
    ``request.scope`` as a union of ``TypedDict``s (hypercorn's), which a
    checker will not pass as a ``MutableMapping``; every environ and scope is
    a ``dict`` at run time.
    """
    if template is not None:
        if not isinstance(template, str):
            raise TypeError(
                f"note_route() takes a route template (str) or None, not {type(template).__name__}"
            )
        if not template:
            raise ValueError("note_route() takes a route template, not an empty string")
        template = str(template)  # a subclass (markupsafe's Markup) goes as plain text
        if template[0] != "/":
            # Pyramid's patterns may be written without it (``items/{id}``),
            # and every other key has one: ``/items/{id}`` either way.
            template = "/" + template
    cast("MutableMapping[str, Any]", environ_or_scope)[ROUTE_KEY] = template


def told_route(environ_or_scope: Mapping[str, Any], status: int) -> Any:
    """The route an app told for this request: its template, None for "its
    router matched nothing", or :data:`UNKNOWN_ROUTE` when it told nothing.

    Read after the app ran, so only for requests no integration already knows
    the route of. Besides :func:`note_route`'s key, two routers leave their
    template where the middleware can read it: Bottle the matched route in
    ``environ["bottle.route"]`` (its ``rule``: ``/items/<item_id:int>``, with
    its filter, as Flask's rules keep their converters), Litestar its
    template in ``scope["path_template"]`` (``/items/{item_id}``).
    """
    told = environ_or_scope.get(ROUTE_KEY, UNKNOWN_ROUTE)
    if told is UNKNOWN_ROUTE:
        return _left_by_router(environ_or_scope, status)
    if told is None or (type(told) is str and told):
        return told
    # Set by hand to something else: never sent, whatever it holds (nor
    # logged: it may be the path); the request counts as the app's that told nothing.
    warn_once(
        "route-hook-value",
        "reqtelemetry: the request's %r holds a value of type %s, not a route template "
        "(a non-empty str) nor None; ignored, the path is anonymized. "
        "Set it with reqtelemetry.note_route().",
        ROUTE_KEY,
        type(told).__name__,
    )
    return UNKNOWN_ROUTE


def _left_by_router(environ_or_scope: Mapping[str, Any], status: int) -> Any:
    """A template a router we know of left in the request, else :data:`UNKNOWN_ROUTE`."""
    route = environ_or_scope.get("bottle.route")
    if route is None and "bottle.app" in environ_or_scope:
        route = _bottle_route_despite_refusal(environ_or_scope)
        if route is None:  # Bottle's router takes no such path: unmatched, as its 404s
            return None
    if route is not None:
        rule = getattr(route, "rule", None)
        if type(rule) is str and rule:
            config = getattr(route, "config", None)
            if status == 404 and isinstance(config, Mapping) and "mountpoint.target" in config:
                # A mount's own route (``/api/<:re:.*>``: every mount in Bottle
                # 0.12, a WSGI app's in 0.13), left there when the mounted
                # app's router matched nothing: unmatched, as a Litestar
                # mount's 404s are, not one key of scanners per mount.
                return None
            return rule
    template = environ_or_scope.get("path_template")
    if type(template) is not str:
        return UNKNOWN_ROUTE
    mount = getattr(environ_or_scope.get("route_handler"), "is_mount", False)
    if template and (template != "/" or not mount):
        # Litestar's router (its convertors dropped). Empty for some of its
        # routes (its issue 3806): the path is anonymized then, never keyed "".
        # A mount at "/" leaves "/" for every path it takes: keyed below, not
        # with the home page.
        return template
    if (
        mount
        # A 404 is the mounted app's "nothing here" (a Starlette router's,
        # which, given a copy of the scope, leaves no trace in this one):
        # unmatched, as a 404 of a route-less app is.
        and status != 404
        # A Starlette app mounted there routed it (on this very scope): its verdict stands.
        and "router" not in environ_or_scope
    ):
        return _litestar_mount_template(environ_or_scope["route_handler"])
    return UNKNOWN_ROUTE


def _litestar_mount_template(handler: Any) -> Any:
    """The template of the Litestar mount (``@asgi(path, is_mount=True)``) that
    took the request, as Starlette's mounts are keyed: ``/graphql/{path}``.

    Why: Litestar leaves no template for a mount, and rewrites
    ``scope["path"]`` to what is left after it (``/api/graphql/x`` to ``/x/``,
    ``/api/graphql`` to ``/``): the anonymized path lost the mount's prefix,
    and a request to the mount itself was keyed ``/``, as the app's home page.
    Its path is the handler's, under those of the routers that own it.
    """
    try:
        (path,) = handler.paths
        layers = [layer.path for layer in handler.ownership_layers[:-1]]
        segments = [part.strip("/") for part in (*layers, path) if part.strip("/")]
    except Exception:  # another Litestar, or a mount with several paths: anonymized
        return UNKNOWN_ROUTE
    return "/" + "/".join((*segments, "{path}"))


def _bottle_route_despite_refusal(environ: Mapping[str, Any]) -> Any:
    """The route a Bottle app left no ``bottle.route`` for, matched again; None
    when its router takes no such path, :data:`UNKNOWN_ROUTE` when it is no
    router whose tables we know.

    Why: Bottle's router refuses a method the route does not take (a 405:
    a POST or a CORS preflight's OPTIONS to ``/items/<item_id:int>``), and its
    ``before_request`` hooks run before it matches (an ``abort(401)`` there);
    neither leaves the route in the environ, and each such request was keyed
    by its path, one key per id, as if the app had no router. They are for an
    endpoint that exists, and are keyed by its rule, as Flask's and Starlette's
    405s are; a path no route takes stays unmatched. Only requests without a
    route pay for this, after the response.

    Matched through the router's tables as ``Router.match`` walks them (the
    same in Bottle 0.12 and 0.13), not by calling it: it converts the path's
    values with the route's filters, a custom one of which may query a
    database, and Bottle itself never ran them for these requests.
    """
    router: Any = getattr(environ.get("bottle.app"), "router", None)
    path = environ.get("PATH_INFO") or "/"
    verb = str(environ.get("REQUEST_METHOD", "")).upper()
    first = ("PROXY", "HEAD", "GET", "ANY") if verb == "HEAD" else ("PROXY", verb, "ANY")
    try:
        static, dynamic = router.static, router.dyna_regexes
        # The request's own methods (a hook aborted), then the others in a
        # fixed order (a 405: those its Allow header names), so that every
        # worker picks the same route.
        others = sorted((set(static) | set(dynamic)) - set(first))
        for method in (*first, *others):
            if path in static.get(method, ()):
                return static[method][path][0]
            for combined, rules in dynamic.get(method, ()):
                match = combined(path)
                if match:
                    return rules[match.lastindex - 1][0]
    except Exception:  # no Bottle router, or another one: keyed by its path
        return UNKNOWN_ROUTE
    # A hook refused a path no route takes (an auth hook, a scanner): one key
    # per path otherwise, where Bottle's own 404s and Flask's are unmatched.
    return None
