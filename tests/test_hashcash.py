"""Hashcash stamps: what the client mints, the collector accepts, and why it refuses.

Low difficulties (8-12 bits: a few hundred to a few thousand hashes) keep this
fast; the work check itself is the same at 20 bits.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reqtelemetry import hashcash
from reqtelemetry.hashcash import StampError, leading_zero_bits, mint, payload_resource, verify

RESOURCE = hashlib.sha256(b"a resource").hexdigest()
NOW = datetime(2026, 11, 22, 2, 30, 0, tzinfo=timezone.utc)


def reason(stamp: str, resource: str = RESOURCE, bits: int = 8, **options: object) -> str:
    """The refusal reason verify gives (or "ok")."""
    options.setdefault("now", NOW)
    try:
        verify(stamp, resource, bits, **options)  # type: ignore[arg-type]
    except StampError as error:
        return error.reason
    return "ok"


def sha1_zeros(stamp: str) -> int:
    return leading_zero_bits(hashlib.sha1(stamp.encode()).digest())


def with_field(stamp: str, index: int, value: str) -> str:
    fields = stamp.split(":")
    fields[index] = value
    return ":".join(fields)


# -- minting and the round trip ---------------------------------------------------------


@pytest.mark.parametrize("bits", [0, 8, 10, 12])
def test_round_trip(bits: int) -> None:
    stamp = mint(RESOURCE, bits, now=NOW)
    version, claimed, date, resource, ext, rand, counter = stamp.split(":")
    assert (version, claimed, date, resource, ext) == ("1", str(bits), "261122023000", RESOURCE, "")
    assert rand and "=" not in rand and counter
    assert sha1_zeros(stamp) >= bits
    verify(stamp, RESOURCE, bits, NOW)
    verify(stamp, RESOURCE, bits, NOW.timestamp())  # Unix seconds work too


def test_mint_uses_fresh_randomness() -> None:
    assert mint(RESOURCE, 0, now=NOW) != mint(RESOURCE, 0, now=NOW)


def test_mint_defaults_to_now_in_utc() -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    stamp = mint(RESOURCE, 4)
    verify(stamp, RESOURCE, 4)
    date = datetime.strptime(stamp.split(":")[2], "%y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    assert before <= date <= datetime.now(timezone.utc)


@pytest.mark.parametrize(
    ("resource", "bits"), [("", 8), ("a:b", 8), ("é", 8), (RESOURCE, -1), (RESOURCE, 161)]
)
def test_mint_refuses_bad_arguments(resource: str, bits: int) -> None:
    with pytest.raises(ValueError):
        mint(resource, bits)


def test_leading_zero_bits() -> None:
    assert leading_zero_bits(b"\xff") == 0
    assert leading_zero_bits(b"\x01") == 7
    assert leading_zero_bits(b"\x00\x00\x80") == 16
    assert leading_zero_bits(b"\x00\x01\xff") == 15
    assert leading_zero_bits(bytes(20)) == 160


def test_payload_resource_is_the_documented_formula() -> None:
    token, payload = "tok.en", b'{"schema_version":1}'
    inner = hashlib.sha256(payload).hexdigest()
    expected = hashlib.sha256(f"{token}.{inner}".encode()).hexdigest()
    assert payload_resource(token, payload) == expected
    assert payload_resource(token, payload + b" ") != payload_resource(token, payload)
    assert payload_resource("other", payload) != payload_resource(token, payload)


# -- each refusal, and their order -------------------------------------------------------


@pytest.fixture(scope="module")
def good() -> str:
    return mint(RESOURCE, 8, now=NOW)


def test_good_stamp_passes(good: str) -> None:
    assert reason(good) == "ok"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: "",
        lambda s: "garbage",
        lambda s: s + ":extra",
        lambda s: s.rsplit(":", 1)[0],
        lambda s: with_field(s, 0, "0"),
        lambda s: with_field(s, 1, "x"),
        lambda s: with_field(s, 1, "-8"),
        lambda s: with_field(s, 1, "999"),
        lambda s: with_field(s, 2, "2611220230"),  # short date form: not accepted
        lambda s: with_field(s, 2, "261322023000"),  # month 13
        lambda s: with_field(s, 2, "26112202300x"),
        lambda s: with_field(s, 3, ""),
        lambda s: with_field(s, 4, "ext"),
        lambda s: with_field(s, 5, ""),
        lambda s: with_field(s, 6, ""),
        lambda s: with_field(s, 6, "a b"),
        lambda s: s + "é",
        lambda s: s + "A" * 600,
    ],
)
def test_bad_stamp(good: str, mangle) -> None:  # type: ignore[no-untyped-def]
    assert reason(mangle(good)) == "bad_stamp"


def test_stale_stamp(good: str) -> None:
    assert reason(good, now=NOW + timedelta(seconds=600)) == "ok"
    assert reason(good, now=NOW + timedelta(seconds=601)) == "stale_stamp"
    assert reason(good, now=NOW - timedelta(seconds=120)) == "ok"
    assert reason(good, now=NOW - timedelta(seconds=121)) == "stale_stamp"
    assert reason(good, now=NOW + timedelta(seconds=50), max_age=30) == "stale_stamp"


def test_insufficient_work_when_claiming_too_few_bits() -> None:
    # Whatever its hash, a stamp claiming 8 bits does not pay for 12.
    stamp = mint(RESOURCE, 8, now=NOW)
    assert reason(stamp, bits=12) == "insufficient_work"


def test_insufficient_work_when_claiming_more_than_was_done() -> None:
    """A stamp claiming 20 bits whose SHA-1 does not start with 8 zero bits."""
    prefix = f"1:20:261122023000:{RESOURCE}::c29tZXJhbmQ:"
    stamp = next(
        candidate for counter in range(1000) if sha1_zeros(candidate := f"{prefix}{counter:x}") < 8
    )
    assert reason(stamp, bits=8) == "insufficient_work"


def test_stamp_mismatch(good: str) -> None:
    assert reason(good, resource=hashlib.sha256(b"another").hexdigest()) == "stamp_mismatch"


def test_checks_run_in_the_documented_order(good: str) -> None:
    other = hashlib.sha256(b"another").hexdigest()
    late = NOW + timedelta(hours=1)
    # Malformed beats everything; the date window beats the work; work beats binding.
    assert reason(with_field(good, 4, "x"), resource=other, now=late) == "bad_stamp"
    assert reason(good, resource=other, bits=30, now=late) == "stale_stamp"
    assert reason(good, resource=other, bits=30) == "insufficient_work"
    assert reason(good, resource=other) == "stamp_mismatch"


def test_stamp_error_carries_the_reason() -> None:
    with pytest.raises(StampError) as caught:
        verify("nope", RESOURCE, 8, NOW)
    assert caught.value.reason == "bad_stamp"
    assert isinstance(caught.value, ValueError)


@settings(max_examples=300, deadline=None)
@given(stamp=st.text(max_size=200), resource=st.text(max_size=80), bits=st.integers(0, 200))
def test_random_strings_only_ever_raise_stamp_error(stamp: str, resource: str, bits: int) -> None:
    try:
        verify(stamp, resource, bits, NOW)
    except StampError as error:
        assert error.reason in {"bad_stamp", "stale_stamp", "insufficient_work", "stamp_mismatch"}


_piece = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)


def _mostly(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Usually a valid field, sometimes any text: most examples get past the parser."""
    return st.one_of(valid, valid, valid, _piece)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.tuples(
        _mostly(st.just("1")),
        _mostly(st.integers(0, 160).map(str)),
        _mostly(
            st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
                lambda moment: moment.strftime("%y%m%d%H%M%S")
            )
        ),
        _mostly(st.just(RESOURCE)),
        _mostly(st.just("")),
        _mostly(st.from_regex(r"\A[A-Za-z0-9+/]{1,20}\Z")),
        _mostly(st.from_regex(r"\A[0-9a-f]{1,8}\Z")),
    ),
    window=st.sampled_from([0, 600, 10**12, float("inf")]),
    bits=st.integers(0, 4),
    resource=st.sampled_from([RESOURCE, "other"]),
)
def test_stamp_shaped_strings_only_ever_raise_stamp_error(
    fields: tuple[str, ...], window: float, bits: int, resource: str
) -> None:
    with contextlib.suppress(StampError):
        verify(":".join(fields), resource, bits, NOW, max_age=window, max_future=window)


# -- minting off the host's GIL ------------------------------------------------------------


def test_mint_in_subprocess() -> None:
    stamp = hashcash.mint_in_subprocess(RESOURCE, 12, timeout=30)
    verify(stamp, RESOURCE, 12)


def test_a_stamp_minted_in_a_child_is_dated_as_the_parent_says() -> None:
    # The parent dates stamps by the collector's clock when the two clocks differ.
    when = time.time() - 500
    stamp = hashcash.mint_in_subprocess(RESOURCE, 8, timeout=30, now=when)
    verify(stamp, RESOURCE, 8, now=when)
    with pytest.raises(StampError) as refused:
        verify(stamp, RESOURCE, 8, now=when + 601)
    assert refused.value.reason == "stale_stamp"


def test_module_entry_point_prints_a_stamp() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reqtelemetry.hashcash", "mint", RESOURCE, "10"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    verify(done.stdout.strip(), RESOURCE, 10)
    usage = subprocess.run(
        [sys.executable, "-m", "reqtelemetry.hashcash"], capture_output=True, timeout=60
    )
    assert usage.returncode == 2


def test_mint_in_subprocess_times_out() -> None:
    with pytest.raises(TimeoutError):
        hashcash.mint_in_subprocess(RESOURCE, 60, timeout=0.5)


def test_falls_back_to_slices_when_no_child_can_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    monkeypatch.setattr(hashcash, "_fallback_logged", False)
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        first = hashcash.mint_in_subprocess(RESOURCE, 10, timeout=30)
        second = hashcash.mint_in_subprocess(RESOURCE, 10, timeout=30)
    verify(first, RESOURCE, 10)
    verify(second, RESOURCE, 10)
    said = [r for r in caplog.records if "child process" in r.getMessage()]
    assert len(said) == 1  # said once, not per stamp
    with pytest.raises(TimeoutError):
        hashcash.mint_in_subprocess(RESOURCE, 60, timeout=0.2)


def _children_minting(resource: str) -> list[int]:
    """Pids of this process's children whose command line mints ``resource``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])  # after "pid (comm) state"
            with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if ppid == os.getpid() and b"mint" in argv and resource.encode() in argv:
            found.append(int(entry.name))
    return found


def _idle_policy_refused() -> bool:
    """Whether this machine refuses SCHED_IDLE to an unprivileged process (some sandboxes)."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode != 0


def _observe_minting_child(idle: bool) -> tuple[int | None, int | None]:
    """The scheduling policy and niceness of a real minting child, seen from here."""
    resource = hashlib.sha256(f"priority {idle} {time.time_ns()}".encode()).hexdigest()
    outcome: list[BaseException] = []

    def mint_far_too_much() -> None:  # 60 bits: the child runs until the timeout kills it
        try:
            hashcash.mint_in_subprocess(resource, 60, timeout=2.5, idle=idle)
        except BaseException as error:
            outcome.append(error)

    minting = threading.Thread(target=mint_far_too_much, daemon=True)
    minting.start()
    # Idle: done once the child is seen at SCHED_IDLE. Not idle: watch it for
    # as long as it lives, the last reading counts (a child that lowered itself
    # would show it within milliseconds of starting).
    policy, niceness = None, None
    deadline = time.monotonic() + 2.2
    while time.monotonic() < deadline and not (idle and policy == os.SCHED_IDLE):
        for pid in _children_minting(resource):
            with contextlib.suppress(ProcessLookupError):  # it may exit between the calls
                policy = os.sched_getscheduler(pid)
                niceness = os.getpriority(os.PRIO_PROCESS, pid)
        time.sleep(0.005)
    minting.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError)
    return policy, niceness


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(os, "SCHED_IDLE"),
    reason="SCHED_IDLE is a Linux scheduling policy",
)


@linux_only
def test_the_minting_child_runs_at_idle_priority() -> None:
    if _idle_policy_refused():
        pytest.skip("this machine refuses SCHED_IDLE; the child falls back to nice 19")
    # The child must have lowered itself: it would inherit a policy of ours.
    assert os.sched_getscheduler(0) != os.SCHED_IDLE
    policy, niceness = _observe_minting_child(idle=True)
    assert policy == os.SCHED_IDLE
    assert niceness == 19


@linux_only
def test_the_shutdown_stamp_is_minted_at_the_apps_own_priority() -> None:
    policy, niceness = _observe_minting_child(idle=False)
    assert policy == os.sched_getscheduler(0)
    assert niceness == os.getpriority(os.PRIO_PROCESS, 0)


@linux_only
@pytest.mark.parametrize("idle", [True, False])
def test_the_parent_lowers_the_child_from_its_start(idle, tmp_path, monkeypatch) -> None:
    """The child's interpreter start-up already runs idle, before its own code can lower it.

    A stand-in child that never lowers itself writes the policy it finds
    itself under; only the parent can have set it. It prints no stamp, so
    the call falls back to minting here (1 bit: at once).
    """
    if idle and _idle_policy_refused():
        pytest.skip("this machine refuses SCHED_IDLE")
    seen = tmp_path / "policy"
    code = (
        "import os, time; time.sleep(0.2); "
        f"open({str(seen)!r}, 'w').write(f'{{os.sched_getscheduler(0)}} {{os.nice(0)}}')"
    )
    monkeypatch.setattr(hashcash, "_fallback_logged", False)
    monkeypatch.setattr(
        hashcash, "_child_command", lambda resource, bits, idle, now, python: [python, "-c", code]
    )
    stamp = hashcash.mint_in_subprocess(RESOURCE, 1, timeout=10, idle=idle)
    hashcash.verify(stamp, RESOURCE, 1)
    policy, niceness = (int(field) for field in seen.read_text().split())
    if idle:
        assert (policy, niceness) == (os.SCHED_IDLE, 19)
    else:
        assert (policy, niceness) == (os.sched_getscheduler(0), os.nice(0))


class _Interrupted(Exception):
    pass


@linux_only
@pytest.mark.timeout(30)
def test_an_interrupted_stamp_leaves_no_child_hashing() -> None:
    """Interrupted while a child mints (a signal, as Ctrl-C is): the child is killed at once."""
    resource = hashlib.sha256(f"interrupted {time.time_ns()}".encode()).hexdigest()

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    started = time.monotonic()
    try:
        timer.start()
        with pytest.raises(_Interrupted):
            hashcash.mint_in_subprocess(resource, 60, timeout=20)  # 60 bits: never done
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - started < 5  # not the 20 s timeout
    deadline = time.monotonic() + 5
    while _children_minting(resource) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children_minting(resource) == []


@linux_only
@pytest.mark.timeout(30)
def test_a_child_stopped_by_a_signal_is_no_reason_to_mint_here(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The terminal's Ctrl-C, or a service manager stopping the process group,
    reaches the minting child too. It was taken for a child that cannot run,
    with a warning naming a fault there was none of, and the stamp was then
    minted in this process, where cancelling no longer stopped it."""
    resource = hashlib.sha256(f"signalled {time.time_ns()}".encode()).hexdigest()
    monkeypatch.setattr(hashcash, "_fallback_logged", False)

    def stop_the_child() -> None:
        deadline = time.monotonic() + 10
        while not (children := _children_minting(resource)) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    stopper = threading.Thread(target=stop_the_child)
    started = time.monotonic()
    stopper.start()
    try:
        with (
            caplog.at_level(logging.WARNING, logger="reqtelemetry"),
            pytest.raises(hashcash.MintCancelled, match="signal 15"),
        ):
            hashcash.mint_in_subprocess(resource, 60, timeout=20)  # 60 bits: never done
    finally:
        stopper.join()
    assert time.monotonic() - started < 10  # not minting here until the 20 s timeout
    assert not [r for r in caplog.records if "child process" in r.getMessage()]


@linux_only
@pytest.mark.parametrize(
    ("signalled", "stopped_with_its_group"),
    [("TERM", True), ("INT", True), ("KILL", False), ("SYS", False), ("SEGV", False)],
)
def test_only_a_group_stop_of_the_child_cancels_the_stamp(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    signalled: str,
    stopped_with_its_group: bool,
) -> None:
    """A child killed by the OOM killer (SIGKILL) or a seccomp filter (SIGSYS),
    or one that crashed, may never mint: that falls back to minting here, as
    before; only a signal that stops a process group cancels the stamp."""
    dying = tmp_path / "dying-python"
    dying.write_text(
        f"#!{sys.executable}\n"
        "import contextlib, os, signal, time\n"
        f"number = signal.SIG{signalled}\n"
        # Default handling, even where the suite was started with it ignored
        # (a background job without job control ignores SIGINT).
        "with contextlib.suppress(OSError, ValueError):\n"
        "    signal.signal(number, signal.SIG_DFL)\n"
        "os.kill(os.getpid(), number)\n"
        "time.sleep(5)\n"
    )
    dying.chmod(0o755)
    monkeypatch.setattr(hashcash, "python_executable", lambda: str(dying))
    monkeypatch.setattr(hashcash, "_fallback_logged", False)
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        if stopped_with_its_group:
            with pytest.raises(hashcash.MintCancelled, match="stopped by signal"):
                hashcash.mint_in_subprocess(RESOURCE, 12, timeout=20)
        else:
            verify(hashcash.mint_in_subprocess(RESOURCE, 12, timeout=20), RESOURCE, 12)
    fell_back = [r for r in caplog.records if "child process" in r.getMessage()]
    assert len(fell_back) == (0 if stopped_with_its_group else 1)


@linux_only
@pytest.mark.timeout(30)
def test_a_child_started_where_signals_are_blocked_or_ignored_still_stops() -> None:
    """Started from a thread that blocks every signal (reqtelemetry's, under
    uWSGI) with SIGTERM ignored, the child inherited both across exec: a
    group stop could not end it, and an orphan hashed on."""
    resource = hashlib.sha256(f"blocked {time.time_ns()}".encode()).hexdigest()
    raised: list[BaseException] = []

    def mint_with_signals_blocked() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            hashcash.mint_in_subprocess(resource, 60, timeout=20)  # 60 bits: never done
        except BaseException as error:
            raised.append(error)

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited across exec
    try:
        minting = threading.Thread(target=mint_with_signals_blocked)
        started = time.monotonic()
        minting.start()
        deadline = time.monotonic() + 10
        while not (children := _children_minting(resource)) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert children
    # Once, at once: while the child starts, before or after it takes the
    # signals back (restored first, then unblocked, so it is never lost).
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    minting.join(15)
    assert time.monotonic() - started < 10
    assert [type(error) for error in raised] == [hashcash.MintCancelled]


@linux_only
@pytest.mark.timeout(30)
def test_a_cancelled_stamp_leaves_no_child_hashing() -> None:
    """What Transport.interrupt() does at shutdown: set the Event, the child is killed."""
    resource = hashlib.sha256(f"cancelled {time.time_ns()}".encode()).hexdigest()
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    try:
        timer.start()
        with pytest.raises(hashcash.MintCancelled):
            hashcash.mint_in_subprocess(resource, 60, timeout=20, cancel=cancel)
    finally:
        timer.cancel()
    assert _children_minting(resource) == []  # killed and reaped before it raised
    with pytest.raises(hashcash.MintCancelled):  # already cancelled: no child at all
        hashcash.mint_in_subprocess(resource, 60, timeout=20, cancel=cancel)
