"""A second collector on one SQLite file waits for the first one's migration,
however long it takes, as it does on PostgreSQL (the advisory lock); but a
connection that merely holds the lock on an up-to-date database fails its
start after the busy timeout, and Ctrl-C ends the long wait."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reqtelemetry.collector.storage.sql import Migration
from reqtelemetry.collector.storage.sqlite import SQLiteStorage


def test_a_replica_waits_for_a_migration_longer_than_its_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    old = SQLiteStorage(path)
    old.migrations = old.migrations[:1]  # a database of the release before app names
    old.migrate()
    old.close()

    # The first replica's migration takes longer than the second's busy timeout
    # (a large database: 14 s for 3 million aggregate rows, against 10 s).
    first = SQLiteStorage(path)
    migrating = threading.Event()

    def slowly() -> int:
        migrating.set()
        time.sleep(1.5)
        return 0

    first._connection.create_function("slowly", 0, slowly)
    step = first.migrations[1]
    first.migrations = (
        first.migrations[0],
        Migration(step.version, step.description, ("SELECT slowly()", *step.statements)),
        *first.migrations[2:],
    )
    errors: list[BaseException] = []

    def migrate_first() -> None:
        try:
            first.migrate()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=migrate_first)
    thread.start()
    assert migrating.wait(10)
    second = SQLiteStorage(path, busy_timeout=0.3)
    try:
        second.migrate()  # was: sqlite3.OperationalError: database is locked
        thread.join(10)
        assert errors == []
        latest = max(step.version for step in second.migrations)
        assert second.schema_version() == latest
        applied = second._run(lambda ex: ex.query("SELECT version FROM schema_migrations"))
        assert sorted(int(row[0]) for row in applied) == list(range(1, latest + 1))
    finally:
        thread.join(10)
        second.close()
        first.close()


def _stuck_writer(path: Path) -> sqlite3.Connection:
    stuck = sqlite3.connect(path, isolation_level=None)
    stuck.execute("BEGIN IMMEDIATE")  # the write lock, held and forgotten
    return stuck


def test_a_lock_held_on_an_up_to_date_database_fails_after_the_busy_timeout(tmp_path: Path):
    path = tmp_path / "telemetry.db"
    first = SQLiteStorage(path)
    first.migrate()
    first.close()
    stuck = _stuck_writer(path)
    errors: list[BaseException] = []
    second = SQLiteStorage(path, busy_timeout=0.3)

    def start() -> None:
        try:
            second.migrate()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=start)
    began = time.monotonic()
    thread.start()
    try:
        thread.join(5)
        assert not thread.is_alive(), "still waiting for the lock after 5 s (busy timeout 0.3 s)"
        assert time.monotonic() - began < 5
        assert len(errors) == 1 and "locked" in str(errors[0])
    finally:
        stuck.execute("ROLLBACK")
        stuck.close()
        thread.join(10)
        second.close()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")
def test_ctrl_c_ends_the_wait_for_a_migration(tmp_path: Path):
    path = tmp_path / "telemetry.db"
    old = SQLiteStorage(path)
    old.migrations = old.migrations[:1]  # a database of an older release: to be migrated
    old.migrate()
    old.close()
    stuck = _stuck_writer(path)
    code = (
        "import sys; from reqtelemetry.collector.storage.sqlite import SQLiteStorage\n"
        f"s = SQLiteStorage({str(path)!r}, busy_timeout=0.3); print('ready', flush=True)\n"
        "s.migrate()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # waiting for the lock by now
        child.send_signal(signal.SIGINT)
        try:
            _, err = child.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("Ctrl-C did not end the wait for the lock within 10 s")
        assert "KeyboardInterrupt" in err
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
        stuck.execute("ROLLBACK")
        stuck.close()
