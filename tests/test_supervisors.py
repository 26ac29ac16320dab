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

import pytest

from examples.servers import child_environment

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


def test_a_process_that_serves_runs_no_supervisor_loop() -> None:
    """pytest's main thread runs none of them: a process that serves itself
    (or a shell left open) still announces itself after the grace."""
    from reqtelemetry.supervisors import supervisor_loop

    assert supervisor_loop() is None
