"""Choosing a storage backend from one URL, the way the collector is configured.

Why a URL: one setting (``--db`` / an environment variable) must say both which
database and where, and the forms people already know work: SQLAlchemy-style
``sqlite:///relative.db`` and ``sqlite:////absolute.db``, a bare file path, and
libpq's ``postgresql://`` / ``postgres://``. The PostgreSQL driver is imported
only when a PostgreSQL URL is given, so SQLite needs nothing beyond the
standard library.

``open_storage`` only opens; call :meth:`Storage.migrate` before use (the
collector does at start).
"""

from __future__ import annotations

from .base import ReplayError, Storage, StoredReport

__all__ = ["ReplayError", "Storage", "StoredReport", "open_storage"]

_SQLITE = "sqlite://"
_POSTGRES = ("postgresql://", "postgres://")


def open_storage(url: str) -> Storage:
    """The storage ``url`` names; a clear :class:`ValueError` for anything else.

    - ``sqlite:///data/collector.db``: a path relative to the working directory
    - ``sqlite:////var/lib/reqtelemetry/collector.db``: an absolute path
    - ``sqlite:///:memory:`` or ``:memory:``: an in-memory database (tests)
    - ``data/collector.db``: a bare path is a SQLite file
    - ``postgresql://user:password@host:5432/dbname`` (or ``postgres://``)
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("the database URL is empty")
    url = url.strip()
    lowered = url.lower()
    if lowered.startswith(_POSTGRES):
        from .postgres import PostgresStorage

        return PostgresStorage(url)
    if lowered.startswith(_SQLITE):
        rest = url[len(_SQLITE) :]
        if not rest.startswith("/") or len(rest) < 2:
            raise ValueError(
                f"cannot read SQLite URL {url!r}: use sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db"
            )
        from .sqlite import SQLiteStorage

        return SQLiteStorage(rest[1:])
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}: use sqlite:///path.db, a file path, "
            "or postgresql://user:password@host/dbname"
        )
    from .sqlite import SQLiteStorage

    return SQLiteStorage(url)
