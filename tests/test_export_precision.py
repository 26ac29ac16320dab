"""The CSV export keeps a fast endpoint's latencies, and a rare error's rate,
as precise as the dashboard's data: a fixed three decimals of a millisecond
(and six of a rate) rounded them past the documented 2 %, or to zero."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from reqtelemetry.collector.export import endpoint_rows
from reqtelemetry.collector.storage import open_storage
from reqtelemetry.collector.storage.base import StoredReport
from reqtelemetry.histogram import bucket_index, bucket_value
from reqtelemetry.payload import UNPACED, Envelope, build_reports
from reqtelemetry.recorder import Recorder


def _exported(recorder: Recorder, directory: Path) -> dict[str, dict[str, Any]]:
    """The CSV rows, by route, of one report of ``recorder``'s requests."""
    deployment, instance = str(uuid.uuid4()), str(uuid.uuid4())
    envelope = Envelope("periodic", 0, deployment, instance, {}, [], {"counters": {}, "gauges": {}})
    (report,) = build_reports(envelope, recorder.collect(), 1_000_000, pacing=UNPACED)
    storage = open_storage(f"sqlite:///{directory / 'c.db'}")
    try:
        storage.migrate()
        storage.store(StoredReport("s", time.time(), json.loads(report.body)))
        return {row["route"]: row for row in endpoint_rows(storage, time.time() - 86400)}
    finally:
        storage.close()


def test_fast_latencies_keep_their_precision(tmp_path: Path) -> None:
    recorder = Recorder()
    latencies = {"/ping": 14.5e-6, "/fast": 3.43e-6, "/slow": 1.2345}
    for route, latency in latencies.items():
        for _ in range(10):
            recorder.record("GET", route, 200, latency, 0, 2)
    rows = _exported(recorder, tmp_path)
    for route, latency in latencies.items():
        estimate = bucket_value(bucket_index(latency))  # the summary's, in seconds
        for column in ("p50_ms", "p95_ms", "p99_ms"):
            assert rows[route][column] == pytest.approx(estimate * 1000, rel=1e-3)
        assert rows[route]["mean_ms"] == pytest.approx(latency * 1000, rel=1e-3)
    assert rows["/slow"]["mean_ms"] == 1234.5  # three decimals still, where they are finer


def test_a_rare_error_has_an_error_rate(tmp_path: Path) -> None:
    recorder = Recorder()
    for _ in range(3_000_000 // 256):  # many calls, one error
        for _ in range(256):
            recorder.record("GET", "/busy", 200, 0.01, 0, 2)
    recorder.record("GET", "/busy", 500, 0.01, 0, 2)
    busy = _exported(recorder, tmp_path)["/busy"]
    assert busy["errors"] == 1
    assert busy["error_rate"] == pytest.approx(1 / busy["calls"], rel=1e-3)
