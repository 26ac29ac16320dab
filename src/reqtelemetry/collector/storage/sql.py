"""What SQLite and PostgreSQL storage share: the writes, the queries, the migration runner.

Why one implementation over two dialects: the dashboard must show the same
numbers whichever database sits behind it, and the test suite runs the same
assertions against both. The SQL here is written once, with ``?`` placeholders
and a handful of dialect fragments (how to expand a JSON array, how to take the
larger of two values); each backend supplies those, its connection handling and
its migration steps. Everything that is easier to get identical in Python than
in two SQL dialects (rates, percentiles from merged histograms, most sorting)
happens in Python, on results already aggregated by the database. A list cut
or streamed (the summary's endpoints, the CSV's rows) is ordered by the
database instead, in an order spelled out alike for both (``_endpoint_order``).

A backend implements :meth:`SQLStorage._run`: call ``work(executor)`` inside
one transaction, commit if it returns, roll back if it raises; and, given a
deadline, bound its waits by it and commit only before it. The dashboard's
questions go through :meth:`SQLStorage._read` instead, which a backend runs
where no report's store waits for it.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from ...histogram import Histogram
from .base import (
    MAX_ALL_VERSIONS,
    MAX_APPS,
    MAX_PLATFORMS,
    MAX_VERSIONS,
    EndpointLimits,
    Pruned,
    ReplayError,
    RolledUp,
    Storage,
    StoredReport,
    UnstorableReport,
)
from .rollup import (
    CHUNK_ROWS,
    CLAIM_SQL,
    DAILY_TABLES,
    DAY,
    DAY_BINS_SQL,
    DAY_FIGURES_SQL,
    FINISH_SQL,
    INSERT_BINS_SQL,
    INSERT_FIGURES_SQL,
    KEEP_FROM_SQL,
    LEASE,
    RELEASE_SQL,
    RENEW_SQL,
    STATE_SQL,
    SWEEP_SQL,
    Window,
    bin_rows,
    branch_params,
    day_of,
    every_row,
    figure_rows,
    new_claim,
    next_day,
    settled_before,
    window_rows,
)

logger = logging.getLogger("reqtelemetry.collector")

T = TypeVar("T")
Row = tuple[Any, ...]

#: Traits copied out of the JSON into their own columns, for grouping.
TRAIT_COLUMNS = ("app_name", "app_version", "os", "arch", "python_version", "framework")
#: Reports deleted per transaction by :meth:`SQLStorage.prune`, and the longest
#: pause it makes between two (as long as the batch took, up to this).
PRUNE_BATCH = 200
MAX_PRUNE_PAUSE = 1.0
#: Refusal reasons are the collector's own words; a cap keeps a bug from storing essays.
MAX_REASON_LENGTH = 64
#: App metric names the summary lists per kind. Clients send at most 100 per
#: kind in one report, but nothing bounds the names seen across reports.
MAX_METRIC_NAMES = 100
#: Rows fetched at a time by a streamed read (the CSV export, the summary's
#: histograms): what a read holds in memory, whatever the number of rows.
FETCH_ROWS = 1000
#: The dashboard's reads (see :meth:`SQLStorage._read`) that may run at once.
#: Each holds a connection: on SQLite one of its own (a file handle and a page
#: cache), on PostgreSQL one of the pool reports are stored through, which
#: keeps the others (two of the default four). More would only share the same
#: cores more thinly; one more dashboard waits for a turn.
MAX_READERS = 2


class SchemaMismatch(Exception):
    """The database is not at the schema version this release reads (or has none).

    Why an error rather than a migration: a reader (``reqtelemetry export``)
    may hold read-only credentials and must never create or alter tables; only
    the collector migrates.
    """


class Executor(Protocol):
    """One transaction's view of the database, with ``?`` placeholders in every dialect."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a statement that returns rows, and return them all."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run a statement for its effect."""

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""

    def batches(self, sql: str, params: Sequence[Any], size: int) -> Iterator[list[Row]]:
        """The rows of a statement, ``size`` at a time, as the database hands them
        over (row by row from the server on PostgreSQL): what a result too large to
        hold at once is read with. Its ``SUM`` aggregates must be done by
        its first batch (an aggregate ``ORDER BY`` is), so that SQLite's exact
        sum can take over where one overflows."""


@dataclass(frozen=True)
class Migration:
    """One schema version: statements run in one transaction, then recorded."""

    version: int
    description: str
    statements: tuple[str, ...]


@dataclass(frozen=True)
class Dialect:
    """The SQL fragments in which SQLite and PostgreSQL differ."""

    #: The larger / smaller of two values (``max(a, b)`` in SQLite, ``GREATEST`` in PostgreSQL).
    greatest: str
    least: str
    #: A placeholder for a JSON document (PostgreSQL casts it to jsonb).
    json_param: str
    #: Joined after ``aggregates AS a``: each aggregate's histogram pairs,
    #: expanded into rows ``b``.
    expand_bins: str
    #: The bucket index and count of one expanded pair.
    bin_index: str
    bin_count: str
    #: Whole ``?``-second buckets since the epoch of ``received_at``.
    bucket: str
    #: One row, one column: 1 when the ``schema_migrations`` table exists, else 0.
    has_migrations_table: str
    #: The aggregate that adds up integers (counts, bytes, histogram counts)
    #: exactly. PostgreSQL's ``SUM`` of bigints is numeric; SQLite's is 64-bit,
    #: and its backend finishes a sum past 2**63 another way (see sqlite.py).
    #: Why not SQLite's ``TOTAL``: it adds in floating point, so past 2**53
    #: the two backends showed different counts.
    sum: str = "SUM"
    #: The aggregate that adds up floats (latency sums), where nothing is exact.
    float_sum: str = "SUM"
    #: What makes a ``SELECT`` lock the rows it reads until the commit (PostgreSQL's
    #: ``FOR UPDATE``); empty where one writer holds the whole database (SQLite).
    lock_rows: str = ""
    #: The column naming a row, for deleting in batches (``rowid``, ``ctid``).
    row_id: str = "rowid"
    #: What makes a ``SELECT`` hold a shared lock on the rows it reads until the
    #: commit (PostgreSQL's ``FOR SHARE``); empty where one writer holds all.
    share_rows: str = ""
    #: The aggregate that adds up integers exactly whatever their sum: ``sum``,
    #: or where that stops at 64 bits, SQLite's own (see sqlite.py).
    exact_sum: str = "SUM"
    #: Appended to a text column in ``ORDER BY`` so that it sorts byte by byte,
    #: as Python does: PostgreSQL's default collation follows the locale,
    #: SQLite's is already bytewise.
    bytewise: str = ""
    #: ``ORDER BY`` terms that put a summed count ``{0}`` largest first. SQLite's
    #: exact sum gives a total past 64 bits as its decimal text, which SQLite
    #: sorts as text (``"9..."`` before ``"18..."``): there the number of digits
    #: goes first, which orders sums exactly, none being negative.
    sum_descending: str = "{0} DESC"
    #: The aggregate joining texts with a separator (``group_concat`` in SQLite).
    join_text: str = "string_agg"
    #: After ``aggregates AS a`` read since a time, of every app or of one: the
    #: index to read them by. SQLite names it: without statistics (the
    #: collector never gathers them), its planner read every aggregate ever
    #: kept through the endpoint index to save a sort, 2 to 4 times slower
    #: than the window's rows by time. PostgreSQL's planner has statistics.
    by_time: str = ""
    by_app_and_time: str = ""


#: An endpoint as a row value that never holds NULL (the columns of ``{0}``),
#: so that ``IN`` finds an app without a name too. Why ``IN`` rather than a
#: join on ``IS NOT DISTINCT FROM``: PostgreSQL cannot hash that, and SQLite,
#: without statistics, drove such a join from the endpoints and read the
#: window's rows once per endpoint listed (11 s for 500 of 100,000).
_ENDPOINT_KEY = "{0}method, {0}route, COALESCE({0}app_name, ''), {0}app_name IS NULL"


def _int(value: Any) -> int:
    """PostgreSQL sums integers as numeric (Decimal); both backends answer ints here."""
    return int(value) if value is not None else 0


def _float(value: Any) -> float:
    return float(value) if value is not None else 0.0


def _text_key(value: str | None) -> str:
    """Sort key that puts unknown (None) before any text, the same in both backends."""
    return "" if value is None else "\x01" + value


def _app_filter(app: str | None, column: str = "app_name") -> tuple[str, tuple[Any, ...]]:
    """The ``AND`` condition and its parameter that keep one app's rows; nothing for
    ``None`` (every app, those without a name included)."""
    if app is None:
        return "", ()
    return f" AND {column} = ?", (app,)


class SQLStorage(Storage):
    """The :class:`Storage` behaviour over any SQL database with a :class:`Dialect`."""

    dialect: Dialect
    migrations: Sequence[Migration]
    #: The driver's errors that mean "this value does not fit" (deterministic,
    #: so never worth a retry); :meth:`store` raises them as UnstorableReport.
    data_errors: tuple[type[Exception], ...] = ()

    # -- what a backend provides --------------------------------------------------------

    @abc.abstractmethod
    def _run(
        self, work: Callable[[Executor], T], write: bool = False, deadline: float | None = None
    ) -> T:
        """``work(executor)`` in one transaction: committed if it returns, rolled back if not.

        ``deadline`` (a ``time.monotonic()`` instant): every wait of the
        transaction (for a lock, a connection, a statement) ends by then, and
        it commits only if the deadline has not passed right before the
        commit; otherwise it rolls back and raises :class:`DeadlineExceeded`.
        """

    @abc.abstractmethod
    def _run_migrations(self, work: Callable[[Executor], T]) -> T:
        """Like :meth:`_run`, holding a lock that makes concurrent migrations take turns."""

    @abc.abstractmethod
    def _read(self, work: Callable[[Executor], T]) -> T:
        """``work(executor)`` in one read-only transaction: a dashboard question.

        Why apart from :meth:`_run`: a summary of a large database takes
        seconds, and must hold nothing a report's store waits for (SQLite's
        one connection and its lock, every slot of PostgreSQL's pool), or the
        reports arriving meanwhile pass their deadline and are answered
        ``503``. A backend bounds how many such reads run at once, and
        what they take.
        """

    # -- migrations ---------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest version this code knows; safe to repeat.

        Applied versions are recorded in ``schema_migrations``; each missing step
        runs in the same transaction as its record, under the backend's lock, so
        two replicas starting at once apply every step exactly once. A database
        already migrated further by a newer release is left alone (steps only
        ever add), with a warning.
        """
        latest = max(step.version for step in self.migrations)

        def work(ex: Executor) -> list[int]:
            ex.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY,"
                " description TEXT NOT NULL,"
                " applied_at DOUBLE PRECISION NOT NULL)"
            )
            done = {int(row[0]) for row in ex.query("SELECT version FROM schema_migrations")}
            applied = []
            for step in sorted(self.migrations, key=lambda step: step.version):
                if step.version in done:
                    continue
                for statement in step.statements:
                    ex.execute(statement)
                ex.execute(
                    "INSERT INTO schema_migrations (version, description, applied_at)"
                    " VALUES (?, ?, ?)",
                    (step.version, step.description, time.time()),
                )
                applied.append(step.version)
            if done and max(done) > latest:
                logger.warning(
                    "the collector database is at schema version %d, newer than this "
                    "release knows (%d); carrying on",
                    max(done),
                    latest,
                )
            return applied

        applied = self._run_migrations(work)
        if applied:
            logger.info("collector database migrated to schema version(s) %s", applied)

    def schema_version(self) -> int:
        """The newest applied migration (0 for a database never migrated)."""

        def work(ex: Executor) -> int:
            if not _int(ex.query(self.dialect.has_migrations_table)[0][0]):
                return 0
            return _int(ex.query("SELECT MAX(version) FROM schema_migrations")[0][0])

        return self._run(work)

    def check_schema(self) -> int:
        """The schema version, if it is the one this release reads; never writes.

        Raises :class:`SchemaMismatch` for a database without the collector's
        tables, or migrated to an older or newer version than this code knows.
        """
        latest = max(step.version for step in self.migrations)
        version = self.schema_version()
        if version == 0:
            raise SchemaMismatch(
                "it has no reqtelemetry tables (not a collector database, or no collector "
                "has run on it yet)"
            )
        if version < latest:
            raise SchemaMismatch(
                f"its schema is version {version}, older than this release reads ({latest}): "
                "start this release's collector on it once to migrate"
            )
        if version > latest:
            raise SchemaMismatch(
                f"its schema is version {version}, newer than this release reads ({latest}): "
                "export with the reqtelemetry release the collector runs"
            )
        return version

    # -- writes -------------------------------------------------------------------------

    def store(self, report: StoredReport, deadline: float | None = None) -> None:
        """Store one report in one transaction (see :meth:`Storage.store`).

        The report row goes first: its unique stamp decides replays before any
        other row is touched. The deployment and instance rows are upserted
        last, so the row locks they take (on PostgreSQL) are held only until
        the commit that follows; the foreign keys that point at them are
        checked at commit.
        """
        payload = report.payload
        traits = payload.get("traits", {})
        batch = payload["batch"]
        metrics = payload.get("metrics", {})
        received = float(report.received_at)
        deployment_id = payload["deployment_id"]
        instance_id = payload["instance_id"]
        app_name = traits.get("app_name")
        app_version = traits.get("app_version")
        extracted = [traits.get(name) for name in TRAIT_COLUMNS]
        traits_json = json.dumps(traits, separators=(",", ":"), sort_keys=True)
        d = self.dialect

        aggregate_rows = [
            (
                instance_id,
                deployment_id,
                app_name,
                app_version,
                received,
                batch["period_start"],
                batch["period_end"],
                record["method"],
                record["route"],
                record["status"],
                record["count"],
                record["latency"]["sum"],
                record["latency"]["min"],
                record["latency"]["max"],
                json.dumps(record["latency"]["histogram"], separators=(",", ":")),
                record["request_bytes"],
                record["response_bytes"],
            )
            for record in batch["records"]
        ]
        metric_rows = [
            (instance_id, deployment_id, received, name, kind, float(value))
            for kind, group in (("counter", "counters"), ("gauge", "gauges"))
            for name, value in metrics.get(group, {}).items()
        ]

        def work(ex: Executor) -> None:
            # Never before the day claimed by a roll-up (or rolled up), which
            # would leave the report out of every read: a replica's clock
            # behind the one that rolls up by more than rollup.SETTLE. The
            # state holds still until the commit (see rollup.py).
            state = ex.query(STATE_SQL.format(lock=d.share_rows))
            at = max(received, _float(state[0][2])) if state else received
            aggregates = aggregate_rows
            metric_values = metric_rows
            if at != received:
                aggregates = [(*row[:4], at, *row[5:]) for row in aggregate_rows]
                metric_values = [(*row[:2], at, *row[3:]) for row in metric_rows]
            inserted = ex.query(
                "INSERT INTO reports (stamp, deployment_id, instance_id, app_name, app_version,"
                " kind, sequence, part, parts, sent_at, received_at, period_start, period_end,"
                " dropped, internal_errors)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (stamp) DO NOTHING RETURNING id",
                (
                    report.stamp,
                    deployment_id,
                    instance_id,
                    app_name,
                    app_version,
                    payload["kind"],
                    payload["sequence"],
                    payload["part"],
                    payload["parts"],
                    payload["sent_at"],
                    at,
                    batch["period_start"],
                    batch["period_end"],
                    batch["dropped"],
                    payload.get("internal_errors", 0),
                ),
            )
            if not inserted:
                raise ReplayError(f"stamp already stored: {report.stamp[:80]}")
            report_id = inserted[0][0]
            if aggregates:
                ex.executemany(
                    "INSERT INTO aggregates (report_id, instance_id, deployment_id, app_name,"
                    " app_version, received_at, period_start, period_end, method, route, status,"
                    " count, latency_sum, latency_min, latency_max, histogram, request_bytes,"
                    " response_bytes)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                    f" {d.json_param}, ?, ?)",
                    [(report_id, *row) for row in aggregates],
                )
            if metric_values:
                ex.executemany(
                    "INSERT INTO metrics (report_id, instance_id, deployment_id, received_at,"
                    " name, kind, value) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(report_id, *row) for row in metric_values],
                )
            ex.execute(
                "INSERT INTO deployments (id, first_seen, last_seen) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET"
                f" first_seen = {d.least}(deployments.first_seen, excluded.first_seen),"
                f" last_seen = {d.greatest}(deployments.last_seen, excluded.last_seen)",
                (deployment_id, at, at),
            )
            # Traits follow the newest report: a report that arrives late does
            # not overwrite what a later one said.
            newer = "excluded.last_seen >= instances.last_seen"
            trait_columns = ", ".join(TRAIT_COLUMNS)
            trait_marks = ", ".join("?" for _ in TRAIT_COLUMNS)
            ex.execute(
                f"INSERT INTO instances (id, deployment_id, traits, {trait_columns},"
                " first_seen, last_seen)"
                f" VALUES (?, ?, {d.json_param}, {trait_marks}, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET "
                + ", ".join(
                    f"{column} = CASE WHEN {newer} THEN excluded.{column}"
                    f" ELSE instances.{column} END"
                    for column in ("deployment_id", "traits", *TRAIT_COLUMNS)
                )
                + f", first_seen = {d.least}(instances.first_seen, excluded.first_seen),"
                f" last_seen = {d.greatest}(instances.last_seen, excluded.last_seen)",
                (instance_id, deployment_id, traits_json, *extracted, at, at),
            )

        try:
            self._run(work, write=True, deadline=deadline)
        except self.data_errors as error:
            raise UnstorableReport(f"the database cannot hold a value: {error}") from error

    def stamp_stored(self, stamp: str, deadline: float | None = None) -> bool:
        """One lookup in the stamps' unique index, on the reports' side of the
        database (not a dashboard read, which may wait for its turn)."""
        rows = self._run(
            lambda ex: ex.query("SELECT 1 FROM reports WHERE stamp = ?", (stamp,)),
            deadline=deadline,
        )
        return bool(rows)

    def prune(self, before: float, stop: threading.Event | None = None) -> Pruned:
        """See :meth:`Storage.prune`.

        Reports go in batches of :data:`PRUNE_BATCH`, one transaction each, their
        aggregates and metrics with them (``ON DELETE CASCADE``), with a pause
        after each as long as it took: on SQLite a transaction holds the one
        write lock, and a year of reports deleted at once would keep every
        client's report waiting. So a prune takes at most about half the
        database's time, and a report that arrives waits for one batch at most.
        An instance is deleted once it has no report left, a deployment once it
        has no instance left; a report arriving meanwhile moves their
        ``last_seen`` past ``before``.
        """
        stop = threading.Event() if stop is None else stop
        # The daily rows before the first midnight after ``before`` are read
        # no more (the day it fell in loses some of its raw rows), and from
        # before the first batch: the raw rows being deleted are then read
        # as they go, and a prune that fails part-way leaves reads right. A
        # short transaction of its own: every report's store waits for it
        # (on PostgreSQL it holds the row their FOR SHARE reads).
        kept_from = next_day(before)
        self._run(
            lambda ex: ex.execute(
                KEEP_FROM_SQL.format(greatest=self.dialect.greatest), (kept_from,) * 5
            ),
            write=True,
        )
        reports = 0
        while True:
            began = time.monotonic()
            deleted = self._run(
                lambda ex: len(
                    ex.query(
                        "DELETE FROM reports WHERE id IN (SELECT id FROM reports"
                        " WHERE received_at < ? ORDER BY id LIMIT ?) RETURNING id",
                        (before, PRUNE_BATCH),
                    )
                ),
                write=True,
            )
            reports += deleted
            # Make way: as long a pause as the batch took (ended at once by
            # ``stop``). Without it the next batch takes the lock again the
            # moment it is let go (a lock is not a queue), and a report
            # arriving meanwhile waited for the whole prune.
            pause = min(time.monotonic() - began, MAX_PRUNE_PAUSE)
            if deleted < PRUNE_BATCH or stop.wait(pause):
                break

        def the_rest(ex: Executor) -> tuple[int, int]:
            # Deployments first, as store() upserts them before their instance:
            # locking in the other order, a report from an instance quiet for
            # longer than the retention deadlocked with the prune on PostgreSQL.
            # (SQLite's one writer holds the whole database already.)
            if self.dialect.lock_rows:
                ex.query(
                    "SELECT id FROM deployments WHERE last_seen < ?"
                    f" ORDER BY id{self.dialect.lock_rows}",
                    (before,),
                )
            instances = ex.query(
                "DELETE FROM instances WHERE last_seen < ? AND NOT EXISTS"
                " (SELECT 1 FROM reports AS r WHERE r.instance_id = instances.id)"
                " RETURNING id",
                (before,),
            )
            deployments = ex.query(
                "DELETE FROM deployments WHERE last_seen < ? AND NOT EXISTS"
                " (SELECT 1 FROM instances AS i WHERE i.deployment_id = deployments.id)"
                " RETURNING id",
                (before,),
            )
            return len(instances), len(deployments)

        instances, deployments = self._run(the_rest, write=True)
        # The daily rows before ``kept_from`` are never read: in batches, as
        # one day of a large fleet is millions of rows.
        self._sweep(None, f"day < {kept_from!r}", stop)
        return Pruned(reports=reports, instances=instances, deployments=deployments)

    def roll_up(self, now: float | None = None, stop: threading.Event | None = None) -> RolledUp:
        """See :meth:`Storage.roll_up`, and :mod:`.rollup` for the steps of a day.

        After each day, a pause as long as it took, as between the prune's
        batches. A day another replica holds the claim of ends this call: that
        replica rolls it up, and the rest after it.
        """
        now = time.time() if now is None else float(now)
        stop = threading.Event() if stop is None else stop
        settled = settled_before(now)
        days = rows = 0
        while not stop.is_set():
            began = time.monotonic()
            found = self._read(lambda ex: self._day_to_roll_up(ex, settled))
            if found is None:
                break
            written = self._roll_up_day(*found, stop)
            if written is None:
                break
            days += 1
            rows += written
            if stop.wait(min(time.monotonic() - began, MAX_PRUNE_PAUSE)):
                break
        return RolledUp(days=days, rows=rows)

    def _day_to_roll_up(self, ex: Executor, settled: float) -> tuple[float, float] | None:
        """``(through, end)``: the next day with raw rows not rolled up, if it
        ended by ``settled``. ``through`` is a day's end (or 0), so every raw
        row in ``[through, end)`` is of that one day."""
        through = self._window(ex, 0.0).through
        first = ex.query(
            "SELECT MIN(received_at) FROM aggregates WHERE received_at >= ?", (through,)
        )
        if first[0][0] is None:
            return None
        end = day_of(float(first[0][0])) + DAY
        return (through, end) if end <= settled else None

    def _roll_up_day(self, through: float, end: float, stop: threading.Event) -> int | None:
        """Claim, sweep, read and write the day in ``[through, end)``, then move
        ``through`` past it; the daily rows written, or None when the claim
        was another's or was lost, or ``stop`` was set. A sum that leaves 64
        bits on SQLite part-way through the day's rows starts the day again
        (swept) with the exact sum."""
        claim = _Claim(self, through, end)
        if not claim.take():
            return None
        finished = False
        try:
            written: int | None = None
            for exact in (False, True):
                try:
                    if not self._sweep(claim, f"day >= {through!r}", stop):
                        return None
                    written = self._write_day(claim, exact, stop)
                    break
                except Exception as error:
                    if exact or not self._is_sum_overflow(error):
                        raise
            if written is None:
                return None
            finished = self._run(
                lambda ex: bool(ex.query(FINISH_SQL, (end, through, claim.name))), write=True
            )
            return written if finished else None
        finally:
            if not finished:
                # Stopped, lost or failed: the next roll-up need not wait for the lease.
                with contextlib.suppress(Exception):
                    claim.release()

    def _write_day(self, claim: _Claim, exact: bool, stop: threading.Event) -> int | None:
        """Read the claimed day's groups and write them, a chunk a transaction;
        the daily figure rows written, or None when the claim was lost."""
        d = self.dialect
        total = d.exact_sum if exact else d.sum
        reads = (
            (
                DAY_FIGURES_SQL.format(
                    day=d.bucket, sum=total, float_sum=d.float_sum, by_time=d.by_time
                ),
                INSERT_FIGURES_SQL,
                figure_rows,
            ),
            (
                DAY_BINS_SQL.format(
                    day=d.bucket,
                    sum=total,
                    by_time=d.by_time,
                    expand=d.expand_bins,
                    index=d.bin_index,
                    count=d.bin_count,
                ),
                INSERT_BINS_SQL,
                bin_rows,
            ),
        )
        params = (int(DAY), claim.through, claim.end)
        written = 0
        for sql, insert, to_rows in reads:
            batches = self._stream(partial(_statement, sql, params), CHUNK_ROWS)
            try:
                for batch in batches:
                    values = to_rows(batch)
                    if stop.is_set() or not claim.write(insert, values):
                        return None
                    written += len(values) if insert is INSERT_FIGURES_SQL else 0
            finally:
                batches.close()
        return written

    def _sweep(self, claim: _Claim | None, where: str, stop: threading.Event) -> bool:
        """Delete the daily rows matching ``where`` (rows never read), a batch a
        transaction, pausing as the prune does; with ``claim``, only while it
        holds. False when it was lost or ``stop`` was set."""
        for table in DAILY_TABLES:
            sql = SWEEP_SQL.format(table=table, row_id=self.dialect.row_id, where=where)
            while True:
                if stop.is_set():
                    return False
                began = time.monotonic()
                if claim is None:
                    deleted: int | None = self._run(
                        partial(_deleted, sql=sql, limit=CHUNK_ROWS), write=True
                    )
                else:
                    deleted = claim.sweep(sql)
                if deleted is None:
                    return False
                if deleted < CHUNK_ROWS:
                    break
                stop.wait(min(time.monotonic() - began, MAX_PRUNE_PAUSE))
        return True

    def _is_sum_overflow(self, error: Exception) -> bool:
        """Whether ``error`` is a ``SUM`` that left 64 bits part-way through a
        read (SQLite's; PostgreSQL's sums are numeric)."""
        return False

    def add_refusals(self, counts: Mapping[str, int], deadline: float | None = None) -> None:
        """Add ``counts`` to the counters in one transaction: upserts that add,
        so replicas add up without locks of ours. Nothing for no counts."""
        rows: dict[str, int] = {}
        for reason, count in counts.items():
            key = str(reason)[:MAX_REASON_LENGTH]
            rows[key] = rows.get(key, 0) + int(count)
        rows = {reason: count for reason, count in rows.items() if count}
        if not rows:
            return
        self._run(
            lambda ex: ex.executemany(
                "INSERT INTO refusals (reason, count) VALUES (?, ?)"
                " ON CONFLICT (reason) DO UPDATE SET count = refusals.count + excluded.count",
                sorted(rows.items()),  # one order for every replica: no deadlock between them
            ),
            write=True,
            deadline=deadline,
        )

    def refusals(self) -> dict[str, int]:
        """Refusal counters by reason, in alphabetical order."""
        rows = self._read(lambda ex: ex.query("SELECT reason, count FROM refusals"))
        return {reason: _int(count) for reason, count in sorted(rows)}

    # -- the dashboard's questions ------------------------------------------------------

    def totals(self, since: float, app: str | None = None) -> dict[str, Any]:
        """Distinct deployments and instances that reported, reports, requests and
        server errors (status >= 500) received since ``since`` (from ``app`` only,
        when given); zeros when empty."""
        since = float(since)
        only, app_params = _app_filter(app)

        def work(ex: Executor) -> dict[str, Any]:
            deployments, instances, reports = ex.query(
                "SELECT COUNT(DISTINCT deployment_id), COUNT(DISTINCT instance_id), COUNT(*)"
                f" FROM reports WHERE received_at >= ?{only}",
                (since, *app_params),
            )[0]
            total = self.dialect.sum
            a_only, a_params = _app_filter(app, "a.app_name")
            requests, errors = ex.query(
                f"SELECT {total}(calls), {total}(errors)"
                f" FROM {window_rows(self._aggregates(app), only=a_only)}",
                branch_params(self._window(ex, since).bounds, a_params),
            )[0]
            return {
                "deployments": _int(deployments),
                "instances": _int(instances),
                "reports": _int(reports),
                "requests": _int(requests),
                "errors": _int(errors),
            }

        return self._read(work)

    def activity(
        self, since: float, bucket_seconds: int, app: str | None = None
    ) -> list[dict[str, Any]]:
        """Deployments and instances that reported (of ``app``, when given), per
        ``bucket_seconds`` bucket.

        Buckets are aligned to multiples of ``bucket_seconds`` since the epoch
        (UTC) and counted by the reports' ``received_at``; a bucket without any
        report is absent (the dashboard draws it as zero).
        """
        if not isinstance(bucket_seconds, int) or bucket_seconds <= 0:
            raise ValueError(f"bucket_seconds must be a positive integer, got {bucket_seconds!r}")
        bucket = self.dialect.bucket
        only, app_params = _app_filter(app)

        def work(ex: Executor) -> list[Row]:
            return ex.query(
                f"SELECT {bucket} AS bucket, COUNT(DISTINCT deployment_id),"
                " COUNT(DISTINCT instance_id)"
                f" FROM reports WHERE received_at >= ?{only} GROUP BY bucket",
                (bucket_seconds, float(since), *app_params),
            )

        rows = sorted((_int(b), _int(d), _int(i)) for b, d, i in self._read(work))
        return [
            {"bucket_start": float(b * bucket_seconds), "deployments": d, "instances": i}
            for b, d, i in rows
        ]

    def versions(
        self,
        since: float,
        app: str | None = None,
        limit: int = MAX_VERSIONS,
        total_limit: int = MAX_ALL_VERSIONS,
    ) -> dict[str, Any]:
        """App versions that reported since ``since``, per app name (of ``app`` only,
        when given; None: unknown or withheld), with distinct deployments and
        instances and the last report's time, cut at ``limit`` in the database
        (see :meth:`Storage.versions`).

        Why per app: two apps behind one collector may both be at "1.0", and
        counting their deployments together would describe neither. Why cut
        in the database: a flood of versions then costs Python ``limit`` rows
        an app. Why the cut is per app too: cut over all apps at once, one app
        that stamps every build into its version pushed every other app's
        versions off the list (and off the page). Why a cut over all apps
        as well: an app name is client text too, and a flood of names made
        a version each (``total_limit``).
        """
        only, app_params = _app_filter(app)
        order = self._unknown_first(("app_name", "app_version"))
        ranking = (
            "COUNT(DISTINCT deployment_id) DESC, COUNT(DISTINCT instance_id) DESC,"
            f" MAX(received_at) DESC, {order}"
        )

        def work(ex: Executor) -> list[Row]:
            return ex.query(
                "SELECT app_name, app_version, deployments, instances, last_seen, versions"
                " FROM (SELECT app_name, app_version,"
                " COUNT(DISTINCT deployment_id) AS deployments,"
                " COUNT(DISTINCT instance_id) AS instances, MAX(received_at) AS last_seen,"
                " COUNT(*) OVER () AS versions,"
                f" ROW_NUMBER() OVER (PARTITION BY app_name ORDER BY {ranking}) AS place"
                f" FROM reports WHERE received_at >= ?{only} GROUP BY app_name, app_version)"
                f" AS ranked WHERE place <= ?"
                f" ORDER BY deployments DESC, instances DESC, last_seen DESC, {order} LIMIT ?",
                (float(since), *app_params, int(limit), int(total_limit)),
            )

        rows = self._read(work)
        versions = [
            {
                "app_name": name,
                "app_version": version,
                "deployments": _int(deployments),
                "instances": _int(instances),
                "last_seen": _float(last_seen),
            }
            for name, version, deployments, instances, last_seen, _ in rows
        ]
        # Every app's versions, counted before either cut: what the rows left out.
        left_out = _int(rows[0][-1]) - len(rows) if rows else 0
        return {"versions": versions, "left_out": left_out, "limit": int(limit)}

    def apps(self, since: float, limit: int = MAX_APPS) -> dict[str, Any]:
        """Apps that reported since ``since`` by name (None: reports without one),
        with distinct deployments and instances, reports and the last report's
        time; most deployments first, cut at ``limit`` in the database.

        Why cut: an app name is any text a report says, and every one was an
        option of the dashboard's selector and a row of the JSON.
        """
        order = self._unknown_first(("app_name",))

        def work(ex: Executor) -> list[Row]:
            return ex.query(
                "SELECT app_name, COUNT(DISTINCT deployment_id), COUNT(DISTINCT instance_id),"
                " COUNT(*), MAX(received_at), COUNT(*) OVER ()"
                " FROM reports WHERE received_at >= ? GROUP BY app_name"
                " ORDER BY COUNT(DISTINCT deployment_id) DESC,"
                f" COUNT(DISTINCT instance_id) DESC, COUNT(*) DESC, {order} LIMIT ?",
                (float(since), int(limit)),
            )

        rows = self._read(work)
        result = [
            {
                "app_name": name,
                "deployments": _int(deployments),
                "instances": _int(instances),
                "reports": _int(reports),
                "last_seen": _float(last_seen),
            }
            for name, deployments, instances, reports, last_seen, _ in rows
        ]
        left_out = _int(rows[0][-1]) - len(rows) if rows else 0
        return {"apps": result, "left_out": left_out, "limit": int(limit)}

    # -- endpoints: the summary's lists (cut) and the CSV's rows (all, streamed) -------

    @abc.abstractmethod
    def _stream(
        self, statement: Callable[[Executor], tuple[str, Sequence[Any]]], size: int
    ) -> Generator[list[Row], None, None]:
        """The rows of one read-only statement, ``size`` at a time, read
        on a connection of the read's own, in a transaction of its own that
        sees one snapshot: ``statement(executor)`` says what to run, after
        reading what it needs in that same snapshot (where the roll-up stands).

        Why not :meth:`_run`: a download is as slow as the client fetching it,
        and must hold neither what :meth:`_run` shares with the reports being
        stored (SQLite's one connection and its lock, a slot of PostgreSQL's
        pool) nor all of its rows at once. The connection is closed when the
        generator ends, is closed, or is collected.
        """

    def endpoints(
        self,
        since: float,
        by_version: bool = False,
        app: str | None = None,
        by_app: bool = False,
    ) -> list[dict[str, Any]]:
        """Per endpoint since ``since``; see :meth:`Storage.endpoints`.

        Every endpoint ever stored (by ``app``, when given) is listed: one
        without calls since ``since`` has ``calls`` 0 and ``None`` for
        ``error_rate``, percentiles and ``mean``. ``errors`` counts status >=
        500. Percentiles come from the endpoint's histograms merged across
        instances and reports (the database adds up the counts per bucket;
        Python reads the quantiles off them). One query, whatever the number
        of endpoints; for a list too long to hold, see :meth:`iter_endpoints`.
        """
        columns = _endpoint_columns(by_version=by_version, by_app=by_app)

        def work(ex: Executor) -> list[dict[str, Any]]:
            sql, params = self._every_endpoint_sql(self._window(ex, since), columns, app)
            return [
                _endpoint_entry(columns, row)
                for batch in ex.batches(sql, params, FETCH_ROWS)
                for row in batch
            ]

        return self._read(work)

    def iter_endpoints(
        self, since: float, app: str | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """``endpoints(since, by_version=True, app=app)``, one row at a time as the
        database hands them over (see :meth:`Storage.iter_endpoints`): the same
        query, read through :meth:`_stream`, so that an export holds
        :data:`FETCH_ROWS` rows at most, and never what report writes wait for.
        """
        columns = _endpoint_columns(by_version=True, by_app=True)

        def statement(ex: Executor) -> tuple[str, Sequence[Any]]:
            return self._every_endpoint_sql(self._window(ex, since), columns, app)

        batches = self._stream(statement, FETCH_ROWS)
        try:
            for batch in batches:
                for row in batch:
                    yield _endpoint_entry(columns, row)
        finally:
            batches.close()  # the read's connection, at once

    def endpoint_summary(
        self,
        since: float,
        app: str | None = None,
        limits: EndpointLimits | None = None,
    ) -> dict[str, Any]:
        """The dashboard's endpoint lists, each cut in the database; see
        :meth:`Storage.endpoint_summary`.

        Three statements in one transaction, none of which hands Python more
        rows than a limit at once, whatever the number of endpoints stored:

        1. the endpoints called in the window, per app, the busiest first, cut
           at ``limits.used``, with every figure but the percentiles (no
           histogram is read) and how many there were;
        2. the endpoints seen before the window only, the latest seen first,
           cut at ``limits.unused``, and how many there were (when there are
           any: see :meth:`_unused_rows`);
        3. the rows per app version of the endpoints of 1, with their
           histograms (see :meth:`_versions_of`).

        1 costs the database a grouping of the window's rows, 2 one of every
        row kept (when some endpoint is unused), and neither reads JSON; 3
        reads the histograms of the listed endpoints' rows in the window, once
        for both lists.
        """
        limits = limits or EndpointLimits()
        columns = _endpoint_columns(by_version=False, by_app=True)

        def work(ex: Executor) -> dict[str, Any]:
            window = self._window(ex, since)
            used_rows = ex.query(*self._busiest_endpoints_sql(window, app, limits.used))
            unused_sql, unused_params = self._unused_endpoints_sql(window, app, limits.unused)
            unused_rows = self._unused_rows(ex, app, _counted(used_rows), unused_sql, unused_params)
            histograms = {tuple(row[:3]): Histogram() for row in used_rows}
            by_version, versions = self._versions_of(ex, window, app, histograms, limits.by_version)
            used = [_used_endpoint(row, histograms[tuple(row[:3])]) for row in used_rows]
            unused = [_unused_endpoint(columns, row) for row in unused_rows]
            return {
                "endpoints": used + unused,
                "endpoints_by_version": by_version,
                "left_out": {
                    "used": _counted(used_rows) - len(used),
                    "unused": _counted(unused_rows) - len(unused),
                    "by_version": versions - len(by_version),
                },
                "limits": limits.as_dict(),
            }

        return self._read(work)

    def _unused_rows(
        self, ex: Executor, app: str | None, used: int, sql: str, params: Sequence[Any]
    ) -> list[Row]:
        """The rows of the unused endpoints' statement (``sql``), run only when
        the endpoints ever stored (of ``app``) outnumber the ``used`` ones.

        Why count first: an unused endpoint's last time is read from every
        row kept, raw or rolled up (no index holds it), while the endpoints
        themselves are counted from an index alone; and most of the time each
        was called in the window, so there is nothing to list. The raw rows
        name every endpoint the daily rows read do (those before the
        retention are not read), so they alone are counted.
        """
        only = " WHERE app_name = ?" if app is not None else ""
        known = ex.query(
            "SELECT COUNT(*) FROM (SELECT DISTINCT method, route, app_name"
            f" FROM aggregates{only}) AS k",
            (app,) if app is not None else (),
        )
        if _int(known[0][0]) <= used:
            return []
        return ex.query(sql, params)

    def _versions_of(
        self,
        ex: Executor,
        window: Window,
        app: str | None,
        histograms: dict[Row, Histogram],
        limit: int,
    ) -> tuple[list[dict[str, Any]], int]:
        """The rows per app version in ``window`` of the endpoints ``histograms``
        holds (``method, route, app_name``), the busiest first, at most
        ``limit`` of them; and how many there were. Every row's histogram is
        added to its endpoint's in ``histograms`` on the way.

        The one read of histograms the summary makes, a batch at a time: a
        batch's rows are added up and let go, but for the first ``limit``.

        Why the endpoints as parameters rather than statement 1 again, as a
        CTE: that would group the window's rows once more, and SQLite then
        planned to read each listed endpoint's rows of all time. (4
        parameters an endpoint in each of the six parts read, raw and rolled
        up: the 500 listed take 12,000, where SQLite since 3.32 allows
        32,766, and this code needs 3.35 for ``RETURNING``.)
        """
        if not histograms:
            return [], 0
        fine = _endpoint_columns(by_version=True, by_app=True)
        sql, params = self._figures_sql(fine, window, app, endpoints=list(histograms))
        most_calls = self.dialect.sum_descending.format("calls")
        sql += f" ORDER BY {most_calls}, {self._endpoint_order(fine)}"
        rows: list[dict[str, Any]] = []
        counted = 0
        for batch in ex.batches(sql, params, FETCH_ROWS):
            for row in batch:
                counted += 1
                pairs = _bin_pairs(row[-1])
                histograms[tuple(row[:3])].merge_bins(pairs)
                if len(rows) < limit:
                    rows.append(_endpoint_entry(fine, row, pairs))
        return rows, counted

    def _endpoint_order(self, columns: tuple[str, ...]) -> str:
        """The order of endpoint rows of the same figure: by method and route,
        then app name and version with unknown (NULL) first, byte by byte.

        Why spelled out: a cut must fall at the same row on both backends,
        and the rows must come in the order Python sorted them in before the
        database cut them (so an export is what it was).
        """
        b = self.dialect.bytewise
        terms = []
        for column in columns:
            if column in ("app_name", "app_version"):
                terms.append(self._unknown_first((column,)))
            else:
                terms.append(f"{column}{b}")
        return ", ".join(terms)

    def _unknown_first(self, columns: Sequence[str]) -> str:
        """``ORDER BY`` terms for text ``columns`` that may be NULL: unknown
        first, then byte by byte (as :func:`_text_key` sorts in Python), so
        that a cut falls at the same row on both backends."""
        b = self.dialect.bytewise
        return ", ".join(f"{column} IS NOT NULL, {column}{b}" for column in columns)

    def _figures_sql(
        self,
        columns: tuple[str, ...],
        window: Window,
        app: str | None,
        *,
        older: bool = False,
        endpoints: Sequence[Row] | None = None,
    ) -> tuple[str, list[Any]]:
        """One grouped row per ``columns`` of the aggregates in ``window``, raw and
        rolled up (of ``app``, when given): the key, calls, errors, latency sum, request and
        response bytes, distinct deployments, the last time seen, and the
        histogram as text (``index:count`` pairs, comma-separated; NULL when
        empty). Not ordered.

        ``older``: a row of zeros, too, for each key seen before the window only
        (its aggregates read for their key and time alone). ``endpoints``: only
        the rows of these (``method, route, app_name``), found by
        :data:`_ENDPOINT_KEY`.

        Why one grouping of the rows of two groupings (each key's sums, and
        its histogram buckets added up per bucket) rather than two result
        sets: each key's figures and histogram arrive together, so a reader
        can compute a row's percentiles and let it go, instead of holding
        every histogram until the sums arrive. Why the sums grouped first:
        the last grouping then sorts a few rows per key, not every aggregate
        (on PostgreSQL, half a million of them spilled to disk).
        """
        d = self.dialect
        only, only_params = _app_filter(app, "a.app_name")
        a_key = ", ".join(f"a.{column}" for column in columns)
        key = ", ".join(columns)
        if endpoints is not None:
            listed = ", ".join("(?, ?, ?, ?)" for _ in endpoints)
            only += f" AND ({_ENDPOINT_KEY.format('a.')}) IN (VALUES {listed})"
            only_params = (
                *only_params,
                *(
                    value
                    for method, route, app_name in endpoints
                    for value in (method, route, app_name or "", app_name is None)
                ),
            )
        raw = self._aggregates(app)
        figures = window_rows(raw, only=only)
        bins = window_rows(raw, bins=(d.expand_bins, d.bin_index, d.bin_count), only=only)
        in_window = branch_params(window.bounds, only_params)
        # Per key and deployment first, then per key: the deployments are
        # counted by a second grouping rather than COUNT(DISTINCT), which
        # makes PostgreSQL sort every aggregate of the window.
        per_deployment = (
            f"SELECT {a_key}, {d.sum}(a.calls) AS n_calls, {d.sum}(a.errors) AS n_errors,"
            f" {d.float_sum}(a.latency_sum) AS n_latency, {d.sum}(a.request_bytes) AS n_in,"
            f" {d.sum}(a.response_bytes) AS n_out, MAX(a.received_at) AS n_seen"
            f" FROM {figures} GROUP BY {a_key}, a.deployment_id"
        )
        branches = [
            f"SELECT {key}, {d.sum}(n_calls) AS n_calls, {d.sum}(n_errors) AS n_errors,"
            f" {d.float_sum}(n_latency) AS n_latency, {d.sum}(n_in) AS n_in,"
            f" {d.sum}(n_out) AS n_out, COUNT(*) AS n_deployments, MAX(n_seen) AS n_seen,"
            f" NULL AS n_bins FROM ({per_deployment}) AS w GROUP BY {key}",
            f"SELECT {key}, 0, 0, 0.0, 0, 0, 0, NULL,"
            " CAST(bin AS TEXT) || ':' || CAST(n AS TEXT)"
            f" FROM (SELECT {a_key}, a.bin AS bin, {d.sum}(a.n) AS n"
            f" FROM {bins} GROUP BY {a_key}, a.bin) AS g",
        ]
        params = [*in_window, *in_window]
        if older:
            before = window_rows(raw, only=only, before=True)
            branches.append(
                f"SELECT {a_key}, 0, 0, 0.0, 0, 0, 0, MAX(a.received_at), NULL"
                f" FROM {before} GROUP BY {a_key}"
            )
            params += branch_params(window.before_bounds, only_params)
        # Each key's window figures are one row of the first branch: the distinct
        # deployments are taken as they are (MAX), the rest added to the others' zeros.
        sql = (
            f"SELECT {key}, {d.sum}(n_calls) AS calls, {d.sum}(n_errors),"
            f" {d.float_sum}(n_latency), {d.sum}(n_in), {d.sum}(n_out),"
            f" MAX(n_deployments), MAX(n_seen), {d.join_text}(n_bins, ',')"
            f" FROM ({' UNION ALL '.join(branches)}) AS f GROUP BY {key}"
        )
        return sql, params

    def _aggregates(self, app: str | None) -> str:
        """``aggregates AS a``, read by time (of ``app``, when given); see
        :attr:`Dialect.by_time`."""
        d = self.dialect
        return "aggregates AS a" + (d.by_time if app is None else d.by_app_and_time)

    def _every_endpoint_sql(
        self, window: Window, columns: tuple[str, ...], app: str | None
    ) -> tuple[str, list[Any]]:
        """Every endpoint ever stored (of ``app``, when given), most calls first."""
        sql, params = self._figures_sql(columns, window, app, older=True)
        most_calls = self.dialect.sum_descending.format("calls")
        return sql + f" ORDER BY {most_calls}, {self._endpoint_order(columns)}", params

    def _busiest_endpoints_sql(
        self, window: Window, app: str | None, limit: int
    ) -> tuple[str, list[Any]]:
        """The endpoints (per app) called in ``window``, the busiest first, at
        most ``limit``: ``method, route, app_name, calls, errors, latency_sum,
        request_bytes, response_bytes, deployments, last_seen, endpoints`` (how
        many there were before the cut)."""
        d = self.dialect
        only, only_params = _app_filter(app, "a.app_name")
        sql = (
            f"SELECT method, route, app_name, {d.sum}(calls) AS calls, {d.sum}(errors),"
            f" {d.float_sum}(latency_sum), {d.sum}(request_bytes), {d.sum}(response_bytes),"
            " COUNT(DISTINCT deployment_id), MAX(received_at), COUNT(*) OVER () AS endpoints"
            f" FROM {window_rows(self._aggregates(app), only=only)}"
            " GROUP BY method, route, app_name"
            f" ORDER BY {d.sum_descending.format(f'{d.sum}(calls)')},"
            f" {self._endpoint_order(('method', 'route', 'app_name'))} LIMIT ?"
        )
        return sql, [*branch_params(window.bounds, only_params), int(limit)]

    def _unused_endpoints_sql(
        self, window: Window, app: str | None, limit: int
    ) -> tuple[str, list[Any]]:
        """The endpoints (per app) seen before ``window`` and not in it, the
        latest seen first, at most ``limit``: ``method, route, app_name,
        last_seen, endpoints`` (how many there were before the cut). Each
        endpoint's last time is read from every row kept, raw or rolled up."""
        only, only_params = _app_filter(app, "a.app_name")
        order = self._endpoint_order(("method", "route", "app_name"))
        sql = (
            "SELECT method, route, app_name, MAX(received_at) AS last_seen,"
            f" COUNT(*) OVER () AS endpoints FROM {every_row(self._aggregates(app), only)}"
            " GROUP BY method, route, app_name HAVING MAX(received_at) < ?"
            f" ORDER BY MAX(received_at) DESC, {order} LIMIT ?"
        )
        return sql, [*branch_params(window.every_bounds, only_params), window.since, int(limit)]

    def _window(self, ex: Executor, since: float) -> Window:
        """Where the aggregates received since ``since`` are read from, as far
        as the daily roll-up has gone in ``ex``'s snapshot (see :class:`Window`)."""
        state = ex.query(STATE_SQL.format(lock=""))
        through, kept_from = (_float(state[0][0]), _float(state[0][1])) if state else (0.0, 0.0)
        return Window.of(float(since), through, kept_from)

    def platforms(
        self, since: float, app: str | None = None, limit: int = MAX_PLATFORMS
    ) -> dict[str, Any]:
        """Instances seen since ``since`` (of ``app``, by the name in their newest
        report, when given) by ``os``, ``arch``, ``python_version`` and
        ``framework`` (each None when unknown or withheld), with their distinct
        deployments; most instances first, cut at ``limit`` combinations in the
        database (see :meth:`Storage.platforms`)."""
        only, app_params = _app_filter(app)
        columns = ("os", "arch", "python_version", "framework")
        key = ", ".join(columns)

        def work(ex: Executor) -> list[Row]:
            return ex.query(
                f"SELECT {key}, COUNT(*) AS instances,"
                " COUNT(DISTINCT deployment_id) AS deployments, COUNT(*) OVER () AS platforms"
                f" FROM instances WHERE last_seen >= ?{only} GROUP BY {key}"
                f" ORDER BY instances DESC, deployments DESC, {self._unknown_first(columns)}"
                " LIMIT ?",
                (float(since), *app_params, int(limit)),
            )

        rows = self._read(work)
        platforms = [
            {
                **dict(zip(columns, row[:4], strict=True)),
                "instances": _int(row[4]),
                "deployments": _int(row[5]),
            }
            for row in rows
        ]
        return {
            "platforms": platforms,
            "left_out": _counted(rows) - len(rows),
            "limit": int(limit),
        }

    def app_metrics(
        self, since: float, app: str | None = None, limit: int = MAX_METRIC_NAMES
    ) -> dict[str, Any]:
        """Counters and gauges reported since ``since``; see :meth:`Storage.app_metrics`.

        Two queries in one transaction (one snapshot), one per kind. The
        metric rows carry no app name, so each joins them to their report; it
        reads no aggregate, so no histogram. The window's metric rows of a
        kind are one range of ``metrics_kind_received_at`` (schema version 3;
        ``m.received_at`` is its report's time), their reports are found by
        id. Each query cuts its list at ``limit`` names (and counts them all)
        in the database, so a window of many names costs Python ``limit`` rows.
        """
        since = float(since)
        only, app_params = _app_filter(app, "r.app_name")

        def work(ex: Executor) -> tuple[list[Row], list[Row]]:
            params = (since, since, *app_params, int(limit))
            counters = ex.query(self._counters_sql(only), params)
            gauges = ex.query(self._gauges_sql(only), params)
            return counters, gauges

        counters, gauges = self._read(work)
        return {
            "counters": _counter_entries(counters),
            "counter_names": _int(counters[0][-1]) if counters else 0,
            "gauges": _gauge_entries(gauges),
            "gauge_names": _int(gauges[0][-1]) if gauges else 0,
            "limit": int(limit),
        }

    def _metric_order(self, total: str, name: str, app_name: str) -> str:
        """The order a list of metrics is cut in: the most widely reported first.

        Why deployments before the value: one deployment, hostile or broken,
        can report any number, but not from many deployments at once. Text
        ties are broken bytewise, so both backends cut at the same name; the
        app's unknown first, as :func:`_metric_key` orders what was kept, so
        that the cut keeps the rows the uncut list starts with.
        """
        b = self.dialect.bytewise
        return (
            f" ORDER BY deployments DESC, {total} DESC, {name}{b},"
            f" {self._unknown_first((app_name,))} LIMIT ?"
        )

    def _counters_sql(self, only: str) -> str:
        """Per app and counter: the deltas added up, and the deployments that sent them."""
        return (
            "SELECT r.app_name, m.name, SUM(m.value) AS total,"
            " COUNT(DISTINCT m.deployment_id) AS deployments, COUNT(*) OVER () AS names"
            " FROM reports AS r JOIN metrics AS m ON m.report_id = r.id"
            f" WHERE r.received_at >= ? AND m.received_at >= ? AND m.kind = 'counter'{only}"
            " GROUP BY r.app_name, m.name" + self._metric_order("total", "m.name", "r.app_name")
        )

    def _gauges_sql(self, only: str) -> str:
        """Per app and gauge: each deployment's latest value, then their sum,
        median, maximum and number.

        Why the latest per deployment: a deployment's instances (workers,
        replicas) often sample the same gauge, so adding up instances or
        reports would count one deployment's 40 users several times. The
        median is the middle value, or the mean of the two middle values, of
        the deployments' values in order: window functions both databases
        have, where a percentile function is PostgreSQL's alone.
        """
        return (
            "WITH latest AS ("
            " SELECT r.app_name AS app_name, m.name AS name, m.value AS value,"
            " ROW_NUMBER() OVER (PARTITION BY r.app_name, m.name, m.deployment_id"
            " ORDER BY m.received_at DESC, m.id DESC) AS newest"
            " FROM reports AS r JOIN metrics AS m ON m.report_id = r.id"
            f" WHERE r.received_at >= ? AND m.received_at >= ? AND m.kind = 'gauge'{only}"
            "), ranked AS ("
            " SELECT app_name, name, value,"
            " ROW_NUMBER() OVER (PARTITION BY app_name, name ORDER BY value) AS place,"
            " COUNT(*) OVER (PARTITION BY app_name, name) AS counted"
            " FROM latest WHERE newest = 1"
            ")"
            " SELECT app_name, name, SUM(value) AS total,"
            " AVG(CASE WHEN place IN ((counted + 1) / 2, (counted + 2) / 2) THEN value END),"
            " MAX(value), COUNT(*) AS deployments, COUNT(*) OVER () AS names"
            " FROM ranked GROUP BY app_name, name" + self._metric_order("total", "name", "app_name")
        )

    def dropped(
        self, since: float, app: str | None = None, limit: int = MAX_APPS
    ) -> dict[str, Any]:
        """Requests past the clients' key cap since ``since``, per app; see
        :meth:`Storage.dropped`. One query on ``reports`` (its ``received_at``
        indexes), which holds each batch's count; the apps cut at ``limit``
        (an app name is client text), the total of them all kept."""
        only, app_params = _app_filter(app)

        def work(ex: Executor) -> list[Row]:
            return ex.query(
                f"SELECT app_name, {self.dialect.sum}(dropped), COUNT(DISTINCT deployment_id)"
                f" FROM reports WHERE received_at >= ? AND dropped > 0{only} GROUP BY app_name",
                (float(since), *app_params),
            )

        rows = self._read(work)
        by_app = [
            {"app_name": name, "requests": _int(requests), "deployments": _int(deployments)}
            for name, requests, deployments in rows
        ]
        by_app.sort(key=lambda row: (-row["requests"], _text_key(row["app_name"])))
        return {
            "requests": sum(row["requests"] for row in by_app),
            "by_app": by_app[: int(limit)],
            "left_out": max(0, len(by_app) - int(limit)),
        }


def _metric_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """Python's order of a metrics list, as :meth:`SQLStorage._metric_order` cuts it."""
    return (-row["deployments"], -row["total"], row["name"], _text_key(row["app_name"]))


def _counter_entries(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """Counter dicts from ``app_name, name, total, deployments, names`` rows."""
    result = [
        {
            "app_name": app_name,
            "name": name,
            "total": _float(total),
            "deployments": _int(deployments),
        }
        for app_name, name, total, deployments, _ in rows
    ]
    result.sort(key=_metric_key)
    return result


def _gauge_entries(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """Gauge dicts from ``app_name, name, sum, median, max, deployments, names`` rows."""
    result = [
        {
            "app_name": app_name,
            "name": name,
            "sum": _float(total),
            "median": _float(median),
            "max": _float(maximum),
            "deployments": _int(deployments),
        }
        for app_name, name, total, median, maximum, deployments, _ in rows
    ]
    result.sort(key=lambda row: _metric_key({**row, "total": row["sum"]}))
    return result


def _endpoint_columns(*, by_version: bool, by_app: bool) -> tuple[str, ...]:
    """The key of an endpoint row: method and route, and the app's name (with
    ``by_app`` or ``by_version``) and version (with ``by_version``)."""
    columns: tuple[str, ...] = ("method", "route")
    if by_app or by_version:
        columns += ("app_name",)
    if by_version:
        columns += ("app_version",)
    return columns


def _counted(rows: Sequence[Sequence[Any]]) -> int:
    """How many rows a cut statement had before its ``LIMIT`` (its last column,
    ``COUNT(*) OVER ()``; 0 without rows)."""
    return _int(rows[0][-1]) if rows else 0


def _bin_pairs(text: str | None) -> list[tuple[int, int]]:
    """A histogram as :meth:`SQLStorage._figures_sql` writes it (``index:count``
    pairs, comma-separated; NULL for none) as ``(index, count)`` pairs."""
    if not text:
        return []
    pairs = []
    for pair in text.split(","):
        index, _, count = pair.partition(":")
        pairs.append((int(index), int(count)))
    return pairs


def _figures(
    calls: Any,
    errors: Any,
    latency_sum: Any,
    request_bytes: Any,
    response_bytes: Any,
    deployments: Any,
    histogram: Histogram,
) -> dict[str, Any]:
    """An endpoint row's figures (see :meth:`Storage.endpoints`) from its sums and
    merged histogram; rates, the mean and percentiles are None without calls."""
    calls, errors = _int(calls), _int(errors)
    p50, p95, p99 = histogram.quantiles((0.50, 0.95, 0.99))
    return {
        "calls": calls,
        "errors": errors,
        "error_rate": errors / calls if calls else None,
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "mean": _float(latency_sum) / calls if calls else None,
        "request_bytes": _int(request_bytes),
        "response_bytes": _int(response_bytes),
        "deployments": _int(deployments),
    }


def _endpoint_entry(
    columns: tuple[str, ...], row: Sequence[Any], pairs: list[tuple[int, int]] | None = None
) -> dict[str, Any]:
    """The endpoint dict of one row of :meth:`SQLStorage._figures_sql` (``pairs``:
    its histogram, when the caller parsed it already)."""
    width = len(columns)
    calls, errors, latency_sum, request_bytes, response_bytes, deployments, _, bins = row[
        width : width + 8
    ]
    histogram = Histogram.from_pairs(_bin_pairs(bins) if pairs is None else pairs)
    entry: dict[str, Any] = dict(zip(columns, row[:width], strict=True))
    entry.update(
        _figures(calls, errors, latency_sum, request_bytes, response_bytes, deployments, histogram)
    )
    return entry


def _used_endpoint(row: Sequence[Any], histogram: Histogram) -> dict[str, Any]:
    """A row of :meth:`SQLStorage._busiest_endpoints_sql` as the summary lists
    it, with the percentiles of ``histogram`` (its versions' merged)."""
    method, route, app_name, calls, errors, latency_sum, request_bytes, response_bytes = row[:8]
    deployments, last_seen = row[8:10]
    entry: dict[str, Any] = {"method": method, "route": route, "app_name": app_name}
    entry.update(
        _figures(calls, errors, latency_sum, request_bytes, response_bytes, deployments, histogram)
    )
    entry["last_seen"] = _float(last_seen)
    return entry


def _unused_endpoint(columns: tuple[str, ...], row: Sequence[Any]) -> dict[str, Any]:
    """A row of :meth:`SQLStorage._unused_endpoints_sql` as the summary lists it:
    no calls in the window, and when it was last seen."""
    entry: dict[str, Any] = dict(zip(columns, row[:3], strict=True))
    entry.update(_figures(0, 0, 0.0, 0, 0, 0, Histogram()))
    entry["last_seen"] = _float(row[3])
    return entry


def common_tables(
    *, id_column: str, float_type: str, json_type: str, big_int: str
) -> tuple[str, ...]:
    """The version-1 tables, with the column types a backend spells its own way.

    Times are Unix seconds as floats. Foreign keys are checked at commit, which
    lets :meth:`SQLStorage.store` write the report before its instance.
    """
    fk = "DEFERRABLE INITIALLY DEFERRED"
    return (
        "CREATE TABLE deployments ("
        " id TEXT PRIMARY KEY,"
        f" first_seen {float_type} NOT NULL,"
        f" last_seen {float_type} NOT NULL)",
        "CREATE TABLE instances ("
        " id TEXT PRIMARY KEY,"
        f" deployment_id TEXT NOT NULL REFERENCES deployments (id) {fk},"
        f" traits {json_type} NOT NULL,"
        " app_version TEXT, os TEXT, arch TEXT, python_version TEXT, framework TEXT,"
        f" first_seen {float_type} NOT NULL,"
        f" last_seen {float_type} NOT NULL)",
        "CREATE TABLE reports ("
        f" id {id_column},"
        " stamp TEXT NOT NULL UNIQUE,"
        f" deployment_id TEXT NOT NULL REFERENCES deployments (id) {fk},"
        f" instance_id TEXT NOT NULL REFERENCES instances (id) {fk},"
        " app_version TEXT,"
        " kind TEXT NOT NULL,"
        f" sequence {big_int} NOT NULL,"
        " part INTEGER NOT NULL,"
        " parts INTEGER NOT NULL,"
        f" sent_at {float_type} NOT NULL,"
        f" received_at {float_type} NOT NULL,"
        f" period_start {float_type} NOT NULL,"
        f" period_end {float_type} NOT NULL,"
        f" dropped {big_int} NOT NULL DEFAULT 0,"
        f" internal_errors {big_int} NOT NULL DEFAULT 0)",
        "CREATE TABLE aggregates ("
        f" id {id_column},"
        f" report_id {big_int} NOT NULL REFERENCES reports (id) ON DELETE CASCADE {fk},"
        " instance_id TEXT NOT NULL,"
        " deployment_id TEXT NOT NULL,"
        " app_version TEXT,"
        f" received_at {float_type} NOT NULL,"
        f" period_start {float_type} NOT NULL,"
        f" period_end {float_type} NOT NULL,"
        " method TEXT NOT NULL,"
        " route TEXT NOT NULL,"
        " status INTEGER NOT NULL,"
        f" count {big_int} NOT NULL,"
        f" latency_sum {float_type} NOT NULL,"
        f" latency_min {float_type},"
        f" latency_max {float_type},"
        f" histogram {json_type} NOT NULL,"
        f" request_bytes {big_int} NOT NULL,"
        f" response_bytes {big_int} NOT NULL)",
        "CREATE TABLE metrics ("
        f" id {id_column},"
        f" report_id {big_int} NOT NULL REFERENCES reports (id) ON DELETE CASCADE {fk},"
        " instance_id TEXT NOT NULL,"
        " deployment_id TEXT NOT NULL,"
        f" received_at {float_type} NOT NULL,"
        " name TEXT NOT NULL,"
        " kind TEXT NOT NULL CHECK (kind IN ('counter', 'gauge')),"
        f" value {float_type} NOT NULL)",
        f"CREATE TABLE refusals (reason TEXT PRIMARY KEY, count {big_int} NOT NULL)",
        # What the dashboard asks: everything since a time, grouped.
        "CREATE INDEX reports_received_at ON reports (received_at)",
        "CREATE INDEX reports_instance ON reports (instance_id)",
        "CREATE INDEX instances_last_seen ON instances (last_seen)",
        "CREATE INDEX instances_deployment ON instances (deployment_id)",
        "CREATE INDEX aggregates_received_at ON aggregates (received_at)",
        "CREATE INDEX aggregates_endpoint ON aggregates (method, route, app_version)",
        "CREATE INDEX aggregates_report ON aggregates (report_id)",
        "CREATE INDEX metrics_report ON metrics (report_id)",
        "CREATE INDEX metrics_name_received_at ON metrics (name, received_at)",
    )


def app_name_columns(app_name_in_traits: str) -> tuple[str, ...]:
    """Version 2: the app's name next to its version, so one collector can serve several apps.

    Why a column in three tables, as ``app_version`` has: the dashboard
    filters reports (totals, activity, versions), aggregates (endpoints) and
    instances (platforms) by app, each without a join.

    Rows stored before this step are named from what their instance said: the
    ``traits`` kept in ``instances`` hold the ``app_name`` clients have sent
    all along (``app_name_in_traits`` is how a backend reads it from there).
    Left NULL, every endpoint of an app would have been listed twice after the
    upgrade, the older copy as an unknown app's and soon "unused". Rows of an
    instance that named no app stay NULL, and only they are rewritten. The
    indexes come last, so that each is built once, on the final rows.
    """
    named = "SELECT i.app_name FROM instances AS i WHERE i.id = {table}.instance_id"
    of_named = "instance_id IN (SELECT id FROM instances WHERE app_name IS NOT NULL)"
    return (
        "ALTER TABLE instances ADD COLUMN app_name TEXT",
        "ALTER TABLE reports ADD COLUMN app_name TEXT",
        "ALTER TABLE aggregates ADD COLUMN app_name TEXT",
        f"UPDATE instances SET app_name = {app_name_in_traits}"
        f" WHERE {app_name_in_traits} IS NOT NULL",
        f"UPDATE reports SET app_name = ({named.format(table='reports')}) WHERE {of_named}",
        f"UPDATE aggregates SET app_name = ({named.format(table='aggregates')}) WHERE {of_named}",
        # One app's rows since a time: the filtered totals, activity and versions.
        "CREATE INDEX reports_app_received_at ON reports (app_name, received_at)",
        # One app's endpoints: their calls since a time, and every endpoint it ever had.
        "CREATE INDEX aggregates_app_received_at ON aggregates (app_name, received_at)",
        "CREATE INDEX aggregates_app_endpoint ON aggregates (app_name, method, route, app_version)",
        # One app's platforms: its instances seen since a time.
        "CREATE INDEX instances_app_last_seen ON instances (app_name, last_seen)",
    )


def metrics_window_index() -> tuple[str, ...]:
    """Version 3: the app metrics of one kind received since a time, found by an index.

    Why: the dashboard reads them on every load, and the metric rows had no
    index that starts with the time (``metrics_name_received_at`` starts
    with the name, which such a read does not know). Without one, SQLite (the
    collector never gathers its statistics) and PostgreSQL both scanned
    every metric row ever kept, whatever the window. The kind leads, since
    counters and gauges are read apart; ``kind = ?`` and a time range is one
    range of this index.
    """
    return ("CREATE INDEX metrics_kind_received_at ON metrics (kind, received_at)",)


def _statement(sql: str, params: Sequence[Any], ex: Executor) -> tuple[str, Sequence[Any]]:
    """A streamed statement that needs nothing from its transaction first."""
    return sql, params


def _deleted(ex: Executor, sql: str, limit: int) -> int:
    """The rows one batch of a sweep (:data:`~.rollup.SWEEP_SQL`) deleted."""
    return len(ex.query(sql + " RETURNING 1", (limit,)))


class _Claim:
    """One replica's claim of one day's roll-up (see :mod:`.rollup`): taken,
    renewed at half its lease, and checked by every write made under it."""

    def __init__(self, storage: SQLStorage, through: float, end: float) -> None:
        self.storage = storage
        self.through = through
        self.end = end
        self.name = new_claim()
        self._renewed = 0.0

    def take(self) -> bool:
        """Take the claim (or take it back, if it is still this attempt's);
        False when another replica's is live or ``through`` moved."""
        greatest = self.storage.dialect.greatest
        now = time.time()
        params = (self.end, self.name, now + LEASE, self.through, now, self.name)
        taken = self.storage._run(
            lambda ex: bool(ex.query(CLAIM_SQL.format(greatest=greatest), params)), write=True
        )
        self._renewed = time.monotonic()
        return taken

    def _holds(self, ex: Executor) -> bool:
        state = ex.query(STATE_SQL.format(lock=self.storage.dialect.share_rows))
        return bool(state) and _float(state[0][0]) == self.through and state[0][3] == self.name

    def _fresh(self) -> bool:
        """True while the lease has over half of it left, or once renewed: only
        this attempt's claim is renewed, never one that lapsed and went to
        another replica (whose rows this one's would then be mixed with)."""
        if time.monotonic() - self._renewed < LEASE / 2:
            return True
        params = (time.time() + LEASE, self.through, self.name)
        renewed = self.storage._run(lambda ex: bool(ex.query(RENEW_SQL, params)), write=True)
        self._renewed = time.monotonic()
        return renewed

    def release(self) -> None:
        """Let the claim go, if it is still this attempt's."""
        self.storage._run(lambda ex: ex.execute(RELEASE_SQL, (self.name,)), write=True)

    def write(self, insert: str, values: list[tuple[Any, ...]]) -> bool:
        """Write one chunk of the day's rows, if the claim still holds."""

        def work(ex: Executor) -> bool:
            if not self._holds(ex):
                return False
            ex.executemany(insert, values)
            return True

        return self._fresh() and self.storage._run(work, write=True)

    def sweep(self, sql: str) -> int | None:
        """One batch of a sweep, if the claim still holds; the rows deleted."""

        def work(ex: Executor) -> int | None:
            return _deleted(ex, sql, CHUNK_ROWS) if self._holds(ex) else None

        return self.storage._run(work, write=True) if self._fresh() else None
