"""Downloads through the server's own ``wsgi.file_wrapper`` keep the server's fast path.

A WSGI server sends a file with ``sendfile`` only when the app's response is
an instance of the wrapper it offered in ``environ["wsgi.file_wrapper"]``
(gunicorn and wsgiref both check with ``isinstance``). These tests serve the
apps from wsgiref's real server on loopback, with a handler that notes when it
takes that path, and read the download with httpx.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from wsgiref import simple_server

import httpx
import pytest
from flask import Flask, send_file

from reqtelemetry import WSGIMiddleware
from reqtelemetry.flask import init_app

CONTENT = b"%PDF" + bytes(range(256)) * 400


class _NotingHandler(simple_server.ServerHandler):
    """wsgiref's handler, noting each response it could send as a file."""

    sent_as_file: list[bool] = []

    def sendfile(self) -> bool:
        self.sent_as_file.append(True)
        return False  # wsgiref has no sendfile of its own: it then writes the file itself


class _QuietRequestHandler(simple_server.WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Server:
    """wsgiref's server on loopback, one request at a time, in a thread."""

    def __init__(self, app) -> None:
        self._server = simple_server.make_server(
            "127.0.0.1", 0, app, handler_class=_QuietRequestHandler
        )
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Returns once the request being handled is done, its response closed."""
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def serve(monkeypatch) -> Iterator:
    """``serve(app)`` → a :class:`_Server` running ``app``; stopped after the test."""
    monkeypatch.setattr(simple_server, "ServerHandler", _NotingHandler)
    _NotingHandler.sent_as_file = []
    servers: list[_Server] = []

    def start(app) -> _Server:
        servers.append(_Server(app))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def flask_app(report_path) -> Flask:
    app = Flask(__name__)

    @app.route("/reports/<int:report_id>")
    def report(report_id: int):
        return send_file(report_path, mimetype="application/pdf")

    return app


def plain_app(report_path):
    def app(environ, start_response):
        start_response(
            "200 OK",
            [("Content-Type", "application/pdf"), ("Content-Length", str(len(CONTENT)))],
        )
        return environ["wsgi.file_wrapper"](open(report_path, "rb"))

    return app


@pytest.mark.e2e
@pytest.mark.parametrize("way", ["init_app", "middleware around Flask", "plain WSGI app"])
def test_a_file_goes_out_through_the_servers_wrapper_and_is_recorded_once(
    way, serve, telemetry, records, tmp_path
):
    report_path = tmp_path / "report.pdf"
    report_path.write_bytes(CONTENT)
    if way == "init_app":
        app = flask_app(report_path)
        init_app(app, telemetry)
        route = "/reports/<int:report_id>"
    elif way == "middleware around Flask":
        app = WSGIMiddleware(flask_app(report_path), telemetry=telemetry)
        route = "/reports/<int:report_id>"
    else:
        app = WSGIMiddleware(plain_app(report_path), telemetry=telemetry)
        route = telemetry.anonymizer.path("/reports/7")
    server = serve(app)
    response = httpx.get(server.url + "/reports/7")
    server.stop()
    assert response.content == CONTENT
    assert _NotingHandler.sent_as_file == [True]
    (record,) = records(telemetry).values()
    assert (record["method"], record["route"], record["status"]) == ("GET", route, 200)
    assert record["count"] == 1
    assert record["response_bytes"] == len(CONTENT)


@pytest.mark.e2e
def test_a_file_without_a_declared_length_is_counted_as_it_passes(
    serve, telemetry, records, tmp_path
):
    report_path = tmp_path / "report.pdf"
    report_path.write_bytes(CONTENT)

    def app(environ, start_response):  # no Content-Length: nothing to record but the bytes
        start_response("200 OK", [("Content-Type", "application/pdf")])
        return environ["wsgi.file_wrapper"](open(report_path, "rb"))

    server = serve(WSGIMiddleware(app, telemetry=telemetry))
    response = httpx.get(server.url + "/reports/7")
    server.stop()
    assert response.content == CONTENT
    assert _NotingHandler.sent_as_file == []  # wrapped, so that its bytes are counted
    (record,) = records(telemetry).values()
    assert (record["status"], record["count"]) == (200, 1)
    assert record["response_bytes"] == len(CONTENT)
