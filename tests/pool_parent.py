"""An app's main program that runs ``multiprocessing`` helpers, for
``tests/test_supervisors.py``.

``python tests/pool_parent.py START_METHOD`` (``spawn``, ``forkserver``, or
``forkserver-main``: a fork server that loads this program first) imports
the app's module (``tests/pool_app.py``, which makes the ``Telemetry``),
serves one request itself, and then, with that start method:

- asks a ``ProcessPoolExecutor``'s worker and a ``Pool``'s worker, each alive
  past its grace, what its flusher decided;
- keeps a ``Manager()``'s server process alive past its grace;
- runs a job that records a request, in a worker of a pool of its own.

It prints, as one JSON line, its own instance id and what the workers said.
With ``--time-the-exit`` after the start method it only runs a worker whose
every instance records (``POOL_APP_INSTANCES``), and prints how long the
worker took to end.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import sys
import time
from typing import Any

import pool_app  # as an app's main program imports its app: spawned helpers import it too


def preload_main_in_the_fork_server() -> None:
    """Have the fork server load this program as Pythons with gh-126631 fixed
    do (3.13.8 and later, 3.14), on one without: until then it looked for
    the main program's path under a key ``spawn`` no longer gave."""
    from multiprocessing import spawn

    prepared = spawn.get_preparation_data

    def with_main_path(name: str) -> dict[str, object]:
        data = prepared(name)
        data.setdefault("main_path", data.get("init_main_from_path") or sys.argv[0])
        return data

    spawn.get_preparation_data = with_main_path  # type: ignore[assignment]


def time_the_exit(context: Any) -> None:
    """How long a worker whose every instance recorded takes to end, once let go."""
    executor = concurrent.futures.ProcessPoolExecutor(1, mp_context=context)
    executor.submit(pool_app.record_in_each).result(timeout=30)
    started = time.monotonic()
    executor.shutdown(wait=True)
    print(json.dumps({"exit_seconds": time.monotonic() - started}), flush=True)


def main() -> None:
    start_method = sys.argv[1]
    if sys.argv[2:] == ["--time-the-exit"]:
        time_the_exit(multiprocessing.get_context(start_method))
        return
    if start_method == "forkserver-main":
        start_method = "forkserver"
        preload_main_in_the_fork_server()
    context = multiprocessing.get_context(start_method)
    pool_app.telemetry.note_first_request(None)
    pool_app.telemetry.record("GET", "/served-by-the-parent", 200, 0.01, 0, 10)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as executor:
        executor_worker = executor.submit(pool_app.decision).result(timeout=30)
    with context.Pool(1) as pool:
        pool_worker = pool.apply(pool_app.decision)
    with context.Manager() as manager:
        manager.dict()  # the server process is up, and serves
        time.sleep(1.0)  # past its grace
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as executor:
        recording_worker = executor.submit(pool_app.record_one).result(timeout=30)
    closed = pool_app.telemetry.close()
    print(
        json.dumps(
            {
                "parent": pool_app.telemetry.instance_id,
                "closed": closed,
                "executor_worker": executor_worker,
                "pool_worker": pool_worker,
                "recording_worker": recording_worker,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
