"""uWSGI's master and workers, in this process: what :mod:`reqtelemetry.prefork` decides.

uWSGI itself runs in ``tests/test_examples_e2e.py`` (a master forking two
workers). Here its embedded module is stood in for by a plain module with the
attributes uWSGI gives it, so that each decision is seen on its own: nothing
started while the app loads before the workers exist, the post-fork hook
chained to the app's, a worker made a new instance after a fork that ran no
Python fork hooks (a real ``os.fork()`` with those hooks undone), and the
first request starting a worker whose hook was replaced.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from reqtelemetry import hashcash, prefork
from reqtelemetry import telemetry as telemetry_module
from reqtelemetry.traits import detect_server
from test_fork import run_in_child


class FakeUwsgi(types.ModuleType):
    """What uWSGI's embedded module offers that reqtelemetry reads."""

    def __init__(self, worker: int = 0) -> None:
        super().__init__("uwsgi")
        self.worker = worker
        self.version = b"2.0.99"

    def worker_id(self) -> int:
        return self.worker


@pytest.fixture
def uwsgi(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUwsgi]:
    module = FakeUwsgi()
    monkeypatch.setitem(sys.modules, "uwsgi", module)
    monkeypatch.setattr(prefork, "_installed", False)
    monkeypatch.setattr(prefork, "_exit_installed", False)
    yield module


def run_hook(module: FakeUwsgi) -> None:
    hook: Callable[[], None] = module.post_fork_hook  # type: ignore[attr-defined]
    hook()


def test_outside_uwsgi_nothing_is_deferred() -> None:
    assert "uwsgi" not in sys.modules
    assert prefork.uwsgi_module() is None
    assert not prefork.workers_fork_later()


def test_uwsgi_master_starts_no_thread_until_a_worker_exists(uwsgi: FakeUwsgi, make_sender) -> None:
    telemetry = make_sender(settled=False)
    assert telemetry.flusher is not None
    assert not telemetry.flusher.running  # the master: a thread here would hang the workers
    uwsgi.worker = 1
    run_hook(uwsgi)  # uWSGI's one worker that was never forked (no master, one process)
    assert telemetry.flusher.running


def test_a_lazy_app_loaded_in_a_worker_starts_at_once(uwsgi: FakeUwsgi, make_sender) -> None:
    uwsgi.worker = 2  # --lazy-apps: each worker loads the app itself
    telemetry = make_sender(settled=False)
    assert telemetry.flusher is not None and telemetry.flusher.running
    assert not hasattr(uwsgi, "post_fork_hook")


def test_the_hook_is_chained_to_the_apps_own(uwsgi: FakeUwsgi, make_sender) -> None:
    calls: list[str] = []
    uwsgi.post_fork_hook = lambda: calls.append("app's")  # type: ignore[attr-defined]
    telemetry = make_sender(settled=False)
    uwsgi.worker = 1
    run_hook(uwsgi)
    assert calls == ["app's"]
    assert telemetry.flusher is not None and telemetry.flusher.running


def test_uwsgidecorators_chain_gets_the_hook_and_keeps_its_own(
    uwsgi: FakeUwsgi, make_sender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Setting the hook over ``uwsgidecorators``' would work too, until that
    module is imported again; joining its chain is what its users do."""
    chain: list[Any] = []

    def postfork_chain_hook() -> None:
        for function in chain:
            function()

    decorators = types.ModuleType("uwsgidecorators")
    decorators.postfork_chain = chain  # type: ignore[attr-defined]
    decorators.postfork_chain_hook = postfork_chain_hook  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgidecorators", decorators)
    uwsgi.post_fork_hook = postfork_chain_hook  # type: ignore[attr-defined]
    telemetry = make_sender(settled=False)
    assert uwsgi.post_fork_hook is postfork_chain_hook  # type: ignore[attr-defined]
    assert len(chain) == 1
    uwsgi.worker = 1
    run_hook(uwsgi)
    assert telemetry.flusher is not None and telemetry.flusher.running


def test_the_first_request_starts_a_worker_whose_hook_was_replaced(
    uwsgi: FakeUwsgi, make_sender
) -> None:
    telemetry = make_sender(settled=False)
    uwsgi.post_fork_hook = lambda: None  # type: ignore[attr-defined]  # not chained
    uwsgi.worker = 1
    run_hook(uwsgi)
    assert telemetry.flusher is not None and not telemetry.flusher.running
    telemetry.note_first_request("example.org")
    assert telemetry.flusher.running


def test_a_worker_forked_without_fork_hooks_becomes_an_instance_of_its_own(
    uwsgi: FakeUwsgi, make_sender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uWSGI forks in C: Python's ``os.register_at_fork`` callbacks do not run.
    Here a real fork with them made to do nothing, as uWSGI's is."""
    telemetry = make_sender(settled=False)
    telemetry.record("GET", "/before-fork", 200, 0.01, 0, 1)
    parent = {"instance": telemetry.instance_id, "salt": telemetry.anonymizer._salt}
    monkeypatch.setattr(telemetry_module, "_reinit_after_fork", lambda: None)

    def worker() -> dict[str, Any]:
        uwsgi.worker = 1
        run_hook(uwsgi)
        assert telemetry.flusher is not None
        return {
            "instance": telemetry.instance_id,
            "salt": telemetry.anonymizer._salt,
            "records": telemetry.snapshot(),
            "running": telemetry.flusher.running,
            "pid_is_own": telemetry._pid == os.getpid(),
        }

    child = run_in_child(worker)
    assert child["running"] and child["pid_is_own"]
    assert child["instance"] != parent["instance"]
    assert child["salt"] != parent["salt"]
    assert child["records"] == []  # the master's aggregates are the master's
    assert telemetry.instance_id == parent["instance"]  # the master is unchanged


def test_uwsgi_is_named_as_the_server(uwsgi: FakeUwsgi) -> None:
    server, version = detect_server(argv=["uwsgi"], environ={})
    assert server == "uwsgi"
    assert version  # its distribution's, or else its module's
    assert detect_server(modules={"uwsgi": uwsgi}, argv=["app"], environ={})[0] == "uwsgi"


def test_stamps_are_minted_by_a_python_not_by_the_uwsgi_binary(
    uwsgi: FakeUwsgi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under uWSGI ``sys.executable`` is the ``uwsgi`` binary, which refused
    the child's arguments: every stamp was minted in the app's process."""
    monkeypatch.setattr(sys, "executable", "/usr/bin/uwsgi")
    python = hashcash.python_executable()
    assert python is not None and python != "/usr/bin/uwsgi"
    command = hashcash._child_command("resource", 8)
    assert command[0] == python
    stamp = hashcash.mint_in_subprocess("resource", 8, timeout=20.0)
    assert hashcash._meets(stamp, "resource", 8)


def test_a_mule_or_the_spooler_reports_nothing(uwsgi: FakeUwsgi, make_sender) -> None:
    """uWSGI runs its post-fork hook in its mules and spooler too, whose
    worker id is 0: each reported as an idle instance (a diff review counted
    four startup reports for two workers and a mule and a spooler)."""
    telemetry = make_sender(settled=False)
    run_hook(uwsgi)  # worker id still 0: a mule
    assert telemetry.flusher is not None and not telemetry.flusher.running
    uwsgi.worker = 1
    run_hook(uwsgi)
    assert telemetry.flusher.running
