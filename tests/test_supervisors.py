"""A reloader parent loads the app and serves nothing: it is no instance.

``flask run --debug`` (Werkzeug's reloader), ``manage.py runserver`` (Django's
autoreloader, where the settings make the ``Telemetry``) and a script that
calls ``uvicorn.run("module:app", reload=True)`` run the app's module in a
parent that only starts and restarts the server in a child. Each such parent
announced itself after the grace and reported as one more, idle, instance
until the developer stopped it. Each test runs the real loop in a process of
its own (``tests/reloader_parent.py``) around a real child, reporting to the
receiver on loopback; the end-to-end runs with real servers are in
``tests/test_examples_e2e.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from examples.servers import child_environment
from receiver import record_counts

pytestmark = pytest.mark.e2e

PARENT = Path(__file__).with_name("reloader_parent.py")
LOOPS = {
    "werkzeug": "werkzeug._reloader.restart_with_reloader",
    "django": "django.utils.autoreload.restart_with_reloader",
    "uvicorn": "uvicorn.supervisors.basereload.run",
}


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_reloader_parent_sends_nothing(loop: str, receiver, tmp_path: Path) -> None:
    pytest.importorskip({"werkzeug": "werkzeug", "django": "django", "uvicorn": "uvicorn"}[loop])
    argv = [sys.executable, str(PARENT), loop, receiver.url, str(tmp_path / "id"), str(tmp_path)]
    done = subprocess.run(
        argv, env=child_environment(), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    decided = json.loads(done.stdout.strip().splitlines()[-1])
    assert receiver.reports == [], "a reloader parent reported as an instance"
    assert decided == {
        "instance_id": decided["instance_id"],
        "announced": False,
        "serving_elsewhere": f"it runs {LOOPS[loop]}",
        "closed": False,  # no final report: it never was an instance
    }


def test_a_process_that_serves_runs_no_supervisor_or_helper_loop() -> None:
    """pytest's main thread runs none of them: a process that serves itself
    (or a shell left open) still announces itself after the grace."""
    from reqtelemetry.supervisors import helper_loop, supervisor_loop

    assert supervisor_loop() is None
    assert helper_loop() is None


POOL_PARENT = Path(__file__).with_name("pool_parent.py")


def run_pool_parent(environment: dict[str, str], *arguments: str) -> dict[str, Any]:
    """Run ``tests/pool_parent.py`` with ``arguments``; what it printed, as JSON."""
    done = subprocess.run(
        [sys.executable, str(POOL_PARENT), *arguments],
        cwd=POOL_PARENT.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return said


@pytest.mark.parametrize("start_method", ["spawn", "forkserver", "forkserver-main"])
def test_multiprocessing_helpers_started_anew_are_no_instances(
    start_method: str, receiver, tmp_path: Path
) -> None:
    """Started with ``spawn`` or ``forkserver`` (macOS's and Windows' default,
    and Linux's from Python 3.14), a pool's worker imports the app's module
    again and makes an instance of its own: each announced itself after the
    grace and reported as one more idle instance, a ``ProcessPoolExecutor(8)``
    as 8, until it ended. Now each finds it runs a helper's loop and sends
    nothing. A worker whose job records is an instance all the same, and its
    last report goes as it ends (a ``forkserver`` child, which ends with
    ``os._exit``, lost it).

    Where the fork server loads the main program itself (Pythons with
    gh-126631 fixed: 3.13.8 and later, 3.14; ``forkserver-main`` has it do
    so on any), its workers inherit its instance instead, as a ``fork``
    pool's do: they are told apart as those are, and end without waiting to
    report, what they recorded in their last second included."""
    environment = child_environment(
        {"POOL_APP_ENDPOINT": receiver.url, "POOL_APP_ID_PATH": str(tmp_path / "id")}
    )
    said = run_pool_parent(environment, start_method)
    parent = said["parent"]
    for worker, loop in [
        ("executor_worker", "concurrent.futures.process._process_worker"),
        ("pool_worker", "multiprocessing.pool.worker"),
    ]:
        decided = said[worker]
        assert decided["instance_id"] != parent  # made anew in the worker, or the fork server
        assert decided["announced"] is False
        if decided["inherited"]:
            assert start_method.startswith("forkserver")
            reason = "multiprocessing forked it from the process that serves"
        else:
            reason = f"it runs {loop}"
        assert decided["serving_elsewhere"] == reason
    recording = said["recording_worker"]
    assert recording["instance_id"] != parent
    assert said["closed"] is True
    by_instance: dict[str, set[tuple[str, str, int]]] = {}
    for report in receiver.reports:
        by_instance.setdefault(report["instance_id"], set()).update(record_counts([report]))
    # The decided workers, the Manager's server and (forkserver) the fork
    # server sent nothing; the parent and the worker that recorded did.
    expected = {parent: {("GET", "/served-by-the-parent", 200)}}
    if not recording["inherited"]:
        expected[recording["instance_id"]] = {("GET", "/recorded-in-a-worker", 200)}
    assert by_instance == expected


def test_a_forkserver_child_ends_within_one_budget_for_all_its_instances(
    silent_endpoint, tmp_path: Path
) -> None:
    """A ``forkserver`` child's instances made as it was prepared are closed
    as it ends, all within one ``shutdown_timeout``, as a process's are at
    exit: each closed with a budget of its own, six took six of them."""
    environment = child_environment(
        {
            "POOL_APP_ENDPOINT": silent_endpoint.url,  # answers nothing: each waits its budget
            "POOL_APP_ID_PATH": str(tmp_path / "id"),
            "POOL_APP_INSTANCES": "6",
            "POOL_APP_SHUTDOWN_TIMEOUT": "0.5",
        }
    )
    exit_seconds = run_pool_parent(environment, "forkserver", "--time-the-exit")["exit_seconds"]
    # It waited (the reports were tried), for one budget and some slack, not six (3 s).
    assert 0.4 < exit_seconds < 0.5 + 1.0
