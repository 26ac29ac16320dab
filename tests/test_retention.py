"""Data retention: what ``Storage.prune`` deletes and keeps, on SQLite and a real
PostgreSQL; the collector's hourly pruning; ``reqtelemetry prune``; the settings.

What is stored is read back with the database's own driver (through the
storage's executor for the counts), never through the code under test.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

import test_storage
from collector_stack import (
    DAY,
    running_collector,
    sqlite_database,
    store_old_report,
)
from reqtelemetry.cli import main
from reqtelemetry.collector.settings import (
    ENV_RETENTION_DAYS,
    CollectorSettings,
    SettingsError,
)
from reqtelemetry.collector.storage import sql as sql_module
from reqtelemetry.collector.storage.base import Pruned
from reqtelemetry.collector.storage.sql import SQLStorage
from test_storage import LINUX, T, make_payload, stored

#: The storage suite's fixtures: each test below runs on SQLite and on PostgreSQL.
backend = test_storage.backend
storage = test_storage.storage

SECRET = b"retention-test-secret-0123456789"
DEP_OLD = "0d0d0d0d-0000-4000-8000-000000000001"
DEP_KEPT = "0e0e0e0e-0000-4000-8000-000000000002"
OLD_ONLY = "0d0d0d0d-0000-4000-8000-000000000011"
OLD_AND_NEW = "0e0e0e0e-0000-4000-8000-000000000021"
#: Everything received before this is past the retention in these tests.
BEFORE = T - DAY


def rows(storage: SQLStorage, table: str) -> int:
    return int(storage._run(lambda ex: ex.query(f"SELECT COUNT(*) FROM {table}"))[0][0])


def report(deployment: str, instance: str, route: str, sequence: int = 0) -> dict:
    return make_payload(
        deployment,
        instance,
        {**LINUX, "app_version": "2.0"},
        [("GET", route, 200, [0.010, 0.020], 0, 100), ("GET", route, 500, [0.3], 0, 0)],
        metrics={"counters": {"jobs.done": 3}, "gauges": {}},
        sequence=sequence,
    )


def test_prune_deletes_what_is_past_the_retention_and_keeps_the_rest(storage):
    # A deployment seen only long ago; another with an instance seen then and now.
    storage.store(stored(report(DEP_OLD, OLD_ONLY, "/gone"), BEFORE - 30 * DAY))
    storage.store(stored(report(DEP_KEPT, OLD_AND_NEW, "/old-route"), BEFORE - 1))
    storage.store(stored(report(DEP_KEPT, OLD_AND_NEW, "/kept", sequence=1), BEFORE + 1))
    storage.add_refusals({"bad_stamp": 1})
    assert (rows(storage, "reports"), rows(storage, "aggregates"), rows(storage, "metrics")) == (
        3,
        6,
        3,
    )

    pruned = storage.prune(BEFORE)

    assert pruned == Pruned(reports=2, instances=1, deployments=1)
    assert (rows(storage, "reports"), rows(storage, "aggregates"), rows(storage, "metrics")) == (
        1,
        2,
        1,
    )
    remaining = storage._run(
        lambda ex: ex.query("SELECT DISTINCT route, instance_id, deployment_id FROM aggregates")
    )
    assert remaining == [("/kept", OLD_AND_NEW, DEP_KEPT)]
    assert storage._run(lambda ex: ex.query("SELECT id FROM instances")) == [(OLD_AND_NEW,)]
    assert storage._run(lambda ex: ex.query("SELECT id FROM deployments")) == [(DEP_KEPT,)]
    # The dashboard's questions see only what is left; routes unused since the
    # retention are no longer listed.
    totals = storage.totals(0.0)
    assert (totals["deployments"], totals["instances"], totals["reports"]) == (1, 1, 1)
    assert {row["route"] for row in storage.endpoints(0.0)} == {"/kept"}
    assert storage.refusals() == {"bad_stamp": 1}  # counters have no dates: kept
    # Nothing more to delete: a second run is a no-op.
    assert storage.prune(BEFORE) == Pruned(reports=0, instances=0, deployments=0)


def test_prune_works_in_batches_and_stops_between_them(storage, monkeypatch):
    monkeypatch.setattr(sql_module, "PRUNE_BATCH", 2)
    for sequence in range(5):
        instance = str(uuid.uuid4())
        storage.store(stored(report(DEP_OLD, instance, "/gone", sequence), BEFORE - 10))
    stop = threading.Event()
    stop.set()  # as at shutdown: the batch under way ends the run
    # The instances whose reports went with that batch go too.
    assert storage.prune(BEFORE, stop) == Pruned(reports=2, instances=2, deployments=0)
    assert rows(storage, "reports") == 3
    # The next run takes the rest, batch after batch.
    assert storage.prune(BEFORE) == Pruned(reports=3, instances=3, deployments=1)
    assert rows(storage, "reports") == rows(storage, "instances") == 0


def test_a_report_stored_while_pruning_keeps_its_instance(storage, monkeypatch):
    """An instance whose last report is old is deleted only once it has no report
    left: one that reports again meanwhile is kept, with its new report."""
    storage.store(stored(report(DEP_KEPT, OLD_AND_NEW, "/old-route"), BEFORE - 10))
    backend_class = type(storage)
    original = backend_class._run

    def store_a_new_report_between_batches(self, work, write=False, deadline=None):  # type: ignore[no-untyped-def]
        result = original(self, work, write, deadline)
        if write and not getattr(self, "_stored_meanwhile", False):
            self._stored_meanwhile = True
            self.store(stored(report(DEP_KEPT, OLD_AND_NEW, "/kept", 1), BEFORE + 10))
        return result

    monkeypatch.setattr(backend_class, "_run", store_a_new_report_between_batches)
    assert storage.prune(BEFORE) == Pruned(reports=1, instances=0, deployments=0)
    monkeypatch.undo()
    assert storage._run(lambda ex: ex.query("SELECT id FROM instances")) == [(OLD_AND_NEW,)]
    assert storage._run(lambda ex: ex.query("SELECT DISTINCT route FROM aggregates")) == [
        ("/kept",)
    ]


@pytest.mark.e2e
def test_a_report_arriving_during_a_prune_never_deadlocks_on_postgres(postgres_url, monkeypatch):
    """store() upserts a deployment, then its instance. A prune that took the
    instance first and then wanted the deployment deadlocked with a report from
    an instance quiet for longer than the retention. The report is held right
    after its deployment upsert while the prune runs, then let go: both must
    commit."""
    from postgres import scratch_schema
    from reqtelemetry.collector.storage import open_storage
    from reqtelemetry.collector.storage import postgres as postgres_module

    upserted, released = threading.Event(), threading.Event()
    original = postgres_module._PostgresExecutor.execute

    def hold_after_the_deployment(self, sql, params=()):  # type: ignore[no-untyped-def]
        original(self, sql, params)
        if sql.startswith("INSERT INTO deployments") and threading.current_thread().name == "store":
            upserted.set()
            released.wait(30)

    with scratch_schema(postgres_url) as url:
        storage = open_storage(url)
        try:
            storage.migrate()
            storage.store(stored(report(DEP_OLD, OLD_ONLY, "/gone"), BEFORE - 10 * DAY))
            # Its reports went in an earlier batch: the instance and deployment are next.
            storage._run(lambda ex: ex.execute("DELETE FROM reports"), write=True)
            monkeypatch.setattr(
                postgres_module._PostgresExecutor, "execute", hold_after_the_deployment
            )
            failures: list[BaseException] = []
            outcome: list[Pruned] = []

            def run(name: str, work) -> threading.Thread:  # type: ignore[no-untyped-def]
                def guarded() -> None:
                    try:
                        work()
                    except BaseException as error:
                        failures.append(error)

                thread = threading.Thread(target=guarded, name=name)
                thread.start()
                return thread

            again = report(DEP_OLD, OLD_ONLY, "/back", sequence=1)
            store = run("store", lambda: storage.store(stored(again, BEFORE + DAY)))
            assert upserted.wait(10)
            prune = run("prune", lambda: outcome.append(storage.prune(BEFORE)))
            time.sleep(0.5)  # the prune reaches the rows the report holds
            released.set()
            store.join(30)
            prune.join(30)
            assert failures == []
            assert outcome == [Pruned(reports=0, instances=0, deployments=0)]
            monkeypatch.undo()
            assert storage._run(lambda ex: ex.query("SELECT id FROM instances")) == [(OLD_ONLY,)]
            assert storage._run(lambda ex: ex.query("SELECT DISTINCT route FROM aggregates")) == [
                ("/back",)
            ]
        finally:
            released.set()
            storage.close()


# -- the collector prunes by itself ----------------------------------------------------------


def wait_until(condition, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_the_collector_deletes_reports_past_its_retention_at_start(tmp_path):
    database = sqlite_database(tmp_path)
    store_old_report(database.url, DEP_OLD, "1.0", [("GET", "/gone", 200, 0.01)], days_ago=40)
    store_old_report(database.url, DEP_KEPT, "1.1", [("GET", "/kept", 200, 0.01)], days_ago=20)
    assert database.report_count() == 2
    with running_collector(database.url, retention_days=30) as collector:
        assert wait_until(lambda: database.report_count() == 1), database.report_count()
        summary = collector.summary(days=90)
        assert summary["totals"]["deployments"] == 1
        assert {row["route"] for row in summary["endpoints"]} == {"/kept"}
        started = time.monotonic()
    # The hourly timer does not hold up the shutdown.
    assert time.monotonic() - started < 10
    assert database.query("SELECT id FROM deployments") == [(DEP_KEPT,)]


def test_without_a_retention_the_collector_keeps_everything(tmp_path):
    database = sqlite_database(tmp_path)
    store_old_report(database.url, DEP_OLD, "1.0", [("GET", "/old", 200, 0.01)], days_ago=4000)
    with running_collector(database.url) as collector:
        assert collector.summary(days=3650)["totals"]["reports"] == 0  # older than any window
        time.sleep(0.5)  # a retention would have pruned at start by now
    assert database.report_count() == 1


# -- reqtelemetry prune ----------------------------------------------------------------------


def test_prune_command_deletes_what_is_older(capsys, tmp_path):
    database = sqlite_database(tmp_path)
    store_old_report(database.url, DEP_OLD, "1.0", [("GET", "/gone", 200, 0.01)], days_ago=100)
    store_old_report(database.url, DEP_KEPT, "1.1", [("GET", "/kept", 200, 0.01)], days_ago=5)
    assert main(["prune", "--db", database.url, "--older-than-days", "90"]) == 0
    assert "deleted 1 reports, 1 instances and 1 deployments" in capsys.readouterr().err
    assert database.query("SELECT DISTINCT route FROM aggregates") == [("/kept",)]


def test_prune_command_needs_an_existing_database_at_this_schema(capsys, tmp_path):
    missing = tmp_path / "missing.db"
    assert main(["prune", "--db", f"sqlite:///{missing}", "--older-than-days", "30"]) == 2
    assert "cannot use the database" in capsys.readouterr().err
    assert not missing.exists()  # a typo creates nothing
    empty = tmp_path / "other.db"
    empty.write_bytes(b"")
    assert main(["prune", "--db", f"sqlite:///{empty}", "--older-than-days", "30"]) == 2
    assert "reqtelemetry prune: error:" in capsys.readouterr().err
    assert empty.read_bytes() == b""  # not migrated on the way


@pytest.mark.parametrize("days", ["0", "-3", "36501"])
def test_prune_command_refuses_a_retention_out_of_range(capsys, tmp_path, days):
    database = sqlite_database(tmp_path)
    store_old_report(database.url, DEP_OLD, "1.0", [("GET", "/x", 200, 0.01)], days_ago=100)
    assert main(["prune", "--db", database.url, "--older-than-days", days]) == 2
    assert "--older-than-days must be from 1 to 36500" in capsys.readouterr().err
    assert database.report_count() == 1


# -- settings --------------------------------------------------------------------------------


def resolve(**environ: str) -> CollectorSettings:
    return CollectorSettings.resolve({"REQTELEMETRY_COLLECTOR_SECRET": SECRET.decode(), **environ})


def test_retention_comes_from_the_environment_or_the_flag():
    assert resolve().retention_days is None  # keep everything unless asked
    assert resolve(**{ENV_RETENTION_DAYS: "90"}).retention_days == 90
    flagged = CollectorSettings.resolve(
        {"REQTELEMETRY_COLLECTOR_SECRET": SECRET.decode(), ENV_RETENTION_DAYS: "90"},
        retention_days=7,
    )
    assert flagged.retention_days == 7


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "between 1 and 36500"),
        ("36501", "between 1 and 36500"),
        ("ninety", "must be an integer"),
        ("1.5", "must be an integer"),
    ],
)
def test_a_retention_that_cannot_work_is_refused_at_start(value, message):
    with pytest.raises(SettingsError, match=message):
        resolve(**{ENV_RETENTION_DAYS: value})


def test_a_retention_within_the_stamp_window_is_refused():
    """A stamp is refused as a replay only while its report is stored: a report
    pruned while its stamp is still fresh could be stored a second time."""
    with pytest.raises(SettingsError, match="longer than the stamp window"):
        resolve(**{ENV_RETENTION_DAYS: "1", "REQTELEMETRY_COLLECTOR_STAMP_MAX_AGE": "90000"})


def test_the_collector_command_takes_retention_days(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("REQTELEMETRY_COLLECTOR_SECRET", SECRET.decode())
    db = f"sqlite:///{Path(tmp_path) / 'c.db'}"
    assert main(["collector", "--db", db, "--retention-days", "0", "--port", "0"]) == 2
    assert "--retention-days" in capsys.readouterr().err
