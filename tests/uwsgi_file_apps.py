"""Downloads that uWSGI serves in ``tests/test_file_wrapper.py``.

uWSGI's ``wsgi.file_wrapper`` returns the very file it is given, and uWSGI
sends a response with ``sendfile`` only when it is that file: these apps note
every read of the file through Python, which ``/reads`` reports with what was
recorded. Loaded by uWSGI from the file named in ``REQTELEMETRY_TEST_FILE``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from flask import Flask, send_file

from reqtelemetry import Telemetry, WSGIMiddleware
from reqtelemetry.flask import init_app

PATH = os.environ.get("REQTELEMETRY_TEST_FILE", "")
READS: list[str] = []


class NotingFile:
    """A file on disk whose reads through Python are noted in :data:`READS`."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 (the server closes it)

    def fileno(self) -> int:
        return self._file.fileno()

    def read(self, size: int = -1) -> bytes:
        READS.append("read")
        return self._file.read(size)

    def readline(self, size: int = -1) -> bytes:
        READS.append("readline")
        return self._file.readline(size)

    def __iter__(self) -> NotingFile:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


def _reads(telemetry: Telemetry) -> list[bytes]:
    return [json.dumps({"reads": READS, "records": telemetry.snapshot()}).encode()]


def _plain(environ: dict[str, Any], start_response: Any) -> Any:
    if environ["PATH_INFO"] == "/reads":
        start_response("200 OK", [("Content-Type", "application/json")])
        return _reads(plain_telemetry)
    headers = [("Content-Type", "application/octet-stream")]
    if environ["PATH_INFO"] == "/file":
        headers.append(("Content-Length", str(os.path.getsize(PATH))))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](NotingFile(PATH))


plain_telemetry = Telemetry(app_name="uwsgi-files", exclude_paths=["/reads"])
#: ``/file`` declares its length, ``/file-undeclared`` does not.
application = WSGIMiddleware(_plain, telemetry=plain_telemetry)

flask_telemetry = Telemetry(app_name="uwsgi-files-flask", exclude_paths=["/reads"])
flask_application = Flask(__name__)


@flask_application.route("/file")
def _flask_file() -> Any:
    return send_file(NotingFile(PATH), mimetype="application/octet-stream")


@flask_application.route("/reads")
def _flask_reads() -> Any:
    return flask_application.response_class(_reads(flask_telemetry))


init_app(flask_application, flask_telemetry)
