"""A key's byte sums past 64 bits: each request's count fits the wire format
(a WSGI server's declared Content-Length of 18 digits, or Telemetry.record's
fitted bound), but their sum per key did not, and the collector refused the
whole report, every other record of the period with it."""

from __future__ import annotations

import json

from reqtelemetry.collector.tokens import Claims
from reqtelemetry.collector.verify import check_payload
from reqtelemetry.payload import UNPACED, Envelope, build_reports
from reqtelemetry.recorder import Recorder
from reqtelemetry.telemetry import parse_content_length

DEPLOYMENT = "6f1c0d8e-2b8a-4d55-9a51-0f7f3c1d2e4b"
INSTANCE = "0b4f5a43-9a7e-4a47-8f0c-5c7b9d2c1a10"
#: The schema's and the collector's largest integer.
MAX_RECORD_INTEGER = 2**63 - 1


def test_byte_sums_past_64_bits_are_sent_at_the_bound_and_the_report_is_taken() -> None:
    declared = parse_content_length("999999999999999999")  # what a client may declare
    assert declared == 999_999_999_999_999_999
    recorder = Recorder()
    for _ in range(100):
        recorder.record("GET", "/items/{id}", 200, 0.01, 0, 10)
    for _ in range(10):  # 10 such requests: 9.99e18 bytes, past 2**63 - 1
        recorder.record("POST", "/health", 200, 0.002, declared, MAX_RECORD_INTEGER)
    envelope = Envelope("periodic", 0, DEPLOYMENT, INSTANCE, {}, [], {"counters": {}, "gauges": {}})
    claims = Claims(DEPLOYMENT, INSTANCE, expires_at=0.0, nonce="n")
    (report,) = build_reports(envelope, recorder.collect(), 1_000_000, pacing=UNPACED)
    payload = check_payload(report.body, claims)  # raised Refusal: out of the 64-bit range
    records = {record["route"]: record for record in payload["batch"]["records"]}
    assert records["/items/{id}"]["count"] == 100
    assert records["/health"]["count"] == 10
    assert records["/health"]["request_bytes"] == MAX_RECORD_INTEGER
    assert records["/health"]["response_bytes"] == MAX_RECORD_INTEGER


def test_snapshot_says_what_the_report_says() -> None:
    recorder = Recorder()
    for _ in range(3):
        recorder.record("GET", "/big", 200, 0.01, 2**62, 2**62)
    (record,) = recorder.snapshot()
    assert record["request_bytes"] == record["response_bytes"] == MAX_RECORD_INTEGER
    stats = recorder.collect().stats[("GET", "/big", 200)]
    assert json.loads(stats.to_json(("GET", "/big", 200))) == stats.to_record(("GET", "/big", 200))
