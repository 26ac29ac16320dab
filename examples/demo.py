"""``make demo``: the example apps under real servers, real traffic, the aggregates.

Starts the FastAPI example under uvicorn and the Flask example under Werkzeug's
server, each on a free loopback port, drives a known mix of requests through
them with httpx (identifiers in paths and queries, a scanner's 404s, a route
that crashes, a streamed export, health checks that are excluded), then prints
what each app's telemetry aggregated and checks that none of the identifiers
sent made it into the report that would leave the process.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

from reqtelemetry import Telemetry
from reqtelemetry.payload import Envelope, build_reports

CANARIES = ("canary-user-8c1f", "4711", "ada@example.org")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def uvicorn_server(app: object) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


@contextmanager
def werkzeug_server(app: object) -> Iterator[str]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", free_port(), app, threaded=True)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


def fastapi_traffic(rng: random.Random) -> tuple[str, str, dict]:
    choice = rng.random()
    if choice < 0.45:
        return "GET", f"/api/v1/items/{rng.randint(1, 60)}", {}
    if choice < 0.55:
        return "GET", f"/api/v1/items/{rng.randint(1, 50)}/reviews/4711", {}
    if choice < 0.70:
        return "GET", "/api/v1/search", {"params": {"q": CANARIES[0], "limit": 5}}
    if choice < 0.78:
        return "POST", "/api/v1/items", {"json": {"name": CANARIES[2]}}
    if choice < 0.84:
        return "GET", "/api/v1/export", {}
    if choice < 0.88:
        # uvicorn closes the connection after an app error: do not reuse it.
        return "GET", "/api/v1/crash", {"headers": {"Connection": "close"}}
    if choice < 0.94:
        return "GET", f"/wp-admin/{CANARIES[0]}.php", {}
    return "GET", "/healthz", {}


def flask_traffic(rng: random.Random) -> tuple[str, str, dict]:
    choice = rng.random()
    name = rng.choice(["ada", "grace", "linus", CANARIES[0]])
    if choice < 0.40:
        return "GET", f"/api/users/{name}", {}
    if choice < 0.55:
        return "GET", f"/api/users/{name}/posts/4711", {}
    if choice < 0.62:
        return "GET", f"/api/users/{name}/p/4711", {}
    if choice < 0.75:
        return "GET", "/api/search", {"params": {"q": CANARIES[2]}}
    if choice < 0.82:
        return "POST", "/api/users", {"json": {"email": CANARIES[2]}}
    if choice < 0.87:
        return "GET", "/api/export", {}
    if choice < 0.90:
        return "GET", "/api/crash", {}
    if choice < 0.96:
        return "GET", f"/.env.{CANARIES[0]}", {}
    return "GET", "/healthz", {}


def drive(
    base_url: str, pick: Callable[[random.Random], tuple[str, str, dict]], requests: int, label: str
) -> int:
    rng = random.Random(label)
    sent = 0
    live = sys.stdout.isatty()
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for index in range(requests):
            method, path, options = pick(rng)
            client.request(method, path, **options).read()
            sent += 1
            if live and (index % 20 == 0 or index == requests - 1):
                done = (index + 1) / requests
                bar = "#" * int(done * 30)
                print(f"\r  {label:<8} [{bar:<30}] {index + 1}/{requests}", end="", flush=True)
    print(f"\r  {label:<8} [{'#' * 30}] {sent}/{requests} requests sent")
    return sent


def summary_table(telemetry: Telemetry) -> str:
    records = sorted(telemetry.snapshot(), key=lambda r: (-r["count"], r["route"]))
    lines = [
        f"  {'method':<7}{'route':<40}{'status':>6}{'count':>7}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'p99 ms':>9}{'resp bytes':>12}"
    ]
    for record in records:
        latency = record["latency"]
        lines.append(
            f"  {record['method']:<7}{record['route'][:39]:<40}{record['status']:>6}"
            f"{record['count']:>7}{latency['p50'] * 1e3:>9.2f}{latency['p95'] * 1e3:>9.2f}"
            f"{latency['p99'] * 1e3:>9.2f}{record['response_bytes']:>12}"
        )
    return "\n".join(lines)


def would_send(telemetry: Telemetry) -> bytes:
    """The report body this telemetry would send now (without resetting anything)."""
    from reqtelemetry.recorder import Batch

    now = time.time()
    batch = Batch.from_records(
        telemetry.snapshot(),
        dropped=telemetry.recorder.dropped,
        period_start=telemetry.started_at,
        period_end=now,
    )
    traits, withheld = telemetry.traits.current()
    envelope = Envelope(
        kind="periodic",
        sequence=0,
        deployment_id="(demo)",
        instance_id=telemetry.instance_id,
        traits=traits,
        withheld=withheld,
        metrics=telemetry.metrics.collect(),
    )
    return b"".join(r.body for r in build_reports(envelope, batch, 1 << 20))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per app")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("reqtelemetry").setLevel(logging.ERROR)
    # The example routes that crash on purpose would fill the screen with tracebacks.
    for name in ("examples.flask_app.app", "werkzeug", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    from examples.fastapi_app.app import app as fastapi_app
    from examples.fastapi_app.app import telemetry as fastapi_telemetry
    from examples.flask_app.app import app as flask_app
    from examples.flask_app.app import telemetry as flask_telemetry

    print("reqtelemetry demo: two instrumented apps under real servers on loopback\n")
    with uvicorn_server(fastapi_app) as fastapi_url, werkzeug_server(flask_app) as flask_url:
        print(f"  FastAPI under uvicorn at {fastapi_url}; Flask under Werkzeug at {flask_url}")
        drive(fastapi_url, fastapi_traffic, args.requests, "fastapi")
        drive(flask_url, flask_traffic, args.requests, "flask")

    leaked = []
    for name, telemetry in (("FastAPI", fastapi_telemetry), ("Flask", flask_telemetry)):
        total = sum(record["count"] for record in telemetry.snapshot())
        print(
            f"\n{name}: {total} requests aggregated into {len(telemetry.snapshot())} keys "
            "(health checks excluded)"
        )
        print(summary_table(telemetry))
        body = would_send(telemetry)
        found = [canary for canary in CANARIES if canary.encode() in body]
        leaked.extend(found)
        print(
            f"  report that would be sent: {len(body)} bytes of JSON; identifiers sent in "
            f"the traffic found in it: {found or 'none'}"
        )
        sample = json.loads(body)["traits"]
        print(
            f"  traits: {sample['os']}/{sample['arch']}, Python {sample['python_version']}, "
            f"{sample['framework']} {sample['framework_version']}, app "
            f"{sample['app_name']} {sample['app_version']}"
        )
    print(
        "\nNothing was sent anywhere: the examples have no endpoint configured "
        "(set TELEMETRY_ENDPOINT to point them at a collector)."
    )
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
