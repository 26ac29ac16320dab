"""A SQLite database closed by the collector is whole in its one file."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from reqtelemetry.collector.storage import open_storage


def test_closing_checkpoints_the_log_into_the_file(tmp_path: Path) -> None:
    # An operator who stops the collector and copies telemetry.db (a backup,
    # a move to another host) must get the reports, not an empty file whose
    # data stayed behind in telemetry.db-wal.
    path = tmp_path / "telemetry.db"
    storage = open_storage(f"sqlite:///{path}")
    storage.migrate()
    storage.refusals()
    storage.totals(since=time.time() - 86400)  # a dashboard read: a reader is pooled
    storage.close()
    assert not Path(f"{path}-wal").exists()
    copy = tmp_path / "copy.db"
    copy.write_bytes(path.read_bytes())
    with sqlite3.connect(copy) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert "reports" in tables, tables
