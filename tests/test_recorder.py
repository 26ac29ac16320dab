"""The recorder: exact aggregates, a hard key cap, snapshot-and-reset, lossless merge."""

from __future__ import annotations

import json
import math
import random
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reqtelemetry.collector.tokens import Claims
from reqtelemetry.collector.verify import check_payload
from reqtelemetry.histogram import Histogram
from reqtelemetry.payload import UNPACED, Envelope, build_reports
from reqtelemetry.recorder import (
    OVERFLOW_ERROR_KEY,
    OVERFLOW_KEY,
    PENDING_LIMIT,
    Batch,
    Recorder,
    Stats,
)


def by_key(records):
    return {(r["method"], r["route"], r["status"]): r for r in records}


def total_count(records):
    return sum(r["count"] for r in records)


def test_counts_sums_min_max():
    recorder = Recorder()
    recorder.record("GET", "/items/{id}", 200, 0.010, 0, 100)
    recorder.record("GET", "/items/{id}", 200, 0.030, 5, 200)
    recorder.record("GET", "/items/{id}", 200, 0.020, 0, 300)
    recorder.record("POST", "/items", 201, 0.5, 1000, 10)
    records = by_key(recorder.snapshot())
    assert set(records) == {("GET", "/items/{id}", 200), ("POST", "/items", 201)}

    get = records["GET", "/items/{id}", 200]
    assert get["count"] == 3
    assert get["request_bytes"] == 5
    assert get["response_bytes"] == 600
    latency = get["latency"]
    assert latency["sum"] == pytest.approx(0.060)
    assert latency["min"] == 0.010
    assert latency["max"] == 0.030
    assert sum(count for _, count in latency["histogram"]) == 3
    assert latency["p50"] == pytest.approx(0.020, rel=0.02)
    assert latency["p99"] == pytest.approx(0.020, rel=0.02)  # rank floor(0.99 * 2) = 1

    post = records["POST", "/items", 201]
    assert post["count"] == 1
    assert post["latency"]["min"] == post["latency"]["max"] == 0.5
    assert post["request_bytes"] == 1000


def test_distinct_status_and_method_are_distinct_keys():
    recorder = Recorder()
    for status in (200, 404, 500):
        recorder.record("GET", "/x", status, 0.001, 0, 0)
    recorder.record("HEAD", "/x", 200, 0.001, 0, 0)
    assert len(recorder) == 4


def test_max_keys_must_be_positive():
    with pytest.raises(ValueError, match="max_keys"):
        Recorder(max_keys=0)


def test_key_cap_routes_to_overflow_and_counts_dropped():
    recorder = Recorder(max_keys=3)
    for i in range(10):
        recorder.record("GET", f"/r{i}", 200, 0.001, 1, 2)
    recorder.record("GET", "/r0", 200, 0.001, 1, 2)  # an existing key still counts normally
    records = by_key(recorder.snapshot())
    assert set(records) == {
        ("GET", "/r0", 200),
        ("GET", "/r1", 200),
        ("GET", "/r2", 200),
        OVERFLOW_KEY,
    }
    assert records["GET", "/r0", 200]["count"] == 2
    overflow = records[OVERFLOW_KEY]
    assert overflow["count"] == 7
    assert overflow["request_bytes"] == 7 and overflow["response_bytes"] == 14
    assert recorder.dropped == 7
    assert len(recorder) == 4  # bounded: max_keys plus the one overflow key
    for i in range(1000):
        recorder.record("GET", f"/more{i}", 200, 0.001, 0, 0)
    assert len(recorder) == 4
    assert recorder.dropped == 1007


def test_server_errors_past_the_cap_stay_errors():
    # A key is method, route and status: once the cap is full, a healthy
    # route's first 500 is a new key too. Under status 0, the collector, which
    # counts errors by status, showed an outage on a capped client as 0 %.
    recorder = Recorder(max_keys=3)
    for route in ("/a", "/b", "/c"):
        for _ in range(10):
            recorder.record("GET", route, 200, 0.001, 0, 2)
    for _ in range(10):
        recorder.record("GET", "/a", 500, 0.001, 0, 2)
        recorder.record("GET", "/a", 404, 0.001, 0, 2)
    records = by_key(recorder.snapshot())
    assert records[OVERFLOW_ERROR_KEY]["count"] == 10
    assert records[OVERFLOW_KEY]["count"] == 10
    assert recorder.dropped == 20
    errors = sum(r["count"] for key, r in records.items() if key[2] >= 500)
    assert errors == 10  # what the dashboard counts: 25 % of the 40 requests
    assert len(recorder) == 5  # bounded: max_keys plus the two overflow keys
    # Merged back into a full recorder, each keeps its status.
    batch = recorder.collect()
    full = Recorder(max_keys=1)
    full.record("GET", "/z", 200, 0.001, 0, 0)
    full.merge(batch)
    merged = by_key(full.snapshot())
    assert merged[OVERFLOW_ERROR_KEY]["count"] == 10


def test_collect_is_snapshot_and_reset():
    recorder = Recorder(max_keys=1)
    recorder.record("GET", "/a", 200, 0.1, 0, 0)
    recorder.record("GET", "/b", 200, 0.1, 0, 0)
    snapshot = recorder.snapshot()
    batch = recorder.collect()
    assert isinstance(batch, Batch)
    assert batch
    assert batch.records == snapshot
    assert batch.dropped == 1
    assert batch.period_start <= batch.period_end

    assert recorder.snapshot() == []
    assert recorder.dropped == 0
    assert len(recorder) == 0
    empty = recorder.collect()
    assert not empty
    assert empty.records == [] and empty.dropped == 0
    assert empty.period_start == batch.period_end  # periods are contiguous

    recorder.record("GET", "/c", 200, 0.1, 0, 0)
    assert [r["route"] for r in recorder.collect().records] == ["/c"]


def test_snapshot_does_not_reset():
    recorder = Recorder()
    recorder.record("GET", "/a", 200, 0.1, 0, 0)
    assert recorder.snapshot() == recorder.snapshot()
    assert len(recorder) == 1


def _fill(recorder, seed_offset=0):
    for i in range(50):
        duration = 0.001 * (i + 1 + seed_offset)
        recorder.record("GET", f"/r{i % 5}", 200 if i % 7 else 500, duration, i, 2 * i)


def test_merge_of_collected_batch_restores_exactly():
    recorder = Recorder()
    _fill(recorder)
    before = recorder.snapshot()
    batch = recorder.collect()
    assert recorder.snapshot() == []
    recorder.merge(batch)
    assert recorder.snapshot() == before
    again = recorder.collect()
    assert again.period_start == batch.period_start  # the merged period is covered


def test_merge_of_overflowed_batch_restores_dropped():
    recorder = Recorder(max_keys=2)
    for i in range(6):
        recorder.record("GET", f"/r{i}", 200, 0.01, 0, 0)
    before, dropped = recorder.snapshot(), recorder.dropped
    assert dropped == 4
    batch = recorder.collect()
    recorder.merge(batch)
    assert recorder.snapshot() == before
    assert recorder.dropped == dropped


def test_merge_adds_up_with_new_traffic():
    recorder = Recorder()
    _fill(recorder)
    batch = recorder.collect()
    _fill(recorder, seed_offset=100)
    new_traffic = by_key(recorder.snapshot())
    recorder.merge(batch)
    merged = by_key(recorder.snapshot())
    old = by_key(batch.records)
    assert set(merged) == set(old) | set(new_traffic)
    for key, record in merged.items():
        parts = [r[key] for r in (old, new_traffic) if key in r]
        assert record["count"] == sum(p["count"] for p in parts)
        assert record["request_bytes"] == sum(p["request_bytes"] for p in parts)
        assert record["response_bytes"] == sum(p["response_bytes"] for p in parts)
        latency = record["latency"]
        assert latency["sum"] == pytest.approx(sum(p["latency"]["sum"] for p in parts))
        assert latency["min"] == min(p["latency"]["min"] for p in parts)
        assert latency["max"] == max(p["latency"]["max"] for p in parts)
        expected = Histogram()
        for part in parts:
            expected.merge_bins(part["latency"]["histogram"])
        assert latency["histogram"] == expected.to_pairs()


def test_merge_of_plain_records_and_extra_dropped():
    source = Recorder()
    _fill(source)
    records = source.snapshot()
    target = Recorder()
    target.merge(records, dropped=3)
    assert target.snapshot() == records
    assert target.dropped == 3


def test_merge_respects_cap_and_counts_dropped():
    recorder = Recorder(max_keys=2)
    recorder.record("GET", "/a", 200, 0.01, 0, 0)
    recorder.record("GET", "/b", 200, 0.01, 0, 0)
    other = Recorder()
    for _ in range(5):
        other.record("GET", "/c", 200, 0.02, 1, 1)
    for _ in range(3):
        other.record("GET", "/d", 200, 0.03, 1, 1)
    other.record("GET", "/a", 200, 0.04, 0, 0)
    recorder.merge(other.collect())
    records = by_key(recorder.snapshot())
    assert set(records) == {("GET", "/a", 200), ("GET", "/b", 200), OVERFLOW_KEY}
    assert records["GET", "/a", 200]["count"] == 2
    assert records[OVERFLOW_KEY]["count"] == 8
    assert records[OVERFLOW_KEY]["latency"]["max"] == 0.03
    assert recorder.dropped == 8
    assert total_count(recorder.snapshot()) == 11


def test_merging_a_record_of_no_requests_adds_nothing():
    recorder = Recorder()
    recorder.merge(
        [
            {
                "method": "GET",
                "route": "/x",
                "status": 200,
                "count": 0,
                "latency": {"sum": 0.0, "min": None, "max": None, "histogram": []},
                "request_bytes": 0,
                "response_bytes": 0,
            }
        ]
    )
    # A record of no requests adds nothing, and would be refused by the collector.
    assert recorder.snapshot() == []


def test_reset_forgets_everything():
    recorder = Recorder(max_keys=1)
    recorder.record("GET", "/a", 200, 0.1, 0, 0)
    recorder.record("GET", "/b", 200, 0.1, 0, 0)
    recorder.reset()
    assert recorder.snapshot() == [] and recorder.dropped == 0


def test_extreme_durations_are_clamped_in_histogram_but_not_in_sum():
    recorder = Recorder()
    recorder.record("GET", "/a", 200, 0.0, 0, 0)
    recorder.record("GET", "/a", 200, 7200.0, 0, 0)
    (record,) = recorder.snapshot()
    assert record["latency"]["min"] == 0.0
    assert record["latency"]["max"] == 7200.0
    assert record["latency"]["sum"] == 7200.0
    assert record["latency"]["p50"] == pytest.approx(1e-6, rel=0.02)
    assert record["latency"]["p99"] == pytest.approx(1e-6, rel=0.02)
    assert math.isclose(
        Histogram.from_pairs(record["latency"]["histogram"]).quantile(1.0), 3600.0, rel_tol=0.02
    )


def test_thread_safety_exact_totals():
    recorder = Recorder()
    threads, per_thread = 8, 5000
    barrier = threading.Barrier(threads)

    def work(n):
        barrier.wait()
        for i in range(per_thread):
            recorder.record("GET", f"/r{i % 10}", 200, 0.001 * (1 + i % 3), 1, n)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    records = recorder.snapshot()
    assert len(records) == 10
    assert total_count(records) == threads * per_thread
    assert sum(r["request_bytes"] for r in records) == threads * per_thread
    assert sum(r["response_bytes"] for r in records) == per_thread * sum(range(threads))
    for record in records:
        assert record["count"] == threads * per_thread // 10
        assert sum(c for _, c in record["latency"]["histogram"]) == record["count"]


def test_collect_while_recording_loses_nothing():
    recorder = Recorder(max_keys=50)
    threads, per_thread = 8, 5000
    done = threading.Event()
    batches = []

    def work(n):
        for i in range(per_thread):
            recorder.record("GET", f"/r{(n * 7 + i) % 20}", 200, 0.001, 1, 1)

    def collector():
        while not done.is_set():
            batches.append(recorder.collect())

    collecting = threading.Thread(target=collector)
    collecting.start()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    collecting.join()
    batches.append(recorder.collect())
    assert sum(total_count(b.records) for b in batches) == threads * per_thread
    assert sum(sum(r["request_bytes"] for r in b.records) for b in batches) == threads * per_thread
    assert all(b.dropped == 0 for b in batches)


# -- the flusher's fast paths: JSON text straight from Stats, merge of Stats ----------


durations = st.floats(min_value=0.0, max_value=10_000.0, allow_nan=False)
measurements = st.lists(
    st.tuples(durations, st.integers(0, 2**40), st.integers(0, 2**40)), min_size=0, max_size=40
)
routes = st.text(min_size=0, max_size=40)  # any text: quotes, backslashes, non-ASCII


@given(measurements, routes, st.integers(0, 999))
def test_to_json_is_exactly_the_record(values, route, status):
    stats = Stats()
    for duration, request_bytes, response_bytes in values:
        recorder = Recorder()
        recorder.record("GET", route, status, duration, request_bytes, response_bytes)
        stats.absorb(recorder.collect().stats[("GET", route, status)])
    key = ("GET", route, status)
    text = stats.to_json(key)
    assert text.isascii()
    assert json.loads(text) == stats.to_record(key)


def test_batch_from_records_round_trips_and_adds_up_same_keys():
    recorder = Recorder()
    recorder.record("GET", "/a", 200, 0.01, 1, 2)
    recorder.record("GET", "/a", 200, 0.02, 3, 4)
    recorder.record("POST", "/b", 201, 0.5, 5, 6)
    records = recorder.snapshot()
    assert Batch.from_records(records).records == records
    doubled = Batch.from_records(records + records)
    by_key = {(r["method"], r["route"]): r for r in doubled.records}
    assert by_key["GET", "/a"]["count"] == 4
    assert by_key["GET", "/a"]["latency"]["min"] == 0.01
    assert by_key["POST", "/b"]["response_bytes"] == 12


# -- deferred aggregation: requests queue, then aggregate in one loop --------------


def test_queued_requests_show_in_every_reading():
    recorder = Recorder(max_keys=1)
    recorder.record("GET", "/a", 200, 0.01, 3, 4)
    recorder.record("GET", "/b", 200, 0.01, 3, 4)  # past the cap: overflow
    assert len(recorder) == 2  # /a and the overflow key
    assert recorder.dropped == 1
    recorder.record("GET", "/a", 200, 0.02, 3, 4)
    records = by_key(recorder.snapshot())
    assert records["GET", "/a", 200]["count"] == 2
    assert records["GET", "/a", 200]["latency"]["max"] == 0.02
    batch = recorder.collect()
    assert total_count(batch.records) == 3
    assert recorder.snapshot() == []


def test_the_queue_is_bounded_whatever_the_traffic():
    recorder = Recorder()
    for i in range(PENDING_LIMIT * 10 + 7):
        recorder.record("GET", f"/r{i % 5}", 200, 0.001, 0, 0)
        assert len(recorder.queue) < PENDING_LIMIT
    assert total_count(recorder.snapshot()) == PENDING_LIMIT * 10 + 7


def test_reset_keeps_the_queue_integrations_hold():
    recorder = Recorder()
    held = recorder.queue
    recorder.record("GET", "/a", 200, 0.01, 0, 0)
    recorder.reset()  # as in a forked child
    assert recorder.queue is held and len(held) == 0
    held.append(("GET", "/b", 200, 0.01, 0, 0))  # a middleware queueing directly
    assert total_count(recorder.snapshot()) == 1


DEPLOYMENT = "6f1c0d8e-2b8a-4d55-9a51-0f7f3c1d2e4b"
INSTANCE = "0b4f5a43-9a7e-4a47-8f0c-5c7b9d2c1a10"


def _traffic(recorder: Recorder, seed: int, requests: int) -> None:
    """``requests`` requests over more routes than the key cap, some latencies
    beyond the histogram's range (clamped there, exact in the sum)."""
    pick = random.Random(seed)
    for _ in range(requests):
        duration = pick.choice([0.0, 1e-9, 7200.0, pick.expovariate(50)])
        route = f"/r/{pick.randrange(12)}"
        recorder.record("GET", route, pick.choice([200, 404, 500]), duration, 0, 10)


def test_what_a_client_sends_holds_every_count_in_its_histograms() -> None:
    """The collector refuses a record whose histogram does not add up to its
    ``count``; a real client's reports never are such, after failed sends
    merged back (whole and in part), plain records merged, and the key cap's
    overflow record, in reports split into parts."""
    recorder = Recorder(max_keys=10)
    _traffic(recorder, seed=1, requests=3000)
    failed = recorder.collect()
    overflowed = failed.stats[OVERFLOW_KEY].count + failed.stats[OVERFLOW_ERROR_KEY].count
    assert overflowed == failed.dropped > 0
    recorder.merge(failed)  # a send that failed before the batch was cut
    _traffic(recorder, seed=2, requests=500)
    partly = recorder.collect()
    kept = list(partly.stats)[::2]
    recorder.merge(Batch({key: partly.stats[key] for key in kept}, 0, 0.0, 0.0))  # one part lost
    other = Recorder()
    _traffic(other, seed=3, requests=200)
    recorder.merge(other.snapshot())  # plain records, past the key cap too
    _traffic(recorder, seed=4, requests=PENDING_LIMIT + 7)  # some still queued
    envelope = Envelope("periodic", 0, DEPLOYMENT, INSTANCE, {}, [], {"counters": {}, "gauges": {}})
    claims = Claims(DEPLOYMENT, INSTANCE, expires_at=0.0, nonce="n")

    reports = build_reports(envelope, recorder.collect(), 4096, pacing=UNPACED)
    assert len(reports) > 1
    sent = 0
    for built in reports:
        payload = check_payload(built.body, claims)  # raises Refusal on any mismatch
        for record in payload["batch"]["records"]:
            assert sum(count for _, count in record["latency"]["histogram"]) == record["count"]
            sent += record["count"]
    delivered = sum(stats.count for key, stats in partly.stats.items() if key not in kept)
    assert sent == 3000 + 500 + 200 + PENDING_LIMIT + 7 - delivered


def test_an_excluded_route_takes_no_key_and_is_not_dropped():
    """What ``excluded_route`` refuses is kept nowhere: not a key, not the
    overflow, not the dropped count. A batch merged back after a failed send
    is not screened again: its keys were, as they were first made."""
    recorder = Recorder(max_keys=1, excluded_route=lambda route: route.startswith("/secret/"))
    for _ in range(3):
        recorder.record("GET", "/secret/", 200, 0.01, 0, 5)
    recorder.record("GET", "/items/{id}", 200, 0.02, 0, 7)
    assert recorder.dropped == 0
    assert [(r["route"], r["count"]) for r in recorder.snapshot()] == [("/items/{id}", 1)]
    recorder.merge(recorder.collect())
    assert [(r["route"], r["count"]) for r in recorder.snapshot()] == [("/items/{id}", 1)]
    assert recorder.dropped == 0


def test_an_anonymized_key_merged_back_is_kept_under_a_hex_like_exclusion(make_telemetry):
    """A route-less app's key is made of hashes, which are hex: merged back as
    records (which no longer tell it from a template), it was compared with
    an exclusion such as ``/a`` and lost."""
    telemetry = make_telemetry(exclude_prefixes=["/a"])
    path = next(f"/p{n}" for n in range(1000) if telemetry.anonymizer.hash(f"p{n}")[0] == "a")
    route = telemetry.route_for_unrouted(path, matched=True)
    assert route.startswith("/a")
    telemetry.record("GET", route, 200, 0.01, 0, 5)
    records = telemetry.snapshot()
    assert [r["route"] for r in records] == [route]
    telemetry.recorder.collect()
    telemetry.recorder.merge(records)
    assert [(r["route"], r["count"]) for r in telemetry.snapshot()] == [(route, 1)]
