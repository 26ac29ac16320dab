"""A Starlette router whose root mount the middleware cannot reach (behind a
wrapper with neither ``.app`` nor ``.router``): Connexion 3's shape, whose
outer router mounts its API at ``""`` and routes the real request on a copy
of the scope. Every request was keyed ``/{path}``, 404s and all."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, Router

from reqtelemetry import ASGIMiddleware
from reqtelemetry.telemetry import UNMATCHED_ROUTE


async def plain(request):
    return PlainTextResponse("ok")


def run(app, paths):
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [(await client.get(p)).status_code for p in paths]

    return asyncio.run(go())


class Hidden:
    """A wrapper the middleware's walk does not follow (as Connexion's AsyncApp)."""

    def __init__(self, inner):
        self._inner = inner

    async def __call__(self, scope, receive, send):
        await self._inner(scope, receive, send)


def test_a_root_mount_behind_an_opaque_wrapper_does_not_key_every_request(make_telemetry, counts):
    telemetry = make_telemetry()
    api = Starlette(routes=[Route("/users/{uid}", plain)])
    app = Starlette(routes=[Route("/a", plain), Mount("", app=api)])
    statuses = run(
        ASGIMiddleware(Hidden(app), telemetry=telemetry), ["/users/1", "/nope/secret", "/a"]
    )
    assert statuses == [200, 404, 200]
    assert counts(telemetry) == {
        ("GET", "/users/{uid}", 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 1,
        ("GET", "/a", 200): 1,
    }


def test_connexion_shaped_routing_on_a_scope_copy_is_not_one_key(make_telemetry, counts):
    """Connexion's SwaggerUI middleware routes the server's scope through a
    root mount (left in ``scope["route"]``) whose router matches nothing and
    hands a copy of the scope on; the API routes on that copy."""
    telemetry = make_telemetry()
    api = Router(routes=[Route("/items/{item_id}", plain), Route("/boom", plain)])

    async def next_app(scope, receive, send):
        await api(dict(scope), receive, send)  # routed on a copy, as Connexion does

    outer = Router(
        routes=[Mount("", app=Router(routes=[Route("/openapi.json", plain)], default=next_app))]
    )
    statuses = run(
        ASGIMiddleware(Hidden(outer), telemetry=telemetry),
        ["/items/1", "/items/2", "/boom", "/nope/secret"],
    )
    assert statuses == [200, 200, 200, 404]
    keys = counts(telemetry)
    assert ("GET", "/{path}", 200) not in keys and ("GET", "/{path}", 404) not in keys, keys
    assert keys[("GET", UNMATCHED_ROUTE, 404)] == 1
    assert len([k for k in keys if k[2] == 200]) == 3  # three paths, hashed apart
