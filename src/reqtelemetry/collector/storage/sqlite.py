"""SQLite storage: the zero-setup default for a single collector process.

Why these settings: WAL lets readers (the dashboard, another process exporting
CSV) proceed while a report is written; ``busy_timeout`` makes a second
process wait for the write lock instead of failing at once; writes start with
``BEGIN IMMEDIATE`` so that a transaction takes the write lock before it reads,
and two writers can never deadlock upgrading their locks. One connection is
shared by all threads behind a lock (``check_same_thread=False``): SQLite
serialises writers anyway, and a single connection keeps ``:memory:``
databases working.

A write with a deadline (a report: see ``Storage.store``) waits for that
thread lock, and for SQLite's write lock (the busy timeout, set for that
transaction to what is left), no longer than the deadline, and commits only
if it has not passed: a report committed after its client stopped waiting
would be sent again and counted twice.

The dashboard reads elsewhere: on read-only connections of its own
(:class:`_Readers`, at most ``MAX_READERS``), which with WAL neither wait
for the writer nor make it wait, so that a summary of a large database,
seconds long, holds up no report. So does the CSV export (``_stream``).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .base import DeadlineExceeded, ReadersBusy, check_deadline, seconds_left
from .rollup import rollup_tables
from .sql import (
    MAX_READERS,
    Dialect,
    Executor,
    Migration,
    Row,
    SQLStorage,
    app_name_columns,
    common_tables,
    metrics_window_index,
)

T = TypeVar("T")

DIALECT = Dialect(
    greatest="max",  # SQLite's max() with two arguments is a scalar function
    least="min",
    json_param="?",
    expand_bins=", json_each(a.histogram) AS b",
    bin_index="CAST(json_extract(b.value, '$[0]') AS INTEGER)",
    bin_count="json_extract(b.value, '$[1]')",
    # received_at is never negative, so truncation is floor.
    bucket="CAST(received_at / ? AS INTEGER)",
    has_migrations_table=(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ),
    # SUM: exact integers (past 2**63, see _SQLiteExecutor); TOTAL for floats,
    # as it always was (0.0 rather than NULL for no rows).
    float_sum="TOTAL",
    # The exact sum as an aggregate of its own, for a read that streams its
    # rows (a roll-up's): see SQLiteStorage._is_sum_overflow.
    exact_sum="reqtelemetry_exact_sum",
    join_text="group_concat",
    sum_descending="length({0}) DESC, {0} DESC",
    by_time=" INDEXED BY aggregates_received_at",
    by_app_and_time=" INDEXED BY aggregates_app_received_at",
)
#: Seconds a migration waits for the write lock that another connection
#: holds (another replica's migration, which holds it throughout).
MIGRATION_WAIT = 3600.0
#: Seconds of each of the turns that wait makes (see ``_run_migrations``).
MIGRATION_TURN = 1.0
#: Bytes of write-ahead log kept once a checkpoint has emptied it (64 MiB).
WAL_SIZE_LIMIT = 64 * 1024 * 1024
#: What SQLite says when a SUM of integers leaves 64 bits.
_INTEGER_OVERFLOW = "integer overflow"
#: The aggregate :class:`_ExactSum` is registered as, and the SUM calls it replaces.
_EXACT_SUM = "reqtelemetry_exact_sum"
_SUM_CALL = re.compile(r"\bSUM\(")

MIGRATIONS = (
    Migration(
        1,
        "deployments, instances, reports, aggregates, metrics, refusals",
        common_tables(
            id_column="INTEGER PRIMARY KEY",
            float_type="REAL",
            json_type="TEXT",
            big_int="INTEGER",
        ),
    ),
    Migration(
        2,
        "app_name on instances, reports and aggregates",
        app_name_columns("json_extract(traits, '$.app_name')"),
    ),
    Migration(
        3,
        "an index of metrics by kind and time, for the dashboard's app metrics",
        metrics_window_index(),
    ),
    Migration(
        4,
        "daily roll-ups of the aggregates, for a dashboard whose cost stays flat",
        rollup_tables(float_type="REAL", big_int="INTEGER"),
    ),
)


class _ExactSum:
    """``SUM`` without its 64-bit limit: Python's integers, as text past 64 bits.

    Why: SQLite's ``SUM`` raises "integer overflow" past 2**63, where
    PostgreSQL's numeric sum carries on. Hostile reports can get there (each
    count may be 2**63 - 1), and the dashboard must then show what PostgreSQL
    shows, not an error. A Python call per row is slow, so it is only used to
    run again a query whose ``SUM`` overflowed (see :class:`_SQLiteExecutor`).
    A total beyond 64 bits is returned as its decimal text, which SQLite can
    hold and :func:`~.sql._int` reads. (typeshed types an aggregate's result
    as an int only, hence the ``type: ignore`` where it is registered.)
    """

    def __init__(self) -> None:
        self.total: int | float | None = None

    def step(self, value: Any) -> None:
        # Text is this aggregate's own total past 64 bits, summed again by an
        # outer SUM; anything else (NULL) adds nothing.
        if isinstance(value, str):
            value = int(value)
        if isinstance(value, (int, float)):
            self.total = value if self.total is None else self.total + value

    def finalize(self) -> int | float | str | None:
        total = self.total
        if isinstance(total, int) and not -(2**63) <= total < 2**63:
            return str(total)
        return total


class _SQLiteExecutor:
    """The :class:`Executor` over one sqlite3 connection (``?`` is SQLite's own style)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows of ``sql``; one whose ``SUM`` left 64 bits is run again with
        :class:`_ExactSum` in its place (in the same transaction: the error
        ends the statement only), so sums are exact at any size."""
        try:
            return self._connection.execute(sql, params).fetchall()
        except sqlite3.OperationalError as error:
            if _INTEGER_OVERFLOW not in str(error) or not _SUM_CALL.search(sql):
                raise
        return self._connection.execute(_SUM_CALL.sub(f"{_EXACT_SUM}(", sql), params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._connection.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._connection.executemany(sql, rows)

    def batches(self, sql: str, params: Sequence[Any], size: int) -> Iterator[list[Row]]:
        """Rows of ``sql``, ``size`` at a time; run again with :class:`_ExactSum`
        when a ``SUM`` overflows before the first batch (see :meth:`query`)."""
        try:
            cursor = self._connection.execute(sql, params)
            batch = cursor.fetchmany(size)
        except sqlite3.OperationalError as error:
            if _INTEGER_OVERFLOW not in str(error) or not _SUM_CALL.search(sql):
                raise
            cursor = self._connection.execute(_SUM_CALL.sub(f"{_EXACT_SUM}(", sql), params)
            batch = cursor.fetchmany(size)
        try:
            while batch:
                yield batch
                batch = cursor.fetchmany(size)
        finally:
            cursor.close()


def _open_reader(uri: str, busy_timeout: float) -> sqlite3.Connection:
    """A read-only connection to the file ``uri`` names (``mode=ro``: SQLite
    refuses any write, and creates no file), with the exact ``SUM``.

    ``check_same_thread=False``: the threads of Starlette's pool take turns
    with it (an export's batches, a summary's reads), never two at once.
    """
    reader = sqlite3.connect(
        uri, timeout=busy_timeout, isolation_level=None, check_same_thread=False, uri=True
    )
    reader.create_aggregate(_EXACT_SUM, 1, _ExactSum)  # type: ignore[arg-type]  # non-int results
    return reader


class _Readers:
    """Read-only connections to one SQLite file for the dashboard's reads: at
    most ``size`` at once, each used by one thread at a time, kept for the
    next read.

    Why kept rather than opened per read: a summary makes about ten reads,
    and each new connection opens the file and parses the schema again. Why
    at most ``size``: each holds a file handle and a page cache; a read
    beyond them waits for one, ``timeout`` seconds at most (the busy timeout:
    as long as a statement waits for a lock).
    """

    def __init__(self, uri: str, size: int, timeout: float) -> None:
        self._uri = uri
        self._timeout = timeout
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection of this thread's alone until the block ends; closed,
        not kept, when the block raises (whatever state that left it in)."""
        if not self._slots.acquire(timeout=self._timeout):
            raise ReadersBusy(f"no read connection became free within {self._timeout} s")
        try:
            connection = self._take()
            try:
                yield connection
            except BaseException:
                connection.close()
                raise
            self._give_back(connection)
        finally:
            self._slots.release()

    def _take(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            if self._idle:
                return self._idle.pop()
        return _open_reader(self._uri, self._timeout)

    def _give_back(self, connection: sqlite3.Connection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(connection)
                return
        connection.close()  # the storage closed meanwhile

    def close(self) -> None:
        """Close the idle connections now, those in use when their read ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class SQLiteStorage(SQLStorage):
    """Storage in one SQLite file (or ``":memory:"``), shared safely across threads."""

    dialect = DIALECT
    migrations = MIGRATIONS
    #: sqlite3 raises OverflowError binding an integer beyond 64 bits.
    data_errors = (sqlite3.DataError, OverflowError)

    def __init__(
        self, path: str | os.PathLike[str], busy_timeout: float = 10.0, read_only: bool = False
    ) -> None:
        """Open (creating when missing) the database at ``path``.

        ``read_only``: open an existing file only, and never write to it (what
        ``reqtelemetry export`` needs: a typo must be an error, not a new empty
        database). Raises :class:`FileNotFoundError` when there is no such file.
        """
        self.path = os.fspath(path)
        self.read_only = read_only
        self._reader_timeout = busy_timeout
        self._closed = False
        # Resolved once: a relative path read later would follow the working directory.
        self._reader_uri = (
            None if self.path == ":memory:" else Path(self.path).resolve().as_uri() + "?mode=ro"
        )
        self._readers = (
            None
            if self._reader_uri is None
            else _Readers(self._reader_uri, MAX_READERS, busy_timeout)
        )
        if read_only:
            if self._reader_uri is None or not Path(self.path).is_file():
                raise FileNotFoundError(f"no database file at {self.path}")
            # mode=ro: SQLite itself refuses any write, and creates no file.
            target, uri = self._reader_uri, True
        else:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            target, uri = self.path, False
        # isolation_level=None: no implicit transactions; ours are explicit.
        self._connection = sqlite3.connect(
            target, timeout=busy_timeout, isolation_level=None, check_same_thread=False, uri=uri
        )
        self._connection.create_aggregate(_EXACT_SUM, 1, _ExactSum)  # type: ignore[arg-type]
        self._lock = threading.RLock()
        self._executor = _SQLiteExecutor(self._connection)
        self._busy_timeout = busy_timeout
        with self._lock:
            self._set_busy_timeout(busy_timeout)
            if self.path != ":memory:" and not read_only:
                self._connection.execute("PRAGMA journal_mode = WAL")
                # With WAL, NORMAL does not sync the log at each commit: a
                # power loss or an OS crash (not a crash of this process) may
                # lose the last commits, never the database's consistency.
                # Such a report is simply lost: its client got its 200 and
                # dropped the data. The price of a sync per report.
                self._connection.execute("PRAGMA synchronous = NORMAL")
                # The log grows while dashboard reads hold old snapshots (5 GB
                # beside a 3 GB database, storing reports under two reloading
                # dashboards) and SQLite keeps the file at its largest: cut
                # back to this after each checkpoint that empties it.
                self._connection.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            self._connection.execute("PRAGMA foreign_keys = ON")

    def _set_busy_timeout(self, seconds: float) -> None:
        """How long a statement waits for another connection's lock (under ``_lock``)."""
        self._connection.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def _acquire(self, deadline: float | None) -> None:
        """Take the thread lock, by ``deadline`` at the latest (a summary being
        read, a prune batch or another report may hold it)."""
        left = seconds_left(deadline)
        if left is None:
            self._lock.acquire()
        elif left <= 0 or not self._lock.acquire(timeout=left):
            raise DeadlineExceeded("the database was in use by this collector until the deadline")

    def _transaction(
        self, begin: str, work: Callable[[Executor], T], deadline: float | None = None
    ) -> T:
        self._acquire(deadline)
        try:
            left = seconds_left(deadline)
            # Bounded by the deadline only where it comes first: a wait that
            # ends at the usual busy timeout is an ordinary failure.
            waits_for_the_deadline = left is not None and left < self._busy_timeout
            if left is not None and waits_for_the_deadline:
                self._set_busy_timeout(left)
            try:
                self._begin(begin, waits_for_the_deadline)
                try:
                    result = work(self._executor)
                    check_deadline(deadline)
                    self._connection.execute("COMMIT")  # deferred foreign keys are checked here
                except BaseException:
                    # SQLite may have rolled back already (some errors end the transaction).
                    if self._connection.in_transaction:
                        self._connection.execute("ROLLBACK")
                    raise
                return result
            finally:
                if waits_for_the_deadline:
                    self._set_busy_timeout(self._busy_timeout)
        finally:
            self._lock.release()

    def _begin(self, begin: str, waits_for_the_deadline: bool) -> None:
        """``BEGIN ...``; SQLite's "database is locked" after a busy timeout set
        to what was left of the deadline is the deadline passing."""
        try:
            self._connection.execute(begin)
        except sqlite3.OperationalError as error:
            if waits_for_the_deadline and _is_busy(error):
                raise DeadlineExceeded(
                    "another connection held the database's write lock until the deadline"
                ) from error
            raise

    def _run(
        self, work: Callable[[Executor], T], write: bool = False, deadline: float | None = None
    ) -> T:
        return self._transaction("BEGIN IMMEDIATE" if write else "BEGIN", work, deadline)

    def _run_migrations(self, work: Callable[[Executor], T]) -> T:
        # The write lock, taken up front, is the migration lock: another
        # connection's BEGIN IMMEDIATE waits until this commits. Waits up to
        # MIGRATION_WAIT, not the busy timeout: another replica's migration of
        # a large database outlasts that (14 s for 3 million aggregate rows),
        # and a replica starting beside it failed "database is locked" where
        # on PostgreSQL it waits for the advisory lock.
        #
        # Only while the committed schema is behind this release's (else no
        # migration can be under way): a connection that merely holds the
        # lock (a sqlite3 shell left in a transaction) failed a collector's
        # start after the busy timeout, with a line saying so, and must
        # still. And in turns of MIGRATION_TURN: SQLite's wait for a lock
        # is in C, which Ctrl-C does not interrupt.
        with self._lock:
            latest = max(step.version for step in self.migrations)
            wait = self._busy_timeout
            if self.schema_version() < latest:
                wait = max(MIGRATION_WAIT, wait)
            deadline = time.monotonic() + wait
            try:
                while True:
                    turn = min(MIGRATION_TURN, max(0.0, deadline - time.monotonic()))
                    self._set_busy_timeout(turn)
                    try:
                        return self._transaction("BEGIN IMMEDIATE", work)
                    except sqlite3.OperationalError as error:
                        if not _is_busy(error) or time.monotonic() >= deadline:
                            raise
            finally:
                self._set_busy_timeout(self._busy_timeout)

    def _read(self, work: Callable[[Executor], T]) -> T:
        """``work`` in a read transaction on one of :class:`_Readers`' connections.

        Why not on the shared connection (as it was): a summary of a large
        database takes seconds, and held that connection's lock throughout,
        so every report arriving meanwhile waited for it, past its deadline.
        With WAL a reader of its own neither waits for the writer nor makes
        it wait, and sees what was committed when its transaction began.
        (The collector opens every file it writes in WAL. Without it, a
        reader's shared lock would hold a commit up, as the export's would.)

        An in-memory database has no other connection to read it: it is read
        under the lock, as small as the memory it lives in.
        """
        if self._readers is None:
            return self._run(work)
        with self._readers.connection() as reader:
            reader.execute("BEGIN")
            try:
                return work(_SQLiteExecutor(reader))
            finally:
                if reader.in_transaction:
                    reader.execute("ROLLBACK")  # nothing was written: this ends the snapshot

    def close(self) -> None:
        # The readers first: SQLite folds the log into the file and deletes it
        # only when the last connection closes, and only a connection that may
        # write can. Closed last, a read-only reader left every report since
        # the last checkpoint in telemetry.db-wal, beside a file that a copy
        # made after the collector stopped found without them.
        if self._readers is not None:
            self._readers.close()
        with self._lock:
            self._closed = True
            self._connection.close()

    def _stream(
        self, statement: Callable[[Executor], tuple[str, Sequence[Any]]], size: int
    ) -> Generator[list[Row], None, None]:
        """Rows of the statement ``statement`` makes, read on a read-only
        connection of their own.

        Why a second connection rather than batches on the shared one with the
        lock let go between them: a statement that groups and orders does all
        its work before its first row (the whole cost of an export), and its
        cursor cannot stay open on a connection that reports write through
        meanwhile. With WAL, a reader of its own never waits for the writer
        nor makes it wait: reports are stored at full speed however long the
        download takes, and the read sees one snapshot from start to end. (The
        WAL cannot be checkpointed past that snapshot until the read ends, so
        it grows meanwhile by what is written.) Closed when the rows are
        done, or the generator is closed or collected.

        An in-memory database has no other connection to read it, and is as
        small as the memory it lives in: it is read whole, under the lock.
        """
        if self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        if self._reader_uri is None:
            yield self._run(lambda ex: ex.query(*statement(ex)))
            return
        # Not one of _Readers': a download holds its connection as long as
        # its client takes, and would keep the dashboard waiting.
        reader = _open_reader(self._reader_uri, self._reader_timeout)
        try:
            reader.execute("BEGIN")  # one snapshot for the statement and what it read first
            executor = _SQLiteExecutor(reader)
            yield from executor.batches(*statement(executor), size)
        finally:
            reader.close()

    def _is_sum_overflow(self, error: Exception) -> bool:
        """An overflowing ``SUM`` past a streamed read's first batch, which
        :meth:`_SQLiteExecutor.batches` cannot run again for the caller."""
        return isinstance(error, sqlite3.OperationalError) and _INTEGER_OVERFLOW in str(error)

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"


#: SQLite's primary result code for a lock another connection holds (what
#: Python 3.11 names ``sqlite3.SQLITE_BUSY``; 3.10 has no such constant).
_SQLITE_BUSY = 5


def _is_busy(error: sqlite3.OperationalError) -> bool:
    """Whether ``error`` is SQLITE_BUSY: another connection held the lock."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return bool(code & 0xFF == _SQLITE_BUSY)
    return "locked" in str(error)
