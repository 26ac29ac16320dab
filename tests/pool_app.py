"""An app's module for ``tests/pool_parent.py``: it makes its ``Telemetry`` at import.

Reports go to ``POOL_APP_ENDPOINT``, the deployment id lives at
``POOL_APP_ID_PATH``, and the grace is 0.2 s (the flush interval). A
``multiprocessing`` helper started with ``spawn`` or ``forkserver`` imports
this module again, to unpickle the jobs below or with the parent's main
module, and so makes an instance of its own, as it does an app's.
"""

from __future__ import annotations

import os
import time
from typing import Any

from reqtelemetry import Config, Telemetry

CONFIG = Config.resolve(
    environ={},
    argv=[],
    endpoint=os.environ["POOL_APP_ENDPOINT"],
    deployment_id_path=os.environ["POOL_APP_ID_PATH"],
    flush_interval=0.2,
    send_in_tests=True,
    timeout=2.0,
    shutdown_timeout=float(os.environ.get("POOL_APP_SHUTDOWN_TIMEOUT", "2.0")),
)
#: ``POOL_APP_INSTANCES`` of them (one by default), as where each of several
#: apps in one module makes its own.
instances = [
    Telemetry(config=CONFIG) for _ in range(int(os.environ.get("POOL_APP_INSTANCES", "1")))
]
telemetry = instances[0]


def decision(_: Any = None) -> dict[str, Any]:
    """A job: wait until this process's flusher decided whether it is an
    instance (its grace is over), and say what it decided."""
    flusher = telemetry.flusher
    assert flusher is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if flusher.announced or flusher.serving_elsewhere is not None:
            break
        time.sleep(0.01)
    return {
        "pid": os.getpid(),
        "instance_id": telemetry.instance_id,
        "announced": flusher.announced,
        "serving_elsewhere": flusher.serving_elsewhere,
        "inherited": flusher.inherited,
    }


def record_one(_: Any = None) -> dict[str, Any]:
    """A job that uses the telemetry itself: its worker is an instance from then on."""
    telemetry.record("GET", "/recorded-in-a-worker", 200, 0.01, 0, 10)
    assert telemetry.flusher is not None
    return {"instance_id": telemetry.instance_id, "inherited": telemetry.flusher.inherited}


def record_in_each(_: Any = None) -> int:
    """A job that records a request in every instance: each then has a final report to send."""
    for instance in instances:
        instance.record("GET", "/recorded-in-a-worker", 200, 0.01, 0, 10)
    return os.getpid()
