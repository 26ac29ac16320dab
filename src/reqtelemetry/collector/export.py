"""The per-endpoint report as CSV, shared by ``GET /export.csv`` and ``reqtelemetry export``.

One row per (method, route, app name, app version): the numbers a maintainer
pastes into a spreadsheet or a release note. Both ways of exporting can be
limited to one app (``?app=`` / ``--app``), checked by :func:`app_filter`.
Latencies are milliseconds here (the storage answers in seconds) because that
is what people read.

Routes, app names and app versions come from clients, so a cell could start
with ``=``, ``+``, ``-`` or ``@`` and be run as a formula by a spreadsheet (CSV
injection); such cells are prefixed with ``'`` (OWASP's advice).

Every row is exported, however many endpoints were ever stored (the dashboard
lists the busiest only), so rows are written as the database hands them over
(:meth:`~.storage.base.Storage.iter_endpoints`) and memory stays bounded
whatever their number: never a list of every row, nor the whole text.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
import unicodedata
from collections.abc import Generator, Iterable, Iterator
from typing import IO, Any, TypeVar

from .storage.base import Storage

COLUMNS = (
    "method",
    "route",
    "app_name",
    "app_version",
    "calls",
    "errors",
    "error_rate",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "request_bytes",
    "response_bytes",
    "deployments",
)
_LATENCIES = (("p50", "p50_ms"), ("p95", "p95_ms"), ("p99", "p99_ms"), ("mean", "mean_ms"))
#: Where a spreadsheet would start a formula: a cell's start, or a ``;``
#: (where a spreadsheet that splits on ``;``, Excel's default in much of
#: Europe, starts a cell), followed by ``=``, ``+``, ``-`` or ``@`` after any
#: spaces or quotes. (A tab or carriage return cannot lead one here: control
#: characters are escaped first.)
_FORMULA_START = re.compile(r"(?:^|;)(?=[\s\"']*[=+\-@])")
#: Characters a cell shows written out: control characters (Cc), which a
#: terminal obeys; format characters (Cf: bidirectional overrides, zero-width
#: spaces, tag characters), which change how the text around them reads
#: without being seen; line and paragraph separators, which break a row.
_UNSEEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
DAY = 86400
#: The longest app name a report can carry (the payload schema's ``short_text``).
MAX_APP_NAME_LENGTH = 128
#: Rows per piece of ``/export.csv`` sent at a time (see :func:`csv_chunks`).
CHUNK_ROWS = 500
#: Significant digits a latency or an error rate keeps at least. Why not
#: only a fixed number of decimals (a thousandth of a millisecond, a
#: millionth): the percentiles are good to 2 % (docs/payload.md), and a fast
#: endpoint's were not, written so (14.5 µs as 0.014 ms, 3.4 % off; 3.43 µs
#: as 0.003, 13 %); nor was one error in three million calls, written as an
#: error rate of 0.0 beside its error.
SIGNIFICANT_DIGITS = 4

T = TypeVar("T")


def since_days(days: int, now: float | None = None) -> float:
    """The ``since`` of the last ``days`` days."""
    return (time.time() if now is None else now) - days * DAY


def app_filter(value: str | None) -> str | None:
    """The app a maintainer asked for, or None for every app (absent or empty).

    Why check at all: a name longer than any report can carry matches nothing,
    which is worth saying rather than answering with an empty page; and a NUL
    (which no stored name has) makes PostgreSQL refuse the query, which would
    look like an outage. Raises :class:`ValueError` saying what an app name is.
    """
    if value is None or value == "":
        return None
    # A command line in a non-UTF-8 encoding gives lone surrogates (PEP 383),
    # which no report can carry and no driver can send.
    text = len(value) <= MAX_APP_NAME_LENGTH and "\0" not in value
    if text and not any("\ud800" <= char <= "\udfff" for char in value):
        return value
    raise ValueError(
        f"must be an app's name: at most {MAX_APP_NAME_LENGTH} characters of text, without NUL"
    )


def endpoint_rows(
    storage: Storage, since: float, app: str | None = None
) -> Generator[dict[str, Any], None, None]:
    """The CSV rows (as dicts keyed by :data:`COLUMNS`) of every app, or of ``app``
    only; most calls first, one at a time as they are read. Close the
    generator (or read it to the end) to end the read."""
    endpoints = storage.iter_endpoints(since, app=app)
    try:
        for endpoint in endpoints:
            yield _row(endpoint)
    finally:
        endpoints.close()  # at once, not whenever the reader is collected


class Started(Iterator[T]):
    """An export's items with the first one read already (see :func:`started`),
    which closes the items' read when closed, read or not."""

    def __init__(self, items: Generator[T, None, None]) -> None:
        self._items = items
        self._first: list[T] = []
        for first in items:
            self._first.append(first)
            break

    def __next__(self) -> T:
        if self._first:
            return self._first.pop()
        return next(self._items)

    def close(self) -> None:
        """End the read (its database connection) now, not when collected."""
        self._items.close()


def started(items: Generator[T, None, None]) -> Started[T]:
    """``items`` with its first item read now.

    Why: the first item of an export is where its query runs, and fails when
    the database does. Read before anything is sent (an HTTP status, a file
    opened for writing), a failure can still be said as one (a ``503``, one
    line and no file); after that, it can only cut the output short.
    """
    return Started(items)


def _row(endpoint: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "method": endpoint.get("method"),
        "route": endpoint.get("route"),
        "app_name": endpoint.get("app_name"),
        "app_version": endpoint.get("app_version"),
        "calls": endpoint.get("calls", 0),
        "errors": endpoint.get("errors", 0),
        "error_rate": _round(endpoint.get("error_rate"), 6),
        "request_bytes": endpoint.get("request_bytes", 0),
        "response_bytes": endpoint.get("response_bytes", 0),
        "deployments": endpoint.get("deployments", 0),
    }
    for source, column in _LATENCIES:
        seconds = endpoint.get(source)
        row[column] = None if seconds is None else _round(float(seconds) * 1000.0, 3)
    return row


def _round(value: Any, digits: int) -> float | None:
    """``value`` to ``digits`` decimals, or to :data:`SIGNIFICANT_DIGITS` where
    that is finer; None for no value or one not finite."""
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        return None
    if number:
        digits = max(digits, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(number))))
    return round(number, digits)


def write_csv(rows: Iterable[dict[str, Any]], out: IO[str]) -> int:
    """Write a header and ``rows``, each as it comes; None becomes an empty cell.
    Returns the number of rows written."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    written = 0
    for row in rows:
        writer.writerow(_cells(row))
        written += 1
    return written


def csv_chunks(
    rows: Iterable[dict[str, Any]], rows_per_chunk: int = CHUNK_ROWS
) -> Generator[str, None, None]:
    """The text of :func:`write_csv`, a chunk of ``rows_per_chunk`` rows at a time
    (the header goes with the first): what ``/export.csv`` streams.

    Why chunks rather than a line per row: each chunk is a trip through a
    worker thread and a write to the socket, so a row at a time would cost
    more than the row; a chunk of rows is a few dozen KiB.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    pending = 0
    for row in rows:
        writer.writerow(_cells(row))
        pending += 1
        if pending >= rows_per_chunk:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    if buffer.tell():
        yield buffer.getvalue()


def _cells(row: dict[str, Any]) -> list[Any]:
    return [_cell(row.get(column)) for column in COLUMNS]


def _written_out(text: str) -> str:
    """``text`` with each character of :data:`_UNSEEN_CATEGORIES` written as
    Python writes it in a string (``\\x1b``, ``\\u202e``, ``\\U000e0041``)."""
    return "".join(
        _escape(character) if unicodedata.category(character) in _UNSEEN_CATEGORIES else character
        for character in text
    )


def _escape(character: str) -> str:
    code = ord(character)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _cell(value: Any) -> Any:
    """``value`` as a CSV cell: text a spreadsheet cannot run and a terminal
    cannot obey.

    Why: a route, an app's name and its version are whatever a sender wrote.
    Opened in a spreadsheet, a cell starting with ``=`` (or ``+``, ``-``,
    ``@``) is a formula, and so is a piece after a ``;`` where the
    spreadsheet splits on ``;``: both get a ``'`` in front, which the
    spreadsheet shows as text. Printed to a terminal (``reqtelemetry export``
    writes to standard output), an escape sequence rewrites lines, the
    window's title or the clipboard, and a right-to-left override makes one
    route read as another: such characters are written out (``\\x1b``,
    ``\\u202e``; see :func:`_written_out`), which a route may also hold as
    text: the cell is for reading, the report's data is in the database as
    it came.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    text = value if value.isprintable() else _written_out(value)
    return _FORMULA_START.sub("\\g<0>'", text)
