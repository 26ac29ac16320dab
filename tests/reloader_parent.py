"""A reloader parent for ``tests/test_supervisors.py``, as a program of its own.

``python tests/reloader_parent.py LOOP ENDPOINT ID_PATH RELEASE_DIR`` makes a
``Telemetry`` reporting to ``ENDPOINT`` with a grace of 0.2 s, as an app's
module does at import, then runs one real supervisor loop: Werkzeug's
(``werkzeug``), Django's (``django``) or uvicorn's ``--reload`` (``uvicorn``).
Werkzeug's and Django's start this same program again as their child (as
they start ``flask run`` or ``manage.py runserver`` again), uvicorn's a spawned
process; the child serves nothing and waits to be let go, which happens once
the parent's grace is over and its flusher has decided (announced itself, or
found that it serves nothing). The parent then closes its ``Telemetry`` and
prints, as one JSON line, what its flusher decided.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The file that lets the child go (Werkzeug's and Django's).
RELEASE = "release"
#: The environment variable each reloader sets in its child.
CHILD_MARKERS = ("WERKZEUG_RUN_MAIN", "RUN_MAIN")


def wait_to_be_let_go(release_dir: str, *, sockets: Any = None) -> None:
    """The child: serves nothing; ends once the parent lets it go (or after 30 s)."""
    deadline = time.monotonic() + 30
    while not (Path(release_dir) / RELEASE).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def uvicorn_child(sockets: Any = None) -> None:
    """uvicorn's spawned child (a module-level function, as spawn pickles it by name)."""
    wait_to_be_let_go(os.environ["RELOADER_PARENT_RELEASE_DIR"])


def when_decided(flusher: Any, then: Callable[[], None]) -> None:
    """Call ``then`` once the flusher announced itself or found it serves nothing."""

    def watch() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if flusher.announced or getattr(flusher, "serving_elsewhere", None) is not None:
                break
            time.sleep(0.01)
        then()

    threading.Thread(target=watch, daemon=True).start()


def run_loop(loop: str, release_dir: str, flusher: Any) -> None:
    """Run ``loop`` for real, around a child that waits until the flusher decided."""
    release = Path(release_dir) / RELEASE
    if loop == "werkzeug":
        from werkzeug._reloader import StatReloaderLoop

        when_decided(flusher, release.touch)
        StatReloaderLoop().restart_with_reloader()
    elif loop == "django":
        from django.utils import autoreload

        when_decided(flusher, release.touch)
        autoreload.restart_with_reloader()
    elif loop == "uvicorn":
        from uvicorn.config import Config
        from uvicorn.supervisors.statreload import StatReload

        os.environ["RELOADER_PARENT_RELEASE_DIR"] = release_dir
        config = Config("unused:app", reload=True, reload_dirs=[release_dir])
        supervisor = StatReload(config, target=uvicorn_child, sockets=[])
        when_decided(flusher, supervisor.should_exit.set)
        supervisor.run()
    else:
        raise SystemExit(f"unknown loop {loop!r}")


def main() -> None:
    loop, endpoint, id_path, release_dir = sys.argv[1:5]
    if any(os.environ.get(name) == "true" for name in CHILD_MARKERS):
        wait_to_be_let_go(release_dir)
        return
    from reqtelemetry import Config, Telemetry

    config = Config.resolve(
        environ={},
        argv=[],
        endpoint=endpoint,
        deployment_id_path=id_path,
        flush_interval=0.2,
        send_in_tests=True,
    )
    telemetry = Telemetry(config=config)
    flusher = telemetry.flusher
    run_loop(loop, release_dir, flusher)
    decided = {
        "instance_id": telemetry.instance_id,
        "announced": flusher.announced,
        "serving_elsewhere": getattr(flusher, "serving_elsewhere", None),
        "closed": telemetry.close(),
    }
    print(json.dumps(decided), flush=True)


if __name__ == "__main__":
    main()
