"""The whole stack for end-to-end tests: a real collector, real instrumented apps, real clients.

Nothing here is a stand-in. :func:`running_collector` serves
:func:`reqtelemetry.collector.app.create_app` with uvicorn on 127.0.0.1 (the
app opens, migrates and at shutdown closes its own storage, as in
production). :func:`start_client` makes a :class:`reqtelemetry.Telemetry`
that reports to it over loopback with the real protocol (session token,
hashcash stamp, gzip). :func:`starlette_shop` and :func:`flask_shop` are small
apps that the tests wrap in ``ASGIMiddleware`` / ``WSGIMiddleware`` and drive
with httpx, sending identifying "canary" strings in paths, queries, headers,
cookies and bodies (:class:`Traffic`), so a test can prove that none of them
reaches the collector's database (:meth:`Database.dump`).

:class:`Database` is one isolated database of either kind: a SQLite file in
``tmp_path``, or a scratch schema on the session's PostgreSQL server
(``tests/postgres.py``). It reads what was stored with its own driver
(``sqlite3`` / ``psycopg``), not through the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import sqlite3
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from receiver import ServerThread, settle
from reqtelemetry import Telemetry
from reqtelemetry.collector.app import create_app
from reqtelemetry.collector.settings import CollectorSettings
from reqtelemetry.collector.storage import open_storage
from reqtelemetry.collector.storage.base import StoredReport
from reqtelemetry.payload import UNPACED, Envelope, build_reports
from reqtelemetry.recorder import Recorder
from reqtelemetry.schema_loader import load_payload_schema
from reqtelemetry.transport import Outcome

SECRET = b"collector-e2e-secret-0123456789abcdef"
DASHBOARD_TOKEN = "e2e-dashboard-token-4f2b9c"
#: Real stamps at a difficulty that costs a few milliseconds.
LOW_BITS = 12
DAY = 86400.0
GZIP_JSON = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
VALIDATOR = jsonschema.Draft202012Validator(load_payload_schema())

#: Route templates as each framework spells them.
ITEM = "/items/{item_id}"
ITEMS = "/items"
BOOM = "/boom"
MEMBER = "/teams/{team}/members/{member}"
FLASK_ITEM = "/items/<item_id>"
UNMATCHED = "<unmatched>"

Key = tuple[str, str, int]


# -- databases -------------------------------------------------------------------------------


@dataclass
class Database:
    """One empty, isolated collector database (SQLite file or PostgreSQL schema)."""

    kind: str
    url: str
    path: Path | None = None

    def dump(self) -> bytes:
        """Everything stored, as bytes to search.

        SQLite: the raw bytes of the database file and its ``-wal`` and
        ``-shm`` files (whatever exists), so freed pages and uncheckpointed
        writes are searched too. PostgreSQL: every row of every table of the
        schema, each cast to text (``SELECT t::text FROM table t``).
        """
        if self.kind == "sqlite":
            assert self.path is not None
            return b"".join(
                Path(f"{self.path}{suffix}").read_bytes()
                for suffix in ("", "-wal", "-shm")
                if Path(f"{self.path}{suffix}").exists()
            )
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            tables = [
                row[0]
                for row in connection.execute(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
                    " ORDER BY table_name"
                )
            ]
            assert "aggregates" in tables and "reports" in tables, tables
            lines = [f"-- {name}" for name in tables]
            for name in tables:
                lines.append(f"-- table {name}")
                lines.extend(
                    row[0] for row in connection.execute(f'SELECT t::text FROM "{name}" AS t')
                )
        return "\n".join(lines).encode("utf-8")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of a read-only query, through the database's own driver."""
        if self.kind == "sqlite":
            assert self.path is not None
            connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                return [tuple(row) for row in connection.execute(sql)]
            finally:
                connection.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            return [tuple(row) for row in connection.execute(sql)]

    def counts_by_key(self) -> dict[Key, int]:
        """Stored requests per (method, route, status), added up over every report."""
        rows = self.query(
            "SELECT method, route, status, SUM(count) FROM aggregates GROUP BY 1, 2, 3"
        )
        return {(str(m), str(r), int(s)): int(n) for m, r, s, n in rows}

    def report_count(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM reports")[0][0])

    def stamps(self) -> list[str]:
        return [str(row[0]) for row in self.query("SELECT stamp FROM reports ORDER BY id")]


def sqlite_database(directory: Path) -> Database:
    path = directory / "collector.db"
    return Database("sqlite", f"sqlite:///{path}", path)


@contextlib.contextmanager
def postgres_database(server_url: str) -> Iterator[Database]:
    """A scratch schema of its own on the session's server, dropped afterwards."""
    from postgres import scratch_schema

    with scratch_schema(server_url) as url:
        yield Database("postgres", url)


@contextlib.contextmanager
def database_for(request: pytest.FixtureRequest, kind: str, directory: Path) -> Iterator[Database]:
    if kind == "sqlite":
        yield sqlite_database(directory)
    else:
        with postgres_database(request.getfixturevalue("postgres_url")) as database:
            yield database


# -- the collector ---------------------------------------------------------------------------


@dataclass
class Collector:
    """A collector served by uvicorn on 127.0.0.1, and a maintainer's client for it."""

    server: ServerThread
    settings: CollectorSettings
    #: Sends the dashboard's bearer token.
    http: httpx.Client
    #: Every HTTP request the collector was sent, as (method, path), in order.
    requests: list[tuple[str, str]] = field(default_factory=list)
    #: The app itself (``app.state.refusals.write()`` writes its refusal counts now).
    app: Starlette | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def summary(self, days: int = 30) -> dict[str, Any]:
        """``GET /api/summary``: the dashboard's data."""
        response = self.http.get("/api/summary", params={"days": days})
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def csv_text(self, days: int = 30) -> str:
        response = self.http.get("/export.csv", params={"days": days})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        return response.text

    def csv_rows(self, days: int = 30) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(self.csv_text(days))))


@contextlib.contextmanager
def running_collector(
    db_url: str, *, bits: int = LOW_BITS, secret: bytes = SECRET, port: int = 0, **overrides: Any
) -> Iterator[Collector]:
    """``create_app`` on its own storage, with its lifespan, stopped gracefully
    (so the app closes its database) when the block ends. ``port``: where an
    earlier collector listened, for a restart behind the same endpoint."""
    settings = CollectorSettings(
        secret=secret,
        db_url=db_url,
        bits=bits,
        dashboard_token=DASHBOARD_TOKEN,
        **overrides,
    )
    app = create_app(settings)
    seen: list[tuple[str, str]] = []

    async def logged(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append((scope["method"], scope["path"]))
        await app(scope, receive, send)

    server = ServerThread(logged, port=port, lifespan="on")
    server.start()
    http = httpx.Client(
        base_url=server.url,
        trust_env=False,
        timeout=30.0,
        headers={"Authorization": f"Bearer {DASHBOARD_TOKEN}"},
    )
    try:
        yield Collector(server, settings, http, seen, app)
    finally:
        http.close()
        server.stop(graceful=True)


# -- clients ---------------------------------------------------------------------------------


def isolate_client_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Telemetry(...)`` reads the environment and the command line: keep this
    machine's settings (an opt-out, an endpoint override) out of the test."""
    for name in list(os.environ):
        if name.startswith("REQTELEMETRY_") or name in ("SQA_OPT_OUT", "DO_NOT_TRACK"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "argv", ["shop"])


def start_client(
    collector_url: str,
    deployment_dir: Path,
    app_version: str,
    **options: Any,
) -> Telemetry:
    """A real client reporting to ``collector_url``, its startup report delivered.

    Instances made with the same ``deployment_dir`` belong to one deployment
    (the id persisted there), each with its own instance id.
    """
    settings: dict[str, Any] = {
        "send_in_tests": True,
        "flush_interval": 3600,
        "app_name": "e2e-shop",
        "app_version": app_version,
        "deployment_id_path": str(deployment_dir / "deployment_id"),
        "retry_base_delay": 0.01,
        "max_attempts": 3,
        "timeout": 10.0,
        "shutdown_timeout": 10.0,
        **options,
    }
    telemetry = Telemetry(endpoint=collector_url, **settings)
    assert telemetry.sending, "the client must send under the test runner (send_in_tests)"
    settle(telemetry, timeout=60.0)
    result = telemetry.flusher.last_result
    assert result is not None and result.outcome is Outcome.DELIVERED, result
    return telemetry


def deployment_id(deployment_dir: Path, collector_url: str, app_name: str = "e2e-shop") -> str:
    """The id :func:`start_client`'s instances send, from the one kept in ``deployment_dir``."""
    from reqtelemetry.traits import deployment_id_for

    kept = (deployment_dir / "deployment_id").read_text().strip()
    return deployment_id_for(kept, app_name, collector_url)


# -- instrumented apps and their traffic ------------------------------------------------------


def starlette_shop(delay: float = 0.0) -> Starlette:
    """Items, a mounted sub-router, an endpoint that fails; ``delay`` slows item reads."""

    async def get_item(request: Request) -> Response:
        if delay:
            await asyncio.sleep(delay)
        item_id = request.path_params["item_id"]
        if item_id == "0":
            return JSONResponse({"error": "no such item"}, status_code=404)
        return JSONResponse({"id": item_id, "name": "widget"})

    async def create_item(request: Request) -> Response:
        body = await request.body()
        return JSONResponse({"created": len(body)}, status_code=201)

    async def boom(request: Request) -> Response:
        return PlainTextResponse("the database is down", status_code=500)

    async def member(request: Request) -> Response:
        return JSONResponse(dict(request.path_params))

    return Starlette(
        routes=[
            Route(ITEM, get_item),
            Route(ITEMS, create_item, methods=["POST"]),
            Route(BOOM, boom),
            Mount("/teams/{team}", routes=[Route("/members/{member}", member)]),
        ]
    )


def flask_shop() -> Flask:
    app = Flask("e2e_shop")

    @app.get(FLASK_ITEM)
    def get_item(item_id: str) -> Any:
        return {"id": item_id}

    @app.post(ITEMS)
    def create_item() -> Any:
        from flask import request

        return {"created": len(request.get_data())}, 201

    @app.get(BOOM)
    def boom() -> Any:
        return "the database is down", 500

    return app


@dataclass(frozen=True)
class Canaries:
    """Identifying strings a request may carry, none of which may be stored."""

    path: str
    query: str
    header: str
    cookie: str
    authorization: str
    body: str
    ip: str

    @classmethod
    def new(cls) -> Canaries:
        tag = uuid.uuid4().hex[:12]
        return cls(
            path=f"path-canary-{tag}",
            query=f"query-canary-{tag}",
            header=f"header-canary-{tag}",
            cookie=f"cookie-canary-{tag}",
            authorization=f"auth-canary-{tag}",
            body=f"body-canary-{tag}",
            ip=f"203.0.113.{int(tag[:2], 16) % 250 + 1}",
        )

    def all(self) -> list[str]:
        return [
            self.path,
            self.query,
            self.header,
            self.cookie,
            self.authorization,
            self.body,
            self.ip,
        ]

    def headers(self) -> dict[str, str]:
        return {
            "X-Customer": self.header,
            "User-Agent": f"shop-client/1.0 ({self.header})",
            "Authorization": f"Bearer {self.authorization}",
            "Cookie": f"session={self.cookie}",
            "X-Forwarded-For": self.ip,
            "Referer": f"https://shop.example/{self.path}?q={self.query}",
        }

    def assert_absent(self, data: bytes, where: str) -> None:
        found = [canary for canary in self.all() if canary.encode() in data]
        assert not found, f"identifying data reached {where}: {found}"


@dataclass
class Traffic:
    """Sends requests and keeps the exact count expected per (method, route, status)."""

    client: httpx.Client
    canaries: Canaries
    expected: Counter[Key] = field(default_factory=Counter)

    def call(
        self, method: str, url: str, route: str, status: int, *, times: int = 1, **kwargs: Any
    ) -> None:
        separator = "&" if "?" in url else "?"
        url = f"{url}{separator}email={self.canaries.query}&token={self.canaries.query}"
        for _ in range(times):
            response = self.client.request(method, url, headers=self.canaries.headers(), **kwargs)
            assert response.status_code == status, (method, url, response.text)
        self.expected[(method, route, status)] += times

    def starlette_mix(self, reads: int) -> None:
        """What every Starlette instance serves (``reads`` successful item reads)."""
        c = self.canaries
        self.call("GET", f"/items/{c.path}", ITEM, 200, times=reads)
        self.call("GET", "/items/0", ITEM, 404)
        self.call("POST", ITEMS, ITEMS, 201, times=2, json={"note": c.body})
        self.call("GET", BOOM, BOOM, 500)
        self.call("GET", f"/teams/{c.path}/members/{c.header}", MEMBER, 200, times=2)
        self.call("GET", f"/{c.path}/wp-login.php", UNMATCHED, 404, times=3)


# -- reports stored directly (for what the protocol cannot make: the past) ---------------------


def store_old_report(
    db_url: str,
    deployment: str,
    app_version: str,
    calls: list[tuple[str, str, int, float]],
    days_ago: float,
    app_name: str | None = None,
) -> None:
    """Store a report as if received ``days_ago`` days ago, through the storage API.

    The collector stamps ``received_at`` with its own clock, so only storage can
    hold a report from last month: the way an endpoint becomes "unused" (known,
    but without calls in the dashboard's window). The report itself is built by
    the client's own code (recorder, payload) and checked against the schema.
    """
    recorder = Recorder()
    for method, route, status, latency in calls:
        recorder.record(method, route, status, latency, 0, 64)
    envelope = Envelope(
        kind="periodic",
        sequence=0,
        deployment_id=deployment,
        instance_id=str(uuid.uuid4()),
        traits={
            "os": "linux",
            "arch": "x86_64",
            "python_version": "3.11.2",
            "framework": "starlette",
            "app_name": app_name,
            "app_version": app_version,
        },
        withheld=[],
        metrics={"counters": {}, "gauges": {}},
    )
    (report,) = build_reports(envelope, recorder.collect(), max_bytes=1_000_000, pacing=UNPACED)
    payload = json.loads(report.body)
    errors = [error.message for error in VALIDATOR.iter_errors(payload)]
    assert not errors, errors
    storage = open_storage(db_url)
    try:
        storage.migrate()
        storage.store(
            StoredReport(
                stamp=f"seeded-{uuid.uuid4().hex}",
                received_at=time.time() - days_ago * DAY,
                payload=payload,
            )
        )
    finally:
        storage.close()


def protocol_payload(
    deployment: str, instance: str, calls: list[tuple[str, str, int, float]], app_version: str
) -> bytes:
    """The exact bytes of a schema-valid report, built by the client's own code."""
    recorder = Recorder()
    for method, route, status, latency in calls:
        recorder.record(method, route, status, latency, 10, 100)
    envelope = Envelope(
        kind="periodic",
        sequence=0,
        deployment_id=deployment,
        instance_id=instance,
        traits={"os": "linux", "arch": "x86_64", "app_version": app_version},
        withheld=[],
        metrics={"counters": {}, "gauges": {}},
    )
    (report,) = build_reports(envelope, recorder.collect(), max_bytes=1_000_000, pacing=UNPACED)
    errors = [error.message for error in VALIDATOR.iter_errors(json.loads(report.body))]
    assert not errors, errors
    return report.body
