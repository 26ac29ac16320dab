"""Collector storage: one suite, run against SQLite and a real PostgreSQL.

Reports are built the way a client builds them (recorder → payload.build_reports)
and checked against the JSON Schema, then stored; every dashboard question is
compared with numbers worked out by hand from the latencies that went in.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sqlite3
import string
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest

from db_locks import another_writer, location
from reqtelemetry.collector.storage import (
    SchemaMismatch,
    database_errors,
    describe_database,
    mask_passwords,
    open_storage,
    shown_part,
)
from reqtelemetry.collector.storage import sql as sql_module
from reqtelemetry.collector.storage.base import (
    MAX_ENDPOINT_VERSIONS,
    MAX_ENDPOINTS,
    MAX_PLATFORMS,
    MAX_UNUSED_ENDPOINTS,
    MAX_VERSIONS,
    CommitUnknown,
    DeadlineExceeded,
    EndpointLimits,
    ReplayError,
    StoredReport,
    UnstorableReport,
)
from reqtelemetry.collector.storage.postgres import CANCEL_TIMEOUT, PostgresStorage
from reqtelemetry.collector.storage.sql import SQLStorage
from reqtelemetry.collector.storage.sqlite import SQLiteStorage
from reqtelemetry.histogram import bucket_index, bucket_value
from reqtelemetry.payload import UNPACED, Envelope, build_reports
from reqtelemetry.recorder import Recorder
from reqtelemetry.schema_loader import load_payload_schema

#: A whole hour in Unix seconds, so hourly buckets start exactly here.
T = 1_699_999_200.0
assert T % 3600 == 0

VALIDATOR = jsonschema.Draft202012Validator(load_payload_schema())
#: The schema version this release migrates to.
LATEST = 4

DEP_A = "aaaaaaaa-0000-4000-8000-000000000001"
DEP_B = "bbbbbbbb-0000-4000-8000-000000000002"
A1 = "a1a1a1a1-0000-4000-8000-000000000011"
A2 = "a2a2a2a2-0000-4000-8000-000000000012"
B1 = "b1b1b1b1-0000-4000-8000-000000000021"

LINUX = {"os": "linux", "arch": "x86_64", "python_version": "3.12.7", "framework": "fastapi"}
MAC = {"os": "darwin", "arch": "arm64", "python_version": "3.11.9", "framework": "flask"}


# -- building reports as a client does ----------------------------------------------------


#: (method, route, status, latencies in seconds, request bytes each, response bytes each)
Calls = tuple[str, str, int, list[float], int, int]


def make_payload(
    deployment_id: str,
    instance_id: str,
    traits: dict[str, Any],
    calls: list[Calls],
    metrics: dict[str, dict[str, float]] | None = None,
    sequence: int = 0,
) -> dict[str, Any]:
    """A schema-valid report carrying exactly these requests."""
    recorder = Recorder()
    for method, route, status, latencies, request_bytes, response_bytes in calls:
        for latency in latencies:
            recorder.record(method, route, status, latency, request_bytes, response_bytes)
    envelope = Envelope(
        kind="periodic",
        sequence=sequence,
        deployment_id=deployment_id,
        instance_id=instance_id,
        traits=traits,
        withheld=[],
        metrics=metrics or {"counters": {}, "gauges": {}},
    )
    (report,) = build_reports(envelope, recorder.collect(), max_bytes=1_000_000, pacing=UNPACED)
    payload: dict[str, Any] = json.loads(report.body)
    errors = [error.message for error in VALIDATOR.iter_errors(payload)]
    assert not errors, errors
    return payload


def stored(payload: dict[str, Any], received_at: float, stamp: str | None = None) -> StoredReport:
    return StoredReport(
        stamp=stamp or f"1:20:231114220000:{uuid.uuid4().hex}::r:{uuid.uuid4().hex[:8]}",
        received_at=received_at,
        payload=payload,
    )


#: The scenario every query test reads. Latencies are chosen so that each
#: percentile falls on a different request.
OLD = make_payload(
    DEP_B, B1, {**LINUX, "app_version": "1.1"}, [("GET", "/old", 200, [0.005], 0, 10)]
)
R1 = make_payload(
    DEP_A,
    A1,
    {**LINUX, "app_version": "1.0"},
    [
        ("GET", "/items/{item_id}", 200, [0.010, 0.012, 0.020], 0, 100),
        ("POST", "/items", 201, [0.050], 300, 20),
        ("GET", "/items/{item_id}", 500, [0.200], 0, 50),
    ],
    metrics={"counters": {"jobs.done": 5}, "gauges": {"queue.depth": 2}},
)
R2 = make_payload(
    DEP_A,
    A2,
    {**MAC, "app_version": "1.1"},
    [("GET", "/items/{item_id}", 200, [0.030, 0.040], 0, 100)],
)
R3 = make_payload(
    DEP_B,
    B1,
    {**LINUX, "app_version": "1.1"},
    [
        ("GET", "/items/{item_id}", 200, [0.015], 0, 100),
        ("GET", "/items/{item_id}", 503, [1.5], 0, 0),
    ],
    sequence=1,
)
SCENARIO = [(OLD, T - 5000), (R1, T + 100), (R2, T + 200), (R3, T + 7300)]


def bucketed(seconds: float) -> float:
    """What a histogram reports for a latency of ``seconds``: its bucket's value."""
    return bucket_value(bucket_index(seconds))


# -- the two backends ----------------------------------------------------------------------


@dataclass
class Backend:
    """Opens (unmigrated) storages on one fresh database of one kind
    (``open(read_only=True)`` as ``reqtelemetry export`` does)."""

    name: str
    open: Callable[..., SQLStorage]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    opened: list[SQLStorage] = []

    def track(factory: Callable[..., Any]) -> Callable[..., SQLStorage]:
        def open_one(**options: Any) -> SQLStorage:
            storage = factory(**options)
            opened.append(storage)
            return storage

        return open_one

    def close_all() -> None:
        for storage in opened:
            storage.close()

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'collector.db'}"
        yield Backend("sqlite", track(lambda **options: open_storage(url, **options)))
        close_all()
    else:
        from postgres import scratch_schema

        with scratch_schema(request.getfixturevalue("postgres_url")) as url:
            yield Backend("postgres", track(lambda **options: open_storage(url, **options)))
            close_all()  # before the schema is dropped


@pytest.fixture
def storage(backend: Backend) -> SQLStorage:
    storage = backend.open()
    storage.migrate()
    return storage


@pytest.fixture
def scenario(storage: SQLStorage) -> SQLStorage:
    for payload, received_at in SCENARIO:
        storage.store(stored(payload, received_at))
    return storage


def row_counts(storage: SQLStorage) -> dict[str, int]:
    tables = ("deployments", "instances", "reports", "aggregates", "metrics", "refusals")

    def work(ex: Any) -> dict[str, int]:
        return {table: int(ex.query(f"SELECT COUNT(*) FROM {table}")[0][0]) for table in tables}

    return storage._run(work)


# -- migrations ------------------------------------------------------------------------------


def test_backend_is_the_right_class(backend: Backend) -> None:
    storage = backend.open()
    expected = SQLiteStorage if backend.name == "sqlite" else PostgresStorage
    assert isinstance(storage, expected)


def test_migrate_is_idempotent(backend: Backend) -> None:
    storage = backend.open()
    assert storage.schema_version() == 0
    storage.migrate()
    assert storage.schema_version() == max(m.version for m in storage.migrations) == LATEST
    storage.store(stored(R1, T + 100))
    storage.migrate()
    assert storage.schema_version() == max(m.version for m in storage.migrations)
    assert storage.totals(0)["reports"] == 1

    def versions(ex: Any) -> list[int]:
        return [int(row[0]) for row in ex.query("SELECT version FROM schema_migrations")]

    assert sorted(storage._run(versions)) == sorted(m.version for m in storage.migrations)


def test_two_replicas_migrating_at_once(backend: Backend) -> None:
    replicas = [backend.open(), backend.open()]
    barrier = threading.Barrier(len(replicas))
    errors: list[BaseException] = []

    def start(storage: SQLStorage) -> None:
        barrier.wait()
        try:
            storage.migrate()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    for replica in replicas:
        assert replica.schema_version() == LATEST
    replicas[0].store(stored(R1, T + 100))
    assert replicas[1].totals(0)["reports"] == 1


def test_check_schema_reads_the_version_and_never_creates_anything(backend: Backend) -> None:
    # What `reqtelemetry export` runs instead of migrate(): a typo'd or empty
    # database is an error, not a new schema.
    writer = backend.open()  # an empty database (SQLite: the file now exists)
    empty = backend.open(read_only=True)
    with pytest.raises(SchemaMismatch, match="no reqtelemetry tables"):
        empty.check_schema()
    assert writer.schema_version() == 0  # still nothing there
    writer.migrate()
    writer.store(stored(R1, T + 100))
    reader = backend.open(read_only=True)
    assert reader.check_schema() == max(m.version for m in reader.migrations)
    assert reader.totals(0)["reports"] == 1
    # The database itself refuses a reader's writes.
    with pytest.raises(Exception, match=r"(?i)read.?only"):
        reader.store(stored(R2, T + 200))
    assert writer.totals(0)["reports"] == 1

    def newer(ex: Any) -> None:
        ex.execute(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
            (999, "from the future", T),
        )

    writer._run(newer, write=True)
    with pytest.raises(SchemaMismatch, match="newer than this release reads"):
        reader.check_schema()


def store_at_version_1(storage: SQLStorage, payload: dict[str, Any], received_at: float) -> None:
    """Store ``payload`` as the version-1 code did: the columns of the version-1
    tables only (no ``app_name`` anywhere)."""
    traits = payload["traits"]
    batch = payload["batch"]
    deployment_id, instance_id = payload["deployment_id"], payload["instance_id"]
    version = traits.get("app_version")
    json_param = storage.dialect.json_param

    def work(ex: Any) -> None:
        ex.execute(
            "INSERT INTO deployments (id, first_seen, last_seen) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO NOTHING",
            (deployment_id, received_at, received_at),
        )
        ex.execute(
            "INSERT INTO instances (id, deployment_id, traits, app_version, os, arch,"
            " python_version, framework, first_seen, last_seen)"
            f" VALUES (?, ?, {json_param}, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                instance_id,
                deployment_id,
                json.dumps(traits),
                version,
                *(traits.get(name) for name in ("os", "arch", "python_version", "framework")),
                received_at,
                received_at,
            ),
        )
        ((report_id,),) = ex.query(
            "INSERT INTO reports (stamp, deployment_id, instance_id, app_version, kind,"
            " sequence, part, parts, sent_at, received_at, period_start, period_end)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                uuid.uuid4().hex,
                deployment_id,
                instance_id,
                version,
                payload["kind"],
                payload["sequence"],
                payload["part"],
                payload["parts"],
                payload["sent_at"],
                received_at,
                batch["period_start"],
                batch["period_end"],
            ),
        )
        for record in batch["records"]:
            ex.execute(
                "INSERT INTO aggregates (report_id, instance_id, deployment_id, app_version,"
                " received_at, period_start, period_end, method, route, status, count,"
                " latency_sum, latency_min, latency_max, histogram, request_bytes,"
                " response_bytes)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {json_param}, ?, ?)",
                (
                    report_id,
                    instance_id,
                    deployment_id,
                    version,
                    received_at,
                    batch["period_start"],
                    batch["period_end"],
                    record["method"],
                    record["route"],
                    record["status"],
                    record["count"],
                    record["latency"]["sum"],
                    record["latency"]["min"],
                    record["latency"]["max"],
                    json.dumps(record["latency"]["histogram"]),
                    record["request_bytes"],
                    record["response_bytes"],
                ),
            )

    storage._run(work, write=True)


#: Every version-1 column of the tables that gained ``app_name``, in a stable order.
V1_ROWS = {
    "instances": "SELECT id, deployment_id, app_version, os, arch, python_version, framework,"
    " first_seen, last_seen FROM instances ORDER BY id",
    "reports": "SELECT id, stamp, deployment_id, instance_id, app_version, kind, sequence,"
    " received_at FROM reports ORDER BY id",
    "aggregates": "SELECT id, report_id, instance_id, app_version, method, route, status,"
    " count, latency_sum, request_bytes, response_bytes FROM aggregates ORDER BY id",
}


def v1_rows(storage: SQLStorage) -> dict[str, list[tuple[Any, ...]]]:
    return storage._run(
        lambda ex: {table: [tuple(row) for row in ex.query(sql)] for table, sql in V1_ROWS.items()}
    )


#: A version-1 report from a client that named its app (``traits.app_name`` has
#: always been sent; version 1 kept it only in ``instances.traits``).
DEP_NAMED = "ffffffff-0000-4000-8000-000000000006"
NAMED = "f1f1f1f1-0000-4000-8000-000000000061"
NAMED_AT_V1 = make_payload(
    DEP_NAMED,
    NAMED,
    {**MAC, "app_name": "billing", "app_version": "3.0"},
    [("POST", "/invoices", 201, [0.100], 50, 20)],
)


def test_a_version_1_database_is_migrated_in_place(backend: Backend) -> None:
    """A collector database made by the release before app names: upgraded where
    it stands, every row kept, each named as its instance's traits say (or
    unknown), new reports named."""
    old = backend.open()
    old.migrations = old.migrations[:1]  # the release before this one
    old.migrate()
    assert old.schema_version() == 1
    for payload, received_at in [*SCENARIO, (NAMED_AT_V1, T + 50)]:
        store_at_version_1(old, payload, received_at)
    before, counts_before = v1_rows(old), row_counts(old)
    # An exporter of this release refuses the old schema rather than misreading it.
    older = rf"version 1, older than this release reads \({LATEST}\)"
    with pytest.raises(SchemaMismatch, match=older):
        backend.open(read_only=True).check_schema()

    storage = backend.open()
    storage.migrate()
    assert storage.schema_version() == LATEST
    assert backend.open(read_only=True).check_schema() == LATEST
    assert v1_rows(storage) == before
    assert row_counts(storage) == counts_before

    def names(ex: Any) -> dict[str, list[tuple[Any, ...]]]:
        return {
            table: sorted(
                (tuple(row) for row in ex.query(f"SELECT instance_id, app_name FROM {table}")),
                key=repr,
            )
            for table in ("reports", "aggregates")
        } | {"instances": sorted(tuple(r) for r in ex.query("SELECT id, app_name FROM instances"))}

    # Named from the instance's traits where the client named its app; else unknown.
    assert storage._run(names) == {
        "instances": [(A1, None), (A2, None), (B1, None), (NAMED, "billing")],
        "reports": sorted(
            [(A1, None), (A2, None), (B1, None), (B1, None), (NAMED, "billing")], key=repr
        ),
        "aggregates": sorted(
            [(A1, None)] * 3 + [(A2, None)] + [(B1, None)] * 3 + [(NAMED, "billing")], key=repr
        ),
    }
    # The old rows answer the dashboard's questions as before.
    assert storage.totals(0) == {
        "deployments": 3,
        "instances": 4,
        "reports": 5,
        "requests": 11,
        "errors": 2,
    }
    assert [
        (v["app_name"], v["app_version"], v["deployments"]) for v in storage.versions(T)["versions"]
    ] == [
        (None, "1.1", 2),
        (None, "1.0", 1),
        ("billing", "3.0", 1),
    ]
    assert storage.apps(0)["apps"] == [
        {"app_name": None, "deployments": 2, "instances": 3, "reports": 4, "last_seen": T + 7300},
        {
            "app_name": "billing",
            "deployments": 1,
            "instances": 1,
            "reports": 1,
            "last_seen": T + 50,
        },
    ]

    # A new report from an instance stored before: its rows are named, and the
    # instance now belongs to the app.
    named = make_payload(
        DEP_A,
        A1,
        {**LINUX, "app_name": "inventory", "app_version": "1.2"},
        [("GET", "/items/{item_id}", 200, [0.025], 0, 100)],
        sequence=2,
    )
    storage.store(stored(named, T + 8000))
    assert [app["app_name"] for app in storage.apps(T + 7500)["apps"]] == ["inventory"]
    assert storage.totals(0, app="inventory")["requests"] == 1
    assert storage.totals(0)["requests"] == 12
    # The named app's endpoint from before the upgrade is one row, not a second
    # "unknown" copy that would read as unused once its calls leave the window.
    billing_later = make_payload(
        DEP_NAMED, NAMED, {**MAC, "app_name": "billing", "app_version": "3.0"}, [], sequence=1
    )
    storage.store(stored(billing_later, T + 9000))
    assert [
        (e["app_name"], e["method"], e["route"], e["calls"])
        for e in storage.endpoints(T + 8500, by_app=True)
        if e["route"] == "/invoices"
    ] == [("billing", "POST", "/invoices", 0)]
    assert [
        (p["framework"], p["instances"]) for p in storage.platforms(0, app="inventory")["platforms"]
    ] == [("fastapi", 1)]
    (row,) = storage.endpoints(0, by_version=True, app="inventory")
    assert (row["app_name"], row["app_version"], row["calls"]) == ("inventory", "1.2", 1)


# -- storing and replays -------------------------------------------------------------------


def test_replay_is_refused_and_writes_nothing(scenario: SQLStorage) -> None:
    stamp = "1:20:231114220000:replayed::r:1"
    scenario.store(stored(R2, T + 300, stamp=stamp))
    before = row_counts(scenario)
    platforms_before = scenario.platforms(T + 8000)["platforms"]
    # The same stamp again: later, from the same instance and from another.
    with pytest.raises(ReplayError):
        scenario.store(stored(R2, T + 9000, stamp=stamp))
    with pytest.raises(ReplayError):
        scenario.store(stored(R1, T + 9000, stamp=stamp))
    assert row_counts(scenario) == before
    # Had the instance rows been touched, A1 and A2 would now look active at T + 9000.
    assert scenario.platforms(T + 8000)["platforms"] == platforms_before
    assert scenario.totals(T + 8000)["reports"] == 0


def test_store_writes_every_row(scenario: SQLStorage) -> None:
    assert row_counts(scenario) == {
        "deployments": 2,
        "instances": 3,
        "reports": 4,
        "aggregates": 1 + 3 + 1 + 2,
        "metrics": 2,
        "refusals": 0,
    }


def test_empty_report_is_stored(storage: SQLStorage) -> None:
    storage.store(stored(make_payload(DEP_A, A1, LINUX, []), T))
    assert storage.totals(0) == {
        "deployments": 1,
        "instances": 1,
        "reports": 1,
        "requests": 0,
        "errors": 0,
    }
    assert storage.endpoints(0) == []


# -- the dashboard's questions -------------------------------------------------------------


def test_empty_database_answers_zeros(storage: SQLStorage) -> None:
    assert storage.totals(0) == {
        "deployments": 0,
        "instances": 0,
        "reports": 0,
        "requests": 0,
        "errors": 0,
    }
    assert storage.activity(0, 3600) == []
    assert storage.versions(0)["versions"] == []
    assert storage.endpoints(0) == []
    assert storage.endpoints(0, by_version=True) == []
    assert storage.platforms(0)["platforms"] == []
    assert storage.refusals() == {}


def test_totals(scenario: SQLStorage) -> None:
    assert scenario.totals(T) == {
        "deployments": 2,
        "instances": 3,
        "reports": 3,
        "requests": 3 + 1 + 1 + 2 + 1 + 1,
        "errors": 2,  # the 500 and the 503
    }
    assert scenario.totals(0) == {
        "deployments": 2,
        "instances": 3,
        "reports": 4,
        "requests": 10,
        "errors": 2,
    }
    assert scenario.totals(T + 7000) == {
        "deployments": 1,
        "instances": 1,
        "reports": 1,
        "requests": 2,
        "errors": 1,
    }


def test_activity(scenario: SQLStorage) -> None:
    assert scenario.activity(T, 3600) == [
        {"bucket_start": T, "deployments": 1, "instances": 2},  # A1 and A2 of deployment A
        {"bucket_start": T + 7200, "deployments": 1, "instances": 1},  # B1
    ]
    # Days: T falls 22 hours into its UTC day, so R3 (T + 7300) is on the next one.
    day = T - T % 86400
    assert T - day == 22 * 3600
    assert scenario.activity(0, 86400) == [
        {"bucket_start": day, "deployments": 2, "instances": 3},  # OLD, R1, R2
        {"bucket_start": day + 86400, "deployments": 1, "instances": 1},  # R3
    ]
    with pytest.raises(ValueError):
        scenario.activity(0, 0)


def test_versions(scenario: SQLStorage) -> None:
    assert scenario.versions(T)["versions"] == [
        {
            "app_name": None,  # the scenario's clients name no app
            "app_version": "1.1",
            "deployments": 2,
            "instances": 2,
            "last_seen": T + 7300,
        },
        {
            "app_name": None,
            "app_version": "1.0",
            "deployments": 1,
            "instances": 1,
            "last_seen": T + 100,
        },
    ]


def test_unknown_version_is_none(storage: SQLStorage) -> None:
    storage.store(stored(make_payload(DEP_A, A1, LINUX, [("GET", "/", 200, [0.01], 0, 1)]), T))
    (row,) = storage.versions(0)["versions"]
    assert row["app_version"] is None and row["app_name"] is None
    (endpoint,) = storage.endpoints(0, by_version=True)
    assert endpoint["app_version"] is None and endpoint["app_name"] is None
    assert endpoint["calls"] == 1


def test_endpoints(scenario: SQLStorage) -> None:
    items = [0.010, 0.012, 0.020, 0.200, 0.030, 0.040, 0.015, 1.5]
    rows = scenario.endpoints(T)
    assert [(row["method"], row["route"], row["calls"]) for row in rows] == [
        ("GET", "/items/{item_id}", 8),
        ("POST", "/items", 1),
        ("GET", "/old", 0),  # seen before T, unused since: still listed
    ]
    get_items, post_items, old = rows
    # Sorted: 0.010 0.012 0.015 0.020 0.030 0.040 0.200 1.5. The q quantile is
    # the value at rank floor(q * 7): p50 → rank 3, p95 and p99 → rank 6.
    assert get_items == {
        "method": "GET",
        "route": "/items/{item_id}",
        "calls": 8,
        "errors": 2,
        "error_rate": 0.25,
        "p50": bucketed(0.020),
        "p95": bucketed(0.200),
        "p99": bucketed(0.200),
        "mean": pytest.approx(sum(items) / 8),
        "request_bytes": 0,
        "response_bytes": 3 * 100 + 50 + 2 * 100 + 100 + 0,
        "deployments": 2,
    }
    assert get_items["p50"] == pytest.approx(0.020, rel=0.02)
    assert get_items["p95"] == pytest.approx(0.200, rel=0.02)
    assert post_items == {
        "method": "POST",
        "route": "/items",
        "calls": 1,
        "errors": 0,
        "error_rate": 0.0,
        "p50": bucketed(0.050),
        "p95": bucketed(0.050),
        "p99": bucketed(0.050),
        "mean": pytest.approx(0.050),
        "request_bytes": 300,
        "response_bytes": 20,
        "deployments": 1,
    }
    assert old == {
        "method": "GET",
        "route": "/old",
        "calls": 0,
        "errors": 0,
        "error_rate": None,
        "p50": None,
        "p95": None,
        "p99": None,
        "mean": None,
        "request_bytes": 0,
        "response_bytes": 0,
        "deployments": 0,
    }
    # All time, /old has its call.
    assert {row["route"]: row["calls"] for row in scenario.endpoints(0)}["/old"] == 1


def test_endpoints_by_version_have_their_own_percentiles(scenario: SQLStorage) -> None:
    rows = scenario.endpoints(T, by_version=True)
    assert [(r["method"], r["route"], r["app_version"], r["calls"]) for r in rows] == [
        ("GET", "/items/{item_id}", "1.0", 4),
        ("GET", "/items/{item_id}", "1.1", 4),
        ("POST", "/items", "1.0", 1),
        ("GET", "/old", "1.1", 0),
    ]
    assert {r["app_name"] for r in rows} == {None}
    v10, v11, post, old = rows
    # 1.0: 0.010 0.012 0.020 0.200 (A1). Ranks: p50 → 1, p95 and p99 → 2.
    assert (v10["p50"], v10["p95"], v10["p99"]) == (
        bucketed(0.012),
        bucketed(0.020),
        bucketed(0.020),
    )
    assert (v10["errors"], v10["error_rate"], v10["deployments"]) == (1, 0.25, 1)
    assert v10["mean"] == pytest.approx((0.010 + 0.012 + 0.020 + 0.200) / 4)
    # 1.1: 0.015 0.030 0.040 1.5 (A2 and B1, two deployments).
    assert (v11["p50"], v11["p95"], v11["p99"]) == (
        bucketed(0.030),
        bucketed(0.040),
        bucketed(0.040),
    )
    assert (v11["errors"], v11["error_rate"], v11["deployments"]) == (1, 0.25, 2)
    assert v11["response_bytes"] == 2 * 100 + 100 + 0
    assert post["p50"] == bucketed(0.050)
    assert old["calls"] == 0 and old["p50"] is None and old["error_rate"] is None


def test_percentiles_merge_many_reports(storage: SQLStorage) -> None:
    """Histograms from many reports add up to the histogram of all the requests."""
    latencies = [0.001 * (n + 1) for n in range(100)]  # 1 ms .. 100 ms
    for chunk in range(10):
        part = latencies[chunk * 10 : chunk * 10 + 10]
        payload = make_payload(DEP_A, A1, LINUX, [("GET", "/", 200, part, 0, 0)], sequence=chunk)
        storage.store(stored(payload, T + chunk))
    (row,) = storage.endpoints(0)
    assert row["calls"] == 100
    # Ranks floor(q * 99): 49, 94, 98, i.e. 50 ms, 95 ms, 99 ms.
    assert row["p50"] == bucketed(0.050)
    assert row["p95"] == bucketed(0.095)
    assert row["p99"] == bucketed(0.099)
    assert row["p99"] == pytest.approx(0.099, rel=0.02)


def test_platforms(scenario: SQLStorage) -> None:
    assert scenario.platforms(T)["platforms"] == [
        {
            "os": "linux",
            "arch": "x86_64",
            "python_version": "3.12.7",
            "framework": "fastapi",
            "instances": 2,  # A1 and B1
            "deployments": 2,
        },
        {
            "os": "darwin",
            "arch": "arm64",
            "python_version": "3.11.9",
            "framework": "flask",
            "instances": 1,
            "deployments": 1,
        },
    ]
    # Only B1 reported after T + 1000.
    assert [row["instances"] for row in scenario.platforms(T + 1000)["platforms"]] == [1]


def test_instance_traits_follow_the_newest_report(storage: SQLStorage) -> None:
    newer = make_payload(DEP_A, A1, {**LINUX, "python_version": "3.13.0"}, [])
    older = make_payload(DEP_A, A1, {**LINUX, "python_version": "3.10.0"}, [])
    storage.store(stored(newer, T + 50))
    storage.store(stored(older, T + 10))  # arrives late
    (row,) = storage.platforms(0)["platforms"]
    assert row["python_version"] == "3.13.0"
    # first_seen / last_seen span both, whatever the order of arrival.
    assert [r["instances"] for r in storage.platforms(T + 50)["platforms"]] == [1]
    assert storage.platforms(T + 51)["platforms"] == []


def test_refusal_counters(storage: SQLStorage) -> None:
    assert storage.refusals() == {}
    storage.add_refusals({"bad_token": 1})
    storage.add_refusals({"replay": 1})
    storage.add_refusals({"bad_token": 1})
    assert storage.refusals() == {"bad_token": 2, "replay": 1}
    # Many at once, in one transaction, added to what is there (replicas add up).
    storage.add_refusals({"replay": 4, "too_large": 2, "bad_stamp": 0})
    assert storage.refusals() == {"bad_token": 2, "replay": 5, "too_large": 2}
    storage.add_refusals({})
    assert storage.refusals() == {"bad_token": 2, "replay": 5, "too_large": 2}


# -- several apps behind one collector --------------------------------------------------------

DEP_C = "cccccccc-0000-4000-8000-000000000003"
DEP_D = "dddddddd-0000-4000-8000-000000000004"
C1 = "c1c1c1c1-0000-4000-8000-000000000031"
D1 = "d1d1d1d1-0000-4000-8000-000000000041"
ITEM = "/items/{item_id}"


def app_traits(platform: dict[str, str], name: str | None, version: str) -> dict[str, Any]:
    return {**platform, "app_name": name, "app_version": version}


#: Two apps (inventory on two deployments, billing on one) and one client that
#: names no app. Both apps serve GET /items/{item_id} at a version "1.0", so
#: merging by route or by version would mix them up.
APPS = [
    # Inventory used DELETE once, long ago: unused in the window, but its own.
    (
        make_payload(
            DEP_A, A1, app_traits(LINUX, "inventory", "1.0"), [("DELETE", ITEM, 204, [0.004], 0, 0)]
        ),
        T - 5000,
    ),
    (
        make_payload(
            DEP_A,
            A1,
            app_traits(LINUX, "inventory", "1.0"),
            [("GET", ITEM, 200, [0.010, 0.020], 0, 100)],
            sequence=1,
        ),
        T + 100,
    ),
    (
        make_payload(
            DEP_B, B1, app_traits(LINUX, "inventory", "1.1"), [("GET", ITEM, 200, [0.040], 0, 100)]
        ),
        T + 200,
    ),
    (
        make_payload(
            DEP_C,
            C1,
            app_traits(MAC, "billing", "1.0"),
            [("GET", ITEM, 500, [0.500], 0, 10), ("POST", "/invoices", 201, [0.100], 50, 20)],
        ),
        T + 300,
    ),
    (
        make_payload(
            DEP_D, D1, {**LINUX, "app_version": "0.1"}, [("GET", "/", 200, [0.001], 0, 5)]
        ),
        T + 400,
    ),
]


@pytest.fixture
def apps(storage: SQLStorage) -> SQLStorage:
    for payload, received_at in APPS:
        storage.store(stored(payload, received_at))
    return storage


def test_the_reports_carry_their_app_name_into_every_table(apps: SQLStorage) -> None:
    def named(ex: Any) -> dict[str, list[tuple[Any, ...]]]:
        return {
            "instances": ex.query("SELECT id, app_name FROM instances ORDER BY id"),
            "reports": ex.query("SELECT instance_id, app_name FROM reports ORDER BY received_at"),
            "aggregates": ex.query(
                "SELECT method, app_name FROM aggregates ORDER BY received_at, method"
            ),
        }

    assert {table: [tuple(r) for r in rows] for table, rows in apps._run(named).items()} == {
        "instances": [(A1, "inventory"), (B1, "inventory"), (C1, "billing"), (D1, None)],
        "reports": [
            (A1, "inventory"),
            (A1, "inventory"),
            (B1, "inventory"),
            (C1, "billing"),
            (D1, None),
        ],
        "aggregates": [
            ("DELETE", "inventory"),
            ("GET", "inventory"),
            ("GET", "inventory"),
            ("GET", "billing"),
            ("POST", "billing"),
            ("GET", None),
        ],
    }


def test_apps_seen_in_the_window(apps: SQLStorage) -> None:
    assert apps.apps(T)["apps"] == [
        {
            "app_name": "inventory",
            "deployments": 2,
            "instances": 2,
            "reports": 2,
            "last_seen": T + 200,
        },
        {"app_name": None, "deployments": 1, "instances": 1, "reports": 1, "last_seen": T + 400},
        {
            "app_name": "billing",
            "deployments": 1,
            "instances": 1,
            "reports": 1,
            "last_seen": T + 300,
        },
    ]
    assert [app["app_name"] for app in apps.apps(T + 250)["apps"]] == [None, "billing"]
    assert apps.apps(T + 500) == {"apps": [], "left_out": 0, "limit": 100}
    # Cut in the database, in the same order; what the cut left out is counted.
    cut = apps.apps(T, limit=2)
    assert [app["app_name"] for app in cut["apps"]] == ["inventory", None]
    assert (cut["left_out"], cut["limit"]) == (1, 2)


def test_one_apps_totals_activity_and_platforms(apps: SQLStorage) -> None:
    assert apps.totals(T, app="inventory") == {
        "deployments": 2,
        "instances": 2,
        "reports": 2,
        "requests": 3,
        "errors": 0,
    }
    assert apps.totals(T, app="billing") == {
        "deployments": 1,
        "instances": 1,
        "reports": 1,
        "requests": 2,
        "errors": 1,
    }
    assert apps.totals(T)["requests"] == 3 + 2 + 1
    assert apps.activity(T, 3600, app="billing") == [
        {"bucket_start": T, "deployments": 1, "instances": 1}
    ]
    assert apps.activity(T, 3600) == [{"bucket_start": T, "deployments": 4, "instances": 4}]
    assert [(p["os"], p["instances"]) for p in apps.platforms(T, app="inventory")["platforms"]] == [
        ("linux", 2)
    ]
    assert [(p["os"], p["instances"]) for p in apps.platforms(T, app="billing")["platforms"]] == [
        ("darwin", 1)
    ]


def test_an_app_nobody_runs_has_nothing(apps: SQLStorage) -> None:
    assert apps.totals(0, app="nope") == {
        "deployments": 0,
        "instances": 0,
        "reports": 0,
        "requests": 0,
        "errors": 0,
    }
    assert apps.activity(0, 3600, app="nope") == []
    assert apps.versions(0, app="nope")["versions"] == []
    assert apps.endpoints(0, app="nope") == []
    assert apps.endpoints(0, by_version=True, app="nope") == []
    assert apps.platforms(0, app="nope")["platforms"] == []
    # Names are compared exactly: no case folding, no patterns.
    assert apps.totals(0, app="Inventory")["reports"] == 0
    assert apps.totals(0, app="%")["reports"] == 0


def test_versions_of_different_apps_are_apart(apps: SQLStorage) -> None:
    assert [
        (v["app_name"], v["app_version"], v["deployments"]) for v in apps.versions(T)["versions"]
    ] == [
        # One deployment each: the latest report first.
        (None, "0.1", 1),
        ("billing", "1.0", 1),
        ("inventory", "1.1", 1),
        ("inventory", "1.0", 1),  # the same version as billing's, and its own row
    ]
    assert apps.versions(T, app="billing")["versions"] == [
        {
            "app_name": "billing",
            "app_version": "1.0",
            "deployments": 1,
            "instances": 1,
            "last_seen": T + 300,
        }
    ]


def test_one_apps_endpoints_and_only_its_unused_ones(apps: SQLStorage) -> None:
    inventory = apps.endpoints(T, app="inventory")
    assert [(e["method"], e["route"], e["calls"]) for e in inventory] == [
        ("GET", ITEM, 3),
        ("DELETE", ITEM, 0),  # unused, and inventory's: billing never had it
    ]
    get = inventory[0]
    # 0.010 0.020 0.040: p50 and p95 at rank 1 (floor(q * 2)), p99 too.
    assert (get["p50"], get["p95"], get["errors"], get["deployments"]) == (
        bucketed(0.020),
        bucketed(0.020),
        0,
        2,
    )
    billing = apps.endpoints(T, app="billing")
    assert [(e["method"], e["route"], e["calls"]) for e in billing] == [
        ("GET", ITEM, 1),
        ("POST", "/invoices", 1),
    ]
    assert billing[0]["p95"] == bucketed(0.500) and billing[0]["error_rate"] == 1.0
    # Every app: the route's calls added up, as before.
    every = {(e["method"], e["route"]): e["calls"] for e in apps.endpoints(T)}
    assert every == {
        ("GET", ITEM): 4,
        ("POST", "/invoices"): 1,
        ("GET", "/"): 1,
        ("DELETE", ITEM): 0,
    }


def test_endpoints_by_app_show_one_apps_unused_route_beside_anothers_busy_one(
    apps: SQLStorage,
) -> None:
    """What the dashboard's endpoint table shows: a route two apps share is a row
    per app, so the app that stopped calling it sees it unused, however busy the
    other app's route of the same name is."""
    # Inventory served POST /invoices long ago; billing serves it now.
    old = make_payload(
        DEP_A,
        A1,
        app_traits(LINUX, "inventory", "1.0"),
        [("POST", "/invoices", 201, [0.100], 50, 20)],
        sequence=2,
    )
    apps.store(stored(old, T - 4000))
    merged = {(e["method"], e["route"]): e["calls"] for e in apps.endpoints(T)}
    assert merged[("POST", "/invoices")] == 1  # inventory's unused route is hidden
    rows = {
        (e["app_name"], e["method"], e["route"]): e["calls"] for e in apps.endpoints(T, by_app=True)
    }
    assert rows == {
        ("inventory", "GET", ITEM): 3,
        ("billing", "GET", ITEM): 1,
        ("billing", "POST", "/invoices"): 1,
        (None, "GET", "/"): 1,
        ("inventory", "DELETE", ITEM): 0,
        ("inventory", "POST", "/invoices"): 0,
    }
    # One app chosen: the same rows as without by_app, labelled.
    assert [
        (e["app_name"], e["method"], e["route"], e["calls"])
        for e in apps.endpoints(T, app="inventory", by_app=True)
    ] == [
        ("inventory", "GET", ITEM, 3),
        ("inventory", "DELETE", ITEM, 0),
        ("inventory", "POST", "/invoices", 0),
    ]


def approx_mean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with the mean compared approximately: latency sums added up in
    another order (another statement) differ in their last bits."""
    return [{**row, "mean": pytest.approx(row["mean"])} for row in rows]


def assert_the_summary_lists_what_endpoints_lists(storage: SQLStorage) -> None:
    """Under their limits, the summary's endpoint lists hold what the uncut
    lists hold: every endpoint per app (the called ones in the same order,
    then the unused ones, the latest seen first) and the rows per version
    that had calls. The histograms are read once, per version; the per-app
    percentiles are the per-version histograms merged."""
    for since in (0, T, T + 250):
        for app in (None, "inventory"):
            summary = storage.endpoint_summary(since, app=app)
            every = storage.endpoints(since, app=app, by_app=True)
            used = [row for row in every if row["calls"]]
            listed = [
                {k: v for k, v in row.items() if k != "last_seen"} for row in summary["endpoints"]
            ]
            assert listed[: len(used)] == approx_mean(used)
            unused = summary["endpoints"][len(used) :]
            assert sorted(listed[len(used) :], key=str) == sorted(
                (row for row in every if not row["calls"]), key=str
            )
            seen = [row["last_seen"] for row in unused]
            assert seen == sorted(seen, reverse=True)
            by_version = storage.endpoints(since, by_version=True, app=app)
            assert summary["endpoints_by_version"] == approx_mean(
                [row for row in by_version if row["calls"]]
            )
            assert summary["left_out"] == {"used": 0, "unused": 0, "by_version": 0}


def test_the_summary_lists_of_the_scenario(scenario: SQLStorage) -> None:
    assert_the_summary_lists_what_endpoints_lists(scenario)
    listed = scenario.endpoint_summary(T)["endpoints"]
    (get,) = [e for e in listed if (e["method"], e["route"]) == ("GET", "/items/{item_id}")]
    assert get["deployments"] == 2  # DEP_A, which ran 1.0 and 1.1, once; and DEP_B
    assert get["last_seen"] == T + 7300
    assert [(e["route"], e["calls"], e["last_seen"]) for e in listed if not e["calls"]] == [
        ("/old", 0, T - 5000)
    ]


def test_the_summary_lists_of_several_apps(apps: SQLStorage) -> None:
    assert_the_summary_lists_what_endpoints_lists(apps)


def test_endpoints_by_version_are_per_app(apps: SQLStorage) -> None:
    rows = apps.endpoints(T, by_version=True)
    assert [
        (r["method"], r["route"], r["app_name"], r["app_version"], r["calls"]) for r in rows
    ] == [
        ("GET", ITEM, "inventory", "1.0", 2),
        ("GET", "/", None, "0.1", 1),
        ("GET", ITEM, "billing", "1.0", 1),
        ("GET", ITEM, "inventory", "1.1", 1),
        ("POST", "/invoices", "billing", "1.0", 1),
        ("DELETE", ITEM, "inventory", "1.0", 0),
    ]
    billing_get = rows[2]
    assert (billing_get["p50"], billing_get["errors"]) == (bucketed(0.500), 1)
    only = apps.endpoints(T, by_version=True, app="inventory")
    assert {r["app_name"] for r in only} == {"inventory"}
    assert [(r["method"], r["app_version"], r["calls"]) for r in only] == [
        ("GET", "1.0", 2),
        ("GET", "1.1", 1),
        ("DELETE", "1.0", 0),
    ]


def test_an_instance_belongs_to_the_app_of_its_newest_report(storage: SQLStorage) -> None:
    newer = make_payload(DEP_A, A1, app_traits(LINUX, "renamed", "2.0"), [])
    older = make_payload(DEP_A, A1, app_traits(LINUX, "inventory", "1.0"), [])
    storage.store(stored(newer, T + 50))
    storage.store(stored(older, T + 10))  # arrives late
    assert [p["instances"] for p in storage.platforms(0, app="renamed")["platforms"]] == [1]
    assert storage.platforms(0, app="inventory")["platforms"] == []
    # Its reports keep the name each one carried.
    assert [a["app_name"] for a in storage.apps(0)["apps"]] == ["inventory", "renamed"]


# -- the summary's endpoint lists are cut; the CSV's rows are streamed -------------------------


def many_endpoints(
    calls: dict[str, int], version: str, received_at: float, sequence: int = 0
) -> StoredReport:
    """A report of shop ``version`` in which each GET ``route`` of ``calls`` was
    called its number of times (all in the 10 ms bucket): what an app without
    route templates sends, a new hashed path for every one of its endpoints."""
    payload = make_payload(
        DEP_A,
        A1,
        app_traits(LINUX, "shop", version),
        [("GET", route, 200, [0.010], 0, 10) for route in calls],
        sequence=sequence,
    )
    for record in payload["batch"]["records"]:
        count = calls[record["route"]]
        (bucket,) = record["latency"]["histogram"]
        record.update(count=count, response_bytes=10 * count)
        record["latency"]["histogram"] = [[bucket[0], count]]
    return stored(payload, received_at)


def test_the_summary_lists_the_busiest_endpoints_and_says_how_many_it_left_out(
    storage: SQLStorage,
) -> None:
    """More endpoints than the summary lists: each list is cut at its
    documented limit in the database, the busiest (or the latest seen) first,
    and says how many rows it left out."""
    used = MAX_ENDPOINTS + 20
    calls = {f"/used/{n:03d}": n + 1 for n in range(used)}  # 1 to 520 calls each
    for version in range(5):
        storage.store(many_endpoints(calls, f"1.{version}", T + 100 + version, sequence=version))
    # 110 endpoints not called since T: ten per report, a report a minute.
    for minute in range(11):
        gone = {f"/gone/{minute:02d}/{n}": 1 for n in range(10)}
        storage.store(many_endpoints(gone, "0.9", T - 6000 + 60 * minute, sequence=10 + minute))

    summary = storage.endpoint_summary(T)
    listed = summary["endpoints"]
    assert len(listed) == MAX_ENDPOINTS + MAX_UNUSED_ENDPOINTS
    busiest, unused = listed[:MAX_ENDPOINTS], listed[MAX_ENDPOINTS:]
    kept = range(used - 1, used - 1 - MAX_ENDPOINTS, -1)  # 519 down to 20
    assert [(e["route"], e["calls"]) for e in busiest] == [
        (f"/used/{n:03d}", 5 * (n + 1)) for n in kept
    ]
    first = busiest[0]
    assert (first["app_name"], first["deployments"], first["last_seen"]) == ("shop", 1, T + 104)
    assert (first["p50"], first["p99"], first["response_bytes"]) == (
        bucketed(0.010),
        bucketed(0.010),
        10 * 5 * used,
    )
    # Unused: the latest seen first (the ten latest reports), then by route.
    assert [(e["route"], e["calls"], e["p50"]) for e in unused] == [
        (f"/gone/{minute:02d}/{n}", 0, None) for minute in range(10, 0, -1) for n in range(10)
    ]
    assert unused[0]["last_seen"] == T - 6000 + 600
    # Per version: the listed endpoints' rows, the busiest first, versions in order.
    assert [
        (r["route"], r["app_version"], r["calls"]) for r in summary["endpoints_by_version"]
    ] == [
        (f"/used/{n:03d}", f"1.{version}", n + 1)
        for n in kept[: MAX_ENDPOINT_VERSIONS // 5]
        for version in range(5)
    ]
    assert summary["left_out"] == {
        "used": 20,
        "unused": 10,
        "by_version": 5 * MAX_ENDPOINTS - MAX_ENDPOINT_VERSIONS,
    }
    assert summary["limits"] == {
        "used": MAX_ENDPOINTS,
        "unused": MAX_UNUSED_ENDPOINTS,
        "by_version": MAX_ENDPOINT_VERSIONS,
    }
    # One app's lists are cut alike; another app has none of these.
    assert storage.endpoint_summary(T, app="shop")["left_out"] == summary["left_out"]
    assert storage.endpoint_summary(T, app="other")["endpoints"] == []


def test_each_cut_falls_where_the_uncut_lists_order_it(apps: SQLStorage) -> None:
    """Endpoints that tie on calls are cut where the full lists order them (by
    method, route, then app, unknown first; byte by byte): the same rows on
    SQLite and PostgreSQL, and the start of what the CSV lists."""
    old = make_payload(
        DEP_A, A1, app_traits(LINUX, "inventory", "1.0"), [("PATCH", ITEM, 200, [0.01], 0, 0)]
    )
    apps.store(stored(old, T - 3000))
    summary = apps.endpoint_summary(T, limits=EndpointLimits(used=2, unused=1, by_version=2))
    assert [(e["app_name"], e["method"], e["route"], e["calls"]) for e in summary["endpoints"]] == [
        ("inventory", "GET", ITEM, 3),
        (None, "GET", "/", 1),  # before billing's GET and POST, each also called once
        ("inventory", "PATCH", ITEM, 0),  # seen after inventory's DELETE
    ]
    every = [e for e in apps.endpoints(T, by_app=True) if e["calls"]]
    listed = [{k: v for k, v in e.items() if k != "last_seen"} for e in summary["endpoints"]]
    assert listed[:2] == approx_mean(every[:2])
    assert [
        (r["app_name"], r["route"], r["app_version"], r["calls"])
        for r in summary["endpoints_by_version"]
    ] == [("inventory", ITEM, "1.0", 2), (None, "/", "0.1", 1)]  # then inventory 1.1, left out
    assert summary["left_out"] == {"used": 2, "unused": 1, "by_version": 1}


def numbered(n: int) -> str:
    """The ``n``-th made-up deployment or instance id (a valid version-4 UUID)."""
    return str(uuid.UUID(int=n, version=4))


def traits_report(n: int, deployment: int, traits: dict[str, Any], at: float) -> StoredReport:
    """Report ``n`` (of instance ``n``, of deployment ``deployment``), saying
    ``traits``, received at ``at``; no calls: only its traits count here."""
    payload = make_payload(numbered(deployment), numbered(1000 + n), traits, [], sequence=n)
    return stored(payload, at)


#: (app, version, deployment) of one report (one instance each), and when after T.
VERSION_REPORTS: list[tuple[str | None, str | None, int, float]] = [
    ("shop", "2.0", 1, 10),
    ("shop", "2.0", 2, 10),
    ("shop", "2.0", 3, 10),
    ("shop", "1.9", 4, 10),
    ("shop", "1.9", 4, 10),
    ("shop", "1.8", 5, 30),
    ("shop", "1.7", 6, 20),
    ("shop", "a", 7, 10),
    ("shop", "Z", 8, 10),
    ("billing", "1.0", 9, 10),
    ("billing", None, 10, 10),
    (None, "1.0", 11, 10),
]
#: The order of VERSION_REPORTS' versions, as (app, version, deployments, instances).
VERSION_ORDER = [
    ("shop", "2.0", 3, 3),  # the most deployments
    ("shop", "1.9", 1, 2),  # then the most instances
    ("shop", "1.8", 1, 1),  # then the latest seen
    ("shop", "1.7", 1, 1),
    (None, "1.0", 1, 1),  # then by app, unknown first, byte by byte
    ("billing", None, 1, 1),  # and by version, unknown first
    ("billing", "1.0", 1, 1),
    ("shop", "Z", 1, 1),  # byte by byte, not a locale's order
    ("shop", "a", 1, 1),
]
#: (platform, deployment) of one instance each, all reporting at T + 10.
PLATFORM_REPORTS: list[tuple[dict[str, Any], int]] = [
    (LINUX, 1),
    (LINUX, 2),
    (LINUX, 2),
    (MAC, 3),
    (MAC, 4),
    ({**LINUX, "python_version": "3.13.0"}, 5),
    ({**LINUX, "python_version": "3.13.0"}, 5),
    ({**LINUX, "framework": None}, 6),
    ({**LINUX, "arch": "aarch64"}, 7),
    ({**LINUX, "os": "Linux"}, 8),
    ({**LINUX, "os": None}, 9),
]
#: The order of PLATFORM_REPORTS' platforms, as
#: (os, arch, python_version, framework, instances, deployments).
PLATFORM_ORDER = [
    ("linux", "x86_64", "3.12.7", "fastapi", 3, 2),  # the most instances
    ("darwin", "arm64", "3.11.9", "flask", 2, 2),  # then the most deployments
    ("linux", "x86_64", "3.13.0", "fastapi", 2, 1),
    (None, "x86_64", "3.12.7", "fastapi", 1, 1),  # then by each text, unknown first
    ("Linux", "x86_64", "3.12.7", "fastapi", 1, 1),  # byte by byte
    ("linux", "aarch64", "3.12.7", "fastapi", 1, 1),
    ("linux", "x86_64", "3.12.7", None, 1, 1),
]


def test_versions_are_cut_where_their_order_puts_them(storage: SQLStorage) -> None:
    """Each cut keeps each app's first rows of the whole list, in an order
    spelled out alike for both backends (ties too), and says how many it left
    out."""
    for n, (app, version, deployment, after) in enumerate(VERSION_REPORTS):
        traits = {**LINUX, "app_name": app, "app_version": version}
        storage.store(traits_report(n, deployment, traits, T + after))
    assert [
        (v["app_name"], v["app_version"], v["deployments"], v["instances"])
        for v in storage.versions(T)["versions"]
    ] == VERSION_ORDER
    for limit in range(1, len(VERSION_ORDER) + 2):
        cut = storage.versions(T, limit=limit)
        kept = [
            (app, version)
            for place, (app, version, _, _) in enumerate(VERSION_ORDER)
            if [row[0] for row in VERSION_ORDER[:place]].count(app) < limit
        ]
        assert [(v["app_name"], v["app_version"]) for v in cut["versions"]] == kept
        assert (cut["left_out"], cut["limit"]) == (len(VERSION_ORDER) - len(kept), limit)
    shop = storage.versions(T, app="shop", limit=2)
    assert [v["app_version"] for v in shop["versions"]] == ["2.0", "1.9"]
    assert shop["left_out"] == 4


def test_one_apps_flood_of_versions_leaves_the_other_apps_versions_listed(
    storage: SQLStorage,
) -> None:
    """Cut over all apps at once, an app stamping every build into its
    version pushed a small app's versions off the list (and its page)."""
    for n in range(MAX_VERSIONS + 20):
        for deployment in (2 * n, 2 * n + 1):
            traits = app_traits(LINUX, "shop", f"build-{n}")
            storage.store(traits_report(deployment, deployment, traits, T + 1))
    storage.store(traits_report(10_000, 10_000, app_traits(LINUX, "billing", "3.2"), T + 1))
    cut = storage.versions(T)
    listed = [(v["app_name"], v["app_version"]) for v in cut["versions"]]
    assert ("billing", "3.2") in listed
    assert sum(1 for app, _ in listed if app == "shop") == MAX_VERSIONS
    assert cut["left_out"] == 20


def test_a_flood_of_app_names_is_cut_in_every_list_that_names_apps(storage: SQLStorage) -> None:
    """An app name is client text too: cut per app only, a name per report
    made a version row each, an option of the selector each and a name in the
    dropped-requests line each (50,000 names: 34 MB of JSON)."""
    flood = 30
    for n in range(flood):
        payload = traits_report(n, n, app_traits(LINUX, f"flood-{n:02}", "1.0"), T + 1)
        payload.payload["batch"]["dropped"] = 1 + n
        storage.store(payload)
    versions = storage.versions(T, total_limit=10)
    assert len(versions["versions"]) == 10 and versions["left_out"] == flood - 10
    apps = storage.apps(T, limit=10)
    assert len(apps["apps"]) == 10 and apps["left_out"] == flood - 10
    dropped = storage.dropped(T, limit=10)
    assert [row["app_name"] for row in dropped["by_app"]][:2] == ["flood-29", "flood-28"]
    assert len(dropped["by_app"]) == 10 and dropped["left_out"] == flood - 10
    assert dropped["requests"] == sum(range(1, flood + 1))  # the total of every app


def test_platforms_are_cut_where_their_order_puts_them(storage: SQLStorage) -> None:
    for n, (platform, deployment) in enumerate(PLATFORM_REPORTS):
        traits = app_traits(platform, "shop" if n % 2 else "billing", "1.0")
        storage.store(traits_report(n, deployment, traits, T + 10))
    assert [
        (p["os"], p["arch"], p["python_version"], p["framework"], p["instances"], p["deployments"])
        for p in storage.platforms(T)["platforms"]
    ] == PLATFORM_ORDER
    for limit in range(1, len(PLATFORM_ORDER) + 2):
        cut = storage.platforms(T, limit=limit)
        assert [tuple(p.values())[:4] for p in cut["platforms"]] == [
            row[:4] for row in PLATFORM_ORDER[:limit]
        ]
        assert (cut["left_out"], cut["limit"]) == (max(0, len(PLATFORM_ORDER) - limit), limit)
    billing = storage.platforms(T, app="billing", limit=1)
    assert [p["instances"] for p in billing["platforms"]] == [2]  # 2 of LINUX's 3
    assert billing["left_out"] == 4


def test_a_flood_of_versions_and_platforms_is_cut_at_the_documented_limits(
    storage: SQLStorage,
) -> None:
    """A version and a platform are whatever text a client sends: a new one
    in every report must not make the summary list every one."""
    flood = MAX_PLATFORMS + 2
    for n in range(flood):
        traits = app_traits({**LINUX, "python_version": f"3.{n}"}, "shop", f"0.{n}")
        storage.store(traits_report(n, n, traits, T + n))
    versions, platforms = storage.versions(T), storage.platforms(T)
    assert (len(versions["versions"]), versions["left_out"]) == (MAX_VERSIONS, flood - MAX_VERSIONS)
    assert versions["limit"] == MAX_VERSIONS
    # All tie but for the time: the latest seen first.
    assert versions["versions"][0]["app_version"] == f"0.{flood - 1}"
    assert (len(platforms["platforms"]), platforms["left_out"]) == (MAX_PLATFORMS, 2)
    assert platforms["limit"] == MAX_PLATFORMS


@pytest.mark.parametrize("since", [0, T, T + 250])
def test_the_exported_rows_are_every_endpoint_and_version(apps: SQLStorage, since: float) -> None:
    """``iter_endpoints`` (what the CSV export writes) yields the rows of
    ``endpoints(by_version=True)``, unused ones included, in the same order."""
    for app in (None, "inventory", "nope"):
        rows = apps.iter_endpoints(since, app=app)
        assert list(rows) == apps.endpoints(since, by_version=True, app=app)


def test_a_report_is_stored_while_an_export_is_half_read(
    backend: Backend, storage: SQLStorage
) -> None:
    """An export read as slowly as a download holds nothing that storing a
    report waits for (SQLite's shared connection and its lock, a slot of the
    PostgreSQL pool), reads one snapshot from start to end, and lets it go
    once closed."""
    for part in range(3):
        calls = {f"/r/{part}/{n:03d}": 1 + n for n in range(600)}
        storage.store(many_endpoints(calls, "1.0", T + part, sequence=part))
    done: list[BaseException | None] = []

    def store_one() -> None:
        try:
            storage.store(many_endpoints({"/new": 5000}, "1.1", T + 10, sequence=9))
            done.append(None)
        except BaseException as error:
            done.append(error)

    # Closed whatever happens: an open read would keep the test's schema from being dropped.
    with contextlib.closing(storage.iter_endpoints(0)) as export:
        assert next(export)["route"] == "/r/0/599"  # the first of 1,800 rows, read in batches
        writer = threading.Thread(target=store_one)
        writer.start()
        writer.join(timeout=30)
        assert done == [None], "the report waited for the export, or failed"
        rest = [row["route"] for row in export]
    assert len(rest) == 3 * 600 - 1 and "/new" not in rest  # the snapshot it began with
    with contextlib.closing(storage.iter_endpoints(0)) as export:
        assert next(export)["route"] == "/new"
        assert export_snapshots(backend, storage) == 1
    assert export_snapshots(backend, storage) == 0


def export_snapshots(backend: Backend, storage: SQLStorage) -> int:
    """How many reads hold a snapshot of the database open: on SQLite, whether a
    checkpoint cannot reset the WAL; on PostgreSQL, the other sessions with a
    snapshot (this test's schema is the only one in use)."""
    if backend.name == "sqlite":
        with sqlite3.connect(storage.path, timeout=0.1) as connection:
            busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return int(busy)
    return storage._run(
        lambda ex: int(
            ex.query(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_xmin IS NOT NULL AND pid <> pg_backend_pid()"
            )[0][0]
        )
    )


# -- concurrency -------------------------------------------------------------------------------


def test_eight_threads_storing_at_once(backend: Backend, storage: SQLStorage) -> None:
    threads_count, per_thread = 8, 5
    # Each thread stores through a storage of its own half the time: replicas too.
    storages = [storage if n % 2 else backend.open() for n in range(threads_count)]
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        instance = str(uuid.UUID(int=n + 1, version=4))
        barrier.wait()
        try:
            for sequence in range(per_thread):
                payload = make_payload(
                    DEP_A,
                    instance,
                    {**LINUX, "app_version": f"{n}.0"},
                    [("GET", "/", 200, [0.01] * (n + 1), 0, 1), ("GET", "/x", 500, [0.1], 0, 0)],
                    metrics={"counters": {"jobs.done": 1}, "gauges": {}},
                    sequence=sequence,
                )
                storages[n].store(stored(payload, T + sequence))
                storages[n].add_refusals({"bad_stamp": 1})
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    calls = sum((n + 1) + 1 for n in range(threads_count)) * per_thread
    assert storage.totals(0) == {
        "deployments": 1,
        "instances": threads_count,
        "reports": threads_count * per_thread,
        "requests": calls,
        "errors": threads_count * per_thread,
    }
    assert len(storage.versions(0)["versions"]) == threads_count
    assert storage.refusals() == {"bad_stamp": threads_count * per_thread}


def test_a_stored_stamp_is_found_and_no_other(scenario: SQLStorage) -> None:
    """What the collector asks of a stamp too old to be stored now, which its
    client sends again after every answer to it was lost."""
    stamp = "1:20:231114220000:looked-up::r:1"
    assert scenario.stamp_stored(stamp) is False
    scenario.store(stored(R2, T + 300, stamp=stamp))
    before = row_counts(scenario)
    assert scenario.stamp_stored(stamp, deadline=time.monotonic() + 5) is True
    assert scenario.stamp_stored(stamp[:-1] + "2") is False
    assert scenario.stamp_stored(stamp[:-1]) is False  # a prefix is another stamp
    assert row_counts(scenario) == before  # a lookup writes nothing


def test_racing_replays_store_once(backend: Backend, storage: SQLStorage) -> None:
    """Replicas racing with one stamp: exactly one wins, the others see ReplayError."""
    replicas = [backend.open() for _ in range(4)]
    barrier = threading.Barrier(len(replicas))
    outcomes: list[str] = []
    report = stored(R1, T + 100, stamp="1:20:231114220000:race::r:1")

    def work(replica: SQLStorage) -> None:
        barrier.wait()
        try:
            replica.store(report)
            outcomes.append("stored")
        except ReplayError:
            outcomes.append("replay")

    threads = [threading.Thread(target=work, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["replay", "replay", "replay", "stored"]
    assert storage.totals(0)["reports"] == 1


# -- a deadline for every report -----------------------------------------------------------


def test_a_store_held_up_past_its_deadline_by_another_writer_writes_nothing(
    storage: SQLStorage,
) -> None:
    """The client would have given up by then and sent the data again: a copy
    committed after the deadline would count its requests twice."""
    report = stored(R1, T + 100)
    with another_writer(location(storage)):
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            storage.store(report, deadline=time.monotonic() + 0.2)
        waited = time.monotonic() - began
    # Not SQLite's busy timeout (10 s), nor PostgreSQL's wait without end.
    assert waited < 2.0
    assert storage.totals(0)["reports"] == 0
    # The client's retry (the same stamp) is then stored, once.
    storage.store(report, deadline=time.monotonic() + 5.0)
    assert storage.totals(0)["reports"] == 1
    assert storage.totals(0)["requests"] == 5


def test_a_store_whose_deadline_has_passed_writes_nothing(storage: SQLStorage) -> None:
    with pytest.raises(DeadlineExceeded):
        storage.store(stored(R1, T + 100), deadline=time.monotonic() - 0.001)
    assert storage.totals(0)["reports"] == 0


# -- the dashboard's reads hold up no report ---------------------------------------------------

#: A report stored while the dashboard reads (its stamp is new each time).
LATE = make_payload(
    DEP_A, A1, {**LINUX, "app_version": "1.2"}, [("GET", "/late", 200, [0.01], 0, 1)], sequence=7
)


class HeldStatements:
    """SQLite connections whose statements stop midway in the threads of
    :attr:`threads` (a progress handler), until :attr:`release` is set: a read
    as slow as a large database's, and as long as the test decides.

    Install :meth:`connect` as ``sqlite3.connect`` before the storage opens,
    so that it holds whichever connection the storage reads on.
    """

    def __init__(self) -> None:
        self.threads: set[threading.Thread] = set()
        self.release = threading.Event()
        #: Released once by each held thread, when it stops in a statement.
        self.entered = threading.Semaphore(0)
        #: What each connection opened meanwhile was opened on.
        self.opened: list[str] = []
        self._held: set[threading.Thread] = set()
        self._connect = sqlite3.connect

    def connect(self, database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = self._connect(database, *args, **kwargs)
        self.opened.append(str(database))
        connection.set_progress_handler(self._hold, 100)
        return connection

    def readers(self) -> int:
        """Connections opened read-only (``mode=ro``)."""
        return sum("mode=ro" in database for database in self.opened)

    def _hold(self) -> int:
        thread = threading.current_thread()
        if thread in self.threads and thread not in self._held and not self.release.is_set():
            self._held.add(thread)
            self.entered.release()
            self.release.wait(30)
        return 0  # carry on


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldStatements]:
    held = HeldStatements()
    monkeypatch.setattr(sqlite3, "connect", held.connect)
    yield held
    held.release.set()  # whatever the test did, no thread stays held


@pytest.fixture
def held_sqlite(held: HeldStatements, tmp_path: Path) -> Iterator[SQLStorage]:
    """The scenario in a SQLite file, every connection of it opened through ``held``."""
    storage = open_storage(f"sqlite:///{tmp_path / 'collector.db'}")
    try:
        storage.migrate()
        for payload, received_at in SCENARIO:
            storage.store(stored(payload, received_at))
        yield storage
    finally:
        held.release.set()
        storage.close()


def read_summaries(storage: SQLStorage, count: int) -> tuple[list[threading.Thread], list[Any]]:
    """``count`` threads, not started, each to read the dashboard's summary (or
    the error it raised) into the list returned with them."""
    from reqtelemetry.collector.summary import build_summary

    results: list[Any] = []

    def read() -> None:
        try:
            results.append(build_summary(storage, 30, now=T + 8000))
        except BaseException as error:
            results.append(error)

    return [threading.Thread(target=read) for _ in range(count)], results


def assert_stored_promptly(storage: SQLStorage, budget: float = 2.0) -> None:
    """A report stores within ``budget`` seconds, the deadline a client's wait
    gives it (:class:`DeadlineExceeded` past it)."""
    began = time.monotonic()
    storage.store(stored(LATE, T + 7400), deadline=began + budget)
    assert time.monotonic() - began < budget


def assert_late_report_is_stored(storage: SQLStorage) -> None:
    assert "/late" in {e["route"] for e in storage.endpoints(0)}


def test_a_report_is_stored_while_a_summary_is_read_on_sqlite(
    held: HeldStatements, held_sqlite: SQLStorage
) -> None:
    """A summary as slow as a large database's holds up no report: it reads on
    a connection of its own (WAL: readers and the writer do not wait for each
    other), not the one reports are written through, nor behind its lock.
    Sharing them, a report waited for the whole summary, past its deadline:
    a ``503`` for every client reporting meanwhile."""
    (reader,), results = read_summaries(held_sqlite, 1)
    held.threads.add(reader)
    reader.start()
    assert held.entered.acquire(timeout=10), "the summary never began"
    assert_stored_promptly(held_sqlite)
    held.release.set()
    reader.join(30)
    (summary,) = results
    assert isinstance(summary, dict), summary
    assert summary["totals"]["deployments"] == 2
    assert_late_report_is_stored(held_sqlite)


def test_summaries_read_on_at_most_two_connections_of_their_own(
    held: HeldStatements, held_sqlite: SQLStorage
) -> None:
    """However many dashboards load at once, SQLite's reads take two
    connections at most (each a file handle and a page cache); a third
    waits for one, then reads, and reports are stored meanwhile."""
    readers, results = read_summaries(held_sqlite, 3)
    held.threads.update(readers)
    for reader in readers[:2]:
        reader.start()
    for _ in range(2):
        assert held.entered.acquire(timeout=10), "two summaries did not read at once"
    readers[2].start()
    assert not held.entered.acquire(timeout=0.3), "a third summary read at once"
    assert_stored_promptly(held_sqlite)
    held.release.set()
    for reader in readers:
        reader.join(30)
    assert len(results) == 3 and all(isinstance(summary, dict) for summary in results), results
    assert held.readers() == 2
    assert_late_report_is_stored(held_sqlite)


def test_a_report_is_stored_while_summaries_wait_on_postgres(
    postgres_storage: PostgresStorage,
) -> None:
    """PostgreSQL's readers never block its writers, but each read takes a
    connection of the pool reports are stored through: as many slow
    summaries as it has connections (four, by default: a few dashboard tabs
    reloaded) left a report none, and it was answered ``503`` at its
    deadline. The dashboard's reads take two at most."""
    url = postgres_storage.url
    readers, results = read_summaries(postgres_storage, 4)
    with psycopg.connect(url) as locker:
        # Summaries read the refusal counters; reports never touch them.
        locker.execute("LOCK TABLE refusals IN ACCESS EXCLUSIVE MODE")
        for reader in readers:
            reader.start()
        # Four on the old code; two now, the others waiting for a turn.
        assert _until_sessions_await_a_lock(url, 4, within=2.0) >= 2
        assert_stored_promptly(postgres_storage)
        locker.rollback()
    for reader in readers:
        reader.join(30)
    assert len(results) == 4 and all(isinstance(summary, dict) for summary in results), results
    assert_late_report_is_stored(postgres_storage)


def _until_sessions_await_a_lock(url: str, sessions: int, within: float) -> int:
    """Once ``sessions`` sessions wait for a lock, or ``within`` seconds have
    passed (fewer may be let through): how many do."""
    deadline = time.monotonic() + within
    with psycopg.connect(url, autocommit=True) as connection:
        while True:
            (waiting,) = connection.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted"
            ).fetchone()
            if waiting >= sessions or time.monotonic() > deadline:
                return int(waiting)
            time.sleep(0.01)


@pytest.fixture
def postgres_storage(postgres_url: str) -> Iterator[PostgresStorage]:
    """A migrated PostgreSQL storage in a scratch schema (what SQLite cannot show)."""
    from postgres import scratch_schema

    with scratch_schema(postgres_url) as url:
        storage = PostgresStorage(url)
        try:
            storage.migrate()
            yield storage
        finally:
            storage.close()  # before the schema is dropped


def _slow_trigger(url: str, table: str, seconds: float) -> None:
    """Make every insert into ``table`` take ``seconds`` longer, on the server."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            f"CREATE FUNCTION slow_{table}() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$"
        )
        connection.execute(
            f"CREATE TRIGGER slow_{table} BEFORE INSERT ON {table}"
            f" FOR EACH ROW EXECUTE FUNCTION slow_{table}()"
        )


def test_postgres_cancels_a_statement_that_outlasts_the_deadline(
    postgres_storage: PostgresStorage,
) -> None:
    _slow_trigger(postgres_storage.url, "reports", 5.0)
    began = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        postgres_storage.store(stored(R1, T + 100), deadline=time.monotonic() + 0.3)
    assert time.monotonic() - began < 2.0
    assert postgres_storage.totals(0)["reports"] == 0


def test_postgres_commits_only_before_the_deadline(postgres_storage: PostgresStorage) -> None:
    """Each statement ends within its timeout, but together they pass the
    deadline: the check right before the commit rolls them back."""
    _slow_trigger(postgres_storage.url, "reports", 0.6)
    _slow_trigger(postgres_storage.url, "deployments", 0.6)
    with pytest.raises(DeadlineExceeded):
        postgres_storage.store(stored(R1, T + 100), deadline=time.monotonic() + 1.0)
    assert postgres_storage.totals(0)["reports"] == 0


def test_postgres_answers_a_commit_held_by_a_standby_by_the_deadline() -> None:
    """PostgreSQL switches ``statement_timeout`` off before it commits, and a
    commit waits for a synchronous standby: with the standby gone, the report
    was committed and answered whenever the standby came back, long after its
    client stopped waiting. The cancel sent at the deadline ends the wait (the
    commit is then done locally) and the report is answered in time.

    A cluster of its own: the test changes server settings."""
    from postgres import PostgresUnavailable, ThrowawayCluster

    cluster = ThrowawayCluster()
    try:
        url = cluster.start()
    except PostgresUnavailable as error:
        pytest.skip(str(error))
    storage = PostgresStorage(url)
    try:
        storage.migrate()
        with psycopg.connect(url, autocommit=True) as admin:
            # The throwaway cluster starts with synchronous_commit off, for
            # speed; a role's setting overrides the command line's.
            admin.execute("ALTER ROLE CURRENT_USER SET synchronous_commit = 'on'")
            admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'gone_standby'")
            admin.execute("SELECT pg_reload_conf()")
        storage._pool.discard_idle()  # the next connection sees the setting
        outcome: list[BaseException | None] = []

        def store() -> None:
            try:
                storage.store(stored(R1, T + 100), deadline=time.monotonic() + 1.0)
                outcome.append(None)
            except BaseException as error:  # reported below
                outcome.append(error)

        storing = threading.Thread(target=store, daemon=True)
        storing.start()
        storing.join(10)  # the standby never comes: only the deadline can end the wait
        answered = not storing.is_alive()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
            admin.execute("SELECT pg_reload_conf()")
        storing.join(10)
        assert answered, "the store waited for the standby past its deadline"
        assert outcome == [None]  # committed locally, and said so in time
        assert storage.totals(0)["reports"] == 1
    finally:
        storage.close()
        cluster.stop()


class PostgresRelay:
    """A TCP relay on loopback in front of the PostgreSQL server of ``url``:
    each connection made to :attr:`url` is handed to :meth:`_take`."""

    def __init__(self, url: str) -> None:
        server_port = int(url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        self.target = ("127.0.0.1", server_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        #: ``url`` through the relay.
        self.url = url.replace(f":{server_port}/", f":{self.port}/")
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                self._take(client)

    def _take(self, client: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.listener.close()


class AnswerToCommitLost(PostgresRelay):
    """A relay that, once armed, passes the next ``COMMIT`` on, drops what the
    server answers, and cuts the connection ``after`` seconds later: the
    commit is done, and the client cannot know it."""

    def __init__(self, url: str, after: float, then_refuse_for: float = 0.0) -> None:
        self.after = after
        self.armed = False
        self._swallowing = False
        #: Seconds after the cut during which new connections are refused (a blip).
        self.then_refuse_for = then_refuse_for
        self._refusing_until = 0.0
        super().__init__(url)

    def _take(self, client: socket.socket) -> None:
        if time.monotonic() < self._refusing_until:
            client.close()
            return
        server = socket.create_connection(self.target)
        for source, sink, upstream in ((client, server, True), (server, client, False)):
            threading.Thread(target=self._relay, args=(source, sink, upstream), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                commit = upstream and self.armed and b"COMMIT" in data
                if commit:
                    self.armed, self._swallowing = False, True
                if not upstream and self._swallowing:
                    continue  # the answer to the commit never gets back
                sink.sendall(data)
                if commit:
                    time.sleep(self.after)
                    self._refusing_until = time.monotonic() + self.then_refuse_for
                    self._swallowing = False
                    for end in (source, sink):
                        end.shutdown(socket.SHUT_RDWR)
                    return


def test_a_report_whose_commit_answer_was_lost_past_the_deadline_is_a_replay(
    postgres_storage: PostgresStorage,
) -> None:
    """A reused connection breaks after its commit reached the database, and
    the break shows after the deadline: the retry on a fresh connection was
    refused for want of time and answered 503 "nothing stored" for a stored
    report, which the client may send again. The retry now has a short grace
    to meet its own stamp, a replay: what the client counts as delivered."""
    relay = AnswerToCommitLost(postgres_storage.url, after=1.5)
    relayed = PostgresStorage(relay.url, pool_size=1)
    try:
        relayed.refusals()  # a pooled connection, reused by the store
        relay.armed = True
        with pytest.raises(ReplayError):
            relayed.store(stored(R1, T + 100), deadline=time.monotonic() + 1.0)
        assert postgres_storage.totals(0)["reports"] == 1
    finally:
        relayed.close()
        relay.close()


@pytest.mark.parametrize("reused", [True, False], ids=["reused", "new-connection"])
def test_a_commit_whose_answer_was_lost_for_good_is_unknown_not_unavailable(
    postgres_storage: PostgresStorage, reused: bool
) -> None:
    """The commit reached the database, its answer did not, and no retry
    could find out (the database unreachable for a while, or the connection
    was new and is not retried). Raised as a plain failure, this was
    answered 503 "nothing stored", and the client sent the stored report's
    data again under a new stamp: counted twice."""
    relay = AnswerToCommitLost(postgres_storage.url, after=0.2, then_refuse_for=5.0)
    relayed = PostgresStorage(relay.url, pool_size=1)
    try:
        if reused:
            relayed.refusals()  # a pooled connection, reused by the store
        relay.armed = True
        with pytest.raises(CommitUnknown):
            relayed.store(stored(R1, T + 100), deadline=time.monotonic() + 3.0)
        assert postgres_storage.totals(0)["reports"] == 1  # it did land
    finally:
        relayed.close()
        relay.close()


def test_a_read_whose_commit_answer_was_lost_is_a_plain_failure(
    postgres_storage: PostgresStorage,
) -> None:
    """A read-only transaction has nothing to be unsure of: its lost commit
    is the database failing (the CLI's one-line error, the dashboard's 503),
    not "the commit's answer was lost"."""
    relay = AnswerToCommitLost(postgres_storage.url, after=0.2, then_refuse_for=5.0)
    relayed = PostgresStorage(relay.url, pool_size=1)
    try:
        relay.armed = True
        with pytest.raises(psycopg.OperationalError):
            relayed.refusals()
    finally:
        relayed.close()
        relay.close()


def test_the_command_line_takes_an_unknown_commit_for_a_database_error() -> None:
    """``reqtelemetry collector``, ``prune`` and ``export`` print one line and
    exit 2 for what ``database_errors()`` names; an unknown commit (a
    migration's, a prune's) is one, and raised a traceback."""
    from reqtelemetry.collector.storage import database_errors

    assert issubclass(CommitUnknown, database_errors())


#: The code that opens PostgreSQL's CancelRequest message (after its length, 16).
CANCEL_REQUEST_CODE = 80877102
#: The code of an SSLRequest, which libpq sends first on every connection under
#: the default ``sslmode=prefer``, the cancel's own included.
SSL_REQUEST_CODE = 80877103


class SilentToCancels(PostgresRelay):
    """A relay that passes every connection on, except a cancel request, which
    it takes and never answers: a server that went silent for the cancel sent
    at a deadline."""

    def __init__(self, url: str) -> None:
        self.held: list[socket.socket] = []
        super().__init__(url)

    def _take(self, client: socket.socket) -> None:
        # Every first message opens with its length and a code.
        first = client.recv(8, socket.MSG_WAITALL)
        if len(first) == 8 and struct.unpack("!ii", first)[1] == SSL_REQUEST_CODE:
            # No SSL here ("N"), as the test server answers; what comes next
            # is the message this relay looks at (the cancel went by unseen).
            client.sendall(b"N")
            first = client.recv(8, socket.MSG_WAITALL)
        if len(first) < 8:
            client.close()
            return
        if struct.unpack("!ii", first)[1] == CANCEL_REQUEST_CODE:
            self.held.append(client)
            return
        server = socket.create_connection(self.target)
        server.sendall(first)
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        super().close()
        for held in self.held:
            held.close()


#: Sends the cancel the storage sends at a deadline, with a thread ticking
#: meanwhile; prints how long the cancel took and how often the thread ticked.
CANCEL_SCRIPT = """
import sys, threading, time
import psycopg
from reqtelemetry.collector.storage.postgres import _cancel

connection = psycopg.connect(sys.argv[1], autocommit=True)
ticks = []

def tick():
    while True:
        ticks.append(time.monotonic())
        time.sleep(0.01)

threading.Thread(target=tick, daemon=True).start()
time.sleep(0.1)
began = time.monotonic()
_cancel(connection)
ended = time.monotonic()
print(ended - began, sum(began < t < ended for t in list(ticks)))
"""


def test_the_cancel_sent_at_a_deadline_gives_up_in_time_and_stops_no_other_thread(
    postgres_storage: PostgresStorage,
) -> None:
    """A server that takes the cancel request and never answers it: the cancel
    gives up after ``CANCEL_TIMEOUT`` while the collector's other threads run on.

    With a libpq before 17 (psycopg[binary] before 3.2.3 bundles libpq 16)
    ``cancel_safe`` falls back to ``PQcancel``, which has no timeout and, in
    psycopg's C implementation, holds the GIL while it waits: every thread of
    the process stopped for as long as the server kept silent. In a child
    process, so that such a hang fails this test instead of stopping the run."""
    relay = SilentToCancels(postgres_storage.url)
    url = relay.url
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", CANCEL_SCRIPT, url],
            capture_output=True,
            text=True,
            env=env,
            timeout=CANCEL_TIMEOUT + 20,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the cancel waited for the silent server past its timeout, blocking")
    finally:
        relay.close()
    assert done.returncode == 0, done.stderr
    took, ticks = done.stdout.split()
    assert relay.held, "the cancel request never reached the silent server"
    assert float(took) < CANCEL_TIMEOUT + 1.0
    # A tick every 10 ms: a process held up by the cancel would count none.
    assert int(ticks) > float(took) * 100 / 4, done.stdout


def test_postgres_waits_for_a_free_connection_no_longer_than_the_deadline(
    postgres_storage: PostgresStorage,
) -> None:
    url = postgres_storage.url
    one = PostgresStorage(url, pool_size=1)
    first, second = stored(R1, T + 100), stored(R2, T + 200)
    outcome: list[str] = []

    def store_first() -> None:
        one.store(first, deadline=time.monotonic() + 30.0)
        outcome.append("stored")

    try:
        with another_writer(url):
            # The pool's one connection waits for the lock...
            waiting = threading.Thread(target=store_first)
            waiting.start()
            _until_a_lock_is_awaited(url)
            # ...so the next report waits for it no longer than its deadline.
            began = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                one.store(second, deadline=time.monotonic() + 0.2)
            assert time.monotonic() - began < 2.0
        waiting.join(30)
        assert outcome == ["stored"]
        one.store(second, deadline=time.monotonic() + 5.0)
    finally:
        one.close()
    assert postgres_storage.totals(0)["reports"] == 2


def _socket_options(storage: PostgresStorage, streaming: bool = False) -> dict[str, int]:
    """The TCP options of a connection ``storage`` opens (from its pool, or
    for a stream of rows), as the kernel holds them."""
    if streaming:
        with storage._stream_connection() as connection:
            probe = socket.socket(fileno=os.dup(connection.pgconn.socket))
    else:
        with storage._pool.connection() as (connection, _):
            probe = socket.socket(fileno=os.dup(connection.pgconn.socket))
    try:
        return {
            "keepalive": probe.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout": probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        probe.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's TCP options")
@pytest.mark.parametrize("streaming", [False, True], ids=["pool", "export and roll-up"])
def test_postgres_connections_notice_a_silent_server_in_seconds(
    postgres_storage: PostgresStorage, streaming: bool
) -> None:
    """Without keepalives and a TCP user timeout, a connection to a server
    cut off by the network waits some 15 minutes, holding a pool slot (or
    an export, or the hourly roll-up, and the shutdown behind it)."""
    assert _socket_options(postgres_storage, streaming) == {
        "keepalive": 1,
        "idle": 10,
        "interval": 5,
        "count": 3,
        "user_timeout": 25000,
    }
    # An operator's own values, in the URL, win.
    url = postgres_storage.url
    tuned = PostgresStorage(
        f"{url}{'&' if '?' in url else '?'}keepalives_idle=60&tcp_user_timeout=0"
    )
    try:
        options = _socket_options(tuned, streaming)
    finally:
        tuned.close()
    assert (options["idle"], options["user_timeout"], options["count"]) == (60, 0, 3)


def test_postgres_gives_up_connecting_by_the_deadline() -> None:
    """A server that accepts connections but never answers them (a stopped
    one: its host still completes the TCP handshake) is given what is left of
    the report's deadline, in libpq's whole seconds, not the 10 s of
    ``connect_timeout``."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepted by the kernel, never read
        port = silent.getsockname()[1]
        storage = PostgresStorage(f"postgresql://nobody@127.0.0.1:{port}/nothing")
        began = time.monotonic()
        try:
            with pytest.raises(psycopg.OperationalError):
                storage.store(stored(R1, T + 100), deadline=time.monotonic() + 3.9)
        finally:
            storage.close()
        waited = time.monotonic() - began
    assert 2.5 < waited < 3.9


def _until_a_lock_is_awaited(url: str) -> None:
    """Return once some session waits for a lock (``pg_locks``), within 10 s."""
    import psycopg

    deadline = time.monotonic() + 10.0
    with psycopg.connect(url, autocommit=True) as connection:
        while not connection.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[
            0
        ]:
            assert time.monotonic() < deadline, "no session began to wait for the lock"
            time.sleep(0.01)


# -- opening by URL (no database needed) ---------------------------------------------------


def test_open_storage_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_storage("sqlite:///data/relative.db")
    assert isinstance(relative, SQLiteStorage) and relative.path == "data/relative.db"
    absolute = open_storage(f"sqlite:///{tmp_path}/absolute.db")
    assert isinstance(absolute, SQLiteStorage)
    assert absolute.path == f"{tmp_path}/absolute.db" and absolute.path.startswith("/")
    bare = open_storage("bare.db")
    assert isinstance(bare, SQLiteStorage) and bare.path == "bare.db"
    memory = open_storage("sqlite:///:memory:")
    assert isinstance(memory, SQLiteStorage) and memory.path == ":memory:"
    memory.migrate()
    assert memory.totals(0)["reports"] == 0
    for storage in (relative, absolute, bare, memory):
        storage.close()
    assert (tmp_path / "data" / "relative.db").exists()
    # PostgreSQL connects lazily: opening does not need a server.
    for url in ("postgresql://u:secret@db.invalid/x", "postgres://db.invalid/x"):
        storage = open_storage(url)
        assert isinstance(storage, PostgresStorage)
        assert "secret" not in repr(storage)
        storage.close()


def test_read_only_sqlite_opens_an_existing_file_only(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "nothere.db"
    for url in (f"sqlite:///{missing}", str(missing)):
        with pytest.raises(FileNotFoundError):
            open_storage(url, read_only=True)
    assert not (tmp_path / "typo").exists()
    with pytest.raises(FileNotFoundError):
        open_storage("sqlite:///:memory:", read_only=True)


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db dbname=telemetry user=telemetry",
        "dbname=telemetry",
        "host=db password=hunter2 dbname=telemetry",
        "  dbname=telemetry  ",
    ],
)
def test_a_libpq_keyword_string_is_not_taken_for_a_file(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Taken as a file name, each production replica would keep its own SQLite.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="postgresql://") as refused:
        open_storage(dsn)
    assert "hunter2" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []
    # Spelled as a URL, a SQLite file with such a name still works.
    named = open_storage(f"sqlite:///{tmp_path}/a=b c.db")
    named.close()


def test_describe_database_hides_passwords() -> None:
    assert (
        describe_database("postgresql://u:hunter2@db:5432/x?password=hunter2&sslmode=require")
        == "postgresql://u:***@db:5432/x?password=***&sslmode=require"
    )
    assert describe_database("host=db password=hunter2 dbname=x") == (
        "host=db password=*** dbname=x"
    )
    assert describe_database("sqlite:///data/t.db") == "sqlite:///data/t.db"
    # Generated passwords have "/", "?" or "#", which end a parsed netloc early.
    assert describe_database("postgresql://u:Ab3/x9+Q#z?@db:5432/x") == (
        "postgresql://u:***@db:5432/x"
    )


@pytest.mark.parametrize(
    ("url", "described"),
    [
        # urlsplit raises on these; libpq refuses them too, and says so in a line.
        ("postgresql://app:S3cretPW@[::1/telemetry", "postgresql://app:***@[::1/telemetry"),
        (
            "postgresql://app@[::1/x?password=S3cretPW&sslmode=require",
            "postgresql://app@[::1/x?password=***",
        ),
        ("postgres://app:S3cretPW@[/x", "postgres://app:***@[/x"),
    ],
)
def test_describe_database_never_raises_and_still_hides_the_password(
    url: str, described: str
) -> None:
    assert describe_database(url) == described


@pytest.mark.parametrize(
    ("url", "message", "masked"),
    [
        (
            "postgresql://app:S3cr%tPW@db/telemetry",
            'invalid percent-encoded token: "S3cr%tPW"',
            'invalid percent-encoded token: "***"',
        ),
        (  # libpq decodes the URL before it complains about the value
            "postgresql://app:S3cr%41PW@db/telemetry",
            'password "S3crAPW" and "S3cr%41PW"',
            'password "***" and "***"',
        ),
        (
            "postgresql://app:S3cretPW@[::1/telemetry",
            'in URI: "postgresql://app:S3cretPW@[::1/telemetry"',
            'in URI: "postgresql://app:***@[::1/telemetry"',
        ),
        (
            "postgresql://app@db/x?sslmode=require&password=S3cr%20PW",
            'bad value "S3cr PW"',
            'bad value "***"',
        ),
        (
            "host=db password='S3cr PW' dbname=x",
            'missing "=" after "S3cr PW" in connection info string',
            'missing "=" after "***" in connection info string',
        ),
        ("postgresql://app@db/x", "connection refused", "connection refused"),
    ],
)
def test_mask_passwords_hides_them_in_a_drivers_message(
    url: str, message: str, masked: str
) -> None:
    assert mask_passwords(message, url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///t.db?timeout=30",
        "sqlite:///t.db#backup",
        "sqlite:////tmp/t.db?mode=ro&uri=true",
        "sqlite:///:memory:?cache=shared",
        "sqlite:///t.db?key=s3cr3t",
    ],
)
def test_a_sqlite_url_with_a_query_or_fragment_is_refused(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taken as a path, ``sqlite:///t.db?timeout=30`` made a file of that very
    name, the option lost; the query itself is not quoted back (it may hold a key)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="SQLite URLs take no query or fragment") as refused:
        open_storage(url)
    assert "s3cr3t" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "message", "masked"),
    [
        (  # the first "@" ends the user info: the rest is read as the host
            "postgresql://app:Zq9@Xw7Kv3@db.invalid/telemetry",
            "failed to resolve host 'Xw7Kv3@db.invalid': [Errno -2] Name or service not known",
            "failed to resolve host '***@db.invalid': [Errno -2] Name or service not known",
        ),
        (  # a host, then a port, then the password's end as the host again
            "postgresql://app:Zq9@Xw7:Kv3@db/x",
            'invalid integer value "Kv3@db" for connection option "port"',
            'invalid integer value "***@db" for connection option "port"',
        ),
        (  # a "/" first: no user info at all, and "?" starts the parameters
            "postgresql://app:Zq9/Xw7?Kv3@db/x",
            'missing key/value separator "=" in URI query parameter: "Kv3@db/x"',
            'missing key/value separator "=" in URI query parameter: "***@db/x"',
        ),
        (  # a raw "&" in a password of the query: the rest is a parameter
            "postgresql://app@db/x?password=Zq9&Xw7=Kv3&sslmode=require",
            'invalid URI query parameter: "Xw7"',
            'invalid URI query parameter: "***"',
        ),
        (  # a parameter libpq knows ends the password: its name stays readable
            "postgresql://app@db/x?password=Zq9&sslmode=requre",
            'invalid sslmode value: "requre"',
            'invalid sslmode value: "requre"',
        ),
    ],
)
def test_mask_passwords_hides_each_piece_libpq_cut_a_password_into(
    url: str, message: str, masked: str
) -> None:
    assert mask_passwords(message, url) == masked


@pytest.mark.parametrize(
    ("url", "described"),
    [
        (  # the "@" of the query's password was taken for the end of the user info
            "postgresql://app@db:5432/x?password=Zq9@Xw7Kv3&sslmode=require",
            "postgresql://app@db:5432/x?password=***&sslmode=require",
        ),
        (  # the part of a password after its raw "&" is no parameter to show
            # unreadable to libpq: hidden from its first secret on
            "postgresql://app@db/x?password=Zq9&Xw7=Kv3&sslmode=require",
            "postgresql://app@db/x?password=***",
        ),
    ],
)
def test_describe_database_hides_a_query_password_with_an_at_or_an_ampersand(
    url: str, described: str
) -> None:
    assert describe_database(url) == described


def test_describe_database_hides_every_secret_parameter_of_libpq() -> None:
    """Not only ``password=``: the client key's passphrase and the OAuth and
    SCRAM secrets are secrets too, in the banner and in a driver's message."""
    url = (
        "postgresql://app@db/x?sslpassword=K3yPass&sslmode=require"
        "&oauth_client_secret=0aSecret&scram_client_key=ScrKey1"
    )
    described = describe_database(url)
    assert described == (
        "postgresql://app@db/x?sslpassword=***&sslmode=require"
        "&oauth_client_secret=***&scram_client_key=***"
    )
    message = 'could not read key "K3yPass"; oauth "0aSecret"; scram "ScrKey1"'
    assert mask_passwords(message, url) == 'could not read key "***"; oauth "***"; scram "***"'


#: Passwords with characters at which libpq cuts a URL, unescaped. Each of
#: their stretches of 3 characters is unlikely to occur in any message.
CUT_PASSWORDS = [
    "Zq9@Xw7Kv3",
    "Zq9@Xw7:Kv3",
    "Zq9/Xw7?Kv3",
    "Zq9/Xw7:Kv3@Jm4",
    "Zq9,Xw7@Kv3/Jm4",
    "Zq9#Xw7%zzKv3 Jm4",
    "Zq9&Xw7=Kv3",
]


def password_stretches(password: str) -> set[str]:
    """Every stretch of 3 characters of ``password``: none may be shown."""
    return {password[i : i + 3] for i in range(len(password) - 2)}


@pytest.mark.parametrize("password", CUT_PASSWORDS)
@pytest.mark.parametrize(
    "shape",
    [
        "postgresql://app:{password}@127.0.0.1:{port}/telemetry",
        "postgresql://app:{password}@db.invalid/telemetry",
        "postgresql://app@127.0.0.1:{port}/telemetry?password={password}",
    ],
)
def test_no_piece_of_an_unescaped_password_is_shown(password: str, shape: str) -> None:
    """libpq reads a piece of such a password as a host, a port or a
    parameter, and quoted it back in the error (``failed to resolve host
    'Xw7Kv3@127.0.0.1'``); the storage's repr showed it as the host."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: the connection is refused
    url = shape.format(password=password, port=port)
    storage = open_storage(url)
    try:
        with pytest.raises(database_errors()) as failed:
            storage.migrate()
        shown = [str(failed.value), repr(storage), describe_database(url)]
    finally:
        storage.close()
    for text in shown:
        assert not {piece for piece in password_stretches(password) if piece in text}, text
    # Nor is the unmasked error kept along the chain, where error trackers look.
    assert failed.value.__context__ is None and failed.value.__cause__ is None


@pytest.mark.parametrize(
    ("url", "described", "shown_in_repr"),
    [
        (  # the most common development setup: the password is every other word
            "postgresql://postgres:postgres@localhost:5432/postgres",
            "postgresql://postgres:***@localhost:5432/postgres",
            "host='localhost', dbname='postgres'",
        ),
        ("postgresql://app:db@db/x", "postgresql://app:***@db/x", "host='db', dbname='x'"),
        ("postgresql://app:b@db/x", "postgresql://app:***@db/x", "host='db', dbname='x'"),
        (
            "postgresql://app:5432@db:5432/x?sslmode=require",
            "postgresql://app:***@db:5432/x?sslmode=require",
            "host='db', dbname='x'",
        ),
        (  # libpq reads Xw7Kv3@db as the host: its piece is masked, the rest is not
            "postgresql://app:Zq9@Xw7Kv3@db/telemetry",
            "postgresql://app:***@***@db/telemetry",
            "host='***', dbname='telemetry'",
        ),
        (  # an "@" in a parameter is no end of a user info (Azure's user=app@server)
            "postgresql://db.example.com:5432/telemetry?application_name=ops@team&password=S3cretPass",
            "postgresql://db.example.com:5432/telemetry?application_name=ops%40team&password=***",
            "host='db.example.com', dbname='telemetry'",
        ),
        (
            "postgresql://db.example.com:5432/telemetry?password=S3cretPass&user=app@myserver",
            "postgresql://app%40myserver@db.example.com:5432/telemetry?password=***",
            "host='db.example.com', dbname='telemetry'",
        ),
    ],
)
def test_a_password_is_masked_where_it_stands_not_wherever_its_word_occurs(
    url: str, described: str, shown_in_repr: str
) -> None:
    """Masked wherever they occurred, a password and its pieces hid the
    scheme, the user, the host and the database in the banner and the repr
    (``***ql://***:***@localhost:5432/***`` for ``postgres:postgres``)."""
    assert describe_database(url) == described
    storage = open_storage(url)
    try:
        assert repr(storage) == f"PostgresStorage({shown_in_repr})"
    finally:
        storage.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # A user info's password holding "?password=", as libpq reads it: shown
        # cut at that "?", its first part showed.
        ("postgresql://app:Secret1?password=Zq9@127.0.0.1:1/telemetry", "postgresql://app:***@"),
        # A query's password holding an "@", and no user info.
        ("postgresql://db.example:5432/x?password=Zq9@Xw7Kv3", "postgresql://db.example:5432/x?"),
    ],
)
def test_a_password_libpq_reads_apart_shows_no_piece(url: str, shown: str) -> None:
    described = describe_database(url)
    assert described.startswith(shown), described
    for secret in ("Secret1", "Zq9", "Xw7Kv3"):
        assert secret not in described


#: Where a password stands in the URLs the description is tried on, with an
#: "@" in a parameter (Azure's user=app@server) among them.
DESCRIBED_SHAPES = [
    "postgresql://app:{password}@db.example.com:5432/telemetry",
    "postgresql://app:{password}@db.example.com/telemetry?sslmode=require",
    "postgresql://app@db.example.com:5432/telemetry?password={password}",
    "postgresql://db.example.com:5432/telemetry?application_name=ops@team&password={password}",
    "postgresql://db.example.com:5432/telemetry?password={password}&user=app@server",
    "postgresql://app:{password}@h1:5432,h2:5433/telemetry",
    "postgres://app:{password}@[::1]:5432/telemetry",
]


def test_random_passwords_leave_no_piece_in_the_description_or_the_repr() -> None:
    """Passwords of letters, digits and every character at which libpq or a
    URL cuts (unescaped, percent-escaped, with spaces), in URLs libpq reads
    and URLs it cannot: no three letters or digits of one are shown. (Two
    can be, between two cuts: masking every such pair would leave nothing
    readable.)"""
    rng = random.Random(20261207)
    alphabet = string.ascii_uppercase + string.digits + "@/?:&=,#% "
    for _ in range(400):
        password = "".join(rng.choice(alphabet) for _ in range(rng.randint(4, 30)))
        stretches = {
            password[i : i + 3]
            for i in range(len(password) - 2)
            if password[i : i + 3].isalnum() and not password[i : i + 3].isdigit()
        }
        for shape in DESCRIBED_SHAPES:
            url = shape.format(password=password)
            described = describe_database(url)
            assert not {piece for piece in stretches if piece in described}, (url, described)
            # What the storage's repr shows: libpq's host and database, each through shown_part.
            try:
                read = psycopg.conninfo.conninfo_to_dict(url)
            except (psycopg.ProgrammingError, UnicodeDecodeError):
                continue  # the repr says <unparsable url>
            for name in ("host", "dbname"):
                shown = shown_part(read.get(name), url) or ""
                assert not {piece for piece in stretches if piece in shown}, (url, name, shown)


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        # A password's tail read by libpq as a parameter's value.
        ("postgresql://app:Kx9vQ2@Mw4Lp7?sslmode=Zq8@127.0.0.1:1/telemetry", ["Kx9", "Mw4"]),
        ("postgresql://app:1234/Rt9vQ2?application_name=Zq8@db.example.com/telemetry", ["Rt9"]),
        # A user info's password holding a secret's name, in a URL libpq cannot read.
        ("postgresql://app:S3cretPart?password=x%zz@db.example.com/telemetry", ["S3cret"]),
        ("postgresql://app:S3cretPart&sslpassword=x y@db.example.com/telemetry", ["S3cret"]),
        # A keyword string with a secret other than a password.
        ("host=db scram_client_key=AbCdEfGh123", ["AbCdEf"]),
    ],
)
def test_passwords_libpq_reads_into_other_parts_are_not_described(
    url: str, secrets: list[str]
) -> None:
    described = describe_database(url)
    assert not [secret for secret in secrets if secret in described], described


def test_an_upper_case_scheme_is_read_as_a_url_and_its_password_never_quoted() -> None:
    # libpq takes a URL only with a lower-case scheme: it read this one as a
    # keyword string, and its error quoted "POSTGRESQL://APP:S3cret".
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"POSTGRESQL://APP:S3cret Pass9@127.0.0.1:{port}/x"
    storage = open_storage(url)
    try:
        with pytest.raises(database_errors()) as failed:
            storage.migrate()
    finally:
        storage.close()
    assert "S3cret" not in str(failed.value) and "Pass9" not in str(failed.value)
    assert "S3cret" not in describe_database(url)


def test_a_port_without_a_host_is_still_described() -> None:
    assert describe_database("postgresql://:5433/telemetry") == "postgresql://:5433/telemetry"
    assert describe_database(
        "postgresql://app:pw@/telemetry?host=/var/run/postgresql&port=5433"
    ) == ("postgresql://app:***@/telemetry?host=%2Fvar%2Frun%2Fpostgresql&port=5433")


def test_describing_a_url_nothing_can_read_never_raises() -> None:
    # A --db byte that is no UTF-8 comes as a lone surrogate.
    assert describe_database("postgresql://u:pw@h/x?application_name=\udcff") == (
        "postgresql://***"
    )


def test_a_long_password_full_of_cuts_has_pieces_in_proportion_to_its_length() -> None:
    # Every pair of cut positions gave 490,000 pieces for 2,000 characters
    # (778 MiB, a second for every message masked).
    from reqtelemetry.collector.storage import _password_pieces

    password = "".join(random.Random(7).choice("ab@/:?&=,") for _ in range(2000))
    pieces = _password_pieces(password)
    assert len(pieces) <= 5 * len(password)
    url = f"postgresql://app:{password}@db/x"
    assert mask_passwords(f"host '{password[-40:]}' unknown", url).count("***") >= 1


def test_a_bare_path_with_spaces_is_a_sqlite_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = open_storage("Application Support/collector.db")
    storage.close()
    assert (tmp_path / "Application Support" / "collector.db").exists()


@pytest.mark.parametrize(
    "url", ["", "mysql://localhost/x", "sqlite://host/x.db", "sqlite://", "postgresql+psycopg://x"]
)
def test_open_storage_refuses_unknown_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_storage(url)


def _huge_call(count: int, status: int = 200, route: str = "/x") -> dict[str, Any]:
    """A report of one record of ``count`` requests (all in one histogram
    bucket, so the record holds together) of ``count`` bytes each way."""
    payload = make_payload(
        DEP_A, A1, {**LINUX, "app_version": "1.0"}, [("GET", route, status, [0.01], 0, 10)]
    )
    record = payload["batch"]["records"][0]
    record.update(count=count, request_bytes=count, response_bytes=count)
    record["latency"]["histogram"] = [[record["latency"]["histogram"][0][0], count]]
    return payload


def exact_sums(total: int, requests: int) -> dict[str, Any]:
    """What :func:`_summed` reads of ``/x`` when its requests add up to
    ``total``, all of them errors, among ``requests`` in all."""
    fields = ("calls", "errors", "request_bytes", "response_bytes", "bucket")
    return {"total requests": requests, "total errors": total, **dict.fromkeys(fields, total)}


def _summed(storage: SQLStorage) -> dict[str, Any]:
    """Every integer sum the dashboard and the CSV read of the one endpoint
    ``/x``: its totals, its rows in every endpoint list, and its histogram's
    bucket count."""
    totals = storage.totals(since=0)
    summary = storage.endpoint_summary(since=0)
    rows = [
        *storage.endpoints(since=0),
        *storage.endpoints(since=0, by_version=True),
        *summary["endpoints"],
        *summary["endpoints_by_version"],
        *storage.iter_endpoints(since=0),
    ]
    fields = ("calls", "errors", "request_bytes", "response_bytes")
    (endpoint,) = {tuple(row[field] for field in fields) for row in rows if row["route"] == "/x"}
    window = storage._read(lambda ex: storage._window(ex, 0.0))
    sql, params = storage._figures_sql(("method", "route"), window, None)
    (histogram,) = [
        row[-1] for row in storage._run(lambda ex: ex.query(sql, params)) if row[1] == "/x"
    ]
    _, count = histogram.split(":")  # "index:count", one bucket
    return {
        "total requests": totals["requests"],
        "total errors": totals["errors"],
        **dict(zip(fields, endpoint, strict=True)),
        "bucket": int(count),
    }


@pytest.mark.parametrize(
    "counts",
    [
        pytest.param([2**53 + 1] * 3, id="past-2**53"),  # where a float first rounds
        pytest.param([2**62 + 1, 2**62 + 1], id="past-2**63"),  # hostile: SQLite's SUM fails
        pytest.param([2**63 - 1] * 4 + [3], id="far-past-2**63"),
    ],
)
def test_integer_sums_are_exact_and_alike_on_both_backends(
    storage: SQLStorage, counts: list[int]
) -> None:
    """Counts, errors, bytes and histogram buckets add up exactly, past 2**53
    (where floats round) and past 2**63 (where SQLite's 64-bit SUM stops), so
    that SQLite and PostgreSQL show the same numbers, never an error."""
    for count in counts:
        storage.store(stored(_huge_call(count, status=500), received_at=T))
    storage.store(stored(_huge_call(1, route="/small"), received_at=T))
    total = sum(counts)
    assert _summed(storage) == exact_sums(total, requests=total + 1)
    small = [row for row in storage.endpoints(since=0) if row["route"] == "/small"]
    assert [(row["calls"], row["response_bytes"]) for row in small] == [(1, 1)]
    # The transaction that read past 2**63 is over: the storage still writes.
    storage.store(stored(_huge_call(1), received_at=T))
    assert _summed(storage)["calls"] == total + 1


def test_endpoints_past_2_to_the_63_are_listed_busiest_first_on_both_backends(
    storage: SQLStorage,
) -> None:
    """SQLite's exact sum gives a total past 64 bits as text, which SQLite
    sorted as text: /B's 2**63 + 99 came before /A's 2**64 - 2 (PostgreSQL
    put /A first), in the CSV export, the endpoint list and the dashboard's
    cut of the busiest endpoints alike."""
    for counts in ({"/A": 2**63 - 1, "/B": 2**63 - 1}, {"/A": 2**63 - 1, "/B": 100}, {"/C": 5}):
        for route, count in counts.items():
            storage.store(stored(_huge_call(count, route=route), received_at=T))
    expected = [("/A", 2**64 - 2), ("/B", 2**63 + 99), ("/C", 5)]
    listed = [(row["route"], row["calls"]) for row in storage.endpoints(since=0)]
    assert listed == expected
    streamed = [(row["route"], row["calls"]) for row in storage.iter_endpoints(since=0)]
    assert streamed == expected
    summary = storage.endpoint_summary(since=0)
    assert [row["route"] for row in summary["endpoints"]] == ["/A", "/B", "/C"]


def _one_call(route: str = "/x") -> dict[str, Any]:
    return make_payload(
        DEP_A, A1, {**LINUX, "app_version": "1.0"}, [("GET", route, 200, [0.01], 0, 10)]
    )


def test_a_value_no_column_holds_is_unstorable_and_writes_nothing(
    backend: Backend, storage: SQLStorage
) -> None:
    # Past the collector's checks only by a bug; a retry could never succeed,
    # so it must not look like an outage (the app answers 422, not 503).
    payload = _one_call()
    payload["batch"]["records"][0]["count"] = 2**63
    with pytest.raises(UnstorableReport):
        storage.store(stored(payload, received_at=T))
    assert set(row_counts(storage).values()) == {0}
    storage.store(stored(_one_call(), received_at=T))  # the storage still works
    assert storage.totals(since=0)["requests"] == 1


def test_nul_in_text_is_unstorable_on_postgres_only(backend: Backend, storage: SQLStorage) -> None:
    # The collector refuses NUL before storing on both backends (verify.py);
    # this is why it must. (Set after building: the client mends a NUL.)
    payload = _one_call()
    payload["batch"]["records"][0]["route"] = "/a\0b"
    if backend.name == "postgres":
        with pytest.raises(UnstorableReport):
            storage.store(stored(payload, received_at=T))
        assert row_counts(storage)["reports"] == 0
    else:
        storage.store(stored(payload, received_at=T))
        assert row_counts(storage)["reports"] == 1


def test_an_endpoint_too_long_for_postgres_index_is_unstorable_not_an_outage(
    backend: Backend, storage: SQLStorage
) -> None:
    # The collector refuses it first (verify.MAX_ENDPOINT_KEY_BYTES); should one
    # get past, PostgreSQL's "index row size exceeds maximum" must still be a
    # value that cannot be held (422), not an outage (503, retried for ever).
    import random

    pick = random.Random(5)  # random four-byte characters: incompressible

    def wide(chars: int) -> str:
        return "".join(chr(pick.randint(0x20000, 0x2A6DF)) for _ in range(chars))

    payload = make_payload(
        DEP_A,
        A1,
        {**LINUX, "app_name": wide(128), "app_version": wide(128)},
        [("GET", "/x", 200, [0.01], 0, 10)],
    )
    # Set after building: the client cuts a route this wide (payload.MAX_ROUTE_BYTES).
    payload["batch"]["records"][0]["route"] = wide(512)
    if backend.name == "postgres":
        with pytest.raises(UnstorableReport, match="index row size"):
            storage.store(stored(payload, received_at=T))
        assert set(row_counts(storage).values()) == {0}
    else:
        storage.store(stored(payload, received_at=T))
        assert row_counts(storage)["aggregates"] == 1


def test_latency_sums_at_the_collectors_bound_add_up_without_overflow(storage: SQLStorage) -> None:
    # verify.py lets a record's latency sum reach count * MAX_LATENCY_SECONDS;
    # PostgreSQL's float8 SUM of many such records must still be finite.
    from reqtelemetry.collector.verify import MAX_LATENCY_SECONDS

    for _ in range(3):
        payload = _one_call()
        record = payload["batch"]["records"][0]
        record["count"] = 2**63 - 1
        record["latency"]["sum"] = record["count"] * MAX_LATENCY_SECONDS
        storage.store(stored(payload, received_at=T))
    (endpoint,) = storage.endpoints(since=0)
    assert endpoint["mean"] == pytest.approx(MAX_LATENCY_SECONDS)


# -- app-defined metrics and dropped requests --------------------------------------------------

DEP_E = "eeeeeeee-0000-4000-8000-000000000005"
DEP_F = "ffffffff-0000-4000-8000-000000000007"
E1 = "e1e1e1e1-0000-4000-8000-000000000051"
F1 = "f1f1f1f1-0000-4000-8000-000000000071"


def metrics_report(
    deployment_id: str,
    instance_id: str,
    app_name: str | None,
    counters: dict[str, float],
    gauges: dict[str, float],
    dropped: int = 0,
) -> dict[str, Any]:
    """A report carrying these metrics (and ``dropped`` requests past the key cap)."""
    payload = make_payload(
        deployment_id,
        instance_id,
        app_traits(LINUX, app_name, "1.0"),
        [("GET", "/", 200, [0.001], 0, 5)],
        metrics={"counters": counters, "gauges": gauges},
    )
    payload["batch"]["dropped"] = dropped
    assert not list(VALIDATOR.iter_errors(payload))
    return payload


#: Inventory runs on three deployments (A with two instances), billing on two,
#: and one deployment names no app. The window starts at T: what came before
#: (inventory's 100 jobs, its 999 users, B's queue depth, 100 dropped requests)
#: is out of it, and the report at T exactly is in.
METRICS = [
    (metrics_report(DEP_A, A1, "inventory", {"jobs.done": 100}, {"users": 999}, 100), T - 0.5),
    (metrics_report(DEP_B, B1, "inventory", {}, {"queue.depth": 50}), T - 0.5),
    (metrics_report(DEP_D, D1, "inventory", {"jobs.done": 1}, {"users": 7}), T),
    (
        metrics_report(
            DEP_A, A1, "inventory", {"jobs.done": 5, "feature.export_pdf": 1}, {"users": 10}, 4
        ),
        T + 100,
    ),
    # A's second instance samples the same gauge: A counts once, at its newest value.
    (metrics_report(DEP_A, A2, "inventory", {"jobs.done": 3}, {"users": 12}), T + 200),
    (metrics_report(DEP_A, A1, "inventory", {"jobs.done": 2}, {"users": 40}), T + 300),
    (metrics_report(DEP_B, B1, "inventory", {"jobs.done": 7}, {"users": 5}, 2), T + 400),
    # A newer report without the gauge leaves A's value as it was.
    (metrics_report(DEP_A, A2, "inventory", {}, {}), T + 600),
    (metrics_report(DEP_C, C1, "billing", {"jobs.done": 1000}, {"users": 1}), T + 500),
    (metrics_report(DEP_E, E1, "billing", {}, {"users": 4}), T + 500),
    (metrics_report(DEP_F, F1, None, {"jobs.done": 4.5}, {}), T + 700),
]

INVENTORY_JOBS = {"app_name": "inventory", "name": "jobs.done", "total": 18.0, "deployments": 3}
BILLING_JOBS = {"app_name": "billing", "name": "jobs.done", "total": 1000.0, "deployments": 1}
UNNAMED_JOBS = {"app_name": None, "name": "jobs.done", "total": 4.5, "deployments": 1}
INVENTORY_PDF = {
    "app_name": "inventory",
    "name": "feature.export_pdf",
    "total": 1.0,
    "deployments": 1,
}
# Inventory's users: A 40 (not 10, 12 or 999), B 5, D 7; billing's: C 1, E 4.
INVENTORY_USERS = {
    "app_name": "inventory",
    "name": "users",
    "sum": 52.0,
    "median": 7.0,
    "max": 40.0,
    "deployments": 3,
}
BILLING_USERS = {
    "app_name": "billing",
    "name": "users",
    "sum": 5.0,
    "median": 2.5,
    "max": 4.0,
    "deployments": 2,
}


@pytest.fixture
def metrics(storage: SQLStorage) -> SQLStorage:
    for payload, received_at in METRICS:
        storage.store(stored(payload, received_at))
    return storage


def test_app_metrics_of_every_app(metrics: SQLStorage) -> None:
    assert metrics.app_metrics(T) == {
        # Most deployments first, then the largest total; the unnamed app is an app.
        "counters": [INVENTORY_JOBS, BILLING_JOBS, UNNAMED_JOBS, INVENTORY_PDF],
        "counter_names": 4,
        "gauges": [INVENTORY_USERS, BILLING_USERS],
        "gauge_names": 2,
        "limit": 100,
    }


def test_app_metrics_of_one_app(metrics: SQLStorage) -> None:
    assert metrics.app_metrics(T, app="billing") == {
        "counters": [BILLING_JOBS],
        "counter_names": 1,
        "gauges": [BILLING_USERS],
        "gauge_names": 1,
        "limit": 100,
    }
    assert metrics.app_metrics(T, app="nobody") == {
        "counters": [],
        "counter_names": 0,
        "gauges": [],
        "gauge_names": 0,
        "limit": 100,
    }


def test_app_metrics_window(metrics: SQLStorage) -> None:
    # From T + 1, D's report at T is out: its job and its 7 users.
    later = metrics.app_metrics(T + 1, app="inventory")
    assert later["counters"][0] == {**INVENTORY_JOBS, "total": 17.0, "deployments": 2}
    assert later["gauges"] == [
        {**INVENTORY_USERS, "sum": 45.0, "median": 22.5, "max": 40.0, "deployments": 2}
    ]
    # From before T, the older reports are in: 100 more jobs, and B's queue
    # depth; A's 999 users stay out, being older than its 40.
    earlier = metrics.app_metrics(T - 1, app="inventory")
    assert earlier["counters"][0] == {**INVENTORY_JOBS, "total": 118.0}
    assert earlier["gauges"] == [
        INVENTORY_USERS,
        {
            "app_name": "inventory",
            "name": "queue.depth",
            "sum": 50.0,
            "median": 50.0,
            "max": 50.0,
            "deployments": 1,
        },
    ]
    assert metrics.app_metrics(T + 10_000)["counters"] == []


def test_app_metrics_are_cut_at_the_limit_and_say_how_many_there_were(
    metrics: SQLStorage,
) -> None:
    cut = metrics.app_metrics(T, limit=2)
    assert cut["counters"] == [INVENTORY_JOBS, BILLING_JOBS]
    assert cut["counter_names"] == 4 and cut["limit"] == 2
    assert metrics.app_metrics(T, limit=1)["gauges"] == [INVENTORY_USERS]


def test_app_metrics_tied_but_for_the_app_are_cut_where_the_uncut_list_puts_them(
    storage: SQLStorage,
) -> None:
    """The cut ordered an unknown app last, the list it cuts first: of two
    rows tied on deployments, total and name, it kept the named app's, which
    the dashboard's list then showed second, as the other cuts no longer do."""
    storage.store(stored(metrics_report(DEP_A, A1, None, {"jobs.done": 1}, {"users": 3}), T))
    storage.store(stored(metrics_report(DEP_B, B1, "billing", {"jobs.done": 1}, {"users": 3}), T))
    uncut = storage.app_metrics(T - 1)
    cut = storage.app_metrics(T - 1, limit=1)
    assert [c["app_name"] for c in uncut["counters"]] == [None, "billing"]
    assert [g["app_name"] for g in uncut["gauges"]] == [None, "billing"]
    assert cut["counters"] == uncut["counters"][:1]
    assert cut["gauges"] == uncut["gauges"][:1]


def test_dropped_requests_per_app(metrics: SQLStorage) -> None:
    assert metrics.dropped(T) == {
        "requests": 6,
        "by_app": [{"app_name": "inventory", "requests": 6, "deployments": 2}],
        "left_out": 0,
    }
    assert metrics.dropped(T - 1, app="inventory")["by_app"] == [
        {"app_name": "inventory", "requests": 106, "deployments": 2}
    ]
    assert metrics.dropped(T, app="billing") == {"requests": 0, "by_app": [], "left_out": 0}
    assert metrics.dropped(T, limit=0) == {"requests": 6, "by_app": [], "left_out": 1}


def test_empty_database_has_no_metrics(storage: SQLStorage) -> None:
    assert storage.app_metrics(0) == {
        "counters": [],
        "counter_names": 0,
        "gauges": [],
        "gauge_names": 0,
        "limit": 100,
    }
    assert storage.dropped(0) == {"requests": 0, "by_app": [], "left_out": 0}


def test_the_metrics_queries_read_indexes_and_no_histogram(
    backend: Backend, metrics: SQLStorage
) -> None:
    """The summary reads these on every load: on SQLite (whose statistics the
    collector never gathers), the window's metric rows are found by their
    index, and their reports by id, never by reading a whole table.
    (PostgreSQL's plan depends on its statistics.)"""
    queries = [
        sql
        for only in ("", " AND r.app_name = ?")
        for sql in (metrics._counters_sql(only), metrics._gauges_sql(only))
    ]
    for sql in queries:
        assert "aggregates" not in sql and "histogram" not in sql
    if backend.name != "sqlite":
        return
    for sql in queries:
        params = (T, T, *(["x"] if "r.app_name = ?" in sql else []), 100)
        plan = metrics._run(
            lambda ex, sql=sql, params=params: ex.query("EXPLAIN QUERY PLAN " + sql, params)
        )
        steps = [str(row[-1]) for row in plan]
        assert any("metrics_kind_received_at (kind=? AND received_at>?)" in s for s in steps), steps
        assert not [step for step in steps if step.split()[:2] in (["SCAN", "r"], ["SCAN", "m"])]


def test_a_version_2_database_gets_its_metrics_index(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 3 adds one index: the metrics stored before it are all there,
    and read through it."""
    old = backend.open()
    old.migrations = old.migrations[:2]
    old.migrate()
    with monkeypatch.context() as release_2:
        # That release's store: no roll-up state to look at (version 4).
        nothing = "SELECT version, version FROM schema_migrations WHERE version < 0{lock}"
        release_2.setattr(sql_module, "STATE_SQL", nothing)
        for payload, received_at in METRICS:
            old.store(stored(payload, received_at))
    before = old.app_metrics(T)
    storage = backend.open()
    storage.migrate()
    assert storage.schema_version() == LATEST
    assert storage.app_metrics(T) == before
    assert before["counters"] == [INVENTORY_JOBS, BILLING_JOBS, UNNAMED_JOBS, INVENTORY_PDF]
    indexes = (
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'metrics'"
        if backend.name == "sqlite"
        else "SELECT indexname FROM pg_indexes WHERE tablename = 'metrics'"
        " AND schemaname = current_schema()"
    )
    names = {row[0] for row in storage._run(lambda ex: ex.query(indexes))}
    assert "metrics_kind_received_at" in names


def test_the_sqlite_log_is_cut_back_once_readers_let_it_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a dashboard read holds an old snapshot, the write-ahead log grows
    (5 GB beside a 3 GB database, at a popular project's scale), and SQLite
    kept the file at its largest for good. Here at a limit of 64 KiB."""
    import sqlite3

    from reqtelemetry.collector.storage import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "WAL_SIZE_LIMIT", 64 * 1024, raising=False)
    path = tmp_path / "wal.db"
    storage = SQLiteStorage(str(path))
    storage.migrate()
    wal = Path(f"{path}-wal")
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM reports").fetchone()  # a snapshot held
        for n in range(60):
            storage.store(stored(R1, T + n, stamp=f"wal-{n}"))
        grown = wal.stat().st_size
        assert grown > 4 * 64 * 1024
        reader.execute("COMMIT")  # the snapshot let go: a checkpoint can empty the log
        storage._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        storage.store(stored(R1, T + 100, stamp="wal-after"))  # the log starts over
        # Cut to the limit, then the one report written after it.
        assert wal.stat().st_size < min(grown / 4, 2 * 64 * 1024)
    finally:
        reader.close()
        storage.close()
