"""The WSGI middleware through Flask's test client and plain WSGI apps (Werkzeug's client)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import httpx
import pytest
from flask import Blueprint, Flask, Response, abort, stream_with_context
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.routing import Rule
from werkzeug.test import Client, EnvironBuilder

from reqtelemetry import Telemetry, WSGIMiddleware
from reqtelemetry.anonymize import hash_value
from reqtelemetry.flask import init_app
from reqtelemetry.recorder import PENDING_LIMIT
from reqtelemetry.telemetry import CLIENT_CLOSED_STATUS, UNMATCHED_ROUTE


def fetch(client, path, method="GET", **kwargs):
    """One request through a Flask or Werkzeug test client, its body read to the end.

    Reading the body is what makes the server side iterate (and so finish) the
    response, as a real server does.
    """
    response = client.open(path, method=method, **kwargs)
    response.data  # noqa: B018
    return response


def build_flask_app() -> Flask:
    app = Flask(__name__)

    @app.route("/items/<int:item_id>")
    def get_item(item_id):
        if item_id == 0:
            abort(404)
        return f"item {item_id}"

    @app.route("/items", methods=["POST"])
    def create_item():
        from flask import request

        return f"created {len(request.get_data())} bytes", 201

    @app.route("/files/<path:name>")
    @app.route("/docs/<lang>/<slug>")
    @app.route("/docs")
    def documents(name=None, lang=None, slug=None):
        return "doc"

    @app.route("/guides/<slug>/")
    def guide(slug):
        return f"guide {slug}"

    @app.route("/boom")
    def boom():
        raise RuntimeError("the view failed")

    @app.route("/stream")
    def stream():
        def chunks():
            for i in range(10):
                yield f"line {i}\n".encode()

        return Response(chunks(), mimetype="text/plain")

    @app.route("/stream-with-context")
    def stream_context():
        from flask import request

        def chunks():
            yield request.path.encode()
            yield b"!"

        return Response(stream_with_context(chunks()))

    @app.route("/stream-boom")
    def stream_boom():
        def chunks():
            yield b"part"
            raise RuntimeError("stream broke")

        return Response(chunks())

    api = Blueprint("api", __name__, url_prefix="/api")

    @api.route("/users/<user_id>")
    def get_user(user_id):
        return user_id

    v2 = Blueprint("v2", __name__, url_prefix="/v2")

    @v2.route("/orders/<uuid:order_id>")
    def get_order(order_id):
        return str(order_id)

    admin = Blueprint("admin", __name__, url_prefix="/admin")
    settings = Blueprint("settings", __name__, url_prefix="/settings")

    @settings.route("/<int:section>")
    def get_settings(section):
        return str(section)

    admin.register_blueprint(settings)
    api.register_blueprint(v2)
    app.register_blueprint(api)
    app.register_blueprint(admin, url_prefix="/backoffice")  # the prefix given at registration wins
    return app


@pytest.fixture
def flask_app(telemetry):
    app = build_flask_app()
    init_app(app, telemetry)
    return app


@pytest.fixture
def flask_client(flask_app):
    return flask_app.test_client()


def test_flask_rules_with_converters_and_blueprints(flask_client, telemetry, counts):
    client = flask_client
    paths = [
        "/items/1",
        "/items/2",
        "/files/a/b/c.txt",
        "/docs/en/intro",
        "/docs/de/intro",
        "/docs",
        "/api/users/alice",
        "/api/v2/orders/12345678-1234-5678-1234-567812345678",
        "/backoffice/settings/3",
    ]
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.data
    assert counts(telemetry) == {
        ("GET", "/items/<int:item_id>", 200): 2,
        # One endpoint, three rules: each request keyed by the rule that matched.
        ("GET", "/files/<path:name>", 200): 1,
        ("GET", "/docs/<lang>/<slug>", 200): 2,
        ("GET", "/docs", 200): 1,
        ("GET", "/api/users/<user_id>", 200): 1,
        ("GET", "/api/v2/orders/<uuid:order_id>", 200): 1,
        ("GET", "/backoffice/settings/<int:section>", 200): 1,
    }


def test_flask_404_is_unmatched_but_routed_404_keeps_rule(flask_client, telemetry, counts):
    for path in ["/nope", "/wp-login.php", "/items/notanint", "/api/users/", "/.git/config"]:
        response = fetch(flask_client, path)
        assert response.status_code == 404
        assert response.data
    assert fetch(flask_client, "/items/0").status_code == 404
    assert counts(telemetry) == {
        ("GET", UNMATCHED_ROUTE, 404): 5,
        ("GET", "/items/<int:item_id>", 404): 1,
    }


def test_flask_request_and_response_bytes(flask_client, telemetry, records):
    response = flask_client.post("/items", data=b"x" * 321)
    assert response.status_code == 201
    assert response.data == b"created 321 bytes"
    record = records(telemetry)["POST", "/items", 201]
    assert record["request_bytes"] == 321
    assert record["response_bytes"] == len(response.data)


def test_flask_exception_handled_is_500(flask_app, flask_client, telemetry, counts):
    flask_app.config["PROPAGATE_EXCEPTIONS"] = False
    response = flask_client.get("/boom")
    assert response.status_code == 500
    assert response.data
    assert counts(telemetry) == {("GET", "/boom", 500): 1}


@pytest.mark.parametrize("setting", ["TESTING", "PROPAGATE_EXCEPTIONS"])
def test_flask_exception_propagated_is_500(flask_app, telemetry, counts, setting):
    flask_app.config[setting] = True
    with pytest.raises(RuntimeError, match="the view failed"):
        flask_app.test_client().get("/boom")
    assert counts(telemetry) == {("GET", "/boom", 500): 1}


def test_flask_streaming_response(flask_client, telemetry, records):
    response = flask_client.get("/stream")
    assert response.status_code == 200
    expected = b"".join(f"line {i}\n".encode() for i in range(10))
    assert response.data == expected
    with_context = flask_client.get("/stream-with-context")
    assert with_context.data == b"/stream-with-context!"
    found = records(telemetry)
    assert found["GET", "/stream", 200]["response_bytes"] == len(expected)
    assert found["GET", "/stream-with-context", 200]["response_bytes"] == len(with_context.data)


def test_flask_streaming_error_is_500(flask_app, telemetry, records):
    flask_app.testing = False
    client = flask_app.test_client()
    response = client.get("/stream-boom")
    with pytest.raises(RuntimeError, match="stream broke"):
        response.data  # noqa: B018  (the body is where it breaks)
    response.close()  # a server closes the iterable whatever happened (PEP 3333)
    record = records(telemetry)["GET", "/stream-boom", 500]
    assert record["count"] == 1
    assert record["response_bytes"] == len(b"part")


def test_flask_head(flask_client, telemetry, records):
    response = flask_client.head("/items/5")
    assert response.status_code == 200
    assert response.data == b""
    record = records(telemetry)["HEAD", "/items/<int:item_id>", 200]
    assert record["count"] == 1
    assert record["response_bytes"] == 0


@pytest.mark.parametrize("integration", ["init_app", "WSGIMiddleware"])
def test_flask_405_and_slash_redirect_keep_the_rule_the_path_matched(
    make_telemetry, counts, integration
):
    """Werkzeug's router refuses these and leaves ``request.url_rule`` unset, but
    they are for an endpoint that exists: ``<unmatched>`` is for paths no rule takes."""
    telemetry = make_telemetry()
    app = build_flask_app()
    if integration == "init_app":
        init_app(app, telemetry)
    else:
        app.wsgi_app = WSGIMiddleware(app.wsgi_app, telemetry=telemetry)
    client = app.test_client()
    canary = "guide-canary-7f3a"
    assert fetch(client, "/items/1", method="BREW").status_code == 405
    assert fetch(client, "/items/1", method="DELETE").status_code == 405
    assert fetch(client, f"/guides/{canary}").status_code == 308
    # Mounted under a prefix (SCRIPT_NAME): the redirect's target carries it.
    mounted = fetch(client, f"/guides/{canary}", base_url="http://localhost/shop")
    assert mounted.status_code == 308
    assert mounted.headers["Location"].endswith(f"/shop/guides/{canary}/")
    assert fetch(client, f"/guides/{canary}/").status_code == 200
    assert fetch(client, "/items/1/more", method="DELETE").status_code == 404
    assert counts(telemetry) == {
        ("_OTHER", "/items/<int:item_id>", 405): 1,
        ("DELETE", "/items/<int:item_id>", 405): 1,
        ("GET", "/guides/<slug>/", 308): 2,
        ("GET", "/guides/<slug>/", 200): 1,
        ("DELETE", UNMATCHED_ROUTE, 404): 1,
    }
    assert canary not in repr(telemetry.snapshot())


@pytest.mark.parametrize("integration", ["init_app", "WSGIMiddleware"])
def test_flask_canonical_redirect_keeps_its_rule_whatever_the_host_case(
    make_telemetry, counts, integration
):
    """Host names are case-insensitive: Werkzeug builds the redirect's target
    with the host in lower case, and a request that named it in capitals was
    counted ``<unmatched>``, as if the redirect went to another site."""
    telemetry = make_telemetry()
    app = build_flask_app()
    if integration == "init_app":
        init_app(app, telemetry)
    else:
        app.wsgi_app = WSGIMiddleware(app.wsgi_app, telemetry=telemetry)
    client = app.test_client()
    for host in ("Shop.Example.COM", "SHOP.example.com:8080"):
        headers = {"Host": host}
        assert fetch(client, "/guides/intro", headers=headers).status_code == 308
        assert fetch(client, "/guides//intro/", headers=headers).status_code == 308
    assert counts(telemetry) == {("GET", "/guides/<slug>/", 308): 4}


@pytest.mark.parametrize("integration", ["init_app", "WSGIMiddleware"])
def test_flask_redirects_other_than_to_the_canonical_path_stay_unmatched(
    make_telemetry, counts, integration
):
    """A rule's ``redirect_to`` (an alias, another site) names no rule of the
    request's path: recorded under the target's rule, a hit on ``/guides/...``
    would be counted that ``/guides/...`` never served."""
    telemetry = make_telemetry()
    app = build_flask_app()
    app.url_map.add(Rule("/old-guides/<slug>", redirect_to="/guides/<slug>/"))
    app.url_map.add(Rule("/handbook", redirect_to="https://docs.example.org/guides/intro/"))
    if integration == "init_app":
        init_app(app, telemetry)
    else:
        app.wsgi_app = WSGIMiddleware(app.wsgi_app, telemetry=telemetry)
    client = app.test_client()
    assert fetch(client, "/old-guides/intro").status_code == 308
    assert fetch(client, "/handbook").status_code == 308
    # Doubled slashes merged: the canonical form of this very path.
    merged = fetch(client, "/guides//intro")
    assert merged.status_code == 308
    assert merged.headers["Location"].endswith("/guides/intro/")
    assert counts(telemetry) == {
        ("GET", UNMATCHED_ROUTE, 308): 2,
        ("GET", "/guides/<slug>/", 308): 1,
    }


def test_flask_405_picks_the_same_rule_in_every_process():
    """Two rules take ``/files/5``, neither with PUT. Werkzeug gathers the
    allowed methods in a set, whose order follows the process's hash seed: the
    rule must not, or the workers of one deployment split the same requests."""
    script = """
from flask import Flask
from reqtelemetry import Telemetry
from reqtelemetry.flask import init_app
app = Flask("files")
app.add_url_rule("/files/<int:file_id>", "by_id", lambda file_id: "id", methods=["GET"])
app.add_url_rule("/files/<name>", "by_name", lambda name: "name", methods=["POST"])
telemetry = Telemetry(endpoint=None, send_in_tests=True)
init_app(app, telemetry)
response = app.test_client().put("/files/5")
response.data
response.close()
print(response.status_code, [record["route"] for record in telemetry.snapshot()])
"""
    seen = set()
    for seed in ("1", "2", "3", "4"):
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed, "SQA_OPT_OUT": "", "DO_NOT_TRACK": ""},
        )
        assert done.returncode == 0, done.stderr
        seen.add(done.stdout.strip())
    assert seen == {"405 ['/files/<int:file_id>']"}


def test_flask_excluded_paths(make_telemetry, counts):
    telemetry = make_telemetry(exclude_paths=["/docs"], exclude_prefixes=["/files/"])
    app = build_flask_app()
    init_app(app, telemetry)
    client = app.test_client()
    assert fetch(client, "/docs").status_code == 200
    assert fetch(client, "/files/a.txt").status_code == 200
    assert fetch(client, "/files/").status_code == 404
    assert telemetry.snapshot() == []
    assert fetch(client, "/docs/en/x").status_code == 200
    assert counts(telemetry) == {("GET", "/docs/<lang>/<slug>", 200): 1}


def test_wrapping_the_flask_app_object_or_wsgi_app(make_telemetry, counts):
    for wrap_object in (True, False):
        telemetry = make_telemetry()
        app = build_flask_app()
        inner = app if wrap_object else app.wsgi_app
        client = Client(WSGIMiddleware(inner, telemetry=telemetry))
        assert fetch(client, "/items/9").status_code == 200
        assert fetch(client, "/missing").status_code == 404
        assert counts(telemetry) == {
            ("GET", "/items/<int:item_id>", 200): 1,
            ("GET", UNMATCHED_ROUTE, 404): 1,
        }


def test_flask_opted_out(make_telemetry):
    telemetry = make_telemetry(opt_out=True)
    app = build_flask_app()
    own_wsgi_app = app.wsgi_app
    init_app(app, telemetry)
    # Not even a pass-through: the app calls its own wsgi_app, as without reqtelemetry.
    assert "wsgi_app" not in vars(app)
    assert app.wsgi_app == own_wsgi_app
    assert app.test_client().get("/items/1").data == b"item 1"
    assert telemetry.snapshot() == []


# -- plain WSGI apps -----------------------------------------------------------------


def routeless_app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/missing"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not here"]
    if path.startswith("/boom"):
        raise RuntimeError("plain app failed")
    size = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(size) if size else b""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"got ", body]


def test_plain_wsgi_app_anonymizes_paths(make_telemetry, records):
    telemetry = make_telemetry(allowed_path_segments=["users", "orders"])
    client = Client(WSGIMiddleware(routeless_app, telemetry=telemetry))
    assert client.get("/users/42/orders").data == b"got "
    assert fetch(client, "/users/42/orders").status_code == 200
    assert client.post("/users/43/orders", data=b"hello").data == b"got hello"
    assert fetch(client, "/missing/secret-1").status_code == 404
    assert fetch(client, "/missing/secret-2").status_code == 404
    with pytest.raises(RuntimeError):
        client.get("/boom/x")
    salt = telemetry.anonymizer._salt
    found = records(telemetry)
    user42 = f"/users/{hash_value('42', salt)}/orders"
    user43 = f"/users/{hash_value('43', salt)}/orders"
    boom = f"/{hash_value('boom', salt)}/{hash_value('x', salt)}"
    assert {key: r["count"] for key, r in found.items()} == {
        ("GET", user42, 200): 2,
        ("POST", user43, 200): 1,
        ("GET", UNMATCHED_ROUTE, 404): 2,
        ("GET", boom, 500): 1,
    }
    assert found["POST", user43, 200]["request_bytes"] == 5
    assert found["POST", user43, 200]["response_bytes"] == len(b"got hello")


def test_plain_werkzeug_app_has_no_rule_and_is_anonymized(make_telemetry, records):
    """A Werkzeug ``Request`` (no Flask) sits in the environ too, without ``url_rule``."""
    from werkzeug.wrappers import Request
    from werkzeug.wrappers import Response as WerkzeugResponse

    @Request.application
    def werkzeug_app(request):
        assert request.environ["werkzeug.request"] is request
        return WerkzeugResponse(f"hello {request.path}")

    telemetry = make_telemetry(allowed_path_segments=["users"])
    client = Client(WSGIMiddleware(werkzeug_app, telemetry=telemetry))
    for _ in range(2):
        assert fetch(client, "/users/secret-7").data == b"hello /users/secret-7"
    salt = telemetry.anonymizer._salt
    route = f"/users/{hash_value('secret-7', salt)}"
    found = records(telemetry)
    assert list(found) == [("GET", route, 200)]
    assert found["GET", route, 200]["count"] == 2
    assert found["GET", route, 200]["response_bytes"] == 2 * len(b"hello /users/secret-7")


def test_plain_wsgi_app_with_query(make_telemetry, counts):
    telemetry = make_telemetry(
        allowed_path_segments=["search"], record_query=True, allowed_query_keys=["q"]
    )
    client = Client(WSGIMiddleware(routeless_app, telemetry=telemetry))
    fetch(client, "/search?q=cats&token=abc")
    salt = telemetry.anonymizer._salt
    assert counts(telemetry) == {("GET", f"/search?q={hash_value('cats', salt)}", 200): 1}


def test_response_via_write_callable(telemetry, records):
    def writer_app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"directly ")
        return [b"then returned"]

    client = Client(WSGIMiddleware(writer_app, telemetry=telemetry))
    response = client.get("/w")
    assert response.data == b"written directly then returned"
    (record,) = records(telemetry).values()
    assert record["status"] == 200
    assert record["response_bytes"] == len(response.data)


def call_wsgi(app, path="/", method="GET", **kwargs):
    """Call a WSGI app as a server does; returns (status line, iterable)."""
    environ = EnvironBuilder(path=path, method=method, **kwargs).get_environ()
    status = []

    def start_response(line, headers, exc_info=None):
        status.append(line)
        return lambda data: None

    iterable = app(environ, start_response)
    return status, iterable


def test_client_closing_early_is_499(telemetry, records):
    closed = []

    def streaming_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def chunks():
            try:
                for i in range(1000):
                    yield f"chunk {i};".encode()
            finally:
                closed.append(True)

        return chunks()

    app = WSGIMiddleware(streaming_app, telemetry=telemetry)
    status, iterable = call_wsgi(app, "/feed")
    iterator = iter(iterable)
    first, second = next(iterator), next(iterator)
    iterable.close()  # the server gave up: the client went away
    assert status == ["200 OK"]
    assert closed == [True]  # the app's own iterable was closed
    (record,) = records(telemetry).values()
    assert record["status"] == CLIENT_CLOSED_STATUS
    assert record["response_bytes"] == len(first) + len(second)
    assert record["count"] == 1


def streamed_routeless_app(environ, start_response):
    """``routeless_app``'s answer as an iterator: measured as it passes (a
    one-chunk list is recorded when the app returns it)."""
    return iter(routeless_app(environ, start_response))


def test_exhausted_then_closed_is_recorded_once(telemetry, counts):
    app = WSGIMiddleware(streamed_routeless_app, telemetry=telemetry)
    _, iterable = call_wsgi(app, "/missing/x")
    assert b"".join(iterable) == b"not here"
    iterable.close()
    iterable.close()
    assert counts(telemetry) == {("GET", UNMATCHED_ROUTE, 404): 1}


def test_closed_without_iterating_keeps_status(telemetry, counts):
    app = WSGIMiddleware(streamed_routeless_app, telemetry=telemetry)
    _, iterable = call_wsgi(app, "/missing/x")
    iterable.close()
    assert counts(telemetry) == {("GET", UNMATCHED_ROUTE, 404): 1}


def test_plain_wsgi_head_counts_no_body(make_telemetry, records):
    telemetry = make_telemetry(allowed_path_segments=["page"])
    app = WSGIMiddleware(routeless_app, telemetry=telemetry)
    fetch(Client(app), "/page", method="HEAD")
    (record,) = records(telemetry).values()
    assert record["method"] == "HEAD"
    assert record["response_bytes"] == 0  # a HEAD response carries no body on the wire


def test_plain_wsgi_excluded_and_opted_out(make_telemetry):
    telemetry = make_telemetry(exclude_paths=["/health"], exclude_prefixes=["/static/"])
    client = Client(WSGIMiddleware(routeless_app, telemetry=telemetry))
    fetch(client, "/health")
    fetch(client, "/static/app.js")
    assert telemetry.snapshot() == []
    opted_out = make_telemetry(opt_out=True)
    client = Client(WSGIMiddleware(routeless_app, telemetry=opted_out))
    assert client.get("/anything").data == b"got "
    assert opted_out.snapshot() == []


def test_wsgi_middleware_rejects_both_telemetry_and_options(telemetry):
    with pytest.raises(TypeError):
        WSGIMiddleware(routeless_app, telemetry=telemetry, app_name="x")


def test_the_queue_the_middleware_fills_stays_bounded(telemetry, counts):
    # The middleware queues into the recorder directly, and aggregates as it does.
    app = build_flask_app()
    init_app(app, telemetry)
    client = app.test_client()
    total = PENDING_LIMIT * 2 + 3
    for _ in range(total):
        fetch(client, "/items/7")
        assert len(telemetry.recorder.queue) < PENDING_LIMIT
    assert counts(telemetry) == {("GET", "/items/<int:item_id>", 200): total}


@pytest.mark.parametrize("length", ["²", "٣", "0" * 5000, "12a", "-5"])
def test_a_content_length_that_is_no_plain_number_counts_no_bytes(telemetry, records, length):
    # Werkzeug's development server passes the client's header on as it came.
    environ = EnvironBuilder(path="/items", method="POST").get_environ()
    environ["CONTENT_LENGTH"] = length

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    iterable = WSGIMiddleware(app, telemetry=telemetry)(environ, lambda *a: None)
    b"".join(iterable)
    getattr(iterable, "close", lambda: None)()  # as a server does
    (record,) = records(telemetry).values()
    assert (record["method"], record["status"], record["request_bytes"]) == ("POST", 200, 0)
    assert telemetry.internal_errors == 0


@pytest.mark.parametrize("length", ["²", "0" * 5000])
def test_flask_counts_no_bytes_for_a_content_length_that_is_no_plain_number(
    make_telemetry, records, length
):
    from reqtelemetry.flask import init_app

    telemetry = make_telemetry()
    app = Flask(__name__)
    app.add_url_rule("/items", "items", lambda: "ok", methods=["POST"])
    init_app(app, telemetry)
    environ = EnvironBuilder(path="/items", method="POST").get_environ()
    environ["CONTENT_LENGTH"] = length
    b"".join(app.wsgi_app(environ, lambda *a: None))
    assert records(telemetry)["POST", "/items", 200]["request_bytes"] == 0
    assert telemetry.internal_errors == 0


@pytest.mark.e2e
@pytest.mark.parametrize(
    "way", ["init_app", "init_app, MAX_CONTENT_LENGTH", "middleware around Flask", "plain WSGI app"]
)
def test_a_chunked_upload_counts_the_bytes_the_app_read(way, telemetry, records):
    """Without a declared ``Content-Length`` (a chunked upload) the body's size
    is what the app reads of it: it was 0. Served by Werkzeug's real server,
    which takes chunked bodies. A GET's too (a search API's query body): it
    was 0 whatever the app read."""
    from werkzeug.serving import make_server

    def plain_app(environ, start_response):
        length = environ.get("CONTENT_LENGTH")  # PEP 3333: read no further than declared
        body = environ["wsgi.input"].read(*([int(length)] if length else []))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(len(body)).encode()]

    flask_app = Flask(__name__)

    @flask_app.route("/uploads", methods=["GET", "POST"])
    def upload():
        from flask import request

        return str(len(request.get_data()))

    if way.startswith("init_app"):
        if "MAX_CONTENT_LENGTH" in way:  # Werkzeug then reads through readinto()
            flask_app.config["MAX_CONTENT_LENGTH"] = 1_000_000
        init_app(flask_app, telemetry)
        app = flask_app
    elif way == "middleware around Flask":
        app = WSGIMiddleware(flask_app, telemetry=telemetry)
    else:
        app = WSGIMiddleware(plain_app, telemetry=telemetry)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/uploads"
        chunks = [b"x" * 70_000] * 3
        with httpx.Client(trust_env=False) as client:
            chunked = client.post(url, content=iter(chunks))  # no length: chunked
            declared = client.post(url, content=b"y" * 5_000)
            searched = client.request("GET", url, content=iter([b"q" * 1_000]))
    finally:
        server.shutdown()
        thread.join()
    assert (chunked.text, declared.text, searched.text) == ("210000", "5000", "1000")
    by_method = {record["method"]: record for record in records(telemetry).values()}
    assert (by_method["POST"]["status"], by_method["POST"]["count"]) == (200, 2)
    assert by_method["POST"]["request_bytes"] == 215_000
    assert (by_method["GET"]["count"], by_method["GET"]["request_bytes"]) == (1, 1_000)


def test_a_wsgi_app_does_not_import_asyncio_for_reqtelemetry():
    """``ASGIMiddleware`` is imported when first asked for: asyncio and anyio
    cost a Flask or Django app some 11 ms at start, for nothing."""
    script = (
        "import sys, reqtelemetry, reqtelemetry.flask; "
        "from reqtelemetry import Telemetry, WSGIMiddleware; "
        "print(sorted(m for m in ('asyncio', 'anyio') if m in sys.modules)); "
        "from reqtelemetry import ASGIMiddleware; "
        "print(ASGIMiddleware.__name__, 'ASGIMiddleware' in dir(reqtelemetry))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == ["[]", "ASGIMiddleware True"]


def test_the_counted_input_takes_what_the_servers_stream_takes():
    """Keyword sizes, ``readinto`` (counted, with or without the server's own),
    and copies: the app must not tell the wrapper from the server's stream."""
    import copy
    import io

    from reqtelemetry.integrations.wsgi import CountedInput

    class ReadOnly:  # a server's stream with read() alone, as gunicorn's Body
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def read(self, size=None):
            return self._data.read(-1 if size is None else size)

    for stream in (io.BytesIO(b"x" * 5007), ReadOnly(b"x" * 5007)):
        counted = CountedInput(stream)
        assert counted.read(7) == b"x" * 7
        buffer = bytearray(1000)
        assert counted.readinto(buffer) == 1000 and bytes(buffer) == b"x" * 1000
        assert counted.bytes_read == 1007
        assert copy.copy(counted).bytes_read == 1007
    assert CountedInput(ReadOnly(b"abcd")).read(size=2) == b"ab"  # gunicorn's takes size=


# -- what a server tolerates, the middleware tolerates too --------------------------


def _raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` over a new connection; all the server answered before closing."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _under_waitress(app, request: bytes) -> bytes:
    """What a real waitress answers ``request`` with, ``app`` behind it."""
    from waitress.server import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=1)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        return _raw_exchange(server.effective_port, request)
    finally:
        server.close()
        thread.join(10)


def _without_date(answer: bytes) -> bytes:
    return b"\r\n".join(line for line in answer.split(b"\r\n") if not line.startswith(b"Date:"))


class _Chunks(list):
    """A list of its own (a framework's response body): still a list to a server."""


def _odd_status_app(environ, start_response):
    start_response("2xx Weird", [("Content-Type", "text/plain")])
    return [b"weird"]


def _list_subclass_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _Chunks([b"hello"])


class _LengthOfOne:
    """A body that is no list but has a length, which waitress sizes a body by."""

    def __iter__(self):
        return iter([b"one chunk, sized"])

    def __len__(self):
        return 1


def _length_of_one_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _LengthOfOne()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("app", "expected"),
    [
        (_odd_status_app, b"HTTP/1.0 2xx Weird"),
        (_list_subclass_app, b"Content-Length: 5"),
        (_length_of_one_app, b"Content-Length: 16"),
    ],
    ids=["status without a number", "list subclass", "no list, a length of one"],
)
def test_waitress_answers_alike_bare_and_measured(app, expected, make_telemetry):
    """waitress sends a status line that starts with no number as it is (the
    middleware's ``start_response`` raised on it: a 500), and declares the
    length of any one-chunk list, a subclass's too (wrapped, it went chunked)."""
    request = b"GET /x HTTP/1.0\r\nHost: example\r\n\r\n"
    telemetry = make_telemetry()
    bare = _without_date(_under_waitress(app, request))
    measured = _without_date(_under_waitress(WSGIMiddleware(app, telemetry=telemetry), request))
    assert expected in bare
    assert measured == bare
    assert telemetry.internal_errors == 0
    (record,) = telemetry.snapshot()
    assert record["count"] == 1
    assert record["response_bytes"] == len(bare.partition(b"\r\n\r\n")[2])


@pytest.mark.e2e
def test_a_chunked_upload_is_read_with_a_with_block_as_bare(make_telemetry):
    """Werkzeug's development server gives a chunked upload a stream that
    takes ``with``; the middleware counts what is read through its own
    stream, which did not take it: a 500."""
    from werkzeug.serving import make_server

    def app(environ, start_response):
        with environ["wsgi.input"] as stream:
            body = stream.read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(len(body)).encode()]

    telemetry = make_telemetry()
    server = make_server("127.0.0.1", 0, WSGIMiddleware(app, telemetry=telemetry), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        answer = _raw_exchange(
            server.server_port,
            b"POST /upload HTTP/1.1\r\nHost: example\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
    finally:
        server.shutdown()
        thread.join(10)
    assert answer.startswith(b"HTTP/1.1 200") and b"\r\n11\r\n" in answer
    (record,) = telemetry.snapshot()
    assert (record["method"], record["status"], record["request_bytes"]) == ("POST", 200, 11)


class _TwoChunks(list):
    """A list of one item that iterates as two chunks: not what indexing gives."""

    def __iter__(self):
        yield b"x" * 1000
        yield b"y" * 1000


def test_a_list_subclass_that_iterates_its_own_way_is_counted_as_it_passes(make_telemetry):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _TwoChunks([b"ignored"])

    telemetry = make_telemetry()
    response = Client(WSGIMiddleware(app, telemetry=telemetry)).get("/x")
    assert len(response.get_data()) == 2000
    response.close()
    (record,) = telemetry.snapshot()
    assert (record["status"], record["response_bytes"]) == (200, 2000)


class _StreamWithoutWith:
    """gunicorn's chunked body: it reads, and takes no ``with``."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, size: int = -1) -> bytes:
        data, self._data = self._data, b""
        return data


def test_a_counted_stream_takes_with_only_where_the_servers_does(make_telemetry):
    seen = {}

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        seen["with"] = hasattr(stream, "__enter__")
        seen["read"] = stream.read()
        start_response("204 No Content", [])
        return []

    telemetry = make_telemetry()
    environ = EnvironBuilder(path="/upload", method="POST").get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input"] = _StreamWithoutWith(b"hello")
    list(WSGIMiddleware(app, telemetry=telemetry)(environ, lambda status, headers, exc=None: None))
    assert seen == {"with": False, "read": b"hello"}
    (record,) = telemetry.snapshot()
    assert record["request_bytes"] == 5


def test_a_head_whose_body_the_server_stops_sending_is_not_a_client_disconnect(telemetry, counts):
    """uWSGI, wsgiref and Werkzeug's server iterate a HEAD's body and write it;
    the client has closed after the headers, so the server stops after a chunk
    or two and closes the response. The client had its whole answer: 200."""

    def app(environ, start_response):
        environ["reqtelemetry.route"] = "/export"
        start_response("200 OK", [("Content-Type", "text/csv")])
        return (b"row\n" for _ in range(100))

    environ = EnvironBuilder(path="/export", method="HEAD").get_environ()
    response = WSGIMiddleware(app, telemetry=telemetry)(environ, lambda *a: None)
    iterator = iter(response)
    next(iterator)
    next(iterator)  # then the write fails: the client is gone, as it should be
    response.close()
    assert counts(telemetry) == {("HEAD", "/export", 200): 1}


def test_an_exclusion_outside_ascii_excludes_under_wsgi_too(make_telemetry, counts):
    """PATH_INFO holds a path's UTF-8 bytes decoded as latin-1 (PEP 3333):
    ``/café/`` arrives as ``/cafÃ©/``. ASGI and Django compare the decoded
    path and left these out; the WSGI middleware measured them."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    telemetry = make_telemetry(exclude_prefixes=["/café/"], exclude_paths=["/статус"])
    client = Client(WSGIMiddleware(app, telemetry=telemetry))
    for path in ("/caf%C3%A9/secret-42", "/%D1%81%D1%82%D0%B0%D1%82%D1%83%D1%81", "/other"):
        assert client.get(path).get_data() == b"ok"
    assert sum(counts(telemetry).values()) == 1  # /other alone


def test_a_propagated_error_behind_a_dispatcher_is_keyed_by_its_rule(telemetry, counts):
    """WSGIMiddleware around a DispatcherMiddleware of Flask apps: an error
    that propagates (PROPAGATE_EXCEPTIONS) was keyed by its hashed path, one
    key per order id, where around the Flask app itself it is keyed by its rule."""
    api = Flask("api")
    api.config["PROPAGATE_EXCEPTIONS"] = True

    @api.route("/orders/<int:order_id>")
    def order(order_id):
        raise RuntimeError("the view failed")

    client = Client(WSGIMiddleware(DispatcherMiddleware(api, {}), telemetry=telemetry))
    for order_id in (1, 2, 3):
        with pytest.raises(RuntimeError):
            client.get(f"/orders/{order_id}")
    assert counts(telemetry) == {("GET", "/orders/<int:order_id>", 500): 3}


def test_an_exclusion_with_a_byte_that_is_not_utf8_starts_and_excludes(monkeypatch, counts):
    """``REQTELEMETRY_EXCLUDE_PREFIXES`` written in Latin-1 (``/caf\\xe9/``)
    reaches Python as ``/caf\\udce9/`` (PEP 383). d5825a4's WSGI form encoded
    it as strict UTF-8: ``Telemetry()`` raised and the app did not start. The
    byte is what ``PATH_INFO`` holds for ``/caf%E9/``: excluded there."""
    monkeypatch.setenv("REQTELEMETRY_EXCLUDE_PREFIXES", "/healthz/,/caf\udce9/")
    monkeypatch.setenv("REQTELEMETRY_ENABLED", "true")
    telemetry = Telemetry(send_in_tests=False, app_name="bytes")
    try:

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        middleware = WSGIMiddleware(app, telemetry=telemetry)
        # PATH_INFO as gunicorn and wsgiref give /caf%E9/secret-42 (PEP 3333: latin-1)
        for path_info in ("/caf\xe9/secret-42", "/other"):
            environ = EnvironBuilder(path="/").get_environ()
            environ["PATH_INFO"] = path_info
            assert b"".join(middleware(environ, lambda *a: None)) == b"ok"
        assert sum(counts(telemetry).values()) == 1  # /other alone
        assert Telemetry(exclude_paths=["/\ud800"], send_in_tests=False).exclude_paths
    finally:
        telemetry.close()
