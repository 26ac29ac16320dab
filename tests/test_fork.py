"""A real ``os.fork()``: every worker is its own instance (gunicorn ``--preload``).

The child gets a new instance id, empty aggregates, its own flusher thread and
its own connections; what the parent recorded before the fork is reported
once, by the parent. The child reports its results through a pipe and leaves
with ``os._exit`` so that pytest never runs twice.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from receiver import record_counts, settle
from reqtelemetry import Config, Telemetry
from reqtelemetry.transport import backoff_delay

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()"),
]


def run_in_child(body: Callable[[], dict[str, Any]], timeout: float = 20.0) -> dict[str, Any]:
    """Fork; run ``body`` in the child; return what it returned (or fail with its traceback)."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads: that is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            try:
                message = {"ok": True, "result": body()}
            except BaseException:
                message = {"ok": False, "error": traceback.format_exc()}
            data = json.dumps(message).encode()
            while data:
                data = data[os.write(write_end, data) :]
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child crashed"
    message = json.loads(b"".join(chunks))
    assert message["ok"], "the child failed:\n" + message["error"]
    return message["result"]


def traffic(telemetry: Telemetry, route: str, n: int) -> Counter:
    for _ in range(n):
        telemetry.record("GET", route, 200, 0.01, 0, 10)
    return Counter({("GET", route, 200): n})


def test_a_forked_child_is_a_new_instance_with_its_own_thread(make_sender, receiver):
    parent = make_sender()
    parent_id = parent.instance_id
    parent_expected = traffic(parent, "/parent", 5)  # recorded before the fork

    def child() -> dict[str, Any]:
        state = {
            "instance_id": parent.instance_id,
            "empty_after_fork": parent.snapshot() == [],
            "thread_running": parent.flusher.running,
            "thread_is_new": parent.flusher._thread is not parent_thread,
        }
        settle(parent)  # the worker serves: its startup report goes first
        traffic(parent, "/child", 3)
        state["flushed"] = parent.flush()
        state["closed"] = parent.close()
        return state

    parent_thread = parent.flusher._thread
    result = run_in_child(child)

    child_id = result["instance_id"]
    assert child_id != parent_id
    assert result["empty_after_fork"]
    assert result["thread_running"]
    assert result["thread_is_new"]
    assert result["flushed"] is True
    assert result["closed"] is True

    child_reports = receiver.reports_from(child_id)
    assert child_reports[0]["kind"] == "startup"
    assert child_reports[0]["sequence"] == 0
    assert child_reports[-1]["kind"] == "shutdown"
    assert record_counts(child_reports) == {("GET", "/child", 200): 3}

    # The parent is untouched: its own id, its own traffic, reported once.
    assert parent.instance_id == parent_id
    assert parent.flusher.running
    assert parent.flush() is True
    assert record_counts(receiver.reports_from(parent_id)) == parent_expected

    # Same deployment, different instances.
    deployments = {r["deployment_id"] for r in receiver.reports}
    assert len(deployments) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_a_forked_workers_flusher_runs_niced_and_its_request_thread_does_not(make_sender, receiver):
    """gunicorn --preload: each worker's own flusher thread lowers itself, as the parent's did."""
    from reqtelemetry.flusher import FLUSHER_NICE

    parent = make_sender()
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if main_nice >= FLUSHER_NICE:
        pytest.skip("the test runs at nice 19 already: no lowering to see")

    def child() -> dict[str, Any]:
        thread = parent.flusher._thread
        deadline = time.monotonic() + 10
        nice = os.getpriority(os.PRIO_PROCESS, thread.native_id)
        while nice != FLUSHER_NICE and time.monotonic() < deadline:
            time.sleep(0.01)  # the new thread lowers itself as it starts
            nice = os.getpriority(os.PRIO_PROCESS, thread.native_id)
        parent.note_first_request(None)  # a worker that serves: its final report goes
        return {
            "flusher_nice": nice,
            "main_nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
            "closed": parent.close(),
        }

    result = run_in_child(child)
    assert result == {"flusher_nice": FLUSHER_NICE, "main_nice": main_nice, "closed": True}


def test_a_forked_child_does_not_share_the_parents_connection(make_sender, receiver):
    parent = make_sender()  # the startup report leaves a keep-alive connection
    assert parent.flush() is True
    parent_id = parent.instance_id

    def child() -> dict[str, Any]:
        return {"instance_id": parent.instance_id, "flushed": parent.flush()}

    result = run_in_child(child)
    assert result["flushed"] is True
    assert parent.flush() is True

    def ports(instance_id: str) -> set[int]:
        return {
            r.client[1]
            for r in receiver.requests
            if r.payload and r.payload.get("instance_id") == instance_id
        }

    assert ports(parent_id)
    assert ports(result["instance_id"])
    assert not ports(parent_id) & ports(result["instance_id"])


def test_a_child_forked_after_410_stays_silent(make_sender, receiver):
    parent = make_sender()
    receiver.respond_with(410)
    assert parent.flush() is False
    assert parent.flusher.gone
    seen = len(receiver.requests)

    def child() -> dict[str, Any]:
        traffic(parent, "/child", 2)
        return {"flushed": parent.flush(), "closed": parent.close()}

    result = run_in_child(child)
    assert result == {"flushed": False, "closed": False}
    assert len(receiver.requests) == seen


def test_a_child_forked_during_retry_after_waits_too(make_sender, receiver):
    parent = make_sender()
    receiver.respond_with(429, headers={"Retry-After": "60"})
    assert parent.flush(timeout=0.5) is False
    seen = len(receiver.requests)

    def child() -> dict[str, Any]:
        traffic(parent, "/child", 2)
        return {"flushed": parent.flush()}

    assert run_in_child(child) == {"flushed": False}
    assert len(receiver.requests) == seen


def test_fork_of_an_opted_out_instance_starts_nothing(silent_endpoint, tmp_path):
    telemetry = Telemetry(
        config=Config.resolve(
            environ={},
            argv=[],
            endpoint=silent_endpoint.url,
            opt_out=True,
            send_in_tests=True,
            deployment_id_path=str(tmp_path / "id"),
        )
    )

    def child() -> dict[str, Any]:
        return {"flusher": telemetry.flusher is None, "flushed": telemetry.flush()}

    assert run_in_child(child) == {"flusher": True, "flushed": False}
    silent_endpoint.assert_no_connection()
    assert not (tmp_path / "id").exists()


def test_what_integrations_noted_survives_the_fork(make_sender, receiver):
    telemetry = make_sender()
    telemetry.note_framework("flask")  # as WSGIMiddleware does at start, in the master
    telemetry.note_development("Flask debug mode")
    telemetry.traits._started_monotonic -= 1000  # the master has been up a while
    assert telemetry.traits.current()[0]["uptime_seconds"] >= 1000

    def child() -> dict[str, Any]:
        traits, _ = telemetry.traits.current()
        return {
            "framework": traits["framework"],
            "development": traits["development"],
            "uptime": traits["uptime_seconds"],
        }

    seen = run_in_child(child)
    assert seen["framework"] == "flask"
    assert seen["development"] is True
    assert seen["uptime"] < 5  # counted from the fork


FORK_DURING_IMPORT = """
import os, sys, time
class SlowImport:
    def find_spec(self, name, path=None, target=None):
        if name == "psutil":
            time.sleep(1.0)  # the module lock is held meanwhile
        return None
sys.modules.pop("psutil", None)
sys.meta_path.insert(0, SlowImport())
os.environ["REQTELEMETRY_DEBUG"] = "1"
os.environ.pop("PYTEST_CURRENT_TEST", None)
from reqtelemetry import Telemetry
telemetry = Telemetry(app_name="fork-race", deployment_id_path=sys.argv[1])
time.sleep(0.3)  # where the flusher would be inside its first imports
pid = os.fork()
if pid == 0:
    telemetry.close(timeout=2.0)
    os._exit(0)
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("child closed" if os.waitstatus_to_exitcode(status) == 0 else "child failed")
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    print("child hung")
telemetry.close(timeout=2.0)
"""


def test_a_fork_during_the_first_flush_does_not_hang_the_worker(tmp_path):
    # gunicorn --preload forks while the master's flusher may still be importing.
    import subprocess
    import sys

    script = tmp_path / "race.py"
    script.write_text(FORK_DURING_IMPORT)
    result = subprocess.run(
        [sys.executable, "-W", "ignore", str(script), str(tmp_path / "id")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "child closed" in result.stdout, result.stdout + result.stderr


def test_a_forked_child_hashes_with_a_salt_of_its_own(make_sender, receiver):
    parent = make_sender()
    path = "/users/alice.canary@example.com/orders/4711"
    in_parent = parent.route_for_unrouted(path, matched=True)  # cached in the parent too

    def child() -> dict[str, Any]:
        route = parent.route_for_unrouted(path, matched=True)
        parent.close()
        return {"route": route, "salt": parent.anonymizer._salt}

    result = run_in_child(child)
    # Shared, the same identifier would hash alike in every worker, and the
    # collector could match it across the instances of a deployment.
    assert result["salt"] != parent.anonymizer._salt
    assert result["route"] != in_parent
    assert parent.route_for_unrouted(path, matched=True) == in_parent


def test_a_forked_child_cannot_cut_the_parents_connections(make_sender, receiver):
    parent = make_sender()
    assert parent.flush() is True  # the parent holds a connection to the collector now
    transport = parent.flusher.transport
    assert len(transport._sockets) >= 1

    def child() -> dict[str, Any]:
        tracked = len(transport._sockets)
        transport._cut_connections()  # what a deadline in the child does
        parent.close()
        return {"tracked": tracked}

    assert run_in_child(child) == {"tracked": 0}
    # The parent's kept connection still works (shut down, it would fail or reconnect).
    record_counts_before = len(receiver.reports_from(parent.instance_id))
    parent.record("GET", "/after", 200, 0.01, 0, 10)
    assert parent.flush() is True
    assert len(receiver.reports_from(parent.instance_id)) == record_counts_before + 1


def test_forked_workers_draw_their_own_jitter(make_sender):
    """Every worker forked from one master drew the master's jitter: the same
    flush delays and the same backoff waits, so a deployment's workers
    flushed in step and retried a collector just back from an outage all at
    once, which is what the jitter is there to prevent. Each child now seeds
    its own."""
    parent = make_sender()
    flusher = parent.flusher
    transport = flusher.transport
    assert transport is not None

    def draws() -> dict[str, Any]:
        return {
            "flush": [flusher._next_delay() for _ in range(4)],
            "backoff": [
                backoff_delay(attempt, 1.0, 60.0, transport._rng) for attempt in range(1, 5)
            ],
        }

    first, second = run_in_child(draws), run_in_child(draws)
    own = draws()  # the parent's next draws, what each child started from
    for kind in ("flush", "backoff"):
        assert len({tuple(first[kind]), tuple(second[kind]), tuple(own[kind])}) == 3, kind


def test_a_fork_waits_while_a_minting_child_is_started(monkeypatch):
    """The minting child's pipes are open in this process until it has started:
    a gunicorn --preload worker forked meanwhile kept their write ends, the end
    of file that says the child started never came, and the master's flusher
    waited for it forever (its reports stopped; 1 run in about 20 under load).
    A fork now waits until the child is started."""
    import subprocess

    from reqtelemetry import hashcash

    real_popen = subprocess.Popen
    starting = threading.Event()
    order: list[str] = []

    def slow_to_start(*args: Any, **kwargs: Any) -> Any:
        starting.set()
        time.sleep(0.3)  # the window a fork used to land in, made wide
        order.append("child started")
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", slow_to_start)
    minter = threading.Thread(target=hashcash.mint_in_subprocess, args=("resource", 10, 30.0))
    minter.start()
    assert starting.wait(10)
    result = run_in_child(lambda: {"forked": True})  # os.fork(), from this thread
    order.append("forked")
    minter.join(30)
    assert result == {"forked": True}
    assert order == ["child started", "forked"]


def _serve_and_return(telemetry: Telemetry) -> None:
    """A multiprocessing child's work: three requests, then the child ends."""
    traffic(telemetry, "/in-a-child", 3)


def _start_serve_and_return(options: dict[str, Any]) -> None:
    """A child that makes its own Telemetry, as granian's WSGI workers load the app."""
    telemetry = Telemetry(config=Config(**options))
    traffic(telemetry, "/own-instance", 2)


def test_a_multiprocessing_child_that_made_its_instance_sends_its_final_report(
    make_sender, receiver
):
    """multiprocessing's children end with os._exit, which runs no atexit
    function: granian's WSGI workers, which load the app themselves, never
    sent their final report, and lost what they had served since the last
    one. An instance made in such a child now closes through multiprocessing's
    own finalizers."""
    import multiprocessing

    parent = make_sender()  # only for its settings
    options = {
        name: getattr(parent.config, name)
        for name in ("endpoint", "deployment_id_path", "send_in_tests", "timeout")
    }
    process = multiprocessing.get_context("fork").Process(
        target=_start_serve_and_return, args=(options,)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads: the point
        process.start()
    process.join(30)
    assert process.exitcode == 0
    # The child's own instance (it also inherited the parent's, made anew there).
    (child,) = {
        report["instance_id"]
        for report in receiver.reports
        if ("GET", "/own-instance", 200) in record_counts([report])
    }
    reports = receiver.reports_from(child)
    assert "shutdown" in {report["kind"] for report in reports}
    assert record_counts(reports) == {("GET", "/own-instance", 200): 2}


def test_a_pool_worker_that_inherited_the_instance_ends_without_waiting_to_report(
    make_sender, receiver
):
    """A ``Pool``'s or ``ProcessPoolExecutor``'s workers inherit the app's
    instance: they end as they did, without waiting for a report on their way
    out (with a collector that never answered, each waited its whole
    shutdown budget; a review measured pool.join() at 2 s instead of 0.01)."""
    import multiprocessing

    parent = make_sender()
    process = multiprocessing.get_context("fork").Process(target=_serve_and_return, args=(parent,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        process.start()
    process.join(30)
    assert process.exitcode == 0
    shutdowns = [r for r in receiver.reports if r["kind"] == "shutdown"]
    assert shutdowns == []


def _until_decided(receiver, flusher) -> None:  # type: ignore[no-untyped-def]
    """Until the parent's grace is over: it announced itself, or it decided it
    is no instance (``serving_elsewhere``, absent from code that never decides)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if receiver.reports or getattr(flusher, "serving_elsewhere", None) is not None:
            return
        time.sleep(0.01)
    raise AssertionError("the parent's grace ended 10 s ago, and it neither reported nor decided")


def test_a_parent_that_forked_and_serves_nothing_is_no_instance(make_sender, receiver):
    """gunicorn --preload: the master loads the app, forks the workers that
    serve and serves nothing itself. It announced itself after the grace and
    reported as one more, idle, instance for its whole life, a final report
    at exit included. Now its workers are the instances, and it sends nothing."""
    master = make_sender(served=False, settled=False, flush_interval=0.2)
    run_in_child(lambda: {})  # a worker (it serves nothing here, and sends nothing)
    _until_decided(receiver, master.flusher)
    assert receiver.reports == []
    assert master.flusher.serving_elsewhere == "it forked the processes that serve"
    flusher = master.flusher
    assert master.close() is False  # at once: no final report, nothing waited for
    flusher._thread.join(5)
    assert not flusher.running
    assert receiver.requests == []


def test_a_parent_that_forked_and_serves_is_an_instance(make_sender, receiver):
    """A process that forks helpers (a ``multiprocessing`` pool made at import,
    before any request) and serves is an instance all the same: its first
    request announces it, whenever it comes, and its exit sends what it served."""
    server = make_sender(served=False, settled=False, flush_interval=0.2)
    run_in_child(lambda: {})  # a helper
    _until_decided(receiver, server.flusher)
    assert receiver.reports == []  # no request yet: nothing to say
    server.note_first_request(None)
    expected = traffic(server, "/served", 3)
    assert receiver.wait_for_reports(1, kind="startup", timeout=5)
    assert server.close() is True
    reports = receiver.reports_from(server.instance_id)
    assert [reports[0]["kind"], reports[-1]["kind"]] == ["startup", "shutdown"]
    assert record_counts(reports) == expected


def _outlive_the_grace(seconds: float) -> None:
    """A pool worker's life: no request, no record, past the instance's grace."""
    time.sleep(seconds)


def test_a_multiprocessing_helper_that_serves_nothing_is_no_instance(make_sender, receiver):
    """A ``Pool``'s worker inherits the app's instance (made anew in it) and
    runs jobs, not requests: alive past the grace, it announced itself as one
    more idle instance of the deployment. Now only the app's process reports."""
    import multiprocessing

    app = make_sender(flush_interval=0.2)  # the grace is as short
    process = multiprocessing.get_context("fork").Process(target=_outlive_the_grace, args=(1.5,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads: the point
        process.start()
    process.join(30)
    assert process.exitcode == 0
    assert {report["instance_id"] for report in receiver.reports} == {app.instance_id}
