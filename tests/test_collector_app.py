"""The collector, end to end: real uvicorn on 127.0.0.1, httpx, SQLite in ``tmp_path``.

What must hold:

* a session and a report are stored and read back through ``/api/summary``
  and ``/export.csv``;
* every kind of bad input gets the protocol's 4xx and reason (in the
  protocol's order when several checks fail), is counted, and stores nothing;
* the dashboard, its API and the CSV ask for credentials when configured,
  ingestion never does;
* random bodies never produce a 5xx (Hypothesis, in-process through
  ``httpx.ASGITransport`` for speed);
* a schema-valid report that a database could not hold is refused alike on
  SQLite and a real PostgreSQL (``tests/postgres.py``), never stored to break
  the dashboard later nor answered ``503`` to be retried for ever;
* a production collector without a secret does not start.

Stamps are real (:mod:`reqtelemetry.hashcash`) at 8 bits, so they cost a
millisecond.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import gzip
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import unicodedata
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from db_locks import another_writer, location
from receiver import ServerThread
from reqtelemetry import hashcash
from reqtelemetry.cli import main as cli_main
from reqtelemetry.collector import app as collector_app
from reqtelemetry.collector.app import SESSION_MAX_BYTES, Timing, commit_budget, create_app
from reqtelemetry.collector.export import COLUMNS
from reqtelemetry.collector.failures import FailureLog
from reqtelemetry.collector.refusals import RefusalTally
from reqtelemetry.collector.settings import CollectorSettings, SettingsError
from reqtelemetry.collector.storage import open_storage
from reqtelemetry.collector.storage.base import (
    MAX_ENDPOINT_VERSIONS,
    MAX_ENDPOINTS,
    MAX_PLATFORMS,
    MAX_UNUSED_ENDPOINTS,
    MAX_VERSIONS,
    DeadlineExceeded,
    Storage,
    StoredReport,
)
from reqtelemetry.collector.storage.sql import MAX_READERS
from reqtelemetry.collector.storage.sqlite import SQLiteStorage
from reqtelemetry.collector.summary import fill_activity, version_key, with_previous_version
from reqtelemetry.collector.tokens import TokenSigner
from reqtelemetry.collector.verify import (
    MAX_ENDPOINT_KEY_BYTES,
    Refusal,
    gunzip_capped,
    parse_json,
)
from reqtelemetry.transport import WAIT_HEADER, wait_header

BITS = 8
SECRET = b"collector-tests-secret-0123456789"
MIB = 1024 * 1024
ROUTE_ITEM = "/api/items/{item_id}"
ROUTE_CREATE = "/api/items"


def new_id() -> str:
    return str(uuid.uuid4())


# -- reports ------------------------------------------------------------------------------


def record(
    method: str,
    route: str,
    status: int,
    count: int,
    bins: list[list[int]],
    latency_sum: float,
    request_bytes: int = 0,
    response_bytes: int = 100,
) -> dict[str, Any]:
    return {
        "method": method,
        "route": route,
        "status": status,
        "count": count,
        "latency": {
            "p50": 0.004,
            "p95": 0.005,
            "p99": 0.005,
            "sum": latency_sum,
            "min": 0.001,
            "max": 0.02,
            "histogram": bins,
        },
        "request_bytes": request_bytes,
        "response_bytes": response_bytes,
    }


def default_records(shift: int = 0) -> list[dict[str, Any]]:
    """9 calls of GET /api/items/{item_id} (one 500), 3 of POST /api/items.

    ``shift`` moves every histogram bucket up: +10 buckets is about 1.5 times slower.
    """
    return [
        record(
            "GET",
            ROUTE_ITEM,
            200,
            8,
            [[-137 + shift, 2], [-136 + shift, 2], [-135 + shift, 2], [-109 + shift, 2]],
            0.0446,
            0,
            4096,
        ),
        record("GET", ROUTE_ITEM, 500, 1, [[-120 + shift, 1]], 0.0083, 0, 31),
        record("POST", ROUTE_CREATE, 201, 3, [[-100 + shift, 3]], 0.0589, 690, 288),
    ]


def make_payload(
    deployment_id: str,
    instance_id: str,
    *,
    app_version: str | None = "2.4.1",
    app_name: str | None = None,
    records: list[dict[str, Any]] | None = None,
    **top: Any,
) -> dict[str, Any]:
    now = time.time()
    payload: dict[str, Any] = {
        "schema_version": 1,
        "kind": "periodic",
        "sent_at": round(now, 3),
        "sequence": 0,
        "part": 0,
        "parts": 1,
        "deployment_id": deployment_id,
        "instance_id": instance_id,
        "traits": {
            "os": "linux",
            "arch": "x86_64",
            "cpu_count": 4,
            "python_implementation": "CPython",
            "python_version": "3.12.7",
            "framework": "fastapi",
            "server": "uvicorn",
            "app_name": app_name,
            "app_version": app_version,
            "container": True,
            "ci": False,
            "development": False,
        },
        "withheld": ["memory_rss_bytes"],
        "batch": {
            "period_start": round(now - 3600, 3),
            "period_end": round(now, 3),
            "dropped": 0,
            "histogram": {
                "kind": "log",
                "relative_accuracy": 0.02,
                "min_tracked": 1e-06,
                "max_tracked": 3600.0,
            },
            "records": default_records() if records is None else records,
        },
        "metrics": {"counters": {"jobs.completed": 2}, "gauges": {}},
        "internal_errors": 0,
    }
    payload.update(top)
    return payload


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def stamp_for(token: str, payload_text: str, bits: int = BITS, now: datetime | None = None) -> str:
    return hashcash.mint(hashcash.payload_resource(token, payload_text.encode()), bits, now=now)


def lying_stamp(token: str, payload_text: str, bits: int = BITS) -> str:
    """A stamp that claims ``bits`` bits but whose SHA-1 does not have them."""
    resource = hashcash.payload_resource(token, payload_text.encode())
    date = datetime.now(timezone.utc).strftime("%y%m%d%H%M%S")
    for counter in range(1, 10_000):
        stamp = f"1:{bits}:{date}:{resource}::cmFuZA:{counter:x}"
        digest = hashlib.sha1(stamp.encode()).digest()
        if hashcash.leading_zero_bits(digest) < bits:
            return stamp
    raise AssertionError("every counter had the work (impossible)")


def envelope(token: str, payload: dict[str, Any] | str, stamp: str | None = None) -> bytes:
    text = payload if isinstance(payload, str) else dumps(payload)
    return dumps(
        {"token": token, "stamp": stamp or stamp_for(token, text), "payload": text}
    ).encode()


GZIP = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
PLAIN = {"Content-Type": "application/json"}


# -- a collector on loopback ------------------------------------------------------------


@dataclass
class Collector:
    url: str
    http: httpx.Client
    storage: Storage
    settings: CollectorSettings
    app: Starlette | None = None

    def session(self, deployment_id: str, instance_id: str) -> str:
        response = self.http.post(
            "/v1/session", json={"deployment_id": deployment_id, "instance_id": instance_id}
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token

    def post_report(self, body: bytes, *, compress: bool = True, **kwargs: Any) -> httpx.Response:
        if compress:
            return self.http.post("/v1/report", content=gzip.compress(body), headers=GZIP, **kwargs)
        return self.http.post("/v1/report", content=body, headers=PLAIN, **kwargs)

    def send(self, payload: dict[str, Any]) -> httpx.Response:
        """A full, honest client: session, stamp, gzipped report."""
        token = self.session(payload["deployment_id"], payload["instance_id"])
        return self.post_report(envelope(token, payload))

    def reports_stored(self) -> int:
        return int(self.storage.totals(0)["reports"])

    def refusals(self) -> dict[str, int]:
        """The refusal counts the collector shows (``/api/summary``): those it
        stored and those it has not written yet."""
        token = self.settings.dashboard_token
        response = self.http.get("/api/summary", params={"token": token} if token else {})
        assert response.status_code == 200, response.text
        counts: dict[str, int] = response.json()["refusals"]
        return counts


def db_url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    opened = open_storage(db_url(tmp_path / "telemetry.db"))
    opened.migrate()
    yield opened
    opened.close()


def collector_settings(**overrides: Any) -> CollectorSettings:
    options: dict[str, Any] = {"secret": SECRET, "bits": BITS, "next_interval": 300.0}
    options.update(overrides)
    return CollectorSettings(**options)


@pytest.fixture
def make_collector(storage: Storage) -> Iterator[Callable[..., Collector]]:
    """``make_collector(**settings)``: the app served by uvicorn on 127.0.0.1."""
    started: list[tuple[ServerThread, httpx.Client]] = []

    def factory(**overrides: Any) -> Collector:
        settings = collector_settings(**overrides)
        app = create_app(settings, storage)
        server = ServerThread(app)
        server.start()
        http = httpx.Client(base_url=server.url, trust_env=False, timeout=10.0)
        started.append((server, http))
        return Collector(server.url, http, storage, settings, app)

    yield factory
    for server, http in started:
        http.close()
        server.stop()


@pytest.fixture
def collector(make_collector: Callable[..., Collector]) -> Collector:
    return make_collector()


# -- the happy path ---------------------------------------------------------------------


@pytest.mark.e2e
def test_session_grants_a_token_for_the_ids(collector: Collector) -> None:
    deployment_id, instance_id = new_id(), new_id()
    before = time.time()
    response = collector.http.post(
        "/v1/session",
        content=gzip.compress(
            dumps({"deployment_id": deployment_id, "instance_id": instance_id}).encode()
        ),
        headers=GZIP,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"token", "expires_at", "bits"}
    assert answer["bits"] == BITS
    assert before + 3600 - 5 <= answer["expires_at"] <= time.time() + 3600 + 5
    claims = TokenSigner(SECRET).verify(answer["token"])
    assert (claims.deployment_id, claims.instance_id) == (deployment_id, instance_id)


@pytest.mark.e2e
def test_reports_are_stored_and_read_back(collector: Collector) -> None:
    deployment_id = new_id()
    old, new = new_id(), new_id()
    # One deployment upgraded: an instance on 2.4.1, then one on 2.5.0 whose
    # latencies are 10 histogram buckets (about 1.5 times) slower.
    response = collector.send(make_payload(deployment_id, old, app_version="2.4.1"))
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": True, "next_interval": 300.0}
    response = collector.send(
        make_payload(deployment_id, new, app_version="2.5.0", records=default_records(10))
    )
    assert response.status_code == 200, response.text
    other_deployment = new_id()
    response = collector.send(make_payload(other_deployment, new_id(), app_version="2.4.1"))
    assert response.status_code == 200, response.text

    summary = collector.http.get("/api/summary", params={"days": 7}).json()
    assert summary["days"] == 7
    totals = summary["totals"]
    assert totals["deployments"] == 2
    assert totals["instances"] == 3
    assert totals["reports"] == 3
    assert totals["requests"] == 3 * 12
    assert totals["errors"] == 3
    assert totals["error_rate"] == pytest.approx(3 / 36)
    assert summary["refusals"] == {}
    # Daily points for the whole window, zeros included, the last one today.
    activity = summary["activity"]
    assert len(activity) == 8
    assert [p["instances"] for p in activity[:-1]] == [0] * 7
    assert activity[-1]["deployments"] == 2 and activity[-1]["instances"] == 3

    versions = {v["app_version"]: v for v in summary["versions"]}
    assert versions["2.4.1"]["deployments"] == 2
    assert versions["2.5.0"]["deployments"] == 1

    endpoints = {(e["method"], e["route"]): e for e in summary["endpoints"]}
    item = endpoints[("GET", ROUTE_ITEM)]
    assert item["calls"] == 27
    assert item["errors"] == 3
    assert item["deployments"] == 2
    assert 0.003 < item["p50"] < 0.03
    assert endpoints[("POST", ROUTE_CREATE)]["request_bytes"] == 3 * 690

    by_version = {
        (e["method"], e["route"], e["app_version"]): e for e in summary["endpoints_by_version"]
    }
    slower = by_version[("GET", ROUTE_ITEM, "2.5.0")]
    assert slower["previous_version"] == "2.4.1"
    assert slower["p95_change"] == pytest.approx(
        slower["p95"] / by_version[("GET", ROUTE_ITEM, "2.4.1")]["p95"] - 1
    )
    assert slower["p95_change"] > 0.3
    assert by_version[("GET", ROUTE_ITEM, "2.4.1")]["p95_change"] is None

    platforms = summary["platforms"]
    assert sum(p["instances"] for p in platforms if p["os"] == "linux") == 3
    # Lists this short are whole.
    assert (summary["versions_left_out"], summary["version_limit"]) == (0, MAX_VERSIONS)
    assert (summary["platforms_left_out"], summary["platform_limit"]) == (0, MAX_PLATFORMS)

    response = collector.http.get("/export.csv", params={"days": 7})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(rows[0]) == COLUMNS
    row = next(r for r in rows if r["route"] == ROUTE_ITEM and r["app_version"] == "2.4.1")
    assert row["method"] == "GET"
    assert int(row["calls"]) == 18
    assert int(row["errors"]) == 2
    assert float(row["error_rate"]) == pytest.approx(2 / 18, abs=1e-6)
    assert int(row["deployments"]) == 2
    expected = by_version[("GET", ROUTE_ITEM, "2.4.1")]
    for column, key in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        assert float(row[column]) == pytest.approx(expected[key] * 1000, abs=0.001)
    assert float(row["mean_ms"]) == pytest.approx(2 * (0.0446 + 0.0083) / 18 * 1000, abs=0.001)
    assert int(row["response_bytes"]) == 2 * (4096 + 31)


@pytest.mark.e2e
def test_unused_endpoints_show_with_zero_calls(collector: Collector) -> None:
    deployment_id, instance_id = new_id(), new_id()
    long_ago = make_payload(
        deployment_id,
        instance_id,
        records=[record("DELETE", "/api/items/{item_id}", 204, 2, [[-130, 2]], 0.01)],
    )
    collector.storage.store(
        StoredReport(stamp="old-stamp", received_at=time.time() - 40 * 86400, payload=long_ago)
    )
    assert collector.send(make_payload(deployment_id, new_id())).status_code == 200

    summary = collector.http.get("/api/summary?days=30").json()
    unused = [e for e in summary["endpoints"] if e["calls"] == 0]
    assert [(e["method"], e["route"]) for e in unused] == [("DELETE", "/api/items/{item_id}")]
    assert summary["endpoints"][-1]["calls"] == 0  # most calls first
    rows = list(csv.DictReader(io.StringIO(collector.http.get("/export.csv?days=30").text)))
    delete = next(r for r in rows if r["method"] == "DELETE")
    assert delete["calls"] == "0" and delete["p95_ms"] == ""


def store_endpoints(
    storage: Storage, calls: dict[str, int], received_at: float, app_version: str = "2.4.1"
) -> None:
    """One report, stored directly, in which each GET route of ``calls`` was
    called its number of times: what an app without route templates sends."""
    records = [
        record("GET", route, 200, count, [[-130, count]], 0.001 * count)
        for route, count in calls.items()
    ]
    payload = make_payload(new_id(), new_id(), app_version=app_version, records=records)
    storage.store(StoredReport(stamp=f"s-{new_id()}", received_at=received_at, payload=payload))


@pytest.mark.e2e
def test_the_summary_lists_the_busiest_endpoints_and_the_csv_every_one(
    collector: Collector,
) -> None:
    """More endpoints than the dashboard lists: ``/api/summary`` holds the
    busiest (and the latest unused) up to its documented limits and says how
    many it left out; ``/export.csv`` streams every one."""
    now = time.time()
    busy = {f"/h/{n:03d}": n + 1 for n in range(MAX_ENDPOINTS + 5)}
    store_endpoints(collector.storage, busy, now - 60)
    gone = {f"/gone/{n:03d}": 1 for n in range(MAX_UNUSED_ENDPOINTS + 2)}
    store_endpoints(collector.storage, gone, now - 40 * 86400)

    summary = collector.http.get("/api/summary", params={"days": 30}).json()
    listed = summary["endpoints"]
    assert [e["calls"] for e in listed] == [
        *range(MAX_ENDPOINTS + 5, 5, -1),
        *[0] * MAX_UNUSED_ENDPOINTS,
    ]
    assert listed[0]["route"] == f"/h/{MAX_ENDPOINTS + 4:03d}"
    assert summary["endpoints_left_out"] == {"used": 5, "unused": 2, "by_version": 0}
    assert summary["endpoint_limits"] == {
        "used": MAX_ENDPOINTS,
        "unused": MAX_UNUSED_ENDPOINTS,
        "by_version": MAX_ENDPOINT_VERSIONS,
    }
    assert len(summary["endpoints_by_version"]) == MAX_ENDPOINTS

    with collector.http.stream("GET", "/export.csv", params={"days": 30}) as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers  # sent as it is read
        rows = list(csv.DictReader(io.StringIO(response.read().decode())))
    assert len(rows) == len(busy) + len(gone)
    assert [int(row["calls"]) for row in rows[: len(busy)]] == sorted(busy.values(), reverse=True)
    assert {row["route"] for row in rows[len(busy) :]} == set(gone)


def store_traits(
    storage: Storage, app_version: str, python_version: str, received_at: float
) -> None:
    """One report of a new deployment, stored directly, naming this app version
    and Python version: what each report of a flood of made-up traits stores."""
    payload = make_payload(new_id(), new_id(), app_version=app_version, records=[])
    payload["traits"]["python_version"] = python_version
    storage.store(StoredReport(stamp=f"s-{new_id()}", received_at=received_at, payload=payload))


@pytest.mark.e2e
def test_the_summary_lists_the_most_used_versions_and_platforms_and_how_many_more(
    collector: Collector,
) -> None:
    """A version and a Python version are any text a client sends: a new one
    in each report must not grow ``/api/summary`` with every one. Each list
    holds the most used up to its documented limit, and says how many more
    there were."""
    now = time.time()
    flood = MAX_PLATFORMS + 3
    for n in range(flood):
        store_traits(collector.storage, f"0.{n}", f"3.{n}", now - flood + n)

    summary = collector.http.get("/api/summary", params={"days": 30}).json()
    assert len(summary["versions"]) == MAX_VERSIONS
    assert summary["versions_left_out"] == flood - MAX_VERSIONS
    assert summary["version_limit"] == MAX_VERSIONS
    # One deployment and instance each: the latest seen first.
    assert [v["app_version"] for v in summary["versions"][:2]] == [
        f"0.{flood - 1}",
        f"0.{flood - 2}",
    ]
    assert len(summary["platforms"]) == MAX_PLATFORMS
    assert summary["platforms_left_out"] == 3
    assert summary["platform_limit"] == MAX_PLATFORMS
    assert summary["totals"]["instances"] == flood  # the totals count them all


def reads_holding_the_wal(database: Path) -> int:
    """1 while some read of ``database`` holds a snapshot older than what was
    written since (a checkpoint cannot copy that into the file then), else 0."""
    with contextlib.closing(sqlite3.connect(database, timeout=0.1)) as connection:
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return int(busy)


@pytest.mark.e2e
def test_a_download_given_up_midway_ends_its_read(collector: Collector, tmp_path: Path) -> None:
    """``/export.csv`` is read from the database while it is sent (more than the
    sockets between collector and client hold), reports are stored meanwhile,
    and a client that gives up ends that read: nothing is left holding the
    database."""
    store_endpoints(collector.storage, {f"/r/{n:05d}": n + 1 for n in range(50_000)}, time.time())
    database = tmp_path / "telemetry.db"
    assert reads_holding_the_wal(database) == 0
    # A small receive buffer: the client's kernel must not take in the whole CSV.
    small = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)])
    with (
        httpx.Client(base_url=collector.url, transport=small, timeout=10.0) as client,
        client.stream("GET", "/export.csv", params={"days": 30}) as response,
    ):
        chunks = response.iter_bytes()  # kept: dropped, it would close the response
        assert next(chunks).startswith(b"method,route,")
        assert collector.send(make_payload(new_id(), new_id())).status_code == 200
        assert reads_holding_the_wal(database) == 1  # the rest is still being read
    for _ in range(100):  # the client is gone: the collector notices as it sends
        if reads_holding_the_wal(database) == 0:
            break
        time.sleep(0.05)
    assert reads_holding_the_wal(database) == 0


def store_export_example(storage: Storage, now: float) -> None:
    """A small database with every kind of CSV row: an endpoint on two versions
    (one slower), an unused one (40 days old), another app's, a route that a
    spreadsheet would take for a formula. Its CSV is :data:`EXPORT_EXAMPLE`."""
    deployment = "e0e0e0e0-0000-4000-8000-000000000001"
    long_ago = make_payload(
        deployment,
        "e1e1e1e1-0000-4000-8000-000000000001",
        records=[record("DELETE", ROUTE_ITEM, 204, 2, [[-130, 2]], 0.01)],
    )
    older = make_payload(deployment, "e1e1e1e1-0000-4000-8000-000000000002", app_version="2.4.1")
    newer = make_payload(
        deployment,
        "e1e1e1e1-0000-4000-8000-000000000003",
        app_version="2.5.0",
        records=default_records(10),
    )
    billing = make_payload(
        "e0e0e0e0-0000-4000-8000-000000000002",
        "e1e1e1e1-0000-4000-8000-000000000004",
        app_name="billing",
        app_version="1.0",
        records=[record("POST", '=HYPERLINK("x")', 500, 3, [[-100, 3]], 0.3, 10, 20)],
    )
    for stamp, payload, age in (
        ("example-1", long_ago, 40 * 86400),
        ("example-2", older, 3600),
        ("example-3", newer, 1800),
        ("example-4", billing, 600),
    ):
        storage.store(StoredReport(stamp=stamp, received_at=now - age, payload=payload))


#: The CSV of :func:`store_export_example`'s last 30 days, as the export wrote
#: it before it was streamed (every row read, then written at once).
EXPORT_EXAMPLE = "".join(
    f"{line}\r\n"
    for line in (
        "method,route,app_name,app_version,calls,errors,error_rate,p50_ms,p95_ms,p99_ms,mean_ms,request_bytes,response_bytes,deployments",
        "GET,/api/items/{item_id},,2.4.1,9,1,0.111111,4.423,12.516,12.516,5.878,0,4127,1",
        "GET,/api/items/{item_id},,2.5.0,9,1,0.111111,6.599,18.672,18.672,5.878,0,4127,1",
        "POST,/api/items,,2.4.1,3,0,0.0,17.94,17.94,17.94,19.633,690,288,1",
        "POST,/api/items,,2.5.0,3,0,0.0,26.764,26.764,26.764,19.633,690,288,1",
        'POST,"\'=HYPERLINK(""x"")",billing,1.0,3,3,1.0,17.94,17.94,17.94,100.0,10,20,1',
        "DELETE,/api/items/{item_id},,2.4.1,0,0,,,,,,0,0,0",
    )
)


@pytest.mark.e2e
def test_the_csv_export_is_streamed_and_what_it_was(collector: Collector, tmp_path: Path) -> None:
    """``/export.csv`` is sent as it is read (no length known in advance), and
    it and ``reqtelemetry export`` write, byte for byte, what they wrote when
    every row was read first."""
    store_export_example(collector.storage, time.time())
    with collector.http.stream("GET", "/export.csv", params={"days": 30}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert "content-length" not in response.headers
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.read().decode() == EXPORT_EXAMPLE
    out = tmp_path / "export.csv"
    database = db_url(tmp_path / "telemetry.db")
    assert cli_main(["export", "--csv", "--db", database, "--days", "30", "-o", str(out)]) == 0
    assert out.read_bytes() == EXPORT_EXAMPLE.encode()


@pytest.mark.e2e
def test_a_report_sent_without_gzip_is_stored_too(collector: Collector) -> None:
    payload = make_payload(new_id(), new_id())
    token = collector.session(payload["deployment_id"], payload["instance_id"])
    response = collector.post_report(envelope(token, payload), compress=False)
    assert response.status_code == 200, response.text
    assert collector.reports_stored() == 1


@pytest.mark.e2e
def test_health_and_pacing(make_collector: Callable[..., Collector]) -> None:
    collector = make_collector(next_interval=None)
    health = collector.http.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    response = collector.send(make_payload(new_id(), new_id()))
    assert response.json() == {"stored": True}


@contextlib.contextmanager
def collector_on_a_broken_database(tmp_path: Path) -> Iterator[Collector]:
    """A collector served on loopback whose every storage call fails."""
    broken = open_storage(db_url(tmp_path / "broken.db"))
    broken.migrate()
    server = ServerThread(create_app(collector_settings(), broken))
    server.start()
    broken.close()  # every storage call fails from here on
    try:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10.0) as http:
            yield Collector(server.url, http, broken, collector_settings())
    finally:
        server.stop()


@pytest.mark.e2e
def test_a_broken_database_is_a_503_not_a_500(tmp_path: Path) -> None:
    with collector_on_a_broken_database(tmp_path) as collector:
        response = collector.send(make_payload(new_id(), new_id()))
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert response.json()["error"] == "unavailable"
        # A refusal is still answered as such, though it cannot be counted.
        assert collector.http.post("/v1/report", content=b"junk").status_code == 400
        for path in ("/api/summary", "/export.csv"):
            assert collector.http.get(path).status_code == 503


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "reqtelemetry.collector" and r.levelno >= logging.WARNING
    ]


@pytest.mark.e2e
def test_a_database_outage_is_a_few_log_lines_not_one_per_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While the database was down, each refused request logged a 39-line
    traceback (could not count a refusal), and so did each failed store."""
    broken = open_storage(db_url(tmp_path / "broken.db"))
    broken.migrate()
    server = ServerThread(create_app(collector_settings(), broken))
    server.start()
    broken.close()  # every storage call fails from here on
    try:
        with (
            httpx.Client(base_url=server.url, trust_env=False, timeout=10.0) as http,
            caplog.at_level(logging.INFO, logger="reqtelemetry.collector"),
        ):
            collector = Collector(server.url, http, broken, collector_settings())
            for _ in range(50):
                assert http.post("/v1/report", content=b"not json").status_code == 400
            for _ in range(5):
                assert collector.send(make_payload(new_id(), new_id())).status_code == 503
            assert http.get("/api/summary").status_code == 503
            assert http.get("/export.csv").status_code == 503
    finally:
        server.stop()
    # The first failed write and the first failed read, each with its
    # traceback (writes and reads are told apart); the rest counted.
    writes, reads = _errors(caplog)
    assert writes.getMessage().startswith("could not store a report")
    assert reads.getMessage().startswith("could not read the summary")
    assert writes.exc_info is not None and reads.exc_info is not None


@pytest.mark.e2e
def test_storage_failures_are_said_once_then_counted_and_the_recovery_is_said(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(collector_settings(), storage, timing=Timing(commit_budget=0.2))
    server = ServerThread(app)
    server.start()
    try:
        with (
            httpx.Client(base_url=server.url, trust_env=False, timeout=10.0) as http,
            caplog.at_level(logging.INFO, logger="reqtelemetry.collector"),
        ):
            collector = Collector(server.url, http, storage, collector_settings())
            with another_writer(location(storage)):
                for _ in range(3):
                    assert collector.send(make_payload(new_id(), new_id())).status_code == 503
            assert collector.send(make_payload(new_id(), new_id())).status_code == 200
    finally:
        server.stop()
    (first,) = _errors(caplog)
    assert first.getMessage().startswith("could not store a report within its 0.2 s")
    assert first.exc_info is not None
    recovered = [r for r in caplog.records if r.levelno == logging.INFO]
    assert [r.getMessage().split(" in ")[0] for r in recovered] == [
        "storage works again, after 3 failures"
    ]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_logs_its_first_failure_then_a_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    failures = FailureLog(every=60.0, clock=clock)
    down = ConnectionError("connection refused")
    with caplog.at_level(logging.INFO, logger="reqtelemetry.collector"):
        failures.worked()  # nothing was failing: nothing to say
        for _ in range(10):
            failures.failed("store a report", down)
            clock.now += 1
        assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None
        clock.now += 60
        failures.failed("write the refusal counts", down)
        failures.failed("store a report", down)  # within the next interval: counted only
        clock.now += 5
        failures.worked()
        failures.worked()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        (
            "ERROR",
            "could not store a report; further storage failures are counted, one line per 60 s",
        ),
        (
            "ERROR",
            "storage still failing: 10 more failures in 70 s "
            "(the last: could not write the refusal counts: connection refused)",
        ),
        ("INFO", "storage works again, after 12 failures in 75 s"),
    ]


def test_intermittent_failures_are_announced_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that misses its deadline now and then, each time followed by
    one that works, is an outage that ends at once: announcing each with a
    traceback and its end with a line would be a log line pair per miss."""
    clock = FakeClock()
    failures = FailureLog(every=60.0, clock=clock)
    late = TimeoutError("deadline passed")
    with caplog.at_level(logging.INFO, logger="reqtelemetry.collector"):
        for _ in range(20):  # a miss every 2 s, each followed by a success
            failures.failed("store a report", late)
            failures.worked()
            clock.now += 2
        clock.now += 60
        failures.failed("store a report", late)  # a minute later: told again
    messages = [(r.levelname, r.getMessage().split(";")[0]) for r in caplog.records]
    assert messages == [
        ("ERROR", "could not store a report"),
        ("INFO", "storage works again, after 1 failures in 0 s"),
        ("ERROR", "could not store a report"),
    ]
    # The 19 misses between the two announcements are not lost: the second says them.
    assert "(19 more since the last line" in caplog.records[-1].getMessage()


# -- every bad input: the right 4xx, counted, nothing stored ---------------------------------


@dataclass
class Case:
    """A request built against a live session (``token`` for ``ids``)."""

    token: str
    deployment_id: str
    instance_id: str

    def payload(self, **top: Any) -> dict[str, Any]:
        return make_payload(self.deployment_id, self.instance_id, **top)

    def text(self) -> str:
        return dumps(self.payload())


def _gzip_bomb() -> bytes:
    """64 MiB of zeros in about 64 KiB of gzip."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MIB)
    return b"".join([*(compressor.compress(block) for _ in range(64)), compressor.flush()])


def _tampered_token(case: Case) -> str:
    """The token's claims changed (other ids), its signature kept."""
    claims_part, signature = case.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(claims_part + "=" * (-len(claims_part) % 4)))
    claims["d"] = new_id()
    forged = base64.urlsafe_b64encode(dumps(claims).encode()).rstrip(b"=").decode()
    return f"{forged}.{signature}"


def _token_for(case: Case, secret: bytes = SECRET, issued: float | None = None) -> str:
    """Another token for the case's ids, from ``secret``, issued at ``issued``."""
    return TokenSigner(secret).issue(case.deployment_id, case.instance_id, now=issued)[0]


def _with_token(token: str, case: Case) -> bytes:
    return envelope(token, case.text())


def _body_with_stamp(case: Case, stamp: Callable[[str, str], str]) -> bytes:
    text = case.text()
    return envelope(case.token, text, stamp(case.token, text))


def _minutes(minutes: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(minutes=minutes)


BuildBody = Callable[[Case], bytes]

#: (id, body builder, gzip the body?, status, reason)
BAD_REPORTS: list[tuple[str, BuildBody, bool, int, str]] = [
    # 1: size
    ("oversized", lambda c: b" " * (MIB + 1), False, 413, "too_large"),
    ("oversized-after-gunzip", lambda c: b" " * (MIB + 1), True, 413, "too_large"),
    # 2: JSON
    ("malformed-json", lambda c: b'{"token": "abc", ', True, 400, "malformed_json"),
    ("not-utf8", lambda c: b'{"token": "\xff\xfe"}', True, 400, "malformed_json"),
    ("nan", lambda c: b'{"token": NaN, "stamp": "", "payload": ""}', True, 400, "malformed_json"),
    ("huge-number", lambda c: b'{"token": 1e999}', True, 400, "malformed_json"),
    # Plain: gzipped, it inflates over the ratio limit and is too_large. Not an
    # object is the first fault, and ends the reading (the rest costs nothing).
    ("deep-nesting", lambda c: b"[" * 100_000 + b"]" * 100_000, False, 400, "bad_envelope"),
    (
        "deep-nesting-in-a-field",
        lambda c: (
            b'{"token": ' + b"[" * 100_000 + b"]" * 100_000 + b', "stamp": "", "payload": ""}'
        ),
        False,
        400,
        "bad_envelope",
    ),
    (
        "integer-past-64-bits",
        lambda c: b'{"token": 9223372036854775808}',
        True,
        400,
        "malformed_json",
    ),
    (
        "control-character",
        lambda c: b'{"token": "a\tb", "stamp": "", "payload": ""}',
        True,
        400,
        "malformed_json",
    ),
    ("trailing-data", lambda c: _with_token(c.token, c) + b" {}", True, 400, "malformed_json"),
    (
        "duplicate-keys",
        lambda c: b'{"token": "a", "token": "b", "stamp": "", "payload": ""}',
        True,
        400,
        "malformed_json",
    ),
    ("empty-body", lambda c: b"", False, 400, "malformed_json"),
    # 3: envelope
    ("array-envelope", lambda c: b'["token", "stamp", "payload"]', True, 400, "bad_envelope"),
    (
        "unknown-field",
        lambda c: dumps({**json.loads(_with_token(c.token, c)), "extra": 1}).encode(),
        True,
        400,
        "bad_envelope",
    ),
    (
        "missing-field",
        lambda c: dumps({"token": c.token, "payload": c.text()}).encode(),
        True,
        400,
        "bad_envelope",
    ),
    (
        "payload-not-a-string",
        lambda c: dumps({"token": c.token, "stamp": "x", "payload": c.payload()}).encode(),
        True,
        400,
        "bad_envelope",
    ),
    (
        "token-not-a-string",
        lambda c: dumps({"token": 42, "stamp": "x", "payload": c.text()}).encode(),
        True,
        400,
        "bad_envelope",
    ),
    (
        "lone-surrogate",
        lambda c: b'{"token": "\\ud800", "stamp": "x", "payload": "{}"}',
        True,
        400,
        "malformed_json",
    ),
    # 4, 5: token
    (
        "forged-token",
        lambda c: _with_token(_token_for(c, secret=b"another-secret-0123456789abcdef"), c),
        True,
        401,
        "bad_token",
    ),
    ("tampered-token", lambda c: _with_token(_tampered_token(c), c), True, 401, "bad_token"),
    ("garbage-token", lambda c: _with_token("not-a-token", c), True, 401, "bad_token"),
    (
        "expired-token",
        lambda c: _with_token(_token_for(c, issued=time.time() - 7200), c),
        True,
        401,
        "token_expired",
    ),
    # 6 to 9: stamp
    (
        "garbage-stamp",
        lambda c: _body_with_stamp(c, lambda t, p: "garbage"),
        True,
        400,
        "bad_stamp",
    ),
    (
        "stale-stamp",
        lambda c: _body_with_stamp(c, lambda t, p: stamp_for(t, p, now=_minutes(-20))),
        True,
        400,
        "stale_stamp",
    ),
    (
        "stamp-from-the-future",
        lambda c: _body_with_stamp(c, lambda t, p: stamp_for(t, p, now=_minutes(10))),
        True,
        400,
        "stale_stamp",
    ),
    (
        "too-few-bits-claimed",
        lambda c: _body_with_stamp(c, lambda t, p: stamp_for(t, p, bits=2)),
        True,
        400,
        "insufficient_work",
    ),
    (
        "too-few-bits-done",
        lambda c: _body_with_stamp(c, lying_stamp),
        True,
        400,
        "insufficient_work",
    ),
    (
        "stamp-for-another-payload",
        lambda c: _body_with_stamp(c, lambda t, p: stamp_for(t, p.replace("2.4.1", "9.9.9"))),
        True,
        400,
        "stamp_mismatch",
    ),
    (
        "stamp-for-another-token",
        lambda c: _body_with_stamp(
            c,
            lambda t, p: stamp_for(_token_for(c), p),
        ),
        True,
        400,
        "stamp_mismatch",
    ),
    # 10: the report
    ("payload-not-json", lambda c: envelope(c.token, "{nope"), True, 422, "invalid_payload"),
    ("payload-not-an-object", lambda c: envelope(c.token, "[1, 2]"), True, 422, "invalid_payload"),
    (
        "payload-nested-too-deeply",
        lambda c: envelope(c.token, "[" * 100_000 + "]" * 100_000),
        False,
        422,
        "invalid_payload",
    ),
    (
        "payload-duplicate-keys",
        lambda c: envelope(c.token, '{"a": 1, "a": 2}'),
        True,
        422,
        "invalid_payload",
    ),
    (
        "payload-unknown-field",
        lambda c: envelope(c.token, c.payload(hostname="web-1")),
        True,
        422,
        "invalid_payload",
    ),
    (
        "payload-wrong-type",
        lambda c: envelope(c.token, c.payload(records=[{**default_records()[0], "count": "8"}])),
        True,
        422,
        "invalid_payload",
    ),
    (
        "payload-unknown-schema-version",
        lambda c: envelope(c.token, c.payload(schema_version=2)),
        True,
        422,
        "invalid_payload",
    ),
    (
        "payload-part-beyond-parts",
        lambda c: envelope(c.token, c.payload(part=1, parts=1)),
        True,
        422,
        "invalid_payload",
    ),
    (
        "payload-integer-beyond-64-bits",
        lambda c: envelope(c.token, c.text().replace('"sequence":0', '"sequence":' + "9" * 25)),
        True,
        422,
        "invalid_payload",
    ),
    (
        "payload-lone-surrogate",
        lambda c: envelope(c.token, c.text().replace(ROUTE_CREATE, "/api/\\udc80")),
        True,
        422,
        "invalid_payload",
    ),
    (
        "deployment-id-not-the-tokens",
        lambda c: envelope(c.token, make_payload(new_id(), c.instance_id)),
        True,
        422,
        "invalid_payload",
    ),
    (
        "instance-id-not-the-tokens",
        lambda c: envelope(c.token, make_payload(c.deployment_id, new_id())),
        True,
        422,
        "invalid_payload",
    ),
    # Several failures: the cheapest check in the protocol's order answers.
    (
        "bad-token-and-bad-stamp",
        lambda c: envelope("not-a-token", c.text(), "garbage"),
        True,
        401,
        "bad_token",
    ),
    (
        "stale-and-mismatched-stamp",
        lambda c: _body_with_stamp(c, lambda t, p: stamp_for(t, "other", now=_minutes(-20))),
        True,
        400,
        "stale_stamp",
    ),
    (
        "insufficient-and-mismatched",
        lambda c: _body_with_stamp(c, lambda t, p: stamp_for(t, "other", bits=1)),
        True,
        400,
        "insufficient_work",
    ),
    (
        "expired-token-and-invalid-payload",
        lambda c: envelope(
            _token_for(c, issued=time.time() - 7200),
            "{nope",
        ),
        True,
        401,
        "token_expired",
    ),
]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("build", "compress", "status", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REPORTS],
)
def test_bad_reports_are_refused_counted_and_not_stored(
    collector: Collector, build: BuildBody, compress: bool, status: int, reason: str
) -> None:
    deployment_id, instance_id = new_id(), new_id()
    case = Case(collector.session(deployment_id, instance_id), deployment_id, instance_id)
    response = collector.post_report(build(case), compress=compress)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["error"] == reason
    assert isinstance(answer["detail"], str) and answer["detail"]
    assert collector.reports_stored() == 0
    assert collector.refusals() == {reason: 1}


@pytest.mark.e2e
def test_a_gzip_bomb_is_stopped_at_the_cap(collector: Collector) -> None:
    bomb = _gzip_bomb()
    assert len(bomb) < MIB
    response = collector.http.post("/v1/report", content=bomb, headers=GZIP)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert collector.refusals() == {"too_large": 1}
    assert collector.reports_stored() == 0
    # The same cap, without a server: the inflater never produces more than cap + 1.
    with pytest.raises(Refusal) as raised:
        gunzip_capped(bomb, MIB)
    assert raised.value.reason == "too_large"


@pytest.mark.e2e
def test_a_body_of_many_gzip_members_is_refused(collector: Collector) -> None:
    member = gzip.compress(b"", mtime=0)
    body = member * ((MIB - 100) // len(member))
    response = collector.http.post("/v1/report", content=body, headers=GZIP)
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"
    assert "members" in response.json()["detail"]
    assert collector.refusals() == {"malformed_json": 1}


@pytest.mark.e2e
def test_verifications_run_a_few_at_a_time_and_a_full_line_is_told_to_come_back(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Forty bodies verified at once held forty inflated bodies and their
    # parses (2.1 GB in the review); a few at a time bound that memory.
    release = threading.Event()
    inside: list[int] = []
    lock = threading.Lock()

    def slow_verify(*args: Any, **kwargs: Any) -> Any:
        with lock:
            inside.append(inside[-1] + 1 if inside else 1)
        release.wait(10)
        with lock:
            inside.append(inside[-1] - 1)
        raise Refusal("bad_token", "the token is not one this collector issued")

    monkeypatch.setattr(collector_app, "verify_report", slow_verify)
    monkeypatch.setattr(collector_app, "VERIFY_CONCURRENCY", 2)
    monkeypatch.setattr(collector_app, "VERIFY_QUEUE", 2)
    app = create_app(collector_settings(), storage)
    server = ServerThread(app)
    server.start()
    answers: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10.0) as http:
            answers.append(http.post("/v1/report", content=b"{}", headers=PLAIN))

    def until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.01)

    threads = [threading.Thread(target=post) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        until(lambda: len(inside) >= 2 and app.state.gate.waiting() == 2)
        for _ in range(3):  # the line is full: answered at once, not verified
            post()
        assert [a.status_code for a in answers] == [503] * 3
        assert all(a.json()["error"] == "busy" for a in answers)
        retry_after = str(collector_app.BUSY_RETRY_AFTER)
        assert all(a.headers["Retry-After"] == retry_after for a in answers)
        # A body declared too large is told so even then: busy, its client
        # sent it again as it was, where a 413 has it split.
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10.0) as http:
            too_large = http.post("/v1/report", content=b" " * (MIB + 1), headers=PLAIN)
        assert too_large.status_code == 413, too_large.text
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
        server.stop()
    assert sorted(a.status_code for a in answers) == [401] * 4 + [503] * 3
    assert max(inside) == 2
    assert app.state.refusals.write() == 5
    assert storage.refusals() == {"bad_token": 4, "too_large": 1}


def _stalled_body(port: int, path: str, declared: int, sent: int) -> socket.socket:
    """A connection that declares ``declared`` body bytes, sends ``sent`` of
    them and stops: a sender holding a body open."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n".encode()
        + b" " * sent
    )
    return connection


def _answer_status(connection: socket.socket) -> int:
    """The status code of the answer waiting on ``connection``."""
    head = b""
    while b"\r\n" not in head:
        chunk = connection.recv(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1])


@pytest.mark.e2e
def test_bodies_still_arriving_are_bounded_by_their_bytes_and_honest_reports_go_on(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Senders that each declared a megabyte and stopped a byte short held it,
    # and their connections, without end: a hundred of them took a collector
    # from 44 to 163 MiB. The bodies being read now hold at most what the
    # verification line's would (here 4 x 1 MiB), and one that has not arrived
    # in time is answered 408 and let go. Bounded by places instead, 68
    # connections of one byte each shut every honest report out.
    monkeypatch.setattr(collector_app, "VERIFY_CONCURRENCY", 2)
    monkeypatch.setattr(collector_app, "VERIFY_QUEUE", 2)
    app = create_app(collector_settings(), storage, timing=Timing(body_timeout=2.0))
    server = ServerThread(app)
    server.start()
    stalled: list[socket.socket] = []

    def holding_at_least(count: int) -> None:
        deadline = time.monotonic() + 10
        while app.state.reading.held() < count:
            assert time.monotonic() < deadline, app.state.reading.held()
            time.sleep(0.01)

    try:
        # Many senders of one byte each hold next to nothing: reports go on.
        stalled = [_stalled_body(server.port, "/v1/report", MIB, 1) for _ in range(20)]
        holding_at_least(20)
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10.0) as http:
            honest = http.post("/v1/report", content=b"{}", headers=PLAIN)
            assert honest.status_code == 400, honest.text  # read and verified
            assert honest.json()["error"] == "bad_envelope"
            # Four that stopped just short of a megabyte hold the budget.
            stalled += [_stalled_body(server.port, "/v1/report", MIB, MIB - 64) for _ in range(4)]
            holding_at_least(4 * (MIB - 64))
            began = time.monotonic()
            more = _stalled_body(server.port, "/v1/report", MIB, MIB // 2)
            with more:
                assert _answer_status(more) == 503  # told at once, its body unread
            assert time.monotonic() - began < 1.5
            assert app.state.reading.held() <= 4 * MIB
            # Their time up, all are answered 408 and let go.
            assert {_answer_status(connection) for connection in stalled} == {408}
            assert app.state.reading.held() == 0
            after = http.post("/v1/report", content=b"{}", headers=PLAIN)
            assert after.status_code == 400, after.text
    finally:
        for connection in stalled:
            connection.close()
        server.stop()
    assert app.state.refusals.write() == 2  # the two honest ones; a late body is no refusal
    assert storage.refusals() == {"bad_envelope": 2}


@pytest.mark.e2e
def test_a_session_body_that_does_not_arrive_is_answered_408(storage: Storage) -> None:
    app = create_app(collector_settings(), storage, timing=Timing(body_timeout=0.5))
    server = ServerThread(app)
    server.start()
    try:
        with _stalled_body(server.port, "/v1/session", 100, 10) as connection:
            began = time.monotonic()
            assert _answer_status(connection) == 408
            assert 0.4 < time.monotonic() - began < 5
    finally:
        server.stop()


@pytest.mark.e2e
def test_an_oversized_stream_without_length_is_cut_off(collector: Collector) -> None:
    sent = []

    def chunks() -> Iterator[bytes]:
        for _ in range(64):  # up to 4 MiB, chunked: no Content-Length to refuse early
            sent.append(1)
            yield b" " * (64 * 1024)

    try:
        response = collector.http.post("/v1/report", content=chunks(), headers=PLAIN)
    except httpx.TransportError:
        pass  # the server may close while we are still writing: also a refusal
    else:
        assert response.status_code == 413
        assert response.json()["error"] == "too_large"
    assert collector.refusals() == {"too_large": 1}
    assert collector.reports_stored() == 0


@pytest.mark.e2e
def test_bad_gzip_and_unknown_encodings_are_malformed(collector: Collector) -> None:
    for content, encoding in (
        (b"not gzip at all", "gzip"),
        (gzip.compress(b'{"token": "x"}')[:-6], "gzip"),  # truncated
        (gzip.compress(b"{}") + b"trailing junk", "gzip"),
        (b"{}", "br"),
    ):
        response = collector.http.post(
            "/v1/report", content=content, headers={"Content-Encoding": encoding}
        )
        assert response.status_code == 400, (content, response.text)
        assert response.json()["error"] == "malformed_json"
    assert collector.refusals() == {"malformed_json": 4}
    assert collector.reports_stored() == 0


@pytest.mark.e2e
def test_a_replayed_stamp_is_refused(collector: Collector) -> None:
    payload = make_payload(new_id(), new_id())
    token = collector.session(payload["deployment_id"], payload["instance_id"])
    body = envelope(token, payload)
    assert collector.post_report(body).status_code == 200
    again = collector.post_report(body)
    assert again.status_code == 409
    assert again.json()["error"] == "replay"
    assert collector.reports_stored() == 1
    assert collector.refusals() == {"replay": 1}
    summary = collector.http.get("/api/summary").json()
    assert summary["totals"]["requests"] == 12  # counted once
    assert summary["refusals"] == {"replay": 1}


def test_a_stamp_answered_for_good_is_not_read_again(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One stamp bought unlimited verifications: each copy of a stored report
    (or of one refused for its payload) had its whole payload read and
    checked again, some 0.4 s of CPU for a large one, before its answer.
    Flooded with copies of one stamp, the collector timed honest reports out."""
    from reqtelemetry.collector import verify as verify_module

    read = []
    check_payload = verify_module.check_payload

    def counted(*args: Any, **kwargs: Any) -> Any:
        read.append(1)
        return check_payload(*args, **kwargs)

    monkeypatch.setattr(verify_module, "check_payload", counted)
    payload = make_payload(new_id(), new_id())
    token = collector.session(payload["deployment_id"], payload["instance_id"])
    body = envelope(token, payload)
    assert collector.post_report(body).status_code == 200
    for _ in range(5):
        again = collector.post_report(body)
        assert (again.status_code, again.json()["error"]) == (409, "replay")
    assert len(read) == 1

    # Refused for its payload (another deployment's than its token's): the
    # same refusal, once read.
    other = make_payload(new_id(), new_id())
    wrong = envelope(collector.session(new_id(), other["instance_id"]), other)
    answers = [collector.post_report(wrong) for _ in range(4)]
    assert {(a.status_code, a.json()["error"]) for a in answers} == {
        (answers[0].status_code, answers[0].json()["error"])
    }
    assert answers[0].status_code == 422
    assert len(read) == 2
    assert collector.reports_stored() == 1


def _late_stamp(case: Case, text: str) -> tuple[str, str]:
    """The session's token, and a stamp minted 70 minutes ago (past its window)."""
    return case.token, stamp_for(case.token, text, now=_minutes(-70))


def _expired_token(case: Case, text: str) -> tuple[str, str]:
    """A token that expired an hour ago, and a stamp minted when it was new."""
    token = _token_for(case, issued=time.time() - 7200)
    return token, stamp_for(token, text, now=_minutes(-120))


def _token_of_a_former_secret(case: Case, text: str) -> tuple[str, str]:
    """A token signed with the secret the collector had before it restarted."""
    token = _token_for(case, secret=b"the secret before the restart")
    return token, stamp_for(token, text, now=_minutes(-70))


#: (id, what the report first went with, the refusal when it was never stored)
LATE_SENDS: list[tuple[str, Callable[[Case, str], tuple[str, str]], int, str]] = [
    ("stale-stamp", _late_stamp, 400, "stale_stamp"),
    ("expired-token", _expired_token, 401, "token_expired"),
    ("former-secret", _token_of_a_former_secret, 401, "bad_token"),
]


@pytest.mark.e2e
@pytest.mark.parametrize("stored", [True, False], ids=["stored", "not-stored"])
@pytest.mark.parametrize(
    ("first_sent", "status", "reason"),
    [(late, status, reason) for _, late, status, reason in LATE_SENDS],
    ids=[name for name, *_ in LATE_SENDS],
)
def test_a_report_sent_again_late_with_its_stamp_is_a_replay_if_stored(
    collector: Collector,
    first_sent: Callable[[Case, str], tuple[str, str]],
    status: int,
    reason: str,
    stored: bool,
) -> None:
    """A client whose every answer was lost (a proxy held them past its
    timeout) sends the same report, with the same stamp, at its next flush:
    an hour later by default, past the stamp's window and often its token's.
    Stored then, it is a replay (the client drops it); never stored, the
    refusal tells the client to mint a new stamp. Refused without a lookup,
    as before, it went again under a new stamp, and counted twice."""
    deployment_id, instance_id = new_id(), new_id()
    case = Case(collector.session(deployment_id, instance_id), deployment_id, instance_id)
    text = case.text()
    token, stamp = first_sent(case, text)
    if stored:  # the first send, whose answer was lost
        collector.storage.store(
            StoredReport(stamp=stamp, received_at=time.time() - 3600, payload=json.loads(text))
        )
    response = collector.post_report(envelope(token, text, stamp))
    if stored:
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "replay"
        assert collector.refusals() == {"replay": 1}
    else:
        assert response.status_code == status, response.text
        assert response.json()["error"] == reason
        assert collector.refusals() == {reason: 1}
    assert collector.reports_stored() == (1 if stored else 0)


@pytest.mark.e2e
@pytest.mark.parametrize("stored", [True, False], ids=["stored", "not-stored"])
def test_a_stamp_minted_before_the_difficulty_was_raised_is_looked_up(
    make_collector: Callable[..., Collector], stored: bool
) -> None:
    """The operator raised ``--bits`` while a client held a report whose
    answers were lost: its stamp, sent again, has too few bits now, but half
    of them is enough to be looked up (a replay if stored)."""
    collector = make_collector(bits=BITS + 4)
    deployment_id, instance_id = new_id(), new_id()
    case = Case(collector.session(deployment_id, instance_id), deployment_id, instance_id)
    text = case.text()
    stamp = stamp_for(case.token, text, bits=BITS)
    if stored:
        collector.storage.store(
            StoredReport(stamp=stamp, received_at=time.time() - 60, payload=json.loads(text))
        )
    response = collector.post_report(envelope(case.token, text, stamp))
    if stored:
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "replay"
    else:
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "insufficient_work"
    assert collector.reports_stored() == (1 if stored else 0)


@pytest.mark.e2e
@pytest.mark.parametrize("wrong", ["no-work", "other-payload"])
def test_only_a_late_stamp_that_holds_is_looked_up(collector: Collector, wrong: str) -> None:
    """A late stamp is looked up only if it carries its work and binds its
    token and payload: a lookup must cost a sender what a report does. So a
    stored stamp without its work, or sent with another payload, is only
    stale, though storage has it."""
    deployment_id, instance_id = new_id(), new_id()
    case = Case(collector.session(deployment_id, instance_id), deployment_id, instance_id)
    text = case.text()
    if wrong == "no-work":
        stamp, sent_text = stamp_for(case.token, text, bits=1, now=_minutes(-70)), text
    else:
        stamp = stamp_for(case.token, text, now=_minutes(-70))
        sent_text = dumps(case.payload(sequence=7))
    collector.storage.store(
        StoredReport(stamp=stamp, received_at=time.time() - 3600, payload=json.loads(text))
    )
    response = collector.post_report(envelope(case.token, sent_text, stamp))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "stale_stamp"
    assert collector.reports_stored() == 1


@pytest.mark.e2e
def test_a_late_stamp_that_cannot_be_looked_up_is_a_503(tmp_path: Path) -> None:
    """Neither "replay" nor "stale" can be said: the client keeps the report
    as it is (a refusal would have it minted anew, and counted twice if it
    was stored)."""
    with collector_on_a_broken_database(tmp_path) as collector:
        deployment_id, instance_id = new_id(), new_id()
        case = Case(collector.session(deployment_id, instance_id), deployment_id, instance_id)
        text = case.text()
        token, stamp = _late_stamp(case, text)
        response = collector.post_report(envelope(token, text, stamp))
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "unavailable"
        assert response.headers["retry-after"].isdigit()


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["closed", "reset"])
def test_a_report_whose_client_gave_up_is_not_stored(collector: Collector, how: str) -> None:
    """A client that stopped waiting (its deadline passed while the collector
    was stopped, or its loop held) keeps the data for its next report: stored
    anyway, it counted twice. A collector frozen for 20 s stored 82 % more
    requests than its clients had served."""
    payload = make_payload(new_id(), new_id())
    token = collector.session(payload["deployment_id"], payload["instance_id"])
    body = gzip.compress(envelope(token, payload))
    host, port = collector.url.removeprefix("http://").split(":")
    request = (
        f"POST /v1/report HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port))) as client:
        if how == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        client.sendall(request + body)  # then gone, before any answer
    # The session's own request on the same client still works: nothing broke.
    assert collector.http.get("/healthz").status_code == 200
    time.sleep(0.5)  # the abandoned report has been handled by now
    assert collector.reports_stored() == 0
    # Its data comes again in the client's next report, under a new stamp: once.
    assert collector.send(payload).status_code == 200
    assert collector.reports_stored() == 1


# -- refusals are counted in memory, written now and then ------------------------------------


@pytest.mark.e2e
def test_a_refusal_costs_no_database_write_yet_shows_at_once(collector: Collector) -> None:
    """Garbage costs its sender nothing; an upsert for each took a pool
    connection and a worker thread from real reports."""
    for _ in range(50):
        response = collector.http.post("/v1/report", content=b"not json", headers=PLAIN)
        assert response.status_code == 400
    assert collector.storage.refusals() == {}  # nothing written per request
    assert collector.refusals() == {"malformed_json": 50}  # but shown at once
    assert collector.app is not None
    assert collector.app.state.refusals.write() == 50  # one transaction
    assert collector.storage.refusals() == {"malformed_json": 50}
    assert collector.refusals() == {"malformed_json": 50}  # not counted twice


@pytest.mark.e2e
def test_refusals_are_written_every_few_seconds_and_at_shutdown(storage: Storage) -> None:
    def serve(every: float) -> tuple[ServerThread, httpx.Client]:
        app = create_app(collector_settings(), storage, timing=Timing(refusal_write_every=every))
        server = ServerThread(app, lifespan="on")
        server.start()
        return server, httpx.Client(base_url=server.url, trust_env=False, timeout=10.0)

    server, http = serve(every=0.05)
    try:
        for _ in range(3):
            assert http.post("/v1/report", content=b"not json").status_code == 400
        deadline = time.monotonic() + 10.0
        while storage.refusals() != {"malformed_json": 3}:
            assert time.monotonic() < deadline, storage.refusals()
            time.sleep(0.02)
    finally:
        http.close()
        server.stop(graceful=True)
    server, http = serve(every=3600.0)  # none but the one at shutdown
    try:
        assert http.post("/v1/session", content=b"[]").status_code == 400
        assert storage.refusals() == {"malformed_json": 3}
    finally:
        http.close()
        server.stop(graceful=True)
    assert storage.refusals() == {"bad_session": 1, "malformed_json": 3}


def test_refusal_counts_a_write_could_not_store_are_kept_for_the_next(
    backend_storage: Storage,
) -> None:
    """A write held up by another writer past its deadline stores nothing and
    loses nothing: the counts, and those counted meanwhile, go with the next."""
    tally = RefusalTally(backend_storage)
    for _ in range(3):
        tally.add("bad_token")
    with another_writer(location(backend_storage)):
        with pytest.raises(DeadlineExceeded):
            tally.write(deadline=time.monotonic() + 0.1)
        tally.add("replay")
    assert backend_storage.refusals() == {}
    assert tally.unwritten() == {"bad_token": 3, "replay": 1}
    assert tally.counts() == {"bad_token": 3, "replay": 1}
    assert tally.write() == 4
    assert tally.unwritten() == {}
    assert backend_storage.refusals() == tally.counts() == {"bad_token": 3, "replay": 1}


def test_replicas_refusal_counts_add_up(backend_storage: Storage) -> None:
    replicas = [RefusalTally(backend_storage) for _ in range(2)]
    for replica in replicas:
        replica.add("bad_token")
    replicas[0].write()
    # Each shows the shared, stored counts and its own unwritten ones.
    assert replicas[0].counts() == {"bad_token": 1}
    assert replicas[1].counts() == {"bad_token": 2}
    assert replicas[1].write() == 1
    assert backend_storage.refusals() == {"bad_token": 2}


BAD_SESSIONS: list[tuple[str, bytes, int, str]] = [
    ("not-json", b"deployment_id=1", 400, "malformed_json"),
    ("array", b"[]", 400, "bad_session"),
    ("missing", dumps({"deployment_id": new_id()}).encode(), 400, "bad_session"),
    (
        "extra",
        dumps({"deployment_id": new_id(), "instance_id": new_id(), "host": "x"}).encode(),
        400,
        "bad_session",
    ),
    (
        "upper-case",
        dumps({"deployment_id": new_id().upper(), "instance_id": new_id()}).encode(),
        400,
        "bad_session",
    ),
    (
        "not-a-uuid",
        dumps({"deployment_id": "alice@example.org", "instance_id": new_id()}).encode(),
        400,
        "bad_session",
    ),
    (
        "uuid-with-newline",
        dumps({"deployment_id": new_id() + "\n", "instance_id": new_id()}).encode(),
        400,
        "bad_session",
    ),
    ("number", dumps({"deployment_id": 1, "instance_id": new_id()}).encode(), 400, "bad_session"),
    ("oversized", b" " * 10_000, 413, "too_large"),
]


def test_the_protocol_doc_gives_the_session_refusals_the_code_gives() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text("utf-8")
    section = text.split("## `POST /v1/session`")[1].split("## `POST /v1/report`")[0]
    said = " ".join(section.split())
    assert SESSION_MAX_BYTES == 4096
    for _, _, status, reason in BAD_SESSIONS:
        assert f'`{status} {{"error": "{reason}"' in said, (status, reason)
    assert 'exceeds 4 KiB (as sent, or after gunzip) with `413 {"error": "too_large"' in said


@pytest.mark.e2e
def test_a_session_body_inflating_past_4_kib_is_too_large(collector: Collector) -> None:
    body = gzip.compress(b" " * (SESSION_MAX_BYTES + 1))
    assert len(body) < SESSION_MAX_BYTES
    response = collector.http.post("/v1/session", content=body, headers=GZIP)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("body", "status", "reason"), [pytest.param(*c[1:], id=c[0]) for c in BAD_SESSIONS]
)
def test_bad_session_requests_are_refused(
    collector: Collector, body: bytes, status: int, reason: str
) -> None:
    response = collector.http.post("/v1/session", content=body, headers=PLAIN)
    assert response.status_code == status, response.text
    assert response.json()["error"] == reason
    assert "token" not in response.json()
    assert collector.refusals() == {reason: 1}


@pytest.mark.e2e
def test_a_refusal_is_logged_on_one_line_whatever_its_sender_wrote(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    """A refusal's detail echoes the sender's input; logged as it was, a field
    named with a newline forged a log line of its own, and ESC sequences
    reached the operator's terminal."""
    forged = "x\nINFO storage works again\r\x1b[31mred"  # within the 40 shown
    body = json.dumps({"deployment_id": new_id(), "instance_id": new_id(), forged: 1})
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry.collector"):
        response = collector.http.post("/v1/session", content=body, headers=PLAIN)
    assert response.status_code == 400
    assert forged in response.json()["detail"]  # the sender still gets its words back
    (record,) = [r for r in caplog.records if r.getMessage().startswith("refused: ")]
    logged = logging.Formatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert not {"\n", "\r", "\x1b"} & set(logged), logged
    assert "storage works again" in logged  # escaped, not dropped


# -- the Host of a dashboard without credentials -------------------------------------------

DASHBOARD_PATHS = ("/", "/api/summary", "/export.csv", "/static/dashboard.js")


def _get(collector: Collector, path: str, host: str, **headers: str) -> httpx.Response:
    return collector.http.get(path, headers={"Host": host, **headers})


@pytest.mark.e2e
def test_an_open_dashboard_answers_only_to_a_loopback_host(collector: Collector) -> None:
    # DNS rebinding: a page from rebind.attacker.example, its name resolved
    # again to 127.0.0.1, reads the dashboard as its own origin. It cannot
    # choose the Host its requests carry.
    port = collector.url.rsplit(":", 1)[1]
    for path in DASHBOARD_PATHS:
        for host in (f"rebind.attacker.example:{port}", "rebind.attacker.example", "10.0.0.1"):
            answer = _get(collector, path, host)
            assert answer.status_code == 403, (path, host)
            assert answer.json()["error"] == "wrong_host"
            assert "REQTELEMETRY_DASHBOARD_TOKEN" in answer.json()["detail"]
        for host in (f"localhost:{port}", "LOCALHOST", f"127.0.0.1:{port}", "127.0.0.2", "[::1]"):
            assert _get(collector, path, host).status_code == 200, (path, host)
    # The clients' endpoints answer whatever the Host: reports come from afar.
    assert _get(collector, "/healthz", "collector.example.org").status_code == 200
    answer = collector.http.post(
        "/v1/session",
        json={"deployment_id": new_id(), "instance_id": new_id()},
        headers={"Host": "collector.example.org"},
    )
    assert answer.status_code == 200


@pytest.mark.e2e
def test_an_open_dashboard_also_answers_to_the_host_it_listens_on(storage: Storage) -> None:
    server = ServerThread(create_app(collector_settings(), storage, host="[::1]"))
    server.start()
    try:
        with httpx.Client(base_url=server.url, trust_env=False) as http:
            assert http.get("/", headers={"Host": "::1"}).status_code == 200
        server.stop()
        server = ServerThread(create_app(collector_settings(), storage, host="Box.Lan"))
        server.start()
        with httpx.Client(base_url=server.url, trust_env=False) as http:
            assert http.get("/", headers={"Host": "box.lan:8600"}).status_code == 200
            assert http.get("/", headers={"Host": "other.lan:8600"}).status_code == 403
    finally:
        server.stop()


@pytest.mark.e2e
@pytest.mark.parametrize(
    "overrides",
    [{"dashboard_token": "dashboard-token-for-tests"}, {"dashboard_public": True}],
    ids=["with-credentials", "public-on-purpose"],
)
def test_a_protected_or_public_dashboard_answers_to_any_host(
    make_collector: Callable[..., Collector], overrides: dict[str, Any]
) -> None:
    collector = make_collector(**overrides)
    auth = {"Authorization": "Bearer dashboard-token-for-tests"}
    for path in DASHBOARD_PATHS:
        assert _get(collector, path, "collector.example.org", **auth).status_code == 200


# -- credentials -------------------------------------------------------------------------

DASHBOARD_TOKEN = "dashboard-token-for-tests"
USER, PASSWORD = "maintainer", "correct horse"
PROTECTED = ("/", "/api/summary", "/export.csv")


def basic(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


@pytest.mark.e2e
def test_dashboard_api_and_csv_require_credentials(
    make_collector: Callable[..., Collector],
) -> None:
    collector = make_collector(
        dashboard_token=DASHBOARD_TOKEN, dashboard_basic_auth=(USER, PASSWORD)
    )
    http = collector.http
    for path in PROTECTED:
        refused = http.get(path)
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert refused.json()["error"] == "unauthorized"
        for headers in (
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {DASHBOARD_TOKEN}x"},
            basic(USER, "wrong"),
            basic("someone", PASSWORD),
            {"Authorization": "Basic !!!not-base64"},
        ):
            assert http.get(path, headers=headers).status_code == 401, (path, headers)
        assert http.get(path, params={"token": "wrong"}).status_code == 401
        assert http.get(path, headers={"Authorization": f"Bearer {DASHBOARD_TOKEN}"}).is_success
        assert http.get(path, params={"token": DASHBOARD_TOKEN}).is_success
        assert http.get(path, headers=basic(USER, PASSWORD)).is_success

    # Ingestion, health and the static files stay public.
    assert collector.send(make_payload(new_id(), new_id())).status_code == 200
    assert http.get("/healthz").status_code == 200
    assert http.get("/static/dashboard.js").status_code == 200
    # Failed logins are not ingestion refusals.
    assert collector.refusals() == {}


@pytest.mark.e2e
def test_a_token_only_dashboard_ignores_basic_auth(
    make_collector: Callable[..., Collector],
) -> None:
    collector = make_collector(dashboard_token=DASHBOARD_TOKEN)
    refused = collector.http.get("/api/summary", headers=basic(USER, DASHBOARD_TOKEN))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert collector.http.get("/api/summary", params={"token": DASHBOARD_TOKEN}).is_success


@pytest.mark.e2e
def test_bad_days_are_a_400(collector: Collector) -> None:
    # "²" and "٣" are str.isdigit(); int() refuses the first and the 5000
    # digits (past its 4300-digit limit), and only ASCII digits are a number here.
    odd = ("\u00b2", "\u0663", "\uff17", "0" * 5000 + "7", " 7", "7\n", "+7")
    for days in ("0", "-1", "abc", "1.5", "99999", *odd):
        for path in ("/api/summary", "/export.csv"):
            response = collector.http.get(path, params={"days": days})
            assert response.status_code == 400, (path, days)
            assert response.json()["error"] == "bad_request"
            assert "days must be a whole number" in response.json()["detail"]
    for days, meant in (("7", 7), ("007", 7), ("3650", 3650)):
        assert collector.http.get("/api/summary", params={"days": days}).json()["days"] == meant


@pytest.mark.e2e
@pytest.mark.parametrize(
    "published",
    [{"dashboard_token": DASHBOARD_TOKEN}, {"dashboard_public": True}],
    ids=["token", "public"],
)
def test_a_path_with_a_slash_added_is_no_redirect_to_the_requests_host(
    make_collector: Callable[..., Collector], published: dict[str, Any]
) -> None:
    """Starlette answered ``/api/summary/`` with a 307 to
    ``http://<the request's Host>/api/summary``, the query (``?token=``) kept,
    before the dashboard's credentials were checked."""
    collector = make_collector(**published)
    for path in (
        "/api/summary/",
        "/api/summary/?token=" + DASHBOARD_TOKEN,
        "/export.csv/",
        "/healthz/",
        "/v1/report/",
        "/static",
    ):
        answer = _get(collector, path, "evil.example")
        assert answer.status_code == 404, (path, answer.status_code)
        assert "location" not in answer.headers, path
    # The dashboard's own paths, and the relative links of its page, still work.
    token = {"Authorization": f"Bearer {DASHBOARD_TOKEN}"}
    page = collector.http.get("/", headers=token)
    assert page.status_code == 200
    links = re.findall(r'(?:href|src)="([^"#]+)"', page.text)
    assert {"static/dashboard.js", "export.csv"} <= set(links)
    for link in links:
        assert collector.http.get("/" + link, headers=token).status_code == 200, link
    assert collector.http.get("/api/summary", headers=token).status_code == 200


# -- the dashboard -------------------------------------------------------------------------

STATIC = Path(__file__).parents[1] / "src" / "reqtelemetry" / "collector" / "static"


@pytest.mark.e2e
def test_the_dashboard_is_self_contained(collector: Collector) -> None:
    page = collector.http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    for testid in (
        "total-deployments",
        "total-instances",
        "total-requests",
        "total-error-rate",
        "activity-chart",
        "versions-chart",
        "endpoints-table",
        "by-version-table",
        "platform-os",
        "platform-arch",
        "platform-python",
    ):
        assert f'data-testid="{testid}"' in page.text, testid
    for asset, kind in (
        ("dashboard.js", "javascript"),
        ("dashboard.css", "text/css"),
        ("index.html", "text/html"),
    ):
        response = collector.http.get(f"/static/{asset}")
        assert response.status_code == 200
        assert kind in response.headers["content-type"]
        # The page is among the files: served from there it keeps the page's
        # policies (all but no-store: the script and style sheet may be cached).
        for name, value in page.headers.items():
            if name.lower() in (
                "content-security-policy",
                "referrer-policy",
                "x-content-type-options",
            ):
                assert response.headers[name] == value, (asset, name)
        assert "no-store" not in response.headers.get("cache-control", "")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    # Works offline: nothing is loaded from anywhere else (the SVG namespace is a name).
    for path in STATIC.iterdir():
        urls = set(re.findall(r"https?://[^\s\"')]+", path.read_text(encoding="utf-8")))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)
    # Data reaches the page only as text.
    script = (STATIC / "dashboard.js").read_text(encoding="utf-8")
    assert not re.search(r"\.(inner|outer)HTML|insertAdjacentHTML|document\.write", script)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_dashboard_script_parses() -> None:
    subprocess.run(["node", "--check", str(STATIC / "dashboard.js")], check=True)


def render_dashboard(
    tmp_path: Path, summary: str, page_query: str, choice: str | None = None
) -> dict[str, Any]:
    """What the real script renders from ``summary`` on a page opened with
    ``page_query`` (tests/dashboard_dom.js), after ``choice`` (``id=value``)."""
    path = tmp_path / f"summary-{uuid.uuid4().hex[:8]}.json"
    path.write_text(summary, encoding="utf-8")
    done = subprocess.run(
        [
            "node",
            str(Path(__file__).with_name("dashboard_dom.js")),
            str(STATIC / "index.html"),
            str(STATIC / "dashboard.js"),
            str(path),
            page_query,
            *([choice] if choice is not None else []),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    page: dict[str, Any] = json.loads(done.stdout)
    return page


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_dashboard_shows_the_answer_to_the_last_question(
    collector: Collector, tmp_path: Path
) -> None:
    """Opened on one period and switched to another while the first summary
    was still being read, the page showed whichever answer came last: on a
    large database a year's figures under "24 hours"."""
    assert collector.send(make_payload(new_id(), new_id())).is_success
    fresh = collector.http.get("/api/summary", params={"days": 1}).text
    stale_summary = json.loads(fresh)
    stale_summary["totals"] = {key: 987654 for key in stale_summary["totals"]}
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(stale_summary), encoding="utf-8")
    expected = render_dashboard(tmp_path, fresh, "?days=1")
    summary_path = tmp_path / "fresh.json"
    summary_path.write_text(fresh, encoding="utf-8")
    done = subprocess.run(
        [
            "node",
            str(Path(__file__).with_name("dashboard_dom.js")),
            str(STATIC / "index.html"),
            str(STATIC / "dashboard.js"),
            str(summary_path),
            "?days=365",
            "days=1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "DASHBOARD_STALE": str(stale)},
    )
    page = json.loads(done.stdout)
    assert [request["url"].split("days=")[1][:3] for request in page["requests"]] == ["365", "1"]
    assert page["status"]["state"] == "ready", page["status"]
    assert page["totals"] == expected["totals"]


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_dashboard_renders_the_summary(
    make_collector: Callable[..., Collector], tmp_path: Path
) -> None:
    """The real script against a fake DOM (tests/dashboard_dom.js) and a real summary."""
    collector = make_collector(dashboard_token=DASHBOARD_TOKEN)
    deployment_id = new_id()
    collector.storage.store(
        StoredReport(
            stamp="long-ago",
            received_at=time.time() - 40 * 86400,
            payload=make_payload(
                deployment_id,
                new_id(),
                records=[record("DELETE", ROUTE_ITEM, 204, 1, [[-130, 1]], 0.005)],
            ),
        )
    )
    assert collector.send(make_payload(deployment_id, new_id(), app_version="2.4.1")).is_success
    slower = make_payload(deployment_id, new_id(), app_version="2.5.0", records=default_records(10))
    assert collector.send(slower).is_success
    assert collector.http.post("/v1/report", content=b"junk").status_code == 400
    summary = collector.http.get("/api/summary", params={"days": 30, "token": DASHBOARD_TOKEN})

    page = render_dashboard(tmp_path, summary.text, f"?token={DASHBOARD_TOKEN}&days=30")
    assert page["status"]["state"] == "ready", page["status"]
    totals = page["totals"]
    assert totals["deployments"]["text"] == "1"
    assert totals["instances"]["text"] == "2"
    assert totals["requests"]["text"] == "24"
    assert totals["error-rate"]["text"] == "8.33%"
    assert float(totals["error-rate"]["value"]) == pytest.approx(2 / 24)
    # The script asked for the same window, with the page's token as a bearer token.
    assert page["requests"] == [
        {"url": "api/summary?days=30", "headers": {"Authorization": f"Bearer {DASHBOARD_TOKEN}"}}
    ]
    assert page["csvHref"] == f"export.csv?days=30&token={DASHBOARD_TOKEN}"

    rows = {
        (r["attributes"]["data-method"], r["attributes"]["data-route"]): r
        for r in page["endpointRows"]
    }
    assert set(rows) == {("GET", ROUTE_ITEM), ("POST", ROUTE_CREATE), ("DELETE", ROUTE_ITEM)}
    assert rows[("DELETE", ROUTE_ITEM)]["attributes"]["class"] == "unused"
    assert page["unusedBadges"] == 1
    assert rows[("GET", ROUTE_ITEM)]["cells"][2] == {"text": "18", "value": "18"}

    # The slower release stands out: one coloured delta, against 2.4.1.
    changes = page["p95Changes"]
    assert [c["kind"] for c in changes] == ["worse", "worse"]
    assert all(c["text"].startswith("+") and c["text"].endswith("vs 2.4.1") for c in changes)
    assert {r["attributes"]["data-version"] for r in page["versionRows"]} == {"2.4.1", "2.5.0"}

    bars = {bar["data-label"]: bar for bar in page["versionBars"]}
    assert set(bars) == {"2.4.1", "2.5.0"}
    assert bars["2.5.0"]["data-value"] == "1"
    assert page["activityPaths"] == 2
    assert {bar["data-label"] for bar in page["platformBars"]} >= {"linux", "x86_64", "3.12.7"}
    assert [r["attributes"]["data-reason"] for r in page["refusalRows"]] == ["malformed_json"]
    # One app (unnamed): nothing to choose, no app column.
    assert page["appControlHidden"] and page["byVersionAppHidden"]
    assert page["versionApps"] == [] and page["pageUrls"] == []
    assert summary.json()["retention_days"] is None and page["retention"] == ""
    assert page["endpointsCap"]["hidden"] and page["byVersionCap"]["hidden"]


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_dashboard_says_how_many_endpoints_it_does_not_show(
    collector: Collector, tmp_path: Path
) -> None:
    """Where the summary's lists were cut, the page says how many endpoints it
    does not show and where they all are; where nothing was cut, nothing."""
    now = time.time()
    store_endpoints(
        collector.storage, {f"/h/{n:03d}": n + 1 for n in range(MAX_ENDPOINTS + 3)}, now
    )
    store_endpoints(collector.storage, {f"/gone/{n}": 1 for n in range(101)}, now - 40 * 86400)
    summary = collector.http.get("/api/summary", params={"days": 30}).json()

    page = render_dashboard(tmp_path, json.dumps(summary), "?days=30")
    assert page["status"]["state"] == "ready", page["status"]
    assert len(page["endpointRows"]) == MAX_ENDPOINTS + MAX_UNUSED_ENDPOINTS
    assert page["endpointsCap"] == {
        "text": "3 more endpoints not shown (the 500 with the most calls are); 1 more unused "
        "endpoint not shown (the 100 seen last are). The CSV export has them all.",
        "value": "4",
        "class": "",  # the fake DOM reads no attribute but ids from the page's markup
        "hidden": False,
    }
    assert page["byVersionCap"]["hidden"] and page["byVersionCap"]["text"] == ""
    day = time.strftime("%Y-%m-%d", time.gmtime(now - 40 * 86400))
    assert set(page["unusedTitles"]) == {f"last seen {day}"}

    summary["endpoints_left_out"]["by_version"] = 1234
    page = render_dashboard(tmp_path, json.dumps(summary), "?days=30")
    assert page["byVersionCap"]["text"] == (
        "1,234 more endpoint versions not shown (of the endpoints above, the 2,000 with the "
        "most calls are). The CSV export has them all."
    )
    assert not page["byVersionCap"]["hidden"]


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_dashboard_says_how_many_versions_and_platforms_it_does_not_show(
    collector: Collector, tmp_path: Path
) -> None:
    """Where the summary cut its versions or platforms, the page says how many
    it left out under each, and which it kept; where nothing was cut, nothing."""
    now = time.time()
    flood = MAX_VERSIONS + 2
    for n in range(flood):
        store_traits(collector.storage, f"0.{n}", "3.12.7", now - flood + n)
    summary = collector.http.get("/api/summary", params={"days": 30}).json()

    page = render_dashboard(tmp_path, json.dumps(summary), "?days=30")
    assert page["status"]["state"] == "ready", page["status"]
    assert len(page["versionBars"]) == MAX_VERSIONS
    assert page["versionsCap"] == {
        "text": "2 more versions not shown (the 100 with the most deployments of each app are).",
        "value": "2",
        "class": "",  # the fake DOM reads no attribute but ids from the page's markup
        "hidden": False,
    }
    assert page["platformsCap"]["hidden"] and page["platformsCap"]["text"] == ""

    summary["platforms_left_out"] = 1
    page = render_dashboard(tmp_path, json.dumps(summary), "?days=30")
    assert page["platformsCap"]["text"] == (
        "1 more platform not counted (the charts count the 200 combinations of OS, "
        "architecture, Python and framework with the most instances)."
    )
    assert not page["platformsCap"]["hidden"] and page["platformsCap"]["value"] == "1"
    # A summary from before the cut (no counts) shows no note.
    for key in ("versions_left_out", "version_limit", "platforms_left_out", "platform_limit"):
        del summary[key]
    page = render_dashboard(tmp_path, json.dumps(summary), "?days=30")
    assert page["versionsCap"]["hidden"] and page["platformsCap"]["hidden"]


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_dashboard_says_how_long_reports_are_kept(
    make_collector: Callable[..., Collector], tmp_path: Path
) -> None:
    """A window longer than the retention shows less than it asks for: the page
    says why, from the summary."""
    collector = make_collector(retention_days=90)
    assert collector.send(make_payload(new_id(), new_id())).is_success
    summary = collector.http.get("/api/summary", params={"days": 365})
    assert summary.json()["retention_days"] == 90
    page = render_dashboard(tmp_path, summary.text, "?days=365")
    assert page["status"]["state"] == "ready", page["status"]
    assert page["retention"] == " · reports older than 90 days are deleted"


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_dashboard_tells_apps_apart_and_keeps_the_choice(
    collector: Collector, tmp_path: Path
) -> None:
    """Several apps: a selector, app labels on versions, and ?app= in every URL."""
    for app_name, version, shift in (("inventory", "1.0", 0), ("inventory", "1.1", 10)):
        payload = make_payload(
            new_id(),
            new_id(),
            app_name=app_name,
            app_version=version,
            records=default_records(shift),
        )
        assert collector.send(payload).is_success
    billing = make_payload(
        new_id(), new_id(), app_name="billing", app_version="1.0.5", records=default_records(40)
    )
    assert collector.send(billing).is_success
    every = collector.http.get("/api/summary", params={"days": 30}).text

    page = render_dashboard(tmp_path, every, "?days=30")
    assert page["status"]["state"] == "ready", page["status"]
    assert not page["appControlHidden"]
    assert page["appOptions"] == [
        {"value": "", "text": "All apps"},
        {"value": "billing", "text": "billing"},
        {"value": "inventory", "text": "inventory"},
    ]
    assert page["appValue"] == ""
    # Versions are labelled with their app; each app's newest is the one not greyed.
    bars = {bar["data-label"]: bar for bar in page["versionBars"]}
    assert list(bars) == ["billing 1.0.5", "inventory 1.1", "inventory 1.0"]
    # The by-version table has an app column, and compares within an app only.
    assert not page["byVersionAppHidden"]
    rows = [r for r in page["versionRows"] if r["attributes"]["data-method"] == "GET"]
    assert [(r["attributes"]["data-app"], r["attributes"]["data-version"]) for r in rows] == [
        ("billing", "1.0.5"),
        ("inventory", "1.1"),
        ("inventory", "1.0"),
    ]
    assert [cell["text"] for cell in rows[1]["cells"][:4]] == [
        "GET",
        ROUTE_ITEM,
        "inventory",
        "1.1",
    ]
    assert [c["text"].split(" vs ")[1] for c in page["p95Changes"]] == ["1.0", "1.0"]
    assert page["requests"][0]["url"] == "api/summary?days=30"

    # Choosing an app reloads its summary and writes it into the page's URL.
    chosen = render_dashboard(tmp_path, every, "?days=30&token=t", "app=inventory")
    assert [r["url"] for r in chosen["requests"]] == [
        "api/summary?days=30",
        "api/summary?days=30&app=inventory",
    ]
    assert chosen["pageUrls"] == ["?days=30&token=t&app=inventory"]
    assert chosen["csvHref"] == "export.csv?days=30&app=inventory&token=t"

    # A link with ?app= opens on that app; "All apps" takes it out of the URL again.
    one = collector.http.get("/api/summary", params={"days": 30, "app": "billing"}).text
    linked = render_dashboard(tmp_path, one, "?days=30&app=billing", "app=")
    assert linked["requests"][0]["url"] == "api/summary?days=30&app=billing"
    assert linked["requests"][1]["url"] == "api/summary?days=30"
    assert linked["pageUrls"] == ["?days=30"]
    assert linked["byVersionAppHidden"]  # one app's rows: no column
    assert [bar["data-label"] for bar in linked["versionBars"]] == ["1.0.5"]
    opened = render_dashboard(tmp_path, one, "?days=30&app=billing")
    assert opened["appValue"] == "billing" and not opened["appControlHidden"]
    assert opened["csvHref"] == "export.csv?days=30&app=billing"


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_app_names_that_are_also_javascript_property_names(
    collector: Collector, tmp_path: Path
) -> None:
    """App names come from clients: "__proto__" and "toString" are names like any
    other, not the dashboard's own objects' properties."""
    for app_name, version in (("toString", "1.0"), ("toString", "1.1"), ("__proto__", "2.0")):
        payload = make_payload(new_id(), new_id(), app_name=app_name, app_version=version)
        assert collector.send(payload).is_success
    page = render_dashboard(tmp_path, collector.http.get("/api/summary").text, "?days=30")
    assert page["status"]["state"] == "ready", page["status"]
    bars = {bar["data-label"]: bar["barClass"] for bar in page["versionBars"]}
    # Two apps, so each bar names its app; each app's newest version is not greyed.
    assert bars == {"__proto__ 2.0": "bar", "toString 1.1": "bar", "toString 1.0": "bar old"}
    assert not page["byVersionAppHidden"]
    assert [option["value"] for option in page["appOptions"]] == ["", "__proto__", "toString"]


def _texts(value: Any) -> list[str]:
    """Every ``text`` field of what tests/dashboard_dom.js printed: what a person reads."""
    if isinstance(value, dict):
        found = [value["text"]] if isinstance(value.get("text"), str) else []
        return found + [text for item in value.values() for text in _texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    return []


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_dashboard_writes_out_characters_that_change_text_unseen(
    collector: Collector, tmp_path: Path
) -> None:
    """A route or version from a sender can carry a right-to-left override, a
    zero-width space or tag characters, which make one text look like
    another; the page shows them written out, never as they would act."""
    route = "/files/\u202egpj.exe/{item_id}\u200b\U000e0041"
    version = "2.0\u2066"
    records = [record("GET", route, 200, 3, [[-100, 3]], 0.01)]
    payload = make_payload(new_id(), new_id(), app_version=version, records=records)
    assert collector.send(payload).is_success
    page = render_dashboard(tmp_path, collector.http.get("/api/summary").text, "?days=30")
    assert page["status"]["state"] == "ready", page["status"]
    [row] = [r for r in page["endpointRows"] if r["attributes"]["data-route"] == route]
    assert "/files/\\u{202E}gpj.exe/{item_id}\\u{200B}\\u{E0041}" in row["cells"][1]["text"]
    assert any("2.0\\u{2066}" in text for text in _texts(page["versionRows"]))
    shown = "".join(_texts(page))
    assert "\\u{202E}" in shown
    assert not [c for c in shown if unicodedata.category(c) == "Cf"]


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_dashboard_orders_versions_as_the_collector_does(
    collector: Collector, tmp_path: Path
) -> None:
    """One list of versions, through ``summary.version_key`` and through the
    page's script: the page's newest version must be the one the collector
    compares with, so both put every version in the same place."""
    summary = collector.http.get("/api/summary").json()
    shuffled = random.Random(7).sample(VERSIONS_IN_ORDER, len(VERSIONS_IN_ORDER))
    summary["versions"] = [
        {"app_name": "shop", "app_version": v, "deployments": 1, "instances": 1, "last_seen": 0}
        for v in shuffled
    ]
    page = render_dashboard(tmp_path, json.dumps(summary), "?days=30")
    assert page["status"]["state"] == "ready", page["status"]
    newest_first = [bar["data-label"] for bar in page["versionBars"]]
    assert newest_first == sorted(shuffled, key=version_key, reverse=True)
    assert newest_first == VERSIONS_IN_ORDER[::-1]
    # Only the newest is not greyed out: 1!0.1 (an epoch) here.
    assert [bar["barClass"] for bar in page["versionBars"]][:2] == ["bar", "bar old"]


#: Markup where a name should be: the collector's schema refuses such metric
#: names, but the page must not rely on that.
HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_dashboard_shows_app_metrics_and_dropped_requests(
    collector: Collector, tmp_path: Path
) -> None:
    inventory = new_id()
    for instance, gauge in ((new_id(), 10), (new_id(), 12)):
        payload = make_payload(inventory, instance, app_name="inventory")
        payload["metrics"] = {
            "counters": {"feature.export_pdf": 2},
            "gauges": {"registered_apps": gauge},
        }
        assert collector.send(payload).is_success
    billing = make_payload(new_id(), new_id(), app_name="billing")
    billing["batch"]["dropped"] = 3
    assert collector.send(billing).is_success
    summary = collector.http.get("/api/summary", params={"days": 30}).json()

    page = render_dashboard(tmp_path, json.dumps(summary), "?days=30")
    assert page["status"]["state"] == "ready", page["status"]
    assert not page["metricsHidden"]
    assert [[c["text"] for c in row["cells"]] for row in page["counterRows"]] == [
        ["feature.export_pdf", "inventory", "4", "1"],
        ["jobs.completed", "billing", "2", "1"],
    ]
    assert not page["counterAppHidden"]  # two apps: each row says whose
    # One deployment's two instances: its latest value, once.
    assert [[c["text"] for c in row["cells"]] for row in page["gaugeRows"]] == [
        ["registered_apps", "12", "12", "12", "1"]
    ]
    assert page["gaugeAppHidden"]  # one app's gauges: no column
    assert page["metricsCap"] == {"text": "", "hidden": True}
    assert not page["dropped"]["hidden"] and page["dropped"]["value"] == "3"
    assert page["dropped"]["text"].startswith("3 requests arrived past a client's cap")
    assert "max_keys" in page["dropped"]["text"]

    # Names are text, whatever they hold; a cut list says so.
    summary["metrics"]["counters"][0].update(name=HOSTILE, app_name=HOSTILE)
    summary["metrics"]["gauges"][0]["name"] = HOSTILE
    summary["metrics"].update(counter_names=250, limit=2)
    summary["dropped"]["by_app"].append({"app_name": HOSTILE, "requests": 1, "deployments": 1})
    page = render_dashboard(tmp_path, json.dumps(summary), "?days=30")
    assert page["counterRows"][0]["cells"][0]["text"] == HOSTILE
    assert page["counterRows"][0]["cells"][1]["text"] == HOSTILE
    assert page["counterRows"][0]["attributes"]["data-name"] == HOSTILE
    assert page["gaugeRows"][0]["cells"][0]["text"] == HOSTILE
    assert HOSTILE in page["dropped"]["text"]
    assert not {"IMG", "SCRIPT"} & set(page["tags"])
    # The apps are cut in the collector (an app name is client text): the
    # selector and the dropped line say how many more there are.
    summary.update(apps_left_out=4998, app_limit=100)
    summary["dropped"]["left_out"] = 4999
    page = render_dashboard(tmp_path, json.dumps(summary), "?days=30")
    assert page["appOptions"][-1] == {
        "value": "",
        "text": "4,998 more apps not listed (choose with ?app=)",
    }
    assert page["dropped"]["text"].endswith(", and 4,999 more apps.")
    assert page["metricsCap"] == {
        "text": "Of 250 counters, the 2 reported by the most deployments are shown.",
        "hidden": False,
    }

    # Nothing defined, nothing dropped: no section, no notice.
    summary["metrics"].update(counters=[], gauges=[], counter_names=0, gauge_names=0)
    summary["dropped"] = {"requests": 0, "by_app": []}
    page = render_dashboard(tmp_path, json.dumps(summary), "?days=30")
    assert page["metricsHidden"] and page["dropped"]["hidden"]
    assert page["counterRows"] == [] and page["gaugeRows"] == []
    # Only gauges: the counters' table is hidden, not shown empty.
    summary["metrics"]["gauges"] = [
        {
            "app_name": None,
            "name": "queue.depth",
            "sum": 3,
            "median": 1.5,
            "max": 2,
            "deployments": 2,
        }
    ]
    page = render_dashboard(tmp_path, json.dumps(summary), "?days=30")
    assert not page["metricsHidden"] and page["countersHidden"] and not page["gaugesHidden"]
    assert [c["text"] for c in page["gaugeRows"][0]["cells"]] == [
        "queue.depth",
        "3",
        "1.5",
        "2",
        "2",
    ]


# -- what the schema allows but a database cannot hold: both backends alike -----------------


@pytest.fixture(params=["sqlite", "postgres"])
def backend_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A migrated storage of each kind (PostgreSQL: a scratch schema on the session's server)."""
    if request.param == "sqlite":
        opened = open_storage(db_url(tmp_path / "telemetry.db"))
        opened.migrate()
        yield opened
        opened.close()
        return
    from postgres import scratch_schema

    with scratch_schema(request.getfixturevalue("postgres_url")) as url:
        opened = open_storage(url)
        try:
            opened.migrate()
            yield opened
        finally:
            opened.close()  # before the schema is dropped


@pytest.fixture
def backend_collector(backend_storage: Storage) -> Iterator[Collector]:
    settings = collector_settings()
    server = ServerThread(create_app(settings, backend_storage))
    server.start()
    http = httpx.Client(base_url=server.url, trust_env=False, timeout=10.0)
    yield Collector(server.url, http, backend_storage, settings)
    http.close()
    server.stop()


def _first_record(payload: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = payload["batch"]["records"][0]
    return record


#: (id, change to a valid report, the field the refusal must name)
UNSTORABLE: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("nul-route", lambda p: _first_record(p).update(route="/a\0b"), "batch/records/0/route"),
    ("nul-trait", lambda p: p["traits"].update(app_version="1.0\0"), "traits/app_version"),
    ("nul-app-name", lambda p: p["traits"].update(app_name="\0shop"), "traits/app_name"),
    ("float-sequence", lambda p: p.update(sequence=1e300), "sequence"),
    ("float-count", lambda p: _first_record(p).update(count=1e19), "batch/records/0/count"),
    ("parts-beyond-32-bits", lambda p: p.update(parts=2**31), "parts"),
    (
        "bucket-index-beyond-the-histogram",
        lambda p: _first_record(p)["latency"].update(histogram=[[2**40, 1]]),
        "batch/records/0/latency/histogram/0",
    ),
    (
        "latency-sum-beyond-count-times-the-longest",
        lambda p: _first_record(p)["latency"].update(sum=1.5e308),
        "batch/records/0/latency/sum",
    ),
    (
        # Within the schema's character counts, past PostgreSQL's index entry.
        "endpoint-too-long-for-an-index",
        lambda p: _widest_endpoint(p, app_chars=128, route_chars=512),
        "batch/records/0",
    ),
]


def _wide_text(chars: int, seed: int) -> str:
    """``chars`` random four-byte characters (CJK, plane 2): PostgreSQL cannot
    compress them in an index entry as it would a repeated one."""
    pick = random.Random(seed)
    return "".join(chr(pick.randint(0x20000, 0x2A6DF)) for _ in range(chars))


def _widest_endpoint(payload: dict[str, Any], *, app_chars: int, route_chars: int) -> None:
    """Give the first record a route, and the report an app name and version, of
    four-byte characters: ``(2 * app_chars + route_chars) * 4 + 3`` bytes with GET."""
    payload["traits"].update(
        app_name=_wide_text(app_chars, 1), app_version=_wide_text(app_chars, 2)
    )
    _first_record(payload).update(method="GET", route=_wide_text(route_chars, 3))


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("change", "where"), [pytest.param(*case[1:], id=case[0]) for case in UNSTORABLE]
)
def test_reports_no_database_can_hold_are_refused_on_both_backends(
    backend_collector: Collector, change: Callable[[dict[str, Any]], None], where: str
) -> None:
    collector = backend_collector
    assert collector.send(make_payload(new_id(), new_id())).status_code == 200
    hostile = make_payload(new_id(), new_id())
    change(hostile)
    response = collector.send(hostile)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == "invalid_payload"
    assert answer["detail"].startswith(f"{where}: "), answer["detail"]
    assert collector.reports_stored() == 1
    assert collector.refusals() == {"invalid_payload": 1}
    # What was stored before still reads back.
    assert collector.http.get("/api/summary").status_code == 200
    assert collector.http.get("/export.csv").status_code == 200


def test_a_record_whose_histogram_does_not_hold_its_count_is_refused(
    collector: Collector,
) -> None:
    """Stored, 10 calls would be shown with the percentiles of one."""
    payload = make_payload(new_id(), new_id())
    payload["batch"]["records"].append(record("GET", "/other", 200, 10, [[-100, 1]], 0.01))
    response = collector.send(payload)
    assert response.status_code == 422, response.text
    assert response.json() == {
        "error": "invalid_payload",
        "detail": "batch/records/3: count is 10 but the latency histogram's counts add up "
        "to 1; they must be equal",
    }
    assert collector.reports_stored() == 0
    assert collector.refusals() == {"invalid_payload": 1}


@pytest.mark.e2e
def test_sums_past_64_bits_read_back_exactly_on_both_backends(
    backend_collector: Collector,
) -> None:
    """Every count may be 2**63 - 1, so a few reports add up past what SQLite's
    SUM holds: the summary and the CSV still answer, with PostgreSQL's exact
    numbers, on either backend."""
    collector = backend_collector
    huge = 2**62 + 1
    for _ in range(3):
        calls = record("GET", "/huge", 500, huge, [[-100, huge]], 0.01 * huge, huge, huge)
        assert collector.send(make_payload(new_id(), new_id(), records=[calls])).is_success
    summary = collector.http.get("/api/summary")
    assert summary.status_code == 200, summary.text
    # Python's JSON reads the integers whole (a browser's would round them).
    assert summary.json()["totals"]["requests"] == 3 * huge
    (row,) = summary.json()["endpoints"]
    assert (row["calls"], row["errors"], row["response_bytes"]) == (3 * huge,) * 3
    export = collector.http.get("/export.csv")
    assert export.status_code == 200, export.text
    (line,) = csv.DictReader(io.StringIO(export.text))
    assert int(line["calls"]) == int(line["request_bytes"]) == 3 * huge


@pytest.mark.e2e
def test_the_longest_endpoint_the_collector_accepts_is_stored_on_both_backends(
    backend_collector: Collector,
) -> None:
    # GET + 2 * 44 + 511 four-byte characters + "/": exactly the limit, and an
    # index entry PostgreSQL holds (it refused 3096 bytes at 2704).
    collector = backend_collector
    payload = make_payload(new_id(), new_id())
    _widest_endpoint(payload, app_chars=44, route_chars=511)
    _first_record(payload)["route"] = "/" + _first_record(payload)["route"]
    record = _first_record(payload)
    traits = payload["traits"]
    size = sum(
        len(text.encode())
        for text in (traits["app_name"], record["method"], record["route"], traits["app_version"])
    )
    assert size == MAX_ENDPOINT_KEY_BYTES
    response = collector.send(payload)
    assert response.status_code == 200, response.text
    routes = {row["route"] for row in collector.storage.endpoints(since=0)}
    assert record["route"] in routes


@pytest.mark.e2e
def test_a_value_postgres_refuses_at_store_time_is_a_422_not_a_503(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A real DataError from a real server: the route column narrowed below
    # what the checks allow. Retrying can never succeed, so no Retry-After.
    from postgres import scratch_schema

    with scratch_schema(postgres_url) as url:
        storage = open_storage(url)
        storage.migrate()
        storage._run(  # type: ignore[attr-defined]
            lambda ex: ex.execute("ALTER TABLE aggregates ALTER COLUMN route TYPE varchar(4)"),
            write=True,
        )
        server = ServerThread(create_app(collector_settings(), storage))
        server.start()
        try:
            with httpx.Client(base_url=server.url, trust_env=False, timeout=10.0) as http:
                collector = Collector(server.url, http, storage, collector_settings())
                with caplog.at_level(logging.WARNING, logger="reqtelemetry.collector"):
                    response = collector.send(make_payload(new_id(), new_id()))
                assert response.status_code == 422, response.text
                assert "retry-after" not in response.headers
                assert response.json()["error"] == "invalid_payload"
                assert "cannot hold" in caplog.text
                assert collector.reports_stored() == 0
                assert collector.refusals() == {"invalid_payload": 1}
        finally:
            server.stop()
            storage.close()


@pytest.mark.e2e
def test_an_unreachable_postgres_is_still_a_503() -> None:
    # Nothing listens on the port: psycopg's OperationalError is an outage,
    # worth retrying, unlike a value the database refuses.
    storage = open_storage(f"postgresql://postgres@127.0.0.1:{_free_port()}/postgres")
    server = ServerThread(create_app(collector_settings(), storage))
    server.start()
    try:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10.0) as http:
            collector = Collector(server.url, http, storage, collector_settings())
            response = collector.send(make_payload(new_id(), new_id()))
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"].isdigit()
            assert response.json()["error"] == "unavailable"
    finally:
        server.stop()
        storage.close()


# -- a report is committed while its client still waits, or not at all ----------------------


@pytest.mark.e2e
def test_a_report_held_up_past_its_budget_is_a_503_and_its_retry_is_stored_once(
    backend_storage: Storage,
) -> None:
    """Another writer holds the database past the report's budget: the report
    is answered 503 and nothing is written, so the client's copy is the only
    one. Committed once the lock cleared, it would have been counted twice
    (the client, having given up, sends the same data again)."""
    settings = collector_settings()
    app = create_app(settings, backend_storage, timing=Timing(commit_budget=0.3))
    server = ServerThread(app)
    server.start()
    try:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=5.0) as http:
            collector = Collector(server.url, http, backend_storage, settings)
            payload = make_payload(new_id(), new_id())
            body = envelope(
                collector.session(payload["deployment_id"], payload["instance_id"]), payload
            )
            with another_writer(location(backend_storage)):
                began = time.monotonic()
                response = collector.post_report(body)
                waited = time.monotonic() - began
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "unavailable"
            assert response.headers["retry-after"] == "1"
            assert waited < 3.0  # the budget, not SQLite's busy timeout or a lock's end
            assert collector.reports_stored() == 0
            # The client's retry (the same stamp), once the lock is gone: stored once.
            again = collector.post_report(body)
            assert again.status_code == 200, again.text
            assert collector.reports_stored() == 1
            assert backend_storage.totals(0)["requests"] == 12
    finally:
        server.stop()


@pytest.mark.e2e
def test_a_client_that_waits_less_gets_half_its_wait(collector: Collector) -> None:
    """A client stating a 0.4 s wait is answered within it, though the
    collector's own budget is seconds long."""
    payload = make_payload(new_id(), new_id())
    body = envelope(collector.session(payload["deployment_id"], payload["instance_id"]), payload)
    with another_writer(location(collector.storage)):
        began = time.monotonic()
        response = collector.http.post(
            "/v1/report", content=gzip.compress(body), headers={**GZIP, WAIT_HEADER: "0.4"}
        )
        waited = time.monotonic() - began
    assert response.status_code == 503, response.text
    assert waited < 3.0
    assert collector.reports_stored() == 0


@pytest.mark.e2e
def test_a_client_that_leaves_no_time_is_no_storage_outage(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    # A client at the end of its flush states a wait of 0: its report cannot
    # be stored, but the log announced a database outage with a traceback
    # ("in use by this collector until the deadline"), then its end.
    payload = make_payload(new_id(), new_id())
    body = envelope(collector.session(payload["deployment_id"], payload["instance_id"]), payload)
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry.collector"):
        response = collector.http.post(
            "/v1/report", content=gzip.compress(body), headers={**GZIP, WAIT_HEADER: "0"}
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "unavailable"
        assert collector.reports_stored() == 0
        # The same report, with time to be stored: stored, and no outage ends.
        assert collector.post_report(body).status_code == 200
    assert collector.reports_stored() == 1
    logged = [r for r in caplog.records if r.name.startswith("reqtelemetry.collector")]
    assert [r.getMessage() for r in logged if r.levelno >= logging.WARNING] == []
    assert any("too short to store it" in r.getMessage() for r in logged)


@pytest.mark.e2e
def test_a_late_stamp_with_no_time_left_to_look_it_up_is_no_storage_outage(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    # A late stamp sent with a wait of 0 cannot be looked up in time: the
    # answer cannot say, but the log announced a database that could not look
    # stamps up, with a traceback, then its recovery; anyone could set that
    # off without a valid session.
    deployment_id, instance_id = new_id(), new_id()
    case = Case(collector.session(deployment_id, instance_id), deployment_id, instance_id)
    text = case.text()
    token, stamp = _late_stamp(case, text)
    body = gzip.compress(envelope(token, text, stamp))
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry.collector"):
        response = collector.http.post(
            "/v1/report", content=body, headers={**GZIP, WAIT_HEADER: "0"}
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "unavailable"
        # With time to look it up: the stamp is stale, never stored.
        again = collector.http.post("/v1/report", content=body, headers=GZIP)
        assert again.status_code == 400, again.text
        assert again.json()["error"] == "stale_stamp"
    logged = [r for r in caplog.records if r.name.startswith("reqtelemetry.collector")]
    assert [r.getMessage() for r in logged if r.levelno >= logging.INFO] == []
    assert any("too short to look it up" in r.getMessage() for r in logged)


@pytest.mark.e2e
def test_a_final_report_held_up_by_the_database_is_said(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    # A final report at shutdown states its 2 s (a budget of 1 s): one held
    # up past it by the database is lost for good, and must be said, not
    # taken for a client that left no time.
    payload = make_payload(new_id(), new_id())
    body = envelope(collector.session(payload["deployment_id"], payload["instance_id"]), payload)
    with (
        caplog.at_level(logging.INFO, logger="reqtelemetry.collector"),
        another_writer(location(collector.storage)),
    ):
        response = collector.http.post(
            "/v1/report", content=gzip.compress(body), headers={**GZIP, WAIT_HEADER: "2.000"}
        )
    assert response.status_code == 503, response.text
    (first,) = _errors(caplog)
    assert first.getMessage().startswith("could not store a report within its 1.0 s")


@pytest.mark.e2e
def test_a_report_whose_time_went_on_its_slow_body_is_no_storage_outage(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    # A body that took its client's whole budget to arrive left no time to
    # store it: answered too slow, but a storage outage was logged with a
    # traceback, the database never asked.
    payload = make_payload(new_id(), new_id())
    body = gzip.compress(
        envelope(collector.session(payload["deployment_id"], payload["instance_id"]), payload)
    )
    port = int(collector.url.rsplit(":", 1)[1])
    with (
        caplog.at_level(logging.DEBUG, logger="reqtelemetry.collector"),
        socket.create_connection(("127.0.0.1", port), timeout=10) as connection,
    ):
        connection.sendall(
            b"POST /v1/report HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Encoding: gzip\r\n"
            + f"{WAIT_HEADER}: 1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        time.sleep(0.8)  # past the 0.5 s budget
        connection.sendall(body[10:])
        assert _answer_status(connection) == 503
    assert collector.reports_stored() == 0
    logged = [r for r in caplog.records if r.name.startswith("reqtelemetry.collector")]
    assert [r.getMessage() for r in logged if r.levelno >= logging.WARNING] == []
    assert any("too short to store it" in r.getMessage() for r in logged)


@pytest.mark.e2e
def test_a_body_past_the_cap_is_too_large_whatever_the_budget_holds(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checked against the budget first, a chunked body past the cap was told
    # "busy" (try again) where it is "too large" (split it): the client sent
    # the same body again and again, and the refusal was never counted.
    monkeypatch.setattr(collector_app, "VERIFY_CONCURRENCY", 2)
    monkeypatch.setattr(collector_app, "VERIFY_QUEUE", 2)
    app = create_app(collector_settings(max_body_bytes=1024), storage)  # a budget of 4 KiB
    server = ServerThread(app)
    server.start()
    try:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10.0) as http:
            for size in (5_000, 200_000):
                chunks = (b" " * 1000 for _ in range(size // 1000))  # chunked: no length
                response = http.post("/v1/report", content=chunks, headers=PLAIN)
                assert response.status_code == 413, (size, response.text)
        assert app.state.reading.held() == 0
    finally:
        server.stop()
    assert app.state.refusals.write() == 2


@pytest.mark.parametrize(
    ("stated", "budget"),
    [
        (None, 8.0),
        ("15.000", 7.5),
        ("4", 2.0),
        ("0.4", 0.2),
        ("0", 0.0),
        (" 3.5 ", 1.75),
        ("600", 8.0),  # never more than the collector's own
        ("-1", 8.0),
        ("1e3", 8.0),
        ("nan", 8.0),
        ("inf", 8.0),
        ("", 8.0),
        ("٣", 8.0),
        ("1" * 40, 8.0),
        # Any length of fraction: a float printed as it is, or zeros padded on.
        ("0.30000000000000004", 0.30000000000000004 / 2),
        ("0.0000000", 0.0),
        ("1.0000000", 0.5),
        # As a float prints: a leading or trailing dot, an exponent.
        ("1.", 0.5),
        (".5", 0.25),
        ("1e-05", 0.000005),
        ("1e999", 8.0),
        (".", 8.0),
        ("e5", 8.0),
    ],
)
def test_the_budget_is_at_most_half_the_clients_stated_wait(
    stated: str | None, budget: float
) -> None:
    assert commit_budget(stated, 8.0) == budget


def test_the_client_says_how_long_it_waits() -> None:
    assert wait_header(15.0) == "15.000"
    assert wait_header(0.0019) == "0.001"  # rounded down: saying more than we wait is not safe
    assert commit_budget(wait_header(4.9999), 8.0) <= 4.9999 / 2


# -- several apps behind one collector: both backends ---------------------------------------


def _send_all(collector: Collector, payloads: list[dict[str, Any]]) -> None:
    for payload in payloads:
        response = collector.send(payload)
        assert response.status_code == 200, response.text


@pytest.mark.e2e
def test_several_apps_are_told_apart(backend_collector: Collector) -> None:
    """Two apps on one collector serve the same route at interleaving versions:
    each is summarised, compared and exported on its own, and together."""
    collector = backend_collector
    inventory_a, inventory_b, billing, unnamed = new_id(), new_id(), new_id(), new_id()
    _send_all(
        collector,
        [
            make_payload(inventory_a, new_id(), app_name="inventory", app_version="1.0"),
            # 10 buckets (about 1.5 times) slower than inventory 1.0.
            make_payload(
                inventory_b,
                new_id(),
                app_name="inventory",
                app_version="1.1",
                records=default_records(10),
            ),
            # Between inventory's versions by number, and far slower: compared
            # across apps, it would make inventory 1.1 look faster.
            make_payload(
                billing,
                new_id(),
                app_name="billing",
                app_version="1.0.5",
                records=default_records(40),
            ),
            make_payload(unnamed, new_id(), app_version="1.0"),
        ],
    )

    every = collector.http.get("/api/summary", params={"days": 7}).json()
    assert every["app"] is None
    assert [
        (a["app_name"], a["deployments"], a["instances"], a["reports"]) for a in every["apps"]
    ] == [
        ("inventory", 2, 2, 2),
        (None, 1, 1, 1),
        ("billing", 1, 1, 1),
    ]
    assert every["totals"]["requests"] == 4 * 12
    assert {(v["app_name"], v["app_version"]) for v in every["versions"]} == {
        ("inventory", "1.0"),
        ("inventory", "1.1"),
        ("billing", "1.0.5"),
        (None, "1.0"),  # not inventory's 1.0
    }
    items = {
        (e["app_name"], e["app_version"]): e
        for e in every["endpoints_by_version"]
        if (e["method"], e["route"]) == ("GET", ROUTE_ITEM)
    }
    assert set(items) == {
        ("inventory", "1.0"),
        ("inventory", "1.1"),
        ("billing", "1.0.5"),
        (None, "1.0"),
    }
    newer = items[("inventory", "1.1")]
    assert newer["previous_version"] == "1.0"
    assert newer["p95_change"] == pytest.approx(
        newer["p95"] / items[("inventory", "1.0")]["p95"] - 1
    )
    assert newer["p95_change"] > 0.3
    for alone in (("billing", "1.0.5"), (None, "1.0"), ("inventory", "1.0")):
        assert items[alone]["previous_version"] is None, alone
    # Endpoints are listed per app, even where apps share a route; platforms add up.
    calls = {(e["app_name"], e["method"], e["route"]): e["calls"] for e in every["endpoints"]}
    assert calls == {
        ("inventory", "GET", ROUTE_ITEM): 2 * 9,
        ("inventory", "POST", ROUTE_CREATE): 2 * 3,
        ("billing", "GET", ROUTE_ITEM): 9,
        ("billing", "POST", ROUTE_CREATE): 3,
        (None, "GET", ROUTE_ITEM): 9,
        (None, "POST", ROUTE_CREATE): 3,
    }
    assert sum(p["instances"] for p in every["platforms"]) == 4

    one = collector.http.get("/api/summary", params={"days": 7, "app": "inventory"}).json()
    assert one["app"] == "inventory"
    assert one["apps"] == every["apps"]  # the others stay on offer
    assert one["totals"] == {
        "deployments": 2,
        "instances": 2,
        "reports": 2,
        "requests": 2 * 12,
        "errors": 2,
        "error_rate": pytest.approx(2 / 24),
    }
    assert one["activity"][-1]["deployments"] == 2 and one["activity"][-1]["instances"] == 2
    assert [(v["app_name"], v["app_version"]) for v in one["versions"]] == [
        ("inventory", "1.1"),
        ("inventory", "1.0"),
    ]
    assert {(e["method"], e["route"]): e["calls"] for e in one["endpoints"]} == {
        ("GET", ROUTE_ITEM): 18,
        ("POST", ROUTE_CREATE): 6,
    }
    assert {e["app_name"] for e in one["endpoints_by_version"]} == {"inventory"}
    assert sum(p["instances"] for p in one["platforms"]) == 2
    nobody = collector.http.get("/api/summary", params={"app": "nobody"}).json()
    assert nobody["totals"]["reports"] == 0 and nobody["endpoints"] == []
    assert nobody["versions"] == [] and nobody["platforms"] == []

    rows = list(csv.DictReader(io.StringIO(collector.http.get("/export.csv").text)))
    assert tuple(rows[0]) == COLUMNS and "app_name" in COLUMNS
    assert {(r["app_name"], r["app_version"]) for r in rows if r["method"] == "GET"} == {
        ("inventory", "1.0"),
        ("inventory", "1.1"),
        ("billing", "1.0.5"),
        ("", "1.0"),  # no name: an empty cell
    }
    billing_rows = list(
        csv.DictReader(
            io.StringIO(collector.http.get("/export.csv", params={"app": "billing"}).text)
        )
    )
    assert [(r["method"], r["app_name"], r["app_version"], r["calls"]) for r in billing_rows] == [
        ("GET", "billing", "1.0.5", "9"),
        ("POST", "billing", "1.0.5", "3"),
    ]


def _with_metrics(
    payload: dict[str, Any], counters: dict[str, float], gauges: dict[str, float]
) -> dict[str, Any]:
    payload["metrics"] = {"counters": counters, "gauges": gauges}
    return payload


@pytest.mark.e2e
def test_the_summary_shows_app_metrics_and_dropped_requests(backend_collector: Collector) -> None:
    """What telemetry.count() and telemetry.gauge() sent, and the requests past
    a client's key cap, read back through /api/summary, per app."""
    collector = backend_collector
    inventory_a, inventory_b = new_id(), new_id()
    overflow = record("_OTHER", "<overflow>", 0, 7, [[-130, 7]], 0.03)
    crowded = make_payload(
        inventory_b, new_id(), app_name="inventory", records=[*default_records(), overflow]
    )
    crowded["batch"]["dropped"] = 7
    _send_all(
        collector,
        [
            # Two instances of one deployment sample the same gauge: the newer counts.
            _with_metrics(
                make_payload(inventory_a, new_id(), app_name="inventory"),
                {"feature.export_pdf": 3},
                {"registered_apps": 10},
            ),
            _with_metrics(
                make_payload(inventory_a, new_id(), app_name="inventory"),
                {"feature.export_pdf": 2},
                {"registered_apps": 12},
            ),
            _with_metrics(crowded, {"feature.export_pdf": 1}, {"registered_apps": 4}),
            make_payload(new_id(), new_id(), app_name="billing"),  # jobs.completed: 2
        ],
    )

    every = collector.http.get("/api/summary", params={"days": 7}).json()
    assert every["metrics"] == {
        "counters": [
            {"app_name": "inventory", "name": "feature.export_pdf", "total": 6, "deployments": 2},
            {"app_name": "billing", "name": "jobs.completed", "total": 2, "deployments": 1},
        ],
        "counter_names": 2,
        "gauges": [
            {
                "app_name": "inventory",
                "name": "registered_apps",
                "sum": 16,  # 12 (not 10 + 12) and 4
                "median": 8,
                "max": 12,
                "deployments": 2,
            }
        ],
        "gauge_names": 1,
        "limit": 100,
    }
    assert every["dropped"] == {
        "requests": 7,
        "by_app": [{"app_name": "inventory", "requests": 7, "deployments": 1}],
        "left_out": 0,
    }
    # Counted in the totals all the same, under the overflow endpoint.
    assert every["totals"]["requests"] == 4 * 12 + 7

    billing = collector.http.get("/api/summary", params={"days": 7, "app": "billing"}).json()
    assert [(c["name"], c["total"]) for c in billing["metrics"]["counters"]] == [
        ("jobs.completed", 2)
    ]
    assert billing["metrics"]["gauges"] == []
    assert billing["dropped"] == {"requests": 0, "by_app": [], "left_out": 0}


@pytest.mark.e2e
def test_bad_app_names_are_a_400(backend_collector: Collector) -> None:
    # A NUL reaches PostgreSQL as an error, which would be a 503: refused first.
    collector = backend_collector
    for app in ("x" * 129, "\0", "inventory\0"):
        for path in ("/api/summary", "/export.csv"):
            response = collector.http.get(path, params={"app": app})
            assert response.status_code == 400, (path, app, response.text)
            assert response.json() == {
                "error": "bad_request",
                "detail": "app must be an app's name: at most 128 characters of text, without NUL",
            }
    longest = "é" * 128  # characters, as the payload schema counts them
    assert collector.http.get("/api/summary", params={"app": longest}).json()["app"] == longest
    assert collector.http.get("/export.csv", params={"app": longest}).status_code == 200
    assert collector.http.get("/api/summary", params={"app": ""}).json()["app"] is None


# -- the pieces without a server ----------------------------------------------------------------


#: Versions in the order of their releases (by ``summary.version_key`` and by
#: the dashboard's ``versionKey`` alike): strings that are no version first,
#: then PEP 440 and SemVer interleaved, ties broken by the text.
VERSIONS_IN_ORDER = [
    "\uffff",  # before U+1F600 by code point, after its UTF-16 surrogates
    "\U0001f600",
    " 1.0",
    "1..2",
    "3f2a9c1",
    "build-9",
    "build-10",
    "deadbeef",
    "latest",
    "main",
    "\u00dcn\u00efcode",
    "v",
    "0.0.0",
    "1.0.dev1",
    "1.0.0-0.3.7",
    "1.0-1",  # SemVer's pre-release, not PEP 440's post-release
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0a1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0b2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0rc1",
    "1.0.0-SNAPSHOT",
    "1.0.0-x.7.z.92",
    "1.0",
    "1.0+local.7",
    "1.0.0",
    "1.0.0+build.5",
    "1.0.post1",
    "1.01",
    "1.1",
    "1.2.3",
    "v1.2.3",
    "1.9",
    "1.9.0",
    "V1.10",
    "2.0.0b1",
    "2.0.0-rc.1",
    "2.0.0",
    "3.0.dev2",
    "3.0rc1",
    "3.0",
    "2024-01-15",
    "2024.02.01",
    "99999999999999999999998",
    "99999999999999999999999",
    "1!0.1",
]


def _in_version_order(versions: list[str]) -> list[str]:
    """``versions`` sorted from any starting order (the same result from each)."""
    orders = {
        tuple(sorted(random.Random(seed).sample(versions, len(versions)), key=version_key))
        for seed in range(5)
    }
    assert len(orders) == 1, orders
    return list(orders.pop())


def test_versions_compare_as_numbers() -> None:
    ordered = ["1.2", "1.9", "1.10", "2.0.0", "10.0"]
    assert sorted(reversed(ordered), key=version_key) == ordered
    rows = [
        {"method": "GET", "route": "/", "app_version": v, "calls": 1, "p95": p}
        for v, p in (("1.10", 0.2), ("1.9", 0.1), ("0.1", None))
    ]
    marked = {row["app_version"]: row for row in with_previous_version(rows)}
    assert marked["1.10"]["previous_version"] == "1.9"
    assert marked["1.10"]["p95_change"] == pytest.approx(1.0)
    assert marked["1.9"]["previous_version"] == "0.1"
    assert marked["1.9"]["p95_change"] is None  # nothing to compare with


@pytest.mark.parametrize(
    "ordered",
    [
        # PEP 440
        ["1.0.dev1", "1.0a1", "1.0b2", "1.0rc1", "1.0", "1.0.post1"],
        ["1.0a1", "1.0a1.post1.dev1", "1.0a1.post1", "1.0a2.dev1", "1.0a2", "1.0.post1.dev1"],
        ["1.0a", "1.0a1", "1.0-alpha.2", "1.0_b", "1.0c1", "1.0rc2", "1.0", "1.0r1", "1.0.post2"],
        # SemVer's own example, and its build metadata
        [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.0+20130313144700",
            "1.0.1",
        ],
        # what the review found: each pre-release before its release
        ["1.9.0", "2.0.0b1", "2.0.0-rc.1", "2.0.0", "3.0.dev2", "3.0rc1", "3.0"],
        ["v0.9", "1.2.3", "v1.2.3", "V1.2.4", "v1.10.0"],
        VERSIONS_IN_ORDER,
    ],
)
def test_versions_are_in_the_order_of_their_releases(ordered: list[str]) -> None:
    assert _in_version_order(ordered) == ordered


def test_a_release_is_compared_with_its_release_candidate() -> None:
    rows = [
        {"method": "GET", "route": "/", "app_version": v, "calls": 1, "p95": p}
        for v, p in (("2.0.0", 0.1), ("2.0.0-rc.1", 0.2), ("1.9.0", 0.4), ("2.0.0+build.7", None))
    ]
    marked = {row["app_version"]: row for row in with_previous_version(rows)}
    assert marked["2.0.0-rc.1"]["previous_version"] == "1.9.0"
    assert marked["2.0.0"]["previous_version"] == "2.0.0-rc.1"
    assert marked["2.0.0"]["p95_change"] == pytest.approx(-0.5)
    assert marked["1.9.0"]["previous_version"] is None


def test_every_string_has_a_version_key_of_its_own() -> None:
    """Never a crash, and no two strings alike: the order of rows never decides."""
    strange = ["", "\0", "9" * 5000, "1." * 64, "v" * 128, "-", "+", "1+", "1!", "\ud800"]
    keys = {version_key(text) for text in [*VERSIONS_IN_ORDER, *strange]}
    assert len(keys) == len(VERSIONS_IN_ORDER) + len(strange)
    # Equal meaning, distinct text: next to each other, in a fixed order.
    for same in (["1.0", "1.0.0", "v1"], ["1.0a0", "1.0a", "1.0.0-alpha"], ["1.0+a", "1.0+b"]):
        assert len({version_key(text)[:4] for text in same}) == 1, same
        assert _in_version_order([*same, "0.9", "1.0.1"]) == ["0.9", *sorted(same), "1.0.1"]


def test_versions_are_compared_within_their_app_only() -> None:
    rows = [
        {"method": "GET", "route": "/", "app_name": name, "app_version": v, "calls": 1, "p95": p}
        for name, v, p in (
            ("inventory", "1.1", 0.2),
            ("billing", "1.0.5", 0.8),
            ("inventory", "1.0", 0.1),
            (None, "1.0.7", 0.4),
            (None, "1.0.2", 0.5),
        )
    ]
    marked = {(row["app_name"], row["app_version"]): row for row in with_previous_version(rows)}
    assert marked[("inventory", "1.1")]["previous_version"] == "1.0"
    assert marked[("inventory", "1.1")]["p95_change"] == pytest.approx(1.0)
    assert marked[("billing", "1.0.5")]["previous_version"] is None
    # Rows without a name are compared among themselves, as before app names.
    assert marked[(None, "1.0.7")]["previous_version"] == "1.0.2"
    assert [row["app_version"] for row in with_previous_version(rows)] == [
        "1.1",
        "1.0.5",
        "1.0",
        "1.0.7",
        "1.0.2",
    ]


def test_the_longest_app_name_is_the_schemas() -> None:
    from reqtelemetry.collector.export import MAX_APP_NAME_LENGTH
    from reqtelemetry.schema_loader import load_payload_schema

    schema = load_payload_schema()
    assert schema["$defs"]["traits"]["properties"]["app_name"] == {"$ref": "#/$defs/short_text"}
    assert schema["$defs"]["short_text"]["maxLength"] == MAX_APP_NAME_LENGTH


def test_activity_has_every_bucket() -> None:
    day = 86400
    points = [{"bucket_start": 2.0 * day, "deployments": 1, "instances": 2}]
    filled = fill_activity(points, since=0.5 * day, now=3.2 * day, bucket=day)
    assert [p["bucket_start"] for p in filled] == [0.0, day, 2.0 * day, 3.0 * day]
    assert [p["instances"] for p in filled] == [0, 0, 2, 0]


def test_strict_json() -> None:
    assert parse_json(b'{"a": [1, 2.5, "\\ud83d\\ude00"]}') == {"a": [1, 2.5, "\U0001f600"]}
    for bad in (b"NaN", b"-Infinity", b"1e400", b'{"a":1,"a":2}', b"\xff", b'"\\udc00"'):
        with pytest.raises(ValueError):
            parse_json(bad)


def test_csv_cells_cannot_become_formulas() -> None:
    from reqtelemetry.collector.export import csv_chunks

    text = "".join(
        csv_chunks(
            [{"method": "GET", "route": '=HYPERLINK("http://x")', "app_version": "+1", "calls": 1}]
        )
    )
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["route"].startswith("'=")
    assert row["app_version"] == "'+1"


def test_csv_cells_after_a_semicolon_cannot_become_formulas_either() -> None:
    # Excel splits on ";" where the decimal separator is a comma (most of
    # Europe): there "shop;+HYPERLINK(A1)" was two cells, the second a formula.
    from reqtelemetry.collector.export import csv_chunks, write_csv

    row = {
        "method": "GET",
        "route": "/x;=cmd|'/C calc'!A0;@SUM(1+1)",
        "app_name": "shop;+HYPERLINK(A1)",
        "app_version": '1; -1+1;"=2',
        "calls": 1,
    }
    streamed = "".join(csv_chunks([row]))
    written = io.StringIO()
    write_csv([row], written)
    assert written.getvalue() == streamed
    line = streamed.splitlines()[1]
    for piece in line.split(";")[1:]:  # the cells a ";" spreadsheet makes
        assert not piece.lstrip(' "').startswith(("=", "+", "-", "@")), piece
    (read,) = csv.DictReader(io.StringIO(streamed))
    assert read["route"] == "/x;'=cmd|'/C calc'!A0;'@SUM(1+1)"
    assert read["app_name"] == "shop;'+HYPERLINK(A1)"
    assert read["app_version"] == "1;' -1+1;'\"=2"
    # Spaces or quotes before a formula at a cell's start are no way round either.
    for sneaky in (" =1+1", "\u00a0=1+1", '"=1+1', "  @SUM(1)"):
        (read,) = csv.DictReader(io.StringIO("".join(csv_chunks([{"route": sneaky}]))))
        assert read["route"].startswith("'"), sneaky
    # A route without a formula after its ";" keeps it as it was (matrix parameters).
    assert "".join(csv_chunks([{"route": "/a;b=1"}])).splitlines()[1].startswith(",/a;b=1,")


def test_csv_cells_carry_no_control_characters_to_a_terminal() -> None:
    # `reqtelemetry export --csv` writes to standard output: a sender's route
    # with escape sequences rewrote lines, the window's title, the clipboard.
    from reqtelemetry.collector.export import csv_chunks

    route = "/a\x1b[2K\r/fake\x1b]0;owned\x07\x9b31m\x7f\tend\nnext"
    text = "".join(csv_chunks([{"method": "GET", "route": route, "calls": 1}]))
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text.replace("\r\n", ""))
    (read,) = csv.DictReader(io.StringIO(text))
    assert read["route"] == ("/a\\x1b[2K\\x0d/fake\\x1b]0;owned\\x07\\x9b31m\\x7f\\x09end\\x0anext")
    # Printable text outside ASCII is kept as it is.
    (kept,) = csv.DictReader(io.StringIO("".join(csv_chunks([{"route": "/café/日本"}]))))
    assert kept["route"] == "/café/日本"
    # Nor does one carry characters that change how the text reads, unseen.
    unseen = "/files/\u202egpj.exe\u200b\u2028\U000e0041/\u00a0x"
    (read,) = csv.DictReader(io.StringIO("".join(csv_chunks([{"route": unseen}]))))
    assert read["route"] == "/files/\\u202egpj.exe\\u200b\\u2028\\U000e0041/\u00a0x"


# -- random input never makes a 5xx (in-process) ------------------------------------------------


@dataclass
class InProcess:
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    signer: TokenSigner
    storage: Storage

    def post(self, path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.loop.run_until_complete(
            self.client.post(path, content=content, headers=headers)
        )


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    opened = open_storage(db_url(tmp_path_factory.mktemp("fuzz") / "telemetry.db"))
    opened.migrate()
    app = create_app(collector_settings(max_body_bytes=64 * 1024), opened)
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://collector")
    yield InProcess(loop, client, TokenSigner(SECRET), opened)
    loop.run_until_complete(client.aclose())
    loop.close()
    opened.close()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
FUZZ_IDS = (new_id(), new_id())


@st.composite
def report_bodies(draw: st.DrawFn) -> bytes:
    """Bodies from pure noise to envelopes with valid tokens and stamps around broken reports."""
    kind = draw(st.sampled_from(["bytes", "json", "envelope", "stamped", "mutated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=512))
    if kind == "json":
        return dumps(draw(json_values)).encode()
    token = TokenSigner(SECRET).issue(*FUZZ_IDS)[0]
    if kind == "envelope":
        fields = draw(
            st.dictionaries(
                st.sampled_from(["token", "stamp", "payload", "extra"]),
                json_values | st.just(token),
                max_size=4,
            )
        )
        return dumps(fields).encode()
    if kind == "stamped":
        text = draw(st.text(max_size=200) | json_values.map(dumps))
    else:
        payload = make_payload(*FUZZ_IDS)
        target = draw(st.sampled_from([*payload, "batch.records", "traits"]))
        value = draw(json_values)
        if target == "batch.records":
            first = payload["batch"]["records"][0]
            first[draw(st.sampled_from(sorted(first)))] = value
        elif target == "traits":
            payload["traits"][draw(st.sampled_from(sorted(payload["traits"])))] = value
        else:
            payload[target] = value
        text = dumps(payload)
    return envelope(token, text)


@pytest.mark.timeout(300)
@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(["/v1/report", "/v1/session"]),
    body=report_bodies(),
    encoding=st.sampled_from(["none", "gzip", "gzip-header-only", "deflate"]),
)
def test_random_bodies_never_get_a_5xx(
    in_process: InProcess, path: str, body: bytes, encoding: str
) -> None:
    headers = {"Content-Type": "application/json"}
    if encoding == "gzip":
        body = gzip.compress(body)
    if encoding != "none":
        headers["Content-Encoding"] = "gzip" if encoding.startswith("gzip") else encoding
    response = in_process.post(path, body, headers)
    assert response.status_code < 500, response.text
    answer = response.json()
    event(f"{path} {response.status_code} {answer.get('error', '')}")
    if response.status_code >= 400:
        assert set(answer) == {"error", "detail"}
    else:
        assert set(answer) in ({"stored", "next_interval"}, {"token", "expires_at", "bits"})


# -- production mode and the command line ------------------------------------------------------


def test_production_without_a_secret_refuses_to_start() -> None:
    env = {"REQTELEMETRY_COLLECTOR_PRODUCTION": "1", "REQTELEMETRY_DASHBOARD_TOKEN": "t" * 16}
    with pytest.raises(SettingsError, match="REQTELEMETRY_COLLECTOR_SECRET"):
        CollectorSettings.resolve(env)
    with pytest.raises(SettingsError, match="REQTELEMETRY_COLLECTOR_SECRET"):
        CollectorSettings.resolve({"REQTELEMETRY_DASHBOARD_TOKEN": "t"}, production=True)
    with pytest.raises(SettingsError, match="at least 16 bytes"):
        CollectorSettings.resolve({**env, "REQTELEMETRY_COLLECTOR_SECRET": "short"})
    settings = CollectorSettings.resolve({**env, "REQTELEMETRY_COLLECTOR_SECRET": "s" * 32})
    assert settings.production and not settings.secret_generated
    assert "s" * 32 not in repr(settings)


def test_production_needs_dashboard_credentials_or_an_explicit_public_dashboard() -> None:
    env = {"REQTELEMETRY_COLLECTOR_PRODUCTION": "1", "REQTELEMETRY_COLLECTOR_SECRET": "s" * 32}
    with pytest.raises(SettingsError, match="REQTELEMETRY_DASHBOARD_TOKEN"):
        CollectorSettings.resolve(env)
    assert CollectorSettings.resolve({**env, "REQTELEMETRY_DASHBOARD_PUBLIC": "1"}).production
    basic = "me:pw:x-long-enough-for-production"
    settings = CollectorSettings.resolve({**env, "REQTELEMETRY_DASHBOARD_BASIC_AUTH": basic})
    assert settings.dashboard_basic_auth == ("me", "pw:x-long-enough-for-production")


def test_development_invents_a_secret_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="reqtelemetry.collector"):
        settings = CollectorSettings.resolve({})
    assert settings.secret_generated and len(settings.secret) >= 16
    assert not settings.production
    assert "will not survive a restart" in caplog.text
    assert settings.bits == 20 and settings.max_body_bytes == MIB


def test_settings_from_the_environment() -> None:
    settings = CollectorSettings.resolve(
        {
            "REQTELEMETRY_COLLECTOR_SECRET": "x" * 20,
            "REQTELEMETRY_COLLECTOR_DB": "sqlite:///elsewhere.db",
            "REQTELEMETRY_COLLECTOR_BITS": "12",
            "REQTELEMETRY_COLLECTOR_NEXT_INTERVAL": "600",
            "REQTELEMETRY_COLLECTOR_TOKEN_TTL": "120",
        },
        bits=14,
    )
    assert settings.db_url == "sqlite:///elsewhere.db"
    assert settings.bits == 14  # the flag wins
    assert settings.next_interval == 600.0 and settings.token_ttl == 120
    for name, value in (
        ("REQTELEMETRY_COLLECTOR_BITS", "lots"),
        ("REQTELEMETRY_COLLECTOR_BITS", "99"),
        ("REQTELEMETRY_COLLECTOR_NEXT_INTERVAL", "nan"),
        ("REQTELEMETRY_COLLECTOR_PRODUCTION", "maybe"),
    ):
        with pytest.raises(SettingsError, match=r"\w"):
            CollectorSettings.resolve({"REQTELEMETRY_COLLECTOR_SECRET": "x" * 20, name: value})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("REQTELEMETRY_COLLECTOR_MAX_BODY_BYTES", str(2**30 + 1), "from 1024 to 1073741824"),
        ("REQTELEMETRY_COLLECTOR_MAX_BODY_BYTES", "9" * 400, "(400 digits)"),
        ("REQTELEMETRY_COLLECTOR_MAX_BODY_BYTES", "1023", "from 1024"),
        ("REQTELEMETRY_COLLECTOR_TOKEN_TTL", str(7 * 86400 + 1), "from 60 to 604800"),
        ("REQTELEMETRY_COLLECTOR_TOKEN_TTL", "9" * 400, "(400 digits)"),
        ("REQTELEMETRY_COLLECTOR_TOKEN_TTL", "59", "from 60"),
    ],
)
def test_sizes_and_lifetimes_past_their_bounds_name_the_variable(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        CollectorSettings.resolve({"REQTELEMETRY_COLLECTOR_SECRET": "x" * 20, name: value})
    assert str(refused.value).startswith(f"{name} must be ")
    assert message in str(refused.value)
    assert len(str(refused.value)) < 200


def test_the_bounds_themselves_are_accepted() -> None:
    settings = CollectorSettings.resolve(
        {
            "REQTELEMETRY_COLLECTOR_SECRET": "x" * 20,
            "REQTELEMETRY_COLLECTOR_MAX_BODY_BYTES": str(2**30),
            "REQTELEMETRY_COLLECTOR_TOKEN_TTL": str(7 * 86400),
        }
    )
    assert settings.max_body_bytes == 2**30 and settings.token_ttl == 7 * 86400


def test_a_secret_that_is_not_utf8_is_used_as_its_bytes() -> None:
    # What os.environ hands over for bytes that are not UTF-8 (PEP 383): each
    # replica given the same bytes must sign with the same key.
    raw = b"\xff\xfe-random-bytes-0123456789"
    settings = CollectorSettings.resolve({"REQTELEMETRY_COLLECTOR_SECRET": os.fsdecode(raw)})
    assert settings.secret == raw
    token, _ = TokenSigner(settings.secret).issue(new_id(), new_id())
    assert TokenSigner(raw).verify(token).deployment_id


def test_bits_beyond_what_default_clients_accept_are_refused() -> None:
    # Clients refuse a collector asking more than max_proof_of_work_bits (24 by
    # default): a collector at 25 bits would silently receive nothing.
    secret = {"REQTELEMETRY_COLLECTOR_SECRET": "x" * 20}
    assert CollectorSettings.resolve(secret, bits=24).bits == 24
    for env, bits in (({"REQTELEMETRY_COLLECTOR_BITS": "25"}, None), ({}, 25)):
        with pytest.raises(SettingsError, match="max_proof_of_work_bits"):
            CollectorSettings.resolve({**secret, **env}, bits=bits)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REQTELEMETRY_COLLECTOR_NEXT_INTERVAL", "0"),
        ("REQTELEMETRY_COLLECTOR_NEXT_INTERVAL", "inf"),
        ("REQTELEMETRY_COLLECTOR_STAMP_MAX_AGE", "0"),
        ("REQTELEMETRY_COLLECTOR_STAMP_MAX_FUTURE", "-1"),
        ("REQTELEMETRY_COLLECTOR_TOKEN_TTL", "1"),
        ("REQTELEMETRY_COLLECTOR_MAX_BODY_BYTES", "10"),
        ("REQTELEMETRY_COLLECTOR_RETENTION_DAYS", "0"),
        ("REQTELEMETRY_COLLECTOR_BITS", "99"),
    ],
)
def test_a_setting_out_of_range_is_refused_naming_its_variable(variable: str, value: str) -> None:
    # The README promises an error that names the variable: two said
    # "next_interval must be positive" and "the stamp window must be finite".
    with pytest.raises(SettingsError, match=variable):
        CollectorSettings.resolve({"REQTELEMETRY_COLLECTOR_SECRET": "s" * 32, variable: value})


def test_production_refuses_a_placeholder_dashboard_token() -> None:
    env = {"REQTELEMETRY_COLLECTOR_PRODUCTION": "1", "REQTELEMETRY_COLLECTOR_SECRET": "s" * 32}
    for token in ("...", "t", "x" * 15):
        with pytest.raises(SettingsError, match="at least 16"):
            CollectorSettings.resolve({**env, "REQTELEMETRY_DASHBOARD_TOKEN": token})
    assert CollectorSettings.resolve({**env, "REQTELEMETRY_DASHBOARD_TOKEN": "x" * 16}).production
    # Development keeps accepting a short one (the tests' and the demo's).
    assert CollectorSettings.resolve({"REQTELEMETRY_DASHBOARD_TOKEN": "t"}).dashboard_protected


@pytest.mark.parametrize(
    "token",
    [" " + "x" * 20, "x" * 20 + "\n", "x" * 20 + " ", "\tx" + "y" * 20, "clé-" + "x" * 20],
)
def test_a_dashboard_token_no_client_can_send_is_refused(token: str) -> None:
    # A space at either end (left by an env file) or a character outside
    # ASCII matched only ?token=: the page opened, then its own requests,
    # which send the Authorization header, were all refused.
    with pytest.raises(SettingsError, match="printable ASCII"):
        CollectorSettings.resolve({"REQTELEMETRY_DASHBOARD_TOKEN": token})


@pytest.mark.e2e
def test_a_dashboard_token_a_link_must_encode_is_warned_of_and_works(
    make_collector: Callable[..., Collector], caplog: pytest.LogCaptureFixture
) -> None:
    token = "abc+def/ghi=jk lmnop"
    with caplog.at_level(logging.WARNING, logger="reqtelemetry.collector"):
        settings = CollectorSettings.resolve({"REQTELEMETRY_DASHBOARD_TOKEN": token})
    warned = [r.getMessage() for r in caplog.records if "percent-encode" in r.getMessage()]
    assert len(warned) == 1
    assert all(repr(char) in warned[0] for char in "+ ")
    assert not any(repr(char) in warned[0] for char in "/=")  # these arrive as written
    collector = make_collector(dashboard_token=settings.dashboard_token)
    header = {"Authorization": f"Bearer {token}"}
    assert collector.http.get("/api/summary", headers=header).status_code == 200
    assert collector.http.get("/api/summary", params={"token": token}).status_code == 200
    raw = token.replace(" ", "%20")  # pasted as it is: its '+' reads as a space
    assert collector.http.get(f"/api/summary?token={raw}").status_code == 401
    # A token whose characters a link keeps as they are is not warned of,
    # and opens the dashboard from a raw link.
    caplog.clear()
    kept = "Ab-9_x.y~/=:!*" * 2
    with caplog.at_level(logging.WARNING, logger="reqtelemetry.collector"):
        CollectorSettings.resolve({"REQTELEMETRY_DASHBOARD_TOKEN": kept})
    assert not [r for r in caplog.records if "percent-encode" in r.getMessage()]
    other = make_collector(dashboard_token=kept)
    assert other.http.get(f"/api/summary?token={kept}").status_code == 200


def test_production_refuses_a_short_basic_auth_password() -> None:
    # It opens the same pages as the token, which must be 16 characters.
    env = {"REQTELEMETRY_COLLECTOR_PRODUCTION": "1", "REQTELEMETRY_COLLECTOR_SECRET": "s" * 32}
    for password in ("a", "x" * 15, "\u00e9" * 15):
        basic = {"REQTELEMETRY_DASHBOARD_BASIC_AUTH": f"admin:{password}"}
        with pytest.raises(SettingsError, match=r"REQTELEMETRY_DASHBOARD_BASIC_AUTH.*at least 16"):
            CollectorSettings.resolve({**env, **basic})
        # Not even beside a good token: the weak password would still open the pages.
        with pytest.raises(SettingsError, match="REQTELEMETRY_DASHBOARD_BASIC_AUTH"):
            CollectorSettings.resolve({**env, **basic, "REQTELEMETRY_DASHBOARD_TOKEN": "x" * 32})
    basic = {"REQTELEMETRY_DASHBOARD_BASIC_AUTH": "admin:" + "x" * 16}
    assert CollectorSettings.resolve({**env, **basic}).dashboard_protected
    # Development keeps accepting a short one.
    development = CollectorSettings.resolve({"REQTELEMETRY_DASHBOARD_BASIC_AUTH": "a:b"})
    assert development.dashboard_protected


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REQTELEMETRY_")}
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    """The ``reqtelemetry`` command, run by this interpreter."""
    return [sys.executable, "-m", "reqtelemetry.cli", *args]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.e2e
def test_the_cli_refuses_production_without_a_secret(tmp_path: Path) -> None:
    port = _free_port()
    done = subprocess.run(
        cli("collector", "--production", "--port", str(port), "--db", db_url(tmp_path / "t.db")),
        env=_cli_env(REQTELEMETRY_DASHBOARD_TOKEN="t"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "REQTELEMETRY_COLLECTOR_SECRET" in done.stderr
    assert not (tmp_path / "t.db").exists()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("name", "value"),
    [
        # Accepted before: every gzip report was then a 500 (zlib's OverflowError).
        ("REQTELEMETRY_COLLECTOR_MAX_BODY_BYTES", "99999999999999999999"),
        # A traceback before: the token's expiry past a float's range.
        ("REQTELEMETRY_COLLECTOR_TOKEN_TTL", "9" * 400),
    ],
)
def test_the_cli_refuses_an_unusable_setting_in_one_line(
    tmp_path: Path, name: str, value: str
) -> None:
    done = subprocess.run(
        cli("collector", "--port", str(_free_port()), "--db", db_url(tmp_path / "t.db")),
        env=_cli_env(REQTELEMETRY_COLLECTOR_SECRET=SECRET.decode(), **{name: value}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "error:" in line]
    assert line.startswith(f"reqtelemetry collector: error: {name} must be from ")
    assert not (tmp_path / "t.db").exists()


@pytest.mark.e2e
def test_the_cli_takes_a_secret_that_is_not_utf8(tmp_path: Path) -> None:
    # A UnicodeEncodeError (a traceback) before. Production without dashboard
    # credentials stops just after the secret is read: that line, not a crash.
    env: dict[Any, Any] = _cli_env()
    env[b"REQTELEMETRY_COLLECTOR_SECRET"] = b"\xff\xfe-random-bytes-0123456789"
    done = subprocess.run(
        cli(
            "collector",
            "--production",
            "--port",
            str(_free_port()),
            "--db",
            db_url(tmp_path / "t.db"),
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "a production collector needs dashboard credentials" in done.stderr
    assert "REQTELEMETRY_COLLECTOR_SECRET" not in done.stderr


@pytest.mark.e2e
def test_the_cli_runs_a_collector_and_exports_csv(tmp_path: Path) -> None:
    port = _free_port()
    url = db_url(tmp_path / "cli.db")
    server = subprocess.Popen(
        cli("collector", "--db", url, "--port", str(port), "--bits", str(BITS)),
        env=_cli_env(REQTELEMETRY_COLLECTOR_SECRET=SECRET.decode()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5.0)
        deadline = time.monotonic() + 20
        while True:
            try:
                if http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.communicate()
            assert time.monotonic() < deadline, "the collector did not start"
            time.sleep(0.05)
        payload = make_payload(new_id(), new_id())
        session = http.post(
            "/v1/session",
            json={"deployment_id": payload["deployment_id"], "instance_id": payload["instance_id"]},
        ).json()
        assert session["bits"] == BITS
        stored = http.post(
            "/v1/report", content=gzip.compress(envelope(session["token"], payload)), headers=GZIP
        )
        assert stored.status_code == 200, stored.text
        http.close()
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=10)
    assert b"reqtelemetry collector" in stderr

    out = tmp_path / "endpoints.csv"
    done = subprocess.run(
        cli("export", "--db", url, "--csv", "--days", "1", "-o", str(out)),
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert {(r["method"], r["route"], r["calls"]) for r in rows} == {
        ("GET", ROUTE_ITEM, "9"),
        ("POST", ROUTE_CREATE, "3"),
    }
    to_stdout = subprocess.run(
        cli("export", "--db", url, "--csv"),
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert to_stdout.stdout.splitlines()[0] == ",".join(COLUMNS)


@pytest.mark.e2e
def test_a_dashboard_busy_with_other_summaries_is_a_503_not_an_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every read connection taken for the whole wait is a busy dashboard, not
    a failing database: it was logged as a storage outage, with a traceback."""
    storage = SQLiteStorage(str(tmp_path / "busy.db"), busy_timeout=0.2)
    storage.migrate()
    server = ServerThread(create_app(collector_settings(), storage))
    server.start()
    readers = storage._readers
    assert readers is not None
    held = [readers._slots.acquire(timeout=1) for _ in range(MAX_READERS)]
    try:
        with (
            httpx.Client(base_url=server.url, trust_env=False, timeout=10.0) as http,
            caplog.at_level(logging.INFO, logger="reqtelemetry.collector"),
        ):
            assert all(held)
            response = http.get("/api/summary")
            assert response.status_code == 503
            assert response.headers["retry-after"].isdigit()
            assert "too many dashboard reads" in response.json()["detail"]
            for _ in held:
                readers._slots.release()
            held = []
            assert http.get("/api/summary").status_code == 200
            collector = Collector(server.url, http, storage, collector_settings())
            assert collector.send(make_payload(new_id(), new_id())).status_code == 200
    finally:
        for _ in held:
            readers._slots.release()
        server.stop()
        storage.close()
    assert _errors(caplog) == []


class FewWorkerThreads:
    """The collector with ``tokens`` worker threads instead of anyio's 40:
    the same shortage, reached with a handful of requests."""

    def __init__(self, app: Starlette, tokens: int) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = self.tokens
        await self.app(scope, receive, send)


def ask_for_summary(url: str, answers: list[int]) -> None:
    """A dashboard page's question, from a thread: its status goes to ``answers``."""
    with httpx.Client(base_url=url, trust_env=False, timeout=60.0) as client:
        answers.append(client.get("/api/summary").status_code)


@pytest.mark.e2e
def test_summaries_waiting_for_a_read_turn_leave_the_worker_threads_to_reports(
    tmp_path: Path,
) -> None:
    """A summary waited for its read turn in a worker thread, the threads that
    reports are stored in: enough dashboard reads at once (40 with anyio's
    threads, 4 here) held every report up until they timed out. Now waiting
    summaries take no thread, and a report is stored while they wait; past
    the line's end, a summary is told to come back at once. A CSV export's
    query takes the same turns: 40 exports at once, each in a worker thread,
    stored 0.1 reports a second for five minutes."""
    storage = SQLiteStorage(str(tmp_path / "threads.db"), busy_timeout=30.0)
    storage.migrate()
    app = create_app(collector_settings(), storage)
    server = ServerThread(FewWorkerThreads(app, 4))
    server.start()
    readers = storage._readers
    assert readers is not None
    held = [readers._slots.acquire(timeout=1) for _ in range(MAX_READERS)]
    asking = collector_app.SUMMARY_CONCURRENCY + collector_app.SUMMARY_QUEUE
    answers: list[int] = []

    askers = [
        threading.Thread(target=ask_for_summary, args=(server.url, answers)) for _ in range(asking)
    ]
    try:
        assert all(held)
        for asker in askers:
            asker.start()
        deadline = time.monotonic() + 10.0
        while app.state.summary_gate.waiting() < collector_app.SUMMARY_QUEUE:
            assert time.monotonic() < deadline, "the summaries never lined up"
            time.sleep(0.01)
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10.0) as http:
            for late_path in ("/api/summary", "/export.csv"):
                late = http.get(late_path)
                assert late.status_code == 503
                assert "too many dashboard reads" in late.json()["detail"]
            collector = Collector(server.url, http, storage, collector_settings())
            assert collector.send(make_payload(new_id(), new_id())).status_code == 200
        assert answers == []  # every summary was still waiting meanwhile
    finally:
        for _ in held:
            readers._slots.release()
        for asker in askers:
            asker.join(timeout=30)
        server.stop()
        storage.close()
    assert answers == [200] * asking


@pytest.mark.e2e
def test_a_summary_given_up_while_it_waited_for_its_turn_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dashboard page closed, or switched to another period, while its
    summary waited for a turn: the summary was read all the same, and held a
    turn that the page's next question then waited for (156 s instead of 6 s
    for a 1-day view, on a large database)."""
    storage = SQLiteStorage(str(tmp_path / "abandoned.db"), busy_timeout=30.0)
    storage.migrate()
    read: list[int] = []
    real_refusals = storage.refusals

    def counted_refusals() -> dict[str, int]:  # a summary's first read
        read.append(1)
        return real_refusals()

    monkeypatch.setattr(storage, "refusals", counted_refusals)
    app = create_app(collector_settings(), storage)
    server = ServerThread(app)
    server.start()
    readers = storage._readers
    assert readers is not None
    held = [readers._slots.acquire(timeout=1) for _ in range(MAX_READERS)]
    answers: list[int] = []

    holders = [
        threading.Thread(target=ask_for_summary, args=(server.url, answers))
        for _ in range(MAX_READERS)
    ]
    try:
        assert all(held)
        for holder in holders:
            holder.start()
        deadline = time.monotonic() + 10.0
        gate = app.state.summary_gate
        # Every turn taken, its read waiting for the storage.
        while not any(line.semaphore.locked() for line in list(gate._loops.values())):
            assert time.monotonic() < deadline, "the summaries never took their turns"
            time.sleep(0.01)
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as page:
            page.sendall(f"GET /api/summary HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            while gate.waiting() < 1:
                assert time.monotonic() < deadline, "the third summary never lined up"
                time.sleep(0.01)
        # The page is gone; then the turns come free.
    finally:
        for _ in held:
            readers._slots.release()
        for holder in holders:
            holder.join(timeout=30)
    try:
        deadline = time.monotonic() + 10.0
        while gate.waiting():
            assert time.monotonic() < deadline, "the abandoned summary still waits"
            time.sleep(0.01)
        time.sleep(0.2)  # the turn it took, had it read, would have read by now
        assert answers == [200] * MAX_READERS
        assert len(read) == MAX_READERS
    finally:
        server.stop()
        storage.close()
