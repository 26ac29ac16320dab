"""``note_route``: the template an app without an integration tells the middleware.

Frameworks whose router reqtelemetry does not read (Falcon, Pyramid, Quart)
were keyed by their paths anonymized, one key per id; one line in their own
request hook now hands the matched template over. Each recipe the README
gives is run here as written, with the real framework; Bottle's template,
which its router leaves in the environ, is read without one.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from reqtelemetry import ASGIMiddleware, WSGIMiddleware, note_route
from reqtelemetry.route_hook import ROUTE_KEY
from reqtelemetry.telemetry import UNMATCHED_ROUTE
from test_asgi import served_by_uvicorn

CANARY = "CANARYr0ute7"


def records_sent(telemetry: Any, receiver: Any) -> dict[tuple[str, str, int], tuple[int, int]]:
    """What reached the collector: ``{(method, route, status): (count, response bytes)}``,
    after checking that no canary identifier went with it."""
    assert telemetry.flush(timeout=5)
    reports = receiver.reports_from(telemetry.instance_id)
    assert CANARY not in json.dumps(reports)
    return {
        (r["method"], r["route"], r["status"]): (r["count"], r["response_bytes"])
        for report in reports
        for r in report["batch"]["records"]
    }


@contextlib.contextmanager
def served_by_werkzeug(app: Any) -> Iterator[int]:
    """``app`` under Werkzeug's threaded server on 127.0.0.1; yields its port."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def get(port: int, path: str, method: str = "GET") -> tuple[int, int]:
    """One request on its own connection: the status and body size the client got."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, len(response.read())
    finally:
        connection.close()


# -- the call itself ----------------------------------------------------------------


def test_note_route_sets_the_key_the_middlewares_read():
    environ: dict[str, Any] = {}
    note_route(environ, "/items/{item_id}")
    assert environ == {ROUTE_KEY: "/items/{item_id}"}
    note_route(environ, None)
    assert environ == {ROUTE_KEY: None}


@pytest.mark.parametrize(
    ("template", "error", "says"),
    [
        (b"/items/{item_id}", TypeError, "not bytes"),
        (42, TypeError, "not int"),
        ("", ValueError, "not an empty string"),
    ],
)
def test_a_wrong_template_is_refused_where_it_is_passed(template, error, says):
    environ: dict[str, Any] = {}
    with pytest.raises(error, match=says):
        note_route(environ, template)
    assert environ == {}


def test_a_template_without_its_leading_slash_is_given_one():
    environ: dict[str, Any] = {}
    note_route(environ, "items/{id}")
    assert environ == {ROUTE_KEY: "/items/{id}"}


def test_a_str_subclass_goes_as_plain_text():
    class Markup(str):
        pass

    environ: dict[str, Any] = {}
    note_route(environ, Markup("/items/{item_id}"))
    assert type(environ[ROUTE_KEY]) is str


# -- any WSGI or ASGI app ------------------------------------------------------------


def wsgi_app_telling(template: Any, status: str = "200 OK", by_hand: bool = False) -> Any:
    def app(environ, start_response):
        if by_hand:
            environ[ROUTE_KEY] = template
        else:
            note_route(environ, template)
        start_response(status, [("Content-Type", "text/plain")])
        return [b"hello"]

    return app


def test_a_wsgi_app_tells_its_template(telemetry, counts):
    app = WSGIMiddleware(wsgi_app_telling("/items/{item_id}"), telemetry=telemetry)
    with served_by_werkzeug(app) as port:
        got = [get(port, f"/items/{n}?user={CANARY}") for n in (1, 22, 333)]
    assert got == [(200, 5)] * 3
    assert counts(telemetry) == {("GET", "/items/{item_id}", 200): 3}


def test_a_told_template_keys_the_apps_own_404(telemetry, counts):
    """A 404 the app answers for a route it matched (no such item) is that
    route's, as Flask's and Django's are: only what no route took is unmatched."""
    app = WSGIMiddleware(wsgi_app_telling("/items/{item_id}", "404 Not Found"), telemetry=telemetry)
    with served_by_werkzeug(app) as port:
        assert get(port, f"/items/{CANARY}")[0] == 404
    assert counts(telemetry) == {("GET", "/items/{item_id}", 404): 1}


def test_none_says_the_router_matched_nothing(make_telemetry, counts):
    for group_unmatched in (True, False):
        telemetry = make_telemetry(group_unmatched=group_unmatched)
        app = WSGIMiddleware(wsgi_app_telling(None, "404 Not Found"), telemetry=telemetry)
        with served_by_werkzeug(app) as port:
            assert get(port, f"/wp-admin/{CANARY}.php")[0] == 404
        ((method, route, status),) = counts(telemetry)
        assert (method, status) == ("GET", 404)
        if group_unmatched:
            assert route == UNMATCHED_ROUTE
        else:  # the path, anonymized: never as it was
            assert CANARY not in route and route.count("/") == 2


@pytest.mark.parametrize("value", [b"/items/1", 42, "", ["/items/{item_id}"]])
def test_a_value_set_by_hand_that_is_no_template_is_never_sent(telemetry, counts, caplog, value):
    """Written into the environ directly (bypassing note_route's check): the
    request is kept, its path anonymized, and the mistake said once, without the value."""
    app = WSGIMiddleware(wsgi_app_telling(value, by_hand=True), telemetry=telemetry)
    with (
        caplog.at_level(logging.WARNING, logger="reqtelemetry"),
        served_by_werkzeug(app) as port,
    ):
        assert get(port, f"/items/{CANARY}")[0] == 200
        assert get(port, f"/items/{CANARY}2")[0] == 200
    keys = counts(telemetry)
    assert sum(keys.values()) == 2 and len(keys) == 2
    assert all(CANARY not in route and route.count("/") == 2 for _, route, _ in keys)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "note_route" in warnings[0]
    assert CANARY not in warnings[0] and "/items/1" not in warnings[0]
    assert telemetry.internal_errors == 0


def asgi_app_telling(template: Any, status: int = 200, by_hand: bool = False) -> Any:
    async def app(scope, receive, send):
        if by_hand:
            scope[ROUTE_KEY] = template
        else:
            note_route(scope, template)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    return app


def test_an_asgi_app_tells_its_template_under_uvicorn(make_sender, receiver):
    telemetry = make_sender()
    app = ASGIMiddleware(asgi_app_telling("/items/{item_id}"), telemetry=telemetry)
    with served_by_uvicorn(app) as client:
        for n in (1, 22, 333):
            assert client.get(f"/items/{n}", params={"user": CANARY}).status_code == 200
    assert records_sent(telemetry, receiver) == {("GET", "/items/{item_id}", 200): (3, 15)}


@pytest.mark.parametrize(
    ("template", "by_hand", "expected"),
    [
        (None, False, UNMATCHED_ROUTE),
        ("/orders/{order_id}", False, "/orders/{order_id}"),
        (42, True, None),  # ignored: the path, anonymized
    ],
)
def test_an_asgi_app_tells_none_or_a_template_or_a_mistake(
    telemetry, counts, template, by_hand, expected
):
    import asyncio

    app = ASGIMiddleware(
        asgi_app_telling(template, 404 if template is None else 200, by_hand),
        telemetry=telemetry,
    )

    async def run() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return (await client.get(f"/orders/{CANARY}")).status_code

    asyncio.run(run())
    ((_, route, _),) = counts(telemetry)
    if expected is None:
        assert CANARY not in route and route.count("/") == 2
    else:
        assert route == expected
