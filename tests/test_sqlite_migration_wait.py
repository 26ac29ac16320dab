"""A second collector on one SQLite file waits for the first one's migration,
however long it takes, as it does on PostgreSQL (the advisory lock)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

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
