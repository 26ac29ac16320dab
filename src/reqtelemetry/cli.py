"""The ``reqtelemetry`` command.

``reqtelemetry inspect`` shows an operator, before anything is sent, the exact
report this environment would produce: the configuration comes from the same
``REQTELEMETRY_*`` / opt-out variables the app reads, and a few sample requests
(with identifiers in their paths, to show they do not survive) fill the batch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace

from ._version import __version__
from .config import Config
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
    report = build_reports(envelope, telemetry.recorder.collect(), config.max_payload_bytes)[0]
    return json.loads(report.body)


def _inspect(args: argparse.Namespace) -> int:
    config = Config.resolve()
    payload = inspect_payload(config)
    if payload is None:
        print(f"Telemetry is off ({config.opt_out_reason}): nothing would be sent.")
        return 0
    destination = config.endpoint or "nowhere (no endpoint configured: nothing is sent)"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reqtelemetry", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"reqtelemetry {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="print the report this environment would send")
    inspect.add_argument("--compact", action="store_true", help="one line of JSON")
    inspect.set_defaults(handler=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
