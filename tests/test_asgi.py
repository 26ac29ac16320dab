"""The ASGI middleware through real FastAPI and Starlette stacks."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import pickle
import socket
import subprocess
import sys
import threading
import time
import warnings
from time import perf_counter
from typing import Any

import httpx
import pydantic
import pytest
import uvicorn
from fastapi import APIRouter, BackgroundTasks, FastAPI, HTTPException
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import (
    BaseRoute,
    Host,
    Match,
    Mount,
    NoMatchFound,
    Route,
    Router,
    WebSocketRoute,
)
from starlette.staticfiles import StaticFiles

from examples.servers import child_environment
from reqtelemetry import ASGIMiddleware, Telemetry
from reqtelemetry.anonymize import hash_value
from reqtelemetry.integrations import starlette as starlette_integration
from reqtelemetry.recorder import PENDING_LIMIT
from reqtelemetry.telemetry import CLIENT_CLOSED_STATUS, UNMATCHED_ROUTE

with warnings.catch_warnings():  # "install httpx2": irrelevant here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def wrap(app, telemetry: Telemetry):
    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    return app


async def plain(request):
    return PlainTextResponse("ok:" + ",".join(f"{k}={v}" for k, v in request.path_params.items()))


async def raw_app(scope, receive, send):
    """A leaf ASGI app without any router (like StaticFiles or a WSGI bridge)."""
    if scope["type"] != "http":
        return
    status = 404 if scope["path"].endswith("/missing") else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"raw:" + scope["path"].encode()})


# -- route templates ------------------------------------------------------------


PREFLIGHT = {"Origin": "https://spa.example", "Access-Control-Request-Method": "PUT"}


def build_app_answering_before_routing(telemetry: Telemetry) -> FastAPI:
    """Middleware inside the app answers some requests before its router runs."""
    app = FastAPI()

    @app.put("/items/{item_id}")
    def put_item(item_id: int):
        return {"id": item_id}

    async def listing(request):
        return PlainTextResponse("users")

    app.mount("/api/{tenant}", Starlette(routes=[Route("/users/{user_id}", listing)]))
    app.mount("/files", raw_app)
    app.add_middleware(CORSMiddleware, allow_origins=["https://spa.example"], allow_methods=["*"])
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=["testserver"])
    return wrap(app, telemetry)


def test_requests_answered_before_routing_get_the_template_the_router_would_choose(
    telemetry, counts
):
    client = TestClient(build_app_answering_before_routing(telemetry))
    for n in range(3):
        assert client.options(f"/items/{n}", headers=PREFLIGHT).status_code == 200
        assert client.options(f"/api/t{n}/users/{n}", headers=PREFLIGHT).status_code == 200
        assert client.options(f"/files/report-{n}.pdf", headers=PREFLIGHT).status_code == 200
    assert client.put("/items/1", headers={"Origin": "https://spa.example"}).status_code == 200
    assert counts(telemetry) == {
        ("OPTIONS", "/items/{item_id}", 200): 3,
        ("OPTIONS", "/api/{tenant}/users/{user_id}", 200): 3,
        ("OPTIONS", "/files/{path}", 200): 3,
        ("PUT", "/items/{item_id}", 200): 1,
    }


def _include_router_keeps_mounts() -> bool:
    """Whether ``include_router()`` keeps a router's mounts: older FastAPIs (0.110
    among them) copy its routes alone, and the app never serves the mount."""
    api = APIRouter()
    api.mount("/m", raw_app)
    app = FastAPI()
    app.include_router(api)
    return TestClient(app).get("/m/x").status_code == 200


def test_plain_routes_and_mounts_in_fastapis_included_routers_keep_their_templates(
    telemetry, counts
):
    """FastAPI records no ``scope["route"]`` for a plain route (``add_route``) nor
    for a mount; inside an included router (from FastAPI 0.165 one route
    without a template) neither was found, and both were ``<unmatched>``."""
    mounts = _include_router_keeps_mounts()
    api = APIRouter()
    api.add_route("/plain/{x}/", plain)
    api.mount("/sub", Starlette(routes=[Route("/thing/{y}/", plain)]))
    app = FastAPI()
    app.include_router(api)
    client = TestClient(wrap(app, telemetry), follow_redirects=False)
    for n in range(2):
        assert client.get(f"/plain/{n}/").status_code == 200
        if mounts:
            assert client.get(f"/sub/thing/{n}/").status_code == 200
            assert client.get(f"/sub/thing/{n}").status_code == 307
    expected = {("GET", "/plain/{x}/", 200): 2}
    if mounts:
        expected[("GET", "/sub/thing/{y}/", 200)] = 2
        expected[("GET", "/sub/thing/{y}/", 307)] = 2
    assert counts(telemetry) == expected


def test_preflights_to_routes_of_fastapis_included_routers_keep_their_templates(telemetry, counts):
    """A CORS preflight is answered before routing; for a route of an included
    router (one route without a template, from FastAPI 0.165) it was keyed by
    its anonymized path, a key per item id, where its request had the template."""
    users = APIRouter(prefix="/users")

    @users.get("/{user_id}")
    def user(user_id: int):
        return user_id

    api = APIRouter(prefix="/api")
    api.include_router(users)
    app = FastAPI(middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"])])
    app.include_router(api)
    client = TestClient(wrap(app, telemetry))
    for n in range(3):
        assert client.options(f"/api/users/{n}", headers=PREFLIGHT).status_code == 200
        assert client.get(f"/api/users/{n}").status_code == 200
    assert client.options("/api/nothing/4711", headers=PREFLIGHT).status_code == 200
    assert counts(telemetry) == {
        ("OPTIONS", "/api/users/{user_id}", 200): 3,
        ("GET", "/api/users/{user_id}", 200): 3,
        ("OPTIONS", UNMATCHED_ROUTE, 200): 1,
    }


def test_a_host_in_front_of_an_app_without_routes_anonymizes_its_paths(telemetry, counts):
    app = wrap(Starlette(routes=[Host("files.example.com", app=raw_app)]), telemetry)
    client = TestClient(app, base_url="http://files.example.com")
    assert client.get("/docs/42").status_code == 200
    assert client.get("/docs/42", headers={"Host": "other.example"}).status_code == 404
    assert counts(telemetry) == {
        ("GET", telemetry.anonymizer.path("/docs/42"), 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }


def test_scanners_404s_behind_a_host_with_routes_share_one_key(telemetry, counts):
    api = Starlette(routes=[Route("/items/{item_id}", plain)])
    app = wrap(Starlette(routes=[Host("api.example.com", app=api)]), telemetry)
    client = TestClient(app, base_url="http://api.example.com")
    for path in ("/items/1", "/wp-admin/a", "/.env", "/phpmyadmin/x"):
        client.get(path)
    assert counts(telemetry) == {
        ("GET", "/items/{item_id}", 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 3,
    }


async def no_such_item(request):
    return PlainTextResponse("no such item", status_code=404)


def test_a_route_whose_handler_answers_404_keeps_its_template(telemetry, counts):
    """A Starlette before 1.7 records no route: "no route matched" and "the
    route's handler answered 404" are told apart by the endpoint that the
    router leaves in the scope when a route matched."""
    inner = Starlette(routes=[Route("/items/{item_id}", no_such_item)])
    app = wrap(Starlette(routes=[Route("/items/{item_id}", no_such_item)]), telemetry)
    app.mount("/shop", inner)
    client = TestClient(app)
    assert client.get("/items/7").status_code == 404
    assert client.get("/shop/items/7").status_code == 404
    assert client.get("/wp-login.php").status_code == 404
    assert client.get("/shop/wp-login.php").status_code == 404
    assert counts(telemetry) == {
        ("GET", "/items/{item_id}", 404): 1,
        ("GET", "/shop/items/{item_id}", 404): 1,
        ("GET", UNMATCHED_ROUTE, 404): 2,
    }


class _CustomRoute(BaseRoute):
    """A route of the app's own making, without a path template."""

    def matches(self, scope):
        if scope["type"] == "http" and scope["path"].startswith("/custom/"):
            return Match.FULL, {"endpoint": raw_app}
        return Match.NONE, {}

    async def handle(self, scope, receive, send):
        await raw_app(scope, receive, send)

    def url_path_for(self, name, /, **path_params):
        raise NoMatchFound(name, path_params)


def test_preflights_to_routes_without_a_template_are_anonymized_like_their_requests(
    telemetry, counts
):
    app = Starlette(
        routes=[Host("files.example.com", app=raw_app), _CustomRoute()],
        middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"])],
    )
    client = TestClient(wrap(app, telemetry))
    for host, path in (("files.example.com", "/docs/42"), ("testserver", "/custom/7")):
        headers = {"Host": host}
        assert client.get(path, headers=headers).status_code == 200
        assert client.options(path, headers={**headers, **PREFLIGHT}).status_code == 200
    assert counts(telemetry) == {
        (method, telemetry.anonymizer.path(path), 200): 1
        for method in ("GET", "OPTIONS")
        for path in ("/docs/42", "/custom/7")
    }
    assert telemetry.internal_errors == 0


def test_paths_answered_before_routing_cannot_make_a_key_each(make_telemetry, counts):
    telemetry = make_telemetry(max_keys=50)
    client = TestClient(build_app_answering_before_routing(telemetry))
    for n in range(200):  # a scanner: unknown paths, refused hosts, preflights for nothing
        client.options(f"/wp-admin/{n}.php", headers=PREFLIGHT)
        client.get(f"/items/{n}", headers={"Host": "evil.example"})
    assert client.put("/items/1").status_code == 200
    assert counts(telemetry) == {
        ("OPTIONS", UNMATCHED_ROUTE, 200): 200,
        ("GET", "/items/{item_id}", 400): 200,  # refused by TrustedHost, on a real route
        ("PUT", "/items/{item_id}", 200): 1,
    }
    assert telemetry.recorder.dropped == 0


async def rate_limited(scope, receive, send):
    """An ASGI wrapper's answer before the app: a rate limit, say."""
    await send({"type": "http.response.start", "status": 429, "headers": []})
    await send({"type": "http.response.body", "body": b"slow down"})


def test_wrappers_outside_the_app_answering_first_cannot_make_a_key_each(make_telemetry, counts):
    """``ASGIMiddleware(CORSMiddleware(app))``, the README's way of wrapping any
    ASGI app, with other wrappers inside it: their answers (a preflight, a
    429) reached no Starlette app, so the path was hashed, a key per id, and a
    scanner filled the key cap and pushed real traffic into ``<overflow>``."""
    telemetry = make_telemetry(max_keys=50)
    app = FastAPI()

    @app.put("/items/{item_id}")
    def put_item(item_id: int):
        return {"id": item_id}

    limited = {"on": False}

    def rate_limit(inner):
        async def wrapper(scope, receive, send):
            if scope["type"] == "http" and limited["on"]:
                await rate_limited(scope, receive, send)
            else:
                await inner(scope, receive, send)

        wrapper.app = inner  # how wrappers are followed to the router
        return wrapper

    cors = CORSMiddleware(app, allow_origins=["https://spa.example"], allow_methods=["*"])
    client = TestClient(ASGIMiddleware(rate_limit(cors), telemetry=telemetry))
    for n in range(100):
        client.options(f"/items/{n}", headers=PREFLIGHT)
        client.options(f"/wp-admin/{n}.php", headers=PREFLIGHT)
    limited["on"] = True
    for n in range(100):
        assert client.get(f"/items/{n}").status_code == 429
    limited["on"] = False
    assert client.put("/items/1").status_code == 200
    assert counts(telemetry) == {
        ("OPTIONS", "/items/{item_id}", 200): 100,
        ("OPTIONS", UNMATCHED_ROUTE, 200): 100,
        ("GET", "/items/{item_id}", 429): 100,
        ("PUT", "/items/{item_id}", 200): 1,
    }
    assert telemetry.recorder.dropped == 0


# -- preflights remembered -------------------------------------------------------


CORS = Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"])


class _CountingPattern:
    """A route's compiled pattern that notes every string matched against it."""

    def __init__(self, pattern, tried: list[str]) -> None:
        self._pattern = pattern
        self._tried = tried

    def match(self, string: str):
        self._tried.append(string)
        return self._pattern.match(string)


def count_matching(routes) -> list[str]:
    """Make every route of ``routes``, through mounts and hosts, note each path
    (or host) it is matched against, in the list returned. The routes keep
    Starlette's own ``matches``: only their patterns are wrapped."""
    tried: list[str] = []

    def wrap_patterns(routes) -> None:
        for route in routes:
            for name in ("path_regex", "host_regex"):
                pattern = getattr(route, name, None)
                if pattern is not None:
                    setattr(route, name, _CountingPattern(pattern, tried))
            if isinstance(route, (Mount, Host)):
                wrap_patterns(route.routes)

    wrap_patterns(routes)
    return tried


def matched_requests(middleware: ASGIMiddleware):
    """The middleware's remembered preflights (raw request targets → templates)."""
    return middleware._templates._matched._templates


def preflights(app, *targets, method: str = "OPTIONS") -> list[int]:
    """Send each ``(path, root_path, host)`` to ``app`` in-process, one event
    loop for all (thousands take a second): the statuses."""
    statuses: list[int] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run() -> None:
        for path, root_path, host in targets:
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": method,
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "root_path": root_path,
                "query_string": b"",
                "headers": [
                    (b"host", host.encode()),
                    (b"origin", b"https://spa.example"),
                    (b"access-control-request-method", b"PUT"),
                ],
                "server": ("testserver", 80),
                "client": ("127.0.0.1", 5000),
            }
            await app(scope, receive, send)

    asyncio.run(run())
    return statuses


def test_a_repeated_preflight_is_matched_against_the_routes_once(telemetry, counts):
    """A preflight never reaches the router, so its template was found by
    matching it against every route again: with 500 routes some 160 µs on the
    event loop, for every preflight of every browser. The same target is
    matched once; another one is matched in turn."""
    app = Starlette(
        routes=[Route(f"/r{n}/{{item_id}}", plain, methods=["PUT"]) for n in range(50)],
        middleware=[CORS],
    )
    tried = count_matching(app.routes)
    client = TestClient(wrap(app, telemetry))
    assert client.options("/r49/1", headers=PREFLIGHT).status_code == 200
    assert len(tried) == 50  # OPTIONS takes none of them fully: every route is tried
    for _ in range(3):
        assert client.options("/r49/1", headers=PREFLIGHT).status_code == 200
    assert len(tried) == 50
    assert client.options("/r49/2", headers=PREFLIGHT).status_code == 200
    assert len(tried) == 100
    assert counts(telemetry) == {("OPTIONS", "/r49/{item_id}", 200): 5}


def test_remembered_preflights_get_the_keys_matching_gave_them(telemetry, counts):
    """Through hosts (the same path is another route under another host),
    mounts (with and without routes of their own), and to paths no route
    takes (still unmatched, not a key per path): the second round of the same
    preflights is answered from memory, and recorded as the first was."""
    api = Starlette(routes=[Route("/items/{item_id}", plain, methods=["PUT"])])
    tenants = Starlette(routes=[Route("/users/{user_id}", plain, methods=["PUT"])])
    shop = Starlette(
        routes=[Route("/items/{sku}", plain, methods=["PUT"]), Mount("/t/{tenant}", app=tenants)]
    )
    app = Starlette(
        routes=[
            Host("api.example.com", app=api),
            Host("shop.example.com", app=shop),
            Mount("/files", app=raw_app),
        ],
        middleware=[CORS],
    )
    tried = count_matching(app.routes)
    client = TestClient(wrap(app, telemetry))
    targets = [
        ("api.example.com", "/items/1"),
        ("shop.example.com", "/items/1"),
        ("shop.example.com", "/t/acme/users/7"),
        ("testserver", "/files/report.pdf"),
        ("api.example.com", "/wp-admin/setup.php"),
        ("testserver", "/items/1"),
        ("testserver", "/.env"),
    ]
    expected = {
        ("OPTIONS", "/items/{item_id}", 200): 1,
        ("OPTIONS", "/items/{sku}", 200): 1,
        ("OPTIONS", "/t/{tenant}/users/{user_id}", 200): 1,
        ("OPTIONS", "/files/{path}", 200): 1,
        ("OPTIONS", UNMATCHED_ROUTE, 200): 3,
    }
    for host, path in targets:
        assert client.options(path, headers={"Host": host, **PREFLIGHT}).status_code == 200
    assert counts(telemetry) == expected
    matched = len(tried)
    for host, path in targets:
        assert client.options(path, headers={"Host": host, **PREFLIGHT}).status_code == 200
    assert len(tried) == matched
    assert counts(telemetry) == {key: 2 * count for key, count in expected.items()}


def test_a_remembered_preflight_is_told_apart_by_its_root_path(telemetry, counts):
    """The router matches the path without the ``root_path`` a proxy put in
    front of it (``--root-path /api``): the same path under another root_path
    is another answer, and is remembered as one."""
    app = Starlette(routes=[Route("/items/{item_id}", plain, methods=["PUT"])], middleware=[CORS])
    tried = count_matching(app.routes)
    middleware = ASGIMiddleware(app, telemetry=telemetry)
    targets = [("/api/items/1", "/api", "testserver"), ("/api/items/1", "", "testserver")]
    assert preflights(middleware, *targets) == [200, 200]
    assert len(tried) == 2
    assert preflights(middleware, *targets) == [200, 200]
    assert len(tried) == 2
    assert counts(telemetry) == {
        ("OPTIONS", "/items/{item_id}", 200): 2,
        ("OPTIONS", UNMATCHED_ROUTE, 200): 2,
    }


def test_an_answer_before_routing_is_remembered_by_its_method(telemetry, counts):
    """A rate limiter in front of the app refuses every method: the route a
    request would have taken depends on its method (the first route that takes
    it fully, else the first that takes its path), and so does what is
    remembered."""
    app = Starlette(
        routes=[
            Route("/items/{item_id}", plain, methods=["GET"]),
            Route("/items/{sku}", plain, methods=["PUT"]),
        ]
    )
    tried = count_matching(app.routes)

    async def refuse_all(scope, receive, send):
        await rate_limited(scope, receive, send)

    refuse_all.app = app  # how wrappers are followed to the router
    middleware = ASGIMiddleware(refuse_all, telemetry=telemetry)
    for _ in range(2):
        for method in ("PUT", "GET", "OPTIONS"):
            assert preflights(middleware, ("/items/1", "", "testserver"), method=method) == [429]
    assert len(tried) == 5  # PUT: both routes; GET: the first; OPTIONS: both
    assert counts(telemetry) == {
        ("PUT", "/items/{sku}", 429): 2,
        ("GET", "/items/{item_id}", 429): 2,
        ("OPTIONS", "/items/{item_id}", 429): 2,
    }


def test_remembered_preflights_stay_bounded(telemetry, counts):
    """A scanner's preflights, each to another path: what is remembered holds
    at most ``MAX_MATCHED_REQUESTS`` keys of at most
    ``MATCHED_REQUEST_MAX_LENGTH`` characters, and every answer still counts
    where it belongs."""
    limit = starlette_integration.MAX_MATCHED_REQUESTS
    app = Starlette(routes=[Route("/items/{item_id}", plain, methods=["PUT"])], middleware=[CORS])
    middleware = ASGIMiddleware(app, telemetry=telemetry)
    total = limit + 500
    targets = [
        (f"/items/{n}" if n % 2 else f"/wp-admin/{n}.php", "", "testserver") for n in range(total)
    ]
    assert set(preflights(middleware, *targets)) == {200}
    remembered = matched_requests(middleware)
    assert 0 < len(remembered) <= limit
    for key in remembered:
        size = sum(len(part) for part in key if isinstance(part, (str, bytes)))
        assert size <= starlette_integration.MATCHED_REQUEST_MAX_LENGTH
    assert counts(telemetry) == {
        ("OPTIONS", "/items/{item_id}", 200): total // 2,
        ("OPTIONS", UNMATCHED_ROUTE, 200): total // 2,
    }


def test_long_preflight_targets_are_matched_each_time_not_remembered(telemetry, counts):
    """Path, root_path and method up to ``MATCHED_REQUEST_MAX_LENGTH``
    characters are remembered; a character more is matched each time, so that
    long paths cannot fill the memory."""
    limit = starlette_integration.MATCHED_REQUEST_MAX_LENGTH
    app = Starlette(routes=[Route("/items/{item_id}", plain, methods=["PUT"])], middleware=[CORS])
    tried = count_matching(app.routes)
    middleware = ASGIMiddleware(app, telemetry=telemetry)
    fits = "/items/" + "x" * (limit - len("/items/") - len("OPTIONS"))
    too_long = fits + "x"
    assert preflights(middleware, *[(fits, "", "testserver")] * 3) == [200] * 3
    assert len(tried) == 1
    assert preflights(middleware, *[(too_long, "", "testserver")] * 3) == [200] * 3
    assert len(tried) == 4
    assert [key[4] for key in matched_requests(middleware)] == [fits]
    assert counts(telemetry) == {("OPTIONS", "/items/{item_id}", 200): 6}


def test_preflight_targets_outside_ascii_are_matched_each_time_not_remembered(telemetry, counts):
    """The bound is in bytes: a path of emoji (percent-encoded, decoded by the
    server) takes 4 bytes a character, and such targets filled the cache past
    it. Outside ASCII, a preflight is matched each time, to the same template."""
    app = Starlette(routes=[Route("/items/{item_id}", plain, methods=["PUT"])], middleware=[CORS])
    tried = count_matching(app.routes)
    middleware = ASGIMiddleware(app, telemetry=telemetry)
    wide = "/items/" + "\N{PILE OF POO}" * 60
    assert preflights(middleware, *[(wide, "", "testserver")] * 3) == [200] * 3
    assert len(tried) == 3
    assert preflights(middleware, *[("/items/plain", "", "testserver")] * 3) == [200] * 3
    assert len(tried) == 4
    assert [key[4] for key in matched_requests(middleware)] == ["/items/plain"]
    assert counts(telemetry) == {("OPTIONS", "/items/{item_id}", 200): 6}


def test_routes_added_at_runtime_take_preflights_remembered_before(telemetry, counts):
    """``add_route`` to the app, or to an app mounted in it, after preflights
    to those paths were remembered as unmatched: the next preflight there gets
    the new route's template, as the router would now choose it."""
    inner = Starlette(routes=[Route("/old/{n}", plain, methods=["PUT"])])
    app = Starlette(routes=[Mount("/sub", app=inner)], middleware=[CORS])
    tried = count_matching(app.routes)
    middleware = ASGIMiddleware(app, telemetry=telemetry)
    targets = [("/later/1", "", "testserver"), ("/sub/later/1", "", "testserver")]
    assert preflights(middleware, *targets, *targets) == [200] * 4
    assert len(tried) == 3  # /later/1 by the mount; /sub/later/1 by the mount and its route
    app.add_route("/later/{n}", plain, methods=["PUT"])
    inner.add_route("/later/{m}", plain, methods=["PUT"])
    assert preflights(middleware, *targets) == [200] * 2
    assert counts(telemetry) == {
        ("OPTIONS", UNMATCHED_ROUTE, 200): 4,
        ("OPTIONS", "/later/{n}", 200): 1,
        ("OPTIONS", "/sub/later/{m}", 200): 1,
    }


def test_routes_added_to_fastapis_included_routers_take_remembered_preflights(
    telemetry, counts, monkeypatch
):
    """A router FastAPI included is matched through its own routes, read anew
    when they change: a route added to it after its preflights were
    remembered takes the next one."""
    matching = []
    unremembered = starlette_integration.template_by_matching

    def counted(routes, scope, prefix=""):
        if routes is app.router.routes:  # not its calls of itself, through the included router
            matching.append(scope["path"])
        return unremembered(routes, scope, prefix)

    monkeypatch.setattr(starlette_integration, "template_by_matching", counted)
    api = APIRouter(prefix="/api")

    @api.get("/a/{x}")
    def a(x: int):
        return x

    app = FastAPI(middleware=[CORS])
    app.include_router(api)
    client = TestClient(ASGIMiddleware(app, telemetry=telemetry))
    for path in ("/api/a/1", "/api/b/1", "/api/a/1", "/api/b/1"):
        assert client.options(path, headers=PREFLIGHT).status_code == 200
    assert len(matching) == 2

    @api.get("/b/{y}")
    def b(y: int):
        return y

    assert client.options("/api/b/1", headers=PREFLIGHT).status_code == 200
    assert counts(telemetry) == {
        ("OPTIONS", "/api/a/{x}", 200): 2,
        ("OPTIONS", UNMATCHED_ROUTE, 200): 2,
        ("OPTIONS", "/api/b/{y}", 200): 1,
    }


class _VersionedRoute(Route):
    """A route of the app's own making: it takes a request by a header too."""

    def matches(self, scope):
        match, child_scope = super().matches(scope)
        if (b"x-api-version", b"2") not in scope.get("headers", []):
            return Match.NONE, {}
        return match, child_scope


def test_apps_with_routes_of_their_own_making_are_matched_every_time(telemetry, counts):
    """A route whose ``matches`` is not Starlette's or FastAPI's may read
    anything of the request (here a header): what it answered for one request
    need not hold for the next to the same path, and such an app is matched
    each time, as is one whose route had its ``matches`` replaced. An app
    with Starlette's routes alone is matched once."""
    custom = Starlette(
        routes=[
            _VersionedRoute("/items/{item_id}", plain, methods=["PUT"]),
            Route("/items/{sku}", plain, methods=["PUT"]),
        ],
        middleware=[CORS],
    )
    tried = count_matching(custom.routes)
    client = TestClient(ASGIMiddleware(custom, telemetry=telemetry))
    for version in ("1", "2", "1", "2"):
        headers = {**PREFLIGHT, "X-API-Version": version}
        assert client.options("/items/1", headers=headers).status_code == 200
    assert len(tried) == 8  # both routes, each time
    assert counts(telemetry) == {
        ("OPTIONS", "/items/{sku}", 200): 2,
        ("OPTIONS", "/items/{item_id}", 200): 2,
    }

    replaced = Starlette(routes=[Route("/plain/{n}", plain, methods=["PUT"])], middleware=[CORS])
    replaced.routes[0].matches = lambda scope: (Match.NONE, {})  # the instance's own
    plain_app = Starlette(routes=[Route("/plain/{n}", plain, methods=["PUT"])], middleware=[CORS])
    tried = count_matching(plain_app.routes)
    remembered = []
    for app in (replaced, plain_app):
        middleware = ASGIMiddleware(app, telemetry=telemetry)
        assert preflights(middleware, *[("/plain/1", "", "testserver")] * 2) == [200, 200]
        remembered.append(len(matched_requests(middleware)))
    assert remembered == [0, 1]
    assert len(tried) == 1
    assert counts(telemetry)[("OPTIONS", UNMATCHED_ROUTE, 200)] == 2
    assert counts(telemetry)[("OPTIONS", "/plain/{n}", 200)] == 2


def test_remembered_preflights_cannot_be_pickled_copied_or_shown(telemetry):
    """Their keys are raw paths: in memory only, as the anonymizer's salt."""
    app = Starlette(routes=[Route("/items/{item_id}", plain, methods=["PUT"])], middleware=[CORS])
    middleware = ASGIMiddleware(app, telemetry=telemetry)
    assert preflights(middleware, ("/items/alice-secret", "", "testserver")) == [200]
    remembered = matched_requests(middleware)
    assert len(remembered) == 1
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            attempt(remembered)
    assert "alice-secret" not in repr(remembered)
    assert "alice-secret" not in json.dumps(telemetry.snapshot())


WITHOUT_STARLETTE = """
import asyncio, json, sys

sys.modules["starlette"] = None  # as if not installed: importing it fails
from reqtelemetry import ASGIMiddleware, Telemetry
from reqtelemetry.config import Config

async def app(scope, receive, send):
    status = 404 if scope["path"] == "/missing" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

async def call(middleware, path):
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        pass
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "",
             "query_string": b"", "headers": []}
    await middleware(scope, receive, send)

telemetry = Telemetry(config=Config.resolve(environ={}))
middleware = ASGIMiddleware(app, telemetry=telemetry)
for path in ("/a", "/b", "/missing"):
    asyncio.run(call(middleware, path))
print(json.dumps({"records": len(telemetry.snapshot()), "errors": telemetry.internal_errors,
                  "starlette": "starlette.routing" in sys.modules}))
"""


def test_a_plain_asgi_app_is_recorded_where_starlette_is_not_installed():
    """Starlette is no dependency of a plain ASGI app's (Quart, Litestar,
    Django). Looking for the app's router imported it, which failed on every
    request: each was an internal error, and nothing was recorded."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_STARLETTE],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_environment(),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"records": 3, "errors": 0, "starlette": False}


FIRST_EXCEPTION = """
import asyncio, json, sys

from reqtelemetry import ASGIMiddleware, Telemetry
from reqtelemetry.config import Config

async def app(scope, receive, send):
    raise RuntimeError("the app failed")

async def call(middleware):
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        pass
    scope = {"type": "http", "method": "GET", "path": "/a", "root_path": "",
             "query_string": b"", "headers": []}
    try:
        await middleware(scope, receive, send)
    except RuntimeError:
        pass

telemetry = Telemetry(config=Config.resolve(environ={}))
asyncio.run(call(ASGIMiddleware(app, telemetry=telemetry)))
print(json.dumps({"statuses": [r["status"] for r in telemetry.snapshot()],
                  "backend": "anyio._backends._asyncio" in sys.modules}))
"""


def test_a_raw_asgi_apps_first_exception_loads_nothing_on_the_event_loop():
    """Telling a cancellation from the app's own exception asked anyio for the
    loop's cancellation class, whose first call imports anyio's asyncio
    backend: 13 to 24 ms with the event loop blocked, at the first exception
    of an app that is no Starlette app (Starlette loads it anyway)."""
    done = subprocess.run(
        [sys.executable, "-c", FIRST_EXCEPTION],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_environment(),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"statuses": [500], "backend": False}


def test_a_router_behind_a_wrapper_that_hides_it_keeps_its_templates_when_mounted(
    make_telemetry, counts
):
    """A wrapper without ``.app`` between the middleware and a mounted app's
    router: the router recorded its route, and that template holds (a diff
    review found it hashed, a key per id)."""
    telemetry = make_telemetry(group_unmatched=False)
    inner = Starlette(routes=[Route("/items/{item_id}", plain)])

    def hiding(scope, receive, send):  # a function: no .app to follow
        return inner(scope, receive, send)

    outer = Starlette(routes=[Mount("/api", app=ASGIMiddleware(hiding, telemetry=telemetry))])
    client = TestClient(outer)
    for item in (1, 2, 3):
        assert client.get(f"/api/items/{item}").status_code == 200
    assert counts(telemetry) == {("GET", "/items/{item_id}", 200): 3}


def test_a_fastapi_root_mount_is_keyed_by_its_template(telemetry, counts):
    """``app.mount("/", StaticFiles(html=True))`` under a single-page app, or a
    legacy app behind the API: FastAPI records no route for a mount, and a
    mount at the root changes no ``root_path``, so its files were all
    ``<unmatched>`` (each hashed, with ``group_unmatched=False``)."""
    app = FastAPI()

    @app.get("/api/users/{uid}")
    def user(uid: str):
        return {"uid": uid}

    app.mount("/", raw_app)
    client = TestClient(wrap(app, telemetry))
    assert client.get("/api/users/alice").status_code == 200
    for path in ("/", "/assets/app.js", "/assets/alice.js"):
        assert client.get(path).status_code == 200
    assert counts(telemetry) == {
        ("GET", "/api/users/{uid}", 200): 1,
        ("GET", "/{path}", 200): 3,
    }


def test_a_route_less_app_mounted_in_a_router_is_never_given_the_routers_templates(
    make_telemetry, counts
):
    """A route-less app wrapped in the middleware, mounted in a Starlette app:
    its paths were matched against the outer router's routes, so
    ``/legacy/alice`` counted as the outer ``/{page}`` and served requests as
    ``<unmatched>``. It is a route-less app: its path is anonymized."""
    telemetry = make_telemetry(group_unmatched=False)
    outer = Starlette(
        routes=[
            Route("/{page}", plain),
            Mount("/legacy", app=ASGIMiddleware(raw_app, telemetry=telemetry)),
        ]
    )
    client = TestClient(outer)
    assert client.get("/legacy/alice").status_code == 200
    assert client.get("/legacy/users/alice").status_code == 200
    keys = counts(telemetry)
    assert "/{page}" not in {route for _, route, _ in keys}
    assert UNMATCHED_ROUTE not in {route for _, route, _ in keys}
    assert sorted(status for _, _, status in keys) == [200, 200]
    assert all("alice" not in route for _, route, _ in keys)


def build_fastapi_app() -> FastAPI:
    app = FastAPI()

    leaf = APIRouter(prefix="/items")

    @leaf.get("/{item_id}")
    def get_item(item_id: int):
        if item_id == 0:
            raise HTTPException(status_code=404, detail="no such item")
        return {"id": item_id}

    @leaf.post("")
    def create_item(payload: dict):
        return payload

    middle = APIRouter(prefix="/v1")
    middle.include_router(leaf)

    @middle.get("/ping")
    def ping():
        return "pong"

    outer = APIRouter(prefix="/api")
    outer.include_router(middle)
    app.include_router(outer)
    app.include_router(outer, prefix="/legacy")  # the same router twice, two templates

    sub = FastAPI()

    @sub.get("/users/{user_id}")
    def get_user(user_id: str):
        return {"user": user_id}

    app.mount("/sub", sub)
    app.mount(
        "/org/{org}",
        Starlette(
            routes=[Route("/p/{x}", plain), Mount("/team/{team}", routes=[Route("/m/{m}", plain)])]
        ),
    )
    app.mount("/static", raw_app)
    app.add_route("/plain/{name}", plain)
    return app


@pytest.fixture
def fastapi_client(telemetry):
    return TestClient(wrap(build_fastapi_app(), telemetry))


def test_fastapi_nested_routers_and_mounts(fastapi_client, telemetry, counts):
    client = fastapi_client
    responses = [
        client.get("/api/v1/items/1"),
        client.get("/api/v1/items/2"),
        client.get("/api/v1/ping"),
        client.get("/legacy/api/v1/items/3"),
        client.post("/api/v1/items", json={"a": 1}),
        client.get("/sub/users/alice"),
        client.get("/org/acme/p/7"),
        client.get("/org/acme/p/8"),
        client.get("/org/other/team/red/m/1"),
        client.get("/static/css/site.css"),
        client.get("/static/js/app.js"),
        client.get("/plain/bob"),
        client.get("/api/v1/items/0"),  # a routed 404 keeps its template
    ]
    assert [r.status_code for r in responses] == [200] * 12 + [404]
    assert responses[7].text == "ok:org=acme,x=8"
    assert counts(telemetry) == {
        ("GET", "/api/v1/items/{item_id}", 200): 2,
        ("GET", "/api/v1/ping", 200): 1,
        ("GET", "/legacy/api/v1/items/{item_id}", 200): 1,
        ("POST", "/api/v1/items", 200): 1,
        ("GET", "/sub/users/{user_id}", 200): 1,
        ("GET", "/org/{org}/p/{x}", 200): 2,
        ("GET", "/org/{org}/team/{team}/m/{m}", 200): 1,
        ("GET", "/static/{path}", 200): 2,
        ("GET", "/plain/{name}", 200): 1,
        ("GET", "/api/v1/items/{item_id}", 404): 1,
    }


def test_fastapi_plain_routes_and_docs(make_telemetry, counts):
    telemetry = make_telemetry()
    client = TestClient(wrap(build_fastapi_app(), telemetry))
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.post("/plain/x").status_code == 405
    assert counts(telemetry) == {
        ("GET", "/openapi.json", 200): 1,
        ("GET", "/docs", 200): 1,
        ("POST", "/plain/{name}", 405): 1,
    }


def test_starlette_mount_of_fastapi_app_with_mounts(telemetry, counts):
    inner = FastAPI()

    @inner.get("/users/{user_id}")
    def user(user_id: int):
        return user_id

    inner.mount("/assets", raw_app)
    inner.add_route("/plain/{p}", plain)
    app = Starlette(routes=[Mount("/v/{version}", app=inner)])
    client = TestClient(wrap(app, telemetry))
    for path in ["/v/1/users/3", "/v/2/assets/a.js", "/v/1/plain/q"]:
        assert client.get(path).status_code == 200, path
    assert client.get("/v/1/none").status_code == 404
    assert counts(telemetry) == {
        ("GET", "/v/{version}/users/{user_id}", 200): 1,
        ("GET", "/v/{version}/assets/{path}", 200): 1,
        ("GET", "/v/{version}/plain/{p}", 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }


def test_fastapi_unmatched_collapse(fastapi_client, telemetry, counts):
    client = fastapi_client
    paths = [
        "/nope",
        "/wp-admin/setup.php",
        "/api/v1/nothing",
        "/sub/nothing",
        "/org/acme/zzz",
        "/org/acme/team/red/zzz",
        "/.env",
    ]
    for path in paths:
        assert client.get(path).status_code == 404
    assert counts(telemetry) == {("GET", UNMATCHED_ROUTE, 404): len(paths)}


def test_fastapi_mount_of_leaf_app_keeps_its_404(fastapi_client, telemetry, counts):
    assert fastapi_client.get("/static/missing").status_code == 404
    assert counts(telemetry) == {("GET", "/static/{path}", 404): 1}


def build_starlette_app() -> Starlette:
    inner = Starlette(routes=[Route("/u/{user}", plain)])
    return Starlette(
        routes=[
            Route("/a/{id:int}", plain),
            Mount(
                "/org/{org}",
                routes=[
                    Route("/p/{x}", plain),
                    Mount("/deep/{d}", routes=[Route("/leaf/{leaf}", plain)]),
                    Mount("/files", app=raw_app),
                ],
            ),
            Mount("/static", app=raw_app),
            Mount("/sub", app=inner),
        ]
    )


def test_starlette_mounts(telemetry, counts):
    client = TestClient(wrap(build_starlette_app(), telemetry))
    for path in [
        "/a/1",
        "/a/2",
        "/org/acme/p/9",
        "/org/x/deep/y/leaf/z",
        "/org/acme/files/a.txt",
        "/static/a/b.css",
        "/sub/u/5",
    ]:
        assert client.get(path).status_code == 200, path
    for path in ["/nope", "/a/notint", "/sub/nope", "/org/acme/nope", "/org/acme/deep/x/nope"]:
        assert client.get(path).status_code == 404, path
    assert counts(telemetry) == {
        ("GET", "/a/{id}", 200): 2,  # path_format drops the convertor
        ("GET", "/org/{org}/p/{x}", 200): 1,
        ("GET", "/org/{org}/deep/{d}/leaf/{leaf}", 200): 1,
        ("GET", "/org/{org}/files/{path}", 200): 1,
        ("GET", "/static/{path}", 200): 1,
        ("GET", "/sub/u/{user}", 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 5,
    }


def test_templates_under_a_server_root_path(telemetry, counts):
    client = TestClient(wrap(build_starlette_app(), telemetry), root_path="/prefix")
    # The server gives the full path and the prefix it stripped in front (ASGI root_path).
    assert client.get("/prefix/org/acme/p/9").status_code == 200
    assert client.get("/prefix/static/x").status_code == 200
    assert client.get("/prefix/nothing").status_code == 404
    assert counts(telemetry) == {
        ("GET", "/org/{org}/p/{x}", 200): 1,
        ("GET", "/static/{path}", 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }


def test_mount_template_cache_serves_many_prefixes(telemetry, counts):
    app = wrap(build_starlette_app(), telemetry)
    # More distinct concrete prefixes than the cache keeps.
    asgi_requests(app, [("GET", f"/org/o{org}/p/1", None) for org in range(300)])
    assert counts(telemetry) == {("GET", "/org/{org}/p/{x}", 200): 300}


# -- status, errors, methods -------------------------------------------------------


def build_error_app() -> Starlette:
    async def boom(request):
        raise RuntimeError("the view failed")

    async def ok(request):
        body = await request.body()
        return PlainTextResponse(f"fine, {len(body)} bytes")

    return Starlette(routes=[Route("/boom", boom), Route("/ok", ok, methods=["GET", "POST"])])


def test_exception_records_500_and_reraises(telemetry, counts):
    client = TestClient(wrap(build_error_app(), telemetry), raise_server_exceptions=True)
    with pytest.raises(RuntimeError, match="the view failed"):
        client.get("/boom")
    assert counts(telemetry) == {("GET", "/boom", 500): 1}


def test_exception_answered_500_is_recorded_once(telemetry, counts):
    client = TestClient(wrap(build_error_app(), telemetry), raise_server_exceptions=False)
    response = client.get("/boom")
    assert response.status_code == 500
    assert counts(telemetry) == {("GET", "/boom", 500): 1}
    assert telemetry.internal_errors == 0


def test_fastapi_exception_records_500(make_telemetry, counts):
    telemetry = make_telemetry()
    app = FastAPI()

    @app.get("/fail/{n}")
    def fail(n: int):
        raise ValueError(n)

    client = TestClient(wrap(app, telemetry), raise_server_exceptions=False)
    assert client.get("/fail/3").status_code == 500
    with pytest.raises(ValueError):
        TestClient(app).get("/fail/4")
    assert counts(telemetry) == {("GET", "/fail/{n}", 500): 2}


def test_a_background_task_failing_after_the_response_keeps_the_status_sent(telemetry, records):
    def failing_task():
        raise RuntimeError("the background task failed")

    async def queued(request):
        return PlainTextResponse("queued", background=BackgroundTask(failing_task))

    app = wrap(Starlette(routes=[Route("/queued/{n}", queued)]), telemetry)
    error, sent = drive(app, "/queued/7", [{"type": "http.request", "body": b""}])
    assert isinstance(error, RuntimeError)  # passed on to the server untouched
    assert sent[0]["status"] == 200
    (record,) = records(telemetry).values()
    assert (record["method"], record["route"], record["status"]) == ("GET", "/queued/{n}", 200)
    assert record["response_bytes"] == len(b"queued")


def test_an_exception_handlers_answer_is_recorded_from_outside_the_app(telemetry, records):
    async def unavailable(request, exc):
        return PlainTextResponse("maintenance", status_code=503)

    async def fails(request):
        raise RuntimeError("database down")

    inner = Starlette(routes=[Route("/q", fails)], exception_handlers={Exception: unavailable})
    # Starlette's outermost middleware answers with the handler, then re-raises.
    error, sent = drive(ASGIMiddleware(inner, telemetry=telemetry), "/q", [])
    assert isinstance(error, RuntimeError)
    assert sent[0]["status"] == 503
    assert list(records(telemetry)) == [("GET", "/q", 503)]


def test_an_app_mounted_in_one_of_the_same_telemetry_counts_once(make_telemetry, counts):
    telemetry, other = make_telemetry(), make_telemetry()
    sub = FastAPI()

    @sub.get("/ping/{n}")
    def ping(n: int):
        return {"n": n}

    main = FastAPI()
    main.mount("/admin", wrap(sub, telemetry))
    client = TestClient(wrap(main, telemetry))
    assert client.get("/admin/ping/1").json() == {"n": 1}
    assert counts(telemetry) == {("GET", "/admin/ping/{n}", 200): 1}

    # Stacked, or added and wrapped around: still once.
    app = FastAPI()
    app.add_api_route("/items/{item_id}", lambda item_id: item_id)
    app.add_middleware(ASGIMiddleware, telemetry=other)
    app.add_middleware(ASGIMiddleware, telemetry=other)
    client = TestClient(ASGIMiddleware(app, telemetry=other))
    assert client.get("/items/3").status_code == 200
    assert counts(other) == {("GET", "/items/{item_id}", 200): 1}


def test_a_middleware_that_deep_copies_the_scope_still_serves(make_telemetry, counts):
    """hypercorn's ProxyFixMiddleware deep-copies the scope: a Telemetry in it
    (locks cannot be copied) made every request of such an app a 500."""
    from hypercorn.middleware import ProxyFixMiddleware

    telemetry = make_telemetry()
    app = Starlette(routes=[Route("/ping/{n}", plain)])
    client = TestClient(ASGIMiddleware(ProxyFixMiddleware(app), telemetry=telemetry))
    assert client.get("/ping/3").text == "ok:n=3"
    assert counts(telemetry) == {("GET", "/ping/{n}", 200): 1}


def test_the_mark_leaves_the_scope_with_the_request(telemetry):
    """Left in the scope, the mark (the exchange, which holds the server's
    send, whose owner holds the scope) made each request a reference cycle
    for the garbage collector: 5,400 instructions a request inside uvicorn."""
    from reqtelemetry.telemetry import MEASURED_KEY

    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        assert scope[MEASURED_KEY].telemetry is telemetry  # marked while it runs
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    error, _ = drive(ASGIMiddleware(app, telemetry=telemetry), "/x", [])
    assert error is None
    assert MEASURED_KEY not in scopes[0]


def test_nested_middlewares_of_two_telemetries_each_count(make_telemetry, counts):
    outer, inner = make_telemetry(), make_telemetry()
    sub = Starlette(routes=[Route("/ping/{n}", plain)])
    main = Starlette(routes=[Mount("/admin", ASGIMiddleware(sub, telemetry=inner))])
    client = TestClient(ASGIMiddleware(main, telemetry=outer))
    assert client.get("/admin/ping/2").text == "ok:n=2"
    assert counts(outer) == {("GET", "/admin/ping/{n}", 200): 1}
    assert sum(counts(inner).values()) == 1


def test_what_follows_the_last_chunk_is_not_counted(telemetry, records):
    """uvicorn drops a body sent after the response ended (hypercorn refuses it)."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        await send({"type": "http.response.body", "body": b"x" * 5000})

    error, _ = drive(ASGIMiddleware(app, telemetry=telemetry), "/late", [])
    assert error is None
    ((_, _, status), record), *others = records(telemetry).items()
    assert (status, record["response_bytes"], others) == (200, 2, [])


def test_a_status_sent_as_text_is_keyed_as_its_number(telemetry, counts):
    """hypercorn takes ``"status": "201"``; keyed apart, one report held two 201 records."""

    def answering(status):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        return app

    for status in (201, "201"):
        drive(ASGIMiddleware(answering(status), telemetry=telemetry), "/made", [])
    assert [(status, n) for (_, _, status), n in counts(telemetry).items()] == [(201, 2)]


def test_head_request(make_telemetry, records):
    telemetry = make_telemetry()
    app = FastAPI()

    @app.api_route("/both", methods=["GET", "HEAD"])
    def both():
        return "both"

    app.add_route("/plain/{name}", plain)
    client = TestClient(wrap(app, telemetry))
    head = client.head("/both")
    assert head.status_code == 200 and head.content == b""
    assert client.head("/plain/x").status_code == 200
    get = client.get("/both")
    found = records(telemetry)
    assert set(found) == {
        ("HEAD", "/both", 200),
        ("HEAD", "/plain/{name}", 200),
        ("GET", "/both", 200),
    }
    assert found["GET", "/both", 200]["response_bytes"] == len(get.content)
    # No body goes out for HEAD, whatever the app handed to the server.
    assert found["HEAD", "/both", 200]["response_bytes"] == 0
    assert found["HEAD", "/plain/{name}", 200]["response_bytes"] == 0


def test_unknown_method_is_other(telemetry, counts):
    client = TestClient(wrap(build_error_app(), telemetry))
    assert client.request("BREW", "/ok").status_code == 405
    assert client.request("PROPFIND", "/ok").status_code == 405
    assert client.request("GET", "/ok").status_code == 200
    assert counts(telemetry) == {("_OTHER", "/ok", 405): 2, ("GET", "/ok", 200): 1}


# -- sizes and latency ---------------------------------------------------------------


def test_request_and_response_bytes(telemetry, records):
    client = TestClient(wrap(build_error_app(), telemetry))
    body = b"x" * 1234
    response = client.post("/ok", content=body)
    assert response.status_code == 200

    def chunks():
        yield b"a" * 100
        yield b"b" * 200
        yield b"c" * 300

    streamed = client.post("/ok", content=chunks())  # chunked: no content-length
    assert streamed.text == "fine, 600 bytes"
    record = records(telemetry)["POST", "/ok", 200]
    assert record["count"] == 2
    assert record["request_bytes"] == 1234 + 600
    assert record["response_bytes"] == len(response.content) + len(streamed.content)


def test_request_body_bytes_read_by_app(make_telemetry, records):
    telemetry = make_telemetry()
    app = FastAPI()

    @app.post("/upload")
    async def upload(payload: dict):
        return {"keys": len(payload)}

    client = TestClient(wrap(app, telemetry))
    payloads = [{"a": "x" * 1000}, {"b": 1, "c": 2}]
    sent = 0
    for payload in payloads:
        body = json.dumps(payload).encode()
        sent += len(body)
        response = client.post(
            "/upload", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 200
    record = records(telemetry)["POST", "/upload", 200]
    assert record["request_bytes"] == sent


def test_streaming_response_bytes_and_latency(make_telemetry, records):
    telemetry = make_telemetry()
    marks = {}

    async def stream(request):
        marks["app_start"] = perf_counter()

        async def chunks():
            for i in range(200):
                await asyncio.sleep(0)
                yield f"chunk {i}\n".encode()
            marks["stream_end"] = perf_counter()

        return StreamingResponse(chunks(), media_type="text/plain")

    client = TestClient(wrap(Starlette(routes=[Route("/stream", stream)]), telemetry))
    response = client.get("/stream")
    assert response.status_code == 200
    expected = b"".join(f"chunk {i}\n".encode() for i in range(200))
    assert response.content == expected
    record = records(telemetry)["GET", "/stream", 200]
    assert record["response_bytes"] == len(expected)
    # The clock runs from before the app starts to after the last chunk was handed over.
    assert record["latency"]["max"] >= marks["stream_end"] - marks["app_start"]


def test_streaming_error_midway_is_500(telemetry, records):
    async def stream(request):
        async def chunks():
            yield b"a" * 10
            raise RuntimeError("stream broke")

        return StreamingResponse(chunks())

    client = TestClient(
        wrap(Starlette(routes=[Route("/s", stream)]), telemetry), raise_server_exceptions=False
    )
    client.get("/s")
    record = records(telemetry)["GET", "/s", 500]
    assert record["count"] == 1
    assert record["response_bytes"] == 10


def test_background_tasks_are_excluded_from_latency(make_telemetry, records):
    telemetry = make_telemetry()
    app = FastAPI()
    marks = {}

    async def slow_background():
        marks["background_start"] = perf_counter()
        await asyncio.sleep(0.3)  # the one sleep: the work the clock must not see
        marks["background_end"] = perf_counter()

    @app.get("/bg")
    def with_background(tasks: BackgroundTasks):
        tasks.add_task(slow_background)
        return "queued"

    async def starlette_view(request):
        return PlainTextResponse("queued", background=BackgroundTask(slow_background))

    app.add_route("/starlette-bg", starlette_view)
    client = TestClient(wrap(app, telemetry))
    for path in ("/bg", "/starlette-bg"):
        before = perf_counter()
        assert client.get(path).status_code == 200
        assert "background_end" in marks  # the test client waited for the task
        latency = records(telemetry)["GET", path, 200]["latency"]["max"]
        # The response was complete before the background task began (and the
        # task took at least 0.3 s, which a clock that kept running would show).
        assert latency <= marks["background_start"] - before
        marks.clear()


def test_a_file_the_server_sends_itself_counts_its_size(telemetry, records, tmp_path):
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF" + b"x" * 50_000)

    async def download(request):
        return FileResponse(report)

    app = wrap(Starlette(routes=[Route("/reports/{n}", download)]), telemetry)
    # A server offering "http.response.pathsend" (granian does) sends the file itself.
    error, sent = drive(app, "/reports/3", [], extensions={"http.response.pathsend": {}})
    assert error is None
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.pathsend"]
    (record,) = records(telemetry).values()
    assert (record["route"], record["status"]) == ("/reports/{n}", 200)
    assert record["response_bytes"] == report.stat().st_size


def test_zero_copy_chunks_count_what_the_server_sends(telemetry, records, tmp_path):
    """``http.response.zerocopysend`` (ASGI's extension): the server sends a
    chunk from a file descriptor itself. It was recorded as a 500 of 0 bytes."""
    report = tmp_path / "report.pdf"
    report.write_bytes(b"x" * 50_000)

    async def app(scope, receive, send):
        with open(report, "rb") as file:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            message = {"type": "http.response.zerocopysend", "file": file, "more_body": True}
            await send({**message, "offset": 49_000})  # the last 1,000 bytes
            file.seek(40_000)
            await send({**message, "count": 100})
            await send({**message, "more_body": False})  # from the position: 10,000

    extensions = {"http.response.zerocopysend": {}}
    error, sent = drive(
        ASGIMiddleware(app, telemetry=telemetry), "/reports/3", [], extensions=extensions
    )
    assert error is None and len(sent) == 4
    (record,) = records(telemetry).values()
    assert (record["status"], record["count"]) == (200, 1)
    assert record["response_bytes"] == 1_000 + 100 + 10_000


def test_trailers_end_the_response(telemetry, records):
    """Announced in ``http.response.start``, the trailers are the response's
    last message: its latency runs to them."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"hello"})
        await asyncio.sleep(0.05)  # the trailers come later than the body
        await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]})

    middleware = ASGIMiddleware(app, telemetry=telemetry)
    error, sent = drive(middleware, "/x", [], extensions={"http.response.trailers": {}})
    assert error is None and len(sent) == 3
    (record,) = records(telemetry).values()
    assert (record["status"], record["response_bytes"]) == (200, 5)
    assert record["latency"]["max"] >= 0.05


# -- what is not measured --------------------------------------------------------------


def test_websocket_and_lifespan_pass_through(telemetry):
    events = []

    async def echo(websocket):
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(text.upper())
        await websocket.close()

    def lifespan(app):
        class Lifespan:
            async def __aenter__(self):
                events.append("startup")

            async def __aexit__(self, *exc):
                events.append("shutdown")

        return Lifespan()

    app = Starlette(routes=[WebSocketRoute("/ws", echo), Route("/ok", plain)], lifespan=lifespan)
    with TestClient(wrap(app, telemetry)) as client:
        assert events == ["startup"]
        with client.websocket_connect("/ws") as websocket:
            websocket.send_text("hello")
            assert websocket.receive_text() == "HELLO"
        assert telemetry.snapshot() == []
    assert events == ["startup", "shutdown"]
    assert telemetry.snapshot() == []
    assert telemetry.internal_errors == 0


def test_excluded_paths_are_recorded_nowhere(make_telemetry, counts):
    telemetry = make_telemetry(exclude_paths=["/health"], exclude_prefixes=["/static/"])
    client = TestClient(wrap(build_fastapi_app(), telemetry))
    assert client.get("/health").status_code == 404
    assert client.get("/static/css/site.css").status_code == 200
    assert client.get("/static/missing").status_code == 404
    assert telemetry.snapshot() == []
    assert client.get("/healthz").status_code == 404  # exact match only
    assert client.get("/api/v1/ping").status_code == 200
    assert counts(telemetry) == {("GET", UNMATCHED_ROUTE, 404): 1, ("GET", "/api/v1/ping", 200): 1}


def test_opted_out_telemetry_records_nothing(make_telemetry):
    telemetry = make_telemetry(opt_out=True)
    assert not telemetry.enabled
    client = TestClient(wrap(build_fastapi_app(), telemetry))
    assert client.get("/api/v1/items/1").status_code == 200
    assert client.get("/nope").status_code == 404
    assert telemetry.snapshot() == []
    assert telemetry.recorder.collect().dropped == 0


# -- route-less apps, driven through httpx.ASGITransport ---------------------------------


async def routeless_app(scope, receive, send):
    assert scope["type"] == "http"
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    status = 404 if scope["path"].startswith("/missing") else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"got " + body, "more_body": True})
    await send({"type": "http.response.body", "body": b"!"})


def asgi_requests(app, requests):
    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [
                await client.request(method, url, content=body) for method, url, body in requests
            ]

    return asyncio.run(run())


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_an_upload_over_the_apps_body_limit_is_a_413_not_a_500(make_telemetry, counts, framework):
    """``max_body_size`` puts Starlette's body limit outside the middlewares
    added to the app: it answers 413 to the server itself and signals the
    app with an exception, and every upload over the limit was a 500."""

    telemetry = make_telemetry()

    async def upload(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    if framework == "fastapi":
        app = FastAPI(max_body_size=10)
        app.add_api_route("/up/{item_id}", upload, methods=["POST"])
    else:
        app = Starlette(routes=[Route("/up/{item_id}", upload, methods=["POST"])], max_body_size=10)
    app.add_middleware(ASGIMiddleware, telemetry=telemetry)

    async def chunks():
        yield b"x" * 50

    sent = [("POST", "/up/1", b"x" * 100), ("POST", "/up/2", b"x" * 5), ("POST", "/up/3", chunks())]
    answers = asgi_requests(app, sent)
    assert [answer.status_code for answer in answers] == [413, 200, 413]
    assert counts(telemetry) == {
        ("POST", "/up/{item_id}", 413): 2,
        ("POST", "/up/{item_id}", 200): 1,
    }
    assert telemetry.internal_errors == 0


class _UploadFailed(Exception):
    """What an app raises when it cannot read an upload: no handler answers it."""


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The scope a server hands an app for one HTTP/1.1 request to ``path``."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }


def _serve_chunked_upload(app: Any) -> list[dict[str, Any]]:
    """What a server hands an app for a chunked upload of 10 chunks of 10
    bytes (no ``Content-Length``), and the messages it sends back; what the
    app raises the server logs."""
    scope = http_scope("POST", "/up/1", [(b"host", b"x"), (b"transfer-encoding", b"chunked")])
    chunks = [{"type": "http.request", "body": b"x" * 10, "more_body": True} for _ in range(9)]
    chunks.append({"type": "http.request", "body": b"x" * 10, "more_body": False})
    wire: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        wire.append(message)

    async def run() -> None:
        with contextlib.suppress(Exception):
            await app(scope, receive, send)

    asyncio.run(run())
    return wire


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
@pytest.mark.parametrize("shape", ["raised_from", "task_group", "answer_started"])
def test_a_body_limit_signal_that_is_no_413_the_client_got_is_not_recorded_as_one(
    make_telemetry, counts, framework, shape
):
    """Starlette's body limit answers 413 only for its own signal, and only
    before the app's status line: raised from within another error, or
    gathered in a task group's exception group, the signal passes its
    ``except`` by, and the client gets Starlette's 500; after the app's
    status line, the client gets that status and a body cut short. Each was
    recorded as a 413."""
    import anyio

    telemetry = make_telemetry()

    class Echo:  # an ASGI app as a route's endpoint (not a function: no Request)
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            more = True
            while more:  # the limit raises here, the status line already out
                message = await receive()
                body = {"type": "http.response.body", "body": message["body"], "more_body": True}
                await send(body)
                more = message.get("more_body", False)
            await send({"type": "http.response.body", "body": b""})

    async def upload(request: Request) -> PlainTextResponse:
        if shape == "task_group":
            async with anyio.create_task_group() as group:
                group.start_soon(request.body)
            return PlainTextResponse("read")
        try:
            body = await request.body()
        except Exception as error:
            raise _UploadFailed() from error
        return PlainTextResponse(str(len(body)))

    view: Any = Echo() if shape == "answer_started" else upload
    route = Route("/up/{item_id}", view, methods=["POST"])
    app: Any = FastAPI(max_body_size=10) if framework == "fastapi" else Starlette(max_body_size=10)
    app.router.routes.append(route)
    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    wire = _serve_chunked_upload(app)
    status = wire[0]["status"]
    if shape == "answer_started":
        assert status == 200  # and the body cut short: a failed answer, a 500
        assert wire[-1].get("more_body", False)
        status = 500
    assert counts(telemetry) == {("POST", "/up/{item_id}", status): 1}
    if shape == "raised_from":
        assert status == 500


@pytest.mark.filterwarnings("ignore:starlette.middleware.wsgi is deprecated")
def test_a_wsgi_app_mounted_through_a_bridge_counts_once_with_its_mount_excluded(
    make_telemetry, counts
):
    """A bridge (Starlette's ``WSGIMiddleware``) builds a new environ, and no
    mark crosses it: both sides counted each request. The README's way out,
    the mount's prefix excluded from the ASGI side, leaves them to Flask's
    ``init_app``, which compares the path it routes on."""
    from flask import Flask
    from starlette.middleware.wsgi import WSGIMiddleware as Bridge

    from reqtelemetry.flask import init_app

    telemetry = make_telemetry(exclude_prefixes=["/legacy/"])
    legacy = Flask("legacy")
    legacy.add_url_rule("/users/<int:uid>", "user", lambda uid: "ok")
    init_app(legacy, telemetry)
    app = FastAPI()
    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    app.add_api_route("/items/{item_id}", lambda item_id: {}, methods=["GET"])
    app.mount("/legacy", Bridge(legacy))
    sent = [("GET", "/legacy/users/7", None), ("GET", "/legacy/nope/7", None)]
    answers = asgi_requests(app, [*sent, ("GET", "/items/3", None)])
    assert [answer.status_code for answer in answers] == [200, 404, 200]
    assert counts(telemetry) == {
        ("GET", "/users/<int:uid>", 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 1,
        ("GET", "/items/{item_id}", 200): 1,
    }


def test_an_app_mounted_at_the_root_keys_what_its_router_did_not_record(
    make_telemetry, counts, tmp_path
):
    """``Mount("", app=...)`` leaves ``root_path`` as it was: its catch-all
    format (``/{path}``) keyed FastAPI's plain routes, slash redirects and
    404s of the mounted app alike, where a mount at ``/v2`` keys them apart."""
    (tmp_path / "site.css").write_text("body {}")
    telemetry = make_telemetry()
    api = FastAPI()
    api.add_api_route("/users/{uid}", lambda uid: {}, methods=["GET"])
    files = Starlette(routes=[Mount("", app=StaticFiles(directory=tmp_path))])
    app = Starlette(routes=[Route("/a", plain), Mount("/static", app=files), Mount("", app=api)])
    paths = ["/docs", "/nope/secret", "/users/1/", "/users/2", "/a", "/static/site.css"]
    answers = asgi_requests(
        ASGIMiddleware(app, telemetry=telemetry), [("GET", p, None) for p in paths]
    )
    assert [answer.status_code for answer in answers] == [200, 404, 307, 200, 200, 200]
    assert counts(telemetry) == {
        ("GET", "/docs", 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 1,
        ("GET", "/users/{uid}", 307): 1,
        ("GET", "/users/{uid}", 200): 1,
        ("GET", "/a", 200): 1,
        ("GET", "/static/{path}", 200): 1,
    }
    assert telemetry.internal_errors == 0


def test_files_served_at_the_root_share_one_key_their_404s_too(make_telemetry, counts, tmp_path):
    """An app without routes mounted at the root keeps the mount's format,
    its 404s too, as ``StaticFiles`` mounted anywhere else does."""
    (tmp_path / "index.html").write_text("<p>hi</p>")
    telemetry = make_telemetry()
    app = Starlette(routes=[Route("/a", plain), Mount("/", app=StaticFiles(directory=tmp_path))])
    paths = ["/index.html", "/index.html", "/nope-4711.html", "/a"]
    answers = asgi_requests(
        ASGIMiddleware(app, telemetry=telemetry), [("GET", p, None) for p in paths]
    )
    assert [answer.status_code for answer in answers] == [200, 200, 404, 200]
    assert counts(telemetry) == {
        ("GET", "/{path}", 200): 2,
        ("GET", "/{path}", 404): 1,
        ("GET", "/a", 200): 1,
    }


def test_an_excluded_path_is_not_measured_by_a_middleware_inside_a_mount(make_telemetry, counts):
    """A mounted app with a middleware of the same telemetry compares the path
    without the mount's prefix (``/users/7`` of ``/admin/users/7``), which the
    exclusions do not name: the outer middleware left the request out, and
    the inner one measured it."""
    telemetry = make_telemetry(exclude_prefixes=["/admin/"], exclude_paths=["/sub/healthz"])
    sub = FastAPI()
    sub.add_api_route("/users/{uid}", lambda uid: {}, methods=["GET"])
    sub.add_api_route("/healthz", lambda: {}, methods=["GET"])
    sub.add_middleware(ASGIMiddleware, telemetry=telemetry)
    app = FastAPI()
    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    app.mount("/admin", sub)
    app.mount("/sub", sub)
    paths = ["/admin/users/7", "/sub/healthz", "/sub/users/8", "/admin/users/9"]
    answers = asgi_requests(app, [("GET", path, None) for path in paths])
    assert [answer.status_code for answer in answers] == [200] * 4
    assert counts(telemetry) == {("GET", "/sub/users/{uid}", 200): 1}
    assert telemetry.internal_errors == 0


def test_raw_asgi_app_anonymizes_paths(make_telemetry, records):
    telemetry = make_telemetry(allowed_path_segments=["users", "orders"])
    app = ASGIMiddleware(routeless_app, telemetry=telemetry)
    responses = asgi_requests(
        app,
        [
            ("GET", "/users/42/orders", None),
            ("GET", "/users/42/orders", None),
            ("POST", "/users/43/orders", b"hello"),
            ("GET", "/missing/secret-1", None),
            ("GET", "/missing/secret-2", None),
        ],
    )
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 404]
    assert responses[2].content == b"got hello!"
    salt = telemetry.anonymizer._salt
    found = records(telemetry)
    assert set(found) == {
        ("GET", f"/users/{hash_value('42', salt)}/orders", 200),
        ("POST", f"/users/{hash_value('43', salt)}/orders", 200),
        ("GET", UNMATCHED_ROUTE, 404),
    }
    assert found["GET", f"/users/{hash_value('42', salt)}/orders", 200]["count"] == 2
    post = found["POST", f"/users/{hash_value('43', salt)}/orders", 200]
    assert post["request_bytes"] == 5
    assert post["response_bytes"] == len(b"got hello!")
    assert found["GET", UNMATCHED_ROUTE, 404]["count"] == 2


def test_raw_asgi_app_with_query_recording(make_telemetry, counts):
    telemetry = make_telemetry(
        allowed_path_segments=["search"], record_query=True, allowed_query_keys=["q"]
    )
    app = ASGIMiddleware(routeless_app, telemetry=telemetry)
    asgi_requests(app, [("GET", "/search?q=cats&session=abc", None)])
    salt = telemetry.anonymizer._salt
    assert counts(telemetry) == {("GET", f"/search?q={hash_value('cats', salt)}", 200): 1}


def test_raw_asgi_app_unmatched_grouping_off(make_telemetry, counts):
    telemetry = make_telemetry(group_unmatched=False, allowed_path_segments=["missing"])
    app = ASGIMiddleware(routeless_app, telemetry=telemetry)
    asgi_requests(app, [("GET", "/missing/a", None)])
    salt = telemetry.anonymizer._salt
    assert counts(telemetry) == {("GET", f"/missing/{hash_value('a', salt)}", 404): 1}


def test_asgi_middleware_builds_its_own_telemetry_from_options():
    with pytest.raises(TypeError):
        ASGIMiddleware(routeless_app, telemetry=Telemetry(opt_out=True), app_name="x")


# -- the client going away --------------------------------------------------------------------


def drive(app, path, receive_messages, send_raises=None, spec_version="2.4", extensions=None):
    """Run one HTTP request through ``app`` the way an ASGI server would."""
    sent = []
    queue = list(receive_messages)

    async def receive():
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)  # a server would block here until the client does something
        raise AssertionError("unreachable")

    async def send(message):
        if send_raises is not None and send_raises(message, sent):
            raise OSError("connection reset by peer")
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "extensions": extensions or {},
    }

    async def run():
        try:
            await app(scope, receive, send)
        except Exception as error:  # what the server would see
            return error
        return None

    return asyncio.run(run()), sent


def infinite_stream_app(telemetry):
    async def forever(request):
        async def chunks():
            while True:
                yield b"tick"
                await asyncio.sleep(0)

        return StreamingResponse(chunks())

    return wrap(Starlette(routes=[Route("/forever", forever)]), telemetry)


def test_client_disconnect_during_stream_is_499(telemetry, records):
    app = infinite_stream_app(telemetry)

    def fail_after_some_chunks(message, sent):
        return message["type"] == "http.response.body" and len(sent) > 5

    error, _ = drive(
        app, "/forever", [{"type": "http.request", "body": b""}], fail_after_some_chunks
    )
    assert error is not None  # the middleware re-raised what the app raised
    found = records(telemetry)
    assert set(found) == {("GET", "/forever", CLIENT_CLOSED_STATUS)}
    assert found["GET", "/forever", CLIENT_CLOSED_STATUS]["response_bytes"] == 5 * len(b"tick")


def test_client_disconnect_in_a_task_group_is_499(telemetry):
    """An app that streams from a task group (Starlette's own streaming before
    1.x, anyio 4) gets the server's ``OSError`` back inside an exception group:
    it was taken for the app's failure, a 500 with the lost chunk counted."""
    import anyio

    async def streamed_from_a_task(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

        async def stream():
            while True:
                await send({"type": "http.response.body", "body": b"tick", "more_body": True})
                await anyio.sleep(0)

        async with anyio.create_task_group() as group:
            group.start_soon(stream)

    def fail_after_some_chunks(message, sent):
        return message["type"] == "http.response.body" and len(sent) > 5

    error, _ = drive(
        ASGIMiddleware(streamed_from_a_task, telemetry=telemetry),
        "/forever",
        [{"type": "http.request", "body": b""}],
        fail_after_some_chunks,
    )
    assert isinstance(getattr(error, "exceptions", None), tuple)  # re-raised as it was: a group
    (record,) = telemetry.snapshot()
    assert record["status"] == CLIENT_CLOSED_STATUS
    assert record["response_bytes"] == 5 * len(b"tick")


def test_disconnect_message_during_stream_is_499(telemetry, records):
    # Before ASGI spec 2.4 Starlette listens for http.disconnect and stops the stream.
    app = infinite_stream_app(telemetry)
    error, sent = drive(
        app,
        "/forever",
        [{"type": "http.request", "body": b""}, {"type": "http.disconnect"}],
        spec_version="2.0",
    )
    assert error is None
    assert sent[-1].get("more_body") is True  # the response never completed
    found = records(telemetry)
    assert set(found) == {("GET", "/forever", CLIENT_CLOSED_STATUS)}
    # The disconnect reached the app before its response started (Starlette
    # listens first): a server had dropped all of it, and none is counted.
    assert found["GET", "/forever", CLIENT_CLOSED_STATUS]["response_bytes"] == 0


def two_chunk_app(scope, receive, send):
    """A route-less app streaming b"hello" then a last b"world"."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello", "more_body": True})
        await send({"type": "http.response.body", "body": b"world"})

    return app(scope, receive, send)


def test_last_chunk_the_server_refused_is_499_and_not_counted(telemetry, records):
    def fail_on_last(message, sent):
        return message["type"] == "http.response.body" and not message.get("more_body")

    error, sent = drive(ASGIMiddleware(two_chunk_app, telemetry=telemetry), "/x", [], fail_on_last)
    assert isinstance(error, OSError)  # what the server's send raised, passed on untouched
    assert [m.get("body") for m in sent] == [None, b"hello"]
    (record,) = records(telemetry).values()
    assert record["status"] == CLIENT_CLOSED_STATUS
    assert record["response_bytes"] == len(b"hello")


def test_the_apps_own_oserror_after_the_status_line_is_500(telemetry, records):
    async def broken_disk(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise OSError("no space left on device")  # the app's failure, not the client's

    error, _ = drive(ASGIMiddleware(broken_disk, telemetry=telemetry), "/x", [])
    assert isinstance(error, OSError)
    (record,) = records(telemetry).values()
    assert record["status"] == 500
    assert record["response_bytes"] == len(b"part")


def test_a_send_that_is_no_python_function_still_tells_a_disconnect(telemetry, records):
    # Some servers hand the app a callable object; its failures are told by type alone.
    class Send:
        def __init__(self):
            self.sent = []

        def __call__(self, message):
            if message.get("body") == b"world":
                raise OSError("connection reset by peer")
            self.sent.append(message)
            return asyncio.sleep(0)

    send = Send()
    scope = {"type": "http", "method": "GET", "path": "/x", "root_path": "", "query_string": b""}

    async def run():
        with pytest.raises(OSError):
            await ASGIMiddleware(two_chunk_app, telemetry=telemetry)(scope, None, send)

    asyncio.run(run())
    (record,) = records(telemetry).values()
    assert record["status"] == CLIENT_CLOSED_STATUS
    assert record["response_bytes"] == len(b"hello")


def test_app_returning_without_completing_response_is_500(telemetry, counts):
    async def started_only(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def nothing(scope, receive, send):
        return None

    for app in (started_only, nothing):
        error, _ = drive(ASGIMiddleware(app, telemetry=telemetry), "/x", [])
        assert error is None
    # The server cuts the first response short and answers 500 to the second.
    assert counts(telemetry) == {("GET", telemetry.anonymizer.path("/x"), 500): 2}


def test_the_framework_trait_names_the_app_served_not_the_first_import(telemetry):
    import flask  # noqa: F401  (imported in the same process, as in the demo)

    async def hello(request):
        return PlainTextResponse("hi")

    outside = ASGIMiddleware(Starlette(routes=[Route("/", hello)]), telemetry=telemetry)
    TestClient(outside).get("/")
    assert telemetry.traits.current()[0]["framework"] == "starlette"


def test_fastapi_behind_add_middleware_is_fastapi(make_telemetry):
    from fastapi import FastAPI

    telemetry = make_telemetry()
    app = FastAPI()
    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    TestClient(app).get("/nothing")
    assert telemetry.traits.current()[0]["framework"] == "fastapi"


def test_the_queue_the_middleware_fills_stays_bounded(telemetry, counts):
    # The middleware queues into the recorder directly, and aggregates as it does.
    async def ok(request):
        return PlainTextResponse("ok")

    app = wrap(Starlette(routes=[Route("/ok", ok)]), telemetry)
    total = PENDING_LIMIT * 2 + 3
    with TestClient(app) as client:
        for _ in range(total):
            client.get("/ok")
            assert len(telemetry.recorder.queue) < PENDING_LIMIT
    assert counts(telemetry) == {("GET", "/ok", 200): total}


# -- behind a proxy's prefix, mounted, hosted: the path the app routes on ------------


@contextlib.contextmanager
def served_by_uvicorn(app, **config):
    """``app`` under a real uvicorn on 127.0.0.1, ``config`` being uvicorn's options
    (``root_path``, say); yields a client for it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_config=None, log_level="warning", **config)
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = perf_counter() + 10
    while not server.started:
        assert thread.is_alive() and perf_counter() < deadline, "uvicorn did not start"
        time.sleep(0.005)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}") as client:
            yield client
    finally:
        server.should_exit = server.force_exit = True
        thread.join(10)


def build_app_with_exclusions(telemetry: Telemetry) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return "ok"

    @app.get("/internal/stats")
    def stats():
        return "ok"

    @app.get("/items/{item_id}")
    def item(item_id: int):
        return item_id

    return wrap(app, telemetry)


def test_exclusions_compare_the_path_the_app_routes_on_under_uvicorn_root_path(
    make_telemetry, counts
):
    # uvicorn --root-path /api: scope["path"] is "/api/healthz", and the app routes "/healthz".
    telemetry = make_telemetry(exclude_paths=["/healthz"], exclude_prefixes=["/internal/"])
    with served_by_uvicorn(build_app_with_exclusions(telemetry), root_path="/api") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/internal/stats").status_code == 200
        assert client.get("/items/4").status_code == 200
    assert counts(telemetry) == {("GET", "/items/{item_id}", 200): 1}


def test_exclusions_under_a_root_path_take_off_the_prefix_as_starlette_does(make_telemetry, counts):
    telemetry = make_telemetry(exclude_paths=["/healthz"], exclude_prefixes=["/internal/"])
    client = TestClient(build_app_with_exclusions(telemetry), root_path="/api")
    assert client.get("/api/healthz").status_code == 200
    assert client.get("/api/internal/stats").status_code == 200
    # A path that merely starts with the prefix's letters keeps them, as in Starlette.
    assert client.get("/apihealthz").status_code == 404
    assert counts(telemetry) == {("GET", UNMATCHED_ROUTE, 404): 1}


def build_host_with_instrumented_plugin(telemetry: Telemetry, host_kind: str) -> Starlette:
    """Pluggable sub-applications that instrument themselves, mounted into a host app
    (a Starlette host records its mount in scope["route"], FastAPI's does not)."""
    plugin = Starlette(
        routes=[
            Route("/ping/{n}", plain),
            Mount("/reports", routes=[Route("/{report_id}", plain)]),
            Mount("/files", app=raw_app),
        ]
    )
    plugin.add_middleware(ASGIMiddleware, telemetry=telemetry)
    api = FastAPI()
    api.add_route("/plain/{name}", plain)  # a route FastAPI leaves out of scope["route"]
    api.add_middleware(ASGIMiddleware, telemetry=telemetry)
    host = FastAPI() if host_kind == "fastapi" else Starlette()
    host.add_route("/", plain)
    host.mount("/plugin", plugin)
    host.mount("/api/{tenant}", api)
    return host


@pytest.mark.parametrize("host_kind", ["fastapi", "starlette"])
def test_an_instrumented_app_mounted_in_another_keys_its_own_routes(host_kind, telemetry, counts):
    client = TestClient(build_host_with_instrumented_plugin(telemetry, host_kind))
    for n in range(2):
        assert client.get(f"/plugin/ping/{n}").status_code == 200
        assert client.get(f"/plugin/reports/r{n}").status_code == 200
        assert client.get(f"/plugin/files/f{n}.txt").status_code == 200
        assert client.get(f"/api/t{n}/plain/p{n}").status_code == 200
    assert client.get("/plugin/nothing/here").status_code == 404
    assert client.get("/api/t1/nothing").status_code == 404
    # The apps key what they route themselves, and the host's mount is no route of theirs.
    assert counts(telemetry) == {
        ("GET", "/ping/{n}", 200): 2,
        ("GET", "/reports/{report_id}", 200): 2,
        ("GET", "/files/{path}", 200): 2,
        ("GET", "/plain/{name}", 200): 2,
        ("GET", UNMATCHED_ROUTE, 404): 2,
    }


def build_fastapi_with_its_own_root_path() -> FastAPI:
    with warnings.catch_warnings():  # deprecated by FastAPI, still in use
        warnings.simplefilter("ignore")
        app = FastAPI(root_path="/api")

    @app.get("/items/{item_id}")
    def item(item_id: int):
        return item_id

    app.add_route("/plain/{name}", plain)
    app.mount("/org/{org}", Starlette(routes=[Route("/p/{x}", plain)]))
    return app


def test_fastapi_with_its_own_root_path_wrapped_from_outside_keeps_its_templates(telemetry, counts):
    # FastAPI writes its root_path over the server's after the middleware saw the request.
    app = ASGIMiddleware(build_fastapi_with_its_own_root_path(), telemetry=telemetry)
    with served_by_uvicorn(app) as client:
        for n in range(2):
            assert client.get(f"/items/{n}").status_code == 200
            assert client.get(f"/plain/p{n}").status_code == 200
            # A mount finds its path only where the proxy kept the prefix in it.
            assert client.get(f"/api/org/o{n}/p/{n}").status_code == 200
        assert client.get("/nothing").status_code == 404
    assert counts(telemetry) == {
        ("GET", "/items/{item_id}", 200): 2,
        ("GET", "/plain/{name}", 200): 2,
        ("GET", "/org/{org}/p/{x}", 200): 2,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }


def test_fastapi_with_its_own_root_path_and_add_middleware_keeps_its_templates(telemetry, counts):
    client = TestClient(wrap(build_fastapi_with_its_own_root_path(), telemetry))
    assert client.get("/items/1").status_code == 200
    assert client.get("/api/org/o1/p/1").status_code == 200
    assert counts(telemetry) == {
        ("GET", "/items/{item_id}", 200): 1,
        ("GET", "/org/{org}/p/{x}", 200): 1,
    }


def build_app_with_mounts_behind_hosts() -> Starlette:
    return Starlette(
        routes=[
            Host(
                "api.example.com",
                app=Router(routes=[Mount("/v1", routes=[Route("/orders/{order_id}", plain)])]),
            ),
            # The same concrete prefix behind another host is another mount, of other templates.
            Host(
                "{team}.admin.example.com",
                app=Router(routes=[Mount("/{version}", routes=[Route("/users/{user_id}", plain)])]),
            ),
            Mount("/public", routes=[Route("/{page}", plain)]),
        ]
    )


def test_long_or_wide_mount_prefixes_and_hosts_are_walked_each_time_not_remembered(
    telemetry, counts
):
    """A mount with a path parameter makes a prefix of what the client put in
    that segment, and the Host header is the client's too: remembered, 256
    prefixes of a megabyte each held 256 MB. Past 256 characters, or outside
    ASCII, they are walked each time, to the same templates."""
    middleware = ASGIMiddleware(build_app_with_mounts_behind_hosts(), telemetry=telemetry)
    client = TestClient(middleware)
    long_version = "v" * 2000
    requests = [
        (f"/{long_version}/users/1", "t1.admin.example.com"),
        ("/v\u00e9/users/2", "t1.admin.example.com"),
        ("/v2/users/3", "t" * 300 + ".admin.example.com"),
        ("/v2/users/4", "t4.admin.example.com"),
    ]
    for path, host in requests:
        assert client.get(path, headers={"Host": host}).status_code == 200
    remembered = middleware._templates._mount_prefixes
    keys = [(key[1], key[2], host) for key, hosts in remembered.items() for host in hosts]
    assert keys == [("", "/v2", b"t4.admin.example.com")]
    assert counts(telemetry) == {("GET", "/{version}/users/{user_id}", 200): 4}


def test_mounts_behind_a_host_are_keyed_per_host(telemetry, counts):
    client = TestClient(wrap(build_app_with_mounts_behind_hosts(), telemetry))
    for n in range(3):
        response = client.get(f"/v1/orders/{n}", headers={"Host": "api.example.com"})
        assert response.status_code == 200
        response = client.get(f"/v1/users/{n}", headers={"Host": f"t{n}.admin.example.com:8443"})
        assert response.status_code == 200
        assert client.get(f"/public/{n}", headers={"Host": "www.example.com"}).status_code == 200
    assert client.get("/v1/orders/4", headers={"Host": "www.example.com"}).status_code == 404
    assert client.get("/v1/orders/4", headers={"Host": "api.example.com"}).status_code == 200
    assert counts(telemetry) == {
        ("GET", "/v1/orders/{order_id}", 200): 4,
        ("GET", "/{version}/users/{user_id}", 200): 3,
        ("GET", "/public/{page}", 200): 3,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }


def test_mounts_behind_a_host_under_uvicorn(telemetry, counts):
    with served_by_uvicorn(wrap(build_app_with_mounts_behind_hosts(), telemetry)) as client:
        for n in range(2):
            response = client.get(f"/v1/orders/{n}", headers={"Host": "api.example.com"})
            assert response.status_code == 200
    assert counts(telemetry) == {("GET", "/v1/orders/{order_id}", 200): 2}


#: ``app.frontend()`` is newer than the oldest FastAPI the package supports
#: (0.110), where there is no frontend to key.
needs_fastapi_frontends = pytest.mark.skipif(
    not hasattr(FastAPI, "frontend"), reason="this FastAPI has no app.frontend()"
)


def build_fastapi_with_frontends(telemetry: Telemetry, dist) -> FastAPI:
    (dist / "assets").mkdir()
    (dist / "index.html").write_text("<html>spa</html>")
    (dist / "assets" / "app.js").write_text("js")
    app = FastAPI()

    @app.get("/items/{item_id}")
    def item(item_id: int):
        return item_id

    app.frontend("/app", directory=dist, fallback="index.html")
    admin = APIRouter(prefix="/admin")
    admin.frontend("/", directory=dist, fallback=None)
    app.include_router(admin)
    sub = FastAPI()
    sub.frontend("/ui", directory=dist)
    app.mount("/tenants/{tenant}", sub)
    return wrap(app, telemetry)


@needs_fastapi_frontends
def test_fastapi_frontend_files_are_keyed_by_the_frontends_path_never_the_files(
    telemetry, counts, tmp_path
):
    client = TestClient(build_fastapi_with_frontends(telemetry, tmp_path))
    html = {"Accept": "text/html"}
    assert client.get("/app/").status_code == 200
    assert client.get("/app/assets/app.js").text == "js"
    # The SPA's own routes get index.html: any path a user's browser shows.
    assert client.get("/app/customers/4711/invoices", headers=html).text == "<html>spa</html>"
    assert client.get("/app/users/alice@example.com", headers=html).status_code == 200
    assert client.get("/app/missing-4711.js").status_code == 404
    assert client.get("/admin/assets/app.js").status_code == 200
    assert client.get("/admin/missing-4711.js").status_code == 404
    assert client.get("/tenants/acme/ui/assets/app.js").status_code == 200
    assert client.get("/items/3").status_code == 200
    assert client.get("/nothing-4711").status_code == 404
    assert counts(telemetry) == {
        ("GET", "/app/{path}", 200): 4,
        ("GET", "/app/{path}", 404): 1,  # the frontend's 404, as a mounted StaticFiles' is
        ("GET", "/admin/{path}", 200): 1,
        ("GET", "/admin/{path}", 404): 1,
        ("GET", "/tenants/{tenant}/ui/{path}", 200): 1,
        ("GET", "/items/{item_id}", 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }
    routes = " ".join(record["route"] for record in telemetry.snapshot())
    for concrete in ["4711", "customers", "alice", "assets", "app.js", "acme", "missing"]:
        assert concrete not in routes


def test_starlettes_slash_redirect_keeps_the_template_of_the_route_it_redirects_to(
    telemetry, counts
):
    app = Starlette(
        routes=[
            Route("/items/{item_id}", plain),
            Route("/lists/{list_id}/", plain),
            Mount("/org/{org}", routes=[Route("/p/{x}", plain)]),
        ]
    )
    api = FastAPI()

    @api.get("/users/{user_id}")
    def user(user_id: int):
        return user_id

    app.mount("/api", api)
    client = TestClient(wrap(app, telemetry), follow_redirects=False)
    for n in range(2):
        assert client.get(f"/items/{n}/").status_code == 307
        assert client.get(f"/lists/{n}").status_code == 307
        assert client.get(f"/org/o{n}/p/{n}/").status_code == 307
        assert client.get(f"/api/users/{n}/").status_code == 307
    assert client.get("/nothing-4711/").status_code == 404
    assert client.get("/items//3").status_code == 404  # Starlette merges no slashes
    assert counts(telemetry) == {
        ("GET", "/items/{item_id}", 307): 2,
        ("GET", "/lists/{list_id}/", 307): 2,
        ("GET", "/org/{org}/p/{x}", 307): 2,
        ("GET", "/api/users/{user_id}", 307): 2,
        ("GET", UNMATCHED_ROUTE, 404): 2,
    }


def test_fastapi_slash_redirect_into_an_included_router_keeps_the_template(telemetry, counts):
    """FastAPI answers ``/api/items`` with a 307 to the route ``/api/items/``
    without recording a route. Where that route lives in an included router
    (FastAPI 0.165 includes a router as one route of its own, with no path
    template), the redirect was ``<unmatched>``: most FastAPI apps are built
    from included routers, and clients that leave the slash off are common."""
    api = APIRouter(prefix="/api")

    @api.get("/items/")
    def items():
        return []

    nested = APIRouter(prefix="/teams")

    @nested.get("/{team_id}/members/")
    def members(team_id: int):
        return []

    api.include_router(nested)
    app = FastAPI()
    app.include_router(api)
    app.include_router(nested, prefix="/legacy")  # the same router twice, two templates

    @app.get("/top/")
    def top():
        return []

    client = TestClient(wrap(app, telemetry), follow_redirects=False)
    for n in range(2):
        assert client.get("/api/items").status_code == 307
        assert client.get(f"/api/teams/{n}/members").status_code == 307
        assert client.get(f"/legacy/teams/{n}/members").status_code == 307
        assert client.get("/top").status_code == 307
    assert client.get("/api/items/").status_code == 200
    assert client.get("/api/nothing-4711").status_code == 404
    assert counts(telemetry) == {
        ("GET", "/api/items/", 307): 2,
        ("GET", "/api/teams/{team_id}/members/", 307): 2,
        ("GET", "/legacy/teams/{team_id}/members/", 307): 2,
        ("GET", "/top/", 307): 2,
        ("GET", "/api/items/", 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }


def test_slash_redirect_behind_a_host_keeps_the_template_it_redirects_to(telemetry, counts):
    """A ``Host`` route has no path of its own, and its router records no route
    when it redirects: the redirect was ``<unmatched>``, as if no route took it."""
    tenant = Router(
        routes=[Route("/items/{item_id}", plain), Mount("/m", routes=[Route("/x/{n}/", plain)])]
    )
    app = Starlette(routes=[Host("{tenant}.example.com", app=tenant)])
    client = TestClient(wrap(app, telemetry), base_url="http://acme.example.com")
    for n in range(2):
        assert client.get(f"/items/{n}/", follow_redirects=False).status_code == 307
        assert client.get(f"/m/x/{n}", follow_redirects=False).status_code == 307
    assert client.get("/nothing-4711/", follow_redirects=False).status_code == 404
    assert counts(telemetry) == {
        ("GET", "/items/{item_id}", 307): 2,
        ("GET", "/m/x/{n}/", 307): 2,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }


def test_fastapi_plain_routes_behind_a_host_keep_their_templates(telemetry, counts):
    """FastAPI records no ``scope["route"]`` for its plain routes (``add_route``,
    ``/docs``), so behind a ``Host`` only the Host was recorded: they were
    ``<unmatched>``, and an endpoint shared with a route outside the host took
    that route's template. (Starlette before 1.7 records no route at all, and
    took the same path for every route behind a host.)"""

    async def shared(request):
        return PlainTextResponse("shared")

    api = FastAPI()
    api.add_route("/plain/{x}", shared)

    @api.get("/typed/{y}")
    def typed(y: int):
        return y

    app = Starlette(routes=[Host("api.example.com", app=api), Route("/top/{k}", shared)])
    wrapped = wrap(app, telemetry)
    inside = TestClient(wrapped, base_url="http://api.example.com")
    for n in range(2):
        assert inside.get(f"/plain/{n}").status_code == 200
        assert inside.get(f"/typed/{n}").status_code == 200
    assert inside.get("/docs").status_code == 200
    assert inside.get("/plain/4711/", follow_redirects=False).status_code == 307
    outside = TestClient(wrapped, base_url="http://www.example.com")
    assert outside.get("/top/1").status_code == 200
    assert counts(telemetry) == {
        ("GET", "/plain/{x}", 200): 2,
        ("GET", "/typed/{y}", 200): 2,
        ("GET", "/docs", 200): 1,
        ("GET", "/plain/{x}", 307): 1,
        ("GET", "/top/{k}", 200): 1,
    }


def test_a_redirect_of_a_router_without_slash_redirects_is_not_matched_again(telemetry, counts):
    async def elsewhere(scope, receive, send):
        await PlainTextResponse("", status_code=302, headers={"location": "/"})(
            scope, receive, send
        )

    app = Starlette(routes=[Route("/items/{item_id}", plain)])
    app.router.redirect_slashes = False
    app.router.default = elsewhere  # answers without recording a route
    client = TestClient(wrap(app, telemetry), follow_redirects=False)
    assert client.get("/items/1/").status_code == 302
    assert counts(telemetry) == {("GET", UNMATCHED_ROUTE, 302): 1}


# -- what a server tolerates, the middleware tolerates too --------------------------


class _ASGI2App:
    """An app in the ASGI 2 style: made with the scope, then awaited with the channels."""

    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi2"})


class _ASGI2AppTakingAnything(_ASGI2App):
    """Its signature binds three arguments, as an ASGI 3 app's does; uvicorn
    takes a class for ASGI 2 unless its instances can be awaited."""

    def __init__(self, scope, *args, **kwargs):
        self.scope = scope


@pytest.mark.e2e
@pytest.mark.parametrize("opt_out", [False, True], ids=["enabled", "opted out"])
@pytest.mark.parametrize("app", [_ASGI2App, _ASGI2AppTakingAnything], ids=["scope", "*args"])
def test_an_asgi2_app_is_served_as_the_server_serves_it_bare(make_telemetry, counts, opt_out, app):
    """uvicorn adapts an ASGI 2 app it is handed; wrapped, the app it was
    handed was the middleware, which called the ASGI 2 app the ASGI 3 way:
    every request was a 500."""
    telemetry = make_telemetry(opt_out=opt_out)
    with served_by_uvicorn(ASGIMiddleware(app, telemetry=telemetry)) as client:
        response = client.get("/hello")
    assert (response.status_code, response.content) == (200, b"asgi2")
    if not opt_out:
        assert [(status, n) for (_, _, status), n in counts(telemetry).items()] == [(200, 1)]
    assert telemetry.internal_errors == 0


@pytest.mark.e2e
def test_a_body_of_none_is_sent_as_the_server_sends_it(make_telemetry, counts):
    """uvicorn takes ``"body": None`` for an empty body; the middleware's
    ``send`` failed on it, in the app's hands, and the response was cut."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello", "more_body": True})
        await send({"type": "http.response.body", "body": None})

    telemetry = make_telemetry()
    with served_by_uvicorn(ASGIMiddleware(app, telemetry=telemetry)) as client:
        response = client.get("/hello")
    assert (response.status_code, response.content) == (200, b"hello")
    ((_, _, status), count), *_ = counts(telemetry).items()
    assert (status, count) == (200, 1)
    assert telemetry.internal_errors == 0
    assert telemetry.snapshot()[0]["response_bytes"] == 5


def test_an_asgi3_adapter_made_with_functools_wraps_is_called_as_asgi3(make_telemetry, counts):
    """``inspect.signature`` follows ``__wrapped__`` by default: an ASGI 3
    adapter made with ``functools.wraps`` around an ASGI 2 app read as the
    ASGI 2 app, and the middleware called it the ASGI 2 way (500s)."""
    import functools

    @functools.wraps(_ASGI2App)
    async def adapter(scope, receive, send):
        await _ASGI2App(scope)(receive, send)

    telemetry = make_telemetry()
    with served_by_uvicorn(ASGIMiddleware(adapter, telemetry=telemetry)) as client:
        response = client.get("/hello")
    assert (response.status_code, response.content) == (200, b"asgi2")
    assert telemetry.internal_errors == 0


def test_an_app_whose_signature_cannot_be_read_is_left_as_it_is(make_telemetry):
    class Proxy:
        """A proxy whose every unknown attribute raises (an unbound ``LocalProxy``)."""

        def __getattr__(self, name):
            raise RuntimeError("unbound")

        async def __call__(self, scope, receive, send):
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    proxy = Proxy()
    assert ASGIMiddleware(proxy, telemetry=make_telemetry()).app is proxy


def test_an_asgi2_app_behind_a_wrapper_without_a_signature_of_its_own_is_adapted(
    make_telemetry,
):
    """A wrapper made in C (wrapt's, as tracing libraries wrap apps) has no
    signature of its own: the app it wraps (``__wrapped__``) tells the way to
    call it, or an ASGI 2 app behind it was called the ASGI 3 way (500s)."""

    class CWrapper:
        __call__ = staticmethod(getattr)  # a builtin without a signature, as wrapt's

    wrapper = CWrapper()
    wrapper.__wrapped__ = _ASGI2App
    assert ASGIMiddleware(wrapper, telemetry=make_telemetry()).app is not wrapper


def test_middleware_added_after_it_is_named_at_the_first_request(make_telemetry, counts, caplog):
    """Starlette runs what ``add_middleware`` adds later outside what it added
    before: added first, as the README shows, the middleware never saw a CORS
    preflight or a ``TrustedHostMiddleware`` refusal. It says so once, naming
    them, as Django's does where it is not listed first; added last, nothing."""
    from starlette.middleware.gzip import GZipMiddleware

    telemetry = make_telemetry()
    app = FastAPI()
    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    app.add_middleware(CORSMiddleware, allow_origins=["https://spa.example"], allow_methods=["*"])
    app.add_middleware(GZipMiddleware)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=["testserver"])

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        return {"item": item_id}

    with caplog.at_level("WARNING", logger="reqtelemetry"):
        client = TestClient(app)
        assert client.options("/items/1", headers=PREFLIGHT).status_code == 200
        assert client.get("/items/1").status_code == 200
        assert client.get("/items/2").status_code == 200
    assert counts(telemetry) == {("GET", "/items/{item_id}", 200): 2}  # the preflight: outside
    said = [r.getMessage() for r in caplog.records if "added before" in r.getMessage()]
    assert len(said) == 1
    assert "TrustedHostMiddleware, GZipMiddleware, CORSMiddleware" in said[0]

    caplog.clear()
    last = FastAPI()
    last.add_middleware(CORSMiddleware, allow_origins=["https://spa.example"], allow_methods=["*"])
    last.add_middleware(ASGIMiddleware, telemetry=make_telemetry())
    last.add_api_route("/items/{item_id}", item)
    with caplog.at_level("WARNING", logger="reqtelemetry"):
        assert TestClient(last).get("/items/1").status_code == 200
    assert not [r for r in caplog.records if "added before" in r.getMessage()]


def _run(app, method, fail_send_after):
    sent = []

    async def receive():
        await asyncio.sleep(3600)

    async def send(message):
        if message["type"] == "http.response.body" and len(sent) > fail_send_after:
            raise OSError("connection reset by peer")  # uvicorn: the client has closed
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/export",
        "raw_path": b"/export",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "extensions": {},
    }

    async def run():
        # The failed send comes back through Starlette's stream as its own error.
        with contextlib.suppress(Exception):
            await app(scope, receive, send)

    asyncio.run(run())


def test_a_head_whose_client_closed_after_the_headers_is_not_499_under_asgi(telemetry, counts):
    """uvicorn drops a HEAD's body, the client closes once it has the headers,
    and the next body ``send`` fails: the client had its whole answer, as
    the WSGI middleware and Django's now record. A GET cut so is still 499."""

    async def rows():
        while True:
            yield b"row\n"
            await asyncio.sleep(0)

    async def export(request):
        return StreamingResponse(rows(), media_type="text/csv")

    app = ASGIMiddleware(
        Starlette(routes=[Route("/export", export, methods=["GET", "HEAD"])]), telemetry=telemetry
    )
    _run(app, "HEAD", fail_send_after=2)
    _run(app, "GET", fail_send_after=2)
    assert counts(telemetry) == {
        ("HEAD", "/export", 200): 1,
        ("GET", "/export", 499): 1,
    }


async def read_upload(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


def _serve_abandoned_upload(app: Any) -> list[dict[str, Any]]:
    """What uvicorn does when the client closes after 1,000 of 100,000 bytes:
    the body read so far, then ``http.disconnect``; whatever is sent after is dropped."""
    scope = http_scope("POST", "/upload", [(b"host", b"x"), (b"content-length", b"100000")])
    messages = [
        {"type": "http.request", "body": b"x" * 1000, "more_body": True},
        {"type": "http.disconnect"},
    ]
    wire: list[dict[str, Any]] = []
    gone = False

    async def receive() -> dict[str, Any]:
        nonlocal gone
        message = messages.pop(0) if messages else {"type": "http.disconnect"}
        gone = gone or message["type"] == "http.disconnect"
        return message

    async def send(message: dict[str, Any]) -> None:
        if not gone:  # uvicorn, httptools and hypercorn drop what follows a disconnect
            wire.append(message)

    async def run() -> None:
        with contextlib.suppress(Exception):  # the server logs it
            await app(scope, receive, send)

    asyncio.run(run())
    return wire


@pytest.mark.parametrize("installed", ["add_middleware", "wrapped"])
def test_an_abandoned_upload_is_a_499_with_nothing_sent(installed: str, telemetry) -> None:
    if installed == "add_middleware":
        app: Any = Starlette(
            routes=[Route("/upload", read_upload, methods=["POST"])],
            middleware=[Middleware(ASGIMiddleware, telemetry=telemetry)],
        )
    else:
        app = ASGIMiddleware(
            Starlette(routes=[Route("/upload", read_upload, methods=["POST"])]), telemetry=telemetry
        )
    wire = _serve_abandoned_upload(app)
    assert wire == []  # the client got nothing
    [record] = telemetry.snapshot()
    assert (record["method"], record["route"], record["status"]) == ("POST", "/upload", 499)
    assert record["request_bytes"] == 1000
    assert record["response_bytes"] == 0


async def deleted_with_null(request: Request) -> Response:
    return JSONResponse(None, status_code=204)  # a body of b"null"


async def unchanged_with_body(request: Request) -> Response:
    return Response(b"hello", status_code=304)


@pytest.mark.parametrize(("path", "status"), [("/deleted", 204), ("/unchanged", 304)])
def test_a_body_sent_with_204_or_304_is_not_counted(path: str, status: int, telemetry) -> None:
    """uvicorn (h11 and httptools) and hypercorn (HTTP/1.1 and HTTP/2) send
    none of it: the client's response has no body, yet the app's bytes
    were counted, in the snapshot and in the report alike."""
    from test_payload_schema import wire_records_in_full

    app = ASGIMiddleware(
        Starlette(
            routes=[Route("/deleted", deleted_with_null), Route("/unchanged", unchanged_with_body)]
        ),
        telemetry=telemetry,
    )
    with TestClient(app) as client:
        assert client.get(path).status_code == status
    [record] = telemetry.snapshot()
    assert (record["route"], record["status"], record["response_bytes"]) == (path, status, 0)
    [sent] = wire_records_in_full(telemetry)
    assert (sent["status"], sent["response_bytes"]) == (status, 0)


class _Item(pydantic.BaseModel):
    name: str


@pytest.mark.parametrize("installed", ["add_middleware", "wrapped"])
def test_an_abandoned_upload_to_a_fastapi_body_is_a_499_not_its_400(installed, telemetry):
    """FastAPI turns the ClientDisconnect of a body it could not read into a
    400 it sends and returns from: it was counted, bytes and all."""
    from fastapi import FastAPI

    middleware = [Middleware(ASGIMiddleware, telemetry=telemetry)] if installed != "wrapped" else []
    api = FastAPI(middleware=middleware)

    @api.post("/upload")
    async def upload(item: _Item) -> dict:
        return {}

    app: Any = api if installed != "wrapped" else ASGIMiddleware(api, telemetry=telemetry)
    assert _serve_abandoned_upload(app) == []
    [record] = telemetry.snapshot()
    assert (record["route"], record["status"], record["response_bytes"]) == ("/upload", 499, 0)


# -- a client that leaves a stream the app then ends itself ------------------


def bodiless_request_then_leaving(gone: asyncio.Event):
    """A server's ``receive`` for a GET: its request, then ``http.disconnect``
    once ``gone`` is set (the client closed)."""
    first = True

    async def receive():
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


def serve_then_leave(app, path: str, leave_at: int):
    """One GET of ``path`` through ``app`` as uvicorn serves it: the client
    closes once it has ``leave_at`` body bytes; ``receive`` then says so and
    ``send`` drops everything (uvicorn's ``send`` returns without a word once
    disconnected). Returns the messages the client had."""
    delivered = []
    gone = asyncio.Event()
    receive = bodiless_request_then_leaving(gone)

    async def send(message):
        if gone.is_set():
            return
        delivered.append(message)
        if body_bytes(delivered) >= leave_at:
            gone.set()

    asyncio.run(app(http_scope("GET", path, [(b"host", b"testserver")]), receive, send))
    return delivered


def body_bytes(messages) -> int:
    """The body bytes in ``messages``, as the client counts them."""
    return sum(len(m.get("body") or b"") for m in messages)


async def hundred_ticks():
    for _ in range(100):
        yield b"tick"
        await asyncio.sleep(0.001)


async def ticking_events(request):
    return StreamingResponse(hundred_ticks())


class RelayingMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        return await call_next(request)


def test_a_client_leaving_a_stream_behind_base_http_middleware_is_499(telemetry, records):
    app = Starlette(routes=[Route("/events", ticking_events)])
    app.add_middleware(RelayingMiddleware)  # what @app.middleware("http") adds
    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    delivered = serve_then_leave(app, "/events", 3 * len(b"tick"))
    assert sum(1 for m in delivered if m.get("body")) == 3  # the client had 3 of 100
    found = records(telemetry)
    assert set(found) == {("GET", "/events", CLIENT_CLOSED_STATUS)}
    assert found["GET", "/events", CLIENT_CLOSED_STATUS]["response_bytes"] == 3 * len(b"tick")


def test_a_stream_the_app_ends_on_reading_the_disconnect_is_499(telemetry, records):
    async def polling(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(100):
            await send({"type": "http.response.body", "body": b"tick", "more_body": True})
            try:
                message = await asyncio.wait_for(receive(), 0.001)
            except asyncio.TimeoutError:
                continue
            if message["type"] == "http.disconnect":
                break
        await send({"type": "http.response.body", "body": b"bye"})  # the server drops it

    serve_then_leave(ASGIMiddleware(polling, telemetry=telemetry), "/events", 3 * len(b"tick"))
    ((_, _, status),) = records(telemetry)
    assert status == CLIENT_CLOSED_STATUS
    (record,) = records(telemetry).values()
    assert record["response_bytes"] == 3 * len(b"tick")


def test_a_mounts_convertors_are_dropped_from_its_template_as_a_routes_are(
    telemetry, counts, tmp_path
):
    (tmp_path / "a.css").write_text("body{}")
    inner = Starlette(routes=[Route("/items/{id:int}", plain), Route("/slash/", plain)])
    app = Starlette(
        routes=[
            Mount("/t/{tenant:int}/api", app=inner),
            Mount("/v/{version:int}", routes=[Mount("/s", StaticFiles(directory=tmp_path))]),
        ],
        middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"])],
    )
    client = TestClient(wrap(app, telemetry))
    assert client.get("/t/7/api/items/3").status_code == 200
    assert client.get("/t/7/api/slash", follow_redirects=False).status_code == 307
    assert client.options("/t/7/api/items/3", headers=PREFLIGHT).status_code == 200
    assert client.get("/v/2/s/a.css").status_code == 200
    assert counts(telemetry) == {
        ("GET", "/t/{tenant}/api/items/{id}", 200): 1,  # as path_format writes both
        ("GET", "/t/{tenant}/api/slash/", 307): 1,
        ("OPTIONS", "/t/{tenant}/api/items/{id}", 200): 1,
        ("GET", "/v/{version}/s/{path}", 200): 1,
    }
