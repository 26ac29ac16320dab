"""Phase (e) of the flush-latency benchmark: the minting child's start alone.

Opt-in (``BENCH_START_CONTROL=1``): it tells whether starting a process is
what a stamp costs the requests beyond the idle-priority hashing of (d).
No timing is asserted. (The whole phase runs in the quick smoke run of
tests/test_benchmarks_flush_smoke.py.)
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from benchmarks import flush_latency
from reqtelemetry import hashcash


def test_the_start_control_is_added_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Phase (e) would cost ``make bench`` about a minute it does not have by default."""
    monkeypatch.delenv("BENCH_START_CONTROL", raising=False)
    assert list(flush_latency.phase_labels()) == ["quiet", "flush", "mint", "floor"]
    monkeypatch.setenv("BENCH_START_CONTROL", "1")
    labels = flush_latency.phase_labels()
    assert list(labels) == ["quiet", "flush", "mint", "floor", "start"]
    assert labels["start"] == flush_latency.START_LABEL
    assert list(flush_latency.PHASE_LABELS) == ["quiet", "flush", "mint", "floor"]


def test_the_start_control_reads_no_verdict() -> None:
    samples = flush_latency.PhaseSamples(during_p99=[3000.0], apart_p99=[1000.0])
    samples.during_us = [3000] * 100
    samples.apart_us = [1000] * 100
    samples.elapsed = 1.0
    cells = flush_latency._latency_cells("start", samples, [1.0], [2.0])
    assert "| **3.00x** (3.00) | (control); against the quiet phase 2.00x |" in cells
    assert "PASS" not in cells and "MISS" not in cells


def test_the_table_has_a_start_row_only_where_the_run_has_the_phase() -> None:
    def phases(*names: str) -> dict[str, flush_latency.PhaseSamples]:
        return {name: flush_latency.PhaseSamples() for name in names}

    base = ("quiet", "flush", "mint", "floor")
    table = flush_latency.latency_table({"asgi": phases(*base), "wsgi": phases(*base)})
    assert flush_latency.START_LABEL not in table
    table = flush_latency.latency_table(
        {"asgi": phases(*base, "start"), "wsgi": phases(*base, "start")}
    )
    assert table.count(f"| {flush_latency.START_LABEL} |") == 2


def test_a_start_window_starts_the_minting_child_then_sleeps_to_its_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real child is started to mint a stamp of 0 bits, and the window then
    sleeps what is left of (d)'s length: the start without the hashing."""
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    def popen(args: list[str], *rest: Any, **options: Any) -> Any:
        started.append(list(args))
        return real_popen(args, *rest, **options)

    def no_fallback(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("minted in this process: no child was started")

    monkeypatch.setattr(hashcash.subprocess, "Popen", popen)
    monkeypatch.setattr(hashcash, "_mint_in_slices", no_fallback)
    slept: list[float] = []
    work = flush_latency.StartWork(30.0, sleep=slept.append)
    work()

    [(resource, stamp)] = work.stamps
    hashcash.verify(stamp, resource, 0)  # raises StampError if it is no stamp for it
    [argv] = started
    assert argv[-3:] == ["mint", resource, "0"]
    [took_ms] = work.start_ms
    [rest] = slept
    assert 0 < rest < 30.0
    assert rest == pytest.approx(30.0 - took_ms / 1e3, abs=0.05)


def test_a_start_window_fails_where_no_child_could_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Minted in this process instead, the window started no process: the
    phase must say it failed, not read as a start's cost."""
    monkeypatch.setattr(hashcash, "python_executable", lambda: None)
    monkeypatch.setattr(hashcash, "_fallback_logged", False)
    work = flush_latency.StartWork(0.0, sleep=lambda seconds: None)
    with pytest.raises(RuntimeError, match="no minting child could be started"):
        work()
    assert work.stamps == []
