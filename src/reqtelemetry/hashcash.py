"""Hashcash v1 proof-of-work stamps: minted by the client, verified by the collector.

Why proof of work: the collector is a public endpoint, and anyone can send it
reports. A stamp makes every report cost its sender about 2**20 SHA-1s at the
default 20 bits (about a third of a second of CPython on one core, on average), while
checking it costs the collector one SHA-1. The stamp
is bound to one session token and to the exact report bytes (see
:func:`payload_resource` and ``docs/protocol.md``), so it cannot be reused for
another report, and the collector's storage refuses a stamp it has seen before.

The format is hashcash version 1, ``1:bits:YYMMDDhhmmss:resource::rand:counter``:
the SHA-1 of the whole stamp must begin with at least ``bits`` zero bits.

Minting is CPU work in pure Python, and a host app's request threads share one
GIL with it. :func:`mint_in_subprocess` therefore runs it in a child process
(``python -m reqtelemetry.hashcash mint RESOURCE BITS`` prints a stamp) at the
lowest CPU priority (``SCHED_IDLE`` on Linux, nice 19 elsewhere: see
:func:`_lower_priority`); only if no child can be started does it mint here, in
short slices that give the GIL back between them.

This module imports nothing from the rest of the package on purpose: the child
process runs this file alone, without paying for importing the client's
dependencies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

#: The signals that stop a whole process group: a terminal's (SIGINT,
#: SIGQUIT, SIGHUP when it closes), a service manager's (SIGTERM).
#: (SIGHUP and SIGQUIT are not on every platform.)
GROUP_STOP_SIGNALS = frozenset(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
    if hasattr(signal, name)
)


def _lower_priority() -> None:
    """Run the child at the lowest CPU priority the platform lets us ask for.

    Off the GIL is not off the CPU: a second of hashing competes with the app's
    own processes for cores. Nice 19 alone only shrinks the child's share: the
    fair scheduler (EEVDF since Linux 6.6) may still let it finish its slice
    while a request thread that just woke waits, which shows in the app's p99.
    Under Linux's ``SCHED_IDLE`` policy a waking normal task always preempts the
    child, so the hashing only ever fills time the app leaves idle; the report
    waits a little longer, the app's requests do not. Nice 19 comes first, so
    that where ``SCHED_IDLE`` is missing or refused (other systems, some
    sandboxes) the child still runs niced.
    """
    with contextlib.suppress(AttributeError, OSError):  # not on this platform, or not allowed
        os.nice(19)
    with contextlib.suppress(AttributeError, OSError):  # Linux only; a sandbox may refuse it
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


#: Child argument: mint at the parent's priority (the final report at shutdown).
NORMAL_PRIORITY_FLAG = "--normal-priority"
#: Child argument prefix: date the stamp at these Unix seconds, not the child's clock
#: (the parent dates stamps by the collector's clock when the two are apart).
NOW_FLAG = "--now="


def _take_stop_signals() -> None:
    """Let the stop signals end the minting child, whatever it inherited.

    Why: a child keeps its parent thread's blocked signals and ignored ones
    across ``exec``. Started from reqtelemetry's flusher under uWSGI (which
    blocks every signal in its threads) or after uWSGI's exit hook (which
    ignores the stop signals), it ignored SIGTERM, SIGINT and SIGHUP, a group
    stop could not end it, and an orphan hashed on after its worker was killed.
    """
    # Their default first, then unblocked: one sent while the child started,
    # pending meanwhile, is delivered at the unblocking, and was lost where
    # it was still ignored then.
    for number in GROUP_STOP_SIGNALS:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(number, signal.SIG_DFL)
    with contextlib.suppress(AttributeError, OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_SETMASK, ())


if __name__ == "__main__":
    _take_stop_signals()

if __name__ == "__main__" and NORMAL_PRIORITY_FLAG not in sys.argv:
    # The minting child lowers itself before the imports below, which are most
    # of its start-up CPU (some 30 ms a stamp, at the app's priority otherwise).
    _lower_priority()

import base64  # noqa: E402 (after the child's _lower_priority, on purpose)
import hashlib  # noqa: E402
import hmac  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from typing import Protocol  # noqa: E402

__all__ = [
    "StampError",
    "leading_zero_bits",
    "mint",
    "mint_in_slices",
    "mint_in_subprocess",
    "payload_resource",
    "verify",
]

logger = logging.getLogger("reqtelemetry")

#: SHA-1 digests have 160 bits; no stamp can claim more zero bits than that.
MAX_BITS = 160
#: A stamp longer than this is refused unread (a resource is 64 hex digits).
MAX_STAMP_LENGTH = 512

#: rand and counter: base64 characters only (standard or URL-safe), never ':'.
_FIELD = re.compile(r"[A-Za-z0-9+/=_-]{1,64}")
_DATE = re.compile(r"[0-9]{12}")
_BITS = re.compile(r"[0-9]{1,3}")
_RESOURCE = re.compile(r"[\x21-\x39\x3b-\x7e]{1,256}")  # printable ASCII except ':'

_fallback_logged = False

#: Held while a minting child is being started, and by every ``os.fork()`` of
#: this process until it is done. Why: the child's pipes are open in this
#: process until it has started; a process forked meanwhile (a gunicorn
#: ``--preload`` worker, a multiprocessing child) kept copies of their write
#: ends, so the end of file that says the child started never came, and the
#: flusher waited for it forever (the master's reports stopped for good).
#: Reentrant: a ``subprocess`` that forks with ``os.fork()`` (gevent's, patched
#: in without ``threading``) runs the fork hooks in the thread holding it.
_starting_child = threading.RLock()
#: Whether this thread's fork took the lock: a signal handler raising while
#: the fork hook waits makes the fork go on without it, and a child then
#: released a lock it did not hold (or inherited it held by a thread that
#: is not there, and every later fork in it hung).
_fork_state = threading.local()


def _before_fork() -> None:
    _fork_state.held = False
    _starting_child.acquire()
    _fork_state.held = True


def _after_fork_in_parent() -> None:
    if getattr(_fork_state, "held", False):
        _fork_state.held = False
        _starting_child.release()


def _after_fork_in_child() -> None:
    """A lock of the child's own: the parent's may be held by a thread that is
    not here, and the child's fork hooks may run without the parent's before
    (uWSGI's ``--py-call-osafterfork``)."""
    global _starting_child
    _starting_child = threading.RLock()
    _fork_state.held = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


class Cancel(Protocol):
    """What :func:`mint_in_subprocess` accepts as ``cancel`` (a ``threading.Event``)."""

    def is_set(self) -> bool: ...


class MintCancelled(Exception):
    """Minting was cancelled (the client is shutting down); the child was killed."""


class StampError(ValueError):
    """A stamp was refused; ``reason`` is the protocol's refusal reason.

    One of ``bad_stamp``, ``stale_stamp``, ``insufficient_work``, ``stamp_mismatch``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# -- pieces ---------------------------------------------------------------------------


def leading_zero_bits(digest: bytes) -> int:
    """How many zero bits ``digest`` starts with (all of them for an all-zero digest)."""
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload_resource(token: str, payload: bytes) -> str:
    """The stamp's resource: binds one session token to the exact report bytes.

    ``sha256_hex(token + "." + sha256_hex(payload))``, as ``docs/protocol.md`` says.
    """
    return _sha256_hex(f"{token}.{_sha256_hex(payload)}".encode())


def _utc(now: datetime | float | None) -> datetime:
    """``now`` as an aware UTC datetime (naive datetimes are taken to be UTC)."""
    if now is None:
        return datetime.now(timezone.utc)
    if isinstance(now, datetime):
        return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now
    return datetime.fromtimestamp(float(now), timezone.utc)


def _check_mint_args(resource: str, bits: int) -> None:
    if not isinstance(bits, int) or not 0 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer within [0, {MAX_BITS}], got {bits!r}")
    if not _RESOURCE.fullmatch(resource):
        raise ValueError("resource must be 1-256 printable ASCII characters without ':'")


def _target(bits: int) -> bytes | None:
    """Digests below this (compared as bytes) have at least ``bits`` leading zero bits.

    Big-endian bytes of equal length compare like the numbers they encode, so
    one C-level comparison replaces counting bits in the minting loop. None
    means every digest qualifies (``bits == 0``).
    """
    if bits == 0:
        return None
    return (1 << (MAX_BITS - bits)).to_bytes(MAX_BITS // 8, "big")


def _prefix(resource: str, bits: int, now: datetime | float | None) -> bytes:
    date = _utc(now).astimezone(timezone.utc).strftime("%y%m%d%H%M%S")
    rand = base64.b64encode(os.urandom(12)).decode("ascii").rstrip("=")
    return f"1:{bits}:{date}:{resource}::{rand}:".encode("ascii")


#: The counter's last three hex digits. Minting tries these under one shared
#: prefix state, so the inner loop neither formats numbers nor rehashes the head:
#: about 2.5 million candidates a second in CPython, against 1.8 without.
_TAILS = tuple(b"%03x" % tail for tail in range(4096))


def _search(base: hashlib._Hash, target: bytes | None, start: int, stop: int) -> bytes | None:
    """The first counter with a head in ``[start, stop)`` whose stamp meets ``target``.

    A counter is ``hex(head)`` followed by three hex digits. The stamp up to
    the counter is hashed once (``base``), each head once per 4096 candidates,
    and each candidate only copies that state and adds its tail.
    """
    if target is None:
        return b"0"
    for head in range(start, stop):
        head_state = base.copy()
        head_state.update(b"%x" % head)
        copy = head_state.copy
        for tail in _TAILS:
            candidate = copy()
            candidate.update(tail)
            if candidate.digest() < target:
                return b"%x" % head + tail
    return None


# -- minting --------------------------------------------------------------------------


def mint(resource: str, bits: int, now: datetime | float | None = None) -> str:
    """A stamp for ``resource`` whose SHA-1 starts with at least ``bits`` zero bits.

    Takes about ``2**bits`` SHA-1 computations (20 bits: about a third of a second
    in CPython on one core, on average). This
    holds the GIL while it runs: from a host app, use :func:`mint_in_subprocess`.
    """
    _check_mint_args(resource, bits)
    prefix = _prefix(resource, bits, now)
    found = _search(hashlib.sha1(prefix), _target(bits), 1, 1 << 62)
    if found is None:  # 2**74 candidates: cannot happen short of a broken SHA-1
        raise RuntimeError(f"no {bits}-bit stamp found")
    return (prefix + found).decode("ascii")


def mint_in_slices(
    resource: str,
    bits: int,
    timeout: float,
    *,
    now: float | None = None,
    cancel: Cancel | None = None,
) -> str:
    """Mint in this process, in slices of a few milliseconds with a pause between.

    For where no child can be waited for: under gevent (see ``reqtelemetry.green``)
    the pause lets the app's greenlets run. Raises :class:`TimeoutError` past
    ``timeout`` seconds, and :class:`MintCancelled` once ``cancel`` is set.
    """
    return _mint_in_slices(resource, bits, time.monotonic() + max(0.0, timeout), now, cancel)


def _mint_in_slices(
    resource: str,
    bits: int,
    deadline: float,
    now: datetime | float | None = None,
    cancel: Cancel | None = None,
) -> str:
    """Mint here, yielding the GIL between short slices; raise TimeoutError past ``deadline``."""
    _check_mint_args(resource, bits)
    prefix = _prefix(resource, bits, now)
    base = hashlib.sha1(prefix)
    target = _target(bits)
    head = 1
    while True:
        found = _search(base, target, head, head + 1)  # 4096 candidates, a few ms
        if found is not None:
            return (prefix + found).decode("ascii")
        head += 1
        if time.monotonic() >= deadline:
            raise TimeoutError(f"minting a {bits}-bit stamp took longer than allowed")
        if cancel is not None and cancel.is_set():
            raise MintCancelled(f"minting a {bits}-bit stamp was cancelled")
        time.sleep(0)  # let request threads run


def _child_command(
    resource: str,
    bits: int,
    idle: bool = True,
    now: float | None = None,
    python: str | None = None,
) -> list[str]:
    """How to run the minting child.

    This file is run by its path, in isolated mode (``-I -S``), when it is a
    real file: the child then imports only the standard library (the package
    and its dependencies cost about 0.2 s more per stamp) and cannot be misled
    by the host's environment or working directory. From a zip or other
    loader, ``-m reqtelemetry.hashcash`` does the same job.
    """
    here = os.path.abspath(__file__) if "__file__" in globals() else ""
    arguments = ["mint", resource, str(bits)] + ([] if idle else [NORMAL_PRIORITY_FLAG])
    if now is not None:
        arguments.append(f"{NOW_FLAG}{float(now)!r}")
    python = python or python_executable() or sys.executable
    if here and os.path.isfile(here):
        return [python, "-I", "-S", here, *arguments]
    return [python, "-m", "reqtelemetry.hashcash", *arguments]


def python_executable() -> str | None:
    """A Python interpreter to run the minting child with; None if none is known.

    ``sys.executable``, except where a server embeds Python: under uWSGI it
    names the ``uwsgi`` binary, which refused the child's arguments, and every
    stamp was minted in the app's own process. There, the interpreter of the
    environment the app runs in (``--home``), or the one it was made from.
    """
    # What reqtelemetry.prefork.uwsgi_module tells; this file runs on its own
    # (the child), so it imports nothing of the package.
    if not hasattr(sys.modules.get("uwsgi"), "worker_id"):
        return sys.executable or None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    folder = os.path.join(sys.exec_prefix, "Scripts" if os.name == "nt" else "bin")
    candidates = [os.path.join(folder, name) for name in (f"python{version}", "python3", "python")]
    candidates.append(getattr(sys, "_base_executable", "") or "")
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _log_fallback(why: str) -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        logger.warning(
            "reqtelemetry: cannot mint proof-of-work stamps in a child process (%s); "
            "minting in this process instead, in short slices",
            why,
        )


def mint_in_subprocess(
    resource: str,
    bits: int,
    timeout: float,
    *,
    idle: bool = True,
    now: float | None = None,
    cancel: Cancel | None = None,
) -> str:
    """Mint in a child process, so that the host app's GIL is never held by minting.

    The child runs at idle priority, so that it does not take a core from the
    app's own threads either. ``idle=False`` keeps the parent's priority: for
    the final report at shutdown, which has a deadline and no requests left to
    make way for (at idle priority on a busy machine it could miss the deadline).

    Raises :class:`TimeoutError` when no stamp is found within ``timeout``
    seconds (the child is killed). ``now`` dates the stamp (Unix seconds; default:
    the clock when it is minted). Once ``cancel`` (a ``threading.Event``) is
    set, the child is killed and :class:`MintCancelled` raised. When no child can be started (no
    ``sys.executable``, a sandbox that forbids it, an embedding interpreter),
    mints in this process in short slices instead and says so in one log line.
    """
    _check_mint_args(resource, bits)
    deadline = time.monotonic() + max(0.0, timeout)
    if cancel is not None and cancel.is_set():
        raise MintCancelled(f"minting a {bits}-bit stamp was cancelled")
    python = python_executable()
    if not python:
        _log_fallback("no Python interpreter to run it with is known")
        return _mint_in_slices(resource, bits, deadline, now, cancel)
    try:
        with _starting_child:  # no fork of this process meanwhile (see _starting_child)
            child = subprocess.Popen(
                _child_command(resource, bits, idle, now, python),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
    except OSError as error:
        _log_fallback(f"{type(error).__name__}: {error}")
        return _mint_in_slices(resource, bits, deadline, now, cancel)
    with child:
        if idle:
            _lower_priority_of(child.pid)
        try:
            stdout, stderr = _wait_for(child, deadline, cancel)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            if cancel is not None and cancel.is_set():
                raise MintCancelled(f"minting a {bits}-bit stamp was cancelled") from None
            raise TimeoutError(
                f"minting a {bits}-bit stamp took longer than {timeout:.1f} s"
            ) from None
        except BaseException:  # interrupted: leave no child hashing, and do not wait for one
            child.kill()
            raise
    if -child.returncode in GROUP_STOP_SIGNALS:
        # Stopped with its process group: the terminal's Ctrl-C or a service
        # manager stopping the app reaches the child too. Nothing says a child
        # cannot mint, and minting here would hold up the shutdown that signal
        # began. (Killed otherwise, by the OOM killer's SIGKILL or a seccomp
        # filter's SIGSYS, it may never mint: that falls back as below.)
        raise MintCancelled(
            f"the child minting a {bits}-bit stamp was stopped by signal {-child.returncode}"
        )
    stamp = stdout.decode("ascii", "replace").strip()
    if child.returncode != 0 or not _meets(stamp, resource, bits):
        lines = stderr.decode("utf-8", "replace").strip().splitlines()
        _log_fallback(f"the child exited with {child.returncode}: {lines[-1] if lines else ''}")
        return _mint_in_slices(resource, bits, deadline, now, cancel)
    return stamp


#: Seconds between two looks at ``cancel`` while a child mints.
CANCEL_POLL = 0.05


def _wait_for(
    child: subprocess.Popen[bytes], deadline: float, cancel: Cancel | None
) -> tuple[bytes, bytes]:
    """The child's output; TimeoutExpired past ``deadline`` or once ``cancel`` is set."""
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        if cancel is not None and cancel.is_set():
            raise subprocess.TimeoutExpired(child.args, 0)
        wait = remaining if cancel is None else min(remaining, CANCEL_POLL)
        try:
            return child.communicate(timeout=wait)
        except Exception as error:
            if not _timed_out(error):
                raise
            if cancel is None or time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(child.args, remaining) from None


def _timed_out(error: BaseException) -> bool:
    """Whether ``error`` is a ``TimeoutExpired`` from a ``Popen``'s wait.

    Why not ``isinstance`` alone: eventlet's green ``Popen`` (``eventlet.
    monkey_patch()``, as ``gunicorn -k eventlet`` and Flask-SocketIO do) is
    built on a second copy of the ``subprocess`` module, whose
    ``TimeoutExpired`` is another class. Missed, the first poll for ``cancel``
    (:data:`CANCEL_POLL`) ended every stamp that took longer than that: at a
    collector's 20 bits, no report was ever delivered.
    """
    kind = type(error)
    return isinstance(error, subprocess.TimeoutExpired) or (
        kind.__name__ == "TimeoutExpired" and kind.__module__ == "subprocess"
    )


def _lower_priority_of(pid: int) -> None:
    """Lower a just-started child from here, as it will lower itself.

    Why both: the child's own :func:`_lower_priority` runs only once its
    interpreter has started, some 10 ms of CPU at the app's priority for
    every stamp; from here the start-up is idle too, bar the few microseconds
    until this call. The child still lowers itself, for where a parent may
    not do it for its child (other systems).
    """
    with contextlib.suppress(AttributeError, OSError):  # not on this platform, or already gone
        os.setpriority(os.PRIO_PROCESS, pid, 19)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))


def _meets(stamp: str, resource: str, bits: int) -> bool:
    """Whether a stamp from the child is for ``resource`` and carries the work."""
    try:
        claimed, _, found_resource = _parse(stamp)
    except StampError:
        return False
    digest = hashlib.sha1(stamp.encode("ascii")).digest()
    return found_resource == resource and claimed >= bits and leading_zero_bits(digest) >= bits


# -- verifying ------------------------------------------------------------------------


def _parse(stamp: str) -> tuple[int, datetime, str]:
    """``(claimed bits, date, resource)`` of a well-formed stamp, or StampError(bad_stamp)."""
    if not isinstance(stamp, str) or len(stamp) > MAX_STAMP_LENGTH or not stamp.isascii():
        raise StampError("bad_stamp", "not an ASCII string of reasonable length")
    fields = stamp.split(":")
    if len(fields) != 7:
        raise StampError("bad_stamp", "a stamp has 7 fields separated by ':'")
    version, bits, date, resource, ext, rand, counter = fields
    if version != "1":
        raise StampError("bad_stamp", "only hashcash version 1 is accepted")
    if not _BITS.fullmatch(bits) or int(bits) > MAX_BITS:
        raise StampError("bad_stamp", "bits is not a number of bits")
    if not _DATE.fullmatch(date):
        raise StampError("bad_stamp", "the date is not YYMMDDhhmmss")
    try:
        # Fixed-width fields, read by hand: strptime would also accept odd splits.
        year, month, day, hour, minute, second = (int(date[i : i + 2]) for i in range(0, 12, 2))
        when = datetime(2000 + year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError:
        raise StampError("bad_stamp", "the date is not a valid date") from None
    if not _RESOURCE.fullmatch(resource):
        raise StampError("bad_stamp", "the resource is empty or not printable")
    if ext:
        raise StampError("bad_stamp", "the extension field must be empty")
    if not _FIELD.fullmatch(rand) or not _FIELD.fullmatch(counter):
        raise StampError("bad_stamp", "rand and counter must be base64")
    return int(bits), when, resource


def verify(
    stamp: str,
    resource: str,
    bits: int,
    now: datetime | float | None = None,
    max_age: float = 600,
    max_future: float = 120,
) -> None:
    """Check a stamp, cheapest first, in the order ``docs/protocol.md`` gives.

    Raises :class:`StampError` with the first failing check's reason:
    ``bad_stamp`` (not a well-formed v1 stamp), ``stale_stamp`` (dated more than
    ``max_age`` seconds before ``now`` or more than ``max_future`` after it),
    ``insufficient_work`` (it claims fewer than ``bits`` bits, or its SHA-1 does
    not start with ``bits`` zero bits; claiming more than was done is harmless,
    since the required difficulty is what is checked), ``stamp_mismatch`` (it is
    for another resource). ``now`` is a datetime or Unix seconds.

    Replays are not checked here: storage refuses a stamp it has seen.
    """
    claimed, when, found_resource = _parse(stamp)
    # Compared as Unix seconds: datetime arithmetic overflows for huge windows.
    age = _utc(now).timestamp() - when.timestamp()
    if age > max_age:
        raise StampError("stale_stamp", f"the stamp is older than {max_age:g} s")
    if -age > max_future:
        raise StampError("stale_stamp", f"the stamp is dated more than {max_future:g} s ahead")
    if claimed < bits:
        raise StampError("insufficient_work", f"the stamp claims {claimed} bits, {bits} needed")
    digest = hashlib.sha1(stamp.encode("ascii")).digest()
    if leading_zero_bits(digest) < bits:
        raise StampError("insufficient_work", f"the SHA-1 has fewer than {bits} leading zero bits")
    if not hmac.compare_digest(found_resource.encode("ascii"), resource.encode("utf-8")):
        raise StampError("stamp_mismatch", "the stamp is for another token or payload")


# -- the child process ----------------------------------------------------------------


def _main(argv: list[str]) -> int:
    """``mint RESOURCE BITS [--normal-priority] [--now=UNIX_SECONDS]``: print a stamp
    (what :func:`mint_in_subprocess` runs; the priority was settled at start-up)."""
    dates = [argument for argument in argv if argument.startswith(NOW_FLAG)]
    argv = [
        argument
        for argument in argv
        if argument != NORMAL_PRIORITY_FLAG and not argument.startswith(NOW_FLAG)
    ]
    if len(argv) != 3 or argv[0] != "mint" or len(dates) > 1:
        print(
            "usage: python -m reqtelemetry.hashcash mint RESOURCE BITS "
            f"[{NORMAL_PRIORITY_FLAG}] [{NOW_FLAG}UNIX_SECONDS]",
            file=sys.stderr,
        )
        return 2
    try:
        now = float(dates[0][len(NOW_FLAG) :]) if dates else None
        stamp = mint(argv[1], int(argv[2]), now)
    except (ValueError, OverflowError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(stamp)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
