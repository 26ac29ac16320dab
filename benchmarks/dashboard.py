"""How long the collector's dashboard takes to read, as its database grows.

The dashboard reads one row per report and route, so its time grows with the
rows in its window (README, "How far it scales"). This measures that, in this
process, on SQLite and on PostgreSQL (a throwaway cluster from
``tests/postgres.py``, when its server binaries are installed), so that a
change to the storage (a roll-up of old rows by day, say) can be judged
against the same figures taken before it:

1. **A fleet's data.** :data:`DEPLOYMENTS` deployments of three apps, each of
   one or two instances, each instance sending an hourly report for
   :data:`DAYS` days that end at the last UTC midnight (``now`` for every
   view below: the windows then start on a day's boundary, so a daily
   roll-up must give exactly the figures the raw rows give). A report carries
   about 50 routes with one to three statuses each, about 90 records, each
   filled through ``Recorder.record`` as a busy app fills it (some 40
   histogram bins a record, as :func:`benchmarks.collector.filled_batch`
   makes), and two counters and a gauge. Deployments upgrade their app every
   two weeks, at staggered times; three routes of each app were retired
   :data:`RETIRED_DAYS_AGO` days before the end and two added then, so the
   dashboard has unused endpoints to list. Everything is seeded: two runs
   store the same rows, whatever the date.

   Reports are stored in time order through ``Storage.store`` itself (its
   statements and its Python), :data:`REPORTS_PER_TRANSACTION` of them in one
   transaction of the storage's own executor (``_run``), where the collector
   commits each alone: that only saves the commits. The loading time is
   printed, not measured against anything. On PostgreSQL a ``VACUUM
   (ANALYZE)`` follows (after the roll-up too), as autovacuum would do in
   production by the time anyone looks; SQLite gets nothing (the collector
   never gathers its statistics).

2. **The roll-up backlog.** If the storage has ``roll_up(now=None,
   stop=None)`` (rolling old rows up by day, planned), one call of it, the
   whole backlog, is timed after loading, and the rows are counted again;
   otherwise the section says there is no roll-up in this version.

3. **The views**, each timed :data:`ROUNDS` times in interleaved rounds
   (median, and the fastest to the slowest round): ``build_summary`` of 1, 30
   and 365 days and of 30 days for one app (``app=``), and the CSV export of 30
   days as ``/export.csv`` makes it (``csv_chunks(endpoint_rows(...))``,
   read to the end).

4. **The answers**: each view's key figures (requests, endpoints listed,
   used and unused, rows per version, and a digest of the listed endpoints'
   calls, errors, deployments and percentiles; the CSV's rows, calls and a
   digest), so that a run before a change and one after can be checked to
   answer the same, and SQLite against PostgreSQL.

Run with ``python -m benchmarks dashboard`` (not part of the default ``make
bench``; the full size takes a few minutes per database to load and more to
read). ``BENCH_DASHBOARD_SCALE`` (a factor on the deployments, 1 by default:
about 6.6 million aggregate rows), ``BENCH_DASHBOARD_DAYS``,
``BENCH_DASHBOARD_ROUNDS`` and ``BENCH_DASHBOARD_BACKENDS`` (``sqlite``,
``postgres`` or both, comma-separated) change it; the SQLite file goes to the
temporary directory (``TMPDIR``) and is deleted afterwards, as the cluster is.
``BENCH_QUICK=1`` makes it a smoke test of a few seconds on SQLite alone.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reqtelemetry.collector.export import csv_chunks, endpoint_rows, since_days, started
from reqtelemetry.collector.storage import open_storage
from reqtelemetry.collector.storage.base import StoredReport
from reqtelemetry.collector.storage.sql import SQLStorage
from reqtelemetry.collector.summary import build_summary
from reqtelemetry.payload import UNPACED, Envelope, build_reports
from reqtelemetry.recorder import Batch, Recorder

from . import load_average, quick
from .collector import _load_postgres_helpers, record_draws

DAY = 86400
HOUR = 3600
#: The full run's fleet: about 6.5 million aggregate rows (the README measured 6.6 million).
DEPLOYMENTS = 20
DAYS = 100
ROUNDS = 3
QUICK_DEPLOYMENTS = 3
QUICK_DAYS = 3
APPS = ("shop", "billing", "inventory")
#: Routes every report of an app carries, and those only before or only since
#: the routes changed (the retired ones are the dashboard's unused endpoints).
COMMON_ROUTES = 48
RETIRED_ROUTES = 3
NEW_ROUTES = 2
RETIRED_DAYS_AGO = 45
#: Error statuses a route has besides its success, route by route (5 in 6:
#: about 90 records a report, 6.5 million rows for the full fleet, near the
#: README's 6.6 million).
EXTRA_STATUSES = (0, 1, 2, 1, 0, 1)
#: Days between two releases of an app (each deployment upgrades at its own time).
RELEASE_DAYS = 14
#: Batches filled per app and route era; a report carries one of them.
VARIANTS = 4
QUICK_VARIANTS = 1
REPORTS_PER_TRANSACTION = 100
#: What :func:`settle` does after the load, per database.
SETTLE = {"SQLite": "checkpoint the log", "PostgreSQL": "VACUUM (ANALYZE)"}
#: The app of the filtered view.
FILTERED_APP = APPS[0]


@dataclass(frozen=True)
class Settings:
    deployments: int
    days: int
    rounds: int
    variants: int
    #: Requests recorded per key of a batch, at least and at most.
    requests: tuple[int, int]
    backends: tuple[str, ...]


def settings() -> Settings:
    """The run's size: quick, or the full fleet times ``BENCH_DASHBOARD_SCALE``."""
    if quick():
        return Settings(QUICK_DEPLOYMENTS, QUICK_DAYS, 1, QUICK_VARIANTS, (20, 60), ("sqlite",))
    scale = float(os.environ.get("BENCH_DASHBOARD_SCALE", "1") or 1)
    days = int(os.environ.get("BENCH_DASHBOARD_DAYS", "") or DAYS)
    rounds = int(os.environ.get("BENCH_DASHBOARD_ROUNDS", "") or ROUNDS)
    wanted = os.environ.get("BENCH_DASHBOARD_BACKENDS", "") or "sqlite,postgres"
    backends = tuple(name.strip() for name in wanted.split(",") if name.strip())
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown:
        raise ValueError(f"BENCH_DASHBOARD_BACKENDS: unknown {sorted(unknown)}")
    return Settings(
        deployments=max(1, round(DEPLOYMENTS * scale)),
        days=max(1, days),
        rounds=max(1, rounds),
        variants=VARIANTS,
        requests=(100, 600),
        backends=backends,
    )


# -- the fleet -----------------------------------------------------------------------


def app_routes(app: str) -> list[tuple[str, str]]:
    """(method, route) of every route an app ever served: common, retired, new."""
    rng = random.Random(f"routes-{app}")
    resources = [f"{app}-{name}" for name in ("items", "orders", "users", "notes", "files")]
    suffixes = ("", "/{id}", "/{id}/history", "/{id}/items/{item_id}", "/search")
    routes = [f"/api/v{v}/{r}{s}" for v in (1, 2) for r in resources for s in suffixes]
    rng.shuffle(routes)
    wanted = COMMON_ROUTES + RETIRED_ROUTES + NEW_ROUTES
    return [(rng.choice(("GET", "GET", "GET", "POST", "PUT", "DELETE")), r) for r in routes][
        :wanted
    ]


def fleet_batch(app: str, era: int, variant: int, requests: tuple[int, int]) -> Batch:
    """One hour of an app's traffic: each route with one to three statuses.

    ``era`` 0 is before the routes changed (the retired routes, not the new
    ones), 1 after. Each key gets ``requests`` requests spread log-normally
    around its own median (2-300 ms), as :func:`benchmarks.collector.filled_batch`
    fills them.
    """
    routes = app_routes(app)
    common = routes[:COMMON_ROUTES]
    retired = routes[COMMON_ROUTES : COMMON_ROUTES + RETIRED_ROUTES]
    new = routes[COMMON_ROUTES + RETIRED_ROUTES :]
    served = common + (retired if era == 0 else new)
    rng = random.Random(f"batch-{app}-{era}-{variant}")
    recorder = Recorder()
    for position, (method, route) in enumerate(served):
        route_rng = random.Random(f"route-{app}-{method}-{route}")
        median = route_rng.uniform(0.002, 0.3)
        statuses = [201 if method == "POST" else 204 if method == "DELETE" else 200]
        statuses += route_rng.sample(
            (400, 404, 500), EXTRA_STATUSES[position % len(EXTRA_STATUSES)]
        )
        for status in statuses:
            share = 1.0 if status < 300 else 0.4
            request_size = route_rng.randint(0, 2048)
            count = max(1, int(rng.randint(*requests) * share))
            record_draws(recorder, rng, (method, route, status), median, request_size, count)
    return recorder.collect()


@dataclass(frozen=True)
class Instance:
    id: str
    deployment_id: str
    deployment: int
    app: str
    #: Seconds past each hour at which it reports.
    offset: float


def fleet(deployments: int) -> list[Instance]:
    """The fleet's instances: deployment ``d`` runs ``APPS[d % 3]`` on 1 instance, or 2 when odd."""
    rng = random.Random("fleet")
    instances = []
    for d in range(deployments):
        deployment_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        for _ in range(1 + d % 2):
            instances.append(
                Instance(
                    id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    deployment_id=deployment_id,
                    deployment=d,
                    app=APPS[d % len(APPS)],
                    offset=rng.uniform(0, HOUR - 1),
                )
            )
    return instances


class Fleet:
    """The reports of :func:`fleet`'s instances, hour by hour, as StoredReports."""

    def __init__(self, config: Settings, end: float) -> None:
        self.config = config
        self.end = end
        self.start = end - config.days * DAY
        self.instances = fleet(config.deployments)
        # The routes change this long before the end (or halfway, in a short run).
        self.change = end - min(RETIRED_DAYS_AGO, config.days / 2) * DAY
        self.bases = {
            (app, era, variant): base_payload(fleet_batch(app, era, variant, config.requests), app)
            for app in APPS
            for era in (0, 1)
            for variant in range(config.variants)
        }
        self.hours = config.days * 24

    @property
    def reports(self) -> int:
        return self.hours * len(self.instances)

    def records(self) -> int:
        """Aggregate rows the fleet's reports carry."""
        total = 0
        for instance in self.instances:
            for hour in range(self.hours):
                received = self.start + hour * HOUR + instance.offset
                total += len(self._base(instance, hour, received)["batch"]["records"])
        return total

    def _base(self, instance: Instance, hour: int, received: float) -> dict[str, Any]:
        era = 0 if received < self.change else 1
        variant = (instance.deployment + hour) % self.config.variants
        return self.bases[(instance.app, era, variant)]

    def __iter__(self) -> Iterator[StoredReport]:
        for hour in range(self.hours):
            for number, instance in enumerate(self.instances):
                received = self.start + hour * HOUR + instance.offset
                day = hour // 24
                release = (day + instance.deployment * 3) // RELEASE_DAYS
                base = self._base(instance, hour, received)
                payload = dict(base)
                payload.update(
                    sent_at=round(received - 0.05, 3),
                    sequence=hour,
                    deployment_id=instance.deployment_id,
                    instance_id=instance.id,
                    traits={**base["traits"], "app_version": f"2.{release}.0"},
                    metrics={
                        "counters": {"jobs.processed": 40 + hour % 7, "emails.sent": 3},
                        "gauges": {"queue.depth": float((hour + number) % 11)},
                    },
                    batch={
                        **base["batch"],
                        "period_start": received - HOUR,
                        "period_end": received,
                    },
                )
                yield StoredReport(
                    stamp=f"dash-{number}-{hour}", received_at=received, payload=payload
                )


def base_payload(batch: Batch, app: str) -> dict[str, Any]:
    """A report payload of ``batch``, as a client encodes it; the fleet fills in the rest."""
    envelope = Envelope(
        kind="periodic",
        sequence=0,
        deployment_id=str(uuid.UUID(int=0)),
        instance_id=str(uuid.UUID(int=0)),
        traits={
            "app_name": app,
            "app_version": "2.0.0",
            "os": "linux",
            "arch": "x86_64",
            "python_version": "3.12.3",
            "framework": "fastapi",
        },
        withheld=[],
        metrics={"counters": {}, "gauges": {}},
    )
    (report,) = build_reports(envelope, batch, 16 * 1024 * 1024, pacing=UNPACED)
    payload: dict[str, Any] = json.loads(report.body)
    return payload


def store_together(storage: SQLStorage, reports: list[StoredReport]) -> None:
    """Each report through ``storage.store``, all of them in one transaction.

    ``store`` runs its work through ``self._run``: for the while, that is the
    executor of one transaction already open, so that only the commits are
    saved, every statement and line of Python is ``store``'s own.
    """

    def work(ex: Any) -> None:
        def inside(step: Callable[[Any], Any], *args: Any, **kwargs: Any) -> Any:
            return step(ex)

        storage._run = inside  # type: ignore[method-assign]
        try:
            for report in reports:
                storage.store(report)
        finally:
            del storage._run

    storage._run(work, write=True)


def load(storage: SQLStorage, reports: Iterable[StoredReport]) -> None:
    chunk: list[StoredReport] = []
    for report in reports:
        chunk.append(report)
        if len(chunk) >= REPORTS_PER_TRANSACTION:
            store_together(storage, chunk)
            chunk = []
    if chunk:
        store_together(storage, chunk)


# -- measuring -----------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    label: str
    run: Callable[[SQLStorage, float], dict[str, Any]]


def summary_view(days: int, app: str | None = None) -> Callable[[SQLStorage, float], dict]:
    def run(storage: SQLStorage, now: float) -> dict[str, Any]:
        return summary_figures(build_summary(storage, days, now=now, app=app))

    return run


def export_view(days: int) -> Callable[[SQLStorage, float], dict[str, Any]]:
    """What ``GET /export.csv?days=...`` does: the query run before anything is
    sent (``started``), then every chunk of CSV text read. The rows and calls
    are counted on their way to the CSV writer."""

    def run(storage: SQLStorage, now: float) -> dict[str, Any]:
        tally = {"rows": 0, "calls": 0}

        def counted(rows: Generator[dict[str, Any], None, None]) -> Generator[dict, None, None]:
            try:
                for row in rows:
                    tally["rows"] += 1
                    tally["calls"] += int(row["calls"])
                    yield row
            finally:
                rows.close()

        chunks = started(csv_chunks(counted(endpoint_rows(storage, since_days(days, now)))))
        digest = hashlib.sha256()
        try:
            for chunk in chunks:
                digest.update(chunk.encode())
        finally:
            chunks.close()
        return {**tally, "digest": digest.hexdigest()[:12]}

    return run


def summary_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary's key figures: what a before/after comparison checks."""
    endpoints = summary["endpoints"]
    used = [row for row in endpoints if row["calls"]]
    listed = [
        (
            row["app_name"],
            row["method"],
            row["route"],
            row["calls"],
            row["errors"],
            row["deployments"],
            row["p50"],
            row["p95"],
            row["p99"],
        )
        for row in endpoints
    ]
    return {
        "requests": summary["totals"]["requests"],
        "errors": summary["totals"]["errors"],
        "reports": summary["totals"]["reports"],
        "used": len(used),
        "unused": len(endpoints) - len(used),
        "by_version": len(summary["endpoints_by_version"]),
        "digest": hashlib.sha256(repr(listed).encode()).hexdigest()[:12],
    }


def views() -> list[View]:
    return [
        View("summary, 1 day", summary_view(1)),
        View("summary, 30 days", summary_view(30)),
        View("summary, 365 days", summary_view(365)),
        View(f"summary, 30 days, app={FILTERED_APP}", summary_view(30, FILTERED_APP)),
        View("CSV export, 30 days", export_view(30)),
    ]


@dataclass
class Result:
    label: str
    skipped: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    size: int = 0
    load_seconds: float = 0.0
    settle_seconds: float = 0.0
    roll_up: str = "no roll-up in this version"
    counts_after: dict[str, int] | None = None
    size_after: int | None = None
    seconds: dict[str, list[float]] = field(default_factory=dict)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    differing: list[str] = field(default_factory=list)


def row_counts(storage: SQLStorage) -> dict[str, int]:
    def work(ex: Any) -> dict[str, int]:
        return {
            table: int(ex.query(f"SELECT COUNT(*) FROM {table}")[0][0])
            for table in ("reports", "aggregates", "metrics")
        }

    return storage._run(work)


def database_size(storage: SQLStorage, path: Path | None) -> int:
    if path is not None:
        return sum(
            Path(f"{path}{suffix}").stat().st_size
            for suffix in ("", "-wal")
            if Path(f"{path}{suffix}").exists()
        )
    rows = storage._run(lambda ex: ex.query("SELECT pg_database_size(current_database())"))
    return int(rows[0][0])


def settle(storage: SQLStorage, path: Path | None, postgres_url: str | None) -> None:
    """After a bulk of writes: SQLite's log checkpointed into the file (so that
    its size is the file's); PostgreSQL's ``VACUUM (ANALYZE)``, as autovacuum
    would have run by the time anyone looks (and not in the middle of a view)."""
    if path is not None:
        # Outside a transaction (SQLite checkpoints nothing inside one).
        storage._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
    if postgres_url is not None:
        import psycopg

        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute("VACUUM (ANALYZE)")


def progress(text: str) -> None:
    """A line on stderr while a long run goes on (stdout is the report)."""
    print(f"  dashboard: {text}", file=sys.stderr, flush=True)


def measure(
    label: str,
    url: str,
    config: Settings,
    fleet_reports: Fleet,
    path: Path | None = None,
    postgres_url: str | None = None,
) -> Result:
    result = Result(label)
    storage = open_storage(url)
    try:
        storage.migrate()
        began = time.perf_counter()
        load(storage, fleet_reports)
        result.load_seconds = time.perf_counter() - began
        began = time.perf_counter()
        settle(storage, path, postgres_url)
        result.settle_seconds = time.perf_counter() - began
        result.counts = row_counts(storage)
        result.size = database_size(storage, path)
        progress(
            f"{label}: loaded {result.counts['reports']:,} reports, "
            f"{result.counts['aggregates']:,} aggregate rows in {result.load_seconds:.0f} s"
        )

        roll_up = getattr(storage, "roll_up", None)
        if callable(roll_up):
            began = time.perf_counter()
            outcome = roll_up()
            rolled = time.perf_counter() - began
            settle(storage, path, postgres_url)
            result.roll_up = f"{rolled:.1f} s for the backlog (returned {outcome!r})"
            result.counts_after = row_counts(storage)
            result.size_after = database_size(storage, path)
            progress(f"{label}: roll-up {result.roll_up}")

        now = fleet_reports.end
        for round_number in range(config.rounds):
            for view in views():
                began = time.perf_counter()
                answer = view.run(storage, now)
                seconds = time.perf_counter() - began
                result.seconds.setdefault(view.label, []).append(seconds)
                known = result.answers.setdefault(view.label, answer)
                if answer != known and view.label not in result.differing:
                    result.differing.append(view.label)
                progress(f"{label}: round {round_number + 1}, {view.label}: {seconds:.2f} s")
    finally:
        storage.close()
    return result


def measure_sqlite(config: Settings, fleet_reports: Fleet) -> Result:
    with tempfile.TemporaryDirectory(prefix="reqtelemetry-dashboard-") as workdir:
        path = Path(workdir) / "dashboard.db"
        return measure("SQLite", f"sqlite:///{path}", config, fleet_reports, path=path)


def measure_postgres(config: Settings, fleet_reports: Fleet) -> Result:
    label = "PostgreSQL"
    try:
        cluster = _load_postgres_helpers().ThrowawayCluster()
    except Exception as error:  # no server binaries: a row saying so
        return Result(label, skipped=str(error).splitlines()[0])
    try:
        try:
            url = cluster.start()
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as error:
            first = (str(error).strip().splitlines() or [repr(error)])[0]
            return Result(label, skipped=f"the throwaway cluster did not start ({first})")
        return measure(label, url, config, fleet_reports, postgres_url=url)
    finally:
        cluster.stop()


# -- the report ----------------------------------------------------------------------


def _seconds(values: list[float]) -> str:
    if not values:
        return "—"
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:.2f}"
    return f"{middle:.2f} ({min(values):.2f} to {max(values):.2f})"


def _size(value: int) -> str:
    return f"{value / 1e9:.2f} GB" if value >= 1e8 else f"{value / 1e6:.1f} MB"


def _counts(counts: dict[str, int]) -> str:
    return (
        f"{counts['reports']:,} reports, {counts['aggregates']:,} aggregate rows, "
        f"{counts['metrics']:,} metric rows"
    )


def header_lines(results: list[Result]) -> list[str]:
    lines = []
    for result in results:
        if result.skipped is not None:
            lines.append(f"- {result.label}: skipped: {result.skipped}")
            continue
        rate = result.counts["aggregates"] / result.load_seconds if result.load_seconds else 0
        lines.append(
            f"- {result.label}: {_counts(result.counts)}; {_size(result.size)}; "
            f"stored in {result.load_seconds:.0f} s ({rate:,.0f} aggregate rows/s; "
            f"then {result.settle_seconds:.0f} s to {SETTLE[result.label]}), not measured figures"
        )
        lines.append(f"- {result.label} roll-up: {result.roll_up}")
        if result.counts_after is not None and result.size_after is not None:
            lines.append(
                f"- {result.label} after the roll-up: {_counts(result.counts_after)}; "
                f"{_size(result.size_after)}"
            )
    return lines


def table(results: list[Result]) -> list[str]:
    labels = [view.label for view in views()]
    heads = " | ".join(f"{result.label} s" for result in results)
    lines = [f"| view | {heads} |", "|---|" + "---:|" * len(results)]
    for label in labels:
        cells = []
        for result in results:
            cells.append(
                f"skipped: {result.skipped}"
                if result.skipped is not None
                else _seconds(result.seconds.get(label, []))
            )
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


def _answer(answer: dict[str, Any]) -> str:
    if "rows" in answer:
        return f"{answer['rows']:,} rows, {answer['calls']:,} calls, csv {answer['digest']}"
    return (
        f"{answer['requests']:,} requests ({answer['errors']:,} errors, "
        f"{answer['reports']:,} reports); endpoints {answer['used']} used + "
        f"{answer['unused']} unused, {answer['by_version']} by version; {answer['digest']}"
    )


def answers_lines(results: list[Result]) -> list[str]:
    measured = [result for result in results if result.skipped is None]
    lines = []
    for view in views():
        texts = {result.label: _answer(result.answers[view.label]) for result in measured}
        if len(set(texts.values())) == 1 and len(texts) > 1:
            lines.append(f"- {view.label}: {next(iter(texts.values()))} (every database)")
        else:
            for label, text in texts.items():
                lines.append(f"- {view.label}, {label}: {text}")
    for result in measured:
        if result.differing:
            lines.append(
                f"- **{result.label} answered differently between rounds**: "
                + ", ".join(result.differing)
            )
    return lines


def last_midnight() -> float:
    today = datetime.datetime.now(datetime.timezone.utc).date()
    midnight = datetime.datetime(today.year, today.month, today.day, tzinfo=datetime.timezone.utc)
    return midnight.timestamp()


def run() -> str:
    config = settings()
    end = last_midnight()
    began = time.perf_counter()
    fleet_reports = Fleet(config, end)
    built = time.perf_counter() - began
    records = fleet_reports.records()
    progress(
        f"{fleet_reports.reports:,} reports of {records:,} records to store "
        f"(batches filled in {built:.1f} s)"
    )
    results = []
    for backend in ("sqlite", "postgres"):
        if backend not in config.backends:
            reason = "not in quick mode" if quick() else "not in BENCH_DASHBOARD_BACKENDS"
            results.append(
                Result("SQLite" if backend == "sqlite" else "PostgreSQL", skipped=reason)
            )
        elif backend == "sqlite":
            results.append(measure_sqlite(config, fleet_reports))
        else:
            results.append(measure_postgres(config, fleet_reports))

    instances = len(fleet_reports.instances)
    mode = "quick (BENCH_QUICK=1: rough, for smoke tests)" if quick() else "full"
    end_text = datetime.datetime.fromtimestamp(end, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    lines = [
        "## Collector: the dashboard's reads as the database grows",
        "",
        f"- mode: {mode}; {config.deployments} deployments of {len(APPS)} apps on "
        f"{instances} instances, an hourly report each for {config.days} days ending "
        f"{end_text} (every view's `now`): {fleet_reports.reports:,} reports, "
        f"{records / max(1, fleet_reports.reports):.0f} records each on average",
        f"- stored through `Storage.store`, {REPORTS_PER_TRANSACTION} reports per "
        "transaction; seconds: the median of "
        f"{config.rounds} interleaved round{'s' if config.rounds > 1 else ''}"
        f"{' (fastest to slowest)' if config.rounds > 1 else ''}; load average at the end: "
        f"{load_average()}",
        *header_lines(results),
        "",
        *table(results),
        "",
        "Answers (the first round's; a digest covers each listed endpoint's app, method, "
        "route, calls, errors, deployments and percentiles, or the CSV text):",
        "",
        *answers_lines(results),
    ]
    return "\n".join(lines)
