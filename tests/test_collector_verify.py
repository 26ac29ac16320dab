"""The collector's checks as pure functions: the hand-written histogram check
agrees with the JSON Schema, gzip bodies cost work linear in their size, and
what the schema lets through but a database cannot hold is refused."""

from __future__ import annotations

import gzip
import json
import sys
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reqtelemetry.collector import verify
from reqtelemetry.collector.tokens import Claims, TokenSigner
from reqtelemetry.collector.verify import (
    GZIP_RATIO_SLACK,
    MAX_ENDPOINT_KEY_BYTES,
    MAX_GZIP_MEMBERS,
    MAX_GZIP_RATIO,
    MAX_HISTOGRAM_PAIRS,
    MAX_LATENCY_SECONDS,
    Limits,
    Refusal,
    check_payload,
    gunzip_capped,
    inflation_limit,
    parse_json,
    read_envelope,
    verify_report,
)
from reqtelemetry.histogram import MAX_INDEX, MIN_INDEX
from reqtelemetry.payload import MAX_ROUTE_BYTES, UNPACED, Envelope, build_reports
from reqtelemetry.recorder import Recorder
from reqtelemetry.schema_loader import load_payload_schema
from reqtelemetry.traits import MAX_TEXT_LENGTH
from reqtelemetry.transport import GZIP_LEVEL, build_envelope, gzip_paced

DEPLOYMENT = "6f1c0d8e-2b8a-4d55-9a51-0f7f3c1d2e4b"
INSTANCE = "0b4f5a43-9a7e-4a47-8f0c-5c7b9d2c1a10"
CLAIMS = Claims(deployment_id=DEPLOYMENT, instance_id=INSTANCE, expires_at=0.0, nonce="n")
SCHEMA = load_payload_schema()
HISTOGRAM_SCHEMA = SCHEMA["$defs"]["latency"]["properties"]["histogram"]


def report() -> dict:
    recorder = Recorder()
    for i in range(5):
        recorder.record("GET", f"/r/{i}", 200, 0.001 * (i + 1), 0, 10)
    return json.loads(built_body(recorder))


def built_body(recorder: Recorder) -> bytes:
    """The one report the client builds from what ``recorder`` holds."""
    envelope = Envelope(
        kind="periodic",
        sequence=0,
        deployment_id=DEPLOYMENT,
        instance_id=INSTANCE,
        traits={},
        withheld=[],
        metrics={"counters": {}, "gauges": {}},
    )
    (built,) = build_reports(envelope, recorder.collect(), 1 << 20, pacing=UNPACED)
    return built.body


def with_histogram(histogram) -> bytes:
    """A valid report whose record 3 has ``histogram``, and the count it holds
    where that can be added up (a histogram of one shape or another)."""
    payload = report()
    record = payload["batch"]["records"][3]
    record["latency"]["histogram"] = histogram
    if isinstance(histogram, list) and all(
        isinstance(pair, list) and len(pair) == 2 and type(pair[1]) is int for pair in histogram
    ):
        record["count"] = sum(pair[1] for pair in histogram) or record["count"]
    return json.dumps(payload).encode()


def with_count(payload: dict[str, Any], position: int, count: int) -> dict[str, Any]:
    """``payload`` with record ``position`` of ``count`` requests, all in one bucket."""
    record = payload["batch"]["records"][position]
    record["count"] = count
    record["latency"]["histogram"] = [[record["latency"]["histogram"][0][0], count]]
    return payload


def refusal_of(payload: dict[str, Any]) -> Refusal:
    with pytest.raises(Refusal) as refused:
        check_payload(json.dumps(payload).encode(), CLAIMS)
    assert refused.value.reason == "invalid_payload"
    assert refused.value.status == 422
    return refused.value


def test_a_valid_report_passes_with_its_histograms_intact():
    payload = check_payload(json.dumps(report()).encode(), CLAIMS)
    assert all(r["latency"]["histogram"] for r in payload["batch"]["records"])


@pytest.mark.parametrize(
    "histogram",
    [
        "not a list",
        [[1]],
        [[1, 2, 3]],
        [[1, 0]],
        [[1, -4]],
        [["1", 2]],
        [[1, True]],
        [[1.5, 2]],
        [{"index": 1}],
        [[i, 1] for i in range(MAX_HISTOGRAM_PAIRS + 1)],
        [[2**40, 1]],
        [[MIN_INDEX - 1, 1]],
        [[MAX_INDEX + 1, 1]],
    ],
)
def test_bad_histograms_are_refused_with_where_and_why(histogram):
    with pytest.raises(Refusal) as refused:
        check_payload(with_histogram(histogram), CLAIMS)
    assert refused.value.reason == "invalid_payload"
    assert "batch/records/3/latency/histogram" in refused.value.detail


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("batch/records/2/route", lambda p: p["batch"]["records"][2].update(route="/a\0b")),
        ("traits/app_version", lambda p: p["traits"].update(app_version="1.0\0")),
        ("traits/app_name", lambda p: p["traits"].update(app_name="\0")),
        ("traits/os", lambda p: p["traits"].update(os="linux\0x")),
    ],
)
def test_strings_holding_nul_are_refused_naming_the_field(where, change):
    payload = report()
    change(payload)
    refusal = refusal_of(payload)
    assert refusal.detail.startswith(f"{where}: ")
    assert "NUL" in refusal.detail


def test_an_escaped_backslash_before_u0000_is_not_a_nul():
    payload = report()
    payload["traits"]["app_name"] = "\\u0000"  # a backslash, then the text u0000
    assert "\\\\u0000" in json.dumps(payload)
    assert check_payload(json.dumps(payload).encode(), CLAIMS)["traits"]["app_name"] == "\\u0000"


def _record_0(payload: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = payload["batch"]["records"][0]
    return record


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("sequence", lambda p: p.update(sequence=1e300)),
        ("sequence", lambda p: p.update(sequence=4.0)),
        ("parts", lambda p: p.update(parts=2**31)),
        ("part", lambda p: p.update(part=2**31)),
        ("internal_errors", lambda p: p.update(internal_errors=1e3)),
        ("batch/dropped", lambda p: p["batch"].update(dropped=0.0)),
        ("batch/records/0/count", lambda p: _record_0(p).update(count=1e19)),
        ("batch/records/0/status", lambda p: _record_0(p).update(status=200.0)),
        ("batch/records/0/response_bytes", lambda p: _record_0(p).update(response_bytes=1e18)),
        ("traits/cpu_count", lambda p: p["traits"].update(cpu_count=4.0)),
    ],
)
def test_integers_must_be_written_as_integers_within_the_columns(where, change):
    payload = report()
    change(payload)
    assert refusal_of(payload).detail.startswith(f"{where}: ")


def test_the_largest_integers_the_columns_hold_pass():
    payload = report()
    payload.update(sequence=2**63 - 1, part=2**31 - 2, parts=2**31 - 1)
    with_count(payload, 0, 2**63 - 1)
    _record_0(payload).update(request_bytes=2**63 - 1)
    payload["traits"]["memory_rss_bytes"] = 2**63 - 1
    assert check_payload(json.dumps(payload).encode(), CLAIMS)["parts"] == 2**31 - 1


#: How a refusal for a record whose histogram does not hold its count ends.
COUNT_MISMATCH = "; they must be equal"


@pytest.mark.parametrize(
    ("count", "histogram", "held"),
    [
        (10, [[-100, 1]], 1),  # 10 calls shown, with the percentiles of one
        (1, [[-100, 2]], 2),
        (3, [[-100, 1], [-90, 1]], 2),
        (2**63 - 1, [[-100, 2**62], [-90, 2**62]], 2**63),
    ],
)
def test_a_count_its_histogram_does_not_hold_is_refused_naming_the_record(
    count: int, histogram: list[list[int]], held: int
) -> None:
    payload = report()
    record = payload["batch"]["records"][3]
    record["count"] = count
    record["latency"]["histogram"] = histogram
    detail = refusal_of(payload).detail
    assert detail == (
        f"batch/records/3: count is {count} but the latency histogram's counts add up to "
        f"{held}{COUNT_MISMATCH}"
    )


def test_a_count_its_histogram_holds_passes_up_to_the_largest() -> None:
    payload = report()
    record = payload["batch"]["records"][3]
    record["count"] = 2**63 - 1
    record["latency"]["histogram"] = [[-100, 2**62], [-90, 2**62 - 1]]
    assert check_payload(json.dumps(payload).encode(), CLAIMS)["batch"]["records"][3] == record


def test_the_histograms_own_index_range_passes_and_is_the_schemas():
    payload = check_payload(with_histogram([[MIN_INDEX, 2], [MAX_INDEX, 3]]), CLAIMS)
    assert payload["batch"]["records"][3]["latency"]["histogram"] == [
        [MIN_INDEX, 2],
        [MAX_INDEX, 3],
    ]
    index = HISTOGRAM_SCHEMA["items"]["prefixItems"][0]
    assert (index["minimum"], index["maximum"]) == (MIN_INDEX, MAX_INDEX)


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("batch/records/0/latency/sum", lambda p: _record_0(p)["latency"].update(sum=1.5e308)),
        (
            "batch/records/0/latency/sum",
            lambda p: _record_0(p)["latency"].update(sum=_record_0(p)["count"] * 1e9 * 1.001),
        ),
        ("batch/records/0/latency/max", lambda p: _record_0(p)["latency"].update(max=2e9)),
        ("batch/records/0/latency/min", lambda p: _record_0(p)["latency"].update(min=1e300)),
        ("batch/records/0/latency/p99", lambda p: _record_0(p)["latency"].update(p99=1e10)),
    ],
)
def test_latencies_are_bounded_so_their_sums_cannot_overflow(where, change):
    payload = report()
    change(payload)
    assert refusal_of(payload).detail.startswith(f"{where}: ")


def test_the_latency_bounds_pass_at_the_limit_and_for_days_long_requests():
    payload = report()
    record = _record_0(with_count(payload, 0, 2**63 - 1))
    record["latency"].update(sum=record["count"] * MAX_LATENCY_SECONDS, max=MAX_LATENCY_SECONDS)
    check_payload(json.dumps(payload).encode(), CLAIMS)
    # A response streamed for three days is clamped only in the histogram.
    recorder = Recorder()
    recorder.record("GET", "/events", 200, 3 * 86400.0, 0, 10)
    recorder.record("GET", "/events", 200, 0.001, 0, 10)
    (stored,) = check_payload(built_body(recorder), CLAIMS)["batch"]["records"]
    assert stored["latency"]["max"] == 3 * 86400.0
    seconds = SCHEMA["$defs"]["seconds_or_null"]
    assert seconds["maximum"] == MAX_LATENCY_SECONDS


pairs = st.lists(
    st.one_of(
        st.lists(st.integers(-500, 500), min_size=0, max_size=3),
        st.text(max_size=3),
        st.booleans(),
    ),
    max_size=5,
)


@given(pairs)
def test_the_hand_check_refuses_exactly_what_the_schema_refuses(histogram):
    schema_ok = jsonschema.Draft202012Validator(HISTOGRAM_SCHEMA).is_valid(histogram)
    try:
        check_payload(with_histogram(histogram), CLAIMS)
        ours_ok = True
    except Refusal as refusal:
        # A well-formed histogram that does not hold the record's count (an
        # empty one) is refused by a rule of its own, after the schema's.
        ours_ok = refusal.detail.endswith(COUNT_MISMATCH)
    assert ours_ok == schema_ok


# -- gzip members -------------------------------------------------------------------------

MIB = 1024 * 1024


#: A character UTF-8 writes in four bytes (a CJK ideograph of plane 2).
WIDE = "\U00020000"


def with_endpoint(route: str, app_name: str | None, app_version: str | None) -> dict[str, Any]:
    """A valid report whose record 4 has ``route``, under these app traits."""
    payload = report()
    payload["traits"].update(app_name=app_name, app_version=app_version)
    payload["batch"]["records"][4]["route"] = route
    return payload


def test_the_schemas_longest_wide_endpoint_is_refused_naming_the_record():
    # 512 + 128 + 128 characters: within the schema, 3075 bytes, more than
    # PostgreSQL can index (2704 with the entry's own overhead).
    payload = with_endpoint(WIDE * 512, WIDE * 128, WIDE * 128)
    jsonschema.Draft202012Validator(SCHEMA).validate(payload)
    refusal = refusal_of(payload)
    assert refusal.detail.startswith("batch/records/4: ")
    assert "3075 bytes" in refusal.detail
    assert str(MAX_ENDPOINT_KEY_BYTES) in refusal.detail


@pytest.mark.parametrize(
    ("app_name", "app_version"), [(WIDE * 88, None), (WIDE * 44, WIDE * 44), (None, WIDE * 88)]
)
def test_the_endpoint_limit_counts_the_bytes_of_all_four_fields(app_name, app_version):
    # "GET" (3 bytes) + 352 bytes of app fields + a route of 512 characters
    # taking 2045 bytes: exactly the limit. One byte more is refused.
    assert MAX_ENDPOINT_KEY_BYTES == 3 + 352 + 2045
    at_limit = "/" + WIDE * 511
    assert check_payload(
        json.dumps(with_endpoint(at_limit, app_name, app_version)).encode(), CLAIMS
    )
    one_more = "\u00e9" + WIDE * 511  # still 512 characters: the schema holds
    refusal = refusal_of(with_endpoint(one_more, app_name, app_version))
    assert refusal.detail.startswith("batch/records/4: ")
    assert f"{MAX_ENDPOINT_KEY_BYTES + 1} bytes" in refusal.detail


def test_the_endpoint_limit_is_the_one_documented():
    limits = (Path(__file__).parent.parent / "docs" / "payload.md").read_text(encoding="utf-8")
    assert f"at most {MAX_ENDPOINT_KEY_BYTES:,} bytes of UTF-8" in limits


@pytest.mark.parametrize(
    ("route", "app_name", "app_version"),
    [("/" * 512, "n" * 128, "v" * 128), (WIDE * 512, None, None), (WIDE * 512, "a", "1.0")],
)
def test_long_endpoints_that_fit_the_index_pass(route, app_name, app_version):
    # At the schema's maxima in ASCII (16 + 512 + 128 + 128 bytes), or the
    # widest route with short or no app fields: the limit leaves them alone.
    payload = with_endpoint(route, app_name, app_version)
    payload["batch"]["records"][4]["method"] = "A" * 16
    assert check_payload(json.dumps(payload).encode(), CLAIMS)


def test_a_few_gzip_members_are_joined_and_zero_padding_ignored() -> None:
    parts = [b'{"a": ', b"[1, 2]", b"}"]
    body = b"".join(gzip.compress(part, mtime=0) for part in parts) + bytes(64)
    assert gunzip_capped(body, MIB) == b'{"a": [1, 2]}'
    members = [gzip.compress(b"x", mtime=0)] * MAX_GZIP_MEMBERS
    assert gunzip_capped(b"".join(members), MIB) == b"x" * MAX_GZIP_MEMBERS


@pytest.mark.parametrize("cap", [sys.maxsize, sys.maxsize + 1, 10**20])
def test_a_cap_beyond_what_zlib_takes_still_inflates(cap: int) -> None:
    # zlib's max_length is a C ssize_t; cap + 1 past it was an OverflowError
    # (a 500 for every gzip body) where the settings allowed such a cap.
    body = b'{"token": "t"}'
    assert gunzip_capped(gzip.compress(body), cap) == body


def test_one_member_more_than_the_limit_is_refused() -> None:
    body = gzip.compress(b"x", mtime=0) * (MAX_GZIP_MEMBERS + 1)
    with pytest.raises(Refusal) as refused:
        gunzip_capped(body, MIB)
    assert refused.value.reason == "malformed_json"
    assert refused.value.status == 400
    assert f"more than {MAX_GZIP_MEMBERS} members" in refused.value.detail


def test_a_megabyte_of_empty_members_stops_after_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each member inflated copies the rest of the body (zlib's unused_data):
    # counting the inflaters made shows the work is bounded, not quadratic.
    member = gzip.compress(b"", mtime=0)
    body = member * (MIB // len(member))
    assert len(body) // len(member) > 50_000
    made = []
    real = zlib.decompressobj

    def counting(*args: Any, **kwargs: Any) -> Any:
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(verify.zlib, "decompressobj", counting)
    with pytest.raises(Refusal) as refused:
        gunzip_capped(body, MIB)
    assert refused.value.reason == "malformed_json"
    assert len(made) == MAX_GZIP_MEMBERS


def _client_body(recorder: Recorder) -> tuple[bytes, bytes]:
    """``recorder``'s records as the client sends them: one report (however
    large) in an envelope, gzipped at the client's level; (plain, gzipped)."""
    envelope = Envelope("periodic", 0, DEPLOYMENT, INSTANCE, {}, [], {"counters": {}, "gauges": {}})
    (built,) = build_reports(envelope, recorder.collect(), 64 * MIB, pacing=UNPACED)
    plain = build_envelope("t" * 160, "1:20:" + "s" * 90, built.body.decode(), pacing=UNPACED)
    return plain, gzip_paced(plain, GZIP_LEVEL, paced=False)


def test_a_body_inflating_past_the_ratio_is_refused_before_the_cap() -> None:
    # A kilobyte of [{},{},...] that inflates to the megabyte cap made the
    # collector parse a million values before looking at the token.
    plain = b"[" + b"{}," * (MIB // 3 - 1) + b"{}]"
    body = gzip.compress(plain, 9)
    assert len(plain) <= MIB and len(body) < 2048
    with pytest.raises(Refusal) as refused:
        gunzip_capped(body, MIB)
    assert refused.value.reason == "too_large" and refused.value.status == 413
    assert f"over {MAX_GZIP_RATIO} times its size" in refused.value.detail


def test_the_ratio_limit_stops_the_inflater_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not inflated to the cap and then measured: zlib is never asked for more.
    asked = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.inner = real(*args, **kwargs)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            asked.append(max_length)
            return self.inner.decompress(data, max_length)

    monkeypatch.setattr(verify.zlib, "decompressobj", Counting)
    body = gzip.compress(bytes(MIB), 9)
    with pytest.raises(Refusal):
        gunzip_capped(body, MIB)
    assert asked == [inflation_limit(len(body), MIB) + 1]
    assert asked[0] < MIB // 2


def test_a_small_body_may_inflate_well_past_the_ratio() -> None:
    # The slack: a short report of repeated text is no threat, and a client
    # refused for its ratio gets here by halving its bodies.
    plain = b" " * GZIP_RATIO_SLACK
    assert gunzip_capped(gzip.compress(plain, 9), MIB) == plain


@pytest.mark.parametrize("routes", [1, 50, 10_000])
def test_the_most_compressible_client_reports_stay_far_below_the_ratio(routes: int) -> None:
    # Records alike but for a number in a long route: what compresses best
    # among real reports (about 80 times; realistic ones about 4). The limit
    # must leave a wide margin above it.
    recorder = Recorder(max_keys=routes)
    for i in range(routes):
        recorder.record("GET", "/" + "a" * 400 + f"/{i}", 200, 0.01, 0, 0)
    plain, body = _client_body(recorder)
    assert len(plain) / len(body) < MAX_GZIP_RATIO / 2
    assert gunzip_capped(body, 64 * MIB) == plain


def test_a_route_the_client_fits_is_one_the_collector_takes_under_the_longest_app_traits():
    # The client cuts a wide route to what the index leaves it beside the
    # longest method and app traits: the collector must take the report, or
    # it would refuse the good records with it.
    recorder = Recorder()
    recorder.record("GET", "/" + "/".join([WIDE * 15] * 40), 200, 0.01, 0, 1)
    envelope = Envelope("periodic", 1, str(uuid.uuid4()), str(uuid.uuid4()), {}, (), {})
    (built,) = build_reports(envelope, recorder.collect(), 262144, pacing=UNPACED)
    route = json.loads(built.body)["batch"]["records"][0]["route"]
    assert route.endswith("/...") and len(route.encode("utf-8")) <= MAX_ROUTE_BYTES
    wide_traits = WIDE * MAX_TEXT_LENGTH
    payload = with_endpoint(route, wide_traits, wide_traits)
    payload["batch"]["records"][4]["method"] = "M" * 16
    assert check_payload(json.dumps(payload).encode(), CLAIMS)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("counters", 1e308),
        ("gauges", -1e308),
        ("gauges", 2.0**63),
        # Refused as the body is read, before the schema: named all the same,
        # where "the payload is not JSON" sent a maintainer looking elsewhere.
        ("counters", 2**63),
        ("gauges", -(2**63) - 1),
        ("counters", 10**400),
    ],
)
def test_a_metric_value_past_the_largest_is_refused(kind, value):
    # The summary adds them up in a float column: 1e308 + 1e308 overflowed there.
    payload = report()
    payload["metrics"][kind]["big.one"] = value
    refusal = refusal_of(payload)
    assert refusal.detail.startswith(f"metrics/{kind}/big.one: ")


def test_the_largest_metric_value_is_taken():
    payload = report()
    payload["metrics"]["counters"]["big.one"] = 2**63 - 1
    payload["metrics"]["gauges"]["low.one"] = -(2**63 - 1)
    assert check_payload(json.dumps(payload).encode(), CLAIMS)


# -- the envelope, read before the token is known ----------------------------------------

SIGNER = TokenSigner(b"a-secret-for-the-verify-tests-0123456789")
LIMITS = Limits(max_body_bytes=MIB, bits=4, stamp_max_age=600.0, stamp_max_future=120.0)


def _megabyte_of(prefix: bytes, unit: bytes, suffix: bytes) -> bytes:
    return prefix + unit * ((MIB - len(prefix) - len(suffix)) // len(unit)) + suffix


#: Bodies of a million tiny values, each cheap to send and (before) costly to
#: parse, with the refusal each gets from its first fault.
FLOODS = {
    "objects": (_megabyte_of(b"[", b"{},", b"{}]"), "bad_envelope"),
    "floats": (_megabyte_of(b'["\\ud83d\\ude00",', b"1.5,", b"1]"), "bad_envelope"),
    "in-a-field": (
        _megabyte_of(b'{"token": [', b"1.5,", b'1], "stamp": "", "payload": ""}'),
        "bad_envelope",
    ),
    "unknown-field": (_megabyte_of(b'{"x": [', b"{},", b"{}]}"), "bad_envelope"),
    "surrogates": (_megabyte_of(b'{"token": "', b"\\ud800", b'"}'), "malformed_json"),
}


@pytest.mark.parametrize("body,reason", FLOODS.values(), ids=list(FLOODS))
def test_a_flood_of_tiny_values_is_refused_without_parsing_them(
    monkeypatch: pytest.MonkeyPatch, body: bytes, reason: str
) -> None:
    # The strict parser (a Python call per value) is for a payload whose
    # stamp holds; before the token, the body is only read.
    def no_parsing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed before the token was checked")

    monkeypatch.setattr(verify, "parse_json", no_parsing)
    monkeypatch.setattr(verify.json, "loads", no_parsing)
    with pytest.raises(Refusal) as refused:
        verify_report(body, None, signer=SIGNER, limits=LIMITS, now=0.0)
    assert refused.value.reason == reason


def _envelope_of(**fields: Any) -> str:
    return json.dumps(fields)


@pytest.mark.parametrize(
    "text,reason,detail",
    [
        ("", "malformed_json", "Expecting value"),
        ("  nope", "malformed_json", "Expecting value"),
        ("[1, 2]", "bad_envelope", "not an array"),
        ('"token"', "bad_envelope", "not a string"),
        ("null", "bad_envelope", "not null"),
        ("{}", "bad_envelope", "missing payload, stamp, token"),
        ('{"token": "t", "stamp": "s"}', "bad_envelope", "missing payload"),
        ('{"token": "t", "extra": [1], "stamp": "s"}', "bad_envelope", "unknown extra"),
        (
            '{"token": 42, "stamp": "s", "payload": ""}',
            "bad_envelope",
            "token must be a string, not a number",
        ),
        ('{"token": -0.5e3, "stamp": "s", "payload": ""}', "bad_envelope", "not a number"),
        ('{"token": true}', "bad_envelope", "token must be a string, not a boolean"),
        ('{"token": null}', "bad_envelope", "not null"),
        ('{"token": {"a": 1}}', "bad_envelope", "not an object"),
        ('{"token": NaN}', "malformed_json", "NaN is not JSON"),
        ('{"token": -Infinity}', "malformed_json", "-Infinity is not JSON"),
        ('{"token": 1e999}', "malformed_json", "number out of range"),
        ('{"token": 9223372036854775808}', "malformed_json", "64-bit"),
        ('{"token": -9223372036854775809}', "malformed_json", "64-bit"),
        ('{"token": ' + "9" * 5000 + "}", "malformed_json", "64-bit"),
        ('{"token": 0}', "bad_envelope", "not a number"),
        ('{"token": "a", "token": "b"}', "malformed_json", "duplicate key 'token'"),
        ('{"token": "\\ud800", "stamp": "s", "payload": ""}', "malformed_json", "surrogate"),
        ('{"\\udc00": "t"}', "malformed_json", "surrogate"),
        ('{"token": "a\nb", "stamp": "s", "payload": ""}', "malformed_json", "Invalid control"),
        ('{"token": "\\x", "stamp": "s", "payload": ""}', "malformed_json", "Invalid \\escape"),
        ('{"token": "t", "stamp": "s", "payload": ""', "malformed_json", "Expecting ',' delimiter"),
        ('{"token": "t", "stamp": "s", "payload": "",}', "malformed_json", "property name"),
        ('{"token" "t"}', "malformed_json", "Expecting ':' delimiter"),
        ('{"token": "t", "stamp": "s", "payload": ""} {}', "malformed_json", "Extra data"),
        (
            '{"token": "t", "stamp": "s", "payload": "" ',
            "malformed_json",
            "Expecting ',' delimiter",
        ),
    ],
)
def test_the_envelope_is_read_as_strictly_as_it_was_parsed(
    text: str, reason: str, detail: str
) -> None:
    with pytest.raises(Refusal) as refused:
        read_envelope(text)
    assert refused.value.reason == reason
    assert detail in refused.value.detail, refused.value.detail


@given(
    fields=st.fixed_dictionaries({name: st.text() for name in ("token", "stamp", "payload")}).map(
        lambda d: list(d.items())
    ),
    order=st.randoms(use_true_random=False),
    ascii_only=st.booleans(),
    spacing=st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]),
)
def test_an_envelope_reads_as_json_loads_reads_it(fields, order, ascii_only, spacing) -> None:
    order.shuffle(fields)
    text = "\r\n " + json.dumps(dict(fields), ensure_ascii=ascii_only, separators=spacing) + " \n"
    try:
        expected = parse_json(text)
    except ValueError:  # a lone surrogate: both refuse it
        with pytest.raises(Refusal):
            read_envelope(text)
        return
    read = read_envelope(text)
    assert (read.token, read.stamp, read.payload) == (
        expected["token"],
        expected["stamp"],
        expected["payload"],
    )
    assert read.payload_bytes == expected["payload"].encode("utf-8")


@pytest.mark.parametrize(
    "spoil",
    [
        lambda p: p["metrics"]["counters"].update({"jobs.done\n": 1}),
        lambda p: p["batch"]["records"][0].update(method="GET\n"),
        lambda p: p["traits"].update(server="uvicorn\n"),
        lambda p: p["traits"].update(framework="flask\n"),
    ],
)
def test_a_pattern_is_read_as_the_schema_means_it_to_its_last_character(spoil):
    # Python's "$" matches before a final newline: "jobs.done\n" was stored
    # beside "jobs.done" as a counter of its own; ECMA's "$", which a JSON
    # Schema's pattern means, does not.
    payload = report()
    spoil(payload)
    assert "does not match" in refusal_of(payload).detail


def test_of_several_numbers_out_of_range_the_first_is_named():
    payload = report()
    payload["metrics"]["counters"].update({"first.one": 2**63, "second.one": 2**64})
    assert refusal_of(payload).detail.startswith("metrics/counters/first.one: ")


def test_a_number_of_more_digits_than_python_converts_is_named_too():
    payload = report()
    payload["metrics"]["counters"]["huge.one"] = 12345
    text = json.dumps(payload).replace("12345", "9" * 5000)
    with pytest.raises(Refusal) as refused:
        check_payload(text.encode(), CLAIMS)
    assert refused.value.detail.startswith("metrics/counters/huge.one: ")


def test_a_payload_refused_for_another_reason_is_not_said_to_hold_a_number_out_of_range():
    # A duplicate key in the traits, read before a counter out of range: the
    # refusal is for the key, and said so, not "a number out of range".
    payload = report()
    payload["metrics"]["counters"]["big.one"] = 2**63
    # The key is "digits", which a check by substring took for a number's error.
    text = json.dumps(payload).replace('"traits": {}', '"traits": {"digits": 1, "digits": 2}', 1)
    with pytest.raises(Refusal) as refused:
        check_payload(text.encode(), CLAIMS)
    assert refused.value.detail.startswith("the payload is not JSON: duplicate key")


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("^a$", "a", True),
        ("^a$", "a\n", False),
        ("^a$|^b$", "b\n", False),  # every anchor, not only a final one
        (r"^a\\$", "a\\", True),  # an escaped backslash, then the anchor
        (r"^a\$", "a$", True),  # an escaped dollar is a dollar
        ("^[$]$", "$", True),  # in a class, a dollar is a dollar
        (r"^\d+$", "12", True),
        (r"^\d+$", "\u0661\u0662", False),  # ECMA's \d is ASCII's
        (r"^\w+$", "caf\u00e9", False),
    ],
)
def test_schema_patterns_are_read_as_ecma_reads_them(pattern, text, matches):
    from reqtelemetry.collector.verify import _ecma_compiled

    assert bool(_ecma_compiled(pattern).search(text)) is matches


def test_stamp_outcomes_are_forgotten_with_the_stamps_window_and_past_their_bound() -> None:
    from reqtelemetry.collector.outcomes import StampOutcomes
    from reqtelemetry.collector.verify import Refusal

    outcomes = StampOutcomes(window=0.2, limit=2)
    outcomes.stored("a")
    outcomes.refused("b", Refusal("invalid_payload", "count must be an integer"))
    assert outcomes.answer("a").reason == "replay"
    refused = outcomes.answer("b")
    assert (refused.reason, refused.detail, refused.status) == (
        "invalid_payload",
        "count must be an integer",
        422,
    )
    assert outcomes.answer("unknown") is None
    # Its words are kept, not the exception, whose traceback holds the report.
    assert all(
        not isinstance(value, BaseException)
        for _, kept in outcomes._outcomes.values()
        for value in (kept or ())
    )
    outcomes.stored("c")  # past the bound: the oldest goes
    assert outcomes.answer("a") is None and len(outcomes) == 2
    time.sleep(0.25)  # past the window: a copy is refused for its date, before anything else
    assert outcomes.answer("b") is None and outcomes.answer("c") is None


@pytest.mark.parametrize(
    ("where", "item"),
    [("records", {}), ("records", 1), ("withheld", "os"), ("withheld", 1), ("counters", 1)],
)
def test_a_megabyte_of_items_past_the_schemas_counts_is_refused_cheaply(
    where, item, monkeypatch
) -> None:
    # jsonschema walks every item past a maxItems (every key past a
    # maxProperties) and best_match reads every error: a 1 MiB payload of
    # empty records took 25 s of CPU to refuse, for one stamp.
    payload = report()
    one = len(json.dumps(item)) + 1
    count = (MIB - len(json.dumps(payload))) // (one + (12 if where == "counters" else 0))
    if where == "records":
        payload["batch"]["records"] = [item] * count
    elif where == "withheld":
        payload["withheld"] = [item] * count
    else:
        payload["metrics"]["counters"] = {f"c{i}": item for i in range(count)}
    body = json.dumps(payload, separators=(",", ":")).encode()
    assert MIB // 2 < len(body) <= MIB
    walked = []
    monkeypatch.setattr(verify, "_VALIDATOR", _Spy(verify._VALIDATOR, walked))
    with pytest.raises(Refusal) as refused:
        check_payload(body, CLAIMS)
    assert walked == []  # refused by its counts, before the schema's walk
    assert refused.value.reason == "invalid_payload"
    assert "has more than" in refused.value.detail


class _Spy:
    """The validator, noting each payload it is asked to walk."""

    def __init__(self, validator, walked) -> None:
        self._validator, self._walked = validator, walked

    def iter_errors(self, instance):
        self._walked.append(instance)
        return self._validator.iter_errors(instance)


def test_a_refusal_that_names_a_key_with_a_lone_surrogate_can_be_answered() -> None:
    # A number out of range is located by reading the payload again without
    # the strict checks, so the path it names may hold a lone surrogate
    # escape: as it was, the answer could not be encoded (a 500).
    text = json.dumps(report()).replace(
        '"counters": {}', '"counters": {"a\\ud800": 99999999999999999999}'
    )
    with pytest.raises(Refusal) as refused:
        check_payload(text.encode(), CLAIMS)
    assert refused.value.reason == "invalid_payload"
    assert "metrics/counters/a" in refused.value.detail
    json.dumps(refused.value.body(), ensure_ascii=False).encode("utf-8")


def test_a_number_out_of_range_deep_under_long_keys_gets_a_short_detail() -> None:
    # The detail is answered and remembered with the stamp (outcomes.py
    # counts some 500 bytes a stamp): a path as deep as the parser reads,
    # under keys of 40 characters, made it 37,000 characters.
    key = '{"' + "k" * 40 + '":'
    text = json.dumps(report()).replace(
        '"counters": {}', '"counters": {"a": ' + key * 900 + "1e999" + "}" * 900 + "}"
    )
    with pytest.raises(Refusal) as refused:
        check_payload(text.encode(), CLAIMS)
    assert refused.value.detail.startswith("metrics/counters/a/kkk")
    assert "a number out of range" in refused.value.detail
    assert len(refused.value.detail) < 500


def test_a_path_of_lone_surrogates_stays_clipped() -> None:
    key = "\\udce9" * 40  # JSON escapes of lone surrogates, 40 to a key
    nested = "".join(f'"{key}{depth}":{{' for depth in range(10))
    body = ("{" + nested + '"x":1e999' + "}" * 11).encode()
    with pytest.raises(Refusal) as refused:
        check_payload(body, CLAIMS)
    detail = refused.value.detail
    assert refused.value.reason == "invalid_payload"
    assert "a number out of range" in detail
    assert len(detail) <= 450, len(detail)  # a path of 203 and an error of 203, as for ASCII keys


def test_stamp_outcomes_past_their_window_go_without_being_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A normal report's stamp is never looked up again: forgotten only then,
    a collector that ran for weeks kept ``MAX_REMEMBERED`` stale stamps (some
    20 MB) for good. Those past their window go as new ones come."""
    import types

    from reqtelemetry.collector import outcomes as module

    now = [1000.0]
    monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    outcomes = module.StampOutcomes(window=720.0)
    for n in range(1000):
        outcomes.stored(f"stamp-{n}")
    now[0] += 600.0
    outcomes.stored("within-the-window")
    assert len(outcomes) == 1001  # all still fresh: a copy is a replay
    now[0] += 121.0  # the first thousand are past their window
    outcomes.stored("fresh")
    assert len(outcomes) == 2
    assert outcomes.answer("within-the-window").reason == "replay"
