"""App-defined metrics: ``telemetry.count()`` and ``telemetry.gauge()``.

Names and values are validated where the app calls them; the number of names
is capped; counters travel as deltas and, like request aggregates, are put
back (not lost, not doubled) when a report is not delivered.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from decimal import Decimal
from fractions import Fraction

import pytest

from receiver import UNAVAILABLE, counter_totals
from reqtelemetry.collector.tokens import Claims
from reqtelemetry.collector.verify import check_payload
from reqtelemetry.metrics import MAX_NAME_LENGTH, AppMetrics
from reqtelemetry.payload import MAX_METRIC_VALUE, UNPACED, Envelope, build_reports
from reqtelemetry.recorder import Recorder

GOOD_NAMES = ["jobs", "feature.export_pdf", "a1.b_2.c3", "cache.misses", "x" * MAX_NAME_LENGTH]
BAD_NAMES = [
    "",
    "jobs.done\n",  # Python's "$" matched before it; the schema's (ECMA's) does not
    "Feature",
    "1abc",
    "_private",
    "a..b",
    "a.",
    ".a",
    "a-b",
    "a b",
    "alice@example.org",
    "/users/4711",
    "x" * (MAX_NAME_LENGTH + 1),
    "é",
    None,
    42,
    b"jobs",
]
BAD_INCREMENTS = [
    -1,
    -0.5,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    "1",
    None,
    Decimal("NaN"),
    Decimal("-Infinity"),
    Decimal("-1"),
    Decimal(2**63),
    Decimal("1E+999999"),  # int() of it held the GIL for 22 s
    [1],
    # Past what the collector holds: it would refuse the whole report.
    2**63,
    10**400,  # too large for a float: a ValueError too, not an OverflowError
    float(2**63),
    1e308,
    Fraction(10**400, 3),
]


# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_are_accepted(name):
    metrics = AppMetrics()
    metrics.count(name)
    metrics.gauge(name, lambda: 1)
    collected = metrics.collect()
    assert collected == {"counters": {name: 1}, "gauges": {name: 1}}


@pytest.fixture(params=["enabled", "opted out"])
def either(request, make_telemetry):
    """A Telemetry on, then one opted out: bad calls must fail alike in both."""
    return make_telemetry(opt_out=request.param == "opted out")


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_loudly(name, either):
    with pytest.raises(ValueError, match="metric name"):
        either.count(name)
    with pytest.raises(ValueError, match="metric name"):
        either.gauge(name, lambda: 1)
    assert either.metrics.collect() == {"counters": {}, "gauges": {}}


@pytest.mark.parametrize("increment", BAD_INCREMENTS, ids=repr)
def test_bad_increments_are_refused_loudly(increment, either):
    with pytest.raises(ValueError):
        either.count("jobs.done", increment)
    assert either.metrics.collect()["counters"] == {}


def test_a_gauge_needs_a_callable_when_opted_out_too(make_telemetry):
    with pytest.raises(ValueError, match="callable"):
        make_telemetry(opt_out=True).gauge("queue.depth", 3)


def test_a_name_found_valid_is_still_valid_and_a_bad_one_still_bad(either):
    for _ in range(3):  # the second call onwards takes the remembered answer
        either.count("feature.export_pdf")
        with pytest.raises(ValueError, match="metric name"):
            either.count("export.PDF")


@pytest.mark.parametrize(
    "increment", [0, 1, 2.5, 10**12, Fraction(1, 2), 2**62 - 1, 4e18], ids=repr
)
def test_good_increments_add_up(increment, telemetry):
    telemetry.count("jobs.done", increment)
    telemetry.count("jobs.done", increment)
    assert telemetry.metrics.collect()["counters"] == {"jobs.done": 2 * increment}


def test_a_gauge_needs_a_callable(telemetry):
    with pytest.raises(ValueError, match="callable"):
        telemetry.gauge("queue.depth", 3)


def test_counters_are_deltas_and_gauges_are_sampled_each_time(telemetry):
    depth = [3]
    telemetry.count("jobs.done", 2)
    telemetry.count("jobs.done")
    telemetry.gauge("queue.depth", lambda: depth[0])
    assert telemetry.metrics.collect() == {
        "counters": {"jobs.done": 3},
        "gauges": {"queue.depth": 3},
    }
    depth[0] = 8
    assert telemetry.metrics.collect() == {"counters": {}, "gauges": {"queue.depth": 8}}


@pytest.mark.parametrize(
    "result",
    [math.nan, math.inf, "three", None, True, 10**19, -(10**19), 10**400, 1e300],
    ids=repr,
)
def test_a_gauge_with_a_bad_value_is_left_out(result, telemetry, caplog):
    telemetry.gauge("bad.gauge", lambda: result)
    telemetry.gauge("good.gauge", lambda: 1.5)
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        assert telemetry.metrics.collect()["gauges"] == {"good.gauge": 1.5}
        telemetry.metrics.collect()
    assert len([r for r in caplog.records if "bad.gauge" in r.getMessage()]) == 1  # once


def test_a_failing_gauge_callback_does_not_stop_the_report(telemetry):
    def broken() -> float:
        raise RuntimeError("database down")

    telemetry.gauge("users.registered", broken)
    telemetry.count("jobs.done")
    assert telemetry.metrics.collect() == {"counters": {"jobs.done": 1}, "gauges": {}}


#: What a database driver's error says: nothing of it may reach a WARNING.
GAUGE_ERROR_CANARY = 'password authentication failed for user "canary-7f3a" at db.internal'


def test_a_failing_gauge_is_named_at_warning_without_the_error_text(telemetry, caplog):
    def users() -> float:
        raise ConnectionError(GAUGE_ERROR_CANARY)

    telemetry.gauge("users.total", users)
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        telemetry.metrics.collect()
    [warning] = [r for r in caplog.records if "users.total" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "canary" not in caplog.text.lower()
    assert "ConnectionError" in warning.getMessage()  # what kind of failure, to look into
    assert warning.exc_info is None  # a traceback would carry the text too

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        telemetry.metrics.collect()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # said once
    [detail] = [r for r in caplog.records if "users.total" in r.getMessage()]
    assert detail.levelno == logging.DEBUG
    assert GAUGE_ERROR_CANARY in caplog.text  # the text is there for whoever asks


def test_gauges_are_sampled_side_by_side_within_the_time_limit():
    metrics = AppMetrics()
    for name in ("a", "b", "c"):
        metrics.gauge(name, lambda: time.sleep(0.3) or 1)
    started = time.monotonic()
    assert metrics.sample_gauges(timeout=5.0) == {"a": 1, "b": 1, "c": 1}
    assert time.monotonic() - started < 0.9 - 0.05  # not one after the other


def test_a_hung_gauge_is_left_out_and_never_run_twice_at_once(caplog):
    metrics = AppMetrics()
    release = threading.Event()
    calls: list[int] = []

    def hung() -> int:
        calls.append(1)
        release.wait(60)
        return 5

    metrics.gauge("queue.depth", hung)
    metrics.gauge("users.total", lambda: 3)
    try:
        with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
            samplers = [
                threading.Thread(target=metrics.sample_gauges, args=(0.1,)) for _ in range(4)
            ]
            for sampler in samplers:
                sampler.start()
            for sampler in samplers:
                sampler.join()
            assert metrics.sample_gauges(0.1) == {"users.total": 3}
        assert calls == [1]
        assert len([r for r in caplog.records if "queue.depth" in r.getMessage()]) == 1
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while metrics._sampling and time.monotonic() < deadline:
        time.sleep(0.01)
    assert metrics.sample_gauges(1.0) == {"queue.depth": 5, "users.total": 3}


def test_where_no_thread_can_be_started_the_last_good_values_stand_in(monkeypatch):
    """Python 3.12 refuses new threads at interpreter shutdown, where a WSGI app's
    final report goes out: no hang there, and no callback run without a limit."""
    metrics = AppMetrics()
    values = iter([7, 8])
    metrics.gauge("queue.depth", lambda: next(values))
    metrics.gauge("never.sampled", lambda: 1)

    def refuse(self) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    assert metrics.sample_gauges(1.0) == {"queue.depth": 7, "never.sampled": 1}
    metrics.gauge("new.one", lambda: 2)
    metrics.count("jobs.done")
    monkeypatch.setattr(threading.Thread, "start", refuse)
    # The last good values, and nothing for a gauge never sampled.
    assert metrics.collect() == {
        "counters": {"jobs.done": 1},
        "gauges": {"queue.depth": 7, "never.sampled": 1},
    }
    monkeypatch.undo()
    assert metrics.collect()["gauges"] == {"queue.depth": 8, "never.sampled": 1, "new.one": 2}


def test_two_reports_at_once_share_one_run_of_a_slow_gauge(caplog):
    # The second report waits for the run the first started: both carry the
    # value, and nothing is said about a gauge that answered in time.
    metrics = AppMetrics()
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        time.sleep(0.3)
        return 7

    metrics.gauge("queue.depth", slow)
    results: list[dict[str, float]] = []
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        first = threading.Thread(target=lambda: results.append(metrics.sample_gauges(1.0)))
        first.start()
        time.sleep(0.05)
        results.append(metrics.sample_gauges(1.0))
        first.join()
    assert results == [{"queue.depth": 7}, {"queue.depth": 7}]
    assert calls == [1]
    assert not [r for r in caplog.records if "queue.depth" in r.getMessage()]


def test_a_gauge_that_exits_its_thread_is_sampled_again(caplog):
    # sys.exit() in a callback ends only its helper thread; the gauge must not
    # stay marked as running, left out of every later report.
    metrics = AppMetrics()
    answers = iter([lambda: sys.exit(1), lambda: 42])
    metrics.gauge("flaky", lambda: next(answers)())
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        assert metrics.sample_gauges(1.0) == {}
    assert metrics._sampling == {}
    assert metrics.sample_gauges(1.0) == {"flaky": 42}
    assert [r for r in caplog.records if "flaky" in r.getMessage() and "failed" in r.getMessage()]


def test_a_gauge_hung_in_the_parent_is_sampled_afresh_after_fork():
    metrics = AppMetrics()
    release = threading.Event()
    answers = iter([lambda: release.wait(60), lambda: None])
    metrics.gauge("queue.depth", lambda: next(answers)() or 2)
    try:
        assert metrics.sample_gauges(0.05) == {}
        metrics.reset()  # as in a forked child, where the parent's threads do not exist
        assert metrics.sample_gauges(1.0) == {"queue.depth": 2}
    finally:
        release.set()


def test_the_number_of_names_is_capped(make_telemetry, caplog):
    telemetry = make_telemetry(max_metrics=3)
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        telemetry.count("a")
        telemetry.gauge("b", lambda: 1)
        telemetry.count("c")
        telemetry.count("d")  # past the cap: dropped quietly, counted
        telemetry.gauge("e", lambda: 1)
        telemetry.count("a", 4)  # a known name still counts
    assert telemetry.metrics.refused == 2
    assert telemetry.metrics.collect() == {"counters": {"a": 5, "c": 1}, "gauges": {"b": 1}}
    assert len([r for r in caplog.records if "metric names" in r.getMessage()]) == 1


def test_a_gauge_named_cap_leaves_the_cap_warning_alone(make_telemetry, caplog):
    # The warnings said once were keyed by a failing gauge's bare name, and the
    # cap's by the word "cap", which is a metric name too.
    telemetry = make_telemetry(max_metrics=3)

    def broken() -> float:
        raise RuntimeError("the queue is down")

    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        telemetry.gauge("cap", broken)
        telemetry.gauge("b", lambda: 1)
        telemetry.gauge("c", lambda: 1)
        assert telemetry.metrics.sample_gauges(1.0) == {"b": 1, "c": 1}
        telemetry.count("x.one")  # past the cap
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "gauge 'cap' failed" in m]) == 1
    assert len([m for m in messages if "more than 3 metric names" in m]) == 1


def test_an_increment_with_no_repr_is_refused_as_any_too_large(either):
    # Python writes no integer past 4,300 digits: the message's repr() raised
    # its own ValueError, about digits, instead of naming the limit.
    with pytest.raises(ValueError, match=r"at most 2\*\*63 - 1.*an integer of 16,610 bits"):
        either.count("jobs.done", 10**5000)
    assert either.metrics.collect()["counters"] == {}


def test_past_the_cap_the_same_names_are_left_out_in_every_report(make_telemetry, caplog):
    # Counted per report, the cap left out whichever names came last in each
    # period: "a" in one report, "c" in the next, and only the first warned of.
    telemetry = make_telemetry(max_metrics=2)
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        telemetry.count("a")
        telemetry.count("b")
        telemetry.count("c")  # past the cap
        assert telemetry.metrics.collect()["counters"] == {"a": 1, "b": 1}
        telemetry.count("c")  # the next report's counters start afresh
        telemetry.count("b")
        telemetry.count("a")
        assert telemetry.metrics.collect()["counters"] == {"a": 1, "b": 1}
        telemetry.metrics.merge({"counters": {"c": 5, "a": 2}})  # an undelivered report back
        assert telemetry.metrics.collect()["counters"] == {"a": 2}
    (warning,) = [r.getMessage() for r in caplog.records if "metric names" in r.getMessage()]
    assert "'c'" in warning and "for the life of the process" in warning


def test_counting_is_thread_safe(telemetry):
    def work() -> None:
        for _ in range(5000):
            telemetry.count("jobs.done")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert telemetry.metrics.collect()["counters"] == {"jobs.done": 20000}


def test_opted_out_metrics_record_nothing(make_telemetry):
    telemetry = make_telemetry(opt_out=True)
    telemetry.count("jobs.done", 3)
    telemetry.gauge("queue.depth", lambda: 1)
    assert telemetry.metrics.collect() == {"counters": {}, "gauges": {}}


def test_merge_puts_counters_back_and_keeps_the_cap():
    metrics = AppMetrics(max_names=3)
    metrics.count("a", 2)
    metrics.count("b")
    taken = metrics.collect()
    metrics.count("a", 1)
    metrics.count("c")  # a, b, c: the cap is full, for the process's life
    metrics.count("d")  # a fourth name: refused and counted
    metrics.merge(taken)  # a and b are kept names: put back
    metrics.merge({"counters": {"e": 7}})  # a name past the cap is refused there too
    collected = metrics.collect()
    assert collected["counters"] == {"a": 3, "b": 1, "c": 1}
    assert metrics.refused == 2


# -- values the collector can hold -------------------------------------------------------

DEPLOYMENT = "6f1c0d8e-2b8a-4d55-9a51-0f7f3c1d2e4b"
INSTANCE = "0b4f5a43-9a7e-4a47-8f0c-5c7b9d2c1a10"


def accepted(metrics: dict) -> dict:
    """The report the client builds with ``metrics`` and a request record, as the
    collector's checks read it (they raise if it would be refused)."""
    recorder = Recorder()
    recorder.record("GET", "/items/{id}", 200, 0.01, 0, 100)
    envelope = Envelope(
        kind="periodic",
        sequence=0,
        deployment_id=DEPLOYMENT,
        instance_id=INSTANCE,
        traits={},
        withheld=[],
        metrics=metrics,
    )
    (built,) = build_reports(envelope, recorder.collect(), 1 << 20, pacing=UNPACED)
    claims = Claims(deployment_id=DEPLOYMENT, instance_id=INSTANCE, expires_at=0.0, nonce="n")
    payload = check_payload(built.body, claims)
    assert len(payload["batch"]["records"]) == 1
    return payload["metrics"]


@pytest.mark.parametrize(
    "increments",
    [[2**62, 2**62], [2**63 - 1, 1], [9e18, 9e18], [2**63 - 1, 0.5], [9e18, 2**62]],
    ids=repr,
)
def test_a_counter_saturates_at_what_the_collector_holds(increments, caplog):
    metrics = AppMetrics()
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        for increment in increments:
            metrics.count("bytes.exported", increment)
        metrics.count("bytes.exported", 1)  # still saturated, and not said again
    collected = metrics.collect()
    assert collected["counters"] == {"bytes.exported": MAX_METRIC_VALUE}
    assert type(collected["counters"]["bytes.exported"]) is int
    assert accepted(collected)["counters"] == {"bytes.exported": MAX_METRIC_VALUE}
    assert len([r for r in caplog.records if "bytes.exported" in r.getMessage()]) == 1


def test_a_merged_back_counter_saturates_too():
    metrics = AppMetrics()
    metrics.count("bytes.exported", 2**62)
    taken = metrics.collect()
    metrics.count("bytes.exported", 2**62)
    metrics.merge(taken)
    assert metrics.collect()["counters"] == {"bytes.exported": MAX_METRIC_VALUE}


@pytest.mark.parametrize("sample", [10**19, -(2**63), 1e19, 10**400], ids=repr)
def test_a_gauge_the_collector_cannot_hold_is_left_out_and_the_report_accepted(sample):
    metrics = AppMetrics()
    metrics.gauge("disk.bytes", lambda: sample)
    metrics.gauge("queue.depth", lambda: -(2**63 - 1))
    metrics.count("jobs.done", 2**63 - 1)
    assert accepted(metrics.collect()) == {
        "counters": {"jobs.done": MAX_METRIC_VALUE},
        "gauges": {"queue.depth": -MAX_METRIC_VALUE},
    }


UNFIT = {
    "counters": {"c.inf": math.inf, "c.big": 2**63, "c.neg": -1, "c.nan": math.nan, "c.bool": True},
    "gauges": {"g.ninf": -math.inf, "g.big": -(2**63), "g.text": "3", "g.frac": Fraction(1, 3)},
}


def test_a_built_report_leaves_out_what_the_collector_cannot_take(caplog):
    """The last line of defence: a value that slipped past the checks costs
    itself, not the report (nor, for ``inf``, every later flush)."""
    metrics = {
        "counters": {**UNFIT["counters"], "jobs.done": 2**63 - 1, "bytes.read": 0.5},
        "gauges": {**UNFIT["gauges"], "queue.depth": -3, "load": -1e18},
    }
    with caplog.at_level(logging.DEBUG, logger="reqtelemetry"):
        assert accepted(metrics) == {
            "counters": {"jobs.done": 2**63 - 1, "bytes.read": 0.5},
            "gauges": {"queue.depth": -3, "load": -1e18},
        }
        accepted(metrics)
    said = [r for r in caplog.records if "left out of a report" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING, logging.DEBUG]
    assert "c.inf" in said[0].getMessage()


def test_merge_never_takes_back_a_value_a_report_cannot_carry():
    metrics = AppMetrics()
    metrics.count("jobs.done", 2)
    metrics.merge({"counters": {**UNFIT["counters"], "jobs.done": 3}, "gauges": {}})
    assert metrics.collect()["counters"] == {"jobs.done": 5}


def test_a_numpy_like_integer_stays_exact():
    class Big(int):  # an int subclass, as an IntEnum or a numpy-like integer
        pass

    metrics = AppMetrics()
    metrics.count("jobs.done", Big(2**62 + 1))
    metrics.gauge("queue.depth", lambda: Big(2**62 + 1))
    collected = metrics.collect()
    assert collected == {"counters": {"jobs.done": 2**62 + 1}, "gauges": {"queue.depth": 2**62 + 1}}
    assert accepted(collected) == collected


# -- on the wire ------------------------------------------------------------------------


def test_metrics_arrive_in_the_payload(make_sender, receiver):
    telemetry = make_sender()
    depth = [4]
    for _ in range(3):
        telemetry.count("feature.export_pdf")
    telemetry.count("jobs.done", 2.5)
    telemetry.gauge("queue.depth", lambda: depth[0])
    assert telemetry.flush() is True
    depth[0] = 9
    assert telemetry.flush() is True
    *_, first, second = receiver.reports_from(telemetry.instance_id)
    assert first["metrics"] == {
        "counters": {"feature.export_pdf": 3, "jobs.done": 2.5},
        "gauges": {"queue.depth": 4},
    }
    assert second["metrics"] == {"counters": {}, "gauges": {"queue.depth": 9}}


@pytest.mark.parametrize("fails_first", [False, True], ids=["delivered", "after a failed send"])
def test_an_infinite_counter_cannot_wedge_the_flushes(fails_first, make_sender, receiver):
    """Once, an ``inf`` counter made every report unencodable, and each failed
    flush merged it back for the next: nothing was sent again. Put there
    behind the checks' back, it is now left out and the records go."""
    telemetry = make_sender()
    telemetry.count("jobs.done", 2)
    with telemetry.metrics._lock:
        telemetry.metrics._counters["c.inf"] = math.inf
    telemetry.record("GET", "/a", 200, 0.01, 0, 10)
    if fails_first:
        receiver.respond_always(500)
        assert telemetry.flush() is False
        receiver.respond_always(200)
    assert telemetry.flush() is True
    telemetry.record("GET", "/b", 200, 0.01, 0, 10)
    assert telemetry.flush() is True
    reports = receiver.reports_from(telemetry.instance_id)
    routes = [r["route"] for report in reports for r in report["batch"]["records"]]
    assert sorted(routes) == ["/a", "/b"]
    assert counter_totals(reports) == {"jobs.done": 2}
    assert telemetry.internal_errors == 0


def test_counters_are_not_lost_or_doubled_by_a_failed_send(make_sender, receiver):
    telemetry = make_sender()
    telemetry.gauge("queue.depth", lambda: 1)
    telemetry.count("jobs.done", 5)
    receiver.respond_always(503, json=UNAVAILABLE)  # stored nothing: merged back
    assert telemetry.flush() is False
    assert telemetry.flush() is False
    telemetry.count("jobs.done", 2)
    receiver.respond_always(200)
    assert telemetry.flush() is True
    reports = receiver.reports_from(telemetry.instance_id)
    assert counter_totals(reports) == {"jobs.done": 7}
    assert reports[-1]["metrics"] == {"counters": {"jobs.done": 7}, "gauges": {"queue.depth": 1}}


def test_the_name_cap_holds_when_a_failed_report_is_merged_back(make_sender, receiver):
    telemetry = make_sender(max_metrics=3, max_attempts=1)
    for name in ("old.a", "old.b", "old.c"):
        telemetry.count(name)
    receiver.respond_with(503, json=UNAVAILABLE, delay=0.25)  # stored nothing: merged back
    outcome = []
    before = len(receiver.requests)  # counted before the send can arrive
    flushing = threading.Thread(target=lambda: outcome.append(telemetry.flush()))
    flushing.start()
    assert receiver.wait_for_requests(before + 1)
    for name in ("new.a", "new.b", "new.c"):  # while the send is failing
        telemetry.count(name)
    flushing.join()
    assert outcome == [False]
    assert telemetry.flush() is True
    last = receiver.reports_from(telemetry.instance_id)[-1]
    assert len(last["metrics"]["counters"]) + len(last["metrics"]["gauges"]) <= 3
    assert telemetry.metrics.refused >= 3


def test_the_name_cap_keeps_payloads_valid(make_sender, receiver):
    telemetry = make_sender(max_metrics=100)
    for i in range(150):
        telemetry.count(f"feature.f{i}")
    assert telemetry.flush() is True
    last = receiver.reports_from(telemetry.instance_id)[-1]
    assert len(last["metrics"]["counters"]) == 100  # the schema's maximum; fixture validates


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        (Decimal("3"), 3),
        (Decimal("12.50"), 12.5),
        (Decimal("1E+3"), 1000),
        (Decimal("0E+30"), 0),  # what 1E+30 - 1E+30 gives: zero, not too large
    ],
)
def test_a_decimal_is_a_number_as_a_database_gives_it(telemetry, given, sent):
    # psycopg gives a SUM or a NUMERIC column as a Decimal: such a gauge was
    # left out of every report, such an increment refused.
    telemetry.gauge("orders.total", lambda: given)
    telemetry.count("orders.placed", Decimal("2"))
    collected = telemetry.metrics.collect()
    assert collected["gauges"] == {"orders.total": sent}
    assert type(collected["gauges"]["orders.total"]) is type(sent)
    assert collected["counters"] == {"orders.placed": 2}


def test_the_cap_warning_lets_a_logging_hook_count():
    """An app that counts its own warnings (a logging handler or filter calling
    ``telemetry.count``) hung in count() for good once a name passed the cap:
    the warning was logged with the lock held, and the hook took it again."""
    metrics = AppMetrics(max_names=2)
    logger = logging.getLogger("reqtelemetry")

    def count_warnings(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            metrics.count("logs.warning")
        return True

    metrics.count("logs.warning")
    metrics.count("feature.export")  # the cap is now full
    logger.addFilter(count_warnings)
    try:
        returned = threading.Event()

        def past_the_cap() -> None:
            metrics.count("feature.import")  # refused, and said at WARNING
            metrics.gauge("users.total", lambda: 1)  # refused too (said once already)
            returned.set()

        threading.Thread(target=past_the_cap, daemon=True).start()
        assert returned.wait(5), "count() past the cap deadlocked on AppMetrics._lock"
    finally:
        logger.removeFilter(count_warnings)
    assert metrics.refused == 2
    assert metrics.take_counters() == {"logs.warning": 2, "feature.export": 1}
