"""Litestar, which records no Starlette route: its router leaves the matched
route's template in ``scope["path_template"]``, read for the key, so that
its ids do not make a key per path (1,000 of them fill the key cap)."""

from __future__ import annotations

import json
from typing import Any

import pytest

litestar = pytest.importorskip("litestar")

from litestar import Litestar, get, post  # noqa: E402

from reqtelemetry import ASGIMiddleware  # noqa: E402
from reqtelemetry.telemetry import UNMATCHED_ROUTE  # noqa: E402
from test_asgi import served_by_uvicorn  # noqa: E402

CANARY = "CANARYx7q41"
#: Litestar 2.2x prefers ``FromPath[int]``; the plain style works in every 2.x.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated inferred style")


@get("/items/{item_id:int}")
async def item(item_id: int) -> str:
    return f"item {item_id}"


@get("/boom/{n:int}")
async def boom(n: int) -> str:
    raise RuntimeError("the handler failed")


@post("/orders/{order_id:str}/lines")
async def order_lines(order_id: str) -> dict[str, bool]:
    return {"ok": True}


def litestar_app() -> Litestar:
    return Litestar([item, boom, order_lines], logging_config=None)


def test_litestar_routes_are_keyed_by_template_under_uvicorn(make_sender, receiver):
    telemetry = make_sender()
    app = ASGIMiddleware(litestar_app(), telemetry=telemetry)
    got = []
    with served_by_uvicorn(app) as client:
        for path in ("/items/1", "/items/22", f"/boom/3?user={CANARY}", f"/nope/{CANARY}"):
            response = client.get(path)
            got.append((response.status_code, len(response.content)))
        response = client.post(f"/orders/{CANARY}/lines", content=b"{}")
        got.append((response.status_code, len(response.content)))
    assert [status for status, _ in got] == [200, 200, 500, 404, 201]
    assert telemetry.flush(timeout=5)
    reports = receiver.reports_from(telemetry.instance_id)
    records = {
        (r["method"], r["route"], r["status"]): (r["count"], r["response_bytes"])
        for report in reports
        for r in report["batch"]["records"]
    }
    assert records == {
        ("GET", "/items/{item_id}", 200): (2, got[0][1] + got[1][1]),
        ("GET", "/boom/{n}", 500): (1, got[2][1]),
        ("GET", UNMATCHED_ROUTE, 404): (1, got[3][1]),
        ("POST", "/orders/{order_id}/lines", 201): (1, got[4][1]),
    }
    assert CANARY not in json.dumps(reports)


def test_an_empty_template_is_not_a_key(telemetry, counts):
    """Litestar has left ``path_template`` empty for some routes (its issue
    3806): the path is anonymized then, never sent as it is, nor keyed ``""``."""
    import asyncio

    import httpx

    async def app(scope, receive, send):
        scope["path_template"] = ""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run():
        transport = httpx.ASGITransport(app=ASGIMiddleware(app, telemetry=telemetry))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return (await client.get(f"/prefix/{CANARY}")).status_code

    assert asyncio.run(run()) == 200
    ((method, route, status),) = counts(telemetry)
    assert (method, status) == ("GET", 200)
    assert route.startswith("/") and CANARY not in route and route != "/"


def test_a_handlers_own_404_is_its_routes(telemetry, counts):
    """A matched route whose handler answers 404 (no such item) keeps its
    template, as Flask's and Django's do: only what no route took is unmatched."""
    import asyncio

    import httpx
    from litestar.exceptions import NotFoundException

    @get("/orders/{order_id:int}")
    async def order(order_id: int) -> str:
        raise NotFoundException("no such order")

    app = ASGIMiddleware(Litestar([order], logging_config=None), telemetry=telemetry)

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [(await client.get(path)).status_code for path in ("/orders/7", f"/{CANARY}")]

    assert asyncio.run(run()) == [404, 404]
    assert counts(telemetry) == {
        ("GET", "/orders/{order_id}", 404): 1,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }


def mount_options() -> list[dict[str, Any]]:
    """``copy_scope`` both ways where this Litestar has it (it warns when it
    is unset, and copies by default from Litestar 3): with a copy, a mounted
    app's changes to the scope do not reach the middleware."""
    import inspect

    from litestar import asgi

    if "copy_scope" in inspect.signature(asgi).parameters:
        return [{"copy_scope": True}, {"copy_scope": False}]
    return [{}]


@pytest.mark.parametrize("options", mount_options())
def test_a_mounts_requests_are_the_mounts(telemetry, counts, options):
    """Litestar leaves no template for a mount and rewrites ``scope["path"]``
    to what follows it: the mount's own path was keyed ``/``, with the home
    page, and the rest lost the prefix. Keyed as Starlette's mounts are."""
    import asyncio

    import httpx
    from litestar import Router, asgi

    @get("/")
    async def home() -> str:
        return "home"

    @asgi("/graphql", is_mount=True, **options)
    async def graphql(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = Litestar([home, Router("/api", route_handlers=[graphql])], logging_config=None)

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=ASGIMiddleware(app, telemetry=telemetry))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [
                (await client.get(path)).status_code
                for path in ("/", "/api/graphql", f"/api/graphql/{CANARY}")
            ]

    assert asyncio.run(run()) == [200, 200, 200]
    assert counts(telemetry) == {
        ("GET", "/", 200): 1,
        ("GET", "/api/graphql/{path}", 200): 2,
    }


@pytest.mark.parametrize("options", mount_options())
def test_a_starlette_app_mounted_keeps_its_unmatched(telemetry, counts, options):
    """A Starlette router in the mount that matched nothing has said so: its
    404 stays unmatched, not the mount's."""
    import asyncio

    import httpx
    from litestar import asgi
    from starlette.applications import Starlette

    inner = Starlette()

    @asgi("/sub", is_mount=True, **options)
    async def sub(scope: Any, receive: Any, send: Any) -> None:
        await inner(scope, receive, send)

    app = ASGIMiddleware(Litestar([sub], logging_config=None), telemetry=telemetry)

    async def run() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return (await client.get(f"/sub/{CANARY}")).status_code

    assert asyncio.run(run()) == 404
    assert counts(telemetry) == {("GET", UNMATCHED_ROUTE, 404): 1}


@pytest.mark.parametrize("options", mount_options())
def test_a_mount_at_the_root_is_not_the_home_page(telemetry, counts, options):
    """A mount at ``/`` leaves the template ``/`` for every path it takes:
    each was keyed ``/``, with a home page's requests. Keyed ``/{path}``, as
    Starlette's root mount is; its 404s unmatched."""
    import asyncio

    import httpx
    from litestar import asgi

    @get("/home")
    async def home() -> str:
        return "home"

    @asgi("/", is_mount=True, **options)
    async def site(scope: Any, receive: Any, send: Any) -> None:
        status = 404 if "missing" in scope["path"] else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = ASGIMiddleware(Litestar([home, site], logging_config=None), telemetry=telemetry)

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [
                (await client.get(path)).status_code
                for path in ("/home", "/", f"/docs/{CANARY}", f"/missing/{CANARY}")
            ]

    assert asyncio.run(run()) == [200, 200, 200, 404]
    assert counts(telemetry) == {
        ("GET", "/home", 200): 1,
        ("GET", "/{path}", 200): 2,
        ("GET", UNMATCHED_ROUTE, 404): 1,
    }
