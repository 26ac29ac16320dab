"""Choosing a storage backend from one URL, the way the collector is configured.

Why a URL: one setting (``--db`` / an environment variable) must say both which
database and where, and the forms people already know work: SQLAlchemy-style
``sqlite:///relative.db`` and ``sqlite:////absolute.db``, a bare file path, and
libpq's ``postgresql://`` / ``postgres://``. The PostgreSQL driver is imported
only when a PostgreSQL URL is given, so SQLite needs nothing beyond the
standard library.

A bare path that looks like libpq's keyword form (``host=db dbname=x``: it
has ``=`` or whitespace) is refused rather than taken as a file name: taken
as one, every production replica would quietly keep its own SQLite file.

``open_storage`` only opens; call :meth:`Storage.migrate` before use (the
collector does at start). A reader (``reqtelemetry export``) opens with
``read_only=True`` and calls :meth:`SQLStorage.check_schema` instead, so it
neither creates a database nor alters one.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .base import CommitUnknown, ReplayError, Storage, StoredReport
from .sql import SchemaMismatch, SQLStorage

__all__ = [
    "ReplayError",
    "SchemaMismatch",
    "Storage",
    "StoredReport",
    "database_errors",
    "describe_database",
    "mask_passwords",
    "open_storage",
]

_SQLITE = "sqlite://"
_POSTGRES = ("postgresql://", "postgres://")
#: The start of a libpq keyword string (``host=db dbname=telemetry``), which
#: must not be taken for a SQLite file name; a path with spaces is a path.
_KEYWORD_DSN = re.compile(r"\s*[A-Za-z_]+\s*=")
#: A bare path that starts as a database URL but is none (a slash or a colon
#: short: ``postgresql:/user:pw@db/x``, ``postgres:user@db/x``,
#: ``postgresql//db/x``, ``sqlite:/x.db``). Taken for a file, it made a SQLite
#: database under a directory named after the URL, password and all.
_MISTYPED_URL = re.compile(r"(?:postgres(?:ql)?|sqlite)(?::|//)", re.IGNORECASE)
#: Where a query (``?timeout=30``) or a fragment (``#x``) of a SQLite URL begins.
_SQLITE_QUERY = re.compile(r"[?#]")
#: ``password=...`` in a keyword DSN (or anywhere in a text).
_PASSWORD_PAIR = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)", re.IGNORECASE)
#: ``password=...`` in a URL's query, up to the next parameter.
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)


def describe_database(url: str) -> str:
    """``url`` as it may be shown in a message or a log line: any password replaced by ``***``.

    Never raises: it describes URLs that failed, and a failure to describe one
    would replace the operator's one line with a traceback (showing the URL).
    """
    text = url.strip()
    if not text.lower().startswith(_POSTGRES):
        return _PASSWORD_PAIR.sub(r"\1***", text)
    # The user info is cut on the raw text, up to the last "@": a password
    # with an unescaped "/", "?" or "#" (base64 makes them) would end a
    # parsed netloc early and be shown whole.
    scheme, _, rest = text.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if at:
        user, has_password, _ = userinfo.partition(":")
        text = f"{scheme}://{user}{':***' if has_password else ''}@{after}"
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unclosed "[" of an IPv6 host, which libpq refuses too
        return _QUERY_PASSWORD.sub(r"\1***", text)
    query = urlencode(
        [
            (key, "***" if key.lower() == "password" else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def mask_passwords(message: str, url: str) -> str:
    """``message`` (a driver's error about ``url``) with every password of ``url`` masked.

    Why: libpq quotes what it cannot parse, password included (a ``%`` not
    followed by two hex digits: ``invalid percent-encoded token: "S3cr%tPW"``,
    or the whole URL after an unclosed ``[``), and the CLI prints its message.
    Each password is masked as written and percent-decoded, wherever it
    occurs; a password short enough to occur by chance masks more than
    itself, which costs readability, never the secret.
    """
    for secret in sorted(_passwords(url), key=len, reverse=True):
        message = message.replace(secret, "***")
    return _PASSWORD_PAIR.sub(r"\1***", message)


def _passwords(url: str) -> set[str]:
    """Every password ``url`` holds (user info, ``password=`` in its query or a
    keyword string), as written and percent-decoded; never the empty string."""
    text = url.strip()
    written: list[str] = []
    if text.lower().startswith(_POSTGRES):
        userinfo, at, _ = text.partition("://")[2].rpartition("@")
        _, has_password, password = userinfo.partition(":")
        if at and has_password:
            written.append(password)
        written.extend(match.group(2) for match in _QUERY_PASSWORD.finditer(text))
    for match in _PASSWORD_PAIR.finditer(text):
        value = match.group(2)
        written.extend((value, value.strip("'")))
    return {form for value in written for form in (value, unquote(value)) if form}


def _refuse_sqlite_query(url: str) -> None:
    """A clear :class:`ValueError` for a ``sqlite://`` URL with a query or a fragment.

    Why: SQLAlchemy reads ``sqlite:///t.db?timeout=30`` as a file and an
    option; taken here as a path, it made a file named ``t.db?timeout=30``,
    the option silently lost and the data elsewhere than the operator looks.
    Only the URL before the ``?`` or ``#`` is quoted back: a query may hold a
    key or a password.
    """
    cut = _SQLITE_QUERY.search(url)
    if cut is None:
        return
    raise ValueError(
        f"SQLite URLs take no query or fragment: {url[: cut.start()]!r} is followed by "
        f"{cut.group()!r}...; write sqlite:///path.db alone (a SQLite file whose name "
        "has '?' or '#': give its path without sqlite:///)"
    )


def database_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "this database cannot be used" (not a bug here):
    the drivers' own errors, a missing file, :class:`SchemaMismatch`, and a
    commit whose answer was lost (:class:`~.base.CommitUnknown`)."""
    errors: list[type[BaseException]] = [sqlite3.Error, OSError, SchemaMismatch, CommitUnknown]
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        errors.append(psycopg.Error)
    return tuple(errors)


def open_storage(url: str, *, read_only: bool = False) -> SQLStorage:
    """The storage ``url`` names; a clear :class:`ValueError` for anything else.

    ``read_only``: open an existing database only (a missing SQLite file is a
    :class:`FileNotFoundError`), in a mode where the database refuses writes.

    - ``sqlite:///data/collector.db``: a path relative to the working directory
    - ``sqlite:////var/lib/reqtelemetry/collector.db``: an absolute path
    - ``sqlite:///:memory:`` or ``:memory:``: an in-memory database (tests)
    - no ``?query`` or ``#fragment`` on a ``sqlite://`` URL: refused, not taken as the name
    - ``data/collector.db``: a bare path is a SQLite file
    - ``postgresql://user:password@host:5432/dbname`` (or ``postgres://``)

    Nothing connects here for PostgreSQL (the first use does); a SQLite file
    is opened at once.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("the database URL is empty")
    url = url.strip()
    lowered = url.lower()
    if lowered.startswith(_POSTGRES):
        from .postgres import PostgresStorage

        return PostgresStorage(url, read_only=read_only)
    if lowered.startswith(_SQLITE):
        rest = url[len(_SQLITE) :]
        if not rest.startswith("/") or len(rest) < 2:
            raise ValueError(
                f"cannot read SQLite URL {url!r}: use sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db"
            )
        _refuse_sqlite_query(url)
        from .sqlite import SQLiteStorage

        return SQLiteStorage(rest[1:], read_only=read_only)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}: use sqlite:///path.db, a file path, "
            "or postgresql://user:password@host/dbname"
        )
    mistyped = _MISTYPED_URL.match(url)
    if mistyped:
        # Only its start is quoted back: what follows may well be a password.
        raise ValueError(
            f"the database URL starts with {mistyped.group()!r} but is no URL: write "
            "postgresql://user:password@host/dbname or sqlite:///path.db (a SQLite "
            "file whose name starts so: ./that/path.db)"
        )
    if _KEYWORD_DSN.match(url):
        raise ValueError(
            f"{describe_database(url)!r} looks like a libpq connection string, not a file "
            "path: write it as a URL, postgresql://user@host/dbname (a SQLite file whose "
            "name has '=' or spaces: sqlite:///that/path.db)"
        )
    from .sqlite import SQLiteStorage

    return SQLiteStorage(url, read_only=read_only)
