"""init_app around middleware set as ``app.wsgi_app`` before it: one that is a
generator (Werkzeug's DebuggedApplication) runs Flask only as the server
iterates it, one may answer the error Flask propagated itself, and a
dispatcher may mount another measured app, whose failures count once."""

from __future__ import annotations

import pytest
from flask import Flask, Response
from werkzeug.debug import DebuggedApplication
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from reqtelemetry import WSGIMiddleware
from reqtelemetry.flask import init_app
from reqtelemetry.integrations.flask import KEPT_KEY
from reqtelemetry.telemetry import CLIENT_CLOSED_STATUS


def lazy_app() -> Flask:
    app = Flask(__name__)

    @app.route("/items/<int:item_id>")
    def item(item_id):
        return f"item {item_id}"

    @app.route("/stream")
    def stream():
        return Response(f"chunk {i};".encode() for i in range(100))

    @app.route("/boom/<int:n>")
    def boom(n):
        raise RuntimeError("the view failed")

    return app


def test_flask_run_by_a_generator_middleware_inside_is_measured(telemetry, records):
    app = lazy_app()
    app.debug = True  # PROPAGATE_EXCEPTIONS: the debugger answers the error itself
    app.wsgi_app = DebuggedApplication(app.wsgi_app, evalex=False)
    init_app(app, telemetry)
    client = app.test_client()
    environs = []

    @app.after_request
    def remember(response):
        from flask import request

        environs.append(request.environ)
        return response

    assert client.get("/items/7").data == b"item 7"
    failed = client.get("/boom/1")
    assert failed.status_code == 500 and b"RuntimeError" in failed.data  # the debugger's page
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.data
    got = records(telemetry)
    item = got["GET", "/items/<int:item_id>", 200]
    assert (item["count"], item["response_bytes"]) == (1, 6)
    assert got["GET", "/boom/<int:n>", 500]["response_bytes"] == len(failed.data)
    assert got["GET", "<unmatched>", 404]["response_bytes"] == len(missing.data)
    assert telemetry.internal_errors == 0
    assert environs and KEPT_KEY not in environs[0]


def test_a_generator_middleware_inside_a_client_leaving_mid_stream_is_499(telemetry, records):
    def lazy(wsgi_app):
        def middleware(environ, start_response):
            yield from wsgi_app(environ, start_response)

        return middleware

    app = lazy_app()
    app.wsgi_app = lazy(app.wsgi_app)
    init_app(app, telemetry)
    response = app.test_client().get("/stream", buffered=False)
    iterator = iter(response.response)
    first = next(iterator)
    response.close()
    (record,) = records(telemetry).values()
    assert (record["route"], record["status"], record["response_bytes"]) == (
        "/stream",
        CLIENT_CLOSED_STATUS,
        len(first),
    )


def test_another_apps_generator_behind_a_dispatcher_is_still_not_flasks(telemetry, counts):
    def other_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"not flask"

    app = lazy_app()
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/other": other_app})
    init_app(app, telemetry)
    client = app.test_client()
    assert client.get("/other/x").data == b"not flask"
    assert client.get("/items/2").data == b"item 2"
    assert counts(telemetry) == {("GET", "/items/<int:item_id>", 200): 1}


def test_under_a_real_server_the_report_has_what_the_client_got(make_sender, receiver):
    """Werkzeug's threaded server, DebuggedApplication inside init_app: the flushed report."""
    import http.client
    import threading

    from werkzeug.serving import make_server

    telemetry = make_sender()
    app = lazy_app()
    app.wsgi_app = DebuggedApplication(app.wsgi_app, evalex=False)
    init_app(app, telemetry)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    got = []
    try:
        for path in ("/items/1", "/items/22", "/stream"):
            connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
            connection.request("GET", path)
            response = connection.getresponse()
            got.append((path, response.status, len(response.read())))
            connection.close()
    finally:
        server.shutdown()
        server.server_close()
    assert telemetry.flush(timeout=5)
    records = [
        (r["route"], r["status"], r["count"], r["response_bytes"])
        for report in receiver.reports_from(telemetry.instance_id)
        for r in report["batch"]["records"]
    ]
    stream_bytes = next(size for path, _, size in got if path == "/stream")
    assert sorted(records) == [
        ("/items/<int:item_id>", 200, 2, len(b"item 1item 22")),
        ("/stream", 200, 1, stream_bytes),
    ]


def test_an_error_a_middleware_inside_answers_is_a_500_with_its_rule(telemetry, records):
    def error_page(wsgi_app):
        def middleware(environ, start_response):
            try:
                return wsgi_app(environ, start_response)
            except Exception:
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
                return [b"sorry, it failed"]

        return middleware

    app = Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = True  # as under DEBUG or TESTING

    @app.route("/orders/<int:order_id>")
    def order(order_id):
        raise RuntimeError("the view failed")

    app.wsgi_app = error_page(app.wsgi_app)
    init_app(app, telemetry)
    client = app.test_client()
    for order_id in (1, 2):
        response = client.get(f"/orders/{order_id}")
        assert (response.status_code, response.data) == (500, b"sorry, it failed")
    assert telemetry.internal_errors == 0
    (record,) = records(telemetry).values()
    assert (record["route"], record["status"], record["count"], record["response_bytes"]) == (
        "/orders/<int:order_id>",
        500,
        2,
        2 * len(b"sorry, it failed"),
    )


# An app run late by a generator middleware, mounted in another that init_app measures.


def test_a_lazy_app_mounted_in_a_measured_app_is_measured(make_telemetry, counts):
    inner_telemetry, outer_telemetry = make_telemetry(), make_telemetry()
    inner = Flask("inner")

    @inner.route("/items/<int:item_id>")
    def item(item_id):
        return f"item {item_id}"

    inner.wsgi_app = DebuggedApplication(inner.wsgi_app, evalex=False)
    init_app(inner, inner_telemetry)
    outer = Flask("outer")

    @outer.route("/home")
    def home():
        return "home"

    outer.wsgi_app = DispatcherMiddleware(outer.wsgi_app, {"/inner": inner})
    init_app(outer, outer_telemetry)
    client = outer.test_client()
    assert client.get("/inner/items/7").data == b"item 7"
    assert client.get("/home").data == b"home"
    assert counts(inner_telemetry) == {("GET", "/items/<int:item_id>", 200): 1}
    assert counts(outer_telemetry) == {("GET", "/home", 200): 1}


def test_one_telemetry_for_both_counts_each_request_once(telemetry, counts):
    inner = Flask("inner")

    @inner.route("/items/<int:item_id>")
    def item(item_id):
        return f"item {item_id}"

    inner.wsgi_app = DebuggedApplication(inner.wsgi_app, evalex=False)
    init_app(inner, telemetry)
    outer = Flask("outer")
    outer.wsgi_app = DispatcherMiddleware(outer.wsgi_app, {"/inner": inner})
    init_app(outer, telemetry)
    client = outer.test_client()
    for item_id in (1, 2):
        assert client.get(f"/inner/items/{item_id}").data == f"item {item_id}".encode()
    assert client.get("/nope").data  # read: its body is a stream, measured to its end
    assert counts(telemetry) == {
        ("GET", "/items/<int:item_id>", 200): 2,
        ("GET", "<unmatched>", 404): 1,
    }


# An error propagating out of a measured app mounted in another that init_app measures.


def failing_flask_app() -> Flask:
    app = Flask("inner")
    app.config["PROPAGATE_EXCEPTIONS"] = True

    @app.route("/orders/<int:order_id>")
    def order(order_id):
        raise RuntimeError("the view failed")

    @app.route("/ok")
    def ok():
        return "ok"

    return app


def test_a_mounted_init_app_apps_propagated_error_counts_once(telemetry, counts):
    inner = failing_flask_app()
    init_app(inner, telemetry)
    outer = Flask("outer")
    outer.wsgi_app = DispatcherMiddleware(outer.wsgi_app, {"/shop": inner})
    init_app(outer, telemetry)
    for order_id in (1, 2):
        with pytest.raises(RuntimeError):
            Client(outer).get(f"/shop/orders/{order_id}")
    assert counts(telemetry) == {("GET", "/orders/<int:order_id>", 500): 2}


def test_a_mounted_wsgi_middleware_apps_propagated_error_counts_once(telemetry, counts):
    def other(environ, start_response):
        raise RuntimeError("the other app failed")

    outer = Flask("outer")
    outer.wsgi_app = DispatcherMiddleware(
        outer.wsgi_app, {"/other": WSGIMiddleware(other, telemetry=telemetry)}
    )
    init_app(outer, telemetry)
    with pytest.raises(RuntimeError):
        Client(outer).get("/other/1")
    assert sum(counts(telemetry).values()) == 1


def test_another_telemetrys_init_app_outside_still_records_it(make_telemetry, counts):
    inner_telemetry, outer_telemetry = make_telemetry(), make_telemetry()
    inner = failing_flask_app()
    init_app(inner, inner_telemetry)
    outer = Flask("outer")
    outer.wsgi_app = DispatcherMiddleware(outer.wsgi_app, {"/shop": inner})
    init_app(outer, outer_telemetry)
    with pytest.raises(RuntimeError):
        Client(outer).get("/shop/orders/1")
    assert counts(inner_telemetry) == {("GET", "/orders/<int:order_id>", 500): 1}
    assert sum(counts(outer_telemetry).values()) == 1  # its own maintainer's count
