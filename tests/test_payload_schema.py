"""The wire format's JSON Schema: the documented example passes, anything else does not."""

from __future__ import annotations

import copy
import json
import math
import re
from decimal import Decimal
from fractions import Fraction
from http import HTTPMethod, HTTPStatus
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reqtelemetry import Telemetry
from reqtelemetry.collector.verify import _VALIDATOR, parse_json
from reqtelemetry.config import Config
from reqtelemetry.histogram import MAX_TRACKED, MIN_TRACKED, RELATIVE_ACCURACY
from reqtelemetry.payload import UNPACED, Envelope, build_reports
from reqtelemetry.recorder import OVERFLOW_KEY, Recorder
from reqtelemetry.schema_loader import load_payload_schema
from reqtelemetry.traits import SystemTraits

DOCS = Path(__file__).resolve().parent.parent / "docs" / "payload.md"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = load_payload_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture
def example() -> dict[str, Any]:
    match = re.search(r"```json\n(.*?)\n```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    assert match, "docs/payload.md has no ```json block"
    return json.loads(match.group(1))


def errors(validator: jsonschema.Draft202012Validator, payload: Any) -> list[str]:
    return [error.message for error in validator.iter_errors(payload)]


def one_envelope(counters: dict[str, float] | None = None) -> Envelope:
    """A periodic report's envelope, with ``counters`` as its app metrics."""
    return Envelope(
        kind="periodic",
        sequence=1,
        deployment_id="6f1c0d8e-2b8a-4d55-9a51-0f7f3c1d2e4b",
        instance_id="0e2b7f4c-9d1a-4c3e-8b5f-1a2b3c4d5e6f",
        traits={},
        withheld=(),
        metrics={"counters": counters or {}, "gauges": {}},
    )


def test_schema_is_draft_2020_12() -> None:
    schema = load_payload_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert load_payload_schema() is not schema  # a fresh copy: callers may mutate theirs


def test_docs_example_validates(
    validator: jsonschema.Draft202012Validator, example: dict[str, Any]
) -> None:
    assert errors(validator, example) == []
    assert example["withheld"] == sorted(example["withheld"])
    assert not set(example["withheld"]) & set(example["traits"])


def test_docs_example_histogram_matches_the_code(example: dict[str, Any]) -> None:
    assert example["batch"]["histogram"] == {
        "kind": "log",
        "relative_accuracy": RELATIVE_ACCURACY,
        "min_tracked": MIN_TRACKED,
        "max_tracked": MAX_TRACKED,
    }


def test_docs_tables_name_every_schema_field() -> None:
    text = DOCS.read_text(encoding="utf-8")
    schema = load_payload_schema()
    objects = [
        schema,
        *(schema["$defs"][n] for n in ("traits", "batch", "record", "latency", "metrics")),
    ]
    objects.append(schema["$defs"]["batch"]["properties"]["histogram"])
    for obj in objects:
        for name in obj["properties"]:
            assert f"`{name}`" in text, name


def test_real_recorder_and_traits_output_validates(
    validator: jsonschema.Draft202012Validator, example: dict[str, Any]
) -> None:
    recorder = Recorder(max_keys=2)
    recorder.record("GET", "/items/{id}", 200, 0.004, 0, 512)
    recorder.record("POST", "/items", 201, 0.02, 100, 20)
    recorder.record("DELETE", "/items/{id}", 204, 5000.0, 0, 0)  # lands in the overflow key
    recorder.record("_OTHER", "<unmatched>", 404, 0.0, 0, 0)
    batch = recorder.collect()
    assert any((r["method"], r["route"], r["status"]) == OVERFLOW_KEY for r in batch.records)
    traits, withheld = SystemTraits(Config(disabled_traits=("memory_rss_bytes",))).current()
    payload = copy.deepcopy(example)
    payload["traits"], payload["withheld"] = traits, withheld
    payload["batch"].update(
        records=batch.records,
        dropped=batch.dropped,
        period_start=batch.period_start,
        period_end=batch.period_end,
    )
    assert errors(validator, payload) == []


@pytest.mark.parametrize(
    ("key", "sent"),
    [
        (("get", "/a", 200), ("_OTHER", "/a", 200)),
        (("VERYLONGMETHODNAMEX", "/a", 200), ("_OTHER", "/a", 200)),
        (("GET /", "/a", 200), ("_OTHER", "/a", 200)),
        (("GET", "/a", 1000), ("GET", "/a", 0)),
        (("GET", "/a", -1), ("GET", "/a", 0)),
        (("GET", "/a\x00b", 200), ("GET", "/ab", 200)),
        (("GET", "/caf\udce9", 200), ("GET", "/caf?", 200)),
        (("GET", "/caf\u00e9", 200), ("GET", "/caf\u00e9", 200)),
    ],
)
def test_a_record_the_collector_would_refuse_is_mended_and_the_report_stays_valid(
    validator: jsonschema.Draft202012Validator, key: tuple[str, str, int], sent: tuple
) -> None:
    # Telemetry.record is open to any caller; the collector refuses a whole
    # report for one bad record, the good ones with it.
    recorder = Recorder()
    recorder.record("GET", "/good", 200, 0.01, 0, 1)
    recorder.record(*key, 0.01, 0, 1)
    envelope = one_envelope()
    (report,) = build_reports(envelope, recorder.collect(), 262144, pacing=UNPACED)
    payload = json.loads(report.body)
    assert errors(validator, payload) == []
    assert b"\\u0000" not in report.body  # the collector refuses a NUL in any string
    keys = {(r["method"], r["route"], r["status"]) for r in payload["batch"]["records"]}
    assert keys == {("GET", "/good", 200), sent}


@pytest.mark.parametrize(
    ("duration", "request_bytes", "response_bytes"),
    [
        (-0.001, 0, 10),  # a clock that went back
        (0.01, -1, 10),
        (0.01, 0, -5),
        (2e9, 0, 10),  # past the 1e9 s a report carries
        (math.inf, 0, 10),
        (math.nan, 0, 10),
        (0.01, 2**63, 10),  # past a 64-bit column
    ],
)
def test_numbers_a_report_cannot_carry_are_fitted_and_the_report_stays_valid(
    validator: jsonschema.Draft202012Validator,
    duration: float,
    request_bytes: int,
    response_bytes: int,
) -> None:
    """One negative or oversized number got the whole report refused (422),
    the good records with it; an infinite duration could not be written at
    all, and being merged back, stopped every report after it."""
    telemetry = Telemetry(config=Config.resolve(environ={}, argv=[], app_name="fit"))
    try:
        telemetry.record("GET", "/good", 200, 0.01, 0, 10)
        telemetry.record("GET", "/odd", 200, duration, request_bytes, response_bytes)
        envelope = one_envelope()
        batch = telemetry.recorder.collect()
        (report,) = build_reports(envelope, batch, 262144, pacing=UNPACED)
    finally:
        telemetry.close()
    payload = json.loads(report.body)
    assert errors(validator, payload) == []
    records = {record["route"]: record for record in payload["batch"]["records"]}
    assert records["/good"] == {**records["/good"], "count": 1, "response_bytes": 10}
    odd = records["/odd"]
    assert odd["count"] == 1
    assert 0 <= odd["latency"]["min"] <= odd["latency"]["max"] <= 1e9
    assert odd["request_bytes"] == min(max(request_bytes, 0), 2**63 - 1)
    assert odd["response_bytes"] == max(response_bytes, 0)


def _mutated(example: dict[str, Any], change: Any) -> dict[str, Any]:
    payload = copy.deepcopy(example)
    change(payload)
    return payload


def _record(payload: dict[str, Any]) -> dict[str, Any]:
    return payload["batch"]["records"][0]


REJECTED = {
    "unknown top-level field": lambda p: p.update(hostname="web-1"),
    "unknown trait": lambda p: p["traits"].update(hostname="web-1"),
    "unknown batch field": lambda p: p["batch"].update(ip="10.0.0.1"),
    "unknown record field": lambda p: _record(p).update(path="/items/42"),
    "unknown latency field": lambda p: _record(p)["latency"].update(mean=0.1),
    "unknown histogram parameter": lambda p: p["batch"]["histogram"].update(bins=10),
    # The bucket indexes are read with this version's parameters: a report
    # with others was stored, its percentiles silently misread.
    "other relative accuracy": lambda p: p["batch"]["histogram"].update(relative_accuracy=0.01),
    "other min_tracked": lambda p: p["batch"]["histogram"].update(min_tracked=1e-3),
    "other max_tracked": lambda p: p["batch"]["histogram"].update(max_tracked=60.0),
    "unknown metrics section": lambda p: p["metrics"].update(histograms={}),
    "lower-case method": lambda p: _record(p).update(method="get"),
    "method with space": lambda p: _record(p).update(method="GET /"),
    "method too long": lambda p: _record(p).update(method="A" * 17),
    "negative count": lambda p: _record(p).update(count=-1),
    "zero count": lambda p: _record(p).update(count=0),
    "status above 999": lambda p: _record(p).update(status=1000),
    "route too long": lambda p: _record(p).update(route="/" + "a" * 512),
    "negative bytes": lambda p: _record(p).update(response_bytes=-5),
    "histogram pair of three": lambda p: _record(p)["latency"].update(histogram=[[1, 2, 3]]),
    "histogram zero count": lambda p: _record(p)["latency"].update(histogram=[[1, 0]]),
    "latency max beyond 1e9 s": lambda p: _record(p)["latency"].update(max=2e9),
    "histogram index past max_tracked": lambda p: _record(p)["latency"].update(
        histogram=[[2**40, 1]]
    ),
    "histogram index below min_tracked": lambda p: _record(p)["latency"].update(
        histogram=[[-346, 1]]
    ),
    "upper-case metric name": lambda p: p["metrics"]["counters"].update({"Jobs": 1}),
    "metric name with space": lambda p: p["metrics"]["gauges"].update({"a b": 1}),
    "metric name with trailing dot": lambda p: p["metrics"]["counters"].update({"jobs.": 1}),
    "metric name too long": lambda p: p["metrics"]["counters"].update({"a" * 65: 1}),
    "negative counter": lambda p: p["metrics"]["counters"].update({"jobs": -1}),
    "too many counters": lambda p: p["metrics"]["counters"].update(
        {f"c{i}": 1 for i in range(101)}
    ),
    "bad kind": lambda p: p.update(kind="hourly"),
    "schema version 2": lambda p: p.update(schema_version=2),
    "bad deployment id": lambda p: p.update(deployment_id="web-1"),
    "negative sequence": lambda p: p.update(sequence=-1),
    "zero parts": lambda p: p.update(parts=0),
    "parts beyond 32 bits": lambda p: p.update(parts=2**31),
    "sequence beyond 64 bits": lambda p: p.update(sequence=1e300),
    "count beyond 64 bits": lambda p: _record(p).update(count=1e19),
    "unknown withheld name": lambda p: p.update(withheld=["hostname"]),
    "duplicate withheld name": lambda p: p.update(withheld=["os", "os"]),
    "trait as object": lambda p: p["traits"].update(app_name={"x": 1}),
    "server with free text": lambda p: p["traits"].update(server="My Server 1.0"),
    "missing batch": lambda p: p.pop("batch"),
    "negative dropped": lambda p: p["batch"].update(dropped=-1),
}


def test_records_are_capped_at_10000() -> None:
    # Checked on the schema itself: validating 10 001 records takes seconds.
    records = load_payload_schema()["$defs"]["batch"]["properties"]["records"]
    assert records["maxItems"] == 10000
    small = jsonschema.Draft202012Validator({"type": "array", "maxItems": records["maxItems"]})
    assert not small.is_valid([0] * 10001)


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_schema_rejects(
    validator: jsonschema.Draft202012Validator, example: dict[str, Any], case: str
) -> None:
    assert errors(validator, _mutated(example, REJECTED[case])), case


def test_withheld_traits_may_be_absent_and_null_is_unknown(
    validator: jsonschema.Draft202012Validator, example: dict[str, Any]
) -> None:
    payload = _mutated(example, lambda p: p.update(traits={}, withheld=[]))
    assert errors(validator, payload) == []
    payload = _mutated(example, lambda p: p["traits"].update(framework=None, cpu_count=None))
    assert errors(validator, payload) == []
    payload = _mutated(
        example,
        lambda p: _record(p)["latency"].update(
            p50=None, p95=None, p99=None, min=None, max=None, histogram=[]
        ),
    )
    assert errors(validator, payload) == []


@pytest.mark.parametrize(
    ("duration", "request_bytes", "response_bytes"),
    [
        (0.01, 0, 1536.25),  # a byte count worked out in floats
        (0.01, 0, 2048.0),  # a whole one: the collector takes integers written as such
        (0.01, math.nan, 10),
        (Decimal("0.25"), 0, 10),  # from a database's NUMERIC column
        (Fraction(1, 4), Decimal("12"), 10),
        (1, 0, 10**30),  # an int duration, an int byte count past 64 bits
    ],
)
def test_numbers_of_other_types_leave_the_report_one_the_collector_takes(
    duration: object, request_bytes: object, response_bytes: object
) -> None:
    """A float byte count got the whole report refused (422: "2048.0 is not of
    type 'integer'"), its good records and the app's counters with it; a NaN
    one wrote ``NaN``, which is not JSON; a Decimal duration raised in the
    middle of aggregating it, and left a record with an infinite minimum:
    no report could be built again, for the life of the process."""
    telemetry = Telemetry(config=Config.resolve(environ={}, argv=[], app_name="fit"))
    try:
        telemetry.record("GET", "/good", 200, 0.01, 0, 10)
        telemetry.record("GET", "/odd", 200, duration, request_bytes, response_bytes)  # type: ignore[arg-type]
        telemetry.snapshot()  # aggregates: raised for a Decimal duration
        envelope = one_envelope(counters={"feature.x": 1})
        (report,) = build_reports(envelope, telemetry.recorder.collect(), 262144, pacing=UNPACED)
    finally:
        telemetry.close()
    payload = parse_json(report.body)  # the collector's own reading and checks
    assert [error.message for error in _VALIDATOR.iter_errors(payload)] == []
    records = {record["route"]: record for record in payload["batch"]["records"]}
    assert set(records) == {"/good", "/odd"}
    odd = records["/odd"]
    assert odd["count"] == 1
    assert 0 <= odd["latency"]["min"] <= odd["latency"]["max"] <= 1e9


def test_text_is_still_an_error_where_it_is_passed() -> None:
    telemetry = Telemetry(config=Config.resolve(environ={}, argv=[], app_name="fit"))
    try:
        with pytest.raises(TypeError):
            telemetry.record("GET", "/odd", 200, "0.5", 0, 10)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            telemetry.record("GET", "/odd", 200, 0.5, 0, "10")  # type: ignore[arg-type]
        assert telemetry.snapshot() == []
    finally:
        telemetry.close()


def test_a_method_or_route_that_is_not_text_is_an_error_where_it_is_passed() -> None:
    """A None route (``getattr(request.url_rule, "rule", None)``) or a bytes
    method was accepted, then no report could be built: every flush failed,
    for the life of the process, and the data was merged back each time."""
    telemetry = Telemetry(config=Config.resolve(environ={}, argv=[], app_name="fit"))
    try:
        with pytest.raises(TypeError):
            telemetry.record("GET", None, 404, 0.01, 0, 1)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            telemetry.record(b"GET", "/x", 200, 0.01, 0, 1)  # type: ignore[arg-type]
        assert telemetry.snapshot() == []
    finally:
        telemetry.close()


def wire_records_in_full(telemetry: Telemetry) -> list[dict[str, Any]]:
    """The records of the report ``telemetry`` would send now, as the collector reads them."""
    envelope = one_envelope()
    (report,) = build_reports(envelope, telemetry.recorder.collect(), 262144, pacing=UNPACED)
    payload = parse_json(report.body)
    assert [error.message for error in _VALIDATOR.iter_errors(payload)] == []
    return list(payload["batch"]["records"])


def wire_records(telemetry: Telemetry) -> list[tuple[str, str, int]]:
    """The keys of the report ``telemetry`` would send now, as the collector reads them."""
    return sorted((r["method"], r["route"], r["status"]) for r in wire_records_in_full(telemetry))


def test_record_takes_a_method_of_the_standard_librarys_type() -> None:
    """``http.HTTPMethod.GET`` is a ``str`` (a StrEnum): accepted and sent as
    ``GET`` before acaa116, a TypeError since (docs/payload.md: "a method or
    route that is not a `str` is a `TypeError`")."""
    telemetry = Telemetry(config=Config.resolve(environ={}, argv=[], app_name="fit"))
    try:
        telemetry.record(HTTPMethod.POST, "/jobs", 201, 0.01, 0, 10)
        records = wire_records(telemetry)
    finally:
        telemetry.close()
    assert records == [("POST", "/jobs", 201)]


def test_record_sends_an_httpstatus_as_that_status() -> None:
    """``HTTPStatus.CREATED`` is an ``int``: sent as status 0, which
    docs/payload.md keeps for a status outside 0-999 (and the overflow record)."""
    telemetry = Telemetry(config=Config.resolve(environ={}, argv=[], app_name="fit"))
    try:
        telemetry.record("POST", "/jobs", HTTPStatus.CREATED, 0.01, 0, 10)
        telemetry.record("POST", "/jobs", 201, 0.01, 0, 10)  # the same key
        telemetry.record("GET", "/odd", True, 0.01, 0, 10)  # no status: unknown, as before
        records = wire_records(telemetry)
    finally:
        telemetry.close()
    assert records == [("GET", "/odd", 0), ("POST", "/jobs", 201)]
