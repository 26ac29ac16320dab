"""What ``init_app`` measures from inside Flask, and where it hands over to the WSGI wrapper.

The common cases (rules, blueprints, 404/405, HEAD, streaming, propagated
errors) are in ``test_wsgi.py``; these are the cases that depend on how
``init_app`` hooks into Flask: which response it reads, when the clock
stops, which requests are Flask's, and what happens on every Flask it may meet.
"""

from __future__ import annotations

import io
import time

import flask.globals
import pytest
from flask import Flask, Response, send_file
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from reqtelemetry import WSGIMiddleware
from reqtelemetry.flask import init_app
from reqtelemetry.integrations.flask import INSTRUMENTED_FLAG, KEPT_KEY
from reqtelemetry.telemetry import CLIENT_CLOSED_STATUS, UNMATCHED_ROUTE


class Interrupted(BaseException):
    """Not an ``Exception``: Flask re-raises it without calling ``handle_exception``."""


def build_app() -> Flask:
    app = Flask(__name__)

    @app.route("/items/<int:item_id>")
    def item(item_id):
        return f"item {item_id}"

    @app.route("/text-parts")
    def text_parts():
        return Response(["naïve ", "café"])  # str parts: sent UTF-8 encoded

    @app.route("/tuple-parts")
    def tuple_parts():
        return Response((b"ab", b"cde"))

    @app.route("/empty/<int:code>")
    def empty(code):
        return Response(b"a body the server must not send", status=code)

    @app.route("/file")
    def file():
        return send_file(io.BytesIO(b"x" * 5000), mimetype="application/octet-stream")

    @app.route("/stream")
    def stream():
        def chunks():
            for i in range(1000):
                yield f"chunk {i};".encode()

        return Response(chunks())

    @app.route("/boom")
    def boom():
        raise RuntimeError("the view failed")

    @app.route("/interrupted")
    def interrupted():
        raise Interrupted()

    return app


def read(response):
    response.data  # noqa: B018  (a server reads the body to the end)
    return response


def test_every_buffered_body_shape_counts_the_bytes_sent(telemetry, records):
    app = build_app()
    init_app(app, telemetry)
    client = app.test_client()
    sent = {path: len(read(client.get(path)).data) for path in ("/text-parts", "/tuple-parts")}
    assert sent == {"/text-parts": len("naïve café".encode()), "/tuple-parts": 5}
    for code in (204, 304):
        assert read(client.get(f"/empty/{code}")).data == b""
    found = records(telemetry)
    assert found["GET", "/text-parts", 200]["response_bytes"] == sent["/text-parts"]
    assert found["GET", "/tuple-parts", 200]["response_bytes"] == 5
    assert found["GET", "/empty/<int:code>", 204]["response_bytes"] == 0
    assert found["GET", "/empty/<int:code>", 304]["response_bytes"] == 0


def test_an_apps_own_404_page_is_unmatched_with_its_bytes(telemetry, records):
    app = build_app()

    @app.errorhandler(404)
    def not_found(error):
        return "no such page", 404

    init_app(app, telemetry)
    assert read(app.test_client().get("/no/such/page")).data == b"no such page"
    record = records(telemetry)["GET", UNMATCHED_ROUTE, 404]
    assert (record["count"], record["response_bytes"]) == (1, len(b"no such page"))


def test_send_file_is_measured_as_it_streams(telemetry, records):
    app = build_app()
    init_app(app, telemetry)
    response = read(app.test_client().get("/file"))
    assert len(response.data) == 5000
    record = records(telemetry)["GET", "/file", 200]
    assert (record["count"], record["response_bytes"]) == (1, 5000)


def test_a_client_leaving_mid_stream_is_499(telemetry, records):
    app = build_app()
    init_app(app, telemetry)
    response = app.test_client().get("/stream")
    iterator = iter(response.response)
    first, second = next(iterator), next(iterator)
    assert telemetry.snapshot() == []  # a stream is recorded when it ends, not before
    response.close()  # the server gave up: the client went away
    (record,) = records(telemetry).values()
    assert record["route"] == "/stream"
    assert record["status"] == CLIENT_CLOSED_STATUS
    assert record["response_bytes"] == len(first) + len(second)


def test_latency_includes_the_teardown_handlers(telemetry, records):
    """The clock stops when Flask returns, after ``teardown_request``, not when the view does."""
    app = build_app()

    @app.teardown_request
    def slow_teardown(error):
        time.sleep(0.05)

    init_app(app, telemetry)
    assert read(app.test_client().get("/items/1")).status_code == 200
    record = records(telemetry)["GET", "/items/<int:item_id>", 200]
    assert record["latency"]["min"] >= 0.05


def test_the_status_an_error_handler_answers_is_recorded(telemetry, counts):
    app = build_app()

    @app.errorhandler(500)
    def unavailable(error):
        return "try again later", 503

    init_app(app, telemetry)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = read(app.test_client().get("/boom"))
    assert (response.status_code, response.data) == (503, b"try again later")
    assert counts(telemetry) == {("GET", "/boom", 503): 1}


def test_a_base_exception_from_a_view_is_500_with_its_rule(telemetry, counts):
    app = build_app()
    init_app(app, telemetry)
    with pytest.raises(Interrupted):
        app.test_client().get("/interrupted")
    assert counts(telemetry) == {("GET", "/interrupted", 500): 1}


def test_a_failure_before_routing_is_an_unmatched_500(telemetry, counts):
    """A session backend that fails breaks the request before Flask matched a rule."""
    from flask.sessions import SecureCookieSessionInterface

    class BrokenSessions(SecureCookieSessionInterface):
        def open_session(self, app, request):
            raise ConnectionError("the session store is down")

    app = build_app()
    app.session_interface = BrokenSessions()
    app.config["PROPAGATE_EXCEPTIONS"] = False
    init_app(app, telemetry)
    assert read(app.test_client().get("/items/1")).status_code == 500
    assert counts(telemetry) == {("GET", UNMATCHED_ROUTE, 500): 1}


def test_a_failure_before_the_request_context_is_a_500_and_no_internal_error(telemetry, records):
    """An ``appcontext_pushed`` receiver that raises: Flask fails before it has a request."""
    from flask import appcontext_pushed

    def refuse(sender, **extra):
        raise ConnectionError("the app context could not be set up")

    app = build_app()
    app.config["PROPAGATE_EXCEPTIONS"] = False
    init_app(app, telemetry)
    appcontext_pushed.connect(refuse, app)
    try:
        # Flask itself then fails on its way out (Flask 3.1: a LookupError in
        # ``RequestContext.pop``); whatever it raises reaches the caller.
        with pytest.raises((RuntimeError, LookupError)):
            app.test_client().get("/items/1")
    finally:
        appcontext_pushed.disconnect(refuse, app)
    (record,) = records(telemetry).values()
    assert (record["status"], record["count"]) == (500, 1)
    assert telemetry.internal_errors == 0


def test_requests_another_app_answers_are_not_flasks(telemetry, counts):
    """A dispatcher installed as ``wsgi_app`` first: only Flask's own requests are recorded."""

    def other_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"not flask"]

    app = build_app()
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/other": other_app})
    init_app(app, telemetry)
    client = app.test_client()
    assert read(client.get("/other/x")).data == b"not flask"
    assert read(client.get("/items/2")).data == b"item 2"
    assert counts(telemetry) == {("GET", "/items/<int:item_id>", 200): 1}


def test_nothing_is_left_in_the_environ(telemetry):
    app = build_app()
    init_app(app, telemetry)
    environs = []

    @app.after_request
    def remember(response):
        from flask import request

        environs.append(request.environ)
        return response

    read(app.test_client().get("/items/3"))
    assert environs and KEPT_KEY not in environs[0]


def test_instrumented_once_whichever_way_is_tried_second(telemetry, counts):
    app = build_app()
    init_app(app, telemetry)
    installed = app.wsgi_app
    assert getattr(app, INSTRUMENTED_FLAG) is True
    assert installed.__wrapped__ is not None  # the app's own wsgi_app, kept reachable
    with pytest.raises(RuntimeError, match="already instrumented"):
        init_app(app, telemetry)
    with pytest.raises(RuntimeError, match="already instrumented"):
        WSGIMiddleware(app, telemetry=telemetry)
    with pytest.raises(RuntimeError, match="already instrumented"):
        WSGIMiddleware(app.wsgi_app.__wrapped__, telemetry=telemetry)
    with pytest.raises(RuntimeError, match="already instrumented"):
        WSGIMiddleware(app.wsgi_app, telemetry=telemetry)  # the usual way to wrap
    assert app.wsgi_app is installed
    assert read(app.test_client().get("/items/3")).status_code == 200
    assert counts(telemetry) == {("GET", "/items/<int:item_id>", 200): 1}  # counted once


def test_init_app_after_a_middleware_around_the_app_object_is_refused(telemetry, counts):
    app = build_app()
    application = WSGIMiddleware(app, telemetry=telemetry)  # served as `application`
    with pytest.raises(RuntimeError, match="already instrumented"):
        init_app(app, telemetry)
    assert read(Client(application).get("/items/3")).status_code == 200
    assert counts(telemetry) == {("GET", "/items/<int:item_id>", 200): 1}  # counted once


@pytest.mark.parametrize("opted_out", [False, True], ids=["enabled", "opted out"])
@pytest.mark.parametrize("init_app_first", [True, False], ids=["init_app first", "then"])
def test_instrumenting_twice_is_refused_opted_out_as_well(
    make_telemetry, opted_out, init_app_first
):
    """Refused where it is written, not first in the deployment that has telemetry on."""
    telemetry = make_telemetry(opt_out=opted_out)
    app = build_app()
    if init_app_first:
        init_app(app, telemetry)
        with pytest.raises(RuntimeError, match="already instrumented"):
            WSGIMiddleware(app, telemetry=telemetry)
    else:
        WSGIMiddleware(app, telemetry=telemetry)
        with pytest.raises(RuntimeError, match="already instrumented"):
            init_app(app, telemetry)


class CopyingPrefixStrip:
    """Serves an app under ``/app`` on a copy of the environ, as many snippets do."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        environ = dict(environ)
        environ["SCRIPT_NAME"] = "/app"
        environ["PATH_INFO"] = environ["PATH_INFO"].removeprefix("/app")
        return self.app(environ, start_response)


def test_a_middleware_inside_that_copies_the_environ_loses_nothing(telemetry, records):
    app = build_app()
    app.wsgi_app = CopyingPrefixStrip(app.wsgi_app)
    init_app(app, telemetry)
    client = app.test_client()
    assert read(client.get("/app/items/1")).data == b"item 1"
    assert read(client.get("/app/stream")).status_code == 200
    found = records(telemetry)
    assert found["GET", "/items/<int:item_id>", 200]["count"] == 1
    assert found["GET", "/stream", 200]["count"] == 1


def test_a_middleware_around_a_dispatcher_to_a_measured_app_counts_once(telemetry, counts):
    """``WSGIMiddleware`` of the same telemetry around what ``init_app`` measures inside."""
    sub = build_app()
    init_app(sub, telemetry)

    def root(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"root"]

    client = Client(WSGIMiddleware(DispatcherMiddleware(root, {"/a": sub}), telemetry=telemetry))
    assert read(client.get("/a/items/5")).data == b"item 5"
    assert read(client.get("/a/boom")).status_code == 500
    assert read(client.get("/elsewhere")).data == b"root"
    found = counts(telemetry)
    assert found.pop(("GET", "/items/<int:item_id>", 200)) == 1
    assert found.pop(("GET", "/boom", 500)) == 1
    assert sum(found.values()) == 1  # the root app's request, under its anonymized path


def test_a_mount_excluded_around_a_measured_app_is_not_measured_inside(make_telemetry, counts):
    """Inside a dispatcher's mount, ``init_app`` compares the path without the
    mount's prefix (``/items/5`` of ``/a/items/5``), which the exclusion does
    not name: the middleware around left the request out, and Flask measured it."""
    telemetry = make_telemetry(exclude_prefixes=["/a/"])
    sub = build_app()
    init_app(sub, telemetry)
    other = build_app()
    init_app(other, telemetry)
    dispatcher = DispatcherMiddleware(sub, {"/a": sub, "/b": other})
    client = Client(WSGIMiddleware(dispatcher, telemetry=telemetry))
    assert read(client.get("/a/items/5")).data == b"item 5"
    assert read(client.get("/a/boom")).status_code == 500
    assert read(client.get("/b/items/6")).data == b"item 6"
    assert counts(telemetry) == {("GET", "/items/<int:item_id>", 200): 1}  # /b's alone


def test_nested_middlewares_count_once_for_one_telemetry_and_once_each_for_two(
    make_telemetry, counts
):
    app = build_app()
    outer, inner = make_telemetry(), make_telemetry()
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, telemetry=outer)
    client = Client(WSGIMiddleware(app, telemetry=outer))
    assert read(client.get("/items/6")).status_code == 200
    assert counts(outer) == {("GET", "/items/<int:item_id>", 200): 1}

    other = build_app()
    other.wsgi_app = WSGIMiddleware(other.wsgi_app, telemetry=inner)
    client = Client(WSGIMiddleware(other, telemetry=outer))
    assert read(client.get("/items/7")).status_code == 200
    assert counts(outer) == {("GET", "/items/<int:item_id>", 200): 2}
    assert counts(inner) == {("GET", "/items/<int:item_id>", 200): 1}


def test_nested_integrations_count_each_request_once_whatever_lies_between(make_telemetry, counts):
    """Each case counted twice, or not at all, in a first version of the rule."""
    telemetry = make_telemetry()

    def legacy(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"legacy"]

    # A copy of the environ between the middleware and init_app.
    app = build_app()
    init_app(app, telemetry)
    client = Client(WSGIMiddleware(CopyingPrefixStrip(app), telemetry=telemetry))
    assert read(client.get("/app/items/1")).data == b"item 1"
    assert counts(telemetry) == {("GET", "/items/<int:item_id>", 200): 1}

    # Another app behind a dispatcher inside init_app: left to the middleware,
    # and a middleware of the same telemetry around that app lets it pass.
    for inner in (legacy, WSGIMiddleware(legacy, telemetry=telemetry)):
        telemetry = make_telemetry()
        app = build_app()
        app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/legacy": inner})
        init_app(app, telemetry)
        client = Client(WSGIMiddleware(DispatcherMiddleware(app, {}), telemetry=telemetry))
        assert read(client.get("/legacy/x")).data == b"legacy"
        assert read(client.get("/items/2")).data == b"item 2"
        found = counts(telemetry)
        assert found.pop(("GET", "/items/<int:item_id>", 200)) == 1
        assert sum(found.values()) == 1  # the legacy request, under its anonymized path


def test_a_middleware_of_another_telemetry_keeps_what_it_measures(make_telemetry, counts):
    """A platform's telemetry around an app that has its own lost all its requests."""
    platform, own = make_telemetry(), make_telemetry()
    app = build_app()
    init_app(app, own)
    inner = WSGIMiddleware(DispatcherMiddleware(app, {}), telemetry=own)
    client = Client(WSGIMiddleware(inner, telemetry=platform))
    assert read(client.get("/items/8")).data == b"item 8"
    assert counts(own) == {("GET", "/items/<int:item_id>", 200): 1}
    assert counts(platform) == {("GET", "/items/<int:item_id>", 200): 1}


@pytest.mark.parametrize("way", ["init_app", "WSGIMiddleware"])
def test_a_file_the_front_server_sends_counts_its_declared_length(
    telemetry, records, way, tmp_path
):
    """``USE_X_SENDFILE``: the app sends no body; Apache or lighttpd sends the file."""
    path = tmp_path / "report.bin"
    path.write_bytes(b"z" * 7000)
    app = Flask(__name__)
    app.config["USE_X_SENDFILE"] = True

    @app.route("/download")
    def download():
        return send_file(path)

    if way == "init_app":
        init_app(app, telemetry)
        client = app.test_client()
    else:
        client = Client(WSGIMiddleware(app, telemetry=telemetry))
    whole = read(client.get("/download"))
    assert (whole.headers["X-Sendfile"], whole.headers["Content-Length"]) == (str(path), "7000")
    part = read(client.get("/download", headers={"Range": "bytes=0-99"}))
    assert (part.status_code, part.headers["Content-Length"]) == (206, "100")
    found = records(telemetry)
    assert found["GET", "/download", 200]["response_bytes"] == 7000
    assert found["GET", "/download", 206]["response_bytes"] == 100


def test_a_flask_app_in_a_wsgi_middleware_is_still_measured(telemetry, counts):
    """Without ``init_app``, the generic middleware measures a Flask app from outside."""
    app = build_app()
    client = Client(WSGIMiddleware(app, telemetry=telemetry))
    assert read(client.get("/items/4")).status_code == 200
    assert read(client.get("/stream")).status_code == 200
    assert counts(telemetry) == {
        ("GET", "/items/<int:item_id>", 200): 1,
        ("GET", "/stream", 200): 1,
    }


@pytest.mark.parametrize("missing", [["_cv_request"], ["_cv_request", "request_ctx"]])
def test_a_flask_without_the_request_context_variable(
    make_telemetry, records, monkeypatch, missing
):
    """Should a later Flask rename what ``init_app`` reads, the public proxies still serve."""
    for name in missing:
        monkeypatch.delattr(flask.globals, name)
    telemetry = make_telemetry()
    app = build_app()
    init_app(app, telemetry)
    client = app.test_client()
    read(client.get("/items/5"))
    read(client.get("/nowhere"))
    found = records(telemetry)
    assert set(found) == {("GET", "/items/<int:item_id>", 200), ("GET", UNMATCHED_ROUTE, 404)}
    assert found["GET", "/items/<int:item_id>", 200]["response_bytes"] == len(b"item 5")
    assert telemetry.internal_errors == 0


def _admin_app() -> Flask:
    admin = Flask("admin")

    @admin.route("/users/<int:user_id>")
    def user(user_id):
        return f"user {user_id}"

    return admin


def test_a_mount_init_app_excluded_is_not_measured_by_an_app_mounted_inside(make_telemetry, counts):
    """init_app around a dispatcher leaves out what the operator excluded,
    mount prefix and all, as WSGIMiddleware does: the app of the same
    telemetry mounted inside sees ``/users/7`` and measured it."""
    telemetry = make_telemetry(exclude_prefixes=["/hidden-admin/"])
    admin = _admin_app()
    init_app(admin, telemetry)
    site = Flask("site")

    @site.route("/")
    def home():
        return "home"

    site.wsgi_app = DispatcherMiddleware(site.wsgi_app, {"/hidden-admin": admin})
    init_app(site, telemetry)
    client = Client(site)
    assert client.get("/hidden-admin/users/7").get_data() == b"user 7"
    assert client.get("/").get_data() == b"home"
    assert counts(telemetry) == {("GET", "/", 200): 1}
