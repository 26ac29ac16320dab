"""``make demo``: a collector and the three example apps under real servers, with traffic.

Starts ``reqtelemetry collector`` on a SQLite file in a temporary directory,
then the FastAPI example under uvicorn, the Flask example under gunicorn (two
workers) and the Django example under gunicorn (two workers), each on a free
loopback port and pointed at the collector. Drives mixed traffic at all three
for about 20 seconds (identifiers in paths, queries, headers, cookies and
bodies; scanners' 404s; a route that crashes; streamed exports; health checks,
which are not measured), stops the apps gracefully so that their final reports
go out, and prints what the collector received: deployments, instances,
versions, platforms, the busiest routes with p50/p95/p99 and error rates, and
whether any identifier from the traffic reached its database.

``--serve`` keeps everything running (with a trickle of traffic) for a person to
browse the dashboard, until Ctrl-C. Every child runs in its own process group
and is stopped on exit, Ctrl-C and SIGTERM included (a second Ctrl-C kills
what is left at once).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from examples.servers import (
    LAUNCHES,
    ChildFailed,
    Launch,
    ServerProcess,
    app_environment,
    interrupts_held,
    launch_app,
    launch_collector,
)

#: The collector's proof-of-work difficulty here; 20 bits is the production default.
DEMO_BITS = 12
APPS = ("fastapi-uvicorn", "flask-gunicorn", "django-gunicorn")
SHORT = {"fastapi": "FastAPI", "flask": "Flask", "django": "Django"}

Request = tuple[str, str, dict[str, Any], bool]  # method, path, httpx options, measured?


# -- identifying strings the traffic carries, none of which may be stored ---------------------


@dataclass(frozen=True)
class Canaries:
    user: str
    email: str
    token: str
    ip: str

    @classmethod
    def new(cls) -> Canaries:
        tag = uuid.uuid4().hex[:10]
        return cls(
            user=f"demo-user-{tag}",
            email=f"ada.{tag}@example.org",
            token=f"secret-token-{tag}",
            ip=f"203.0.113.{int(tag[:2], 16) % 250 + 1}",
        )

    def all(self) -> tuple[str, ...]:
        return (self.user, self.email, self.token, self.ip)

    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "Cookie": f"session={self.token}; email={self.email}",
            "X-Forwarded-For": self.ip,
            "User-Agent": f"demo-client/1.0 ({self.email})",
        }


# -- traffic: each app's mix, by weight ---------------------------------------------------------


def fastapi_request(rng: random.Random, c: Canaries) -> Request:
    pick = rng.random()
    if pick < 0.35:
        return "GET", f"/api/v1/items/{rng.randint(1, 60)}", {}, True  # 51-60: 404
    if pick < 0.45:
        return "GET", f"/api/v1/items/{rng.randint(1, 50)}/reviews/{rng.randint(1, 9)}", {}, True
    if pick < 0.55:
        user = rng.choice(["ada", "grace", "linus", c.user])
        return "GET", f"/api/v1/users/{user}", {}, True
    if pick < 0.67:
        return "GET", "/api/v1/search", {"params": {"q": c.email, "limit": 5}}, True
    if pick < 0.74:
        return "POST", "/api/v1/items", {"json": {"name": "lamp", "owner": c.email}}, True
    if pick < 0.80:
        return "GET", "/api/v1/export", {}, True
    if pick < 0.83:
        return "GET", "/api/v1/crash", {"headers": {"Connection": "close"}}, True
    if pick < 0.90:
        return "GET", f"/wp-admin/{c.user}.php", {}, True
    return "GET", "/healthz", {}, False


def flask_request(rng: random.Random, c: Canaries) -> Request:
    pick = rng.random()
    user = rng.choice(["ada", "grace", "linus", c.user])
    if pick < 0.35:
        return "GET", f"/api/users/{user}", {}, True
    if pick < 0.50:
        return "GET", f"/api/users/{user}/posts/{rng.randint(1, 99)}", {}, True
    if pick < 0.57:
        return "GET", f"/api/users/{user}/p/{rng.randint(1, 99)}", {}, True
    if pick < 0.69:
        return "GET", "/api/search", {"params": {"q": c.email}}, True
    if pick < 0.75:
        return "POST", "/api/users", {"json": {"email": c.email}}, True
    if pick < 0.81:
        return "GET", "/api/export", {}, True
    if pick < 0.84:
        return "GET", "/api/crash", {}, True
    if pick < 0.90:
        return "GET", f"/.env.{c.user}", {}, True
    return "GET", "/healthz", {}, False


def django_request(rng: random.Random, c: Canaries) -> Request:
    pick = rng.random()
    if pick < 0.30:
        return "GET", f"/api/orders/{rng.randint(1, 36)}/", {}, True  # 31-36: 404
    if pick < 0.42:
        return "GET", f"/api/orders/{rng.randint(1, 30)}/lines/{rng.randint(1, 5)}/", {}, True
    if pick < 0.50:
        return "POST", "/api/orders/", {"json": {"email": c.email, "items": [1, 2]}}, True
    if pick < 0.58:
        handle = rng.choice(["ada", "grace", c.user])
        return "GET", f"/api/customers/{handle}/", {}, True
    if pick < 0.70:
        return "GET", "/api/search/", {"params": {"q": c.email}}, True
    if pick < 0.77:
        return "GET", "/api/export/", {}, True
    if pick < 0.80:
        return "GET", "/api/crash/", {}, True
    if pick < 0.88:
        return "GET", f"/{c.user}/wp-login.php", {}, True
    return "GET", "/healthz", {}, False


TRAFFIC: dict[str, Callable[[random.Random, Canaries], Request]] = {
    "fastapi": fastapi_request,
    "flask": flask_request,
    "django": django_request,
}


@dataclass
class Driver:
    """Threads sending one app's mix until told to stop; counts what was measured."""

    name: str
    url: str
    pick: Callable[[random.Random, Canaries], Request]
    canaries: Canaries
    measured: int = 0
    excluded: int = 0
    failed: int = 0
    pause: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, stop: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        headers = self.canaries.headers()
        with httpx.Client(base_url=self.url, trust_env=False, timeout=10.0) as client:
            while not stop.is_set():
                method, path, options, counted = self.pick(rng, self.canaries)
                options = dict(options)
                options["headers"] = {**headers, **options.get("headers", {})}
                try:
                    client.request(method, path, **options).read()
                except httpx.HTTPError:
                    with self._lock:
                        self.failed += 1
                    continue
                with self._lock:
                    if counted:
                        self.measured += 1
                    else:
                        self.excluded += 1
                if self.pause:
                    stop.wait(self.pause)


@contextlib.contextmanager
def driving(drivers: list[Driver], threads_per_app: int = 2) -> Iterator[threading.Event]:
    stop = threading.Event()
    threads = [
        threading.Thread(target=driver.run, args=(stop, index * 10 + n), daemon=True)
        for index, driver in enumerate(drivers)
        for n in range(threads_per_app)
    ]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)


def progress(drivers: list[Driver], seconds: float) -> None:
    """A progress bar on a terminal; a line every 5 s otherwise.

    The counts are the measured requests only, as the summary's "sent" is:
    with the health checks added, they summed to some 10 % more than the
    summary said was sent, and no app's count matched its routes' calls.
    """
    live = sys.stdout.isatty()
    started = time.monotonic()
    next_line = 5.0
    while True:
        elapsed = min(time.monotonic() - started, seconds)
        counts = "   ".join(f"{d.name} {d.measured:>6,}" for d in drivers)
        bar = "#" * int(30 * elapsed / seconds)
        if live:
            print(f"\r  [{bar:<30}] {elapsed:4.1f} s   {counts}", end="", flush=True)
        elif elapsed >= next_line or elapsed >= seconds:
            print(f"  [{bar:<30}] {elapsed:4.1f} s   {counts}", flush=True)
            next_line += 5.0
        if elapsed >= seconds:
            break
        time.sleep(0.2)
    if live:
        print()


# -- the summary ----------------------------------------------------------------------------------


def fetch_summary(collector: ServerProcess, token: str) -> dict[str, Any]:
    response = httpx.get(
        f"{collector.url}/api/summary",
        params={"days": 1},
        headers={"Authorization": f"Bearer {token}"},
        trust_env=False,
        timeout=30.0,
    )
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f}"


def print_summary(
    summary: dict[str, Any], launches: list[Launch], sent: int, per_app: int = 10
) -> None:
    totals = summary["totals"]
    by_version = {launch.app_version: launch for launch in launches}
    print(
        f"  {totals['deployments']} deployments, {totals['instances']} instances, "
        f"{totals['reports']} reports; {totals['requests']:,} requests counted "
        f"({sent:,} sent, health checks excluded); "
        f"{totals['error_rate'] * 100:.1f} % server errors\n"
    )
    print(f"  {'app':<10}{'version':<10}{'served by':<44}{'deployments':>12}{'instances':>11}")
    order = {launch.app_version: index for index, launch in enumerate(launches)}
    for row in sorted(summary["versions"], key=lambda row: order.get(row["app_version"], 99)):
        launch = by_version.get(row["app_version"])
        app = SHORT[launch.example] if launch else "?"
        where = launch.label if launch else "?"
        print(
            f"  {app:<10}{row['app_version'] or '?':<10}{where:<44}"
            f"{row['deployments']:>12}{row['instances']:>11}"
        )
    print()
    print(f"  {'platform':<44}{'framework':<12}{'instances':>9}")
    for row in summary["platforms"]:
        platform = f"{row['os']}/{row['arch']}, Python {row['python_version']}"
        print(f"  {platform:<44}{row['framework'] or '?':<12}{row['instances']:>9}")
    print()
    print(
        f"  {'routes, by app and calls':<50}{'calls':>7}{'p50 ms':>8}{'p95 ms':>8}"
        f"{'p99 ms':>8}{'5xx':>7}{'bytes out':>11}"
    )
    for launch in launches:
        rows = [
            row
            for row in summary["endpoints_by_version"]
            if row["app_version"] == launch.app_version and row["calls"]
        ]
        print(f"  {SHORT[launch.example]} {launch.app_version}")
        for row in rows[:per_app]:
            route = f"{row['method']} {row['route']}"
            if len(route) > 47:
                route = route[:46] + "~"
            errors = f"{(row['error_rate'] or 0) * 100:.0f} %"
            print(
                f"    {route:<48}{row['calls']:>7,}{ms(row['p50']):>8}{ms(row['p95']):>8}"
                f"{ms(row['p99']):>8}{errors:>7}{row['response_bytes']:>11,}"
            )
        if len(rows) > per_app:
            rest = sum(row["calls"] for row in rows[per_app:])
            print(f"    ... and {len(rows) - per_app} more routes ({rest:,} calls)")


def wait_until_counted(collector: ServerProcess, token: str, sent: int, timeout: float) -> None:
    """Until the collector has counted every measured request (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fetch_summary(collector, token)["totals"]["requests"] >= sent:
            return
        time.sleep(0.5)


def database_leaks(db_path: Path, canaries: Canaries) -> list[str]:
    data = b"".join(
        Path(f"{db_path}{suffix}").read_bytes()
        for suffix in ("", "-wal", "-shm")
        if Path(f"{db_path}{suffix}").exists()
    )
    return [canary for canary in canaries.all() if canary.encode() in data]


# -- running it all -------------------------------------------------------------------------------


class Children:
    """Every child started, stopped in reverse order at the end, whatever happens."""

    def __init__(self) -> None:
        self.processes: list[ServerProcess] = []

    def launch(self, start: Callable[[], ServerProcess]) -> ServerProcess:
        """Start a child with ``start()`` and register it, interrupts held in between.

        Why held: a Ctrl-C or SIGTERM between the child's ``Popen`` and its
        registration left a server running that nobody stopped.
        """
        with interrupts_held():
            process = start()
            self.processes.append(process)
        return process

    def kill_all(self, *_: object) -> None:
        for process in self.processes:
            process.kill()

    def left_behind(self) -> list[int]:
        """Process groups of ours that still have a member (none, after stopping)."""
        alive = []
        for process in self.processes:
            if process.process is not None:
                try:
                    os.killpg(process.process.pid, 0)
                except ProcessLookupError:
                    continue
                except PermissionError:
                    pass
                alive.append(process.process.pid)
        return alive

    def stop_all(self) -> None:
        # A second Ctrl-C while stopping: kill whatever is left, now.
        previous = signal.signal(signal.SIGINT, self.kill_all)
        try:
            for process in reversed(self.processes):
                try:
                    process.stop(timeout=20)
                except ChildFailed:
                    process.kill()
        finally:
            self.kill_all()
            signal.signal(signal.SIGINT, previous)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM to the demo: clean up as for Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--serve", action="store_true", help="keep everything up until Ctrl-C")
    parser.add_argument("--seconds", type=float, default=20.0, help="traffic duration (20)")
    parser.add_argument(
        "--flush-interval", type=float, default=5.0, help="the apps' report interval in s (5)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="reqtelemetry-demo-"))
    children = Children()
    atexit.register(children.kill_all)  # the last resort, whatever happened
    try:
        return run(args, workdir, children)
    except KeyboardInterrupt:
        print("\n  interrupted: stopping everything ...", flush=True)
        return 130
    except ChildFailed as error:
        print(f"\n  demo failed: {error}", file=sys.stderr)
        return 1
    finally:
        try:
            children.stop_all()
        except KeyboardInterrupt:  # Ctrl-C again before stop_all took it over
            children.kill_all()
        if args.keep:
            print(f"  files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path, children: Children) -> int:
    began = time.monotonic()
    token = f"demo-{secrets.token_urlsafe(9)}"
    db_path = workdir / "collector.db"
    print("reqtelemetry demo: a collector and the three example apps under real servers\n")
    collector = children.launch(
        lambda: launch_collector(
            f"sqlite:///{db_path}",
            workdir,
            bits=DEMO_BITS,
            secret=secrets.token_hex(32),
            dashboard_token=token,
        )
    )
    collector.wait_ready()
    dashboard = f"{collector.url}/?token={token}"
    print(f"  collector   {collector.url}   SQLite in {workdir}")
    print(
        f"              {DEMO_BITS}-bit proof of work per report, to keep the demo quick\n"
        "              (the default, 20 bits, costs a client about a third of a second\n"
        "              of CPU per report)"
    )

    launches = [LAUNCHES[name] for name in APPS]
    apps: list[ServerProcess] = []
    for launch in launches:
        env = app_environment(
            collector.url, workdir / launch.name / "deployment_id", args.flush_interval
        )
        apps.append(children.launch(functools.partial(launch_app, launch, env, workdir)))
    for launch, app in zip(launches, apps, strict=True):
        app.wait_ready()
        noun = "instance" if launch.instances == 1 else "instances"
        print(f"  {launch.label:<44}{app.url}   {launch.instances} {noun}")
    print(
        f"  each app reports every {args.flush_interval:g} s "
        f"(REQTELEMETRY_FLUSH_INTERVAL) and once more when it stops"
    )
    print(f"  dashboard   {dashboard}\n")

    canaries = Canaries.new()
    drivers = [
        Driver(SHORT[launch.example], app.url, TRAFFIC[launch.example], canaries)
        for launch, app in zip(launches, apps, strict=True)
    ]
    print(
        f"Driving mixed traffic for {args.seconds:g} s: ids, e-mail addresses and tokens in "
        "paths, queries, headers and bodies;\nscanners' 404s, crashes, streamed exports, "
        "health checks (not measured)"
    )
    with driving(drivers):
        progress(drivers, args.seconds)
    sent = sum(driver.measured for driver in drivers)
    failed = sum(driver.failed for driver in drivers)
    if failed:
        print(f"  ({failed} requests got no answer)")

    if args.serve:
        print("\nWaiting for the next periodic reports ...", flush=True)
        wait_until_counted(collector, token, sent, timeout=3 * args.flush_interval + 5)
    else:
        print("\nStopping the apps gracefully, so that their final reports go out ...", end="")
        stopping = time.monotonic()
        for app in apps:
            app.stop(timeout=30)
        print(f" done in {time.monotonic() - stopping:.1f} s")

    print("\nWhat the collector received\n")
    print_summary(fetch_summary(collector, token), launches, sent)

    if args.serve:
        print(f"\nServing until Ctrl-C. Dashboard: {dashboard}")
        for launch, app in zip(launches, apps, strict=True):
            print(f"  {launch.label:<44}{app.url}")
        for driver in drivers:
            driver.pause = 0.5  # a trickle, so that the dashboard keeps moving
        with driving(drivers, threads_per_app=1) as stop:
            stop.wait()  # until Ctrl-C (KeyboardInterrupt) or SIGTERM
        return 0

    collector.stop()  # closes (and checkpoints) the database
    leaks = database_leaks(db_path, canaries)
    print(
        "\n  identifiers sent in the traffic found in the collector's database: "
        f"{', '.join(leaks) if leaks else 'none'} (searched: {', '.join(canaries.all())})"
    )
    print(
        f"  dashboard while it ran: {dashboard}\n"
        "  to browse it: make demo ARGS=--serve (Ctrl-C stops everything)"
    )
    children.stop_all()
    left = children.left_behind()
    print(
        f"\nDemo finished in {time.monotonic() - began:.0f} s; "
        + (f"process groups still alive: {left}" if left else "every process it started is gone.")
    )
    return 1 if leaks or left else 0


if __name__ == "__main__":
    sys.exit(main())
