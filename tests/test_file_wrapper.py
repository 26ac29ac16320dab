"""Responses keep what the server reads off them: a download through the
server's own ``wsgi.file_wrapper`` its fast path, a one-chunk body its length.

A WSGI server sends a file with ``sendfile`` only when the app's response is
an instance of the wrapper it offered in ``environ["wsgi.file_wrapper"]``
(gunicorn and wsgiref both check with ``isinstance``). These tests serve the
apps from wsgiref's real server on loopback, with a handler that notes when it
takes that path, and read the download with httpx.
"""

from __future__ import annotations

import io
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from wsgiref import simple_server

import httpx
import pytest
from flask import Flask, send_file

from examples.servers import ServerProcess, child_environment, free_port, uwsgi_args
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


def download_once(serve, app, records):
    """``/reports/7`` from ``app`` (measured) under wsgiref: the body
    downloaded, and the one record, a 200 of one request."""
    server = serve(app)
    response = httpx.get(server.url + "/reports/7")
    server.stop()
    (record,) = records(app.telemetry).values()
    assert (record["status"], record["count"]) == (200, 1)
    return response.content, record


@pytest.mark.e2e
def test_a_file_without_a_declared_length_still_goes_out_as_a_file(
    serve, telemetry, records, tmp_path
):
    """Its size is what the server's own sizing finds: the file's, past its position."""
    report_path = tmp_path / "report.pdf"
    report_path.write_bytes(CONTENT)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/pdf")])
        report = open(report_path, "rb")  # noqa: SIM115 (the server closes it)
        report.seek(4)  # the server sends from here on
        return environ["wsgi.file_wrapper"](report)

    content, record = download_once(serve, WSGIMiddleware(app, telemetry=telemetry), records)
    assert content == CONTENT[4:]
    assert _NotingHandler.sent_as_file == [True]
    assert record["response_bytes"] == len(CONTENT) - 4


class _Reader:
    """A stream that can only be read (a pipe's, a generator's): no descriptor,
    no seeking, so no size before it is read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)


@pytest.mark.e2e
def test_a_wrapped_file_of_no_known_length_is_counted_as_it_passes(serve, telemetry, records):
    """No declared length, no file on disk, no seeking: its bytes are counted passing."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/pdf")])
        return environ["wsgi.file_wrapper"](_Reader(CONTENT))

    content, record = download_once(serve, WSGIMiddleware(app, telemetry=telemetry), records)
    assert content == CONTENT
    assert _NotingHandler.sent_as_file == []  # wrapped, so that its bytes are counted
    assert record["response_bytes"] == len(CONTENT)


def in_memory_file_app(environ, start_response):
    """A download built in memory, sent from its fifth byte, with no declared length."""
    start_response("200 OK", [("Content-Type", "application/pdf")])
    report = io.BytesIO(CONTENT)
    report.seek(4)  # the server sends from here on
    return environ["wsgi.file_wrapper"](report)


@pytest.mark.e2e
def test_a_file_in_memory_goes_out_as_a_file(serve, telemetry, records):
    """A file in memory has no descriptor but seeks: sized past its position,
    it goes back to the server as the server's own file."""
    content, record = download_once(
        serve, WSGIMiddleware(in_memory_file_app, telemetry=telemetry), records
    )
    assert content == CONTENT[4:]
    assert _NotingHandler.sent_as_file == [True]
    assert record["response_bytes"] == len(CONTENT) - 4


@pytest.mark.e2e
@pytest.mark.parametrize("measured", [False, True], ids=["bare app", "WSGIMiddleware"])
def test_waitress_declares_the_length_of_a_file_in_memory(measured, make_telemetry, records):
    """waitress sizes a file it is handed through its ``wsgi.file_wrapper`` by
    seeking, and declares its length. Wrapped by the middleware (which took
    it for a file of no known length), it went out chunked instead: the
    middleware changed what the app's clients got. Now both go out alike."""
    from waitress.server import create_server

    telemetry = make_telemetry()
    app = in_memory_file_app
    if measured:
        app = WSGIMiddleware(app, telemetry=telemetry)
    server = create_server(app, host="127.0.0.1", port=0, threads=1)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        response = httpx.get(f"http://127.0.0.1:{server.effective_port}/reports/7", timeout=10)
    finally:
        # Closed on the loop's own thread, between two of its polls: closed
        # from here, its socket could go while the loop's select() waited on
        # it (EBADF in the server thread, reported as a warning).
        server.trigger.pull_trigger(server.close)
        thread.join(10)
        server.task_dispatcher.shutdown()
    assert not thread.is_alive()
    assert response.content == CONTENT[4:]
    assert response.headers.get("content-length") == str(len(CONTENT) - 4)
    assert "transfer-encoding" not in response.headers
    if measured:
        # Recorded as waitress closes the response, once it has sent it.
        deadline = time.monotonic() + 5
        while not records(telemetry) and time.monotonic() < deadline:
            time.sleep(0.01)
        (record,) = records(telemetry).values()
        assert (record["status"], record["count"]) == (200, 1)
        assert record["response_bytes"] == len(CONTENT) - 4


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("body", "declared"),
    [([b"hello world"], "11"), ((b"hello world",), "11"), (iter([b"hello world"]), None)],
    ids=["list", "tuple", "iterator"],
)
def test_a_one_chunk_body_keeps_the_length_the_server_declares_for_it(
    body, declared, serve, telemetry, records
):
    """PEP 3333 lets a server declare the length of a body of one chunk, which
    it tells by ``len()`` (wsgiref, waitress, granian): wrapped without one, a
    list went out chunked, or close-delimited to an HTTP/1.0 client."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    server = serve(WSGIMiddleware(app, telemetry=telemetry))
    response = httpx.get(server.url + "/hello")
    server.stop()
    assert response.content == b"hello world"
    assert response.headers.get("content-length") == declared
    (record,) = records(telemetry).values()
    assert (record["status"], record["count"], record["response_bytes"]) == (200, 1, 11)


UWSGI_PROGRAM = Path(sys.executable).parent / "uwsgi"


@pytest.mark.e2e
@pytest.mark.skipif(
    not UWSGI_PROGRAM.is_file(),
    reason="uWSGI is not installed: `make test` builds it where a C compiler is found",
)
@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("uwsgi_file_apps:application", "/file"),
        ("uwsgi_file_apps:application", "/file-undeclared"),
        ("uwsgi_file_apps:flask_application", "/file"),
    ],
    ids=["middleware", "middleware, no length declared", "init_app, send_file"],
)
def test_uwsgi_sends_the_file_itself(target, path, tmp_path):
    """uWSGI's wrapper returns the file it was given, and uWSGI sends a
    response with ``sendfile`` only when it is that file: wrapped, a 300 MB
    ``send_file`` went through Python a line at a time (4.1 s and 612 MB of
    memory instead of 0.2 s and 26 MB). No byte may be read through Python."""
    content = bytes(range(256)) * 4096  # 1 MiB, in lines of 256 bytes
    (tmp_path / "download.bin").write_bytes(content)
    port = free_port()
    argv = [str(UWSGI_PROGRAM), *(arg.format(port=port) for arg in uwsgi_args(target, 1))]
    argv += ["--pythonpath", str(Path(__file__).parent)]
    env = child_environment({"REQTELEMETRY_TEST_FILE": str(tmp_path / "download.bin")})
    server = ServerProcess("uwsgi-files", argv, env, tmp_path / "uwsgi.log", port, signal.SIGINT)
    server.start()
    try:
        server.wait_ready("/reads")
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client:
            download = client.get(path)
            seen = client.get("/reads").json()
        assert download.status_code == 200 and download.content == content
        assert seen["reads"] == []
        (record,) = seen["records"]
        assert (record["status"], record["count"]) == (200, 1)
        assert record["response_bytes"] == len(content)
    finally:
        server.stop()
