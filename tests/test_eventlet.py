"""Under eventlet (``eventlet.monkey_patch()``, ``gunicorn -k eventlet``).

Its green ``Popen`` is built on a second copy of the ``subprocess`` module,
whose ``TimeoutExpired`` is another class: it escaped the flusher's poll of
its minting child, so every stamp that took longer than 50 ms failed and no
report reached a collector at 20 bits. And under ``--preload`` the flusher,
restarted as a real thread in the fork hook, ran beside eventlet's hub: past
the startup report nothing was sent. (gunicorn 24 and later have no eventlet
worker, so the worker's case is checked against eventlet's own API here.)
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import types

import pytest

from reqtelemetry import green, hashcash


def _second_copy_of_subprocess():
    """What eventlet's ``patcher.original("subprocess")`` makes: the module run again."""
    spec = importlib.util.spec_from_file_location("subprocess", subprocess.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    return copy


def test_mint_survives_a_popen_from_another_copy_of_subprocess(monkeypatch):
    copy = _second_copy_of_subprocess()
    assert copy.TimeoutExpired is not subprocess.TimeoutExpired
    monkeypatch.setattr(subprocess, "Popen", copy.Popen)  # what eventlet.monkey_patch() does
    monkeypatch.setattr(hashcash, "CANCEL_POLL", 0.001)  # every stamp takes longer than a poll
    stamp = hashcash.mint_in_subprocess("r" * 16, 16, timeout=30, cancel=threading.Event())
    assert hashcash._meets(stamp, "r" * 16, 16)


def test_a_late_stamp_from_such_a_popen_is_still_a_timeout_error(monkeypatch):
    copy = _second_copy_of_subprocess()
    monkeypatch.setattr(subprocess, "Popen", copy.Popen)
    with pytest.raises(TimeoutError):
        hashcash.mint_in_subprocess("r" * 16, 60, timeout=0.3, cancel=threading.Event())


def test_an_eventlet_worker_not_yet_patched_has_green_threads_coming(monkeypatch):
    patched = {"thread": False}
    patcher = types.SimpleNamespace(is_monkey_patched=lambda name: patched[name])
    monkeypatch.delitem(sys.modules, "gevent.monkey", raising=False)
    monkeypatch.delitem(sys.modules, "gunicorn.workers.ggevent", raising=False)
    monkeypatch.setitem(sys.modules, "gunicorn.workers.geventlet", types.ModuleType("x"))
    monkeypatch.setitem(sys.modules, "eventlet.patcher", patcher)
    assert green.green_threads_coming()
    patched["thread"] = True  # the worker's monkey_patch() ran: threads are green now
    assert not green.green_threads_coming()
