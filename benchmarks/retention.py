"""What data retention costs the reports arriving meanwhile.

``Storage.prune`` deletes what is past the retention in batches, one
transaction each (``collector/storage/sql.py``). On SQLite a transaction that
writes holds the database's one write lock, so the question is how long a
report that arrives during a prune waits. This measures it, in this process,
against a baseline taken in the same run:

1. A database (a SQLite file; then PostgreSQL on a throwaway cluster from
   ``tests/postgres.py`` when its server binaries are installed) is filled
   with old reports of 50 records each, as a busy app fills them
   (:func:`benchmarks.collector.filled_batch`), received long before the
   retention. That is :data:`OLD_REPORTS` reports, two or three batches of
   ``PRUNE_BATCH``.
   They are spread over :data:`OLD_DAYS` days, as days of a fleet's reports.
2. **Quiet**: one thread stores new reports back to back through
   ``Storage.store``; the time of each is noted.
3. **While rolling up**: a second thread rolls those days up
   (``Storage.roll_up``, the collector's hourly upkeep after an upgrade),
   and the first stores new reports back to back until it has ended.
4. **While pruning**: a second thread prunes everything old (the daily rows
   included), and the first stores new reports back to back until the prune
   has ended.

Reported: the median, p99 and longest time to store one report in each
phase, the ratio of each p99 to the quiet p99, and how long the roll-up and
the prune took for how many reports and rows. No budget is set for these figures
in the issues; they say what an operator can expect. Run with
``python -m benchmarks retention`` (not part of the default ``make bench``);
``BENCH_QUICK=1`` makes it a smoke test of a few seconds.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from reqtelemetry.collector.storage import open_storage
from reqtelemetry.collector.storage import sql as sql_storage
from reqtelemetry.collector.storage.base import Pruned, RolledUp, StoredReport
from reqtelemetry.collector.storage.sql import SQLStorage
from reqtelemetry.payload import UNPACED, Envelope, build_reports
from reqtelemetry.recorder import Batch

from . import percentile, quick
from .collector import _load_postgres_helpers, filled_batch

T = TypeVar("T")

#: Old reports in the database before the prune: enough for several batches.
OLD_REPORTS = 5000
QUICK_OLD_REPORTS = 60
#: The days the old reports are spread over (then rolled up, a day at a time).
OLD_DAYS = 5
#: New reports stored in the quiet phase (the baseline).
QUIET_REPORTS = 300
QUICK_QUIET_REPORTS = 20
DAY = 86400.0
TRAITS = {
    "os": "linux",
    "arch": "x86_64",
    "python_version": "3.11.7",
    "framework": "fastapi",
    "app_version": "1.0.0",
}


@dataclass
class Result:
    label: str
    skipped: str | None = None
    old_reports: int = 0
    aggregate_rows: int = 0
    quiet: list[float] = field(default_factory=list)
    while_rolling: list[float] = field(default_factory=list)
    roll_seconds: float = 0.0
    rolled: RolledUp | None = None
    while_pruning: list[float] = field(default_factory=list)
    prune_seconds: float = 0.0
    pruned: Pruned | None = None
    fill_seconds: float = 0.0


def payload_of(batch: Batch, deployment: str, instance: str, sequence: int) -> dict[str, Any]:
    envelope = Envelope(
        kind="periodic",
        sequence=sequence,
        deployment_id=deployment,
        instance_id=instance,
        traits=TRAITS,
        withheld=[],
        metrics={"counters": {"jobs.processed": sequence}, "gauges": {"queue": 3.0}},
    )
    (report,) = build_reports(envelope, batch, 1024 * 1024, pacing=UNPACED)
    payload: dict[str, Any] = json.loads(report.body)
    return payload


class Reports:
    """Report payloads of one batch, with the ids and sequence each store needs."""

    def __init__(self, batch: Batch, instances: int = 20) -> None:
        self.payloads = [
            payload_of(batch, str(uuid.uuid4()), str(uuid.uuid4()), 0) for _ in range(instances)
        ]
        self.sequence = 0

    def next(self, received_at: float) -> StoredReport:
        payload = dict(self.payloads[self.sequence % len(self.payloads)])
        payload["sequence"] = self.sequence
        self.sequence += 1
        return StoredReport(
            stamp=f"bench-{uuid.uuid4().hex}", received_at=received_at, payload=payload
        )


def timed_store(storage: SQLStorage, reports: Reports) -> float:
    report = reports.next(time.time())
    begin = time.perf_counter()
    storage.store(report)
    return time.perf_counter() - begin


def while_running(
    work: Callable[[], T], storage: SQLStorage, reports: Reports
) -> tuple[T | None, float, list[float]]:
    """Run ``work`` in a second thread while this one stores ``reports`` back to
    back: what it returned (None if it raised), how long it took, and how long
    each store took meanwhile."""
    outcome: list[T] = []
    took: list[float] = []
    done = threading.Event()

    def run() -> None:
        begin = time.perf_counter()
        try:
            outcome.append(work())
        finally:
            took.append(time.perf_counter() - begin)
            done.set()

    worker = threading.Thread(target=run, name="upkeep")
    worker.start()
    stores = []
    while not done.is_set():
        stores.append(timed_store(storage, reports))
    worker.join()
    return (outcome[0] if outcome else None), took[0], stores


def measure(label: str, url: str, old_reports: int, quiet_reports: int) -> Result:
    result = Result(label)
    batch = filled_batch()
    storage = open_storage(url)
    try:
        storage.migrate()
        old, new = Reports(batch), Reports(batch)
        long_ago = (time.time() - 400 * DAY) // DAY * DAY  # a midnight: OLD_DAYS whole days
        spacing = OLD_DAYS * DAY / old_reports
        began = time.perf_counter()
        for n in range(old_reports):
            storage.store(old.next(long_ago + n * spacing))
        result.fill_seconds = time.perf_counter() - began
        result.old_reports = old_reports
        result.aggregate_rows = old_reports * len(batch.records)

        result.quiet = [timed_store(storage, new) for _ in range(quiet_reports)]

        result.rolled, result.roll_seconds, result.while_rolling = while_running(
            storage.roll_up, storage, new
        )
        result.pruned, result.prune_seconds, result.while_pruning = while_running(
            lambda: storage.prune(time.time() - 90 * DAY), storage, new
        )
    finally:
        storage.close()
    return result


def measure_postgres(label: str, old_reports: int, quiet_reports: int) -> Result:
    cluster = _load_postgres_helpers().ThrowawayCluster()
    try:
        try:
            url = cluster.start()
        except (RuntimeError, OSError, ValueError) as error:
            first = (str(error).strip().splitlines() or [repr(error)])[0]
            return Result(label, skipped=f"the throwaway cluster did not start ({first})")
        return measure(label, url, old_reports, quiet_reports)
    finally:
        cluster.stop()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _p99(values: list[float]) -> float:
    """Nearest rank, as every other table ranks (:func:`benchmarks.percentile`).

    Why not ``int(0.99 * n)`` as an index: one rank too high whenever 0.99·n
    is whole, as for the quiet phase's 300 reports (the 298th, not the 297th).
    """
    return percentile(sorted(values), 0.99)


def table(results: list[Result]) -> list[str]:
    lines = [
        "| database | phase | reports stored | median ms | p99 ms | longest ms "
        "| p99 ratio vs quiet |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        if result.skipped is not None:
            lines.append(f"| {result.label} | — | skipped: {result.skipped} | | | | |")
            continue
        quiet_p99 = _p99(result.quiet)
        phases = (
            ("quiet", result.quiet),
            ("while rolling up", result.while_rolling),
            ("while pruning", result.while_pruning),
        )
        for phase, values in phases:
            if not values:
                continue
            ratio = "—" if phase == "quiet" else f"{_p99(values) / quiet_p99:.2f}x"
            lines.append(
                f"| {result.label} | {phase} | {len(values)} | {_ms(statistics.median(values))} "
                f"| {_ms(_p99(values))} | {_ms(max(values))} | {ratio} |"
            )
    return lines


def prune_lines(results: list[Result]) -> list[str]:
    lines = []
    for result in results:
        if result.skipped is not None or result.pruned is None:
            continue
        pruned = result.pruned
        rate = pruned.reports / result.prune_seconds if result.prune_seconds else 0.0
        if result.rolled is not None:
            lines.append(
                f"- {result.label}: the roll-up added {result.rolled.days} days up into "
                f"{result.rolled.rows:,} daily rows in {result.roll_seconds:.2f} s "
                f"({sql_storage.CHUNK_ROWS:,} rows per transaction, and a pause after each "
                "day as long as it took)"
            )
        lines.append(
            f"- {result.label}: the prune deleted {pruned.reports:,} reports "
            f"({result.aggregate_rows:,} aggregate rows), {pruned.instances} instances and "
            f"{pruned.deployments} deployments in {result.prune_seconds:.2f} s "
            f"({rate:,.0f} reports/s, {sql_storage.PRUNE_BATCH:,} per transaction); "
            f"filling the database took {result.fill_seconds:.1f} s"
        )
    return lines


def run() -> str:
    old = QUICK_OLD_REPORTS if quick() else OLD_REPORTS
    quiet = QUICK_QUIET_REPORTS if quick() else QUIET_REPORTS
    with tempfile.TemporaryDirectory(prefix="reqtelemetry-retention-") as workdir:
        results = [measure("SQLite", f"sqlite:///{Path(workdir) / 'bench.db'}", old, quiet)]
    if quick():
        results.append(Result("PostgreSQL", skipped="not in quick mode"))
    else:
        results.append(measure_postgres("PostgreSQL", old, quiet))
    mode = "quick (BENCH_QUICK=1: rough, for smoke tests)" if quick() else "full"
    lines = [
        "## Collector: storing reports while old ones are rolled up and pruned",
        "",
        f"- mode: {mode}; {old:,} old reports of 50 records each over {OLD_DAYS} days, "
        "then `Storage.roll_up` and `Storage.prune` in turn in a second thread while this "
        "one stores new reports back to back; the baseline is "
        f"{quiet:,} reports stored with neither running, in the same process",
        "",
        *table(results),
        "",
        *prune_lines(results),
    ]
    return "\n".join(lines)
