"""Flushing against a real collector stand-in on loopback (tests/receiver.py).

No mocks: reports travel through httpx and uvicorn, are gunzipped and checked
against the JSON Schema by the receiver (the ``receiver`` fixture fails a test
that sent an invalid one). The collector's view — the accepted payloads — must
add up to exactly the traffic, whatever the collector did in between: down,
slow, 500, 429 with Retry-After, 410.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import reqtelemetry
from conftest import SENDER_DEFAULTS, make_config
from examples.servers import child_environment
from receiver import (
    UNAVAILABLE,
    ServerThread,
    counter_totals,
    record_counts,
    schema_errors,
    settle,
)
from reqtelemetry import ASGIMiddleware, Telemetry
from reqtelemetry import flusher as flusher_module
from reqtelemetry import telemetry as telemetry_module
from reqtelemetry.payload import UNPACED, Envelope, build_reports
from reqtelemetry.recorder import OVERFLOW_KEY, Batch, Recorder
from reqtelemetry.traits import deployment_id_for
from reqtelemetry.transport import MAX_ANSWER_BYTES, Outcome, parse_retry_after

pytestmark = pytest.mark.e2e


def record_traffic(telemetry: Telemetry, routes: int = 3, each: int = 4) -> Counter:
    """Record ``routes * each`` requests; the expected counts per key."""
    expected: Counter = Counter()
    for i in range(routes):
        for _ in range(each):
            telemetry.record("GET", f"/route/{i}", 200, 0.01, 5, 100)
            expected[("GET", f"/route/{i}", 200)] += 1
    return expected


def delivered(receiver, telemetry: Telemetry) -> Counter:
    """Requests per key in the reports the collector accepted from ``telemetry``."""
    return record_counts(receiver.reports_from(telemetry.instance_id))


def sample_app(telemetry: Telemetry) -> ASGIMiddleware:
    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"]})

    async def create(request: Request) -> PlainTextResponse:
        await request.body()
        return PlainTextResponse("created", status_code=201)

    app = Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/items", create, methods=["POST"]),
        ]
    )
    return ASGIMiddleware(app, telemetry=telemetry)


# -- arrival -------------------------------------------------------------------------


def test_startup_report_is_sent_as_soon_as_the_flusher_starts(make_sender, receiver, tmp_path):
    telemetry = make_sender(settled=False)
    assert receiver.wait_for_reports(1, kind="startup", timeout=5)
    (report,) = receiver.reports_from(telemetry.instance_id)
    assert report["kind"] == "startup"
    assert report["sequence"] == 0
    assert (report["part"], report["parts"]) == (0, 1)
    kept = (tmp_path / "deployment_id").read_text().strip()
    config = telemetry.config
    assert report["deployment_id"] == deployment_id_for(kept, config.app_name, config.endpoint)
    assert report["deployment_id"] != kept  # the kept id never leaves the process
    assert report["traits"]["reqtelemetry_version"] == reqtelemetry.__version__


def test_the_startup_report_waits_for_the_first_request(make_sender, receiver):
    """A process that loads the app without serving it (``flask routes``,
    ``manage.py migrate``, a script writing the OpenAPI schema) is no instance:
    its startup report waits for the app's first request."""
    telemetry = make_sender(served=False, settled=False)
    app = sample_app(telemetry)
    assert telemetry.flusher.running and telemetry.flusher.sequence == 0
    with TestClient(app) as client:
        assert client.get("/items/1").status_code == 200
        assert receiver.wait_for_reports(1, kind="startup", timeout=5)
    report = receiver.reports_from(telemetry.instance_id)[0]  # then the lifespan's shutdown
    assert report["kind"] == "startup" and report["sequence"] == 0


@pytest.mark.parametrize("how", ["closed", "at exit"])
def test_a_process_that_never_served_sends_nothing_and_waits_for_nothing(
    silent_endpoint, tmp_path, how
):
    """Its close (at exit: ``atexit``) sends no report and waits for no
    collector: a ``migrate`` against an unreachable collector took 3 s, not
    0.7 s, and every real collector counted each command as an instance."""
    config = make_config(
        endpoint=silent_endpoint.url,
        deployment_id_path=str(tmp_path / "id"),
        **{**SENDER_DEFAULTS, "shutdown_timeout": 30.0},
    )
    telemetry = Telemetry(config=config)
    flusher = telemetry.flusher
    assert flusher.running
    if how == "closed":
        assert telemetry.close() is False
    else:
        telemetry_module.close_all_at_exit()  # what atexit runs
    flusher._thread.join(5)
    assert not flusher.running and flusher.sequence == 0
    silent_endpoint.assert_no_connection()


def test_apps_sharing_the_id_file_send_ids_none_can_link(make_sender, receiver, tmp_path):
    """The id file is one per user account: every app on a machine sent its
    id, to any collector, and two maintainers could tell the same machine by it."""
    shop, shop_again, blog = (
        make_sender(app_name=name) for name in ("shop", "shop", "blog")
    )  # one file, in tmp_path
    for telemetry in (shop, shop_again, blog):
        assert telemetry.close() is True
    sent = {
        telemetry: {r["deployment_id"] for r in receiver.reports_from(telemetry.instance_id)}
        for telemetry in (shop, shop_again, blog)
    }
    kept = (tmp_path / "deployment_id").read_text().strip()
    assert sent[shop] == sent[shop_again]  # one app, restarted: one deployment
    assert len(sent[shop]) == 1 and sent[shop] != sent[blog]
    assert kept not in sent[shop] | sent[blog]
    everything = b"".join(r.body or r.raw_body for r in receiver.requests)
    assert kept.encode() not in everything + json.dumps(receiver.sessions).encode()
    # Another collector (its origin: scheme, host, port) gets another id.
    (shop_id,) = sent[shop]
    assert deployment_id_for(kept, "shop", receiver.url) == shop_id
    assert deployment_id_for(kept, "shop", receiver.url + "/v1?key=k") == shop_id
    assert deployment_id_for(kept, "shop", "https://collector.example") != shop_id
    # One origin however it is written: default port, case, a trailing dot.
    assert deployment_id_for(kept, "shop", "https://Collector.Example.:443/v1") == (
        deployment_id_for(kept, "shop", "https://collector.example")
    )


def test_a_process_that_only_counts_sends_its_counts(make_sender, receiver):
    """A script, or a queue's worker, that counts and serves nothing: its
    counts are the app's usage, and go (6228cd6 lost them)."""
    telemetry = make_sender(served=False, settled=False)
    telemetry.count("backup.files", 5)
    assert telemetry.close() is True
    reports = receiver.reports_from(telemetry.instance_id)
    assert sum(r["metrics"]["counters"].get("backup.files", 0) for r in reports) == 5


def test_a_process_that_forked_and_only_counts_sends_its_counts(make_sender, receiver):
    """A process pool's parent forks too, and counts its jobs: no pre-fork
    server's master (tests/test_examples_e2e.py runs one), its counts go,
    from its first report on (bb48e62 and 5b9af19 lost them, or held them
    to the exit)."""
    telemetry = make_sender(served=False, settled=False)
    telemetry.flusher.note_fork()  # what the fork hook says in the parent
    telemetry.count("jobs.done", 40)
    assert receiver.wait_for_reports(1, kind="startup", timeout=5)  # announced by them
    assert telemetry.close() is True
    reports = receiver.reports_from(telemetry.instance_id)
    assert sum(r["metrics"]["counters"].get("jobs.done", 0) for r in reports) == 40


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_while_the_exit_waits_ends_the_wait_quietly(silent_endpoint, tmp_path, raised):
    """Ctrl-C while the final report waits; under gunicorn a second SIGINT or
    SIGQUIT, which its worker turns into ``sys.exit(0)``: that escaped the
    exit hook with a traceback ("Exception ignored in atexit callback")."""
    config = make_config(
        endpoint=silent_endpoint.url,  # answers nothing: the report waits its whole budget
        deployment_id_path=str(tmp_path / "id"),
        **{**SENDER_DEFAULTS, "shutdown_timeout": 10.0},
    )
    telemetry = Telemetry(config=config)
    telemetry.note_first_request(None)

    def handle_quit(signum, frame):
        raise raised(0) if raised is SystemExit else raised()

    previous = signal.signal(signal.SIGUSR1, handle_quit)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1))
    started = time.monotonic()
    try:
        timer.start()
        telemetry_module.close_all_at_exit()  # returns, raising nothing
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - started < 5  # the wait ended, not its 10 s


def test_the_exit_waits_one_shutdown_timeout_for_all_instances(silent_endpoint, tmp_path):
    """Where each test of a suite makes its app (``unittest.main()``, not
    recognised as a test run), every instance's final report waited for its
    own ``shutdown_timeout``, one after the other: 100 held the exit for a
    minute. Now all of them share one."""
    config = make_config(
        endpoint=silent_endpoint.url,  # answers nothing: every report waits its budget
        deployment_id_path=str(tmp_path / "id"),
        **{**SENDER_DEFAULTS, "shutdown_timeout": 0.5},
    )
    instances = [Telemetry(config=config) for _ in range(6)]
    for telemetry in instances:
        telemetry.note_first_request(None)
    started = time.monotonic()
    telemetry_module.close_all_at_exit()
    elapsed = time.monotonic() - started
    assert all(telemetry.flusher is None for telemetry in instances)
    # One budget and the final flush's grace, not six budgets (3 s).
    assert elapsed < 0.5 + 2 * flusher_module.FINAL_FLUSH_GRACE + 0.5


def test_an_instance_announces_itself_after_a_while_without_requests(make_sender, receiver):
    """A long-lived process that has served nothing yet (or serves only
    excluded health checks) is an instance all the same, after
    ``STARTUP_GRACE`` or one flush interval, whichever is shorter."""
    telemetry = make_sender(served=False, settled=False, flush_interval=0.3)
    assert receiver.wait_for_reports(1, kind="startup", timeout=5)
    assert receiver.reports_from(telemetry.instance_id)[0]["kind"] == "startup"


def test_recording_without_an_integration_counts_as_serving(make_sender, receiver):
    """``Telemetry.record`` called directly (an integration of the app's own)
    tells no first request: what it recorded starts the reports."""
    telemetry = make_sender(served=False, settled=False)
    telemetry.record("GET", "/own/{id}", 200, 0.01, 0, 10)
    assert receiver.wait_for_reports(1, kind="startup", timeout=5)
    assert telemetry.close() is True
    kinds = [r["kind"] for r in receiver.reports_from(telemetry.instance_id)]
    assert kinds[0] == "startup" and kinds[-1] == "shutdown"
    assert delivered(receiver, telemetry) == {("GET", "/own/{id}", 200): 1}


def test_a_test_run_seen_at_the_first_request_sends_nothing_ever(
    make_sender, receiver, monkeypatch
):
    """``pytest.main()`` called from a script (as editors run tests) shows
    pytest only while a test runs: the first request, served in a test, is
    where it is seen. The tests' traffic once went out at exit."""
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    monkeypatch.setattr(sys, "argv", ["run_tests.py"])
    telemetry = make_sender(send_in_tests=False, served=False, settled=False)
    assert telemetry.sending
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_app.py::test_it (call)")
    with TestClient(sample_app(telemetry)) as client:
        assert client.get("/items/1").status_code == 200
    monkeypatch.delenv("PYTEST_CURRENT_TEST")  # the test is over; pytest tears down
    assert telemetry.close() is False
    assert receiver.reports_from(telemetry.instance_id) == []
    assert telemetry.flusher is None


def test_traffic_through_the_middleware_arrives_with_exact_counts(make_sender, receiver):
    telemetry = make_sender()
    with TestClient(sample_app(telemetry)) as client:
        for i in range(7):
            assert client.get(f"/items/{i}").status_code == 200
        for _ in range(3):
            assert client.post("/items", content=b"x" * 10).status_code == 201
        for i in range(5):
            assert client.get(f"/nothing-here/{i}").status_code == 404
        assert telemetry.flush() is True
        reports = receiver.reports_from(telemetry.instance_id)
        assert [r["kind"] for r in reports] == ["startup", "periodic"]
        assert delivered(receiver, telemetry) == {
            ("GET", "/items/{item_id}", 200): 7,
            ("POST", "/items", 201): 3,
            ("GET", "<unmatched>", 404): 5,
        }
        records = {r["route"]: r for r in reports[-1]["batch"]["records"]}
        assert records["/items"]["request_bytes"] == 30
        assert records["/items"]["response_bytes"] == 3 * len(b"created")
        assert all(not schema_errors(r) for r in reports)


def test_body_is_gzipped_json_with_headers_naming_reqtelemetry(make_sender, receiver):
    telemetry = make_sender()
    record_traffic(telemetry)
    assert telemetry.flush() is True
    request = receiver.requests[-1]
    assert request.method == "POST"
    assert request.path == "/v1/report"
    assert request.raw_body[:2] == b"\x1f\x8b"  # gzip magic
    envelope = json.loads(gzip.decompress(request.raw_body))
    assert set(envelope) == {"token", "stamp", "payload"}  # the protocol's envelope
    assert json.loads(envelope["payload"]) == request.payload
    assert envelope["token"].startswith("test-token-")  # the one /v1/session granted
    assert receiver.sessions[-1] == {
        "deployment_id": request.payload["deployment_id"],
        "instance_id": telemetry.instance_id,
    }
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["content-type"] == "application/json"
    user_agent = request.headers["user-agent"]
    assert user_agent.split()[0] == f"reqtelemetry/{reqtelemetry.__version__}"


def test_a_cookie_set_at_the_endpoint_is_never_sent_back(make_sender, receiver):
    # Whatever answers at the endpoint's host (a CDN, a load balancer, a
    # captive portal) could set an identifier that every later report carried
    # back; and a jar without bound made every request's header too large.
    telemetry = make_sender()
    receiver.respond_always(200, headers={"Set-Cookie": "track=canary-cookie; Path=/"})
    for _ in range(3):
        record_traffic(telemetry)
        assert telemetry.flush() is True
    reports = [r for r in receiver.requests if r.path == "/v1/report"]
    assert len(reports) >= 3
    assert all("cookie" not in r.headers for r in reports)
    assert not any("canary-cookie" in repr(r.headers) for r in reports)
    assert len(telemetry.flusher.transport.client.cookies.jar) == 0


def test_each_report_says_how_long_its_sender_waits(make_sender, receiver):
    """``Reqtelemetry-Wait`` is this attempt's own limit (docs/protocol.md): the
    collector stores nothing it could not answer in time, so it must not
    believe the client waits longer than it does. At shutdown that is what is
    left of ``shutdown_timeout``, shorter than ``timeout``."""
    telemetry = make_sender(timeout=2.0, shutdown_timeout=0.8)
    record_traffic(telemetry)
    assert telemetry.flush() is True
    assert receiver.requests[-1].headers["reqtelemetry-wait"] == "2.000"
    record_traffic(telemetry)
    assert telemetry.close() is True
    final = receiver.requests[-1]
    assert final.payload["kind"] == "shutdown"
    assert 0 < float(final.headers["reqtelemetry-wait"]) <= 0.8


def test_flush_returns_true_only_when_delivered(make_sender, receiver):
    telemetry = make_sender()
    expected = record_traffic(telemetry)
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected
    assert telemetry.snapshot() == []  # taken, not kept
    receiver.stop()
    telemetry.record("GET", "/later", 200, 0.01, 0, 0)
    assert telemetry.flush() is False
    assert len(telemetry.snapshot()) == 1  # kept for the next report


def test_sequence_counts_up_and_the_deployment_id_is_shared(make_sender, receiver):
    first = make_sender()
    assert first.flush() is True
    assert first.flush() is True
    second = make_sender()
    sequences = [r["sequence"] for r in receiver.reports_from(first.instance_id)]
    assert sequences == [0, 1, 2]
    (theirs,) = receiver.reports_from(second.instance_id)
    assert first.instance_id != second.instance_id
    assert theirs["deployment_id"] == receiver.reports_from(first.instance_id)[0]["deployment_id"]


def test_deployment_id_file_is_private(make_sender, tmp_path):
    make_sender()
    path = tmp_path / "deployment_id"
    assert path.exists()
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_timer_reports_every_interval(make_sender, receiver):
    telemetry = make_sender(settled=False, flush_interval=0.05)
    assert receiver.wait_for_reports(3, kind="periodic", timeout=5)
    kinds = [r["kind"] for r in receiver.reports_from(telemetry.instance_id)]
    assert kinds[0] == "startup"
    assert set(kinds[1:]) == {"periodic"}


def test_concurrent_traffic_and_flushes_lose_and_duplicate_nothing(make_sender, receiver):
    telemetry = make_sender(settled=False, flush_interval=0.02)
    per_thread, threads = 2000, 4

    def traffic(n: int) -> None:
        for i in range(per_thread):
            telemetry.record("GET", f"/t/{n}/{i % 7}", 200, 0.001, 0, 1)

    workers = [threading.Thread(target=traffic, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for _ in range(5):
        telemetry.flush()
    for worker in workers:
        worker.join()
    assert telemetry.close() is True
    counts = delivered(receiver, telemetry)
    assert sum(counts.values()) == per_thread * threads
    assert len(receiver.reports_from(telemetry.instance_id)) > 3
    assert receiver.reports_from(telemetry.instance_id)[-1]["kind"] == "shutdown"


# -- shutdown --------------------------------------------------------------------------


def test_close_flushes_and_stops_the_thread(make_sender, receiver):
    telemetry = make_sender()
    flusher = telemetry.flusher
    expected = record_traffic(telemetry)
    assert telemetry.close() is True
    last = receiver.reports_from(telemetry.instance_id)[-1]
    assert last["kind"] == "shutdown"
    assert record_counts([last]) == expected
    flusher._thread.join(2)
    assert not flusher.running
    assert telemetry.flusher is None
    # Closed for good: nothing more is sent.
    seen = len(receiver.requests)
    telemetry.record("GET", "/after", 200, 0.01, 0, 0)
    assert telemetry.flush() is False
    assert telemetry.close() is False
    time.sleep(0.1)
    assert len(receiver.requests) == seen


@pytest.mark.parametrize("busy", ["startup in flight", "final flush hangs"])
def test_close_is_bounded_by_shutdown_timeout_when_the_collector_hangs(make_sender, receiver, busy):
    shutdown_timeout = 0.5
    if busy == "startup in flight":
        receiver.respond_always(delay=30)
        telemetry = make_sender(settled=False, timeout=10, shutdown_timeout=shutdown_timeout)
        assert receiver.wait_for_requests(1)
    else:
        telemetry = make_sender(timeout=10, shutdown_timeout=shutdown_timeout)
        receiver.respond_always(delay=30)
    record_traffic(telemetry)
    started = time.monotonic()
    telemetry.close()
    assert time.monotonic() - started < shutdown_timeout + 2  # a hang check, not a benchmark


def test_close_is_bounded_when_looking_up_the_collectors_name_hangs(
    make_sender, receiver, monkeypatch
):
    """A resolver that does not answer holds no socket a deadline could cut.

    The name lookup is the one simulated part: this machine's resolver cannot
    be made to stop answering. The lookup of ``collector.test`` hangs once
    ``hanging`` is set, until the test ends; any other name is looked up for real.
    """
    hanging, released = threading.Event(), threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "collector.test":
            if hanging.is_set():
                released.wait(30)
            host = "127.0.0.1"
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    shutdown_timeout = 0.5
    telemetry = make_sender(
        endpoint=f"http://collector.test:{receiver.port}", shutdown_timeout=shutdown_timeout
    )
    assert receiver.reports_from(telemetry.instance_id), "the name resolved at start"
    record_traffic(telemetry)
    hanging.set()
    # The collector restarts: its idle connection is gone, so the final report
    # needs a new one, and looks the name up again.
    receiver.stop()
    receiver.start()
    started = time.monotonic()
    try:
        assert telemetry.close() is False
        waited = time.monotonic() - started
    finally:
        released.set()
    assert waited < shutdown_timeout + 2  # a hang check, not a benchmark


def test_the_final_report_goes_out_where_no_thread_can_be_started(
    make_sender, receiver, monkeypatch
):
    """Python 3.12 refuses new threads in an ``atexit`` function (where ``close``
    runs when the app never called it): the request deadline's timer and the
    final flush's own thread must both do without one."""
    telemetry = make_sender()
    expected = record_traffic(telemetry)

    def refuse(thread: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    assert telemetry.close() is True
    last = receiver.reports_from(telemetry.instance_id)[-1]
    assert last["kind"] == "shutdown"
    assert record_counts([last]) == expected


def test_an_app_that_just_exits_sends_its_final_report(receiver, tmp_path):
    """No ``close()``, no lifespan: the ``atexit`` hook sends the last report
    as the interpreter shuts down, in a real process of its own."""
    script = f"""
import reqtelemetry
from examples.servers import child_environment
telemetry = reqtelemetry.Telemetry(
    endpoint={receiver.url!r},
    deployment_id_path={str(tmp_path / "deployment_id")!r},
    send_in_tests=True,
    flush_interval=3600.0,
)
for _ in range(3):
    telemetry.record("GET", "/items/{{item_id}}", 200, 0.01, 0, 42)
telemetry.record("POST", "/items", 201, 0.02, 17, 0)
print(telemetry.instance_id)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    reports = receiver.reports_from(done.stdout.strip())
    assert [report["kind"] for report in reports][-1] == "shutdown", done.stderr
    assert record_counts(reports) == {
        ("GET", "/items/{item_id}", 200): 3,
        ("POST", "/items", 201): 1,
    }


def test_asgi_lifespan_shutdown_makes_the_final_flush(make_sender, receiver):
    telemetry = make_sender()
    with TestClient(sample_app(telemetry)) as client:
        for i in range(4):
            client.get(f"/items/{i}")
    assert telemetry.flusher is None  # closed by the lifespan shutdown
    last = receiver.reports_from(telemetry.instance_id)[-1]
    assert last["kind"] == "shutdown"
    assert record_counts([last]) == {("GET", "/items/{item_id}", 200): 4}


def test_uvicorn_shutdown_makes_the_final_flush(make_sender, receiver):
    telemetry = make_sender()
    server = ServerThread(sample_app(telemetry), lifespan="on")
    server.start()
    try:
        with httpx.Client(base_url=server.url, trust_env=False) as client:
            for i in range(3):
                assert client.get(f"/items/{i}").status_code == 200
    finally:
        server.stop(graceful=True)
    assert telemetry.flusher is None
    last = receiver.reports_from(telemetry.instance_id)[-1]
    assert last["kind"] == "shutdown"
    assert record_counts([last]) == {("GET", "/items/{item_id}", 200): 3}


# -- the app's gauges ------------------------------------------------------------------


@pytest.fixture
def hanging_gauge():
    """``(callback, release, calls)``: a gauge that blocks until ``release`` is set,
    then answers 7; ``calls`` counts its runs. Released at teardown."""
    release = threading.Event()
    calls: list[float] = []

    def callback() -> int:
        calls.append(time.monotonic())
        release.wait(60)
        return 7

    yield callback, release, calls
    release.set()


def test_a_hanging_gauge_holds_up_neither_its_report_nor_the_next(
    make_sender, receiver, hanging_gauge, caplog
):
    """Once, a hung gauge held the flush, its batch and the flush lock for good."""
    callback, release, calls = hanging_gauge
    telemetry = make_sender()
    telemetry.gauge("queue.depth", callback)
    telemetry.gauge("users.total", lambda: 3)
    budget = 2.0
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        for route in ("/a", "/b"):
            telemetry.record("GET", route, 200, 0.01, 0, 10)
            started = time.monotonic()
            assert telemetry.flush(timeout=budget) is True
            assert time.monotonic() - started < budget + 1  # a hang check, not a benchmark
    assert len(calls) == 1  # still running: not started again
    said = [r for r in caplog.records if "queue.depth" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    release.set()
    deadline = time.monotonic() + 5
    while telemetry.metrics._sampling and time.monotonic() < deadline:
        time.sleep(0.01)
    assert telemetry.flush() is True  # answered at last: sampled again
    *_, first, second, third = receiver.reports_from(telemetry.instance_id)
    assert [r["metrics"]["gauges"] for r in (first, second, third)] == [
        {"users.total": 3},
        {"users.total": 3},
        {"queue.depth": 7, "users.total": 3},
    ]
    assert [[x["route"] for x in r["batch"]["records"]] for r in (first, second)] == [
        ["/a"],
        ["/b"],
    ]
    assert len(calls) == 2


def test_a_slow_gauge_leaves_the_shutdown_budget_to_the_final_report(
    make_sender, receiver, hanging_gauge
):
    callback, _, calls = hanging_gauge
    shutdown_timeout = 1.0
    telemetry = make_sender(shutdown_timeout=shutdown_timeout)
    telemetry.gauge("db.rows", callback)
    telemetry.record("GET", "/a", 200, 0.01, 0, 10)
    started = time.monotonic()
    assert telemetry.close() is True
    assert time.monotonic() - started < shutdown_timeout + 1  # a hang check, not a benchmark
    last = receiver.reports_from(telemetry.instance_id)[-1]
    assert last["kind"] == "shutdown"
    assert [x["route"] for x in last["batch"]["records"]] == ["/a"]
    assert last["metrics"]["gauges"] == {}
    assert len(calls) == 1


def test_gauges_are_not_called_when_no_report_can_go(make_sender, receiver):
    telemetry = make_sender()
    calls: list[int] = []
    telemetry.gauge("queue.depth", lambda: calls.append(1) or 1)
    receiver.respond_always(410)
    assert telemetry.flush() is False
    assert telemetry.flush() is False  # gone: nothing sent, nothing sampled
    assert len(calls) == 1


# -- the server paces the client -------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "applied"),
    [(120, 120.0), (5, 60.0), (10**9, 7 * 86400.0), (90.5, 90.5)],
)
def test_next_interval_is_applied_within_bounds(make_sender, receiver, asked, applied):
    telemetry = make_sender(min_flush_interval=60.0, max_flush_interval=7 * 86400.0)
    receiver.respond_with(json={"next_interval": asked})
    assert telemetry.flush() is True
    assert telemetry.flusher.interval == applied


@pytest.mark.parametrize(
    "answer",
    [
        {"next_interval": "soon"},
        {"next_interval": -5},
        {"next_interval": True},
        ["not", "an", "object"],
    ],
)
def test_a_bad_next_interval_is_ignored(make_sender, receiver, answer):
    telemetry = make_sender()
    receiver.respond_with(json=answer)
    assert telemetry.flush() is True
    assert telemetry.flusher.interval == 3600.0


def test_next_interval_paces_the_timer(make_sender, receiver):
    receiver.respond_with(json={"next_interval": 0.1})  # the answer to the startup report
    telemetry = make_sender(settled=False, min_flush_interval=0.05, flush_interval=3600.0)
    assert receiver.wait_for_reports(2, kind="periodic", timeout=5)
    assert telemetry.flusher.interval == 0.1


def test_410_stops_reporting_for_good(make_sender, receiver):
    telemetry = make_sender()
    flusher = telemetry.flusher
    receiver.respond_with(410)
    record_traffic(telemetry)
    assert telemetry.flush() is False
    assert flusher.gone
    seen = len(receiver.requests)
    record_traffic(telemetry)
    assert telemetry.flush() is False
    assert telemetry.close() is False
    flusher._thread.join(2)
    assert not flusher.running
    time.sleep(0.1)
    assert len(receiver.requests) == seen


def test_410_to_the_startup_report_ends_the_thread(make_sender, receiver):
    receiver.respond_with(410)
    telemetry = make_sender(settled=False, flush_interval=0.05)
    flusher = telemetry.flusher
    assert receiver.wait_for_requests(1)
    flusher._thread.join(2)
    assert not flusher.running
    assert telemetry.flush() is False
    time.sleep(0.2)
    assert len(receiver.requests) == 1


def test_retry_after_is_honoured_between_flushes(make_sender, receiver):
    telemetry = make_sender()
    expected = record_traffic(telemetry)
    receiver.respond_with(429, headers={"Retry-After": "1"})
    # The wait the server asks for is longer than this flush may take: give up now.
    assert telemetry.flush(timeout=0.5) is False
    answered_at = time.monotonic()
    seen = len(receiver.requests)
    assert receiver.requests[-1].status == 429
    # Before Retry-After has passed, a flush does not contact the collector.
    assert telemetry.flush() is False
    time.sleep(0.1)
    assert len(receiver.requests) == seen
    time.sleep(max(0.0, answered_at + 1.05 - time.monotonic()))
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected


def test_the_final_flush_honours_retry_after_too(make_sender, receiver):
    telemetry = make_sender()
    record_traffic(telemetry)
    receiver.respond_with(429, headers={"Retry-After": "60"})
    assert telemetry.flush(timeout=0.5) is False
    seen = len(receiver.requests)
    assert telemetry.close() is False  # the collector asked for quiet; shutdown is no exception
    time.sleep(0.05)
    assert len(receiver.requests) == seen


def test_retry_after_within_the_budget_is_waited_out(make_sender, receiver):
    telemetry = make_sender()
    expected = record_traffic(telemetry)
    receiver.respond_with(429, headers={"Retry-After": "1"})
    before = len(receiver.requests)
    assert telemetry.flush() is True
    refused, accepted = receiver.requests[before:]
    assert accepted.received_at - refused.received_at >= 0.95
    assert delivered(receiver, telemetry) == expected


def test_an_absurd_retry_after_is_capped_and_the_timer_thread_lives_on(make_sender, receiver):
    # Past threading.TIMEOUT_MAX (~9.2e9 s) Event.wait raises OverflowError: the
    # thread would die, and with it every later report of this process.
    receiver.respond_always(429, headers={"Retry-After": "99999999999"})
    telemetry = make_sender()  # the startup report is answered 429
    flusher = telemetry.flusher
    assert receiver.requests[-1].status == 429
    assert flusher._not_before - time.monotonic() <= telemetry.config.max_flush_interval
    flusher._thread.join(0.5)  # returns at once if the thread died on its next wait
    assert flusher.running


def test_an_odd_answer_to_a_stored_report_never_sends_it_again(make_sender, receiver):
    """A 200 whose Retry-After is a date past year 9999 raised OverflowError,
    and a body nested past the recursion limit RecursionError, after the
    report was stored: its data went back into the recorder and was sent,
    and stored, again at every flush."""
    telemetry = make_sender()
    expected = record_traffic(telemetry)
    receiver.respond_always(200, headers={"Retry-After": "Feb 99999999999999999999 01 00:00:00"})
    assert telemetry.flush() is True
    assert telemetry.flush() is True  # nothing left, nothing sent again
    assert delivered(receiver, telemetry) == expected
    assert telemetry.internal_errors == 0


def test_answers_that_fail_to_parse_in_any_way_read_as_nothing():
    from reqtelemetry.transport import _next_interval, _refusal_reason

    assert parse_retry_after("Feb 99999999999999999999 01 00:00:00") is None
    nested = httpx.Response(200, content=b"[" * 60000)
    assert _next_interval(nested) is None
    assert _refusal_reason(httpx.Response(400, content=b"[" * 60000)) is None


def test_an_error_page_in_a_charset_python_cannot_decode_is_still_quoted(make_telemetry):
    from reqtelemetry.transport import Transport

    transport = Transport(make_telemetry(endpoint="http://127.0.0.1:9/?key=canary-key").config)
    page = httpx.Response(
        400, headers={"Content-Type": "text/plain; charset=rot13"}, content=b"no key=canary-key"
    )
    assert transport._answer(page) == "no ***"
    transport.close()


def test_a_long_retry_after_is_said_once_at_warning(make_sender, receiver, caplog):
    """The flushes it holds back count as no failure: nothing else said that
    nothing was sent for days, nor that an exit meanwhile loses the data."""
    telemetry = make_sender()
    record_traffic(telemetry)
    receiver.respond_with(503, json={"error": "unavailable"}, headers={"Retry-After": "99999999"})
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert telemetry.flush(timeout=1) is False
        for _ in range(3):
            assert telemetry.flush(timeout=1) is False  # held back
    long_waits = [m for m in warnings_in(caplog) if "asked for no reports" in m]
    assert len(long_waits) == 1
    assert f"{telemetry.config.max_flush_interval:.0f} s" in long_waits[0]


def test_retry_after_as_an_http_date_is_honoured(make_sender, receiver):
    telemetry = make_sender()
    record_traffic(telemetry)
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    receiver.respond_with(503, headers={"Retry-After": when})
    assert telemetry.flush(timeout=1) is False
    seen = len(receiver.requests)
    assert telemetry.flush() is False
    time.sleep(0.1)
    assert len(receiver.requests) == seen
    assert telemetry.flusher._not_before - time.monotonic() > 25


# -- failures and recovery: nothing lost, nothing counted twice ---------------------------


def test_500_keeps_the_data_until_the_collector_recovers(make_sender, receiver):
    telemetry = make_sender(max_attempts=3)
    receiver.respond_always(500)
    expected = record_traffic(telemetry)
    first_period = telemetry.recorder._period_start
    before = len(receiver.requests)
    assert telemetry.flush() is False
    assert len(receiver.requests) - before == 3  # max_attempts
    expected += record_traffic(telemetry, routes=4, each=2)
    receiver.respond_always(200)
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected
    last = receiver.reports_from(telemetry.instance_id)[-1]
    assert last["batch"]["period_start"] == pytest.approx(first_period)


def test_one_500_is_retried_within_the_same_flush(make_sender, receiver):
    telemetry = make_sender()
    expected = record_traffic(telemetry)
    receiver.respond_with(500)
    before = len(receiver.requests)
    assert telemetry.flush() is True
    assert [r.status for r in receiver.requests[before:]] == [500, 200]
    assert delivered(receiver, telemetry) == expected


@pytest.mark.parametrize("status", [501, 505, 507, 521, 522, 524, 599])
def test_any_5xx_keeps_the_data(make_sender, receiver, status):
    # docs/protocol.md: 5xx keeps the data. A CDN's 52x or a 507 says nothing
    # about the report, so it must not be dropped as a refusal.
    telemetry = make_sender(max_attempts=2)
    expected = record_traffic(telemetry)
    receiver.respond_with(status, times=2)
    errors = telemetry.internal_errors
    assert telemetry.flush() is False
    assert telemetry.internal_errors == errors  # not counted as a refusal
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected


@pytest.mark.parametrize("where", ["report", "session"])
def test_a_redirect_is_not_followed_keeps_the_data_and_is_named_once(
    make_sender, receiver, where, caplog
):
    telemetry = make_sender()
    expected = record_traffic(telemetry)
    location = "https://elsewhere.example/v1/" + where
    if where == "session":
        telemetry.flusher.transport._session = None
        receiver.respond_to_session_with(301, headers={"Location": location}, times=5)
    else:
        receiver.respond_with(307, headers={"Location": location}, times=5)
    before, sessions = len(receiver.requests), len(receiver.sessions)
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert telemetry.flush() is False
        assert telemetry.flush() is False
    # Asked once per flush, never retried within it, never followed.
    assert len(receiver.requests) - before == (2 if where == "report" else 0)
    assert len(receiver.sessions) - sessions == (0 if where == "report" else 2)
    # The redirect is named once (the warning about failures in a row, said
    # once per process whichever test comes first, quotes it too: not counted).
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "redirects are not followed" in r.message
    ]
    assert len(warnings) == 1 and location in warnings[0].message
    receiver.reset()
    telemetry.flusher.transport._session = None
    assert telemetry.flush() is True  # kept, not dropped
    assert delivered(receiver, telemetry) == expected


def test_a_redirect_is_logged_without_its_credentials_or_query(make_sender, receiver, caplog):
    # A redirect to a login page or a signed URL may carry a token.
    telemetry = make_sender()
    record_traffic(telemetry)
    location = "https://ops:SECRET1@elsewhere.example/v1/report?key=SECRET2"
    receiver.respond_with(308, headers={"Location": location}, times=5)
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert telemetry.flush() is False
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "https://elsewhere.example/v1/report" in logged
    assert "SECRET" not in logged
    assert "SECRET" not in str(telemetry.flusher.last_result)


def test_a_redirect_to_an_unparseable_location_is_still_the_redirect_warning(
    make_sender, receiver, caplog
):
    telemetry = make_sender()
    record_traffic(telemetry)
    receiver.respond_with(302, headers={"Location": "https://[sso.example/login?t=SECRET"})
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert telemetry.flush() is False
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "redirects are not followed" in logged and "SECRET" not in logged
    assert telemetry.internal_errors == 0


@pytest.mark.parametrize(("status", "delivered_now"), [(200, True), (503, False)])
def test_an_answer_longer_than_any_collectors_is_judged_by_its_status_alone(
    make_sender, receiver, status, delivered_now
):
    # Not read past MAX_ANSWER_BYTES; a stored report must not be sent twice.
    telemetry = make_sender(max_attempts=1)
    expected = record_traffic(telemetry)
    padding = {"next_interval": 7200, "padding": "x" * (MAX_ANSWER_BYTES + 1)}
    receiver.respond_with(status, json=padding)
    assert telemetry.flush() is delivered_now
    if not delivered_now:
        assert telemetry.flush() is True  # kept, and delivered on the next try
    assert delivered(receiver, telemetry) == expected
    assert telemetry.flusher.interval == telemetry.config.flush_interval  # body not read


@contextlib.contextmanager
def raw_http_server(answer: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A loopback server whose every connection gets ``answer`` (after its request
    is read): for answers no well-behaved server would give. Yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection, contextlib.suppress(OSError):
                connection.recv(65536)
                answer(connection, stop)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        server.join(5)


def test_an_endless_answer_is_not_read_into_memory(make_sender):
    # A wrong endpoint streaming a file: read until the deadline, it once took
    # 1.8 GB of the app's memory in 5 s. Now the attempt ends after 64 KiB.
    def endless(connection: socket.socket, stop: threading.Event) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n")
        while not stop.is_set():
            connection.sendall(b"\0" * 65536)

    with raw_http_server(endless) as url:
        telemetry = make_sender(endpoint=url, timeout=30.0, max_attempts=1)
        record_traffic(telemetry)
        started = time.monotonic()
        assert telemetry.flush(timeout=60) is False
        assert time.monotonic() - started < 10  # not the 30 s deadline
        assert "bad answer" in telemetry.flusher.last_result.error  # no token in it
        assert telemetry.snapshot()  # kept


def test_a_compressed_answer_is_not_inflated(make_sender, receiver):
    # Answers are asked for as they are; 1,827 bytes of gzip inside gzip once
    # inflated to 1 GiB in the app's memory, well under the 64 KiB cap.
    telemetry = make_sender()
    record_traffic(telemetry)
    assert telemetry.flush() is True
    assert receiver.requests[-1].headers["accept-encoding"] == "identity"
    bomb = gzip.compress(gzip.compress(b"{" + b" " * (64 << 20) + b"}"))
    assert len(bomb) < MAX_ANSWER_BYTES

    def compressed(connection: socket.socket, stop: threading.Event) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip, gzip\r\nContent-Length: {len(bomb)}"
        connection.sendall(head.encode() + b"\r\n\r\n" + bomb)

    with raw_http_server(compressed) as url:
        telemetry = make_sender(endpoint=url, max_attempts=1)
        record_traffic(telemetry)
        assert telemetry.flush() is False
        assert "bad answer" in telemetry.flusher.last_result.error  # judged without its body
        assert telemetry.snapshot()  # kept


def test_an_endpoint_with_a_path_and_a_query_keeps_both(make_sender, receiver):
    # An API gateway's key in the query stays the query: it once became the
    # start of the path, and no report was ever delivered.
    telemetry = make_sender(endpoint=receiver.url + "/ingest/?key=abc%20def")
    expected = record_traffic(telemetry)
    assert telemetry.flush() is True
    assert {(r.path, r.query) for r in receiver.requests} == {
        ("/ingest/v1/report", "key=abc%20def")
    }
    assert delivered(receiver, telemetry) == expected


def test_collector_down_then_up_again(make_sender, receiver):
    telemetry = make_sender()
    expected = record_traffic(telemetry)
    receiver.stop()
    assert telemetry.flush() is False
    assert telemetry.flush() is False
    expected += record_traffic(telemetry, routes=2, each=3)
    receiver.start()  # the same port again
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected


def test_collector_down_at_startup(make_sender, receiver):
    receiver.stop()
    telemetry = make_sender()
    expected = record_traffic(telemetry)
    receiver.start()
    assert telemetry.flush() is True
    reports = receiver.reports_from(telemetry.instance_id)
    assert [r["kind"] for r in reports] == ["periodic"]  # the startup report went into it
    assert reports[0]["sequence"] == 1
    assert delivered(receiver, telemetry) == expected


def test_slow_collector_within_the_timeout_is_waited_for(make_sender, receiver):
    telemetry = make_sender(timeout=2.0)
    expected = record_traffic(telemetry)
    receiver.respond_with(delay=0.15)
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected


def test_slow_collector_past_the_timeout_loses_and_duplicates_nothing(make_sender, receiver):
    # The collector stores the report but answers after the client gave up.
    # The retry carries the same stamp, is refused as a replay, and that tells
    # the client its report got through: counted once, and nothing merged back.
    telemetry = make_sender(timeout=0.3, max_attempts=2)
    expected = record_traffic(telemetry)
    receiver.respond_with(delay=5)
    before = len(receiver.requests)
    assert telemetry.flush() is True
    attempts = receiver.requests[before:]
    assert [r.replay for r in attempts] == [False, True]
    assert attempts[0].envelope["stamp"] == attempts[1].envelope["stamp"]
    assert telemetry.recorder.snapshot() == []  # delivered: nothing kept for later
    assert delivered(receiver, telemetry) == expected


def test_a_report_whose_every_answer_was_lost_goes_again_with_its_stamp(make_sender, receiver):
    """Stored, but its answer held past the timeout (by a proxy, say): the
    report is kept as it is, not merged back, and goes first at the next
    flush with the same stamp, which the collector knows (409). Merged back,
    its data went again under a new stamp and counted twice."""
    telemetry = make_sender(timeout=0.3, max_attempts=1)
    expected = record_traffic(telemetry)
    receiver.respond_with(delay=5)
    before = len(receiver.requests)
    assert telemetry.flush() is False
    (lost,) = receiver.requests[before:]
    assert lost.accepted  # stored; the client never heard so
    assert telemetry.recorder.snapshot() == []  # kept whole, not merged back
    expected += record_traffic(telemetry, routes=2, each=3)
    before = len(receiver.requests)
    assert telemetry.flush() is True
    again, new = receiver.requests[before:]
    assert again.raw_body and again.envelope["stamp"] == lost.envelope["stamp"]
    assert again.envelope["payload"] == lost.envelope["payload"]
    assert again.replay and new.accepted
    assert telemetry.flusher.unconfirmed is None
    assert delivered(receiver, telemetry) == expected  # every request once


def test_an_unconfirmed_report_holds_back_the_next_flush_until_it_is_settled(make_sender, receiver):
    """While the collector's answers are still lost, the kept report goes
    again alone (with its stamp), and the new data waits in the recorder:
    at most one report is ever kept that way."""
    telemetry = make_sender(timeout=0.3, max_attempts=1)
    expected = record_traffic(telemetry)
    receiver.respond_with(502)  # a proxy's: the collector may have stored it
    assert telemetry.flush() is False
    stamp = receiver.requests[-1].envelope["stamp"]
    for _ in range(2):
        expected += record_traffic(telemetry, routes=1, each=2)
        receiver.respond_with(504)
        before = len(receiver.requests)
        assert telemetry.flush() is False
        (sent,) = receiver.requests[before:]
        assert sent.envelope["stamp"] == stamp
    assert telemetry.flusher.unconfirmed is not None
    assert record_counts([{"batch": {"records": telemetry.recorder.snapshot()}}]) == Counter(
        {("GET", "/route/0", 200): 4}
    )
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected


#: Answers to a report, and whether the collector may hold it after them.
FAILED_ANSWERS = {
    "the collector's 503": (dict(status=503, json=UNAVAILABLE), False),
    "a mesh's bare 503": (dict(status=503, json={}), True),
    "the collector's unconfirmed commit": (dict(status=503, json={"error": "unconfirmed"}), True),
    "a proxy's 502": (dict(status=502), True),
    "a proxy's 504": (dict(status=504), True),
    "a 500": (dict(status=500), True),
    "429": (dict(status=429), False),
    "no answer in time": (dict(status=200, delay=5), True),
}


@pytest.mark.parametrize("answer", list(FAILED_ANSWERS))
def test_a_failure_that_may_hide_a_stored_report_keeps_it_as_it_is(make_sender, receiver, answer):
    """Which failures may come after the collector stored the report: they
    keep it whole, with its stamp; the others (the collector's own 503, a
    429) merge the data back, as an outage does: nothing to confirm."""
    planned, may_hide = FAILED_ANSWERS[answer]
    telemetry = make_sender(timeout=0.3, max_attempts=1)
    expected = record_traffic(telemetry)
    receiver.respond_with(**planned)
    assert telemetry.flush() is False
    sent = telemetry.flusher.last_result.sent
    assert sent is not None and sent.maybe_stored is may_hide
    if may_hide:
        assert telemetry.flusher.unconfirmed is not None
        assert telemetry.recorder.snapshot() == []
    else:
        assert telemetry.flusher.unconfirmed is None
        assert record_counts([{"batch": {"records": telemetry.recorder.snapshot()}}]) == expected
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected


@pytest.mark.parametrize("status", [403, 404, 405])
def test_a_gateways_refusal_of_a_report_keeps_its_data(make_sender, receiver, status):
    """The collector refuses no report with these: a gateway in front does (a
    key in the endpoint's query being rotated, a route missing). Refused on
    the session request, the data was kept; refused on a report, while the
    session was reused (for up to an hour), the data was dropped for good."""
    telemetry = make_sender(max_attempts=1)
    expected = record_traffic(telemetry)
    receiver.respond_with(status, json={"message": "Forbidden"})
    assert telemetry.flush() is False
    assert telemetry.internal_errors == 0
    assert record_counts([{"batch": {"records": telemetry.recorder.snapshot()}}]) == expected
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected


class RefusingTunnelProxy:
    """An HTTP proxy on loopback that refuses every tunnel (``502`` to
    ``CONNECT``), or, with ``tls=False``, grants it and then speaks no TLS."""

    def __init__(self, grant: bool) -> None:
        self.grant = grant
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.listener.accept()
                with connection:
                    connection.recv(65536)
                    if not self.grant:
                        connection.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                        continue
                    connection.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    connection.recv(65536)  # the TLS client hello
                    connection.sendall(b"no TLS here\r\n")

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("grant", [False, True], ids=["tunnel-refused", "no-tls-in-tunnel"])
def test_a_report_that_never_got_through_its_proxy_tunnel_is_not_held(grant):
    """A tunnel that failed carries nothing of the report: its data merges
    back. The tunnel's own CONNECT request used to count as the report's
    body written, and the report was held as if it could be stored."""
    from reqtelemetry.transport import Transport

    proxy = RefusingTunnelProxy(grant)
    config = make_config(endpoint="https://collector.example", proxy=proxy.url)
    transport = Transport(config)
    try:
        result = transport.send_once(b'{"token":"t","stamp":"s","payload":"{}"}', timeout=5)
    finally:
        transport.close()
        proxy.close()
    assert result.outcome is Outcome.FAILED, result
    assert result.maybe_stored is False, result.error


def test_a_proxy_asking_for_credentials_keeps_the_data(make_sender, receiver):
    """A forward proxy's 407 to the report is its setting at fault: the data
    waits for the next flush. Taken as the collector refusing the report, it
    was dropped."""
    telemetry = make_sender(max_attempts=3)
    expected = record_traffic(telemetry)
    receiver.respond_with(407)
    before = len(receiver.requests)
    assert telemetry.flush() is False
    assert len(receiver.requests) - before == 1  # the same answer would come again
    assert telemetry.internal_errors == 0
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected


def test_a_refused_connection_merges_the_data_back(make_sender, receiver):
    telemetry = make_sender(timeout=0.3, max_attempts=1)
    expected = record_traffic(telemetry)
    receiver.stop()
    assert telemetry.flush() is False
    assert telemetry.flusher.unconfirmed is None
    assert record_counts([{"batch": {"records": telemetry.recorder.snapshot()}}]) == expected
    receiver.start()
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected


def test_a_proxys_refusal_of_a_held_stamp_does_not_let_a_new_one_go(make_sender, receiver):
    """A 401 without the collector's reason is a proxy's: the collector did
    not look the stamp up, so the report keeps its stamp (a new one would
    count it twice if it was stored)."""
    telemetry = make_sender(timeout=0.3, max_attempts=1)
    expected = record_traffic(telemetry)
    receiver.respond_with(502)
    assert telemetry.flush() is False
    stamp = receiver.requests[-1].envelope["stamp"]
    receiver.respond_with(401, json={})
    assert telemetry.flush() is True  # its next attempt went with the same stamp
    with_it = [r.status for r in receiver.requests if r.envelope["stamp"] == stamp]
    assert with_it == [502, 401, 200]
    assert telemetry.flusher.unconfirmed is None
    assert delivered(receiver, telemetry) == expected


def test_at_shutdown_the_newest_data_goes_before_a_held_report(make_sender, receiver):
    """The final flush has 2 s by default. Sent first, the held report (its
    answers still lost) took it all, and the last period's data went nowhere."""
    telemetry = make_sender(timeout=1.0, max_attempts=1)
    expected = record_traffic(telemetry)
    receiver.respond_with(delay=5)
    assert telemetry.flush() is False
    assert telemetry.flusher.unconfirmed is not None
    expected += record_traffic(telemetry, routes=2, each=3)
    receiver.respond_always(200, delay=5)  # every answer still held
    telemetry.close(timeout=1.0)
    assert receiver.reports_from(telemetry.instance_id)[-1]["kind"] == "shutdown"
    assert delivered(receiver, telemetry) == expected


def test_a_slow_mint_that_takes_the_budget_is_not_taken_for_a_delivery(
    make_sender, receiver, monkeypatch
):
    """Minting and encoding that end past the budget end the delivery as
    not delivered. The open session's result was returned instead, as
    DELIVERED, and the flush dropped data it never sent."""
    telemetry = make_sender(timeout=1.0, max_attempts=1)
    expected = record_traffic(telemetry)
    transport = telemetry.flusher.transport
    real_mint = transport._mint

    def mint_until_past(resource, bits, timeout, idle=True):
        stamp = real_mint(resource, bits, timeout, idle)
        time.sleep(timeout + 0.05)  # as a busy machine's idle-priority child can
        return stamp

    monkeypatch.setattr(transport, "_mint", mint_until_past)
    before = len(receiver.requests)
    assert telemetry.flush(timeout=0.3) is False
    assert receiver.requests[before:] == []
    assert telemetry.flusher.last_result.outcome is Outcome.FAILED
    monkeypatch.setattr(transport, "_mint", real_mint)
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected


class TricklingServer:
    """A real HTTP server on loopback that answers one byte every ``pause`` seconds.

    Each byte comes well within httpx's read timeout, so only a deadline on
    the whole request ends it. ``session_too=False`` answers ``/v1/session``
    at once (the report's answer trickles).
    """

    def __init__(self, session_too: bool, pause: float = 0.25) -> None:
        self.pause = pause
        self.session_too = session_too
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            request = connection.recv(65536)
            if request.startswith(b"POST /v1/session") and not self.session_too:
                body = json.dumps(
                    {"token": "t.t", "expires_at": time.time() + 3600, "bits": 1}
                ).encode()
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + b"Content-Length: %d\r\n\r\n" % len(body)
                    + body
                )
                return
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n" + b" " * 200
            for byte in answer:  # some 60 s in all
                if self.closed.is_set():
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(self.pause)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


@pytest.mark.parametrize("session_too", [True, False], ids=["session-trickles", "report-trickles"])
def test_a_trickling_answer_cannot_stretch_a_flush_past_its_budget(
    make_sender, counts, session_too
):
    server = TricklingServer(session_too)
    try:
        telemetry = make_sender(endpoint=server.url, timeout=1.0)  # the startup flush ended
        expected = record_traffic(telemetry)
        started = time.monotonic()
        assert telemetry.flush() is False  # a budget of 2 * timeout
        assert time.monotonic() - started < 20  # a hang check: the trickle takes a minute
        assert "cut off" in (telemetry.flusher.last_result.error or "")
        assert counts(telemetry) == expected  # kept for the next flush
    finally:
        server.close()


def test_a_name_lookup_past_the_deadline_cannot_stretch_a_flush_past_its_budget(
    make_sender, counts, monkeypatch
):
    # The deadline's cut shuts the sockets open when it fires. A name lookup
    # still under way then (a nameserver that does not answer) left none to
    # cut, the cut came once, and the socket connected afterwards was bounded
    # only by httpx's per-step timeouts: a trickling answer held a flush with
    # a 2 s budget for its whole minute (the review's: for hours).
    server = TricklingServer(session_too=True)
    port = server.url.rsplit(":", 1)[1]
    resolve = socket.getaddrinfo

    def slow_lookup(host, *args, **kwargs):
        if host == "slow-nameserver.test":
            time.sleep(1.5)  # past the request's 1 s deadline
            host = "127.0.0.1"
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
    try:
        telemetry = make_sender(endpoint=f"http://slow-nameserver.test:{port}", timeout=1.0)
        expected = record_traffic(telemetry)
        started = time.monotonic()
        assert telemetry.flush() is False  # a budget of 2 * timeout
        # Each attempt overshoots its deadline by the lookup, and no more.
        assert time.monotonic() - started < 8  # without the fix: the trickle's minute
        assert counts(telemetry) == expected  # kept for the next flush
    finally:
        server.close()


GREEN_TRICKLE = """
from gevent import monkey

monkey.patch_all()

import json, sys, time
from reqtelemetry import Telemetry, hashcash
from reqtelemetry.config import Config
from reqtelemetry.transport import SUBPROCESS_MINT_BITS

def no_child(*args, **kwargs):
    raise AssertionError("a minting child was started from a greenlet")

hashcash.mint_in_subprocess = no_child
config = Config.resolve(
    endpoint=sys.argv[1], send_in_tests=True, timeout=1.0, deployment_id_path=sys.argv[2],
    environ={},
)
telemetry = Telemetry(config=config)
# As a first request would: the startup flush goes now, not after its grace of a minute.
telemetry.note_first_request(None)
started = time.monotonic()
while telemetry.flusher.last_result is None:  # the startup flush, cut off too
    time.sleep(0.05)
startup_took = time.monotonic() - started
telemetry.record("GET", "/items/{id}", 200, 0.01, 0, 10)
started = time.monotonic()
flushed = telemetry.flush()
took = time.monotonic() - started
stamp = telemetry.flusher.transport._mint("resource", SUBPROCESS_MINT_BITS, 20.0)
print(json.dumps({
    "flushed": flushed, "took": took, "error": telemetry.flusher.last_result.error,
    "startup_took": startup_took,
    "kept": len(telemetry.snapshot()),
    "stamp_ok": hashcash._meets(stamp, "resource", SUBPROCESS_MINT_BITS),
}))
"""


def test_under_gevent_a_trickling_answer_is_cut_off_and_no_child_mints(tmp_path):
    """The flusher as a greenlet: the deadline is a ``gevent.Timeout``, not a
    timer thread (whose end gevent's threading failed on, a traceback per
    report), and stamps are minted in slices, not by a child whose fork ran
    gevent's fork hook into a failed assertion."""
    pytest.importorskip("gevent")
    server = TricklingServer(session_too=False)
    try:
        done = subprocess.run(
            [sys.executable, "-c", GREEN_TRICKLE, server.url, str(tmp_path / "id")],
            capture_output=True,
            text=True,
            timeout=90,
            env=child_environment(),
        )
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    result = json.loads(done.stdout)
    assert result["flushed"] is False
    assert result["took"] < 20  # a hang check: the trickle takes a minute
    assert result["startup_took"] < 20  # the startup flush is cut off as well
    assert "cut off" in result["error"]
    assert result["kept"] == 1  # kept for the next flush
    assert result["stamp_ok"]


class Relay:
    """A real relay on loopback in front of the receiver: an HTTP forward proxy
    (``proxy=True``: request targets in absolute form are made relative) or,
    with ``tls``, a TLS terminator. ``connections`` counts who came through."""

    def __init__(self, target_port: int, *, proxy: bool = False, tls=None) -> None:
        self.target_port, self.proxy, self.tls = target_port, proxy, tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(connection,), daemon=True).start()

    def _relay(self, connection: socket.socket) -> None:
        try:
            if self.tls is not None:
                connection = self.tls.wrap_socket(connection, server_side=True)
        except (OSError, ssl.SSLError):
            connection.close()
            return
        self.connections += 1
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=self._pipe, args=(upstream, connection, False), daemon=True).start()
        self._pipe(connection, upstream, self.proxy)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, rewrite: bool) -> None:
        try:
            while data := source.recv(65536):
                if rewrite:
                    data = re.sub(rb"^([A-Z]+) http://[^/ ]+/", rb"\1 /", data, flags=re.M)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def test_reports_go_through_the_configured_proxy(make_sender, receiver, monkeypatch):
    proxy = Relay(receiver.port, proxy=True)
    try:
        # A host that does not resolve: only the proxy can reach the "collector".
        monkeypatch.setenv("REQTELEMETRY_PROXY", f"http://127.0.0.1:{proxy.port}")
        config = reqtelemetry.Config.resolve(
            endpoint=f"http://collector.invalid:{receiver.port}", environ=dict(os.environ)
        )
        assert config.proxy == f"http://127.0.0.1:{proxy.port}"
        telemetry = make_sender(endpoint=config.endpoint, proxy=config.proxy)
        expected = record_traffic(telemetry)
        assert telemetry.flush() is True
        assert delivered(receiver, telemetry) == expected
        assert proxy.connections >= 1
    finally:
        proxy.close()


@pytest.fixture
def private_ca(tmp_path):
    """A self-signed certificate for 127.0.0.1: (certificate path, server context)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    return str(cert), context


def test_a_collector_behind_a_private_ca_is_reached_with_ca_bundle(
    make_sender, receiver, private_ca, caplog, monkeypatch
):
    cert, context = private_ca
    terminator = Relay(receiver.port, tls=context)
    endpoint = f"https://127.0.0.1:{terminator.port}"
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # the app's environment is not ours to use
    try:
        unaware = make_sender(endpoint=endpoint)
        record_traffic(unaware)
        with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
            assert unaware.flush() is False  # the startup report failed too: two in a row
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "CERTIFICATE_VERIFY_FAILED" in warnings[0], warnings
        telemetry = make_sender(endpoint=endpoint, ca_bundle=cert)
        expected = record_traffic(telemetry)
        assert telemetry.flush() is True
        assert delivered(receiver, telemetry) == expected
    finally:
        terminator.close()


def test_the_warning_about_failed_reports_shows_no_credentials(make_sender, receiver, caplog):
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    telemetry = make_sender(endpoint=f"http://svc:canary-password@127.0.0.1:{port}")
    record_traffic(telemetry)
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert telemetry.flush() is False  # the startup report failed too: two in a row
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"http://127.0.0.1:{port}" in warning
    assert "canary" not in warning


def test_an_error_page_quoting_the_request_shows_no_credentials(make_sender, receiver, caplog):
    # A proxy's or gateway's error page may quote the request it refused,
    # query and all; the warning quotes the page, and the key the redacted
    # endpoint hid came back through it.
    endpoint = receiver.url.replace("http://", "http://svc:canary-password@") + "/?key=canary-key"
    receiver.respond_always(
        400,
        json={"detail": "cannot serve POST /v1/session?key=canary-key for svc:canary-password"},
    )
    telemetry = make_sender(endpoint=endpoint, settled=False)
    record_traffic(telemetry)
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert telemetry.flush() is False
        assert telemetry.flush() is False  # two in a row: the warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("cannot serve POST /v1/session?*** for ***" in message for message in warnings)
    assert not [r for r in caplog.records if "canary" in r.getMessage()]
    assert telemetry.flusher is not None and telemetry.flusher.last_result is not None
    assert "canary" not in (telemetry.flusher.last_result.error or "")


def test_httpx_logs_none_of_reqtelemetrys_requests(make_sender, receiver, caplog):
    # httpx logs every request's whole URL at INFO: the endpoint's credentials
    # and key reached the app's logs, a line per report and session.
    endpoint = receiver.url.replace("http://", "http://svc:canary-password@") + "/?key=canary-key"
    telemetry = make_sender(endpoint=endpoint, settled=False)
    record_traffic(telemetry)
    with caplog.at_level(logging.DEBUG):
        assert telemetry.flush() is True
        # The app's own request through httpx: still logged.
        answer_locally = httpx.MockTransport(lambda request: httpx.Response(204))
        with httpx.Client(transport=answer_locally) as apps_own:
            apps_own.get("http://app.example/the-apps-own-request")
    assert receiver.reports_from(telemetry.instance_id), "nothing was sent"
    assert not [r for r in caplog.records if "canary" in r.getMessage()]
    from_httpx = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert not [message for message in from_httpx if "/v1/" in message]
    assert [message for message in from_httpx if "/the-apps-own-request" in message]


def test_only_the_sending_green_thread_has_its_httpx_lines_dropped():
    # A threading.local made at import, before gevent patched threading
    # (gunicorn -k gevent --preload), was one for every greenlet: the app's
    # own httpx lines went missing while a report was being sent.
    greenlet = pytest.importorskip("greenlet")
    from reqtelemetry.transport import _OWN_REQUESTS_UNLOGGED, _sending

    def httpx_line() -> logging.LogRecord:
        return logging.LogRecord(
            "httpx", logging.INFO, __file__, 1, "HTTP Request: %s", ("GET http://app/",), None
        )

    kept: dict[str, bool] = {}
    main = greenlet.getcurrent()

    def apps_own() -> None:
        kept["the app's"] = _OWN_REQUESTS_UNLOGGED.filter(httpx_line())
        main.switch()

    def sending() -> None:
        token = _sending.set(True)
        try:
            greenlet.greenlet(apps_own).switch()  # the app runs while the report waits
            kept["reqtelemetry's"] = _OWN_REQUESTS_UNLOGGED.filter(httpx_line())
        finally:
            _sending.reset(token)

    sender = greenlet.greenlet(sending)
    sender.switch()  # back here when the app's greenlet yields
    sender.switch()  # the sender finishes
    assert kept == {"the app's": True, "reqtelemetry's": False}


def test_proxy_and_ca_bundle_are_checked_at_start(tmp_path):
    with pytest.raises(ValueError, match="proxy"):
        reqtelemetry.Config.resolve(environ={"REQTELEMETRY_PROXY": "127.0.0.1:3128"})
    with pytest.raises(ValueError, match="ca_bundle"):
        reqtelemetry.Config.resolve(
            endpoint="https://collector.example",
            environ={"REQTELEMETRY_CA_BUNDLE": str(tmp_path / "missing.pem")},
        )
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    config = reqtelemetry.Config.resolve(environ={"REQTELEMETRY_CA_BUNDLE": str(bundle)})
    assert config.ca_bundle == str(bundle)


def test_a_report_that_could_not_be_sent_at_all_is_kept_for_the_next_flush(make_sender, receiver):
    telemetry = make_sender(max_attempts=1)
    expected = record_traffic(telemetry)
    receiver.stop()
    assert telemetry.flush() is False
    receiver.start()
    expected += record_traffic(telemetry, routes=1, each=1)
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected


def test_a_refused_report_is_not_reported_as_delivered(make_sender, receiver):
    telemetry = make_sender()
    record_traffic(telemetry)
    receiver.respond_with(400, json={"error": "bad report"})
    before = len(receiver.requests)
    assert telemetry.flush() is False
    assert len(receiver.requests) - before == 1  # retrying cannot help: not retried
    assert telemetry.flush() is True
    assert receiver.reports_from(telemetry.instance_id)[-1]["internal_errors"] >= 1


# -- splitting ---------------------------------------------------------------------------


def long_routes(telemetry: Telemetry, n: int) -> Counter:
    expected: Counter = Counter()
    for i in range(n):
        route = f"/a/rather/long/route/template/number/{i}/" + "x" * 40
        for status in (200, 404):
            telemetry.record("GET", route, status, 0.001 * (1 + i % 50), 3, 300)
            expected[("GET", route, status)] += 1
    return expected


def test_large_batches_are_split_into_parts_within_max_payload_bytes(make_sender, receiver):
    limit = 16384
    telemetry = make_sender(max_payload_bytes=limit, max_keys=500)
    expected = long_routes(telemetry, 300)  # 600 keys: 100 past the cap
    telemetry.count("jobs.done", 3)
    before = len(receiver.requests)
    assert telemetry.flush() is True
    sent = receiver.requests[before:]
    parts = [r.payload for r in sent]
    assert len(parts) > 2
    for request in sent:
        assert len(request.body) <= limit  # measured before compression
    assert {p["sequence"] for p in parts} == {parts[0]["sequence"]}
    assert sorted(p["part"] for p in parts) == list(range(len(parts)))
    assert {p["parts"] for p in parts} == {len(parts)}
    # Totals travel once, with part 0.
    assert [p["metrics"]["counters"] for p in parts] == [{"jobs.done": 3}] + [{}] * (len(parts) - 1)
    assert [p["batch"]["dropped"] for p in parts] == [100] + [0] * (len(parts) - 1)
    counts = record_counts(parts)
    assert counts[OVERFLOW_KEY] == 100
    assert sum(counts.values()) == sum(expected.values())
    assert len(counts) == 501


def one_request_per_route(routes: int) -> tuple[Envelope, Batch]:
    """A periodic report's envelope, and a batch of ``routes`` keys of one request each."""
    recorder = Recorder(max_keys=routes)
    for i in range(routes):
        recorder.record("GET", f"/r/{i}", 200, 0.001, 0, 0)
    envelope = Envelope(
        kind="periodic",
        sequence=0,
        deployment_id=str(uuid.uuid4()),
        instance_id=str(uuid.uuid4()),
        traits={},
        withheld=[],
        metrics={"counters": {}, "gauges": {}},
    )
    return envelope, recorder.collect()


def test_parts_also_respect_the_schemas_record_limit():
    """A generous max_payload_bytes must not produce a part the schema refuses."""
    envelope, batch = one_request_per_route(12000)
    reports = build_reports(envelope, batch, max_bytes=16 * 1024 * 1024, pacing=UNPACED)
    payloads = [json.loads(report.body) for report in reports]
    assert len(payloads) == 2
    assert all(len(p["batch"]["records"]) <= 10000 for p in payloads)  # the schema's maxItems
    assert sum(record_counts(payloads).values()) == 12000
    assert [len(report.keys) for report in reports] == [
        len(p["batch"]["records"]) for p in payloads
    ]


def test_a_failed_part_is_put_back_and_nothing_is_counted_twice(make_sender, receiver):
    telemetry = make_sender(max_payload_bytes=16384, max_attempts=2)
    expected = long_routes(telemetry, 200)
    telemetry.count("jobs.done", 5)
    receiver.respond_with(200)  # part 0 arrives ...
    receiver.respond_always(500)  # ... the rest does not
    assert telemetry.flush() is False
    assert len(receiver.reports_from(telemetry.instance_id)) == 2  # startup, part 0
    receiver.respond_always(200)
    assert telemetry.flush() is True
    reports = receiver.reports_from(telemetry.instance_id)
    assert record_counts(reports) == expected
    assert sum(r["metrics"]["counters"].get("jobs.done", 0) for r in reports) == 5


# -- a collector whose body cap is below max_payload_bytes (413) ---------------------------


def key_occurrences(reports) -> Counter:
    """In how many reports each (method, route, status) appears."""
    return Counter(
        (r["method"], r["route"], r["status"]) for p in reports for r in p["batch"]["records"]
    )


def assert_parts_are_consistent(reports) -> dict[int, list[int]]:
    """Within a sequence: one ``parts``, distinct ``part``s below it. Parts per sequence."""
    by_sequence: dict[int, list[dict]] = {}
    for report in reports:
        by_sequence.setdefault(report["sequence"], []).append(report)
    for sequence, parts in by_sequence.items():
        assert len({p["parts"] for p in parts}) == 1, sequence
        numbers = [p["part"] for p in parts]
        assert len(set(numbers)) == len(numbers), sequence
        assert all(0 <= n < parts[0]["parts"] for n in numbers), sequence
    return {s: sorted(p["part"] for p in parts) for s, parts in by_sequence.items()}


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_413_sends_the_batch_again_in_smaller_parts_and_later_flushes_start_there(
    make_sender, receiver, caplog
):
    telemetry = make_sender()  # max_payload_bytes: 256 KiB, one body for all of it
    expected = long_routes(telemetry, 200)  # 400 keys, some 140 kB of report
    telemetry.count("jobs.done", 7)
    receiver.max_body_bytes = cap = 20000
    before = len(receiver.requests)
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert telemetry.flush() is True
    sent = receiver.requests[before:]
    assert sent[0].status == 413
    accepted = [r for r in sent if r.accepted]
    assert len(accepted) > 2 and all(len(r.body) <= cap for r in accepted)
    reports = [r.payload for r in accepted]
    # Every request counted arrives exactly once; the totals once, with part 0.
    assert record_counts(reports) == expected
    assert set(key_occurrences(reports).values()) == {1}
    assert counter_totals(reports) == {"jobs.done": 7}
    # Nothing of the batch was stored before the 413s: its sequence, parts numbered afresh.
    assert assert_parts_are_consistent(reports) == {
        telemetry.flusher.sequence - 1: list(range(len(reports)))
    }
    warnings = warnings_in(caplog)
    assert len(warnings) == 1 and "max_payload_bytes=262144" in warnings[0], warnings
    assert flusher_module.MIN_SPLIT_BYTES <= telemetry.flusher.max_payload_bytes <= cap

    # The next flush splits at the size learnt: no 413, and no second warning.
    again = long_routes(telemetry, 150)
    caplog.clear()
    before = len(receiver.requests)
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert telemetry.flush() is True
    sent = receiver.requests[before:]
    assert len(sent) > 1 and all(r.accepted for r in sent)
    assert record_counts(r.payload for r in sent) == again
    assert warnings_in(caplog) == []


def test_a_413_after_parts_were_stored_numbers_the_rest_as_a_new_sequence(make_sender, receiver):
    telemetry = make_sender(max_payload_bytes=16384)
    expected = long_routes(telemetry, 200)  # several parts
    telemetry.count("jobs.done", 2)
    receiver.respond_with(200)  # part 0 is stored ...
    receiver.respond_with(413, json={"error": "too_large"})  # ... part 1 is too large
    before = len(receiver.requests)
    assert telemetry.flush() is True
    first, refused, *rest = receiver.requests[before:]
    assert first.accepted and refused.status == 413 and all(r.accepted for r in rest)
    sequence, parts = first.payload["sequence"], first.payload["parts"]
    assert parts > 2
    # Part 0 keeps its numbering; what part 1 and the parts after it carried
    # comes as the next sequence, complete, split at half the refused size.
    reports = [first.payload] + [r.payload for r in rest]
    assert assert_parts_are_consistent(reports) == {
        sequence: [0],
        sequence + 1: list(range(len(rest))),
    }
    assert telemetry.flusher.max_payload_bytes == len(refused.body) // 2
    assert all(len(r.body) <= len(refused.body) // 2 for r in rest)
    assert record_counts(reports) == expected
    assert set(key_occurrences(reports).values()) == {1}
    assert [r["metrics"]["counters"] for r in reports] == [{"jobs.done": 2}] + [{}] * len(rest)
    assert telemetry.flush() is True
    assert receiver.requests[-1].payload["sequence"] == sequence + 2


def wide_histogram(telemetry: Telemetry, route: str = "/export/{report}") -> int:
    """Record one key whose record alone takes some 5 kB (1,100 latency buckets)."""
    for i in range(1100):
        telemetry.record("GET", route, 200, 1e-6 * 1.02**i, 0, 0)
    return 1100


def test_records_too_large_even_alone_are_said_once_however_many(make_sender, receiver, caplog):
    """A gateway that refuses every body drops the records one by one: a
    WARNING each was a line per key in every flush (1,000 at the key cap)."""
    telemetry = make_sender()
    lost = sum(wide_histogram(telemetry, f"/export/{n}/{{report}}") for n in range(4))
    receiver.max_body_bytes = 5000  # below each wide record
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert telemetry.flush() is False
        assert telemetry.snapshot() == []  # all four were dropped ...
        dropped = [m for m in warnings_in(caplog) if "refused a report of one record" in m]
        assert len(dropped) == 1  # ... and said once
        said = [r.getMessage() for r in caplog.records if "of one record" in r.getMessage()]
        assert len(said) == 4  # the rest at DEBUG
    receiver.max_body_bytes = None
    assert telemetry.flush() is True
    assert receiver.requests[-1].payload["batch"]["dropped"] == lost


def test_a_single_record_over_the_collectors_cap_is_dropped_and_counted(
    make_sender, receiver, caplog
):
    telemetry = make_sender()
    lost = wide_histogram(telemetry)  # first: alone in part 0, with the totals
    expected = record_traffic(telemetry, routes=40, each=2)
    telemetry.count("jobs.done", 4)
    receiver.max_body_bytes = 5000  # below the wide record, above the floor's parts
    before = len(receiver.requests)
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert telemetry.flush() is False  # not everything was delivered
    sent = receiver.requests[before:]
    reports = [r.payload for r in sent if r.accepted]
    assert record_counts(reports) == expected
    assert set(key_occurrences(reports).values()) == {1}
    # Part 0 was tried once more without its totals, which wait for the next report.
    assert counter_totals(reports) == {}
    assert sum(r["batch"]["dropped"] for r in reports) == 0
    warnings = warnings_in(caplog)
    assert len(warnings) == 2, warnings
    assert "max_payload_bytes" in warnings[0]
    assert f"one record ({lost} requests)" in warnings[1]
    assert telemetry.internal_errors == 0
    # The loss shows in the next report, as requests dropped.
    before = len(receiver.requests)
    assert telemetry.flush() is True
    (report,) = [r.payload for r in receiver.requests[before:]]
    assert report["batch"]["dropped"] == lost
    assert report["batch"]["records"] == []
    assert report["metrics"]["counters"] == {"jobs.done": 4}


def test_a_413_below_the_smallest_split_keeps_the_data(make_sender, receiver):
    telemetry = make_sender()
    expected = record_traffic(telemetry, routes=60, each=2)
    receiver.max_body_bytes = 3000  # below MIN_SPLIT_BYTES: reports that small are refused
    before = len(receiver.requests)
    assert telemetry.flush() is False
    assert not any(r.accepted for r in receiver.requests[before:])
    assert telemetry.flusher.max_payload_bytes == flusher_module.MIN_SPLIT_BYTES
    receiver.max_body_bytes = None  # the operator raised the collector's cap
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected


def test_a_413_to_a_report_of_totals_alone_ends_the_flush_and_keeps_them(make_sender, receiver):
    telemetry = make_sender()
    telemetry.count("jobs.done", 3)
    receiver.max_body_bytes = 500  # below any report: a proxy's tiny cap
    before = len(receiver.requests)
    assert telemetry.flush() is False
    assert len(receiver.requests[before:]) == 1  # not sent again and again
    receiver.max_body_bytes = None
    assert telemetry.flush() is True
    (counters,) = [
        r["metrics"]["counters"]
        for r in receiver.reports_from(telemetry.instance_id)
        if r["metrics"]["counters"]
    ]
    assert counters == {"jobs.done": 3}


def test_a_413_caused_by_the_totals_does_not_drop_the_records_one_by_one(make_sender, receiver):
    telemetry = make_sender()
    for i in range(60):
        telemetry.count(f"feature.some_rather_long_feature_name_number_{i:02d}", 1)
    expected = record_traffic(telemetry, routes=20, each=1)
    receiver.max_body_bytes = 4500  # parts without the metrics fit; part 0 with them does not
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected
    assert telemetry.recorder.snapshot() == []
    assert telemetry.flusher.max_payload_bytes >= flusher_module.MIN_SPLIT_BYTES


def test_a_malformed_session_answer_is_a_failed_attempt_and_the_batch_is_kept(
    make_sender, receiver
):
    # A number JSON allows but float() cannot take (OverflowError, not an
    # httpx error): the batch used to be discarded with the exception.
    telemetry = make_sender()
    expected = record_traffic(telemetry)
    telemetry.count("jobs.done", 2)
    receiver.respond_with(401)  # the token is refused: a new session is needed ...
    malformed = {"token": "t", "expires_at": 10**400, "bits": 0}
    # ... and comes back malformed each time: 3 attempts (max_attempts=3),
    # none of which the renewal after the 401 took.
    receiver.respond_to_session_with(200, json=malformed, times=3)
    sessions = len(receiver.sessions)
    assert telemetry.flush() is False
    assert len(receiver.sessions) == sessions + 3
    assert telemetry.internal_errors == 0  # a failed attempt, not a bug
    assert "bad answer" in telemetry.flusher.last_result.error
    assert telemetry.flush() is True
    assert delivered(receiver, telemetry) == expected
    reports = receiver.reports_from(telemetry.instance_id)
    assert sum(r["metrics"]["counters"].get("jobs.done", 0) for r in reports) == 2


def test_any_error_after_the_batch_is_taken_puts_back_what_was_not_delivered(
    make_sender, receiver, monkeypatch
):
    telemetry = make_sender(max_payload_bytes=16384)
    expected = long_routes(telemetry, 200)
    telemetry.count("jobs.done", 5)
    transport = telemetry.flusher.transport
    real_deliver = transport.deliver
    calls = []

    def deliver_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # part 0 went through the real transport; then a bug
            raise RuntimeError("a bug after the batch was taken")
        return real_deliver(*args, **kwargs)

    monkeypatch.setattr(transport, "deliver", deliver_then_fail)
    assert telemetry.flush() is False
    assert telemetry.internal_errors == 1
    assert len(receiver.reports_from(telemetry.instance_id)) == 2  # startup, part 0
    monkeypatch.setattr(transport, "deliver", real_deliver)
    assert telemetry.flush() is True
    reports = receiver.reports_from(telemetry.instance_id)
    assert record_counts(reports) == expected  # nothing lost, nothing counted twice
    assert sum(r["metrics"]["counters"].get("jobs.done", 0) for r in reports) == 5


def test_merged_back_batch_respects_the_key_cap_and_counts_what_it_drops(make_sender, receiver):
    telemetry = make_sender(max_keys=5, max_attempts=1, timeout=2.0)
    old = record_traffic(telemetry, routes=5, each=2)
    receiver.respond_with(503, json=UNAVAILABLE, delay=0.25)  # stored nothing: merged back
    outcome = []
    before = len(receiver.requests)  # counted before the send can arrive
    flushing = threading.Thread(target=lambda: outcome.append(telemetry.flush()))
    flushing.start()
    assert receiver.wait_for_requests(before + 1)
    # While the failing send is in flight, new traffic fills the cap ...
    new = Counter()
    for i in range(5):
        telemetry.record("POST", f"/new/{i}", 201, 0.01, 0, 0)
        new[("POST", f"/new/{i}", 201)] += 1
    flushing.join()
    assert outcome == [False]
    # ... so the batch merged back lands in the overflow key, counted as dropped.
    assert telemetry.recorder.dropped == sum(old.values())
    assert telemetry.flush() is True
    last = receiver.reports_from(telemetry.instance_id)[-1]
    counts = record_counts([last])
    assert len(last["batch"]["records"]) <= 5 + 1
    assert counts == new + Counter({OVERFLOW_KEY: sum(old.values())})
    assert last["batch"]["dropped"] == sum(old.values())


# -- when nothing may be sent --------------------------------------------------------------


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_debug_writes_payloads_to_stderr_and_connects_nowhere(
    silent_endpoint, capsys, monkeypatch, tmp_path, how
):
    for name in ("SQA_OPT_OUT", "REQTELEMETRY_OPT_OUT", "DO_NOT_TRACK"):
        monkeypatch.delenv(name, raising=False)
    options = {"endpoint": silent_endpoint.url, "deployment_id_path": str(tmp_path / "id")}
    if how == "argument":
        options["debug"] = True
    else:
        monkeypatch.setenv("REQTELEMETRY_DEBUG", "1")
    telemetry = Telemetry(**options)  # no send_in_tests: debug output is not sending
    settle(telemetry)  # an instance that serves: its startup report is out
    try:
        assert telemetry.config.debug
        record_traffic(telemetry, routes=2, each=2)
        assert telemetry.flush() is True
    finally:
        telemetry.close()
    silent_endpoint.assert_no_connection()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    payloads = [json.loads(line) for line in lines]
    assert [p["kind"] for p in payloads] == ["startup", "periodic", "shutdown"]
    for payload in payloads:
        assert schema_errors(payload) == []
    assert sum(record_counts(payloads).values()) == 4


def test_nothing_is_sent_under_a_test_runner_without_send_in_tests(silent_endpoint, make_telemetry):
    before = {t.ident for t in threading.enumerate()}
    telemetry = make_telemetry(endpoint=silent_endpoint.url)
    assert not telemetry.sending
    assert telemetry.flusher is None
    record_traffic(telemetry)
    assert telemetry.flush() is False
    assert telemetry.close() is False
    new_threads = [t for t in threading.enumerate() if t.ident not in before]
    assert not [t for t in new_threads if t.name == "reqtelemetry-flusher"]
    silent_endpoint.assert_no_connection()


def test_a_test_run_seen_only_after_start_stops_sending_at_the_next_flush(
    make_sender, receiver, monkeypatch
):
    # Start as a server would: no sign of a test runner (pytest sets
    # PYTEST_CURRENT_TEST only while a test runs, not while modules are imported).
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/gunicorn", "app:app"])
    telemetry = make_sender(send_in_tests=False)
    assert telemetry.sending
    seen = len(receiver.requests)
    assert seen == 1  # the startup report
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_app.py::test_it (call)")
    record_traffic(telemetry)
    assert telemetry.flush() is False
    assert not telemetry.sending
    assert telemetry.close() is False
    assert len(receiver.requests) == seen


COLLECTED_MODULE = """
import os
from reqtelemetry import Telemetry

# As the README's examples do: made when the module is imported (at collection).
telemetry = Telemetry(endpoint=os.environ["SILENT_ENDPOINT"], app_name="collected")
print("at import: sending =", telemetry.sending, "flusher =", telemetry.flusher)


def test_it():
    assert Telemetry(endpoint=os.environ["SILENT_ENDPOINT"]).sending is False
"""

UNITTEST_MODULE = """
import os, unittest
from reqtelemetry import Telemetry


class T(unittest.TestCase):
    def test_it(self):
        telemetry = Telemetry(endpoint=os.environ["SILENT_ENDPOINT"])
        print("under unittest: sending =", telemetry.sending)
"""


def _clean_child_environment(endpoint: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "REQTELEMETRY_", "SQA_", "DO_NOT_TRACK"))
    }
    env["SILENT_ENDPOINT"] = endpoint
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return env


@pytest.mark.parametrize("runner", ["pytest", "unittest"])
def test_nothing_is_sent_from_a_module_imported_by_a_test_runner(runner, silent_endpoint, tmp_path):
    import subprocess

    module = COLLECTED_MODULE if runner == "pytest" else UNITTEST_MODULE
    (tmp_path / "test_collected.py").write_text(module)
    command = [sys.executable, "-m", runner]
    command += (
        ["-q", "-s", "-p", "no:cacheprovider", "test_collected.py"]
        if runner == "pytest"
        else ["test_collected"]
    )
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=_clean_child_environment(silent_endpoint.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    expected = (
        "at import: sending = False flusher = None"
        if runner == "pytest"
        else "under unittest: sending = False"
    )
    assert expected in output
    silent_endpoint.assert_no_connection()


def test_send_in_tests_from_the_environment(monkeypatch, receiver, tmp_path):
    for name in ("SQA_OPT_OUT", "REQTELEMETRY_OPT_OUT", "DO_NOT_TRACK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQTELEMETRY_SEND_IN_TESTS", "true")
    telemetry = Telemetry(
        endpoint=receiver.url, deployment_id_path=str(tmp_path / "id"), flush_interval=3600
    )
    try:
        assert telemetry.sending
        assert telemetry.flush() is True
    finally:
        telemetry.close()
    assert receiver.reports_from(telemetry.instance_id)


# -- traits -----------------------------------------------------------------------------


def test_reqtelemetry_disable_withholds_traits(monkeypatch, receiver, tmp_path):
    for name in ("SQA_OPT_OUT", "REQTELEMETRY_OPT_OUT", "DO_NOT_TRACK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQTELEMETRY_DISABLE", "memory_rss_bytes, cpu_count,app_version")
    telemetry = Telemetry(
        endpoint=receiver.url,
        app_version="9.9.9",
        send_in_tests=True,
        deployment_id_path=str(tmp_path / "id"),
        flush_interval=3600,
    )
    telemetry.note_first_request(None)  # an instance that serves: startup, periodic, shutdown
    try:
        assert telemetry.flush() is True
    finally:
        telemetry.close()
    reports = receiver.reports_from(telemetry.instance_id)
    assert len(reports) == 3
    for report in reports:
        assert report["withheld"] == ["app_version", "cpu_count", "memory_rss_bytes"]
        assert not {"memory_rss_bytes", "cpu_count", "app_version"} & set(report["traits"])
        assert "os" in report["traits"]
        assert "9.9.9" not in json.dumps(report)


def test_an_over_long_app_version_is_cut_and_the_report_is_accepted(make_sender, receiver):
    # The collector refuses (422) a trait over 128 characters, and a refused
    # report is dropped: every batch would be lost. The receiver fixture checks
    # the schema too.
    telemetry = make_sender(app_version="1.0+" + "g" * 130)
    expected = record_traffic(telemetry)
    assert telemetry.flush() is True
    reports = receiver.reports_from(telemetry.instance_id)
    assert reports[-1]["traits"]["app_version"] == ("1.0+" + "g" * 130)[:128]
    assert delivered(receiver, telemetry) == expected


def test_disabled_traits_argument_withholds_traits(make_sender, receiver):
    telemetry = make_sender(disabled_traits=["uptime_seconds"])
    (report,) = receiver.reports_from(telemetry.instance_id)
    assert report["withheld"] == ["uptime_seconds"]
    assert "uptime_seconds" not in report["traits"]


# -- the collector protocol: session, stamp ---------------------------------------------


def test_an_expired_token_gets_a_new_session_and_the_report_goes_through(make_sender, receiver):
    telemetry = make_sender()
    expected = record_traffic(telemetry)
    sessions_before = len(receiver.sessions)
    receiver.respond_with(401, json={"error": "token_expired"})
    assert telemetry.flush() is True
    assert len(receiver.sessions) == sessions_before + 1  # renewed once, right away
    assert delivered(receiver, telemetry) == expected


def test_the_final_report_renews_an_invalid_token(make_sender, receiver):
    # The collector restarted with a new secret (a dev collector makes one per
    # start) shortly before the app stops: the final report must not be lost.
    telemetry = make_sender()
    expected = record_traffic(telemetry)
    sessions_before = len(receiver.sessions)
    receiver.respond_with(401, json={"error": "bad_token"})
    assert telemetry.close() is True
    assert len(receiver.sessions) == sessions_before + 1
    assert receiver.reports_from(telemetry.instance_id)[-1]["kind"] == "shutdown"
    assert delivered(receiver, telemetry) == expected


def test_close_stops_a_stamp_being_minted_and_still_makes_the_final_flush(make_sender, receiver):
    # A periodic flush is minting a stamp that takes minutes (a child process)
    # when the app shuts down: close() must not spend its budget waiting for it.
    telemetry = make_sender(timeout=30, max_proof_of_work_bits=32)
    expected = record_traffic(telemetry)
    transport = telemetry.flusher.transport
    transport._session = None
    receiver.bits = 32  # about half an hour of hashing
    sessions = len(receiver.sessions)
    periodic = threading.Thread(target=telemetry.flush)
    periodic.start()
    assert receiver.wait_for(lambda r: len(r.sessions) > sessions)
    time.sleep(0.5)  # the child is minting
    receiver.bits = 8  # the final report's new session asks for little
    transport._session = None
    assert telemetry.close(timeout=8) is True
    periodic.join(10)
    assert not periodic.is_alive()
    assert receiver.reports_from(telemetry.instance_id)[-1]["kind"] == "shutdown"
    assert delivered(receiver, telemetry) == expected


def test_a_session_answered_410_stops_reporting_for_good(make_sender, receiver):
    telemetry = make_sender()
    record_traffic(telemetry)
    telemetry.flusher.transport._session = None  # force a new session
    receiver.respond_to_session_with(410)
    before = len(receiver.requests)
    assert telemetry.flush() is False
    assert telemetry.flusher.gone
    assert telemetry.flush() is False
    assert len(receiver.requests) == before  # no report was ever sent


def test_a_collector_asking_for_too_much_work_is_not_sent_to(make_sender, receiver):
    telemetry = make_sender(max_proof_of_work_bits=12)
    expected = record_traffic(telemetry)
    telemetry.flusher.transport._session = None
    receiver.bits = 30  # a collector gone rogue: a stamp would take hours
    before, sessions = len(receiver.requests), len(receiver.sessions)
    assert telemetry.flush() is False
    assert len(receiver.requests) == before
    # Not asked again within the flush (docs/protocol.md: at the next flush).
    assert len(receiver.sessions) == sessions + 1
    receiver.bits = 8
    telemetry.flusher.transport._session = None
    assert telemetry.flush() is True  # nothing was lost meanwhile
    assert delivered(receiver, telemetry) == expected


_children_started: list[list[str]] = []
_watching_children = False


def _watch_children(event: str, args: tuple) -> None:
    if _watching_children and event == "subprocess.Popen":
        _children_started.append([str(part) for part in args[1]])


sys.addaudithook(_watch_children)  # an audit hook cannot be removed: it only listens when asked


@pytest.mark.parametrize("bits", [9, 12, 16])
def test_real_difficulty_is_minted_in_a_child_process(make_sender, receiver, bits):
    # Design decision 5: minting holds the GIL; only stamps of a few hundred
    # hashes (8 bits and less) are trivially short enough to mint in-thread.
    global _watching_children
    receiver.bits = bits
    telemetry = make_sender()
    expected = record_traffic(telemetry)
    _children_started.clear()
    _watching_children = True
    try:
        assert telemetry.flush() is True
    finally:
        _watching_children = False
    assert any("mint" in argv for argv in _children_started), _children_started
    assert not receiver.all_schema_errors()  # the receiver verified the stamp
    assert receiver.requests[-1].envelope["stamp"].startswith(f"1:{bits}:")
    assert delivered(receiver, telemetry) == expected


def test_envelope_built_in_slices_is_the_plain_json_envelope():
    from reqtelemetry.transport import ENVELOPE_SLICE, build_envelope

    payload = json.dumps({"route": '/a"b\\c', "pad": "x" * (3 * ENVELOPE_SLICE + 7)})
    envelope = build_envelope('tok"en', "1:8:261122000000:r::a:b", payload)
    assert json.loads(envelope) == {
        "token": 'tok"en',
        "stamp": "1:8:261122000000:r::a:b",
        "payload": payload,
    }


def test_only_the_shutdown_flush_skips_the_pauses(make_sender, receiver, monkeypatch):
    """Pauses leave the GIL to request threads; at shutdown there are none left to serve."""
    from reqtelemetry import payload

    rhythms: list[float] = []
    hurries: list[object] = []
    original_init = payload.Pacer.__init__

    def spy(self, pacing=payload.PACED):
        original_init(self, pacing)
        rhythms.append(self.every)
        if threading.get_ident() == me:  # not the startup report's
            hurries.append(pacing.hurry)

    me = threading.get_ident()

    monkeypatch.setattr(payload.Pacer, "__init__", spy)
    telemetry = make_sender()
    flusher = telemetry.flusher
    assert flusher is not None and flusher.transport is not None
    record_traffic(telemetry)
    assert telemetry.flush() is True
    assert rhythms and set(rhythms) == {payload.YIELD_EVERY}  # encoding and the envelope
    # Each paced step can be hurried, the encoding and the envelope's escaping
    # alike, by the event of the flush they belong to (close() or a waiting
    # flush sets it): one flush here, one event, not the transport's stop.
    assert len({id(hurry) for hurry in hurries}) == 1, hurries
    assert isinstance(hurries[0], threading.Event)
    assert hurries[0] is not flusher.transport._stop
    rhythms.clear()
    record_traffic(telemetry)
    assert telemetry.close() is True
    assert rhythms and set(rhythms) == {float("inf")}
    assert receiver.wait_for_reports(1, kind="shutdown", timeout=5)


def test_each_post_makes_way_for_requests_except_at_shutdown(make_sender, receiver, monkeypatch):
    """httpx's request building and response handling are paused around, on the GIL's behalf."""
    from reqtelemetry import payload, transport

    pauses: list[float] = []
    real_time = transport.time
    spying_time = types.SimpleNamespace(
        **{name: getattr(real_time, name) for name in dir(real_time) if not name.startswith("_")}
    )
    spying_time.sleep = lambda seconds: (pauses.append(seconds), real_time.sleep(seconds))[1]
    monkeypatch.setattr(transport, "time", spying_time)
    telemetry = make_sender()
    pauses.clear()
    record_traffic(telemetry)
    assert telemetry.flush() is True
    # A request hook and a response hook per POST; at least one POST.
    assert len(pauses) >= 2 and set(pauses) == {payload.YIELD_PAUSE}
    pauses.clear()
    record_traffic(telemetry)
    assert telemetry.close() is True
    assert receiver.wait_for_reports(1, kind="shutdown", timeout=5)
    assert pauses == []


def test_a_paced_encoding_stops_pausing_once_hurried(monkeypatch):
    """A flush takes about 1.5 s paced, and the final report waits for the one
    under way within a shutdown budget of 2 s: once ``close`` hurries it, the
    encoding's remaining steps run without pauses, and encode everything."""
    from reqtelemetry import payload

    hurry = threading.Event()
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            hurry.set()  # as close() does, part-way through

    monkeypatch.setattr(
        payload,
        "time",
        types.SimpleNamespace(sleep=sleep, time=time.time, monotonic=time.monotonic),
    )
    monkeypatch.setattr(payload, "YIELD_EVERY", 0.0)  # a pause due at every step
    envelope, batch = one_request_per_route(50)
    reports = build_reports(envelope, batch, 1 << 20, pacing=payload.Pacing(hurry=hurry))
    assert pauses == [payload.YIELD_PAUSE] * 3  # none after the hurry
    assert sum(record_counts([json.loads(r.body) for r in reports]).values()) == 50


def test_a_pacing_stops_pausing_once_hurried_or_past_its_share():
    """One value says when every paced step of a flush stops pausing: the
    encoding, the envelope and the POSTs ask the same question of it."""
    from reqtelemetry.payload import PACED, Pacing

    assert PACED.paced and not PACED.pauses_over()  # no hurry, no limit
    assert not UNPACED.paced
    hurry = threading.Event()
    pacing = Pacing(hurry=hurry, until=time.monotonic() + 60)
    assert not pacing.pauses_over()
    hurry.set()
    assert pacing.pauses_over()  # something waits for the flush
    assert Pacing(until=time.monotonic() - 0.001).pauses_over()  # its share is spent


def test_a_paced_encoding_pauses_only_until_its_share_of_the_budget(monkeypatch):
    from reqtelemetry import payload

    pauses: list[float] = []
    monkeypatch.setattr(
        payload,
        "time",
        types.SimpleNamespace(sleep=pauses.append, time=time.time, monotonic=time.monotonic),
    )
    monkeypatch.setattr(payload, "YIELD_EVERY", 0.0)  # a pause due at every step
    envelope, batch = one_request_per_route(20)
    build_reports(envelope, batch, 1 << 20, pacing=payload.Pacing(until=time.monotonic() + 60))
    assert len(pauses) >= 20  # within its share: a pause per record
    pauses.clear()
    build_reports(envelope, batch, 1 << 20, pacing=payload.Pacing(until=time.monotonic() - 0.001))
    assert pauses == []  # past it: none


def spy_on_pauses(monkeypatch) -> list[tuple[int, float]]:
    """Every pause the encoding, the envelope and the httpx hooks make, as
    (thread, ``time.monotonic()`` as it began); every step made one due."""
    from reqtelemetry import payload, transport

    pauses: list[tuple[int, float]] = []
    real_time = transport.time

    def sleep(seconds: float) -> None:
        pauses.append((threading.get_ident(), real_time.monotonic()))
        real_time.sleep(seconds)

    spying = types.SimpleNamespace(
        **{name: getattr(real_time, name) for name in dir(real_time) if not name.startswith("_")}
    )
    spying.sleep = sleep
    monkeypatch.setattr(payload, "time", spying)
    monkeypatch.setattr(transport, "time", spying)
    monkeypatch.setattr(payload, "YIELD_EVERY", 0.0)
    return pauses


def test_a_flushs_pauses_stop_at_their_share_of_its_budget(make_sender, receiver, monkeypatch):
    """Paced, a full batch takes about 1.5 s to encode, which a periodic
    flush's 30 s budget holds; ``flush(timeout=1.5)`` failed every time (its
    data kept for the next, as long), until the pauses were held to a quarter
    of the budget: no pause, of the encoding, the envelope or the POSTs,
    begins past it. Here every step pauses (some 10 s in all, uncapped)."""
    from reqtelemetry import payload

    limits: list[float] = []
    original_init = payload.Pacer.__init__

    def spy(self, pacing=payload.PACED):
        original_init(self, pacing)
        if pacing.until != float("inf") and threading.get_ident() == me:
            limits.append(pacing.until)

    me = threading.get_ident()
    monkeypatch.setattr(payload.Pacer, "__init__", spy)
    pauses = spy_on_pauses(monkeypatch)
    telemetry = make_sender(max_payload_bytes=65536)
    for i in range(999):
        for j in range(3):
            telemetry.record("GET", f"/route/{i}", 200, 0.001 * 2**j, 5, 100)
    assert telemetry.flush(timeout=6.0) is True
    assert sum(delivered(receiver, telemetry).values()) == 999 * 3
    ours = [at for thread, at in pauses if thread == me]
    assert limits and len(set(limits)) == 1  # one limit for the whole flush
    until = limits[0]
    assert max(ours) <= until  # none began past it ...
    assert max(ours) > until - 0.1  # ... and it paused up to it


def test_a_flush_that_waits_hurries_the_one_under_way(make_sender, receiver, monkeypatch):
    """A caller's ``flush(timeout=1)`` behind a periodic flush that pauses for
    seconds more would give up; it makes that flush stop pausing instead, in
    its encoding and in its delivery (several parts here)."""
    pauses = spy_on_pauses(monkeypatch)
    telemetry = make_sender(max_payload_bytes=16384)
    flusher = telemetry.flusher
    assert flusher is not None
    expected = record_traffic(telemetry, routes=300, each=1)
    periodic = threading.Thread(target=flusher.flush, kwargs={"budget": 20.0})
    periodic.start()
    deadline = time.monotonic() + 5
    while not any(thread == periodic.ident for thread, _ in pauses):
        assert time.monotonic() < deadline
        time.sleep(0.001)
    waiting = time.monotonic()  # the periodic flush is pausing, and holds the lock
    assert telemetry.flush(timeout=1.0) is True
    assert time.monotonic() - waiting < 1.0
    periodic.join(10)
    theirs = [at for thread, at in pauses if thread == periodic.ident]
    assert max(theirs) < waiting + 0.05  # no pause began once a flush waited
    assert delivered(receiver, telemetry) == expected


def test_close_hurries_the_flush_under_way(make_sender, receiver, monkeypatch):
    """``close`` sets what a periodic flush's steps check: the flusher's hurry
    (the encoding) and the transport's stop (the envelope and the POSTs' pauses)."""
    from reqtelemetry import transport

    pauses: list[int] = []  # the threads that paused: the flusher's own may too
    real_time = transport.time
    spying_time = types.SimpleNamespace(
        **{name: getattr(real_time, name) for name in dir(real_time) if not name.startswith("_")}
    )
    spying_time.sleep = lambda seconds: (
        pauses.append(threading.get_ident()),
        real_time.sleep(seconds),
    )[1]
    monkeypatch.setattr(transport, "time", spying_time)
    telemetry = make_sender()
    flusher = telemetry.flusher
    assert flusher is not None and flusher.transport is not None
    current = flusher._hurry  # the next flush's; the final one replaces it
    assert not current.is_set()
    flusher.transport._make_way(None)  # type: ignore[arg-type]
    assert pauses.count(threading.get_ident()) == 1  # paced, not shutting down: a pause
    telemetry.close()
    assert current.is_set() and flusher.transport._stop.is_set()
    flusher.transport._make_way(None)  # type: ignore[arg-type]
    assert pauses.count(threading.get_ident()) == 1  # shutting down: none


@pytest.mark.parametrize("size_in_slices", [0, 1 / 32768, 1 - 1 / 32768, 1, 3 + 5 / 32768])
def test_paced_gzip_is_plain_gzip_offering_the_cpu_after_every_slice(monkeypatch, size_in_slices):
    """zlib gives back the GIL but not the core: a waiting request thread gets it between slices."""
    from reqtelemetry import transport

    offers: list[None] = []
    monkeypatch.setattr(transport, "_offer_the_cpu", lambda: offers.append(None))
    size = round(size_in_slices * transport.GZIP_SLICE)
    data = (uuid.uuid4().hex.encode() * (size // 32 + 1))[:size]  # text-like, compressible
    body = transport.gzip_paced(data, transport.GZIP_LEVEL)
    assert gzip.decompress(body) == data
    assert len(offers) == -(-size // transport.GZIP_SLICE)  # one per slice, none for nothing
    offers.clear()
    assert gzip.decompress(transport.gzip_paced(data, transport.GZIP_LEVEL, paced=False)) == data
    assert offers == []


def test_only_the_shutdown_flush_compresses_without_offering_the_cpu(
    make_sender, receiver, monkeypatch
):
    from reqtelemetry import transport

    offers: list[None] = []
    monkeypatch.setattr(transport, "_offer_the_cpu", lambda: offers.append(None))
    telemetry = make_sender()
    offers.clear()
    record_traffic(telemetry)
    assert telemetry.flush() is True
    assert len(offers) >= 1
    offers.clear()
    record_traffic(telemetry)
    assert telemetry.close() is True
    assert receiver.wait_for_reports(1, kind="shutdown", timeout=5)  # the receiver gunzipped it
    assert offers == []


def test_an_unpaced_batch_encodes_exactly_as_a_paced_one():
    recorder = Recorder()
    for index in range(300):
        recorder.record("GET", f"/r/{index}", 200, 0.001 * (1 + index % 7), 3, 5)
    batch = recorder.collect()
    envelope = Envelope(
        kind="periodic",
        sequence=1,
        deployment_id=str(uuid.uuid4()),
        instance_id=str(uuid.uuid4()),
        traits={},
        withheld=[],
        metrics={"counters": {}, "gauges": {}},
        internal_errors=0,
    )
    paced = build_reports(envelope, batch, max_bytes=64 * 1024)
    unpaced = build_reports(envelope, batch, max_bytes=64 * 1024, pacing=UNPACED)
    assert len(paced) > 1

    def without_clock(report):
        parsed = json.loads(report.body)
        del parsed["sent_at"]  # the time of encoding, the one thing meant to differ
        return parsed

    assert [without_clock(report) for report in unpaced] == [
        without_clock(report) for report in paced
    ]


# -- CPU priority ----------------------------------------------------------------------


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_timer_thread_flushes_at_the_lowest_priority_and_a_caller_keeps_its_own(
    make_sender, receiver, monkeypatch
):
    """Flushes on the timer thread use only CPU the app leaves; ``flush()`` from the
    app's own thread must not change that thread's priority."""
    from reqtelemetry import flusher

    seen: list[tuple[str, int]] = []
    original = flusher.build_reports

    def spy(*args, **kwargs):
        seen.append((threading.current_thread().name, _own_nice()))
        return original(*args, **kwargs)

    monkeypatch.setattr(flusher, "build_reports", spy)
    caller_nice = _own_nice()
    if caller_nice >= flusher.FLUSHER_NICE:
        pytest.skip("the test runs at nice 19 already: no lowering to see")
    telemetry = make_sender()  # settled: the startup report has been sent
    assert seen == [("reqtelemetry-flusher", flusher.FLUSHER_NICE)]
    record_traffic(telemetry)
    assert telemetry.flush() is True
    assert seen[1] == (threading.current_thread().name, caller_nice)
    assert _own_nice() == caller_nice
    assert receiver.wait_for_reports(2, timeout=5)


GREEN_FLUSHER = """
from gevent import monkey

monkey.patch_all()

import os, time
from reqtelemetry import Telemetry
from reqtelemetry.config import Config

# Debug mode: the reports go to stderr; the startup one at the first request.
telemetry = Telemetry(config=Config.resolve(debug=True, send_in_tests=True, environ={}))
telemetry.note_first_request(None)
deadline = time.monotonic() + 20
while telemetry.flusher.sequence == 0:
    assert time.monotonic() < deadline, "no startup report"
    time.sleep(0.01)  # gevent's: the flusher greenlet runs meanwhile
print(os.getpriority(os.PRIO_PROCESS, os.getpid()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_a_green_flusher_leaves_the_process_priority_alone():
    """Under gevent (gunicorn -k gevent, uWSGI --gevent) the flusher is a
    greenlet on the main thread, whose id is the process's: renicing "its"
    thread put the whole worker at nice 19, and on a busy host requests took
    1.6 s instead of 45 ms."""
    pytest.importorskip("gevent")
    done = subprocess.run(
        [sys.executable, "-c", GREEN_FLUSHER],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_environment(),
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == os.getpriority(os.PRIO_PROCESS, 0)


def test_elsewhere_than_linux_no_priority_is_touched(monkeypatch):
    """``setpriority(PRIO_PROCESS, id)`` would lower the whole process there, the app's too."""
    from reqtelemetry import flusher

    monkeypatch.setattr(sys, "platform", "darwin")
    answers: list[tuple[bool, int, int]] = []

    def in_a_thread() -> None:  # so that a regression cannot nice the test runner itself
        before = _own_nice()
        answers.append((flusher.lower_this_threads_priority(), before, _own_nice()))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    monkeypatch.undo()
    ((lowered, before, after),) = answers
    assert lowered is False
    assert after == before


@pytest.mark.parametrize("value", ["²", "٣", "soon", ""])
def test_a_retry_after_that_is_no_number_or_date_is_ignored(value):
    assert parse_retry_after(value) is None


def test_retry_after_in_seconds_or_as_a_date():
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60.0


def _unused_loopback_port() -> int:
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        return int(unused.getsockname()[1])


def _record_some(telemetry: Telemetry, n: int = 5) -> None:
    for _ in range(n):
        telemetry.record("GET", "/items/{item_id}", 200, 0.01, 0, 100)


def test_a_short_run_against_a_collector_that_is_down_says_so_at_exit(make_sender, caplog):
    # A developer's first try, hourly default: the startup report fails (the
    # collector is down, or the URL is wrong), the app is stopped minutes later
    # and its final report fails too. Two flushes in a row failed, and the
    # requests are lost at exit: before, not one line said so (DEBUG only).
    telemetry = make_sender(endpoint=f"http://127.0.0.1:{_unused_loopback_port()}")
    _record_some(telemetry)
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert telemetry.close() is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "Connection refused" in warnings[0] or "ConnectError" in warnings[0]
    assert "are lost" in warnings[0]


def test_a_final_report_alone_failing_at_exit_stays_quiet(make_sender, receiver, caplog):
    # The startup report went: one failure at exit is no pattern (the case
    # commit 028a351 kept at DEBUG); nothing is said at WARNING.
    telemetry = make_sender()
    _record_some(telemetry)
    receiver.respond_always(503)
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        telemetry.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_flush_cut_short_by_close_is_not_called_the_final_report(make_sender, receiver, caplog):
    # An outage: a periodic flush fails (the collector's own 503, twice), and
    # the next one waits out its backoff after a 503 when the app stops.
    # close() cuts that wait short, and the final report, which follows, is
    # delivered: nothing is lost. The cut-short flush said at WARNING that "the
    # final report could not be delivered ... the requests ... are lost".
    telemetry = make_sender(retry_base_delay=3.0, max_attempts=2, timeout=2.0, flush_interval=1.0)
    flusher = telemetry.flusher
    flusher.transport._rng = types.SimpleNamespace(uniform=lambda low, high: high)  # 3 s
    before = len(receiver.requests)  # the startup report
    receiver.respond_with(503, json=UNAVAILABLE, times=3)  # then 200
    _record_some(telemetry)
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert receiver.wait_for_requests(before + 3, timeout=15)
        time.sleep(0.3)  # the second periodic flush waits out its backoff
        assert telemetry.close() is True
    assert [r.status for r in receiver.requests[before:]] == [503, 503, 503, 200]
    assert receiver.reports[-1]["kind"] == "shutdown"
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_warning_for_a_wrong_endpoint_points_at_the_endpoint(make_sender, receiver, caplog):
    # TELEMETRY_ENDPOINT=http://collector:8600/v1/report (the path from
    # docs/protocol.md) or the URL of another server: every session request is
    # a 404 (or a page that is no JSON). The warning only said "Behind a proxy
    # or a private CA, set REQTELEMETRY_PROXY or REQTELEMETRY_CA_BUNDLE".
    not_found = {"error": "not_found", "detail": "Not Found"}
    receiver.respond_to_session_with(404, json=not_found, times=20)  # /v1/report/v1/session
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        telemetry = make_sender(endpoint=receiver.url + "/v1/report")  # startup report: 404
        _record_some(telemetry)
        assert telemetry.flush() is False  # two in a row: the warning
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "HTTP 404" in warning
    assert "endpoint is the collector's URL" in warning


def test_a_bad_close_timeout_keeps_the_final_report(receiver) -> None:
    """``close("2")`` (a timeout read from a settings file) raised TypeError
    after the flusher was let go of and the instance taken off the exit's
    list: a later close() returned False at once and the final report, with
    the counts since the last one, was never sent."""
    telemetry = Telemetry(config=make_config(endpoint=receiver.url, **SENDER_DEFAULTS))
    settle(telemetry)
    telemetry.count("jobs.done", 5)
    with pytest.raises(TypeError):
        telemetry.close("2")  # type: ignore[arg-type]
    assert telemetry.close() is True
    assert counter_totals(receiver.reports)["jobs.done"] == 5


def test_a_final_report_held_back_after_failures_is_still_said_lost(make_sender, receiver, caplog):
    # The collector's database is down: its 503s. The first periodic flush
    # fails (twice); the second gets a 503 with the collector's Retry-After and
    # waits out its backoff when the app stops. close() cuts that short, and
    # the final report is held back by the Retry-After: two flushes in a row
    # failed and the requests since the last delivered report end with the
    # process, which must be said once at WARNING, as it was before 4a35d46.
    telemetry = make_sender(retry_base_delay=3.0, max_attempts=2, timeout=2.0, flush_interval=1.0)
    flusher = telemetry.flusher
    flusher.transport._rng = types.SimpleNamespace(uniform=lambda low, high: high)  # 3 s
    before = len(receiver.requests)  # the startup report
    receiver.respond_with(503, json=UNAVAILABLE, times=2)
    receiver.respond_always(503, json=UNAVAILABLE, headers={"Retry-After": "2"})
    _record_some(telemetry)
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert receiver.wait_for_requests(before + 3, timeout=15)
        time.sleep(0.3)  # the second periodic flush waits out its backoff
        assert telemetry.close() is False
    assert len(receiver.requests) == before + 3  # no final report went
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "lost" in warnings[0], warnings


def test_a_short_run_whose_startup_got_the_collectors_503_says_the_loss(
    make_sender, receiver, caplog
):
    # The collector's database is down: its own 503, with Retry-After: 60.
    # The startup report fails, the final one may not go: the requests of
    # this short run end with it, which a final report that fails says.
    receiver.respond_always(503, json=UNAVAILABLE, headers={"Retry-After": "60"})
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        telemetry = make_sender(max_attempts=1)
        _record_some(telemetry)
        assert telemetry.close() is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "lost" in warnings[0], warnings
