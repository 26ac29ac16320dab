"""Instructions per request inside a real uvicorn server: what the throughput table pays for.

Why: reqtelemetry costs about 3 µs per request in the in-process table and
about 7 µs of server CPU in the throughput table. Counting the instructions
the whole server process executes per request, bare and with reqtelemetry,
tells a middleware that does more work under a real server apart from the
same work running slower there (colder caches between requests).

The throughput table's uvicorn app (``benchmarks.throughput:asgi_app``, the
contender chosen by ``BENCH_THROUGHPUT_CONTENDER``) runs under
``valgrind --tool=cachegrind --cache-sim=no``; one keep-alive connection sends
``GET /items/42`` (the JSON route), first ``WARMUP`` requests, then ``LOW`` in
one server and ``HIGH`` in a second one; the difference of the two totals over
``HIGH - LOW`` requests is one request's count, start-up and shut-down
cancelled out. The servers run one per core.

About 20 s. Run alone with ``python -m benchmarks server_instructions``;
``BENCH_QUICK=1`` counts fewer requests. Skipped, with a note, where
``valgrind`` is not installed.
"""

from __future__ import annotations

import http.client
import shutil
import signal
import subprocess
import time
from typing import Any

from benchmarks import ROOT, quick
from benchmarks.instructions import _REFS, Counts, counted_environment, counted_per_request
from benchmarks.throughput import CONTENDER_ENV, _free_port, server_command

CONTENDERS = ("bare", "reqtelemetry")
PATH = "/items/42"
WARMUP = 300


def counts() -> Counts:
    """Request counts whose difference is a multiple of the recorder's queue limit (see
    :func:`benchmarks.instructions.counts`)."""
    return Counts(low=256, high=512) if quick() else Counts(low=512, high=2048)


def _wait_until_serving(port: int, process: subprocess.Popen[Any], timeout: float) -> None:
    """Until the server on ``port`` answers; ``process`` runs it (its stderr, if piped, is
    shown when it exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.communicate()[1] or ""
            raise RuntimeError(f"the server exited early:\n{stderr[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", PATH)
            connection.getresponse().read()
            connection.close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {timeout:.0f} s")


def server_environment(contender: str) -> dict[str, str]:
    """The counted server's environment, the contender's name padded to one width.

    Why padded: the environment's size shifts where the interpreter puts its
    objects (see :func:`benchmarks.instructions.child_arguments`), and "bare"
    is eight characters shorter than "reqtelemetry"; the server strips the padding.
    """
    width = max(map(len, CONTENDERS))
    return counted_environment(**{CONTENDER_ENV: contender.ljust(width)})


def count_server(valgrind: str, contender: str, requests: int) -> int:
    """Instructions the server process executed for start-up, warm-up, ``requests`` and exit."""
    port = _free_port()
    command = [
        valgrind,
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        *server_command("uvicorn", port),
    ]
    env = server_environment(contender)
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_until_serving(port, process, timeout=120)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(WARMUP + requests):
            connection.request("GET", PATH)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{contender}: GET {PATH} answered {response.status}")
        connection.close()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    found = _REFS.search(stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from cachegrind:\n{stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_request(valgrind: str, plan: Counts) -> dict[str, float]:
    """Instructions per request of the server process, bare and with reqtelemetry."""
    return counted_per_request(
        CONTENDERS, plan, lambda contender, requests: count_server(valgrind, contender, requests)
    )


def run() -> str:
    began = time.monotonic()
    lines = ["## Instructions per request inside uvicorn (cachegrind)", ""]
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        lines.append("- skipped: `valgrind` is not installed (`apt install valgrind`)")
        return "\n".join(lines) + "\n"
    plan = counts()
    measured = per_request(valgrind, plan)
    bare, enabled = measured["bare"], measured["reqtelemetry"]
    lines += [
        f"- mode: {'quick' if quick() else 'full'}; {time.monotonic() - began:.0f} s",
        "- the throughput table's uvicorn app and JSON route under `valgrind --tool=cachegrind "
        f"--cache-sim=no`; one keep-alive connection, {WARMUP} warm-up requests, then "
        f"{plan.low} and, in a second server, {plan.high}; per request: the difference of the "
        f"two totals over {plan.high - plan.low} requests",
        "",
        "| server process | instructions/request | over bare | ratio vs bare |",
        "|---|---:|---:|---:|",
        f"| uvicorn + Starlette, bare | {bare:,.0f} | — | — |",
        f"| uvicorn + Starlette + reqtelemetry | {enabled:,.0f} | {enabled - bare:+,.0f} "
        f"| {enabled / bare:.3f}x |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
