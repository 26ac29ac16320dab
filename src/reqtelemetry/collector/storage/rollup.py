"""Daily roll-ups: what keeps the dashboard's cost flat as reports pile up.

Why: every report stores one aggregate row per route and status it carries,
and the dashboard's endpoint lists grouped every row of their window, so a
30-day view of 20 deployments' hourly reports (6.6 million rows) took half a
minute, and "unused endpoints" read every row ever kept. Once a UTC day is
over, its aggregates never change (a report is stored with the time it
arrived), so they are added up once, per day and endpoint, app version and
deployment (``daily_aggregates``), and their histograms per day and endpoint
and app version (``daily_bins``). A day of hourly reports from a deployment
becomes one row per endpoint and version instead of one per report, instance
and status.

What stays exact: a window is read as the raw rows of its first, partial
day, the rolled-up days after it, and the raw rows of the days not rolled up
yet (``Window``), so every figure is what the raw rows alone would give
(latency sums up to the order floats are added in). The deployments per
endpoint are still counted distinctly, since the rows keep their deployment.
What is lost: nothing the dashboard or the CSV shows. The raw rows stay until
the retention deletes them; the roll-up is an index of them, not a
replacement.

``rollup_state`` says what the daily rows hold. ``through``: every aggregate
received before it is in them. ``kept_from``: the retention's cutoff rounded
up to a midnight; the daily rows before it are never read, since the day the
cutoff fell in lost some of its raw rows, and the raw rows still kept before
it are read instead (see :class:`Window`), so the retention deletes old
daily rows later, in batches.

How a day is rolled up, by one replica at a time (its ``claim``, which
lapses after :data:`LEASE` seconds if that replica dies):

1. **Claim** the day: ``claimed`` becomes its end. A report is never stored
   with a time before ``claimed`` (a replica whose clock is behind stores it
   at ``claimed``), so from the claim's commit on, no row enters the day; on
   PostgreSQL the claim waits for the stores under way (each reads the state
   ``FOR SHARE``), so they are all in the read that follows.
2. **Sweep** what an earlier attempt left at or after ``through`` (rows there
   are never read), in batches.
3. **Read** the day's groups as the database streams them, and write them in
   chunks of :data:`CHUNK_ROWS` rows, a transaction each: a large day must
   neither be held in memory nor hold SQLite's one write lock for long.
4. **Move** ``through`` to the day's end, and end the claim.

Every write of 2 to 4 first checks the claim is still this attempt's (on
PostgreSQL holding the state ``FOR SHARE`` until its commit, so that no
other claim can come between): an attempt that lost its claim stops, and
writes nothing more.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DAY = 86400.0
#: How long after a UTC day ends it is rolled up. A report is stored with the
#: time it arrived, within the collector's commit budget (seconds), and
#: replicas' clocks may differ a little: an hour covers both with room to
#: spare. A row stored with an older time than ``through`` would be missed
#: by the reads, so the margin errs long.
SETTLE = 3600.0
#: The largest value of a 64-bit integer column. A day's sum can pass it (each
#: count of a hostile report may be ``2**63 - 1``); it is then written as
#: several rows, which the reads add up as they add up raw rows.
MAX_BIGINT = 2**63 - 1


def rollup_tables(*, float_type: str, big_int: str) -> tuple[str, ...]:
    """Version 4: the daily tables and the one-row state that says how far they go.

    Why no key on the daily rows: a sum too large for one row is split over
    several (:func:`split_sums`), and the reads add rows up in any case.
    Why the day as seconds (a UTC midnight), like every other time here:
    the reads compare it with the same ``since`` as ``received_at``.
    """
    endpoint = "method TEXT NOT NULL, route TEXT NOT NULL, app_name TEXT, app_version TEXT"
    return (
        "CREATE TABLE rollup_state ("
        " id INTEGER PRIMARY KEY CHECK (id = 1),"
        f" through {float_type} NOT NULL,"
        f" kept_from {float_type} NOT NULL,"
        f" claimed {float_type} NOT NULL,"
        f" claim {big_int},"
        f" claim_until {float_type} NOT NULL)",
        "INSERT INTO rollup_state (id, through, kept_from, claimed, claim, claim_until)"
        " VALUES (1, 0, 0, 0, NULL, 0)",
        "CREATE TABLE daily_aggregates ("
        f" day {float_type} NOT NULL, {endpoint},"
        " deployment_id TEXT NOT NULL,"
        f" calls {big_int} NOT NULL,"
        f" errors {big_int} NOT NULL,"
        f" latency_sum {float_type} NOT NULL,"
        f" request_bytes {big_int} NOT NULL,"
        f" response_bytes {big_int} NOT NULL,"
        f" last_seen {float_type} NOT NULL)",
        "CREATE TABLE daily_bins ("
        f" day {float_type} NOT NULL, {endpoint},"
        " bin INTEGER NOT NULL,"
        f" n {big_int} NOT NULL)",
        # Read as the raw rows are: by time, of every app or of one.
        "CREATE INDEX daily_aggregates_day ON daily_aggregates (day)",
        "CREATE INDEX daily_aggregates_app_day ON daily_aggregates (app_name, day)",
        "CREATE INDEX daily_bins_day ON daily_bins (day)",
        "CREATE INDEX daily_bins_app_day ON daily_bins (app_name, day)",
    )


def day_of(seconds: float) -> float:
    """The UTC midnight at or before ``seconds``."""
    return math.floor(seconds / DAY) * DAY


def settled_before(now: float) -> float:
    """The end of the last day old enough to roll up at ``now``."""
    return day_of(now - SETTLE)


def next_day(seconds: float) -> float:
    """The UTC midnight at or after ``seconds``."""
    return math.ceil(seconds / DAY) * DAY


def new_claim() -> int:
    """What names one roll-up's claim, unlike any other's (63 random bits)."""
    return secrets.randbits(63)


#: The bounds of each branch of a ``UNION ALL`` read, in order.
Bounds = tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class Window:
    """Where the rows received since ``since`` are read from.

    The raw rows received in ``[since, rolled_from)``, the daily rows of the
    days in ``[rolled_from, raw_from)``, and the raw rows received from
    ``raw_from`` on. Without a whole rolled-up day in the window, both bounds
    are where the raw rows' part begins, and only raw rows are read. The
    daily rows before ``kept_from`` are never read (the retention cut into
    them); the raw rows still kept there are.

    ``through`` and ``kept_from`` (from ``rollup_state``) may be older than
    the database they are used on, never newer: a day rolled up since is then
    still read raw (its raw rows are kept), so a stale state costs time, not
    correctness.
    """

    since: float
    rolled_from: float
    raw_from: float
    through: float
    kept_from: float = 0.0

    @classmethod
    def of(cls, since: float, through: float, kept_from: float = 0.0) -> Window:
        since, through, kept_from = float(since), float(through), float(kept_from)
        if since >= through:
            return cls(since, since, since, through, kept_from)
        rolled_from = min(max(next_day(since), kept_from), through)
        return cls(since, rolled_from, through, through, kept_from)

    @property
    def bounds(self) -> Bounds:
        """Each branch's bounds in :func:`window_rows`: the first raw part's,
        the rolled-up days', the second raw part's start."""
        return ((self.since, self.rolled_from), (self.rolled_from, self.raw_from), (self.raw_from,))

    @property
    def before_bounds(self) -> Bounds:
        """Each branch's bounds in :func:`window_rows` over what came before
        ``since`` (``before=True``): the raw rows before the daily rows that
        are read, those not rolled up yet, and the rolled-up days that began
        before ``since``."""
        return (
            (min(self.kept_from, self.since),),
            (self.through, self.since),
            (self.kept_from, min(self.since, self.through)),
        )

    @property
    def every_bounds(self) -> Bounds:
        """Each branch's bounds in :func:`every_row`: the raw rows before the
        daily rows read, those not rolled up yet, and the daily rows read."""
        return ((self.kept_from,), (self.through,), (self.kept_from, self.through))


#: The columns :func:`window_rows` reads, as a raw aggregate gives them, and
#: as a daily row does.
_RAW_FIGURES = (
    "a.method, a.route, a.app_name, a.app_version, a.deployment_id, a.count AS calls,"
    " CASE WHEN a.status >= 500 THEN a.count ELSE 0 END AS errors, a.latency_sum,"
    " a.request_bytes, a.response_bytes, a.received_at"
)
_DAILY_FIGURES = (
    "a.method, a.route, a.app_name, a.app_version, a.deployment_id, a.calls, a.errors,"
    " a.latency_sum, a.request_bytes, a.response_bytes, a.last_seen AS received_at"
)


def window_rows(
    raw: str,
    *,
    bins: tuple[str, str, str] | None = None,
    only: str = "",
    before: bool = False,
) -> str:
    """A ``FROM`` item (``AS a``) of the aggregates of a :class:`Window`, raw
    and rolled up: ``method, route, app_name, app_version, deployment_id,
    calls, errors, latency_sum, request_bytes, response_bytes, received_at``
    (a daily row's ``last_seen``), or with ``bins`` (the
    dialect's ``expand_bins``, ``bin_index`` and ``bin_count``) the endpoint's
    columns and ``bin``, ``n`` per histogram bucket.

    ``raw`` is how the raw table is named and read (``aggregates AS a`` and an
    index hint). ``only`` (``AND ...`` over ``a.``) is put in every branch,
    whose parameters then follow each branch's own: :func:`branch_params` of
    :attr:`Window.bounds`, or with ``before`` (what came before the window)
    of :attr:`Window.before_bounds`.
    """
    if bins is not None:
        expand, index, count = bins
        raw_columns = f"a.method, a.route, a.app_name, a.app_version, {index} AS bin, {count} AS n"
        daily_columns = "a.method, a.route, a.app_name, a.app_version, a.bin, a.n"
        raw, daily = raw + expand, "daily_bins AS a"
    else:
        raw_columns, daily_columns, daily = _RAW_FIGURES, _DAILY_FIGURES, "daily_aggregates AS a"
    if before:
        branches = [
            f"SELECT {raw_columns} FROM {raw} WHERE a.received_at < ?{only}",
            f"SELECT {raw_columns} FROM {raw} WHERE a.received_at >= ? AND a.received_at < ?{only}",
            f"SELECT {daily_columns} FROM {daily} WHERE a.day >= ? AND a.day < ?{only}",
        ]
    else:
        branches = [
            f"SELECT {raw_columns} FROM {raw} WHERE a.received_at >= ? AND a.received_at < ?{only}",
            f"SELECT {daily_columns} FROM {daily} WHERE a.day >= ? AND a.day < ?{only}",
            f"SELECT {raw_columns} FROM {raw} WHERE a.received_at >= ?{only}",
        ]
    return "(" + " UNION ALL ".join(branches) + ") AS a"


def branch_params(bounds: Bounds, only_params: Sequence[Any]) -> list[Any]:
    """The parameters of a read of :func:`window_rows` or :func:`every_row`:
    each branch's bounds, then ``only``'s."""
    return [value for branch in bounds for value in (*branch, *only_params)]


def every_row(raw: str, only: str = "") -> str:
    """A ``FROM`` item (``AS a``) of every aggregate kept, raw and rolled up,
    as ``method, route, app_name, received_at``: what "unused endpoints" read.
    Parameters: :func:`branch_params` of :attr:`Window.every_bounds`."""
    columns = "a.method, a.route, a.app_name"
    return (
        f"(SELECT {columns}, a.received_at FROM {raw} WHERE a.received_at < ?{only}"
        f" UNION ALL SELECT {columns}, a.received_at FROM {raw} WHERE a.received_at >= ?{only}"
        f" UNION ALL SELECT {columns}, a.last_seen FROM daily_aggregates AS a"
        f" WHERE a.day >= ? AND a.day < ?{only}) AS a"
    )


# -- one day's roll-up ------------------------------------------------------------------

#: One day's figures per endpoint, app version and deployment, from the raw rows.
#: Each row's day is read too (``{day}``: whole days since the epoch, its
#: parameter :data:`DAY`): the claimed stretch is one day's, but a report from
#: a clock far behind may have been stored in an empty day before it between
#: the look for the next day and the claim.
DAY_FIGURES_SQL = (
    "SELECT {day} AS whole_days, method, route, app_name, app_version, deployment_id,"
    " {sum}(count), {sum}(CASE WHEN status >= 500 THEN count ELSE 0 END),"
    " {float_sum}(latency_sum), {sum}(request_bytes), {sum}(response_bytes), MAX(received_at)"
    " FROM aggregates{by_time} WHERE received_at >= ? AND received_at < ?"
    " GROUP BY whole_days, method, route, app_name, app_version, deployment_id"
)
#: One day's histogram buckets per endpoint and app version.
DAY_BINS_SQL = (
    "SELECT {day} AS whole_days, a.method, a.route, a.app_name, a.app_version, {index},"
    " {sum}({count})"
    " FROM aggregates AS a{by_time}{expand} WHERE a.received_at >= ? AND a.received_at < ?"
    " GROUP BY whole_days, a.method, a.route, a.app_name, a.app_version, {index}"
)
INSERT_FIGURES_SQL = (
    "INSERT INTO daily_aggregates (day, method, route, app_name, app_version, deployment_id,"
    " calls, errors, latency_sum, request_bytes, response_bytes, last_seen)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_BINS_SQL = (
    "INSERT INTO daily_bins (day, method, route, app_name, app_version, bin, n)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
#: Where the daily rows stand and who holds the claim, read by a transaction
#: that writes: with ``{lock}`` (PostgreSQL's ``FOR SHARE``), held until its
#: commit, so that neither moves meanwhile.
STATE_SQL = "SELECT through, kept_from, claimed, claim FROM rollup_state WHERE id = 1{lock}"
#: Takes the claim of the day ending at the first ``?`` for the attempt named
#: by the second, until the third, if ``through`` is still the fourth and no
#: live claim (the fifth: now) is another's.
CLAIM_SQL = (
    "UPDATE rollup_state SET claimed = {greatest}(claimed, ?), claim = ?, claim_until = ?"
    " WHERE id = 1 AND through = ? AND (claim IS NULL OR claim_until < ? OR claim = ?)"
    " RETURNING 1"
)
#: Keeps this attempt's claim (the second ``?``) on, until the first.
RENEW_SQL = (
    "UPDATE rollup_state SET claim_until = ? WHERE id = 1 AND through = ? AND claim = ? RETURNING 1"
)
#: Lets this attempt's claim go (cut short: stopped, lost or failed).
RELEASE_SQL = "UPDATE rollup_state SET claim = NULL, claim_until = 0 WHERE id = 1 AND claim = ?"
#: Moves ``through`` to the end of the claimed day, and ends the claim.
FINISH_SQL = (
    "UPDATE rollup_state SET through = ?, claim = NULL, claim_until = 0"
    " WHERE id = 1 AND through = ? AND claim = ? RETURNING 1"
)
#: A batch of rows that are never read: at or after ``through`` (what an
#: attempt left), or before ``kept_from`` (what the retention passed).
SWEEP_SQL = (
    "DELETE FROM {table} WHERE {row_id} IN (SELECT {row_id} FROM {table} WHERE {where} LIMIT ?)"
)
#: The retention's cutoff: daily rows before it are not read, nor ``through``
#: (nor ``claimed``) behind it.
#: A claim whose ``through`` it moves is over (its writes would fail), so it
#: is let go: its replica may have died with it.
KEEP_FROM_SQL = (
    "UPDATE rollup_state SET kept_from = {greatest}(kept_from, ?),"
    " through = {greatest}(through, ?), claimed = {greatest}(claimed, ?),"
    " claim = CASE WHEN through < ? THEN NULL ELSE claim END,"
    " claim_until = CASE WHEN through < ? THEN 0 ELSE claim_until END WHERE id = 1"
)
#: The tables of daily rows.
DAILY_TABLES = ("daily_aggregates", "daily_bins")
#: Rows written, or swept, at a time by a roll-up, each chunk in a
#: transaction of its own.
CHUNK_ROWS = 5000
#: Seconds a claim holds without news from its replica (it is renewed at half
#: of it): long enough for any day's roll-up to go on, short enough that a
#: replica that died is taken over within the hour's upkeep after next.
LEASE = 1800.0


def split_sums(sums: Sequence[int]) -> list[list[int]]:
    """``sums`` as rows of values that each fit a 64-bit column, adding up to them.

    Almost always one row, ``sums`` itself. A sum past :data:`MAX_BIGINT`
    takes that much in each row until its rest fits; the other sums are
    spread alike, and a row whose sums are all spent holds zeros for them.
    """
    rest = [int(value) for value in sums]
    rows = []
    while True:
        row = [min(value, MAX_BIGINT) for value in rest]
        rows.append(row)
        rest = [value - part for value, part in zip(rest, row, strict=True)]
        if not any(rest):
            return rows


def figure_rows(grouped: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """``daily_aggregates`` rows from :data:`DAY_FIGURES_SQL`'s rows.

    A group whose sums leave 64 bits becomes several rows; the latency sum and
    the last time go in the first, zero and the same time in the others.
    """
    rows = []
    for whole_days, *endpoint_of, calls, errors, latency, sent, got, seen in grouped:
        method, route, app, version, deployment = endpoint_of
        day = float(whole_days) * DAY
        parts = split_sums((calls, errors, sent, got))
        for place, (n_calls, n_errors, n_in, n_out) in enumerate(parts):
            latency_part = float(latency or 0.0) if place == 0 else 0.0
            endpoint = (day, method, route, app, version, deployment)
            rows.append((*endpoint, n_calls, n_errors, latency_part, n_in, n_out, float(seen)))
    return rows


def bin_rows(grouped: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """``daily_bins`` rows from :data:`DAY_BINS_SQL`'s rows (a count past 64
    bits over several rows)."""
    rows = []
    for whole_days, method, route, app, version, index, count in grouped:
        day = float(whole_days) * DAY
        for (part,) in split_sums((count,)):
            rows.append((day, method, route, app, version, int(index), part))
    return rows
