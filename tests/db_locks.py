"""Another writer holding what a report's store needs, on a real database.

Why a real lock rather than a slowed-down fake: the collector must give up
on a report whose commit would come after its client stopped waiting, and
what makes it wait in production is exactly this, another connection's
lock (a second process on the SQLite file, a migration's ``ALTER TABLE`` or
a ``LOCK TABLE`` on PostgreSQL). The lock is held until the ``with`` block
ends, not for a number of seconds, so tests decide when it goes.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from reqtelemetry.collector.storage.base import Storage
from reqtelemetry.collector.storage.sqlite import SQLiteStorage

SQLITE_PREFIX = "sqlite:///"


def location(storage: Storage) -> str:
    """Where ``storage`` keeps its data, for another connection to open:
    a SQLite file's path or a PostgreSQL URL."""
    if isinstance(storage, SQLiteStorage):
        return storage.path
    url: str = storage.url  # PostgresStorage; psycopg is imported only then
    return url


@contextlib.contextmanager
def another_writer(database: str) -> Iterator[None]:
    """Hold the write lock of ``database`` from a connection of its own.

    ``database``: a PostgreSQL URL (its ``search_path`` picks the schema), a
    ``sqlite:///`` URL or a SQLite file path. SQLite: ``BEGIN IMMEDIATE``,
    the lock every writer takes first. PostgreSQL: ``reports`` and
    ``refusals`` locked in ``ACCESS EXCLUSIVE`` mode, as a long ``ALTER
    TABLE`` would.
    """
    if database.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(database) as connection:
            connection.execute("LOCK TABLE reports, refusals IN ACCESS EXCLUSIVE MODE")
            try:
                yield
            finally:
                connection.rollback()
        return
    path = database.removeprefix(SQLITE_PREFIX)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
    finally:
        connection.close()
