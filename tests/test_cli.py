"""``reqtelemetry inspect``: the report this environment would send, and nothing sent.

Called in-process (``reqtelemetry.cli.main``) and as the installed console
script in a subprocess; both print JSON valid against the schema that carries
none of the sample identifiers, and neither connects anywhere.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

import reqtelemetry
from receiver import schema_errors
from reqtelemetry.cli import main

SAMPLE_IDENTIFIERS = ("alice@example.org", "4711")
ENVIRONMENT_KNOBS = (
    "SQA_OPT_OUT",
    "REQTELEMETRY_OPT_OUT",
    "DO_NOT_TRACK",
    "REQTELEMETRY_DEBUG",
    "REQTELEMETRY_DISABLE",
    "REQTELEMETRY_ENDPOINT",
    "REQTELEMETRY_APP_NAME",
)
SCRIPT = Path(sys.executable).with_name("reqtelemetry")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT_KNOBS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", ["reqtelemetry"])


def assert_free_of_samples(payload: Any) -> None:
    """Neither sample identifier appears: the e-mail anywhere, ``4711`` as a path
    segment or a number (as a substring it may occur by chance inside a hash)."""
    text = json.dumps(payload)
    assert "alice@example.org" not in text
    assert "alice" not in text

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            assert "4711" not in re.split(r"[/?&=#;,\s]", value), value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            assert value != 4711

    walk(payload)


def check_sample(payload: dict[str, Any]) -> None:
    assert schema_errors(payload) == []
    assert_free_of_samples(payload)
    routes = {record["route"] for record in payload["batch"]["records"]}
    assert "/items/{item_id}" in routes
    assert "<unmatched>" in routes
    # The sample path with identifiers is there, anonymized.
    assert any(route.startswith("/") and len(route) > 64 for route in routes)
    assert sum(r["count"] for r in payload["batch"]["records"]) == 6


def test_inspect_prints_a_valid_report_without_identifiers(capsys):
    assert main(["inspect"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    check_sample(payload)
    assert payload["traits"]["reqtelemetry_version"] == reqtelemetry.__version__
    assert "nowhere" in captured.err  # no endpoint configured
    # ... by the environment: one set in the app's code still applies, and
    # what the code sets is said to be unknown here.
    assert "an endpoint the app sets in its code still applies" in captured.err
    assert "REQTELEMETRY_DEBUG=1" in captured.err


def test_inspect_compact_is_one_line(capsys):
    assert main(["inspect", "--compact"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    check_sample(json.loads(out))


def test_inspect_shows_withheld_traits(capsys, monkeypatch):
    monkeypatch.setenv("REQTELEMETRY_DISABLE", "memory_rss_bytes,cpu_count")
    assert main(["inspect"]) == 0
    payload = json.loads(capsys.readouterr().out)
    check_sample(payload)
    assert payload["withheld"] == ["cpu_count", "memory_rss_bytes"]
    assert "cpu_count" not in payload["traits"]


def test_inspect_connects_nowhere_even_with_an_endpoint(
    capsys, monkeypatch, silent_endpoint, tmp_path
):
    monkeypatch.setenv("REQTELEMETRY_ENDPOINT", silent_endpoint.url)
    monkeypatch.setenv("REQTELEMETRY_SEND_IN_TESTS", "1")
    monkeypatch.setenv("REQTELEMETRY_DEPLOYMENT_ID_PATH", str(tmp_path / "id"))
    assert main(["inspect"]) == 0
    captured = capsys.readouterr()
    check_sample(json.loads(captured.out))
    assert silent_endpoint.url in captured.err  # it says where it would report
    silent_endpoint.assert_no_connection()
    assert not (tmp_path / "id").exists()


def test_inspect_shows_where_it_would_report_without_credentials(
    capsys, monkeypatch, silent_endpoint
):
    scheme, rest = silent_endpoint.url.split("://", 1)
    host_and_port = rest.split("/", 1)[0]
    endpoint = f"{scheme}://svc:canary-password@{host_and_port}/v1?key=canary-key"
    monkeypatch.setenv("REQTELEMETRY_ENDPOINT", endpoint)
    assert main(["inspect"]) == 0
    captured = capsys.readouterr()
    assert f"{scheme}://{host_and_port}/v1" in captured.err
    assert "canary" not in captured.err + captured.out
    silent_endpoint.assert_no_connection()


def test_inspect_in_debug_mode_says_reports_go_to_stderr(capsys, monkeypatch, silent_endpoint):
    # REQTELEMETRY_DEBUG prints each report instead of sending it, endpoint or not.
    monkeypatch.setenv("REQTELEMETRY_ENDPOINT", silent_endpoint.url)
    monkeypatch.setenv("REQTELEMETRY_DEBUG", "1")
    assert main(["inspect"]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert "would report to stderr (REQTELEMETRY_DEBUG" in first
    assert silent_endpoint.url not in first
    silent_endpoint.assert_no_connection()


@pytest.mark.parametrize("variable", ["SQA_OPT_OUT", "DO_NOT_TRACK", "REQTELEMETRY_OPT_OUT"])
def test_inspect_when_opted_out_says_so(capsys, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    assert main(["inspect"]) == 0
    out = capsys.readouterr().out
    assert "off" in out and variable in out
    assert "{" not in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert reqtelemetry.__version__ in capsys.readouterr().out


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed ``reqtelemetry`` script run with ``args``; with ``args``
    starting ``-m``, ``python -m reqtelemetry`` instead."""
    environment = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT_KNOBS}
    environment.update(env)
    command = [sys.executable, *args] if args[:1] == ("-m",) else [str(SCRIPT), *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def test_python_dash_m_runs_the_command(silent_endpoint):
    """``python -m reqtelemetry`` is the command where the script is not on PATH."""
    result = run_script("-m", "reqtelemetry", "inspect", REQTELEMETRY_ENDPOINT=silent_endpoint.url)
    assert result.returncode == 0, result.stderr
    check_sample(json.loads(result.stdout))
    silent_endpoint.assert_no_connection(wait=0.05)
    refused = run_script("-m", "reqtelemetry", "no-such-command")
    assert refused.returncode == 2
    assert refused.stderr.startswith("usage: reqtelemetry ")


@pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed")
def test_the_installed_command_prints_a_valid_report(silent_endpoint):
    result = run_script("inspect", REQTELEMETRY_ENDPOINT=silent_endpoint.url)
    assert result.returncode == 0, result.stderr
    check_sample(json.loads(result.stdout))
    for identifier in SAMPLE_IDENTIFIERS[:1]:
        assert identifier not in result.stderr
    silent_endpoint.assert_no_connection(wait=0.05)


@pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed")
def test_the_installed_command_when_opted_out():
    result = run_script("inspect", SQA_OPT_OUT="true")
    assert result.returncode == 0, result.stderr
    assert "off" in result.stdout
    assert "{" not in result.stdout


# -- operator mistakes: one line on stderr, exit status 2, never a traceback ----------------


@pytest.fixture
def no_collector_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("REQTELEMETRY_COLLECTOR_", "REQTELEMETRY_DASHBOARD_")):
            monkeypatch.delenv(name)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``uvicorn.run`` replaced by a recorder: the collector starts and returns at once."""
    import uvicorn

    calls: list[dict[str, Any]] = []

    def run(app: Any, **options: Any) -> None:
        calls.append({**options, "app": app})

    monkeypatch.setattr(uvicorn, "run", run)
    return calls


def one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The single ``reqtelemetry <command>: error: ...`` line; nothing went to stdout."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1, captured.err
    assert errors[0].startswith(f"reqtelemetry {command}: error: "), captured.err
    return errors[0]


def migrated_sqlite(path: Path) -> str:
    from reqtelemetry.collector.storage import open_storage

    url = f"sqlite:///{path}"
    storage = open_storage(url)
    storage.migrate()
    storage.close()
    return url


def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_export_of_a_missing_database_creates_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for db in ("sqlite:///typo/nothere.db", "typo/nothere.db"):
        assert main(["export", "--csv", "--db", db]) == 2
        assert "nothere.db" in one_error_line(capsys, "export")
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_database_without_the_schema(capsys, tmp_path):
    import sqlite3

    sqlite3.connect(tmp_path / "other.db").close()  # an existing, empty SQLite file
    assert main(["export", "--csv", "--db", f"sqlite:///{tmp_path}/other.db"]) == 2
    assert "no reqtelemetry tables" in one_error_line(capsys, "export")


def test_export_of_one_app(capsys, tmp_path):
    from collector_stack import store_old_report

    db = migrated_sqlite(tmp_path / "t.db")
    for app, version, route in (("inventory", "1.0", "/items"), ("billing", "1.0", "/invoices")):
        store_old_report(db, str(uuid.uuid4()), version, [("GET", route, 200, 0.01)], 0.01, app)
    out = tmp_path / "billing.csv"
    assert main(["export", "--csv", "--db", db, "--app", "billing", "-o", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [(r["app_name"], r["app_version"], r["route"], r["calls"]) for r in rows] == [
        ("billing", "1.0", "/invoices", "1")
    ]
    assert main(["export", "--csv", "--db", db]) == 0
    every = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(r["app_name"] for r in every) == ["billing", "inventory"]


@pytest.mark.parametrize(
    "name",
    [
        "x" * 129,
        "bill\x00ing",
        "bill\udcffing",  # a byte that is not UTF-8 on the command line (PEP 383)
    ],
)
def test_export_of_an_app_no_report_can_name_is_one_line(capsys, tmp_path, name):
    db = migrated_sqlite(tmp_path / "t.db")
    assert main(["export", "--csv", "--db", db, "--app", name]) == 2
    line = one_error_line(capsys, "export")
    assert "--app must be an app's name: at most 128 characters of text" in line


def _unusable_databases(tmp_path: Path) -> list[str]:
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("not a database\n" * 100)
    return [
        f"postgresql://telemetry:hunter2@127.0.0.1:{unused_port()}/telemetry",  # refused
        "postgresql://telemetry@db.invalid/telemetry",  # unresolvable
        "sqlite:////proc/x.db",  # cannot be opened
        str(not_a_database),
    ]


@pytest.mark.parametrize("command", ["export", "collector"])
def test_an_unusable_database_is_one_line(
    capsys, served, tmp_path, command, no_collector_environment
):
    for db in _unusable_databases(tmp_path):
        argv = ["export", "--csv"] if command == "export" else ["collector", "--port", "0"]
        assert main([*argv, "--db", db]) == 2, db
        line = one_error_line(capsys, command)
        assert "cannot use the database" in line, line
        assert "hunter2" not in line
        assert db.replace("hunter2", "***") in line


@pytest.mark.parametrize(
    ("db", "shown"),
    [
        # libpq quotes the token it cannot decode: the password itself.
        (
            "postgresql://app:S3cr%tPW@127.0.0.1:1/telemetry",
            "postgresql://app:***@127.0.0.1:1/telemetry",
        ),
        # urlsplit raised on the unclosed bracket (a traceback); libpq quotes the URL.
        ("postgresql://app:S3cretPW@[::1/telemetry", "postgresql://app:***@[::1/telemetry"),
    ],
)
@pytest.mark.parametrize("command", ["export", "prune", "collector"])
def test_a_malformed_postgres_url_is_one_line_without_its_password(
    capsys, served, command, db, shown, no_collector_environment
):
    argv = {
        "export": ["export", "--csv"],
        "prune": ["prune", "--older-than-days", "30"],
        "collector": ["collector", "--port", "0"],
    }[command]
    assert main([*argv, "--db", db]) == 2
    line = one_error_line(capsys, command)
    assert line.startswith(f"reqtelemetry {command}: error: cannot use the database {shown}: ")
    assert "S3cr" not in line
    assert served == []


@pytest.mark.parametrize(
    "password",
    ["Zq9@Xw7Kv3", "Zq9@Xw7:Kv3", "Zq9/Xw7?Kv3", "Zq9,Xw7@Kv3/Jm4", "Zq9%zzXw7 Kv3", "Zq9&Xw7=Kv3"],
)
@pytest.mark.parametrize("command", ["export", "prune", "collector"])
def test_no_piece_of_an_unescaped_password_is_printed(
    capsys, served, command, password, no_collector_environment
):
    """libpq cuts such a password at its "@", "/", "?", ":", "," or "&", reads
    a piece as a host, a port or a parameter, and quotes that piece back:
    ``failed to resolve host 'Xw7Kv3@127.0.0.1'`` went to stderr whole."""
    argv = {
        "export": ["export", "--csv"],
        "prune": ["prune", "--older-than-days", "30"],
        "collector": ["collector", "--port", "0"],
    }[command]
    port = unused_port()
    for db in (
        f"postgresql://app:{password}@127.0.0.1:{port}/telemetry",
        f"postgresql://app@127.0.0.1:{port}/telemetry?password={password}",
    ):
        assert main([*argv, "--db", db]) == 2
        err = capsys.readouterr().err  # all of it, not only the error line
        assert err.startswith(f"reqtelemetry {command}: error: cannot use the database "), err
        assert err.count("\n") == 1, err
        stretches = {password[i : i + 3] for i in range(len(password) - 2)}
        assert not {piece for piece in stretches if piece in err}, err
    assert served == []


@pytest.mark.parametrize("days", ["0", "3651", "9" * 400])
def test_export_days_outside_the_dashboards_range_is_one_line(capsys, tmp_path, days):
    # 400 digits overflowed the start of the period: a traceback, not a line.
    db = migrated_sqlite(tmp_path / "t.db")
    assert main(["export", "--csv", "--db", db, "--days", days]) == 2
    assert "--days must be from 1 to 3650" in one_error_line(capsys, "export")
    assert main(["export", "--csv", "--db", db, "--days", "3650"]) == 0


@pytest.mark.parametrize("days", ["0", "36501", "9" * 400])
def test_prune_days_outside_the_retention_range_is_one_line(capsys, tmp_path, days):
    db = migrated_sqlite(tmp_path / "t.db")
    assert main(["prune", "--db", db, "--older-than-days", days]) == 2
    assert "--older-than-days must be from 1 to 36500" in one_error_line(capsys, "prune")


@pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed")
def test_the_installed_command_refuses_days_past_a_float_in_one_line(tmp_path):
    db = migrated_sqlite(tmp_path / "t.db")
    result = run_script("export", "--csv", "--db", db, "--days", "9" * 400)
    assert result.returncode == 2
    assert result.stderr == "reqtelemetry export: error: --days must be from 1 to 3650\n"


def test_a_refused_collector_start_is_one_line_without_the_settings_warnings(tmp_path):
    """A development run's settings warn (no secret, an open dashboard) before
    the start-up checks: a refused start printed those two lines, then its
    one error line. The warnings now wait for the checks to pass."""
    environment = {
        name: ""
        for name in os.environ
        if name.startswith(("REQTELEMETRY_COLLECTOR_", "REQTELEMETRY_DASHBOARD_"))
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        db = f"sqlite:///{tmp_path}/t.db"
        result = run_script("collector", "--port", port, "--db", db, **environment)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"reqtelemetry collector: error: cannot listen on 127.0.0.1:{port}: "
        "Address already in use (is another collector running there?)"
    ]


def test_a_started_collector_still_shows_the_settings_warnings(
    served, tmp_path, caplog, no_collector_environment
):
    with caplog.at_level(logging.INFO, logger="reqtelemetry.collector"):
        assert main(["collector", "--db", f"sqlite:///{tmp_path}/t.db", "--port", "0"]) == 0
    assert len(served) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no REQTELEMETRY_COLLECTOR_SECRET set" in message for message in warnings)
    assert any("open to anyone" in message for message in warnings)


def test_export_to_a_missing_folder_is_one_line(capsys, tmp_path):
    db = migrated_sqlite(tmp_path / "t.db")
    out = tmp_path / "nonexistent" / "dir" / "x.csv"
    assert main(["export", "--csv", "--db", db, "-o", str(out)]) == 2
    assert f"cannot write {out}" in one_error_line(capsys, "export")


@pytest.mark.parametrize(
    "db", ["host=db dbname=telemetry user=telemetry", "dbname=telemetry password=hunter2"]
)
@pytest.mark.parametrize("command", ["export", "collector"])
def test_a_libpq_keyword_string_is_refused(
    capsys, served, tmp_path, monkeypatch, db, command, no_collector_environment
):
    monkeypatch.chdir(tmp_path)
    if command == "collector":
        monkeypatch.setenv("REQTELEMETRY_COLLECTOR_DB", db)  # what a deployment sets
        assert main(["collector", "--port", "0"]) == 2
    else:
        assert main(["export", "--csv", "--db", db]) == 2
    line = one_error_line(capsys, command)
    assert "libpq connection string" in line and "postgresql://" in line
    assert "hunter2" not in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "db",
    [
        "postgresql:/telemetry:s3cr3t@db/telemetry",
        "postgres:telemetry:s3cr3t@db/telemetry",
        "postgresql//telemetry:s3cr3t@db/telemetry",
        "sqlite:/s3cr3t.db",
    ],
)
@pytest.mark.parametrize("command", ["export", "collector"])
def test_a_database_url_short_of_a_slash_is_refused(
    capsys, served, tmp_path, monkeypatch, db, command, no_collector_environment
):
    """Taken for a file path, it started a production collector on a SQLite
    file under ``./postgresql:/telemetry:s3cr3t@db/``, the banner showing the password."""
    monkeypatch.chdir(tmp_path)
    if command == "collector":
        monkeypatch.setenv("REQTELEMETRY_COLLECTOR_DB", db)
        monkeypatch.setenv("REQTELEMETRY_COLLECTOR_PRODUCTION", "1")
        monkeypatch.setenv("REQTELEMETRY_COLLECTOR_SECRET", "s" * 32)
        monkeypatch.setenv("REQTELEMETRY_DASHBOARD_TOKEN", "a-long-enough-dashboard-token")
        assert main(["collector", "--port", "0"]) == 2
    else:
        assert main(["export", "--csv", "--db", db]) == 2
    line = one_error_line(capsys, command)
    assert "is no URL" in line and "postgresql://" in line
    assert "s3cr3t" not in line
    assert list(tmp_path.iterdir()) == []
    assert served == []


@pytest.mark.parametrize("db", ["sqlite:///t.db?timeout=30", "sqlite:///t.db#x?key=s3cr3t"])
@pytest.mark.parametrize("command", ["export", "collector"])
def test_a_sqlite_url_with_a_query_is_refused(
    capsys, served, tmp_path, monkeypatch, db, command, no_collector_environment
):
    """It made (or, for export, looked for) a file named ``t.db?timeout=30``."""
    monkeypatch.chdir(tmp_path)
    assert (
        main([command, "--db", db, *(["--port", "0"] if command == "collector" else ["--csv"])])
        == 2
    )
    line = one_error_line(capsys, command)
    assert "SQLite URLs take no query or fragment" in line and "'sqlite:///t.db'" in line
    assert "s3cr3t" not in line
    assert list(tmp_path.iterdir()) == []
    assert served == []


def test_the_collector_banner_names_the_database_without_its_password(
    capsys, served, postgres_url, no_collector_environment
):
    from postgres import free_port, scratch_schema

    port = free_port()  # a port the banner must show, and free: the start-up check binds it
    with scratch_schema(postgres_url) as url:
        # trust authentication: the password is accepted, and must not be shown.
        with_password = url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")
        assert main(["collector", "--db", with_password, "--port", str(port)]) == 0
    assert served and served[0]["port"] == port
    err = capsys.readouterr().err
    banner = next(line for line in err.splitlines() if line.startswith("# reqtelemetry collector"))
    assert f"http://127.0.0.1:{port}/" in banner
    assert "database postgresql://postgres:***@127.0.0.1:" in banner
    assert "hunter2" not in err


def test_export_needs_only_read_access_on_postgres(capsys, postgres_url, tmp_path):
    import psycopg

    from postgres import scratch_schema
    from reqtelemetry.collector.storage import open_storage

    role = f"reader_{uuid.uuid4().hex[:8]}"
    with scratch_schema(postgres_url) as url:
        schema = psycopg.connect(url).execute("SELECT current_schema()").fetchone()[0]
        writer = open_storage(url)
        writer.migrate()
        writer.close()
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'CREATE ROLE "{role}" LOGIN')
            admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
            admin.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
        try:
            reader_url = url.replace("postgresql://postgres@", f"postgresql://{role}@")
            out = tmp_path / "endpoints.csv"
            assert main(["export", "--csv", "--db", reader_url, "-o", str(out)]) == 0
            assert out.read_text().startswith("method,")
            assert "Traceback" not in capsys.readouterr().err
        finally:
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(f'DROP OWNED BY "{role}"')
                admin.execute(f'DROP ROLE "{role}"')


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_a_port_out_of_range_is_one_line(capsys, served, tmp_path, monkeypatch, port):
    monkeypatch.chdir(tmp_path)
    assert main(["collector", "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"reqtelemetry collector: error: --port {port}: a port is between 0 and 65535"
    ]
    assert not list(tmp_path.iterdir())  # refused before any database was created


def test_a_port_that_is_no_number_is_argparses_usage_error(capsys, served, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["collector", "--port", "http"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --port" in err and "Traceback" not in err


def test_a_non_loopback_host_needs_dashboard_credentials(
    capsys, served, tmp_path, monkeypatch, no_collector_environment
):
    db = f"sqlite:///{tmp_path}/t.db"
    for host in ("0.0.0.0", "::", "192.0.2.10", "collector.example.org"):
        assert main(["collector", "--db", db, "--host", host]) == 2
        line = one_error_line(capsys, "collector")
        assert f"--host {host}" in line and "REQTELEMETRY_DASHBOARD_TOKEN" in line
        assert "--public-dashboard" in line
    assert served == [] and not (tmp_path / "t.db").exists()
    # Loopback, an explicit public dashboard, or credentials: it starts.
    assert main(["collector", "--port", "0", "--db", db, "--host", "localhost"]) == 0
    assert main(["collector", "--port", "0", "--db", db, "--host", "::1"]) == 0
    public = ["--host", "0.0.0.0", "--public-dashboard"]
    assert main(["collector", "--port", "0", "--db", db, *public]) == 0
    monkeypatch.setenv("REQTELEMETRY_DASHBOARD_TOKEN", "a-long-enough-dashboard-token")
    assert main(["collector", "--port", "0", "--db", db, "--host", "0.0.0.0"]) == 0
    assert [call["host"] for call in served] == ["localhost", "::1", "0.0.0.0", "0.0.0.0"]


def test_an_open_dashboard_answers_to_its_host_and_loopback_only(
    served, tmp_path, no_collector_environment
):
    # The collector is told the --host it listens on: a DNS-rebound name is refused.
    db = f"sqlite:///{tmp_path}/t.db"
    assert main(["collector", "--port", "0", "--db", db, "--host", "127.0.0.5"]) == 0
    (call,) = served
    transport = httpx.ASGITransport(app=call["app"])

    async def statuses() -> list[int]:
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as http:
            return [
                (await http.get(path, headers={"Host": host})).status_code
                for path, host in (
                    ("/api/summary", "127.0.0.5:8600"),
                    ("/api/summary", "localhost:8600"),
                    ("/api/summary", "rebind.example:8600"),
                    ("/export.csv", "rebind.example:8600"),
                    ("/healthz", "rebind.example:8600"),
                )
            ]

    assert asyncio.run(statuses()) == [200, 200, 403, 403, 200]
    call["app"].state.storage.close()


def test_bits_beyond_what_clients_accept_are_refused(capsys, served, no_collector_environment):
    assert main(["collector", "--db", "sqlite:///:memory:", "--bits", "25"]) == 2
    line = one_error_line(capsys, "collector")
    assert "max_proof_of_work_bits" in line and "24" in line
    assert main(["collector", "--port", "0", "--db", "sqlite:///:memory:", "--bits", "24"]) == 0


@pytest.mark.parametrize("token", ["...", "x" * 15])
def test_production_refuses_a_short_dashboard_token(
    capsys, served, monkeypatch, token, no_collector_environment
):
    monkeypatch.setenv("REQTELEMETRY_COLLECTOR_SECRET", "s" * 32)
    monkeypatch.setenv("REQTELEMETRY_DASHBOARD_TOKEN", token)
    assert main(["collector", "--production", "--db", "sqlite:///:memory:"]) == 2
    line = one_error_line(capsys, "collector")
    assert "REQTELEMETRY_DASHBOARD_TOKEN" in line and "16" in line
    monkeypatch.setenv("REQTELEMETRY_DASHBOARD_TOKEN", "x" * 16)
    assert main(["collector", "--port", "0", "--production", "--db", "sqlite:///:memory:"]) == 0
    assert len(served) == 1


@pytest.mark.parametrize("password", ["a", "x" * 15])
def test_production_refuses_a_short_basic_auth_password(
    capsys, served, monkeypatch, password, no_collector_environment
):
    monkeypatch.setenv("REQTELEMETRY_COLLECTOR_SECRET", "s" * 32)
    monkeypatch.setenv("REQTELEMETRY_DASHBOARD_BASIC_AUTH", f"admin:{password}")
    assert main(["collector", "--production", "--db", "sqlite:///:memory:"]) == 2
    line = one_error_line(capsys, "collector")
    assert "REQTELEMETRY_DASHBOARD_BASIC_AUTH" in line and "16" in line
    monkeypatch.setenv("REQTELEMETRY_DASHBOARD_BASIC_AUTH", "admin:" + "x" * 16)
    assert main(["collector", "--port", "0", "--production", "--db", "sqlite:///:memory:"]) == 0
    assert len(served) == 1


def test_the_collector_without_its_extra_says_what_to_install(
    capsys, served, monkeypatch, no_collector_environment
):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now fails
    assert main(["collector", "--db", "sqlite:///:memory:"]) == 2
    line = one_error_line(capsys, "collector")
    assert "pip install 'reqtelemetry[collector]'" in line and "uvicorn" in line


def test_inspect_with_a_malformed_variable_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("REQTELEMETRY_MAX_KEYS", "abc")
    assert main(["inspect"]) == 2
    assert "REQTELEMETRY_MAX_KEYS" in one_error_line(capsys, "inspect")


def test_help_describes_the_command_and_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "The reqtelemetry command" not in out
    assert "inspect" in out and "collector" in out and "export" in out
    with pytest.raises(SystemExit):
        main(["collector", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--forwarded-allow-ips FORWARDED_ALLOW_IPS comma-separated" in out


@pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed")
def test_the_installed_command_fails_in_one_line(tmp_path):
    result = run_script("export", "--csv", "--db", f"sqlite:///{tmp_path}/typo/nothere.db")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "typo").exists()


def test_a_port_in_use_is_one_line_before_the_database_is_touched(
    capsys, served, tmp_path, no_collector_environment
):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = tmp_path / "t.db"
        assert main(["collector", "--db", f"sqlite:///{db}", "--port", str(port)]) == 2
    assert served == []
    assert not db.exists()  # refused before the database was created and migrated
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("reqtelemetry collector:")]
    assert f"cannot listen on 127.0.0.1:{port}" in line and "Traceback" not in err


def test_the_port_check_binds_as_uvicorn_does():
    # IPv6 sockets are IPv6-only (as asyncio binds them): "::" does not collide
    # with an IPv4 listener on the same port, while every address is tried.
    import socket

    from reqtelemetry.cli import _unusable_address

    with socket.create_server(("127.0.0.1", 0)) as ipv4:
        port = ipv4.getsockname()[1]
        assert _unusable_address("::", port) is None
        assert "cannot listen on 127.0.0.1" in (_unusable_address("127.0.0.1", port) or "")
        assert "cannot listen on 0.0.0.0" in (_unusable_address("0.0.0.0", port) or "")


def test_the_port_check_tries_every_address_a_name_resolves_to(monkeypatch):
    # localhost is often ::1 first, then 127.0.0.1: a port taken on the second
    # made uvicorn fail after the database was migrated.
    import socket

    from reqtelemetry.cli import _unusable_address

    with socket.create_server(("127.0.0.1", 0)) as ipv4:
        port = ipv4.getsockname()[1]
        both = [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]
        monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: both)
        assert "Address already in use" in (_unusable_address("localhost", port) or "")


def _with_default_sigint() -> None:
    """In the child: SIGINT as a terminal sends it, whatever this process ignores."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli_into(stdout_fd: int, *args: str) -> subprocess.Popen[bytes]:
    """``python -m reqtelemetry.cli ARGS`` writing to ``stdout_fd``, its stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "reqtelemetry.cli", *args],
        stdout=stdout_fd,
        stderr=subprocess.PIPE,
        preexec_fn=_with_default_sigint,
    )


@pytest.mark.parametrize("command", ["inspect", "export"])
def test_output_to_a_reader_that_left_is_no_traceback(tmp_path, command):
    """``reqtelemetry export ... | head`` closes the pipe early: a traceback
    (``BrokenPipeError``) would read as a bug."""
    args = ["inspect"]
    if command == "export":
        args = ["export", "--csv", "--db", migrated_sqlite(tmp_path / "t.db")]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte is written
    child = run_cli_into(write_end, *args)
    os.close(write_end)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 1
    assert "Traceback" not in err.decode() and "Broken pipe" not in err.decode()


def test_export_interrupted_is_one_line(tmp_path):
    """Ctrl-C while ``export`` writes: one line and status 130, no traceback."""
    import fcntl
    import signal
    import termios
    import time

    from collector_stack import store_old_report

    db = migrated_sqlite(tmp_path / "t.db")
    calls = [("GET", f"/route-{n:04d}/{'x' * 100}", 200, 0.01) for n in range(1200)]
    store_old_report(db, str(uuid.uuid4()), "1.0", calls, 0.01, "big")
    read_end, write_end = os.pipe()
    child = run_cli_into(write_end, "export", "--csv", "--db", db)
    os.close(write_end)
    try:
        # Wait until the pipe holds half its 64 KiB: the rest of the export's
        # 160 KB cannot fit, so it is (or soon will be) blocked writing.
        waiting = bytearray(4)
        for _ in range(600):
            fcntl.ioctl(read_end, termios.FIONREAD, waiting)
            if int.from_bytes(waiting, sys.byteorder) >= 32768 or child.poll() is not None:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the export ended before the pipe filled"
        child.send_signal(signal.SIGINT)
        with os.fdopen(read_end, "rb") as reader:  # let it write what it still holds
            reader.read()
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130
    assert err.decode().splitlines() == ["reqtelemetry export: interrupted"]


def test_the_collector_banner_does_not_name_port_0(
    capsys, served, tmp_path, no_collector_environment
):
    """``--port 0`` lets the system choose when uvicorn binds: "on
    http://127.0.0.1:0/" named an address nobody could open."""
    assert main(["collector", "--db", f"sqlite:///{tmp_path}/t.db", "--port", "0"]) == 0
    banner = next(
        line
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("# reqtelemetry collector")
    )
    assert ":0/" not in banner
    assert "on http://127.0.0.1, on a port of the system's choosing" in banner


def test_a_database_lost_in_the_middle_of_an_export_is_one_line(postgres_url):
    """Rows are written as the server sends them: a database lost once some are
    written ends the command with one line and exit status 2, not a
    traceback, nor output that looks whole."""
    import copy

    import psycopg

    from postgres import scratch_schema
    from reqtelemetry.collector.storage import open_storage
    from test_storage import T, many_endpoints

    # More rows than the sockets between server and command hold (megabytes):
    # the server has to wait for the command, which waits for its reader.
    reports, routes = 100, 1000
    template = many_endpoints({f"/r/{n:04d}": 1 + n for n in range(routes)}, "1.0", T)
    with scratch_schema(postgres_url) as url:
        storage = open_storage(url)
        storage.migrate()
        for part in range(reports):
            report = copy.deepcopy(template)
            for record in report.payload["batch"]["records"]:
                record["route"] = f"/r/{part:03d}{record['route'][2:]}"
            storage.store(replace(report, stamp=f"{report.stamp}-{part}"))
        storage.close()
        # Nothing reads its output yet: it stops, blocked, and so does the server.
        command = subprocess.Popen(
            [sys.executable, "-m", "reqtelemetry.cli", "export", "--csv", "--db", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                sending = "SELECT pid FROM pg_stat_activity WHERE wait_event = 'ClientWrite'"
                for _ in range(600):
                    pids = [row[0] for row in admin.execute(sending).fetchall()]
                    if pids or command.poll() is not None:
                        break
                    time.sleep(0.1)
                assert pids, "no server was waiting for the export to read its rows"
                admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
            out, err = command.communicate(timeout=60)
        finally:
            if command.poll() is None:
                command.kill()
                command.communicate()
    assert command.returncode == 2
    (line,) = err.splitlines()
    assert line.startswith("reqtelemetry export: error: cannot use the database postgresql://")
    written = len(out.splitlines()) - 1  # after the header
    assert 0 < written < reports * routes


def _ask_raw(port: int, request: bytes) -> bytes:
    """``request`` sent as it is over one connection, and all of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
        return answer


def test_the_collector_logs_no_senders_address_nor_query(tmp_path):
    """Started as the README says (no ``--access-log``), the collector writes
    no sender's address, path or query: uvicorn logged every WebSocket
    handshake it refused at INFO, address and query and all, whatever
    ``access_log`` said, though the collector has no WebSocket endpoint."""
    port = unused_port()
    environment = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT_KNOBS}
    db = f"sqlite:///{tmp_path}/t.db"
    collector = subprocess.Popen(
        [sys.executable, "-m", "reqtelemetry", "collector", "--port", str(port), "--db", db],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment,
    )
    try:
        for _ in range(300):
            try:
                healthy = _ask_raw(port, b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n")
                break
            except OSError:
                time.sleep(0.05)
        assert healthy.startswith(b"HTTP/1.1 200")
        _ask_raw(port, b"GET /v1/session?canary-query=1 HTTP/1.1\r\nHost: c\r\n\r\n")
        refused = _ask_raw(
            port,
            b"GET /v1/report?canary-socket=1 HTTP/1.1\r\nHost: c\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        assert not refused.startswith(b"HTTP/1.1 101")
    finally:
        collector.terminate()
        _, err = collector.communicate(timeout=30)
    log = err.decode()
    assert "Uvicorn running" in log  # it served, and logged at INFO
    assert "canary" not in log
    assert "/v1/" not in log
    assert re.search(rf"127\.0\.0\.1:(?!{port}\b)\d+", log) is None, log


def test_the_collector_bounds_the_headers_a_request_may_send(
    served, tmp_path, no_collector_environment
):
    """Served as the command serves it, a request whose headers never end is
    refused once they pass 16 KiB, not held: with httptools (uvicorn's pick
    where installed) one such connection held a gigabyte of memory."""
    import threading

    import uvicorn

    assert main(["collector", "--db", f"sqlite:///{tmp_path}/t.db", "--port", "0"]) == 0
    (options,) = served
    options = {key: value for key, value in options.items() if key != "app"}
    port = unused_port()
    config = uvicorn.Config(served[0]["app"], **{**options, "port": port, "lifespan": "off"})
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.02)
        sent = 0
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"POST /v1/report HTTP/1.1\r\nHost: localhost\r\n")
            line = b"X-Junk: " + b"a" * 8000 + b"\r\n"
            with pytest.raises(OSError):  # the server closed the connection
                while sent < 64 * 2**20:
                    connection.sendall(line * 16)
                    sent += len(line) * 16
        assert sent < 4 * 2**20
    finally:
        server.should_exit = True
        thread.join(10)
