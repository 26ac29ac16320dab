"""What the collector's defences cost: minting against verifying, and ingestion rate.

The collector is a public endpoint, defended by proof of work: a client pays
about ``2**bits`` SHA-1s to mint a hashcash stamp, the collector one SHA-1 to
check it (``docs/protocol.md``). This module measures both sides of that
bargain, and what a verified, stored report costs a real collector, each
against a baseline taken in the same run.

1. **Minting vs verifying** at 16, 20 (the default) and 22 bits: the median and
   mean time of ``hashcash.mint`` in this process over a few stamps per
   difficulty (minting time is geometrically distributed, so median and mean
   differ, and a few stamps give a rough figure: the hash rate, from the
   counters of the stamps found, gives the expected time ``2**bits / rate``
   too), one ``hashcash.mint_in_subprocess`` per difficulty (what a host app
   pays, child interpreter start-up included), and the median time of
   ``hashcash.verify`` on a valid stamp, timed in batches. The baseline is the
   verification: the ratio mint/verify is what proof of work buys, checked
   against the design's budget (verify at least 10,000 times cheaper than
   minting at 20 bits).

2. **Reports ingested per second.** A real collector (``reqtelemetry
   collector``: ``create_app`` under uvicorn on 127.0.0.1) runs in a child
   process, on SQLite and then on PostgreSQL (a throwaway cluster from
   ``tests/postgres.py``, when its server binaries are installed). Each of a
   few client threads in this process opens a session for its own deployment
   and instance, and gets a stock of envelopes built *before* timing: reports of
   50 records each (``payload.build_reports`` from a filled ``Recorder``, about
   40 occupied histogram bins per record), each with its own stamp minted at the
   collector's difficulty, gzipped as the transport sends them. The collector
   runs at 8 bits: minting is the client's cost, measured in part 1; the
   collector's verification costs the same at any difficulty. The clients POST
   them back to back (closed loop, one keep-alive ``httpx.Client`` each); the
   baseline is the same server answering ``GET /healthz`` to the same clients,
   in interleaved rounds. Afterwards the database must hold exactly as many
   reports as were answered ``200 {"stored": true}``. The server's CPU time
   per request (from ``/proc``, all its threads) is reported next to the
   rates, since on a small machine the clients and the database compete with
   the server for the same cores.

Run alone with ``python -m benchmarks collector``; ``BENCH_QUICK=1`` cuts it to
a smoke test of well under 20 seconds (PostgreSQL is skipped then).
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import hashlib
import importlib.util
import json
import math
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks import ROOT, iqr, load_average, percentile, quick
from benchmarks.overhead import CLOCKS, clock_name
from reqtelemetry import hashcash
from reqtelemetry.collector.settings import DEFAULT_BITS
from reqtelemetry.collector.tokens import TokenSigner
from reqtelemetry.collector.verify import Limits, check_payload, verify_report
from reqtelemetry.config import Config
from reqtelemetry.payload import UNPACED, Envelope, build_reports
from reqtelemetry.recorder import Batch, Recorder
from reqtelemetry.traits import SystemTraits

#: The design's budget: verifying a stamp at least this many times cheaper than minting it.
BUDGET_RATIO = 10_000
#: Difficulties measured in part 1 (the collector's default among them).
MINT_BITS = (16, 20, 22)
#: The ingestion collector's difficulty: cheap to pre-mint, costs the server the same.
INGEST_BITS = 8
RECORDS_PER_REPORT = 50

#: Row labels (the smoke test checks they are present).
BACKEND_LABELS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
PHASE_LABELS = {
    "healthz": "GET /healthz (baseline)",
    "report": f"POST /v1/report, {RECORDS_PER_REPORT} records, verified + stored",
}


@dataclass(frozen=True)
class Settings:
    #: In-process stamps per difficulty, and the time after which no new one is started.
    mint_stamps: dict[int, int]
    mint_seconds: float
    #: Difficulties that also get one ``mint_in_subprocess`` stamp.
    subprocess_bits: tuple[int, ...]
    subprocess_timeout: float
    #: ``mint_in_subprocess`` of a 1-bit stamp, its fixed cost: the fastest of these runs.
    child_floor_runs: int
    verify_rounds: int
    verify_batch: int
    clients: int
    rounds: int
    healthz_seconds: float
    report_seconds: float
    postgres: bool
    max_envelopes_per_client: int
    #: Reports timed through ``verify_report`` in this process (the reference row).
    in_process_reports: int


FULL = Settings(
    mint_stamps={16: 20, 20: 8, 22: 4},
    mint_seconds=12.0,
    subprocess_bits=MINT_BITS,
    subprocess_timeout=60.0,
    child_floor_runs=3,
    verify_rounds=15,
    verify_batch=2000,
    clients=4,
    rounds=3,
    healthz_seconds=2.0,
    report_seconds=5.0,
    postgres=True,
    max_envelopes_per_client=1500,
    in_process_reports=30,
)
QUICK = Settings(
    mint_stamps={16: 2, 20: 1, 22: 1},
    mint_seconds=3.0,
    subprocess_bits=(16, 20),
    subprocess_timeout=10.0,
    child_floor_runs=1,
    verify_rounds=3,
    verify_batch=200,
    clients=2,
    rounds=1,
    healthz_seconds=0.5,
    report_seconds=1.5,
    postgres=False,
    max_envelopes_per_client=200,
    in_process_reports=4,
)


# -- small helpers -------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _random_resource() -> str:
    return hashlib.sha256(os.urandom(32)).hexdigest()


def _attempts(stamp: str) -> int:
    """How many candidates ``hashcash.mint`` tried before this stamp.

    Its counter is ``hex(head)`` then three hex digits (``tail``), heads
    counting from 1 with 4096 tails each, tried in order.
    """
    counter = stamp.rsplit(":", 1)[1]
    return (int(counter[:-3], 16) - 1) * 4096 + int(counter[-3:], 16) + 1


# -- part 1: minting against verifying -----------------------------------------------


@dataclass
class MintRow:
    bits: int
    mint_ms: list[float] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    subprocess_ms: float | None = None
    subprocess_note: str = ""
    verify_us: list[float] = field(default_factory=list)

    @property
    def hashes_per_second(self) -> float:
        return sum(self.attempts) / (sum(self.mint_ms) / 1000)

    @property
    def ratio(self) -> float:
        return _median(self.mint_ms) * 1000 / _median(self.verify_us)


def _timed_batch(call: Callable[[], Any], n: int, clock: Callable[[], int]) -> float:
    """Nanoseconds per call over ``n`` calls, the garbage collector off."""
    gc.collect()
    gc.disable()
    try:
        start = clock()
        for _ in range(n):
            call()
        return (clock() - start) / n
    finally:
        gc.enable()


def _mint_in_child(bits: int, settings: Settings) -> tuple[float | None, str]:
    """Wall milliseconds of one ``mint_in_subprocess`` stamp, and a note."""
    resource = _random_resource()
    begin = time.perf_counter()
    try:
        stamp = hashcash.mint_in_subprocess(resource, bits, timeout=settings.subprocess_timeout)
    except TimeoutError:
        return None, f"timed out (> {settings.subprocess_timeout:g} s)"
    elapsed_ms = (time.perf_counter() - begin) * 1000
    hashcash.verify(stamp, resource, bits)  # a real stamp, or this raises
    return elapsed_ms, f"{_attempts(stamp):,} hashes"


def measure_minting(settings: Settings, clock: Callable[[], int]) -> tuple[list[MintRow], dict]:
    rows = []
    for bits in MINT_BITS:
        row = MintRow(bits)
        started = time.perf_counter()
        stamp = resource = ""
        for _ in range(settings.mint_stamps[bits]):
            resource = _random_resource()
            begin = clock()
            stamp = hashcash.mint(resource, bits)
            row.mint_ms.append((clock() - begin) / 1e6)
            row.attempts.append(_attempts(stamp))
            hashcash.verify(stamp, resource, bits)  # a real stamp, or this raises
            if time.perf_counter() - started > settings.mint_seconds:
                break
        if bits in settings.subprocess_bits:
            row.subprocess_ms, row.subprocess_note = _mint_in_child(bits, settings)
        else:
            row.subprocess_note = "not run in quick mode"

        def verify_once(stamp: str = stamp, resource: str = resource, bits: int = bits) -> None:
            hashcash.verify(stamp, resource, bits)

        verify_once()  # warm up
        for _ in range(settings.verify_rounds):
            row.verify_us.append(_timed_batch(verify_once, settings.verify_batch, clock) / 1000)
        rows.append(row)

    # Floors: one SHA-1 of a stamp (verify's unavoidable work), and a child
    # interpreter minting a 1-bit stamp (mint_in_subprocess's fixed cost).
    stamp_bytes = hashcash.mint(_random_resource(), 8).encode()
    sha1 = hashlib.sha1
    floors_sha1 = [
        _timed_batch(lambda: sha1(stamp_bytes).digest(), settings.verify_batch, clock) / 1000
        for _ in range(settings.verify_rounds)
    ]
    child_start_ms = min(
        _mint_in_child(1, settings)[0] or math.inf for _ in range(settings.child_floor_runs)
    )
    return rows, {"sha1_us": _median(floors_sha1), "child_start_ms": child_start_ms}


def minting_section(settings: Settings, clock_label: str, clock: Callable[[], int]) -> str:
    started = time.perf_counter()
    rows, floors = measure_minting(settings, clock)
    elapsed = time.perf_counter() - started
    all_attempts = sum(sum(row.attempts) for row in rows)
    all_seconds = sum(sum(row.mint_ms) for row in rows) / 1000
    rate = all_attempts / all_seconds
    table = [
        "| bits | stamps | mint ms, median | mint ms, mean | expected ms (2^bits ÷ rate) "
        "| mint_in_subprocess ms (1 stamp) | verify µs, median | verify IQR µs "
        "| mint/verify (medians) | hashes/s | budget |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        budget = "—"
        if row.bits == DEFAULT_BITS:
            verdict = "PASS" if row.ratio >= BUDGET_RATIO else "MISS"
            budget = f"≥ {BUDGET_RATIO:,}x: **{verdict}**"
        child = (
            f"{row.subprocess_ms:,.0f} ({row.subprocess_note})"
            if row.subprocess_ms is not None
            else row.subprocess_note
        )
        table.append(
            f"| {row.bits} | {len(row.mint_ms)} | {_median(row.mint_ms):,.1f} "
            f"| {statistics.fmean(row.mint_ms):,.1f} | {2**row.bits / rate * 1000:,.1f} "
            f"| {child} | {_median(row.verify_us):.2f} | {iqr(row.verify_us):.2f} "
            f"| {row.ratio:,.0f}x | {_rate(row.hashes_per_second)} | {budget} |"
        )
    default = next((row for row in rows if row.bits == DEFAULT_BITS), None)
    expected_ratio = (
        2**DEFAULT_BITS / rate * 1e6 / _median(default.verify_us) if default else math.nan
    )
    lines = [
        "### Minting vs verifying a stamp",
        "",
        "`hashcash.mint` in this process, a few stamps per difficulty on fresh random "
        "resources; one `hashcash.mint_in_subprocess` per difficulty (wall clock, the "
        "child's start-up included); `hashcash.verify` of a valid stamp (reads the "
        "clock, parses, one SHA-1), median over batches with the garbage collector off. "
        "The verification is the baseline: mint/verify is what a stamp costs its sender "
        "per unit of the collector's work.",
        "",
        f"- {len(rows)} difficulties in {elapsed:.1f} s; clock for in-process timings: "
        f"{clock_label}; {settings.verify_rounds} batches of {settings.verify_batch} "
        "verifications per difficulty",
        f"- hash rate over all in-process stamps: {rate:,.0f} SHA-1 candidates/s "
        f"({all_attempts:,} tried in {all_seconds:.2f} s, counted from the stamps' "
        "counters); minting time is geometrically distributed, so with a few stamps the "
        "median and mean are rough and the expected time (2^bits ÷ rate) is the steadier "
        "figure",
        f"- floors: one `hashlib.sha1(stamp).digest()` {floors['sha1_us']:.2f} µs (the "
        "SHA-1 that verify cannot avoid); a child minting a 1-bit stamp "
        f"{floors['child_start_ms']:,.0f} ms, fastest of {settings.child_floor_runs} (what "
        "`mint_in_subprocess` adds to any stamp)",
        f"- budget at the default {DEFAULT_BITS} bits, verify ≥ {BUDGET_RATIO:,}x cheaper "
        "than minting, judged on the medians; with the expected minting time instead "
        f"the ratio is {expected_ratio:,.0f}x",
        "",
        *table,
    ]
    return "\n".join(lines)


# -- part 2: the collector under load ------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3 onwards of ``/proc/<pid>/stat`` (after the command name), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of one process, all its threads (Linux only)."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU of a process, its live children and the children it reaped (a postmaster)."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    total = sum(int(value) for value in fields[11:15])
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            child = _stat_fields(int(entry.name))
            if child is not None and child[1] == str(pid):
                total += int(child[11]) + int(child[12])
    return total / _TICK


class CollectorProcess:
    """``reqtelemetry collector`` in a child process, as an operator would run it."""

    def __init__(self, db_url: str, workdir: Path, bits: int) -> None:
        self.db_url = db_url
        self.bits = bits
        self.log_path = workdir / f"collector-{uuid.uuid4().hex[:8]}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("REQTELEMETRY_COLLECTOR_", "REQTELEMETRY_DASHBOARD_"))
        }
        env["REQTELEMETRY_COLLECTOR_SECRET"] = secrets.token_urlsafe(32)
        env["REQTELEMETRY_DASHBOARD_TOKEN"] = secrets.token_urlsafe(16)
        for attempt in range(3):
            self.port = free_port()
            command = [
                sys.executable,
                "-c",
                "import sys; from reqtelemetry.cli import main; sys.exit(main(sys.argv[1:]))",
                "collector",
                "--db",
                self.db_url,
                "--bits",
                str(self.bits),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ]
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
                )
            if self._wait_ready(timeout=30.0):
                return
            self.stop()
            if attempt == 2:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the collector did not start:\n{tail}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return True
                time.sleep(0.05)
        return False

    def cpu_seconds(self) -> float | None:
        return None if self.process is None else process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def filled_batch(seed: int = 20240607) -> Batch:
    """A batch of 50 keys filled through ``Recorder.record``, as a busy app would fill it.

    Each key gets a few hundred requests spread log-normally around its own
    median (2-300 ms), which gives about 40 occupied histogram bins per record.
    """
    rng = random.Random(seed)
    recorder = Recorder()
    resources = ("users", "orders", "items", "carts", "payments", "invoices", "reviews")
    suffixes = ("", "/{id}", "/{id}/history", "/{id}/items/{item_id}")
    routes = [f"/api/v{v}/{r}{s}" for v in (1, 2) for r in resources for s in suffixes]
    keys: set[tuple[str, str, int]] = set()
    while len(keys) < RECORDS_PER_REPORT:
        keys.add(
            (
                rng.choice(("GET", "GET", "GET", "POST", "PUT", "DELETE")),
                rng.choice(routes),
                rng.choice((200, 200, 200, 201, 204, 400, 404, 500)),
            )
        )
    for key in sorted(keys):
        median = rng.uniform(0.002, 0.3)
        request_size = rng.randint(0, 2048)
        record_draws(recorder, rng, key, median, request_size, rng.randint(100, 600))
    return recorder.collect()


def record_draws(
    recorder: Recorder,
    rng: random.Random,
    key: tuple[str, str, int],
    median: float,
    request_size: int,
    count: int,
) -> None:
    """``count`` requests of ``key`` through ``Recorder.record``: latencies
    drawn log-normally around ``median`` (sigma 0.3), response sizes of 64
    bytes to 64 KiB, each request drawing the one, then the other."""
    method, route, status = key
    for _ in range(count):
        recorder.record(
            method,
            route,
            status,
            median * rng.lognormvariate(0.0, 0.3),
            request_size,
            rng.randint(64, 65536),
        )


@dataclass
class Sender:
    """One client: its ids, its session token, its stock of ready envelopes."""

    deployment_id: str
    instance_id: str
    token: str = ""
    envelopes: list[bytes] = field(default_factory=list)
    position: int = 0
    client: httpx.Client | None = None


def open_sessions(url: str, count: int) -> list[Sender]:
    senders = []
    for _ in range(count):
        sender = Sender(str(uuid.uuid4()), str(uuid.uuid4()))
        sender.client = httpx.Client(base_url=url, timeout=60.0)
        answer = sender.client.post(
            "/v1/session",
            json={"deployment_id": sender.deployment_id, "instance_id": sender.instance_id},
        )
        answer.raise_for_status()
        body = answer.json()
        if body["bits"] != INGEST_BITS:
            raise RuntimeError(f"the collector asks for {body['bits']} bits, not {INGEST_BITS}")
        sender.token = body["token"]
        senders.append(sender)
    return senders


def make_envelope(
    sender: Sender, sequence: int, batch: Batch, traits: Any, withheld: Any, bits: int
) -> tuple[bytes, bytes]:
    """A gzipped ``/v1/report`` body with a fresh stamp, and its report's bytes."""
    envelope = Envelope(
        kind="periodic",
        sequence=sequence,
        deployment_id=sender.deployment_id,
        instance_id=sender.instance_id,
        traits=traits,
        withheld=withheld,
        metrics={"counters": {"jobs.processed": 1200 + sequence}, "gauges": {"queue": 3.0}},
    )
    reports = build_reports(envelope, batch, 512 * 1024, pacing=UNPACED)
    if len(reports) != 1:
        raise RuntimeError(f"the batch split into {len(reports)} reports")
    payload = reports[0].body
    stamp = hashcash.mint(hashcash.payload_resource(sender.token, payload), bits)
    body = json.dumps({"token": sender.token, "stamp": stamp, "payload": payload.decode()})
    return gzip.compress(body.encode(), compresslevel=6), payload


class Stock:
    """Builds envelopes for the senders, ahead of the timed phases."""

    def __init__(self, batch: Batch, bits: int) -> None:
        self.batch = batch
        self.bits = bits
        self.traits, self.withheld = SystemTraits(
            Config.resolve(environ={}, argv=[], app_name="bench", app_version="1.4.2")
        ).current()
        self.sequence = 0
        self.built = 0
        self.seconds = 0.0

    def top_up(self, senders: list[Sender], per_sender: int) -> None:
        started = time.perf_counter()
        for sender in senders:
            while len(sender.envelopes) - sender.position < per_sender:
                body, _ = make_envelope(
                    sender, self.sequence, self.batch, self.traits, self.withheld, self.bits
                )
                sender.envelopes.append(body)
                self.sequence += 1
                self.built += 1
        self.seconds += time.perf_counter() - started


REPORT_HEADERS = {
    "Content-Type": "application/json",
    "Content-Encoding": "gzip",
    "User-Agent": "reqtelemetry-bench",
}


@dataclass
class Phase:
    """What one timed phase (or all rounds of one kind) did."""

    ok: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    rates: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    db_cpu: float = 0.0
    exhausted: bool = False

    def add(self, other: Phase) -> None:
        self.ok += other.ok
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.errors.update(other.errors)
        self.rates.append(other.ok / other.seconds if other.seconds else 0.0)
        self.server_cpu += other.server_cpu
        self.db_cpu += other.db_cpu
        self.exhausted = self.exhausted or other.exhausted


def _one_request(sender: Sender, kind: str) -> tuple[bool, str]:
    """Send one request; (stored or healthy, what went wrong)."""
    client = sender.client
    assert client is not None
    try:
        if kind == "healthz":
            response = client.get("/healthz")
            return response.status_code == 200, f"HTTP {response.status_code}"
        body = sender.envelopes[sender.position]
        sender.position += 1
        response = client.post("/v1/report", content=body, headers=REPORT_HEADERS)
        if response.status_code == 200 and response.json().get("stored") is True:
            return True, ""
        return False, f"HTTP {response.status_code} {response.text[:120]}"
    except (httpx.HTTPError, ValueError) as error:  # ValueError: a 200 that is not JSON
        return False, f"{type(error).__name__}: {error}"


def run_phase(
    senders: list[Sender],
    kind: str,
    seconds: float,
    cpu: Callable[[], float | None],
    db_cpu: Callable[[], float | None],
    max_requests: int | None = None,
) -> Phase:
    """Every sender on its own thread, back to back, until ``seconds`` pass."""
    barrier = threading.Barrier(len(senders) + 1)
    deadline = [math.inf]
    results: list[tuple[int, list[float], Counter[str], float, bool]] = []
    lock = threading.Lock()

    def work(sender: Sender) -> None:
        ok, exhausted = 0, False
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        barrier.wait()
        sent = 0
        while time.perf_counter() < deadline[0]:
            if max_requests is not None and sent >= max_requests:
                break
            if kind == "report" and sender.position >= len(sender.envelopes):
                exhausted = True
                break
            begin = time.perf_counter()
            good, why = _one_request(sender, kind)
            latencies.append(time.perf_counter() - begin)
            sent += 1
            if good:
                ok += 1
            else:
                errors[why] += 1
        ended = time.perf_counter()
        with lock:
            results.append((ok, latencies, errors, ended, exhausted))

    threads = [threading.Thread(target=work, args=(sender,), daemon=True) for sender in senders]
    for thread in threads:
        thread.start()
    cpu_before, db_before = cpu(), db_cpu()
    started = time.perf_counter()
    deadline[0] = started + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    cpu_after, db_after = cpu(), db_cpu()
    phase = Phase()
    phase.seconds = max(result[3] for result in results) - started
    for ok, latencies, errors, _, exhausted in results:
        phase.ok += ok
        phase.latencies += latencies
        phase.errors.update(errors)
        phase.exhausted = phase.exhausted or exhausted
    if cpu_before is not None and cpu_after is not None:
        phase.server_cpu = cpu_after - cpu_before
    if db_before is not None and db_after is not None:
        phase.db_cpu = db_after - db_before
    return phase


@dataclass
class BackendResult:
    label: str
    phases: dict[str, Phase] = field(default_factory=dict)
    #: Whether the database runs in its own processes (its CPU is then measured).
    has_db_cpu: bool = False
    skipped: str = ""
    sent_reports: int = 0
    stored_reports: int = -1
    stored_requests: int = -1
    requests_per_report: int = 0
    warmup_reports: int = 0
    envelopes_built: int = 0
    build_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _none() -> float | None:
    return None


def measure_backend(
    label: str,
    db_url: str,
    workdir: Path,
    settings: Settings,
    batch: Batch,
    db_cpu: Callable[[], float | None] = _none,
) -> BackendResult:
    """Start a collector on ``db_url``, load it in rounds, check what it stored."""
    from reqtelemetry.collector.storage import open_storage

    result = BackendResult(label, has_db_cpu=db_cpu is not _none)
    result.requests_per_report = sum(record["count"] for record in batch.records)
    collector = CollectorProcess(db_url, workdir, INGEST_BITS)
    stock = Stock(batch, INGEST_BITS)
    senders: list[Sender] = []
    try:
        collector.start()
        senders = open_sessions(collector.url, settings.clients)

        # Warm up (connections, the database's pool and caches) and estimate the
        # rate, so the stock built before timing is large enough but not wasteful.
        stock.top_up(senders, 3)
        warm = run_phase(senders, "report", 60.0, _none, _none, max_requests=3)
        run_phase(senders, "healthz", 0.3, _none, _none)
        if warm.errors:
            raise RuntimeError(f"warm-up reports were refused: {dict(warm.errors)}")
        result.warmup_reports = warm.ok
        estimate = warm.ok / warm.seconds
        total_seconds = settings.report_seconds * settings.rounds
        per_sender = min(
            settings.max_envelopes_per_client,
            math.ceil(estimate * total_seconds * 2 / len(senders)) + 4,
        )
        stock.top_up(senders, per_sender)
        result.envelopes_built, result.build_seconds = stock.built, stock.seconds

        totals = {kind: Phase() for kind in PHASE_LABELS}
        for round_ in range(settings.rounds):
            order = list(PHASE_LABELS) if round_ % 2 == 0 else list(PHASE_LABELS)[::-1]
            for kind in order:
                seconds = settings.healthz_seconds if kind == "healthz" else settings.report_seconds
                totals[kind].add(run_phase(senders, kind, seconds, collector.cpu_seconds, db_cpu))
        result.phases = totals
        result.sent_reports = result.warmup_reports + totals["report"].ok

        # Stored is what counts: the database must hold every report answered 200.
        storage = open_storage(db_url)
        try:
            counted = storage.totals(0.0)
        finally:
            storage.close()
        result.stored_reports = int(counted["reports"])
        result.stored_requests = int(counted["requests"])
        refused = sum(totals["report"].errors.values())
        if refused:
            result.notes.append(f"refused or failed: {dict(totals['report'].errors)}")
        if totals["report"].exhausted:
            result.notes.append(
                "a client ran out of pre-built envelopes before its phase ended "
                "(its rate is still completed ÷ elapsed)"
            )
    finally:
        for sender in senders:
            if sender.client is not None:
                sender.client.close()
        collector.stop()
    return result


def _load_postgres_helpers() -> Any:
    """``tests/postgres.py``, imported by path (``tests`` is not a package)."""
    name = "_reqtelemetry_bench_postgres"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "postgres.py")
        if spec is None or spec.loader is None:
            raise ImportError("cannot load tests/postgres.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def measure_postgres(label: str, workdir: Path, settings: Settings, batch: Batch) -> BackendResult:
    """The PostgreSQL rows, on a throwaway cluster stopped (and deleted) afterwards.

    A cluster that cannot start is a row saying why, not a failed benchmark.
    """
    cluster = _load_postgres_helpers().ThrowawayCluster()
    try:
        try:
            url = cluster.start()
            postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as error:
            first = (str(error).strip().splitlines() or [repr(error)])[0]
            return BackendResult(label, skipped=f"the throwaway cluster did not start ({first})")

        def cpu() -> float | None:
            return tree_cpu_seconds(postmaster)

        return measure_backend(label, url, workdir, settings, batch, db_cpu=cpu)
    finally:
        cluster.stop()


def in_process_costs(batch: Batch, count: int) -> dict[str, float]:
    """Checks 1-10 of one report in this process, one thread: the server's floor."""
    signer = TokenSigner(secrets.token_bytes(32))
    sender = Sender(str(uuid.uuid4()), str(uuid.uuid4()))
    sender.token, _ = signer.issue(sender.deployment_id, sender.instance_id)
    stock = Stock(batch, INGEST_BITS)
    limits = Limits(
        max_body_bytes=1024 * 1024, bits=INGEST_BITS, stamp_max_age=600, stamp_max_future=120
    )
    claims = signer.verify(sender.token)
    bodies = [
        make_envelope(sender, n, batch, stock.traits, stock.withheld, INGEST_BITS)
        for n in range(count + 1)
    ]
    verify_report(bodies[0][0], "gzip", signer=signer, limits=limits, now=time.time())  # warm
    whole, payload = [], []
    for body, report in bodies[1:]:
        begin = time.perf_counter()
        verify_report(body, "gzip", signer=signer, limits=limits, now=time.time())
        whole.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        check_payload(report, claims)
        payload.append(time.perf_counter() - begin)
    body, report = bodies[-1]
    return {
        "verify_report_ms": _median(whole) * 1000,
        "check_payload_ms": _median(payload) * 1000,
        "gzip_bytes": len(body),
        "payload_bytes": len(report),
    }


def _ingestion_rows(result: BackendResult) -> list[str]:
    if result.skipped:
        return [f"| {result.label} | — | skipped: {result.skipped} |" + " — |" * 8]
    rows = []
    baseline = result.phases["healthz"]
    base_rate = baseline.ok / baseline.seconds
    base_cpu = baseline.server_cpu / max(baseline.ok, 1)
    for kind, label in PHASE_LABELS.items():
        phase = result.phases[kind]
        rate = phase.ok / phase.seconds
        cpu_ms = phase.server_cpu / max(phase.ok, 1) * 1000
        db_ms = f"{phase.db_cpu / max(phase.ok, 1) * 1000:.2f}" if result.has_db_cpu else "—"
        if kind == "report":
            stored_ok = result.stored_reports == result.sent_reports
            stored = (
                f"{result.stored_reports}/{result.sent_reports} "
                f"{'✓' if stored_ok else '**MISMATCH**'}"
            )
            cpu_ratio = f"{cpu_ms / 1000 / base_cpu:,.0f}x" if base_cpu > 0 else "—"
        else:
            stored = "—"
            cpu_ratio = "1x"
        ratio = f"{rate / base_rate:.4f}x" if base_rate else "—"
        rows.append(
            f"| {result.label} | {label} | {phase.ok:,} in {phase.seconds:.1f} s "
            f"| {_rate(rate)} | {_rate(min(phase.rates))} to {_rate(max(phase.rates))} "
            f"| {ratio} | {cpu_ms:.2f} | {cpu_ratio} | {db_ms} "
            f"| {percentile(sorted(phase.latencies), 0.5) * 1000:.1f} / "
            f"{percentile(sorted(phase.latencies), 0.99) * 1000:.1f} | {stored} |"
        )
    return rows


def ingestion_section(settings: Settings) -> str:
    started = time.perf_counter()
    load_before = load_average()
    batch = filled_batch()
    bins = statistics.fmean(len(record["latency"]["histogram"]) for record in batch.records)
    costs = in_process_costs(batch, settings.in_process_reports)
    results: list[BackendResult] = []
    with tempfile.TemporaryDirectory(prefix="reqtelemetry-bench-collector-") as temp:
        workdir = Path(temp)
        sqlite_url = f"sqlite:///{workdir / 'collector.db'}"  # absolute: sqlite:////tmp/...
        results.append(
            measure_backend(BACKEND_LABELS["sqlite"], sqlite_url, workdir, settings, batch)
        )
        label = BACKEND_LABELS["postgres"]
        if not settings.postgres:
            results.append(BackendResult(label, skipped="not run in quick mode (BENCH_QUICK=1)"))
        elif importlib.util.find_spec("psycopg") is None:
            results.append(BackendResult(label, skipped="psycopg is not installed"))
        else:
            helpers = _load_postgres_helpers()
            try:
                helpers.find_binaries()
            except helpers.PostgresUnavailable:
                results.append(
                    BackendResult(
                        label,
                        skipped="no PostgreSQL server binaries (initdb, pg_ctl) in PATH "
                        "or /usr/lib/postgresql/*/bin",
                    )
                )
            else:
                results.append(measure_postgres(label, workdir, settings, batch))
    elapsed = time.perf_counter() - started

    # The collector's HTTP parser is h11 whatever is installed (httptools
    # keeps header lines without limit); only the event loop is uvicorn's pick.
    server = "uvicorn with h11, uvloop " + (
        "installed" if importlib.util.find_spec("uvloop") else "absent"
    )
    lines = [
        "### Reports ingested per second",
        "",
        "A real collector (`reqtelemetry collector`, one uvicorn process, its checks and "
        "storage calls on Starlette's worker threads) in a child process on 127.0.0.1; "
        f"{settings.clients} client threads in this process, one keep-alive `httpx.Client` "
        "and one session (own deployment and instance) each, closed loop. Envelopes are "
        "built before timing: one report of "
        f"{RECORDS_PER_REPORT} records each (`payload.build_reports` from a filled "
        f"`Recorder`, {bins:.0f} histogram bins per record on average, "
        f"{costs['payload_bytes'] / 1024:.0f} KiB of JSON, {costs['gzip_bytes'] / 1024:.1f} "
        "KiB gzipped), each with its own stamp. "
        f"**The collector requires {INGEST_BITS}-bit stamps here**: minting is the "
        "client's cost (part 1), verifying costs the collector one SHA-1 at any "
        "difficulty. The baseline is the same server's `GET /healthz` with the same "
        "clients, so the ratio is the price of checks 1-11 and storage.",
        "",
        f"- {settings.rounds} round(s) of {settings.healthz_seconds:g} s `/healthz` and "
        f"{settings.report_seconds:g} s reports per database, alternating order; "
        f"{elapsed:.1f} s in all; load average before: {load_before}, after: "
        f"{load_average()}; {os.cpu_count()} CPUs shared by clients, server and database",
        f"- server: {server}; req/s: completed ÷ elapsed over all rounds, range over rounds; "
        "latency: per request as the client saw it",
        "- server CPU: the collector process's user + system time (all threads, from "
        "`/proc`) per completed request; database CPU: the PostgreSQL server's processes "
        "(SQLite runs inside the collector process, so its cost is in server CPU)",
        "- stored/sent: reports in the database after the run ÷ reports answered "
        '`200 {"stored": true}` (warm-up included)',
        f"- in this process, one thread: `verify_report` (checks 1-10) of one report takes "
        f"{costs['verify_report_ms']:.1f} ms, of which `check_payload` (parse + JSON Schema "
        f"+ ids) {costs['check_payload_ms']:.1f} ms; `hashcash.verify` is a few µs (part 1)",
    ]
    for result in results:
        if result.skipped:
            continue
        expected = result.stored_reports * result.requests_per_report
        check = "✓" if result.stored_requests == expected else "**MISMATCH**"
        lines.append(
            f"- {result.label}: {result.warmup_reports} warm-up reports; "
            f"{result.envelopes_built} envelopes built and stamped in "
            f"{result.build_seconds:.1f} s before timing; requests counted in the stored "
            f"aggregates {result.stored_requests:,} = {result.stored_reports} reports x "
            f"{result.requests_per_report:,} {check}"
        )
        lines.extend(f"- {result.label}: {note}" for note in result.notes)
    lines += [
        "",
        "| database | requests | completed | req/s | range over rounds | ratio vs /healthz "
        "| server CPU ms/request | server CPU vs /healthz | database CPU ms/request "
        "| latency p50 / p99 ms | stored/sent |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        lines.extend(_ingestion_rows(result))
    return "\n".join(lines)


def run() -> str:
    """Measure both parts and return the markdown section."""
    settings = QUICK if quick() else FULL
    clock = clock_name()
    clock_label = f"`time.{CLOCKS[clock].__name__}` (`BENCH_CLOCK={clock}`)"
    mode = "quick (BENCH_QUICK=1: rough, for smoke tests)" if quick() else "full"
    minting = minting_section(settings, clock_label, CLOCKS[clock])
    ingestion = ingestion_section(settings)
    lines = [
        "## Collector: proof of work and ingestion",
        "",
        f"- mode: {mode}",
        "",
        minting,
        "",
        ingestion,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
