"""A stalled CSV download must neither hold database connections without
bound nor keep the collector from stopping (found by an operations review)."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

import pytest

from collector_stack import DASHBOARD_TOKEN, running_collector, sqlite_database
from reqtelemetry import cli
from reqtelemetry.collector.storage import open_storage
from reqtelemetry.collector.storage.base import StoredReport
from reqtelemetry.payload import UNPACED, Envelope, build_reports
from reqtelemetry.recorder import Recorder

pytest.importorskip("uvicorn")


def _seed(db_url: str, versions: int, routes: int) -> None:
    """``versions`` x ``routes`` CSV rows: an export of several megabytes."""
    storage = open_storage(db_url)
    try:
        storage.migrate()
        for version in range(versions):
            recorder = Recorder(max_keys=routes + 10)
            for i in range(routes):
                recorder.record(
                    "GET", f"/a/fairly/long/route/name/{i}/{{item_id}}", 200, 0.01, 0, 64
                )
            envelope = Envelope(
                kind="periodic",
                sequence=0,
                deployment_id=str(uuid.uuid4()),
                instance_id=str(uuid.uuid4()),
                traits={"os": "linux", "arch": "x86_64", "app_version": f"1.{version}"},
                withheld=[],
                metrics={"counters": {}, "gauges": {}},
            )
            for report in build_reports(
                envelope, recorder.collect(), max_bytes=10_000_000, pacing=UNPACED
            ):
                storage.store(
                    StoredReport(
                        stamp=f"seed-{uuid.uuid4().hex}",
                        received_at=time.time() - 3600,
                        payload=json.loads(report.body),
                    )
                )
    finally:
        storage.close()


def _stalled_download(port: int) -> socket.socket:
    """``GET /export.csv`` from a client that reads its status line, then stops reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /export.csv HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {DASHBOARD_TOKEN}\r\n\r\n".encode()
    )
    return sock


def test_stalled_csv_downloads_hold_a_bounded_number_of_connections(tmp_path):
    """Each download reads on a connection of its own for as long as its
    client takes: on PostgreSQL, 45 clients that stopped reading took all of
    the server's connections, and no other replica could connect. A fifth
    download at once is now told to come back, and a slot is free again
    once a download ends."""
    database = sqlite_database(tmp_path)
    _seed(database.url, versions=60, routes=1000)  # about 6 MB of CSV
    with running_collector(database.url) as collector:
        port = int(collector.url.rsplit(":", 1)[1].rstrip("/"))
        stalled = []
        try:
            for _ in range(4):
                sock = _stalled_download(port)
                stalled.append(sock)
                assert sock.recv(12) == b"HTTP/1.1 200"
            fifth = _stalled_download(port)
            stalled.append(fifth)
            assert fifth.recv(12) == b"HTTP/1.1 503"
        finally:
            for sock in stalled:
                sock.close()
        for _ in range(100):  # the collector sees the closed connections
            response = collector.http.get("/export.csv", params={"days": 1})
            if response.status_code == 200:
                break
            time.sleep(0.1)
        assert response.status_code == 200
        assert response.text.count("\n") == 60 * 1000 + 1


def test_a_stop_waits_for_the_requests_under_way_for_a_bounded_time(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """Without ``timeout_graceful_shutdown``, uvicorn waits for every request
    under way before it stops: one CSV download whose client stopped reading
    kept a SIGTERMed collector running until it was killed."""
    import uvicorn

    from reqtelemetry.collector.app import BODY_TIMEOUT, COMMIT_BUDGET

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))
    for name in ("REQTELEMETRY_COLLECTOR_SECRET", "REQTELEMETRY_COLLECTOR_PRODUCTION"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["collector", "--port", "0", "--db", f"sqlite:///{tmp_path}/t.db"]) == 0
    (options,) = calls
    grace = options.get("timeout_graceful_shutdown")
    assert grace is not None
    # Long enough for a report under way to be answered as it would have been.
    assert BODY_TIMEOUT + COMMIT_BUDGET <= grace <= 120


def test_a_stop_that_cancels_a_stalled_download_still_folds_the_log(tmp_path):
    database = sqlite_database(tmp_path)
    _seed(database.url, versions=60, routes=1000)  # more than a socket's buffers
    wal = f"{database.path}-wal"
    stalled = []
    try:
        with running_collector(database.url) as collector:  # a stop waits 2 s, then cancels
            port = int(collector.url.rsplit(":", 1)[1])
            stalled.append(_stalled_download(port))
            assert stalled[0].recv(12) == b"HTTP/1.1 200"
            collector.app.state.refusals.add("bad_envelope")  # written at the stop
        assert not os.path.exists(wal), "the stop left the log beside the file"
    finally:
        for sock in stalled:
            sock.close()
