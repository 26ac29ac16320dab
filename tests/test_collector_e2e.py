"""The collector end to end: real apps, real clients, a real collector, SQLite and PostgreSQL.

Each test serves ``create_app`` with uvicorn on 127.0.0.1 over its own
database (a SQLite file in ``tmp_path``, or a scratch schema on the session's
PostgreSQL server) and points real :class:`reqtelemetry.Telemetry` clients at
it, behind a Starlette app (``ASGIMiddleware``, driven by Starlette's
``TestClient``) and a Flask app (``WSGIMiddleware``, driven by httpx's
``WSGITransport``). The traffic is known request by request, and carries
identifying canaries in paths, queries, headers, cookies and bodies. What must
hold:

* ``/api/summary`` (the dashboard's data) and ``/export.csv`` answer exactly
  the traffic that was sent: counts per (method, route, status), deployments,
  instances, versions, unused endpoints;
* no canary reaches the database: not the SQLite file nor its ``-wal`` and
  ``-shm`` files, read as raw bytes; not any row of any PostgreSQL table;
* the real difficulty (20 bits) works end to end;
* collector replicas sharing a secret and a PostgreSQL database accept each
  other's tokens and refuse a stamp that any of them stored before.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from collector_stack import (
    BOOM,
    FLASK_ITEM,
    GZIP_JSON,
    ITEM,
    ITEMS,
    LOW_BITS,
    MEMBER,
    SECRET,
    UNMATCHED,
    Canaries,
    Database,
    Key,
    Traffic,
    database_for,
    deployment_id,
    flask_shop,
    isolate_client_environment,
    protocol_payload,
    running_collector,
    sqlite_database,
    starlette_shop,
    start_client,
    store_old_report,
)
from db_locks import another_writer
from receiver import ServerThread
from reqtelemetry import ASGIMiddleware, Telemetry, WSGIMiddleware, hashcash
from reqtelemetry.collector.export import COLUMNS
from reqtelemetry.collector.settings import DEFAULT_BITS
from reqtelemetry.transport import WAIT_HEADER, Outcome

pytestmark = pytest.mark.e2e

#: The endpoint last called 40 days ago: known, but unused in a 30-day window.
UNUSED_KEY: Key = ("DELETE", ITEM, 204)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with database_for(request, request.param, tmp_path) as database:
        yield database


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Telemetry]]:
    """Telemetry objects the test creates, closed at the end whatever happens."""
    isolate_client_environment(monkeypatch)
    created: list[Telemetry] = []
    yield created
    for telemetry in created:
        telemetry.close(timeout=5.0)


def endpoint_expectations(expected: Counter[Key]) -> dict[tuple[str, str], dict[str, int]]:
    """Calls and errors (status >= 500) per (method, route), from per-status counts."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for (method, route, status), count in expected.items():
        entry = out.setdefault((method, route), {"calls": 0, "errors": 0})
        entry["calls"] += count
        entry["errors"] += count if status >= 500 else 0
    return out


def run_starlette_instance(
    telemetry: Telemetry, canaries: Canaries, reads: int, flush_midway: bool
) -> Traffic:
    """Serve a Starlette shop through its whole life: the lifespan shutdown at the
    end of the ``with`` block makes the client's final flush (``ASGIMiddleware``).

    The middleware is added the way the integration documents for Starlette
    (``add_middleware``), inside the app, where it sees ``scope["app"]``.
    """
    flusher = telemetry.flusher
    app = starlette_shop()
    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    with TestClient(app) as client:
        traffic = Traffic(client, canaries)
        traffic.starlette_mix(reads=reads)
        if flush_midway:
            assert telemetry.flush(timeout=30.0) is True
            traffic.call("GET", f"/items/{canaries.path}", ITEM, 200, times=2)
    assert telemetry.flusher is None, "the lifespan shutdown closes the client"
    assert flusher.last_result is not None
    assert flusher.last_result.outcome is Outcome.DELIVERED
    return traffic


# -- real clients, known traffic, exact numbers -----------------------------------------------


def test_real_clients_report_exactly_what_was_served(
    database: Database, tmp_path: Path, clients: list[Telemetry]
) -> None:
    canaries = Canaries.new()
    store_old_report(
        database.url,
        str(uuid.uuid4()),
        "1.3.0",
        [("DELETE", ITEM, 204, 0.003)] * 2,
        days_ago=40,
    )
    with running_collector(database.url) as collector:
        dep_a, dep_b = tmp_path / "deployment-a", tmp_path / "deployment-b"
        dep_a.mkdir()
        dep_b.mkdir()
        starlette_expected: Counter[Key] = Counter()

        # Deployment A: two instances of a Starlette service on 1.4.0. The first
        # flushes midway (two reports carry its traffic), the second only at exit.
        a1 = start_client(collector.url, dep_a, "1.4.0")
        clients.append(a1)
        starlette_expected += run_starlette_instance(a1, canaries, 3, flush_midway=True).expected
        a2 = start_client(collector.url, dep_a, "1.4.0")
        clients.append(a2)
        starlette_expected += run_starlette_instance(a2, canaries, 4, flush_midway=False).expected

        # Deployment B: a Flask service on 1.5.0, closed by hand.
        b1 = start_client(collector.url, dep_b, "1.5.0")
        clients.append(b1)
        flask_app = flask_shop()
        flask_app.wsgi_app = WSGIMiddleware(flask_app.wsgi_app, telemetry=b1)
        with httpx.Client(
            transport=httpx.WSGITransport(app=flask_app), base_url="http://shop.example"
        ) as client:
            flask_traffic = Traffic(client, canaries)
            flask_traffic.call("GET", f"/items/{canaries.path}", FLASK_ITEM, 200, times=3)
            flask_traffic.call("POST", ITEMS, ITEMS, 201, times=2, content=canaries.body)
            flask_traffic.call("GET", BOOM, BOOM, 500)
            flask_traffic.call("GET", f"/{canaries.path}/.env", UNMATCHED, 404, times=2)
            assert b1.flush(timeout=30.0) is True
            flask_traffic.call("GET", f"/items/{canaries.cookie}", FLASK_ITEM, 200)
        assert b1.close() is True
        expected = starlette_expected + flask_traffic.expected

        # Startup + midway + shutdown for A1 and B1; startup + shutdown for A2.
        reports = 3 + 2 + 3
        requests = sum(expected.values())
        errors = sum(count for (_, _, status), count in expected.items() if status >= 500)
        assert (requests, errors) == (36, 3)  # the traffic above, counted by hand

        # -- what was stored, read with the database's own driver -------------------------
        assert database.counts_by_key() == {**expected, UNUSED_KEY: 2}
        assert database.report_count() == reports + 1  # and the one from last month

        # -- the dashboard's data -----------------------------------------------------------
        summary = collector.summary(days=30)
        totals = summary["totals"]
        assert totals["deployments"] == 2
        assert totals["instances"] == 3
        assert totals["reports"] == reports
        assert totals["requests"] == requests
        assert totals["errors"] == errors
        assert totals["error_rate"] == pytest.approx(errors / requests)
        assert summary["refusals"] == {}
        assert summary["activity"][-1]["deployments"] == 2
        assert summary["activity"][-1]["instances"] == 3

        versions = {
            v["app_version"]: (v["deployments"], v["instances"]) for v in summary["versions"]
        }
        assert versions == {"1.4.0": (1, 2), "1.5.0": (1, 1)}

        endpoints = {(e["method"], e["route"]): e for e in summary["endpoints"]}
        wanted = endpoint_expectations(expected)
        assert set(endpoints) == {*wanted, ("DELETE", ITEM)}
        for key, numbers in wanted.items():
            entry = endpoints[key]
            assert (entry["calls"], entry["errors"]) == (numbers["calls"], numbers["errors"]), key
            assert entry["p50"] is not None and entry["p95"] >= entry["p50"] > 0
        # Served by both deployments, under the same template.
        assert endpoints[("POST", ITEMS)]["deployments"] == 2
        assert endpoints[("GET", BOOM)]["deployments"] == 2
        assert endpoints[("GET", ITEM)]["deployments"] == 1
        unused = [e for e in summary["endpoints"] if e["calls"] == 0]
        assert [(e["method"], e["route"]) for e in unused] == [("DELETE", ITEM)]
        assert unused[0]["p95"] is None and unused[0]["error_rate"] is None
        assert summary["endpoints"][-1] == unused[0]  # most calls first

        by_version = {
            (e["method"], e["route"], e["app_version"]): e["calls"]
            for e in summary["endpoints_by_version"]
        }
        assert by_version[("POST", ITEMS, "1.4.0")] == 4
        assert by_version[("POST", ITEMS, "1.5.0")] == 2
        assert by_version[("GET", FLASK_ITEM, "1.5.0")] == 4
        # Per version, the summary lists calls only: the unused endpoint is in
        # the list above (calls 0), and its version's row in the CSV below.
        assert ("DELETE", ITEM, "1.3.0") not in by_version

        frameworks = Counter()
        for platform in summary["platforms"]:
            frameworks[platform["framework"]] += platform["instances"]
        assert frameworks == {"starlette": 2, "flask": 1}

        # -- the CSV ----------------------------------------------------------------------------
        csv_text = collector.csv_text(days=30)
        rows = collector.csv_rows(days=30)
        assert tuple(rows[0]) == COLUMNS
        per_version: dict[tuple[str, str, str], Counter[Key]] = {}
        for version, served in (("1.4.0", starlette_expected), ("1.5.0", flask_traffic.expected)):
            for (method, route, status), count in served.items():
                per_version.setdefault((method, route, version), Counter())[
                    (method, route, status)
                ] += count
        csv_rows = {(r["method"], r["route"], r["app_version"]): r for r in rows}
        assert set(csv_rows) == {*per_version, ("DELETE", ITEM, "1.3.0")}
        for key, counts in per_version.items():
            row = csv_rows[key]
            calls = sum(counts.values())
            row_errors = sum(n for (_, _, status), n in counts.items() if status >= 500)
            assert (int(row["calls"]), int(row["errors"])) == (calls, row_errors), key
            assert int(row["deployments"]) == 1
            assert float(row["p95_ms"]) > 0
        assert csv_rows[("DELETE", ITEM, "1.3.0")]["calls"] == "0"
        assert csv_rows[("DELETE", ITEM, "1.3.0")]["p95_ms"] == ""

        # -- nothing identifying anywhere --------------------------------------------------------
        canaries.assert_absent(json.dumps(summary).encode(), "the summary")
        canaries.assert_absent(csv_text.encode(), "the CSV")
        stored = database.dump()
        # The dump does see what was stored (else its silence would prove nothing).
        assert deployment_id(dep_a, collector.url).encode() in stored
        assert MEMBER.encode() in stored and FLASK_ITEM.encode() in stored
        canaries.assert_absent(stored, f"the {database.kind} database")
    if database.kind == "sqlite":
        # Once the collector closed its database, the WAL is checkpointed into the file.
        after = database.dump()
        assert MEMBER.encode() in after
        canaries.assert_absent(after, "the SQLite file after shutdown")


# -- the real difficulty ---------------------------------------------------------------------


def test_the_default_difficulty_works_end_to_end(tmp_path: Path, clients: list[Telemetry]) -> None:
    """20 bits, as a production collector asks: about a million SHA-1s per report,
    minted by the client in a child process."""
    assert DEFAULT_BITS == 20
    database = sqlite_database(tmp_path)
    canaries = Canaries.new()
    with running_collector(database.url, bits=DEFAULT_BITS) as collector:
        ids = {"deployment_id": str(uuid.uuid4()), "instance_id": str(uuid.uuid4())}
        session = collector.http.post("/v1/session", json=ids)
        assert session.json()["bits"] == 20
        # A stamp with less work than that is refused, and nothing is stored.
        token = session.json()["token"]
        body = protocol_payload(
            ids["deployment_id"], ids["instance_id"], [("GET", ITEM, 200, 0.01)], "3.0.0"
        )
        cheap = hashcash.mint(hashcash.payload_resource(token, body), LOW_BITS)
        refused = post_report(
            collector.http,
            json.dumps({"token": token, "stamp": cheap, "payload": body.decode()}).encode(),
        )
        assert refused.status_code == 400 and refused.json()["error"] == "insufficient_work"
        started = time.monotonic()
        telemetry = start_client(
            collector.url, tmp_path, "3.0.0", timeout=60.0, shutdown_timeout=60.0
        )
        clients.append(telemetry)
        traffic = run_starlette_instance(telemetry, canaries, reads=2, flush_midway=True)
        elapsed = time.monotonic() - started

        stamps = database.stamps()
        assert len(stamps) == 3  # startup, midway, shutdown
        for stamp in stamps:
            assert stamp.startswith("1:20:")
            assert hashcash.leading_zero_bits(hashlib.sha1(stamp.encode()).digest()) >= 20
        assert database.counts_by_key() == dict(traffic.expected)
        totals = collector.summary(days=1)["totals"]
        assert totals["requests"] == sum(traffic.expected.values())
        assert (totals["deployments"], totals["instances"], totals["reports"]) == (1, 1, 3)
        assert collector.summary(days=1)["refusals"] == {"insufficient_work": 1}
        canaries.assert_absent(database.dump(), "the SQLite database")
    assert elapsed < 90, f"three 20-bit reports took {elapsed:.1f} s"


# -- scale-out: replicas share a secret and a database ----------------------------------------


def post_report(http: httpx.Client, envelope: bytes) -> httpx.Response:
    return http.post("/v1/report", content=gzip.compress(envelope), headers=GZIP_JSON)


def test_replicas_accept_each_others_tokens_and_refuse_replays(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with (
        database_for(request, "postgres", tmp_path) as database,
        running_collector(database.url) as replica_a,
        running_collector(database.url) as replica_b,
        running_collector(database.url, secret=b"another-secret-" + SECRET) as stranger,
    ):
        assert replica_a.url != replica_b.url
        deployment, instance = str(uuid.uuid4()), str(uuid.uuid4())
        body = protocol_payload(
            deployment,
            instance,
            [("GET", ITEM, 200, 0.004)] * 5 + [("GET", ITEM, 503, 0.2)],
            app_version="2.0.0",
        )
        session = replica_a.http.post(
            "/v1/session", json={"deployment_id": deployment, "instance_id": instance}
        )
        assert session.status_code == 200, session.text
        token, bits = session.json()["token"], session.json()["bits"]
        assert bits == LOW_BITS
        stamp = hashcash.mint(hashcash.payload_resource(token, body), bits)
        envelope = json.dumps(
            {"token": token, "stamp": stamp, "payload": body.decode("utf-8")}
        ).encode()

        # A replica with another secret cannot verify A's token: the shared secret
        # is what makes B accept it.
        refused = post_report(stranger.http, envelope)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "bad_token"
        assert database.report_count() == 0

        # Issued by A, accepted by B.
        stored = post_report(replica_b.http, envelope)
        assert stored.status_code == 200, stored.text
        assert stored.json()["stored"] is True
        assert database.report_count() == 1

        # The same envelope, same stamp, at A: a replay, whichever replica stored it.
        replay = post_report(replica_a.http, envelope)
        assert replay.status_code == 409, replay.text
        assert replay.json()["error"] == "replay"
        again = post_report(replica_b.http, envelope)
        assert again.status_code == 409 and again.json()["error"] == "replay"

        assert database.report_count() == 1
        assert database.counts_by_key() == {("GET", ITEM, 200): 5, ("GET", ITEM, 503): 1}
        # Each counts its own refusals at once, and adds them to the shared
        # counters when it writes them (every few seconds; here, now).
        assert replica_a.summary(days=1)["refusals"] == {"replay": 1}
        for replica in (replica_a, replica_b, stranger):
            assert replica.app is not None
            assert replica.app.state.refusals.write() == 1
        for replica in (replica_a, replica_b):
            summary: dict[str, Any] = replica.summary(days=1)
            totals = summary["totals"]
            assert (totals["reports"], totals["requests"], totals["errors"]) == (1, 6, 1)
            assert (totals["deployments"], totals["instances"]) == (1, 1)
            assert summary["refusals"] == {"bad_token": 1, "replay": 2}


# -- the client's side of the protocol against a real collector ------------------------------


def restarted_client(tmp_path: Path, clients: list[Telemetry], url: str) -> Telemetry:
    deployment = tmp_path / "deployment"
    deployment.mkdir(exist_ok=True)
    telemetry = start_client(url, deployment, "1.0.0")
    clients.append(telemetry)
    telemetry.record("GET", ITEM, 200, 0.01, 0, 10)
    return telemetry


def test_a_raised_difficulty_renews_the_session_instead_of_dropping_the_report(
    tmp_path: Path, clients: list[Telemetry]
) -> None:
    database = sqlite_database(tmp_path)
    with running_collector(database.url, bits=8) as first:
        port = first.server.port
        telemetry = restarted_client(tmp_path, clients, first.url)
    # A rolling restart: same secret (the cached token stays valid), more work asked.
    with running_collector(database.url, bits=14, port=port):
        assert telemetry.flush(timeout=30.0) is True
    assert telemetry.internal_errors == 0
    assert database.counts_by_key()[("GET", ITEM, 200)] == 1


class SkewedClock:
    """The ``time`` module as seen by a collector whose clock is ``skew`` seconds off."""

    def __init__(self, skew: float) -> None:
        self.skew = skew

    def time(self) -> float:
        return time.time() + self.skew

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.mark.parametrize("skew", [-180.0, 660.0], ids=["client-3-min-fast", "client-11-min-slow"])
def test_stamps_are_dated_by_the_collectors_clock(
    tmp_path: Path, clients: list[Telemetry], monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    import uvicorn.server

    import reqtelemetry.collector.app

    # The collector's machine: its app and its server's Date header share one clock.
    monkeypatch.setattr(reqtelemetry.collector.app, "time", SkewedClock(skew))
    monkeypatch.setattr(uvicorn.server, "time", SkewedClock(skew))
    database = sqlite_database(tmp_path)
    with running_collector(database.url, bits=8) as collector:
        telemetry = restarted_client(tmp_path, clients, collector.url)
        assert telemetry.flusher.transport.clock_offset == pytest.approx(skew, abs=3)
        assert telemetry.flush(timeout=30.0) is True
    assert telemetry.internal_errors == 0
    assert database.counts_by_key()[("GET", ITEM, 200)] == 1
    assert database.report_count() == 2  # the startup report, then this one


def test_a_collector_with_a_small_body_cap_receives_everything(
    tmp_path: Path, clients: list[Telemetry]
) -> None:
    """Its 413s make the client split smaller, not drop the report (docs/protocol.md)."""
    database = sqlite_database(tmp_path)
    with running_collector(database.url, bits=8, max_body_bytes=16384) as collector:
        # max_payload_bytes: 256 KiB by default, far above the collector's cap.
        telemetry = restarted_client(tmp_path, clients, collector.url)
        expected: Counter[Key] = Counter({("GET", ITEM, 200): 1})
        for i in range(300):
            route = f"/catalogue/{i}/" + "section/" * 6
            for status in (200, 404):
                telemetry.record("GET", route, status, 0.001 * (1 + i % 40), 0, 10)
                expected[("GET", route, status)] += 1
        assert telemetry.flush(timeout=30.0) is True
        assert telemetry.flusher.max_payload_bytes <= 16384
        posted = collector.requests.count(("POST", "/v1/report"))
        assert posted > database.report_count()  # some were refused (413) on the way
        # A second flush goes out at the size learnt, straight through.
        telemetry.record("GET", ITEM, 200, 0.01, 0, 10)
        expected[("GET", ITEM, 200)] += 1
        assert telemetry.flush(timeout=30.0) is True
        assert telemetry.flusher.last_result.status == 200
    assert telemetry.internal_errors == 0
    assert database.counts_by_key() == dict(expected)


def test_a_report_the_client_gave_up_on_is_never_stored_behind_its_back(
    database: Database, tmp_path: Path, clients: list[Telemetry]
) -> None:
    """Another writer holds the database while the client flushes: the
    collector answers 503 within half the client's wait instead of storing
    the report after the client gave up, so the client's retry is the only
    copy, and the totals are the requests served, not twice as many."""
    deployment = tmp_path / "deployment"
    deployment.mkdir()
    with running_collector(database.url, bits=8) as collector:
        # One attempt per flush, waiting one second (said in Reqtelemetry-Wait).
        telemetry = start_client(collector.url, deployment, "1.0.0", timeout=1.0, max_attempts=1)
        clients.append(telemetry)
        for _ in range(100):
            telemetry.record("GET", ITEM, 200, 0.01, 0, 10)
        with another_writer(database.url):
            first = telemetry.flush(timeout=5.0)
            refused = telemetry.flusher.last_result
        assert refused is not None
        if refused.retry_after is not None:
            time.sleep(refused.retry_after)  # as the collector asked (1 s)
        assert telemetry.flush(timeout=5.0) is True
        summary = collector.summary(days=1)
    assert database.counts_by_key() == {("GET", ITEM, 200): 100}
    assert summary["totals"]["requests"] == 100
    assert database.report_count() == 2  # the startup report, then the retried one
    assert first is False
    assert (refused.outcome, refused.status) == (Outcome.FAILED, 503)


def client_with_100_requests(url: str, deployment: Path, clients: list[Telemetry]) -> Telemetry:
    """A client of ``url`` that waits 1 s for an answer and tries once, with
    100 requests recorded."""
    telemetry = start_client(url, deployment, "1.0.0", timeout=1.0, max_attempts=1)
    clients.append(telemetry)
    for _ in range(100):
        telemetry.record("GET", ITEM, 200, 0.01, 0, 10)
    return telemetry


class AnswerHoldingProxy:
    """A reverse proxy on loopback in front of the collector, which holds the
    collector's answers to the next ``reports_to_hold`` reports for
    ``hold`` seconds: the collector stored them, the client gave up waiting.
    (A soak with such a proxy counted one period four times.)"""

    def __init__(self, upstream: str, hold: float) -> None:
        self.upstream = upstream
        self.hold = hold
        self.reports_to_hold = 0
        #: The next reports answered 502 without being forwarded (never stored).
        self.reports_to_drop = 0
        self.server = ServerThread(
            Starlette(routes=[Route("/{path:path}", self._forward, methods=["POST"])])
        )
        self.server.start()

    @property
    def url(self) -> str:
        return self.server.url

    async def _forward(self, request: Request) -> Response:
        if request.url.path.endswith("/v1/report") and self.reports_to_drop > 0:
            self.reports_to_drop -= 1
            return Response("upstream unreachable", status_code=502)
        passed = ("content-type", "content-encoding", "user-agent", WAIT_HEADER.lower())
        headers = {name: value for name, value in request.headers.items() if name in passed}
        async with httpx.AsyncClient(base_url=self.upstream, trust_env=False) as upstream:
            answer = await upstream.post(
                request.url.path, content=await request.body(), headers=headers
            )
        if request.url.path.endswith("/v1/report") and self.reports_to_hold > 0:
            self.reports_to_hold -= 1
            await asyncio.sleep(self.hold)
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
        )


def test_a_report_whose_answer_a_proxy_held_is_stored_once(
    database: Database, tmp_path: Path, clients: list[Telemetry]
) -> None:
    """The collector stores a report, and a proxy holds its answer past the
    client's timeout. At the next flush the client sends it again with its
    stamp, by then past the stamp's window: the collector looks the stamp
    up, answers it as a replay, and stores the new data. Every request is
    counted once; before, the first period's requests went again in the
    next report, under a new stamp, and were counted twice."""
    deployment = tmp_path / "deployment"
    deployment.mkdir()
    with running_collector(database.url, bits=8, stamp_max_age=2.0) as collector:
        proxy = AnswerHoldingProxy(collector.url, hold=2.0)
        try:
            telemetry = client_with_100_requests(proxy.url, deployment, clients)
            proxy.reports_to_hold = 1
            assert telemetry.flush(timeout=5.0) is False
            held = telemetry.flusher.last_result
            assert held is not None and held.sent is not None and held.sent.maybe_stored
            for _ in range(50):
                telemetry.record("GET", ITEM, 200, 0.01, 0, 10)
            time.sleep(3.5)  # the proxy answered long ago; the stamp is past its window
            assert telemetry.flush(timeout=5.0) is True
            collector.app.state.refusals.write()
            summary = collector.summary(days=1)
        finally:
            proxy.server.stop()
    assert database.counts_by_key() == {("GET", ITEM, 200): 150}
    assert summary["totals"]["requests"] == 150
    assert database.report_count() == 3  # the startup report, the held one, the new one
    assert summary["refusals"] == {"replay": 1}


def test_a_held_report_the_collector_never_got_goes_under_a_new_stamp(
    database: Database, tmp_path: Path, clients: list[Telemetry]
) -> None:
    """A proxy's 502 may hide a stored report, so the client keeps it with
    its stamp. When the collector never got it, its lookup finds nothing
    and it refuses the stamp as too old: the client then mints a new one and
    the report is stored once. Kept with its dead stamp, it was refused at
    every flush and blocked every report after it."""
    deployment = tmp_path / "deployment"
    deployment.mkdir()
    with running_collector(database.url, bits=8, stamp_max_age=2.0) as collector:
        proxy = AnswerHoldingProxy(collector.url, hold=0.0)
        try:
            telemetry = client_with_100_requests(proxy.url, deployment, clients)
            proxy.reports_to_drop = 1
            assert telemetry.flush(timeout=5.0) is False
            assert telemetry.flusher.unconfirmed is not None
            time.sleep(3.5)  # the stamp is past its window
            for _ in range(50):
                telemetry.record("GET", ITEM, 200, 0.01, 0, 10)
            delivered = telemetry.flush(timeout=10.0)
            outcome = telemetry.flusher.last_result
            collector.app.state.refusals.write()
            summary = collector.summary(days=1)
        finally:
            proxy.server.stop()
    assert delivered is True, outcome
    assert telemetry.flusher.unconfirmed is None
    assert database.counts_by_key() == {("GET", ITEM, 200): 150}
    assert summary["refusals"] == {"stale_stamp": 1}
    assert database.report_count() == 3  # the startup report, the held one, the new one


def test_a_report_whose_commit_answer_was_lost_is_stored_once(
    request: pytest.FixtureRequest, tmp_path: Path, clients: list[Telemetry]
) -> None:
    """PostgreSQL committed the report, its answer to the commit was lost,
    and the database was out of reach for a few seconds, so the collector
    could not find out. Answered 503 "unavailable" (nothing stored), the
    client sent the data again under a new stamp: counted twice. Answered
    503 "unconfirmed", the client keeps the report with its stamp and sends
    it again: a replay once the database is back."""
    from test_storage import AnswerToCommitLost

    deployment = tmp_path / "deployment"
    deployment.mkdir()
    with database_for(request, "postgres", tmp_path) as database:
        relay = AnswerToCommitLost(database.url, after=0.2, then_refuse_for=3.0)
        try:
            with running_collector(relay.url, bits=8) as collector:
                telemetry = start_client(
                    collector.url, deployment, "1.0.0", timeout=4.0, max_attempts=1
                )
                clients.append(telemetry)
                for _ in range(5):
                    telemetry.record("GET", ITEM, 200, 0.01, 0, 10)
                relay.armed = True
                assert telemetry.flush(timeout=3.0) is False
                answer = telemetry.flusher.last_result
                assert answer is not None
                assert (answer.status, answer.reason) == (503, "unconfirmed")
                assert telemetry.flusher.unconfirmed is not None
                time.sleep(3.5)  # the database is within reach again
                telemetry.flusher._not_before = 0.0  # the next flush, due later in life
                assert telemetry.flush(timeout=10.0) is True
        finally:
            relay.close()
        assert database.counts_by_key() == {("GET", ITEM, 200): 5}
        assert database.report_count() == 3  # the startup report, the held one, the new one
