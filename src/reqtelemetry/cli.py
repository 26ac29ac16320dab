"""The ``reqtelemetry`` command.

``reqtelemetry inspect`` shows an operator, before anything is sent, the
report this environment would produce: the configuration comes from the same
``REQTELEMETRY_*`` / opt-out variables the app reads, and a few sample requests
(with identifiers in their paths, to show they do not survive) fill the batch.
It cannot read the options the app passes in its code, nor what the app learns
as it serves: ``REQTELEMETRY_DEBUG=1`` prints the app's own reports.

``reqtelemetry collector`` runs the receiving service (uvicorn),
``reqtelemetry export --csv`` writes its per-endpoint report, and
``reqtelemetry prune`` deletes reports past a retention. They import the
collector only when run: its dependencies are the ``collector`` extra, which a
client app does not install.

An operator's mistake (a bad variable, a database that cannot be reached or
opened, a file that cannot be written, a missing extra) ends with one line on
stderr that says what to fix, and exit status 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import replace
from typing import Any

from ._version import __version__
from .config import Config, redacted_url
from .payload import UNPACED, Envelope, build_reports
from .telemetry import UNMATCHED_ROUTE, Telemetry

DESCRIPTION = (
    "Privacy-first usage telemetry: show what this environment would send (inspect), "
    "run the collector that receives reports (collector), export its per-endpoint "
    "report (export), and delete reports past a retention (prune)."
)
COLLECTOR_EXTRA_HINT = "install the collector extra: pip install 'reqtelemetry[collector]'"

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


def inspect_payload(config: Config) -> dict[str, Any] | None:
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
        envelope, telemetry.recorder.collect(), config.max_payload_bytes, pacing=UNPACED
    )[0]
    payload: dict[str, Any] = json.loads(report.body)
    return payload


def _fail(command: str, message: str) -> int:
    """One line on stderr, exit status 2: the operator's mistake, not a bug."""
    print(f"reqtelemetry {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _missing_extra(command: str, error: ImportError) -> int:
    missing = error.name or str(error)
    return _fail(
        command,
        f"the collector's dependencies are not installed ({missing}): {COLLECTOR_EXTRA_HINT}",
    )


def _database_failure(command: str, url: str, error: BaseException) -> int:
    """The line for a database that cannot be used: the URL and the driver's
    reason, both without the password (libpq quotes what it cannot parse)."""
    from .collector.storage import describe_database, mask_passwords

    reason = mask_passwords(str(error), url) or type(error).__name__
    return _fail(command, f"cannot use the database {describe_database(url)}: {reason}")


def _is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _unusable_address(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on now, or None.

    Tried before the database is opened and migrated: uvicorn finds out only
    after, and says so in its own words with exit status 3, while every other
    mistake at start is one line and status 2. Bound as uvicorn's event loop
    binds (``loop.create_server``): every address the host resolves to, with
    ``SO_REUSEADDR``, and IPv6 sockets IPv6-only (so that ``::`` does not
    collide with an IPv4 listener); all held until the last is bound, then let
    go. Should another process take the port in between, uvicorn's own error
    still says so.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        with contextlib.ExitStack() as probes:
            for family, kind, protocol, _, address in dict.fromkeys(infos):
                probe = probes.enter_context(socket.socket(family, kind, protocol))
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
    except OSError as error:
        return f"cannot listen on {host}:{port}: {error.strerror or error}"
    return None


def _port(text: str) -> int:
    """A port number as argparse reads it; its range is checked by the command,
    so that a port out of range is one line like every other start-up check."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None


def _inspect(args: argparse.Namespace) -> int:
    try:
        config = Config.resolve()
    except ValueError as error:  # a malformed REQTELEMETRY_* variable
        return _fail("inspect", str(error))
    payload = inspect_payload(config)
    if payload is None:
        print(f"Telemetry is off ({config.opt_out_reason}): nothing would be sent.")
        return 0
    if config.debug:  # what Telemetry does then, whatever the endpoint
        destination = "stderr (REQTELEMETRY_DEBUG: each report is printed, nothing is sent)"
    elif config.endpoint:
        destination = redacted_url(config.endpoint)
    else:
        destination = (
            "nowhere from the environment alone (REQTELEMETRY_ENDPOINT is not set; an "
            "endpoint the app sets in its code still applies)"
        )
    print(
        f"# reqtelemetry {__version__}: this environment would report to {destination}",
        file=sys.stderr,
    )
    print(
        "# not known here: what the app sets in its code (endpoint, app_name, app_version, "
        "withheld traits) or learns as it serves (framework, server); REQTELEMETRY_DEBUG=1 "
        "prints the reports the app itself makes, instead of sending them",
        file=sys.stderr,
    )
    print(
        "# sample report (the records come from made-up requests; deployment_id is a "
        "placeholder for the random id kept on disk):",
        file=sys.stderr,
    )
    print(json.dumps(payload, indent=2 if not args.compact else None))
    return 0


@contextlib.contextmanager
def _held_logs(name: str) -> Iterator[list[logging.LogRecord]]:
    """The records of logger ``name`` (and below) kept back instead of shown.

    Why: a development run's settings warn (no secret, an open dashboard)
    before the start-up checks run, and a refused start printed those two
    lines before its one error line. The caller shows them once it starts.
    """
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(name)
    keep, propagate = Keep(), logger.propagate
    logger.addHandler(keep)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(keep)
        logger.propagate = propagate


def _collector_app(args: argparse.Namespace) -> Any:
    """The collector's app and what serving it needs, once every start-up check
    passed; else the exit status of the one line that says why not."""
    from .collector.settings import (
        ENV_DASHBOARD_BASIC,
        ENV_DASHBOARD_TOKEN,
        CollectorSettings,
        SettingsError,
    )

    try:
        settings = CollectorSettings.resolve(
            production=True if args.production else None,
            db_url=args.db,
            bits=args.bits,
            dashboard_public=True if args.public_dashboard else None,
            retention_days=args.retention_days,
        )
    except SettingsError as error:
        return _fail("collector", str(error))
    if (
        not _is_loopback(args.host)
        and not settings.dashboard_protected
        and not settings.dashboard_public
    ):
        return _fail(
            "collector",
            f"--host {args.host} would open the dashboard, /api/summary and /export.csv to "
            f"anyone on the network without credentials: set {ENV_DASHBOARD_TOKEN} (or "
            f"{ENV_DASHBOARD_BASIC}=user:password), or pass --public-dashboard to publish "
            "them on purpose",
        )
    try:
        import uvicorn

        from .collector.app import create_app
        from .collector.storage import database_errors, describe_database
    except ImportError as error:
        return _missing_extra("collector", error)

    refusal = _unusable_address(args.host, args.port)
    if refusal is not None:
        return _fail("collector", f"{refusal} (is another collector running there?)")
    try:
        app = create_app(settings, host=args.host)
    except ImportError as error:  # psycopg, for a PostgreSQL URL
        return _missing_extra("collector", error)
    except ValueError as error:  # an unusable --db URL
        return _fail("collector", str(error))
    except database_errors() as error:  # cannot connect, open or migrate
        return _database_failure("collector", settings.db_url, error)
    return app, settings, uvicorn, describe_database


def _collector(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        return _fail("collector", f"--port {args.port}: a port is between 0 and 65535")
    # Before resolving: the settings log what a development run costs.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with _held_logs("reqtelemetry.collector") as held:
        started = _collector_app(args)
    if isinstance(started, int):
        return started  # refused: its one line, without the settings' warnings before it
    for record in held:
        logging.getLogger(record.name).handle(record)
    app, settings, uvicorn, describe_database = started
    from .collector.app import SHUTDOWN_GRACE as shutdown_grace

    mode = "production" if settings.production else "development"
    host = f"[{args.host}]" if ":" in args.host else args.host
    # Port 0: the system picks one when uvicorn binds, and uvicorn's line names it.
    where = (
        f"http://{host}:{args.port}/"
        if args.port
        else f"http://{host}, on a port of the system's choosing"
    )
    print(
        f"# reqtelemetry collector {__version__} ({mode}, {settings.bits}-bit stamps) "
        f"on {where}, database {describe_database(settings.db_url)}",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        # Access logs would record the senders' IP addresses, which reqtelemetry
        # promises not to collect (and the dashboard's ?token=): off unless asked.
        access_log=args.access_log,
        # No WebSocket protocol: the collector has no WebSocket endpoint, and
        # uvicorn logs each handshake it refuses at INFO, with the client's
        # address, path and query, whatever ``access_log`` says.
        ws="none",
        # h11, never httptools (uvicorn's pick when it is installed, as with
        # uvicorn[standard]): httptools keeps every header line a request
        # sends until its headers end, without limit, so one connection
        # that never ended them held a gigabyte of the collector's memory.
        # h11 refuses headers past 16 KiB (h11_max_incomplete_event_size).
        http="h11",
        log_config=None,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        # A stop waits for the requests under way this long at most: a CSV
        # download whose client stopped reading never ends by itself.
        timeout_graceful_shutdown=shutdown_grace,
    )
    return 0


def _existing_database(command: str, url: str) -> Any:
    """The database at ``url``, opened read-only and at the schema this release
    reads; or, when it cannot be used, the exit status of the one line that says why.

    Read-only, an existing database only: a typo must not create one, a
    reader's role needs no right to create or alter tables, and nothing is
    migrated on the way.
    """
    try:
        from .collector.storage import database_errors, open_storage

        storage = open_storage(url, read_only=True)
    except ImportError as error:  # psycopg, for a PostgreSQL URL
        return _missing_extra(command, error)
    except ValueError as error:  # an unusable --db URL
        return _fail(command, str(error))
    except database_errors() as error:
        return _database_failure(command, url, error)
    try:
        storage.check_schema()
    except database_errors() as error:
        storage.close()
        return _database_failure(command, url, error)
    return storage


def _export(args: argparse.Namespace) -> int:
    from .collector.export import app_filter  # the standard library only
    from .collector.summary import MAX_DAYS

    # Bounded like the dashboard's ?days=: past a float's range, the start of
    # the period was an OverflowError (a traceback) rather than a line.
    if not 1 <= args.days <= MAX_DAYS:
        return _fail("export", f"--days must be from 1 to {MAX_DAYS}")
    try:
        app = app_filter(args.app)
    except ValueError as error:
        return _fail("export", f"--app {error}")
    storage = _existing_database("export", args.db)
    if isinstance(storage, int):
        return storage
    overwritten = _database_file_at(storage, args.output)
    if overwritten is not None:
        storage.close()
        return _fail("export", f"-o {args.output} is the database's own file {overwritten}")
    from .collector.export import endpoint_rows, since_days

    rows = endpoint_rows(storage, since_days(args.days), app)
    try:
        return _write_export(args, rows)
    finally:
        rows.close()
        storage.close()


def _database_file_at(storage: Any, output: str | None) -> str | None:
    """The file of the SQLite database ``storage`` (or of its journal) that
    ``output`` names, or None.

    Why: the output is opened for writing, which empties it first. Named
    after the database by mistake (``--db sqlite:///telemetry.db -o
    telemetry.db``), it was the database itself, replaced by its own CSV and
    said to be "written", every report lost.
    """
    path = getattr(storage, "path", None)
    if output in (None, "-") or not isinstance(path, str) or path == ":memory:":
        return None
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with contextlib.suppress(OSError):
            if os.path.samefile(output, name):
                return name
    return None


def _write_export(args: argparse.Namespace, rows: Generator[dict[str, Any], None, None]) -> int:
    """Write the export's ``rows`` to ``args.output`` (stdout when absent or
    ``-``), each as it is read, so that memory stays bounded however many.

    The query runs (and fails) before the output is opened: a database that
    cannot be read is one line and no file, as before the rows were streamed.
    A failure later on, which cuts the rows short, is one line too, and the
    unfinished file is removed rather than left to pass for the whole report.
    """
    from .collector.export import started, write_csv
    from .collector.storage import database_errors

    try:
        first_rows = started(rows)
    except database_errors() as error:
        return _database_failure("export", args.db, error)
    to_stdout = args.output in (None, "-")
    try:
        if to_stdout:
            if sys.stdout is None:  # started with its standard output closed
                return _fail("export", "there is no standard output to write to: use -o FILE")
            write_csv(first_rows, _utf8(sys.stdout))
            sys.stdout.flush()  # a full disk said here, not in Python's words at exit
            return 0
        with open(args.output, "w", encoding="utf-8", newline="") as out:
            written = write_csv(first_rows, out)
    except OSError as error:  # first: database_errors() holds OSError, for a missing file
        if to_stdout:
            if isinstance(error, BrokenPipeError):
                raise  # the reader went away: see main()
            _stdout_nowhere()
            return _fail("export", f"cannot write to standard output: {error.strerror or error}")
        return _fail("export", f"cannot write {args.output}: {error.strerror or error}")
    except database_errors() as error:
        if not to_stdout:
            with contextlib.suppress(OSError):
                os.remove(args.output)
        return _database_failure("export", args.db, error)
    print(f"# {written} rows written to {args.output}", file=sys.stderr)
    return 0


def _utf8(stdout: Any) -> Any:
    """``stdout`` set to write UTF-8, and the CSV's line ends as they are.

    Why: the export is UTF-8 in a file (``-o``) and over HTTP, but standard
    output writes in the locale's encoding (Latin-1, Windows' code page when
    redirected, whatever ``PYTHONIOENCODING`` says): a route it cannot hold
    was a traceback after half the rows. And a text stdout that turns ``\n``
    into ``\r\n`` (Windows) would end each row with ``\r\r\n``.
    """
    reconfigure = getattr(stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(encoding="utf-8", newline="")
    return stdout


def _stdout_nowhere() -> None:
    """Point standard output at nothing: what is still buffered there cannot be
    written, and Python must not complain again when it flushes it at exit."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _prune(args: argparse.Namespace) -> int:
    from .collector.settings import DAY_SECONDS, MAX_RETENTION_DAYS

    if not 1 <= args.older_than_days <= MAX_RETENTION_DAYS:
        return _fail("prune", f"--older-than-days must be from 1 to {MAX_RETENTION_DAYS}")
    probe = _existing_database("prune", args.db)  # checked before anything is written
    if isinstance(probe, int):
        return probe
    probe.close()
    from .collector.storage import database_errors, open_storage

    try:
        storage = open_storage(args.db)
        try:
            pruned = storage.prune(time.time() - args.older_than_days * DAY_SECONDS)
        finally:
            storage.close()
    except database_errors() as error:
        return _database_failure("prune", args.db, error)
    print(
        f"# deleted {pruned.reports} reports, {pruned.instances} instances and "
        f"{pruned.deployments} deployments last seen more than {args.older_than_days} "
        "days ago",
        file=sys.stderr,
    )
    return 0


def _shown_database(url: str) -> str:
    """``url`` as ``--help`` may show it: without its password.

    Why: the default comes from ``REQTELEMETRY_COLLECTOR_DB``, which in
    production holds the database's password, and ``--help`` lands in
    terminals, CI logs and bug reports. Every other line the command prints
    about the database masks it (``describe_database``, standard library
    only, so the help needs no extra).
    """
    if url == "sqlite:///telemetry.db":
        return url
    from .collector.storage import describe_database

    # argparse %-formats each help text: a "%" of the URL (percent-encoding,
    # a file name) made --help a traceback.
    return describe_database(url).replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reqtelemetry", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"reqtelemetry {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="print the report this environment would send")
    inspect.add_argument("--compact", action="store_true", help="one line of JSON")
    inspect.set_defaults(handler=_inspect)

    default_db = os.environ.get("REQTELEMETRY_COLLECTOR_DB") or "sqlite:///telemetry.db"
    shown_db = _shown_database(default_db)
    collector = commands.add_parser(
        "collector",
        help="run the collector (reports in, dashboard and CSV out)",
        description="Run the collector. Configuration: REQTELEMETRY_COLLECTOR_* and "
        "REQTELEMETRY_DASHBOARD_* variables (see docs); flags here take precedence.",
    )
    collector.add_argument("--db", default=None, help=f"storage URL (default {shown_db})")
    collector.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; any other needs dashboard "
        "credentials or --public-dashboard)",
    )
    collector.add_argument(
        "--port", type=_port, default=8600, help="port to listen on, 0-65535 (default 8600)"
    )
    collector.add_argument(
        "--production",
        action="store_true",
        help="refuse to start without REQTELEMETRY_COLLECTOR_SECRET and dashboard credentials "
        "(also REQTELEMETRY_COLLECTOR_PRODUCTION=1)",
    )
    collector.add_argument(
        "--bits",
        type=int,
        default=None,
        help="proof-of-work difficulty of stamps (default 20; at most 24, the most "
        "clients accept by default)",
    )
    collector.add_argument(
        "--public-dashboard",
        action="store_true",
        help="serve the dashboard without credentials, even in production or on a "
        "non-loopback --host (also REQTELEMETRY_DASHBOARD_PUBLIC=1)",
    )
    collector.add_argument(
        "--retention-days",
        type=int,
        default=None,
        help="delete reports older than this many days, at start and every hour "
        "(also REQTELEMETRY_COLLECTOR_RETENTION_DAYS; default: keep everything)",
    )
    collector.add_argument(
        "--access-log", action="store_true", help="log each request (with client addresses)"
    )
    collector.add_argument(
        "--proxy-headers",
        action="store_true",
        help="trust X-Forwarded-* from --forwarded-allow-ips (behind a reverse proxy)",
    )
    collector.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="comma-separated proxy addresses (or *) whose X-Forwarded-* headers "
        "--proxy-headers trusts (default 127.0.0.1)",
    )
    collector.set_defaults(handler=_collector)

    export = commands.add_parser("export", help="write the per-endpoint report")
    export.add_argument("--db", default=default_db, help=f"storage URL (default {shown_db})")
    export.add_argument("--csv", action="store_true", required=True, help="CSV (the format)")
    export.add_argument(
        "--days", type=int, default=30, help="the last N days, 1 to 3650 (default 30)"
    )
    export.add_argument(
        "--app", default=None, help="only the app of this name (traits.app_name; default: all)"
    )
    export.add_argument("-o", "--output", default=None, help="file to write (default stdout)")
    export.set_defaults(handler=_export)

    prune = commands.add_parser(
        "prune",
        help="delete reports older than N days (what --retention-days does, once)",
    )
    prune.add_argument("--db", default=default_db, help=f"storage URL (default {shown_db})")
    prune.add_argument(
        "--older-than-days",
        type=int,
        required=True,
        help="delete the reports received more than this many days ago, and the "
        "instances and deployments seen only before then",
    )
    prune.set_defaults(handler=_prune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except BrokenPipeError:
        # The reader went away (``reqtelemetry export ... | head``): nothing is
        # wrong here, and Python must not complain again when it flushes
        # stdout at exit, so stdout now points nowhere.
        _stdout_nowhere()
        return 1
    except KeyboardInterrupt:
        print(f"reqtelemetry {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
