"""Phase (e) of the flush-latency benchmark: the minting child's start alone.

Opt-in (``BENCH_START_CONTROL=1``): it tells whether starting a process is
what a stamp costs the requests beyond the idle-priority hashing of (d).
No timing is asserted.
"""

from __future__ import annotations

import os
import sys
import threading
import time

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


def _minting_children() -> set[int]:
    """Pids of this process's children whose command line mints a stamp."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])  # after "pid (comm) state"
            with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if ppid == os.getpid() and b"mint" in argv:
            found.add(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_start_window_starts_the_minting_child_then_sleeps_to_its_length() -> None:
    """A real child mints a stamp of 0 bits (seen in ``/proc`` while it runs),
    and the window lasts (d)'s length: the start without the hashing."""
    work = flush_latency._start_work(0.3)
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.update(_minting_children())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    began = time.monotonic()
    try:
        work()
    finally:
        elapsed = time.monotonic() - began
        stop.set()
        watcher.join(5)
    assert elapsed >= 0.3
    [(resource, stamp)] = work.stamps  # type: ignore[attr-defined]
    hashcash.verify(stamp, resource, 0)  # raises StampError if it is no stamp for it
    assert seen, "no minting child was seen"
    assert not _minting_children()  # and it is gone
