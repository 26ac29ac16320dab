"""The ``reqtelemetry`` command.

``reqtelemetry inspect`` shows an operator, before anything is sent, the exact
report this environment would produce: the configuration comes from the same
``REQTELEMETRY_*`` / opt-out variables the app reads, and a few sample requests
(with identifiers in their paths, to show they do not survive) fill the batch.

``reqtelemetry collector`` runs the receiving service (uvicorn), and
``reqtelemetry export --csv`` writes its per-endpoint report. Both import the
collector only when run: its dependencies are the ``collector`` extra, which a
client app does not install.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from ._version import __version__
from .config import Config, redacted_url
from .payload import Envelope, build_reports
from .telemetry import UNMATCHED_ROUTE, Telemetry

#: What ``inspect`` feeds the recorder: a templated route, an anonymized path
#: of an app without routing, and a scanner's 404.
SAMPLE_REQUESTS = (
    ("GET", "/items/{item_id}", 200, 0.012, 0, 512),
    ("GET", "/items/{item_id}", 200, 0.018, 0, 498),
    ("POST", "/items", 201, 0.034, 230, 64),
    ("GET", "/items/{item_id}", 404, 0.004, 0, 22),
)
#: Stands in for the deployment id, which ``inspect`` neither reads nor creates;
#: a real UUID shape (the nil UUID), so that the sample is valid against the schema.
SAMPLE_DEPLOYMENT_ID = "00000000-0000-0000-0000-000000000000"


def inspect_payload(config: Config) -> dict | None:
    """The report ``config`` would send with sample traffic; None when opted out."""
    if config.opt_out:
        return None
    # Never send from here, whatever the environment says.
    quiet = replace(config, endpoint=None, debug=False)
    telemetry = Telemetry(config=quiet)
    for method, route, status, duration, request_bytes, response_bytes in SAMPLE_REQUESTS:
        telemetry.record(method, route, status, duration, request_bytes, response_bytes)
    raw = telemetry.route_for_unrouted("/users/alice@example.org/orders/4711", matched=True)
    telemetry.record("GET", raw, 200, 0.007, 0, 120)
    telemetry.record("GET", UNMATCHED_ROUTE, 404, 0.001, 0, 9)
    traits, withheld = telemetry.traits.current()
    envelope = Envelope(
        kind="periodic",
        sequence=0,
        deployment_id=SAMPLE_DEPLOYMENT_ID,
        instance_id=telemetry.instance_id,
        traits=traits,
        withheld=withheld,
        metrics={"counters": {"feature.example": 3}, "gauges": {}},
    )
    report = build_reports(
        envelope, telemetry.recorder.collect(), config.max_payload_bytes, paced=False
    )[0]
    return json.loads(report.body)


def _inspect(args: argparse.Namespace) -> int:
    config = Config.resolve()
    payload = inspect_payload(config)
    if payload is None:
        print(f"Telemetry is off ({config.opt_out_reason}): nothing would be sent.")
        return 0
    destination = (
        redacted_url(config.endpoint)
        if config.endpoint
        else "nowhere (no endpoint configured: nothing is sent)"
    )
    print(
        f"# reqtelemetry {__version__}: this environment would report to {destination}",
        file=sys.stderr,
    )
    print(
        "# sample report (the records come from made-up requests; deployment_id is a "
        "placeholder for the random id kept on disk):",
        file=sys.stderr,
    )
    print(json.dumps(payload, indent=2 if not args.compact else None))
    return 0


def _collector(args: argparse.Namespace) -> int:
    from .collector.settings import CollectorSettings, SettingsError

    # Before resolving: the settings log what a development run costs.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = CollectorSettings.resolve(
            production=True if args.production else None,
            db_url=args.db,
            bits=args.bits,
            dashboard_public=True if args.public_dashboard else None,
        )
    except SettingsError as error:
        print(f"reqtelemetry collector: error: {error}", file=sys.stderr)
        return 2

    import uvicorn

    from .collector.app import create_app

    try:
        app = create_app(settings)
    except ValueError as error:  # an unusable --db URL
        print(f"reqtelemetry collector: error: {error}", file=sys.stderr)
        return 2
    mode = "production" if settings.production else "development"
    print(
        f"# reqtelemetry collector {__version__} ({mode}, {settings.bits}-bit stamps) "
        f"on http://{args.host}:{args.port}/",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        # Access logs would record the senders' IP addresses, which reqtelemetry
        # promises not to collect (and the dashboard's ?token=): off unless asked.
        access_log=args.access_log,
        log_config=None,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from .collector.export import endpoint_rows, since_days, write_csv
    from .collector.storage import open_storage

    if args.days < 1:
        print("reqtelemetry export: error: --days must be at least 1", file=sys.stderr)
        return 2
    try:
        storage = open_storage(args.db)
    except ValueError as error:
        print(f"reqtelemetry export: error: {error}", file=sys.stderr)
        return 2
    try:
        storage.migrate()
        rows = endpoint_rows(storage, since_days(args.days))
    finally:
        storage.close()
    if args.output in (None, "-"):
        write_csv(rows, sys.stdout)
    else:
        with open(args.output, "w", encoding="utf-8", newline="") as out:
            write_csv(rows, out)
        print(f"# {len(rows)} rows written to {args.output}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reqtelemetry", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"reqtelemetry {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="print the report this environment would send")
    inspect.add_argument("--compact", action="store_true", help="one line of JSON")
    inspect.set_defaults(handler=_inspect)

    default_db = os.environ.get("REQTELEMETRY_COLLECTOR_DB") or "sqlite:///telemetry.db"
    collector = commands.add_parser(
        "collector",
        help="run the collector (reports in, dashboard and CSV out)",
        description="Run the collector. Configuration: REQTELEMETRY_COLLECTOR_* and "
        "REQTELEMETRY_DASHBOARD_* variables (see docs); flags here take precedence.",
    )
    collector.add_argument("--db", default=None, help=f"storage URL (default {default_db})")
    collector.add_argument("--host", default="127.0.0.1", help="address to listen on")
    collector.add_argument("--port", type=int, default=8600, help="port to listen on")
    collector.add_argument(
        "--production",
        action="store_true",
        help="refuse to start without REQTELEMETRY_COLLECTOR_SECRET and dashboard credentials "
        "(also REQTELEMETRY_COLLECTOR_PRODUCTION=1)",
    )
    collector.add_argument(
        "--bits", type=int, default=None, help="proof-of-work difficulty of stamps (default 20)"
    )
    collector.add_argument(
        "--public-dashboard",
        action="store_true",
        help="serve the dashboard without credentials, even in production",
    )
    collector.add_argument(
        "--access-log", action="store_true", help="log each request (with client addresses)"
    )
    collector.add_argument(
        "--proxy-headers",
        action="store_true",
        help="trust X-Forwarded-* from --forwarded-allow-ips (behind a reverse proxy)",
    )
    collector.add_argument("--forwarded-allow-ips", default="127.0.0.1")
    collector.set_defaults(handler=_collector)

    export = commands.add_parser("export", help="write the per-endpoint report")
    export.add_argument("--db", default=default_db, help=f"storage URL (default {default_db})")
    export.add_argument("--csv", action="store_true", required=True, help="CSV (the format)")
    export.add_argument("--days", type=int, default=30, help="the last N days (default 30)")
    export.add_argument("-o", "--output", default=None, help="file to write (default stdout)")
    export.set_defaults(handler=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
