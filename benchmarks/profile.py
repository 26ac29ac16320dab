"""Where the middleware's time goes: sampling profiles of the hot path, taken with py-spy.

The overhead, instruction and throughput tables say how much reqtelemetry
costs; this says where, line by line, so that a change to the hot path can be
judged before and after. Three processes run reqtelemetry exactly as the other
benchmarks do, each launched by ``py-spy record`` (a child of py-spy, so no
special permission is needed to read its stacks):

- in process, ASGI and WSGI: the overhead table's loops
  (:func:`benchmarks.overhead._asgi_loop` and ``_wsgi_loop``) over Starlette
  with ``ASGIMiddleware`` and Flask with ``init_app``, for a few seconds each;
- under a server: the throughput table's uvicorn app (JSON route) with
  reqtelemetry, loaded by the same load generator as that table.

For each: the samples taken while the process was busy (py-spy leaves out
threads that wait), and the share whose innermost Python frame is
reqtelemetry's own code, that is, its lines and the C functions they call
(``perf_counter``, ``dict.get``, ``len``). Import-time samples are left out;
in process, only samples taken inside the timed loop count. Then the lines of
reqtelemetry with the most samples, with their source.

Why py-spy and not pyinstrument: pyinstrument's hook runs in the profiled
process on every Python call and return, which charges call-heavy code (a
middleware's small functions) for the profiler's own work; py-spy reads the
stacks from another process and changes nothing in the one it samples.

A share of samples is a ratio within one process, so it needs no baseline
run. It is not the overhead: code the framework runs only because a
middleware is there (one more coroutine for uvicorn to drive) is charged to
the framework's lines. About 30 s; not part of the default ``make bench``
(``make bench ARGS=profile``). Skipped, with a note, where py-spy is not
installed (it is pinned in the ``bench`` extra).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import linecache
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import reqtelemetry
from benchmarks import ROOT, child_environment, quick

#: Where reqtelemetry's own code lives: a frame in here is the library's.
PACKAGE_DIR = str(Path(reqtelemetry.__file__).resolve().parent) + os.sep
#: Samples per second (py-spy's default is 100; the hot path is a few µs).
RATE = 1000
#: A frame of the import system: the process was starting, not serving.
IMPORTING = "_find_and_load ("
#: Frames of the timed loops, by profile (in process only).
LOOPS = {"asgi": "_asgi_loop (", "wsgi": "_wsgi_loop ("}
TOP_LINES = 8
#: Requests each loop child serves before its samples count.
WARMUP = 300


@dataclass
class Settings:
    loop_seconds: float
    server_seconds: int
    #: Requests per loop batch (the loop child checks the clock between batches).
    batch: int = 2000


FULL = Settings(loop_seconds=6.0, server_seconds=8)
QUICK = Settings(loop_seconds=1.5, server_seconds=2, batch=500)


@dataclass
class Profile:
    """The busy samples of one process, and those in reqtelemetry's lines."""

    label: str
    samples: int = 0
    ours: int = 0
    #: (path, line, function) -> samples whose innermost frame is that line of ours.
    lines: collections.Counter[tuple[str, int, str]] = field(default_factory=collections.Counter)
    #: Function name -> samples whose innermost frame is in that function of ours.
    functions: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def share(self) -> float:
        return self.ours / self.samples if self.samples else float("nan")


def parse_frame(frame: str) -> tuple[str, str, int]:
    """``"name (path:line)"``, as ``py-spy --format raw`` writes a frame -> (name, path, line)."""
    name, _, location = frame.rpartition(" (")
    path, _, line = location.rstrip(")").rpartition(":")
    if not path:  # no line number
        return name, location.rstrip(")"), 0
    return name, path, int(line) if line.isdigit() else 0


def summarise(label: str, raw: str, must_contain: str | None = None) -> Profile:
    """Count ``py-spy --format raw`` output: one ``frames;...;frames count`` per line.

    ``must_contain``: only stacks with a frame that starts so count (the timed
    loop), as well as no stack of the import system.
    """
    profile = Profile(label)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if IMPORTING in stack or (must_contain is not None and must_contain not in stack):
            continue
        samples = int(count)
        profile.samples += samples
        name, path, number = parse_frame(stack.rpartition(";")[2])
        if path.startswith(PACKAGE_DIR):
            profile.ours += samples
            profile.lines[(path, number, name)] += samples
            profile.functions[name] += samples
    return profile


# -- the processes py-spy records ----------------------------------------------------------


def _loop_main(kind: str, seconds: float, batch: int, answer: Path) -> None:
    """The child py-spy records in process: one app, the overhead loop, ``seconds`` long.

    Writes ``{"served": ..., "recorded": ...}`` to ``answer``: py-spy exits 0
    whatever its command does, so the parent learns here that the loop ran and
    that the middleware recorded every request.
    """
    from benchmarks.overhead import (
        _asgi_loop,
        _telemetry,
        _wsgi_loop,
        asgi_scope,
        flask_app,
        starlette_app,
        wsgi_environ,
    )
    from reqtelemetry import ASGIMiddleware
    from reqtelemetry.flask import init_app

    if kind not in LOOPS:
        raise ValueError(f"kind must be one of {', '.join(LOOPS)}, got {kind!r}")
    telemetry = _telemetry(opt_out=False)
    clock = time.perf_counter_ns
    if kind == "asgi":
        app = ASGIMiddleware(starlette_app(), telemetry=telemetry)
        loop = asyncio.new_event_loop()
        scope = asgi_scope()

        def serve(n: int) -> None:
            loop.run_until_complete(_asgi_loop(app, scope, n, clock))

    else:
        flask = flask_app()
        init_app(flask, telemetry)
        environ = wsgi_environ()

        def serve(n: int) -> None:
            _wsgi_loop(flask, environ, n, clock)

    serve(WARMUP)
    served = WARMUP
    gc.collect()
    gc.freeze()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        serve(batch)
        served += batch
    recorded = sum(record["count"] for record in telemetry.snapshot())
    answer.write_text(json.dumps({"served": served, "recorded": recorded}), encoding="utf-8")


class Recording:
    """``py-spy record`` of a command, as its child, until :meth:`stop` or the command ends."""

    def __init__(self, py_spy: str, command: list[str], env: dict[str, str]) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bench-profile-")
        self.output = Path(self._dir.name) / "stacks.txt"
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in result)
        try:
            self.proc = self._start(py_spy, command, env)
        except BaseException:
            self._stderr.close()
            self._dir.cleanup()
            raise

    def _start(
        self, py_spy: str, command: list[str], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                py_spy,
                "record",
                "--format",
                "raw",
                "--full-filenames",
                "--rate",
                str(RATE),
                "--output",
                str(self.output),
                "--",
                *command,
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def stop(self) -> None:
        """What Ctrl-C does: py-spy stops sampling, writes its output and ends the command."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def result(self, timeout: float) -> str:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("py-spy did not finish") from None
        finally:
            self._stderr.seek(0)
            log = self._stderr.read().decode(errors="replace")
            self._stderr.close()
        try:
            if not self.output.exists():
                raise RuntimeError(f"py-spy wrote no profile (exit {code}):\n{log[-2000:]}")
            return self.output.read_text(encoding="utf-8")
        finally:
            self._dir.cleanup()


def profile_loop(py_spy: str, kind: str, settings: Settings) -> Profile:
    """Profile the overhead loop of ``kind`` (``asgi`` or ``wsgi``) in its own process."""
    with tempfile.TemporaryDirectory(prefix="bench-profile-loop-") as workdir:
        answer = Path(workdir) / "answer.json"
        command = [
            sys.executable,
            "-m",
            "benchmarks.profile",
            "--loop",
            kind,
            str(settings.loop_seconds),
            str(settings.batch),
            str(answer),
        ]
        raw = Recording(py_spy, command, child_environment()).result(settings.loop_seconds + 120)
        if not answer.exists():
            raise RuntimeError(f"the {kind} loop did not finish under py-spy")
        counts = json.loads(answer.read_text(encoding="utf-8"))
    if counts["recorded"] != counts["served"]:
        raise RuntimeError(f"the {kind} middleware did not record every request: {counts}")
    label = {"asgi": "Starlette + ASGIMiddleware", "wsgi": "Flask + init_app"}[kind]
    return summarise(f"in process: {label}", raw, must_contain=LOOPS[kind])


def profile_server(py_spy: str, settings: Settings) -> Profile:
    """Profile the throughput table's uvicorn server with reqtelemetry, under load."""
    from benchmarks.server_instructions import _wait_until_serving
    from benchmarks.throughput import (
        CONTENDER_ENV,
        LoadGenerator,
        _free_port,
        loadgen_name,
        server_command,
    )

    port = _free_port()
    recording = Recording(
        py_spy,
        server_command("uvicorn", port),
        child_environment(**{CONTENDER_ENV: "reqtelemetry"}),
    )
    try:
        _wait_until_serving(port, recording.proc, timeout=60)
        with tempfile.TemporaryDirectory(prefix="bench-profile-load-") as workdir:
            load = LoadGenerator(loadgen_name(), Path(workdir))
            answered = load.run(f"http://127.0.0.1:{port}/items/42", settings.server_seconds, 16)
        if answered.requests == 0 or answered.errors:
            raise RuntimeError(f"the load failed: {answered}")
    except BaseException:
        recording.stop()
        with contextlib.suppress(Exception):  # the first failure is the one to report
            recording.result(timeout=60)
        raise
    recording.stop()
    raw = recording.result(timeout=60)
    return summarise("uvicorn + Starlette + reqtelemetry, under load", raw)


# -- the report ------------------------------------------------------------------------------


def _source(path: str, number: int) -> str:
    text = linecache.getline(path, number).strip()
    text = text.replace("|", "\\|").replace("`", "'")
    return f"`{text[:70]}`" if text else ""


def _where(path: str, number: int) -> str:
    return f"{Path(path).relative_to(Path(PACKAGE_DIR).parent).as_posix()}:{number}"


def profile_section(profile: Profile) -> list[str]:
    lines = [
        f"### {profile.label}",
        "",
        f"- busy samples: {profile.samples:,}; in reqtelemetry's own lines: {profile.ours:,} "
        f"(**{profile.share:.1%}**)",
        "- by function: "
        + (
            ", ".join(
                f"`{name}` {count / profile.samples:.1%}"
                for name, count in profile.functions.most_common(6)
            )
            or "none"
        ),
        "",
        "| line | samples | share | source |",
        "|---|---:|---:|---|",
    ]
    for (path, number, _name), count in profile.lines.most_common(TOP_LINES):
        lines.append(
            f"| {_where(path, number)} | {count:,} | {count / profile.samples:.1%} "
            f"| {_source(path, number)} |"
        )
    lines.append("")
    return lines


def find_py_spy() -> str | None:
    """py-spy on ``PATH``, or beside this interpreter (``make`` runs the venv's
    Python without putting the venv's ``bin`` on ``PATH``)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def run() -> str:
    began = time.monotonic()
    lines = ["## Where the time goes (py-spy)", ""]
    py_spy = find_py_spy()
    if py_spy is None:
        lines.append("- skipped: `py-spy` is not installed (it is in the bench extra)")
        return "\n".join(lines) + "\n"
    settings = QUICK if quick() else FULL
    profiles = [profile_loop(py_spy, kind, settings) for kind in ("asgi", "wsgi")]
    if not quick():
        profiles.append(profile_server(py_spy, settings))
    lines += [
        f"- mode: {'quick' if quick() else 'full'}; {time.monotonic() - began:.0f} s; "
        f"py-spy at {RATE} samples/s, each process its child",
        f"- in process: the overhead table's loops, {settings.loop_seconds:g} s each, only "
        "samples inside the timed loop; under the server: the throughput table's uvicorn app, "
        f"JSON route, {settings.server_seconds} s of load, import-time samples left out",
        "- share: samples whose innermost Python frame is a line of reqtelemetry (its own "
        "bytecode and the C functions it calls), of all samples taken while the process was "
        "busy; work a framework does only because a middleware is there is charged to the "
        "framework",
        "",
    ]
    for profile in profiles:
        lines += profile_section(profile)
    return "\n".join(lines) + "\n"


def _main(argv: list[str]) -> None:
    if len(argv) == 5 and argv[0] == "--loop":
        _loop_main(argv[1], float(argv[2]), int(argv[3]), Path(argv[4]))
        return
    print(run())


if __name__ == "__main__":
    _main(sys.argv[1:])
