"""A 204's or 304's bytes are written as 0 under its own key (c8349bf); past
max_keys its requests land in the overflow record, which counted them."""

from __future__ import annotations

from reqtelemetry.recorder import OVERFLOW_KEY, Recorder


def test_the_overflow_record_counts_no_body_of_a_204_or_304() -> None:
    recorder = Recorder(max_keys=1)
    recorder.record("GET", "/first", 200, 0.01, 0, 10)
    for _ in range(3):
        recorder.record("DELETE", "/items/{id}", 204, 0.01, 5, 4)  # JSONResponse(None, 204)
    recorder.record("GET", "/etag", 304, 0.01, 0, 7)
    recorder.record("GET", "/other", 200, 0.01, 0, 100)
    by_key = {(r["method"], r["route"], r["status"]): r for r in recorder.snapshot()}
    overflow = by_key[OVERFLOW_KEY]
    assert (overflow["count"], overflow["request_bytes"], overflow["response_bytes"]) == (
        5,
        15,
        100,
    )
    assert recorder.dropped == 5


def test_a_no_body_key_merged_back_past_the_cap_adds_no_bytes_to_the_overflow() -> None:
    source = Recorder()
    source.record("DELETE", "/items/{id}", 204, 0.01, 0, 4)
    batch = source.collect()
    target = Recorder(max_keys=1)
    target.record("GET", "/first", 200, 0.01, 0, 10)
    target.merge(batch)
    by_key = {(r["method"], r["route"], r["status"]): r for r in target.snapshot()}
    assert (by_key[OVERFLOW_KEY]["count"], by_key[OVERFLOW_KEY]["response_bytes"]) == (1, 0)
