"""The README's recipes for frameworks without an integration, run as written
under real servers, and Bottle, whose template is read without one.

Each app has a templated route served for two ids, a route whose handler
fails, and a path no route takes; what reaches the collector must be keyed
by the templates, hold what the client got, and carry no identifier.
"""

from __future__ import annotations

import http.client
import warnings
from typing import Any

import pytest

from reqtelemetry import ASGIMiddleware, WSGIMiddleware, note_route
from reqtelemetry.telemetry import UNMATCHED_ROUTE
from test_asgi import served_by_uvicorn
from test_route_hook import CANARY, get, records_sent, served_by_werkzeug


def drive_wsgi(app: Any) -> list[tuple[int, int]]:
    """The same requests for every WSGI framework: two ids, a failure, a scanner's path."""
    with served_by_werkzeug(app) as port:
        return [
            get(port, path)
            for path in (
                f"/items/1?user={CANARY}",
                "/items/22",
                f"/boom/{CANARY}",
                f"/wp-login/{CANARY}.php",
            )
        ]


def drive_asgi(app: Any) -> list[tuple[int, int]]:
    with served_by_uvicorn(app) as client:
        responses = [
            client.get(path)
            for path in (
                f"/items/1?user={CANARY}",
                "/items/22",
                f"/boom/{CANARY}",
                f"/wp-login/{CANARY}.php",
            )
        ]
    return [(response.status_code, len(response.content)) for response in responses]


def expected(got: list[tuple[int, int]], item: str, boom: str) -> dict[Any, tuple[int, int]]:
    assert [status for status, _ in got] == [200, 200, 500, 404]
    return {
        ("GET", item, 200): (2, got[0][1] + got[1][1]),
        ("GET", boom, 500): (1, got[2][1]),
        ("GET", UNMATCHED_ROUTE, 404): (1, got[3][1]),
    }


def framework_of(telemetry: Any) -> str | None:
    """The ``framework`` trait: the app's own, whatever else the suite imported."""
    return telemetry.traits.current()[0]["framework"]  # type: ignore[no-any-return]


# -- Falcon: a middleware's process_resource -------------------------------------


def test_falcon_wsgi_recipe(make_sender, receiver):
    falcon = pytest.importorskip("falcon")

    class RouteTemplateToTelemetry:
        """Tells reqtelemetry the template of the route Falcon matched."""

        def process_resource(self, req, resp, resource, params):
            note_route(req.env, req.uri_template)

    class Item:
        def on_get(self, req, resp, item_id):
            resp.media = {"item": item_id}

    class Boom:
        def on_get(self, req, resp, what):
            raise RuntimeError("the handler failed")

    app = falcon.App(middleware=[RouteTemplateToTelemetry()])
    app.add_route("/items/{item_id:int}", Item())
    app.add_route("/boom/{what}", Boom())
    telemetry = make_sender()
    got = drive_wsgi(WSGIMiddleware(app, telemetry=telemetry))
    assert records_sent(telemetry, receiver) == expected(
        got, "/items/{item_id:int}", "/boom/{what}"
    )
    assert framework_of(telemetry) == "falcon"


def test_falcon_asgi_recipe_under_uvicorn(make_sender, receiver):
    falcon_asgi = pytest.importorskip("falcon.asgi")

    class RouteTemplateToTelemetry:
        """Tells reqtelemetry the template of the route Falcon matched."""

        async def process_resource(self, req, resp, resource, params):
            note_route(req.scope, req.uri_template)

    class Item:
        async def on_get(self, req, resp, item_id):
            resp.media = {"item": item_id}

    class Boom:
        async def on_get(self, req, resp, what):
            raise RuntimeError("the handler failed")

    app = falcon_asgi.App(middleware=[RouteTemplateToTelemetry()])
    app.add_route("/items/{item_id:int}", Item())
    app.add_route("/boom/{what}", Boom())
    telemetry = make_sender()
    got = drive_asgi(ASGIMiddleware(app, telemetry=telemetry))
    assert records_sent(telemetry, receiver) == expected(
        got, "/items/{item_id:int}", "/boom/{what}"
    )
    assert framework_of(telemetry) == "falcon"


# -- Pyramid: a ContextFound subscriber ------------------------------------------


@pytest.mark.filterwarnings("ignore:'cgi' is deprecated:DeprecationWarning")
def test_pyramid_recipe(make_sender, receiver):
    pytest.importorskip("pyramid")
    from pyramid.config import Configurator
    from pyramid.events import ContextFound
    from pyramid.response import Response

    def tell_route(event):
        """Tells reqtelemetry the pattern of the route Pyramid matched."""
        route = event.request.matched_route
        if route is not None:
            note_route(event.request.environ, route.pattern)

    def item(request):
        return Response(f"item {request.matchdict['item_id']}")

    def boom(request):
        raise RuntimeError("the view failed")

    with Configurator() as config:
        config.add_subscriber(tell_route, ContextFound)
        config.add_route("item", "/items/{item_id}")
        config.add_view(item, route_name="item")
        config.add_route("boom", "boom/{what}")  # Pyramid takes it without its "/" too
        config.add_view(boom, route_name="boom")
        app = config.make_wsgi_app()
    telemetry = make_sender()
    wrapped = WSGIMiddleware(app, telemetry=telemetry)

    def answering_500(environ, start_response):
        # Pyramid lets a view's error out, for the server (or a debug
        # toolbar) to answer: Werkzeug's would close the connection.
        try:
            return wrapped(environ, start_response)
        except RuntimeError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"failed"]

    got = drive_wsgi(answering_500)
    sent = records_sent(telemetry, receiver)
    # What passed through the middleware: the error left it, with no body.
    assert sent == {
        **expected(got, "/items/{item_id}", "/boom/{what}"),
        ("GET", "/boom/{what}", 500): (1, 0),
    }
    assert framework_of(telemetry) == "pyramid"


# -- Quart: a before_request function ------------------------------------------


def test_quart_recipe_under_uvicorn(make_sender, receiver):
    quart = pytest.importorskip("quart")
    from quart import request

    app = quart.Quart(__name__)

    @app.before_request
    async def tell_route():
        """Tells reqtelemetry the rule Quart matched (None: it matched none)."""
        rule = request.url_rule
        note_route(request.scope, rule.rule if rule is not None else None)

    @app.get("/items/<int:item_id>")
    async def item(item_id):
        return {"item": item_id}

    @app.get("/boom/<what>")
    async def boom(what):
        raise RuntimeError("the handler failed")

    telemetry = make_sender()
    got = drive_asgi(ASGIMiddleware(app, telemetry=telemetry))
    assert records_sent(telemetry, receiver) == expected(
        got, "/items/<int:item_id>", "/boom/<what>"
    )
    assert framework_of(telemetry) == "quart"


# -- Bottle: read from the environ, nothing to add --------------------------------


def bottle_app() -> Any:
    bottle = pytest.importorskip("bottle")
    app = bottle.Bottle()

    @app.get("/items/<item_id:int>")
    def item(item_id):
        if item_id > 100:
            bottle.abort(404, "no such item")
        return {"item": item_id}

    @app.get("/boom/<what>")
    def boom(what):
        raise RuntimeError("the handler failed")

    return app


def test_bottle_routes_are_keyed_by_their_rules(make_sender, receiver):
    telemetry = make_sender()
    got = drive_wsgi(WSGIMiddleware(bottle_app(), telemetry=telemetry))
    assert records_sent(telemetry, receiver) == expected(
        got, "/items/<item_id:int>", "/boom/<what>"
    )
    assert framework_of(telemetry) == "bottle"


def test_bottle_handlers_404_is_its_routes_and_a_mounted_app_keeps_its_prefix(telemetry, counts):
    bottle = pytest.importorskip("bottle")
    parent = bottle.Bottle()
    parent.mount("/api/", bottle_app())
    with served_by_werkzeug(WSGIMiddleware(parent, telemetry=telemetry)) as port:
        assert get(port, "/api/items/7")[0] == 200
        assert get(port, "/api/items/1000")[0] == 404  # the handler's: no such item
        assert get(port, f"/api/{CANARY}")[0] == 404  # no route's
    assert counts(telemetry) == {
        ("GET", "/api/items/<item_id:int>", 200): 1,
        ("GET", "/api/items/<item_id:int>", 404): 1,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }


def test_bottle_requests_its_router_refused_are_keyed_by_the_route(telemetry, counts):
    """A 405 (a POST, a CORS preflight's OPTIONS) and an abort in a
    ``before_request`` hook leave no ``bottle.route``: each was keyed by its
    path, one key per id. They are the route's, as Flask's 405s are."""
    bottle = pytest.importorskip("bottle")
    app = bottle_app()

    @app.hook("before_request")
    def authenticate():
        if bottle.request.get_header("Authorization") == "none":
            bottle.abort(401, "who are you")

    with served_by_werkzeug(WSGIMiddleware(app, telemetry=telemetry)) as port:
        assert get(port, "/items/1", "POST")[0] == 405
        assert get(port, "/items/22", "POST")[0] == 405
        assert get(port, "/items/3", "OPTIONS")[0] == 405
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/items/4", headers={"Authorization": "none"})
        assert connection.getresponse().status == 401
        connection.close()
        assert get(port, f"/wp-login/{CANARY}.php", "POST")[0] == 404
    assert counts(telemetry) == {
        ("POST", "/items/<item_id:int>", 405): 2,
        ("OPTIONS", "/items/<item_id:int>", 405): 1,
        ("GET", "/items/<item_id:int>", 401): 1,
        ("POST", UNMATCHED_ROUTE, 404): 1,
    }


def test_bottle_requests_refused_run_no_filter_of_the_route(telemetry, counts):
    """Matched again for its key, a refused request's path went through the
    route's filters, which Bottle never ran for it: a custom one that looks
    a user up ran once more per request a hook refused, after the response."""
    bottle = pytest.importorskip("bottle")
    looked_up = []
    app = bottle.Bottle()

    def user_filter(config: str) -> tuple[str, Any, Any]:
        def to_python(value: str) -> str:
            looked_up.append(value)  # a database query, in an app
            return value

        return r"[a-z]+", to_python, str

    app.router.add_filter("user", user_filter)

    @app.hook("before_request")
    def authenticate():
        if bottle.request.get_header("Authorization") == "none":
            bottle.abort(401, "who are you")

    @app.get("/users/<name:user>")
    def user(name):
        return name

    with served_by_werkzeug(WSGIMiddleware(app, telemetry=telemetry)) as port:
        assert get(port, "/users/bob")[0] == 200
        assert get(port, "/users/dan", "POST")[0] == 405
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/users/eve", headers={"Authorization": "none"})
        assert connection.getresponse().status == 401
        connection.close()
    assert counts(telemetry) == {
        ("GET", "/users/<name:user>", 200): 1,
        ("POST", "/users/<name:user>", 405): 1,
        ("GET", "/users/<name:user>", 401): 1,
    }
    assert looked_up == ["bob"]


def test_bottle_requests_a_hook_refused_for_no_route_are_unmatched(telemetry, counts):
    """A ``before_request`` hook runs before Bottle's router: its abort for a
    path no route takes (an auth hook, a scanner) was keyed by the path, one
    key per path, where Bottle's 404 and Flask's refusals are unmatched."""
    bottle = pytest.importorskip("bottle")
    app = bottle_app()

    @app.hook("before_request")
    def authenticate():
        bottle.abort(401, "who are you")

    with served_by_werkzeug(WSGIMiddleware(app, telemetry=telemetry)) as port:
        assert get(port, "/items/4")[0] == 401
        assert get(port, f"/wp-login/{CANARY}.php")[0] == 401
        assert get(port, f"/.env/{CANARY}")[0] == 401
    assert counts(telemetry) == {
        ("GET", "/items/<item_id:int>", 401): 1,
        ("GET", UNMATCHED_ROUTE, 401): 2,
    }


def test_bottle_app_mounted_as_a_wsgi_app_is_keyed_without_the_prefix(telemetry, counts):
    """What the README says of Bottle 0.12's mounts, and 0.13's WSGI fallback
    (a prefix without its trailing slash): the child's rules, unprefixed."""
    bottle = pytest.importorskip("bottle")
    parent = bottle.Bottle()
    with pytest.warns(DeprecationWarning):
        parent.mount("/api", bottle_app())
    with served_by_werkzeug(WSGIMiddleware(parent, telemetry=telemetry)) as port:
        assert get(port, "/api/items/7")[0] == 200
    assert counts(telemetry) == {("GET", "/items/<item_id:int>", 200): 1}


def test_the_framework_of_a_wrapped_app_is_the_apps(make_telemetry):
    """An app served wrapped (``ProxyFix``, Starlette's ``CORSMiddleware``) is
    its framework's: the wrapper named none (the trait then fell back to the
    imports: null, or Flask's where Quart imported it) or Starlette."""
    import asyncio

    import httpx

    falcon = pytest.importorskip("falcon")
    falcon_asgi = pytest.importorskip("falcon.asgi")
    from starlette.middleware.cors import CORSMiddleware
    from werkzeug.middleware.proxy_fix import ProxyFix

    telemetry = make_telemetry()
    WSGIMiddleware(ProxyFix(falcon.App()), telemetry=telemetry)
    assert framework_of(telemetry) == "falcon"

    telemetry = make_telemetry()
    wrapped = CORSMiddleware(falcon_asgi.App(), allow_origins=["*"])
    app = ASGIMiddleware(wrapped, telemetry=telemetry)

    async def run() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return (await client.get("/nothing")).status_code

    assert asyncio.run(run()) == 404
    assert framework_of(telemetry) == "falcon"


# -- the README shows these recipes ---------------------------------------------


def test_the_readme_recipes_are_the_ones_run_here():
    """Each hook the README's "Other frameworks" section defines (a class or
    function and its body) is in this file line for line, indentation aside:
    what the README tells users to write is what the tests above run."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^### Other frameworks.*?\n(.*?)(?=^### )", readme, re.M | re.S)
    assert match, "README has no 'Other frameworks' section"
    here = [line.strip() for line in Path(__file__).read_text(encoding="utf-8").splitlines()]
    hooks = []
    for block in re.findall(r"^```python\n(.*?)^```", match.group(1), re.M | re.S):
        for hook in re.findall(
            r"^((?:@.*\n)?(?:async def|def|class) .*?)(?=\n\S|\Z)", block, re.M | re.S
        ):
            lines = [line.strip() for line in hook.strip().splitlines() if line.strip()]
            hooks.append(lines)
            assert any(
                [line for line in here[i : i + 3 * len(lines)] if line][: len(lines)] == lines
                for i in range(len(here))
            ), "the README's recipe is not run here:\n" + "\n".join(lines)
    assert len(hooks) == 3  # Falcon's middleware, Pyramid's subscriber, Quart's function


def test_a_quart_app_whose_asgi_app_is_wrapped_is_quarts(make_telemetry):
    """Quart's documented way to add ASGI middleware wraps the bound method
    ``app.asgi_app``: the trait read no app there and fell back to the
    imports, where Quart's own import of Flask made it ``flask``."""
    import asyncio

    import httpx

    quart = pytest.importorskip("quart")
    app = quart.Quart(__name__)
    telemetry = make_telemetry()
    app.asgi_app = ASGIMiddleware(app.asgi_app, telemetry=telemetry)  # type: ignore[method-assign]

    async def run() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return (await client.get("/nothing")).status_code

    assert asyncio.run(run()) == 404
    assert framework_of(telemetry) == "quart"


def test_a_wsgi_mounts_404s_are_unmatched(telemetry, counts):
    """Bottle 0.12 mounts every app, and 0.13 a foreign WSGI app (or a
    Bottle app it cannot merge), by a route of its own (``/api/<:re:.*>``)
    that is left in ``bottle.route`` when the mounted app's router matched
    nothing: each scanner's path under the mount was keyed by that rule, not
    unmatched as Bottle's own 404s and a Litestar mount's are."""
    bottle = pytest.importorskip("bottle")

    def legacy(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        missing = environ["PATH_INFO"].startswith("/missing")
        start_response("404 Not Found" if missing else "200 OK", [])
        return [b"legacy"]

    parent = bottle.Bottle()
    parent.mount("/legacy/", legacy)
    with warnings.catch_warnings():  # 0.13's, of its fallback to a WSGI mount
        warnings.simplefilter("ignore", DeprecationWarning)
        parent.mount("/api", bottle_app())
    with served_by_werkzeug(WSGIMiddleware(parent, telemetry=telemetry)) as port:
        assert get(port, "/api/items/7")[0] == 200
        assert get(port, "/api/items/1000")[0] == 404  # the handler's: no such item
        assert get(port, f"/api/{CANARY}")[0] == 404  # no route of the child's
        assert get(port, "/legacy/page")[0] == 200
        assert get(port, f"/legacy/missing/{CANARY}")[0] == 404
    assert counts(telemetry) == {
        ("GET", "/items/<item_id:int>", 200): 1,
        ("GET", "/items/<item_id:int>", 404): 1,
        ("GET", "/legacy/<:re:.*>", 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 2,
    }
