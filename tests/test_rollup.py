"""Daily roll-ups (``Storage.roll_up``): the dashboard and the CSV read the same
figures from the rolled-up days as from the raw rows, on SQLite and a real
PostgreSQL; each day is added once, also by two replicas at once; sums past
64 bits stay exact; the retention deletes the days it passed; the collector
rolls up at start.

How a test knows the daily rows are what is read: after the roll-up it
deletes the raw rows of the rolled-up days (the dashboard's windows start at
a midnight there, so none of their raw rows is needed), and every figure must
stay as it was.
"""

from __future__ import annotations

import math
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import test_storage
from collector_stack import running_collector, sqlite_database, store_old_report
from reqtelemetry.collector.storage import sql as sql_module
from reqtelemetry.collector.storage.rollup import (
    CHUNK_ROWS,
    DAY,
    INSERT_FIGURES_SQL,
    MAX_BIGINT,
    SETTLE,
    Window,
    day_of,
    split_sums,
)
from reqtelemetry.collector.storage.sql import SQLStorage
from reqtelemetry.collector.summary import build_summary
from test_retention import wait_until
from test_storage import LINUX, MAC, T, _huge_call, _summed, exact_sums, make_payload, stored

#: The storage suite's fixtures: each test below runs on SQLite and on PostgreSQL.
backend = test_storage.backend
storage = test_storage.storage

#: The first day of the fleet's reports, and "now": 8 days on, at 05:00:17 UTC.
FIRST_DAY = day_of(T)
NOW = FIRST_DAY + 8 * DAY + 5 * 3600 + 17
#: The deployments: (deployment, instances, app name, versions over time, platform).
FLEET = [
    ("d1d1d1d1-0000-4000-8000-000000000001", 2, "shop", ("1.0", "1.1"), LINUX),
    ("d2d2d2d2-0000-4000-8000-000000000002", 1, "shop", ("1.0", "1.0"), MAC),
    ("d3d3d3d3-0000-4000-8000-000000000003", 1, "blog", ("2.3", "2.4"), LINUX),
    ("d4d4d4d4-0000-4000-8000-000000000004", 1, None, ("0.1", "0.1"), MAC),
]
ROUTES = ["/items/{item_id}", "/cart", "/healthz", "/search"]
DEP = FLEET[0][0]


def fleet_reports(seed: int = 7) -> list[tuple[dict[str, Any], float]]:
    """The fleet's reports over the 8 days before :data:`NOW`, about every 3 hours
    an instance, each day's first and last close to midnight. ``/legacy`` is
    called on the first two days only, so it is an "unused" endpoint later."""
    rng = random.Random(seed)
    reports = []
    for deployment, instances, app, versions, platform in FLEET:
        for number in range(instances):
            instance = deployment[:-2] + f"{number + 10:02d}"
            sequence = 0
            at = FIRST_DAY + rng.uniform(60, 3 * 3600)
            while at < NOW - 600:
                version = versions[0] if at < FIRST_DAY + 4 * DAY else versions[1]
                routes = rng.sample(ROUTES, 3)
                if at < FIRST_DAY + 2 * DAY:
                    routes.append("/legacy")
                calls = [
                    (
                        rng.choice(["GET", "POST"]),
                        route,
                        rng.choice([200, 200, 200, 404, 500, 503]),
                        [rng.lognormvariate(-4, 1) for _ in range(rng.randint(1, 5))],
                        rng.randint(0, 500),
                        rng.randint(0, 5000),
                    )
                    for route in routes
                ]
                traits = {**platform, "app_version": version}
                if app is not None:
                    traits["app_name"] = app
                payload = make_payload(deployment, instance, traits, calls, sequence=sequence)
                reports.append((payload, at))
                sequence += 1
                # About every 3 hours, and now and then just either side of midnight.
                step = rng.uniform(2 * 3600, 4 * 3600)
                midnight = day_of(at) + DAY
                if at + step > midnight and rng.random() < 0.5:
                    step = midnight - at + rng.choice([-0.25, 0.0, 0.25])
                at += step
    return reports


@pytest.fixture
def fleet(storage: SQLStorage) -> SQLStorage:
    for payload, received_at in fleet_reports():
        storage.store(stored(payload, received_at))
    return storage


def _rounded(value: Any) -> Any:
    """``value`` with every float to 10 significant digits: latency sums are
    added in another order once rolled up, and may differ in their last bits."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    return value


#: The windows read: whole views (days back from NOW, so starting at 05:00:17)
#: and the CSV's and endpoint lists' own ``since``, at and off midnights.
VIEWS = [(days, app) for days in (1, 2, 3, 7, 30) for app in (None, "shop")]
SINCES = [0.0, FIRST_DAY + 2 * DAY, FIRST_DAY + 2 * DAY + 1, NOW - 3 * DAY - 1234.5]


def everything_read(storage: SQLStorage, now: float = NOW, sinces: list[float] = SINCES) -> Any:
    """What the dashboard and the CSV show of ``storage``: summaries of every
    view, and every endpoint list of every ``since``."""
    return _rounded(
        {
            "summaries": [
                build_summary(storage, days, now=now, app=app, refusals={}) for days, app in VIEWS
            ],
            "lists": [
                [
                    storage.totals(since),
                    storage.endpoints(since),
                    storage.endpoints(since, by_version=True),
                    storage.endpoints(since, app="shop", by_app=True),
                    list(storage.iter_endpoints(since)),
                    storage.endpoint_summary(since, app="blog"),
                ]
                for since in sinces
            ],
        }
    )


def through(storage: SQLStorage) -> float:
    return float(storage._run(lambda ex: ex.query("SELECT through FROM rollup_state"))[0][0])


def count(storage: SQLStorage, sql: str, params: tuple[Any, ...] = ()) -> int:
    return int(storage._run(lambda ex: ex.query(sql, params))[0][0] or 0)


def test_every_figure_reads_the_same_after_the_roll_up(fleet: SQLStorage) -> None:
    before = everything_read(fleet)
    rolled = fleet.roll_up(now=NOW)
    # Days 0 to 7 are over by more than an hour at 05:00; day 8 is today.
    assert (rolled.days, through(fleet)) == (8, FIRST_DAY + 8 * DAY)
    raw_rows = count(fleet, "SELECT COUNT(*) FROM aggregates WHERE received_at < ?", (NOW - DAY,))
    daily_rows = count(fleet, "SELECT COUNT(*) FROM daily_aggregates")
    assert rolled.rows == daily_rows and 0 < daily_rows < raw_rows
    assert everything_read(fleet) == before
    # Now with the raw rows of the rolled-up days made wrong: whole days back
    # from a midnight read none of them, so the daily rows alone must give it
    # all, as before.
    midnight = FIRST_DAY + 8 * DAY
    at_midnight = [0.0, FIRST_DAY + 2 * DAY, FIRST_DAY + 5 * DAY]
    before = everything_read(fleet, now=midnight, sinces=at_midnight)
    spoil = (
        "UPDATE aggregates SET count = count * 7, latency_sum = latency_sum * 7,"
        " request_bytes = request_bytes + 1, deployment_id = 'spoilt',"
        f" histogram = {fleet.dialect.json_param} WHERE received_at < ?"
    )
    fleet._run(lambda ex: ex.execute(spoil, ("[]", midnight)), write=True)
    spoilt = count(fleet, "SELECT COUNT(*) FROM aggregates WHERE deployment_id = 'spoilt'")
    assert spoilt > 0
    after = everything_read(fleet, now=midnight, sinces=at_midnight)
    assert after == before
    assert any(row["route"] == "/legacy" for row in after["summaries"][0]["endpoints"])


def test_a_day_is_rolled_up_only_once_it_has_settled(fleet: SQLStorage) -> None:
    last_midnight = FIRST_DAY + 8 * DAY
    assert fleet.roll_up(now=last_midnight + SETTLE - 1).days == 7
    assert through(fleet) == last_midnight - DAY
    before = everything_read(fleet)
    assert fleet.roll_up(now=last_midnight + SETTLE - 1).days == 0
    assert fleet.roll_up(now=last_midnight + SETTLE).days == 1
    assert through(fleet) == last_midnight
    assert everything_read(fleet) == before


def test_a_day_written_in_many_chunks_reads_the_same(
    fleet: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = everything_read(fleet)
    monkeypatch.setattr(sql_module, "CHUNK_ROWS", 7)
    assert fleet.roll_up(now=NOW).days == 8
    assert everything_read(fleet) == before


def test_what_an_attempt_cut_short_left_is_never_read_and_then_swept(
    fleet: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = everything_read(fleet)
    assert fleet.roll_up(now=FIRST_DAY + 3 * DAY + SETTLE).days == 3
    # A replica died after writing some chunks of days 3 and 5 (a gap day's too).
    left = [
        (day, "GET", "/cart", "shop", "1.0", FLEET[0][0], 10**6, 0, 1.0, 0, 0, day + 1)
        for day in (FIRST_DAY + 3 * DAY, FIRST_DAY + 5 * DAY)
    ]
    fleet._run(lambda ex: ex.executemany(INSERT_FIGURES_SQL, left), write=True)
    assert everything_read(fleet) == before
    assert fleet.roll_up(now=NOW).days == 5
    assert count(fleet, "SELECT COUNT(*) FROM daily_aggregates WHERE calls = 1000000") == 0
    assert everything_read(fleet) == before


def test_a_day_another_replica_has_claimed_is_left_to_it_until_its_claim_lapses(
    backend: test_storage.Backend, fleet: SQLStorage
) -> None:
    other = backend.open()
    theirs = sql_module._Claim(other, 0.0, FIRST_DAY + DAY)
    assert theirs.take()
    assert fleet.roll_up(now=NOW).days == 0
    # Their replica died: once its lease is over, the day is this one's.
    fleet._run(lambda ex: ex.execute("UPDATE rollup_state SET claim_until = 1"), write=True)
    assert fleet.roll_up(now=NOW).days == 8
    # What the dead replica would write now goes nowhere.
    assert not theirs.write(INSERT_FIGURES_SQL, [])
    assert theirs.sweep("DELETE FROM daily_bins WHERE 1 = 0 LIMIT ?") is None


def test_a_report_from_a_clock_behind_stored_during_a_roll_up_is_read(
    fleet: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored once the day is claimed, with a time in that day by its replica's
    clock: it goes after the day, not into a day read from its daily rows."""
    write = sql_module._Claim.write
    stored_late: list[float] = []

    def write_then_store(claim: Any, insert: str, values: list[Any]) -> bool:
        if not stored_late:
            stored_late.append(claim.end)
            late = make_payload(
                FLEET[2][0], FLEET[2][0][:-2] + "10", {**LINUX, "app_name": "blog"},
                [("PUT", "/late", 200, [0.002], 0, 0)],
            )  # fmt: skip
            fleet.store(stored(late, claim.end - 3 * 3600))
        return write(claim, insert, values)

    monkeypatch.setattr(sql_module._Claim, "write", write_then_store)
    assert fleet.roll_up(now=NOW).days == 8
    (row,) = [r for r in fleet.endpoints(0.0) if r["method"] == "PUT"]
    assert row["calls"] == 1
    assert everything_read(fleet) == raw_only(fleet, monkeypatch)


def test_a_stop_ends_the_roll_up_at_once_and_lets_its_claim_go(
    fleet: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = threading.Event()
    stop.set()
    assert fleet.roll_up(now=NOW, stop=stop).days == 0
    assert through(fleet) == 0.0
    before = everything_read(fleet)
    # Stopped after the first chunk of a day (the collector shutting down):
    # that day is not finished, and the next roll-up need not wait for its lease.
    stop.clear()
    monkeypatch.setattr(sql_module, "CHUNK_ROWS", 7)
    write = sql_module._Claim.write

    def write_then_stop(claim: Any, insert: str, values: list[Any]) -> bool:
        stop.set()
        return write(claim, insert, values)

    monkeypatch.setattr(sql_module._Claim, "write", write_then_stop)
    assert fleet.roll_up(now=NOW, stop=stop).days == 0
    assert count(fleet, "SELECT COUNT(*) FROM daily_aggregates") > 0  # never read
    assert claim_of(fleet) is None
    monkeypatch.setattr(sql_module._Claim, "write", write)
    assert fleet.roll_up(now=NOW).days == 8
    assert everything_read(fleet) == before


def claim_of(storage: SQLStorage) -> Any:
    return storage._run(lambda ex: ex.query("SELECT claim FROM rollup_state"))[0][0]


def test_a_claim_that_lapsed_to_another_replica_is_not_renewed(
    backend: test_storage.Backend, fleet: SQLStorage
) -> None:
    stalled = sql_module._Claim(fleet, 0.0, FIRST_DAY + DAY)
    assert stalled.take()
    fleet._run(lambda ex: ex.execute("UPDATE rollup_state SET claim_until = 1"), write=True)
    taker = sql_module._Claim(backend.open(), 0.0, FIRST_DAY + DAY)
    assert taker.take()
    # The taker wrote some of the day and died too; its lease lapsed as well.
    fleet._run(lambda ex: ex.execute("UPDATE rollup_state SET claim_until = 1"), write=True)
    # The stalled replica wakes past half its lease: its renewal must fail, or
    # it would finish the day with the taker's rows and its own mixed.
    stalled._renewed = -sql_module.LEASE
    assert not stalled.write(INSERT_FIGURES_SQL, [(FIRST_DAY, "GET", "/x", None, None, "d")])
    assert claim_of(fleet) == taker.name


def test_a_retention_that_moves_through_lets_the_claim_go(fleet: SQLStorage) -> None:
    assert sql_module._Claim(fleet, 0.0, FIRST_DAY + DAY).take()
    fleet.prune(FIRST_DAY + DAY + 60)
    assert claim_of(fleet) is None and through(fleet) == FIRST_DAY + 2 * DAY
    assert fleet.roll_up(now=NOW).days == 6


def test_a_report_stored_in_an_empty_day_before_the_claim_is_rolled_into_its_own_day(
    storage: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock a day behind stores a report in a day that had none, after the
    roll-up chose the next day with reports and before it claimed it."""
    calls = [("GET", "/a", 200, [0.01], 0, 10)]
    for day in (0, 3):
        payload = make_payload(DEP, DEP[:-2] + "10", LINUX, calls, sequence=day)
        storage.store(stored(payload, FIRST_DAY + day * DAY + 3600))
    assert storage.roll_up(now=FIRST_DAY + DAY + SETTLE).days == 1
    take = sql_module._Claim.take

    def store_then_take(claim: Any) -> bool:
        late = make_payload(DEP, DEP[:-2] + "10", LINUX, [("GET", "/late", 200, [0.01], 0, 1)])
        storage.store(stored(late, FIRST_DAY + DAY + 5 * 3600))
        return take(claim)

    monkeypatch.setattr(sql_module._Claim, "take", store_then_take)
    assert storage.roll_up(now=NOW).days == 1
    monkeypatch.setattr(sql_module._Claim, "take", take)
    days = "SELECT DISTINCT day FROM daily_aggregates WHERE route = ?"
    rolled = storage._run(lambda ex: ex.query(days, ("/late",)))
    assert [float(day) for (day,) in rolled] == [FIRST_DAY + DAY]
    for since in (FIRST_DAY + DAY, FIRST_DAY + 2 * DAY, FIRST_DAY + 2 * DAY + 1):
        read = {row["route"]: row["calls"] for row in storage.endpoints(since)}
        raw = {row["route"]: row["calls"] for row in raw_endpoints(storage, since, monkeypatch)}
        assert read == raw


def raw_endpoints(storage: SQLStorage, since: float, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(type(storage), "_window", lambda self, ex, since: Window.of(since, 0.0))
        return storage.endpoints(since)


def test_a_day_another_replica_rolled_up_first_is_not_added_again(
    backend: test_storage.Backend, fleet: SQLStorage
) -> None:
    other = backend.open()
    found = fleet._read(lambda ex: fleet._window(ex, 0.0).through)
    assert other.roll_up(now=NOW).days == 8
    daily = count(fleet, "SELECT COUNT(*) FROM daily_aggregates")
    # This replica found the first day before the other rolled it up: its
    # claim finds ``through`` moved, and it writes nothing.
    late = sql_module._Claim(fleet, found, FIRST_DAY + DAY)
    assert not late.take()
    assert not late.write(INSERT_FIGURES_SQL, [(FIRST_DAY, "GET", "/x", None, None, "d")])
    assert count(fleet, "SELECT COUNT(*) FROM daily_aggregates") == daily
    assert fleet.roll_up(now=NOW).days == 0


def test_two_replicas_rolling_up_at_once_add_each_day_once(
    backend: test_storage.Backend, fleet: SQLStorage
) -> None:
    before = everything_read(fleet)
    replicas = [backend.open() for _ in range(3)]
    results: list[int] = []
    go = threading.Barrier(len(replicas))

    def roll(replica: SQLStorage) -> None:
        go.wait()
        results.append(replica.roll_up(now=NOW).days)

    threads = [threading.Thread(target=roll, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(results) == 8 and through(fleet) == FIRST_DAY + 8 * DAY
    calls = "SELECT {}({}) FROM {} WHERE {} < ?"
    rolled = count(fleet, calls.format("SUM", "calls", "daily_aggregates", "day"), (NOW,))
    raw = count(fleet, calls.format("SUM", "count", "aggregates", "received_at"), (through(fleet),))
    assert rolled == raw
    assert everything_read(fleet) == before


@pytest.mark.parametrize("chunk", [CHUNK_ROWS, 3])
def test_sums_past_64_bits_stay_exact_once_rolled_up(
    storage: SQLStorage, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also where the sum leaves 64 bits after the first chunk of the day's rows
    was written (SQLite's SUM then fails part-way, and the day starts again)."""
    monkeypatch.setattr(sql_module, "CHUNK_ROWS", chunk)
    counts = [2**63 - 1] * 3 + [5]
    for number in counts:
        storage.store(stored(_huge_call(number, status=500), received_at=T))
    storage.store(stored(_huge_call(1, route="/small"), received_at=T))
    for route in ("/a", "/b", "/c", "/d", "/e", "/f", "/g"):  # grouped before /x
        storage.store(stored(_huge_call(1, route=route), received_at=T))
    total = sum(counts)
    expected = exact_sums(total, requests=total + 8)
    assert _summed(storage) == expected
    assert storage.roll_up(now=T + 2 * DAY).days == 1
    # Read from the daily rows alone: 4 of them hold /x's sums, 64 bits each.
    storage._run(lambda ex: ex.execute("DELETE FROM aggregates"), write=True)
    assert _summed(storage) == expected
    assert count(storage, "SELECT COUNT(*) FROM daily_aggregates WHERE route = '/x'") == 4


def raw_only(storage: SQLStorage, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What :func:`everything_read` gives from the raw rows alone, as before roll-ups."""
    with monkeypatch.context() as patch:
        patch.setattr(type(storage), "_window", lambda self, ex, since: Window.of(since, 0.0))
        return everything_read(storage)


def test_the_retention_stops_reading_the_rolled_up_days_it_cut_into(
    fleet: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet.roll_up(now=NOW)
    days = "SELECT COUNT(DISTINCT day) FROM {}"
    assert count(fleet, days.format("daily_aggregates")) == 8
    # Past the retention: the first two days and the third's first hour. The
    # third day's daily rows hold what was deleted: its kept raw rows are read.
    fleet.prune(FIRST_DAY + 2 * DAY + 3600)
    for table in ("daily_aggregates", "daily_bins"):
        assert count(fleet, f"SELECT MIN(day) FROM {table}") == FIRST_DAY + 3 * DAY
        assert count(fleet, days.format(table)) == 5
    assert everything_read(fleet) == raw_only(fleet, monkeypatch)
    # A cutoff at a midnight leaves that day whole.
    fleet.prune(FIRST_DAY + 4 * DAY)
    assert count(fleet, "SELECT MIN(day) FROM daily_aggregates") == FIRST_DAY + 4 * DAY
    assert everything_read(fleet) == raw_only(fleet, monkeypatch)


def test_reads_stay_right_while_a_prune_deletes_and_after_it_failed(
    fleet: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daily rows the retention cuts into stop being read before the first
    raw row goes: a prune that fails part-way (the database went away) leaves
    every read what the raw rows still kept give."""
    fleet.roll_up(now=NOW)
    monkeypatch.setattr(sql_module, "PRUNE_BATCH", 20)
    run = type(fleet)._run
    writes = []

    def failing_on_the_third_write(self: Any, work: Any, write: bool = False, **kw: Any) -> Any:
        if write:
            writes.append(work)
            if len(writes) == 3:
                raise ConnectionError("the database went away")
        return run(self, work, write, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(type(fleet), "_run", failing_on_the_third_write)
        with pytest.raises(ConnectionError):
            fleet.prune(FIRST_DAY + 3 * DAY + 3600)
    deleted = count(fleet, "SELECT COUNT(*) FROM reports WHERE received_at < ?", (FIRST_DAY,))
    assert deleted == 0 and count(fleet, "SELECT COUNT(*) FROM reports") < len(fleet_reports())
    assert everything_read(fleet) == raw_only(fleet, monkeypatch)


def test_a_retention_past_the_rolled_up_days_moves_the_roll_up_on(
    fleet: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fleet.roll_up(now=FIRST_DAY + 2 * DAY + SETTLE).days == 2
    fleet.prune(FIRST_DAY + 4 * DAY + 60)
    assert through(fleet) == FIRST_DAY + 5 * DAY
    assert count(fleet, "SELECT COUNT(*) FROM daily_aggregates") == 0
    assert fleet.roll_up(now=NOW).days == 3
    assert everything_read(fleet) == raw_only(fleet, monkeypatch)


def test_a_report_from_a_clock_behind_the_roll_up_is_stored_after_it(fleet: SQLStorage) -> None:
    fleet.roll_up(now=NOW)
    late = make_payload(
        FLEET[0][0], FLEET[0][0][:-2] + "10", {**LINUX, "app_name": "shop"},
        [("DELETE", "/cart", 204, [0.002], 0, 0)],
    )  # fmt: skip
    # Received, by a replica's clock, two days before the rolled-up days end.
    fleet.store(stored(late, through(fleet) - 2 * DAY))
    (row,) = [r for r in fleet.endpoints(0.0) if r["method"] == "DELETE"]
    assert row["calls"] == 1
    received = "SELECT received_at FROM aggregates WHERE method = 'DELETE'"
    assert count(fleet, received) == through(fleet)
    assert fleet.totals(0.0)["requests"] == count(fleet, "SELECT SUM(count) FROM aggregates")


def test_rows_stored_after_the_roll_up_are_read_raw(fleet: SQLStorage) -> None:
    fleet.roll_up(now=NOW)
    late = make_payload(
        FLEET[0][0], FLEET[0][0][:-2] + "10", {**LINUX, "app_name": "shop"},
        [("DELETE", "/cart", 204, [0.002], 0, 0)],
    )  # fmt: skip
    fleet.store(stored(late, NOW - 60))
    (row,) = [r for r in fleet.endpoints(NOW - DAY) if r["method"] == "DELETE"]
    assert row["calls"] == 1


@pytest.mark.parametrize(
    ("since", "through", "window"),
    [
        # Nothing rolled up: everything raw from ``since``.
        (100.0, 0.0, Window(100.0, 100.0, 100.0, 0.0)),
        # After the rolled-up days: raw.
        (5 * DAY + 1, 5 * DAY, Window(5 * DAY + 1, 5 * DAY + 1, 5 * DAY + 1, 5 * DAY)),
        # Off midnight: raw to the next midnight, rolled-up days, raw again.
        (DAY + 1, 5 * DAY, Window(DAY + 1, 2 * DAY, 5 * DAY, 5 * DAY)),
        # At midnight: no raw part before the rolled-up days.
        (2 * DAY, 5 * DAY, Window(2 * DAY, 2 * DAY, 5 * DAY, 5 * DAY)),
        # In the last rolled-up day: raw from ``since`` on.
        (5 * DAY - 1, 5 * DAY, Window(5 * DAY - 1, 5 * DAY, 5 * DAY, 5 * DAY)),
    ],
)
def test_a_window_reads_each_stretch_of_time_once(
    since: float, through: float, window: Window
) -> None:
    assert Window.of(since, through) == window


@pytest.mark.parametrize(
    ("sums", "rows"),
    [
        ([3, 0, 7], [[3, 0, 7]]),
        ([MAX_BIGINT, 1], [[MAX_BIGINT, 1]]),
        ([MAX_BIGINT + 2, 5], [[MAX_BIGINT, 5], [2, 0]]),
        ([3 * MAX_BIGINT, 0], [[MAX_BIGINT, 0]] * 3),
    ],
)
def test_sums_too_large_for_a_row_are_split_over_rows_that_add_up(
    sums: list[int], rows: list[list[int]]
) -> None:
    split = split_sums(sums)
    assert split == rows
    assert [sum(column) for column in zip(*split, strict=True)] == sums
    assert max(max(row) for row in split) <= MAX_BIGINT
    assert math.isclose(sum(sum(row) for row in split), sum(sums))


def test_the_collector_rolls_the_past_days_up_at_start(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path)
    for days_ago, route in ((5, "/five"), (3, "/three"), (0.01, "/today")):
        calls = [("GET", route, 200, 0.01)]
        store_old_report(database.url, DEP, "1.0", calls, days_ago=days_ago)
    with running_collector(database.url) as collector:
        rolled = "SELECT DISTINCT route FROM daily_aggregates ORDER BY route"
        assert wait_until(lambda: database.query(rolled) == [("/five",), ("/three",)])
        summary = collector.summary(days=7)
    assert {row["route"]: row["calls"] for row in summary["endpoints"]} == {
        "/five": 1,
        "/three": 1,
        "/today": 1,
    }
    ((end,),) = database.query("SELECT through FROM rollup_state")
    assert end == day_of(end) and end <= day_of(time.time() - SETTLE)
