"""The export and help commands guard what the maintainer keeps: the database
file, a readable CSV on any standard output, and the database's password.

Found by a review of the collector's command line; each test failed before its fix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from reqtelemetry.cli import main

ROUTE = "/日本/{id}"  # text a Latin-1 or cp1252 standard output cannot hold


def _database(path: Path) -> str:
    from collector_stack import store_old_report
    from reqtelemetry.collector.storage import open_storage

    url = f"sqlite:///{path}"
    storage = open_storage(url)
    storage.migrate()
    storage.close()
    store_old_report(url, str(uuid.uuid4()), "1.0", [("GET", ROUTE, 200, 0.01)], 0.01, "shop")
    return url


def _export(*args: str, **options) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.update(options.pop("env", {}))
    return subprocess.run(
        [sys.executable, "-m", "reqtelemetry", "export", "--csv", *args],
        env=env,
        capture_output="stdout" not in options,
        timeout=60,
        **options,
    )


# -- the output named after the database -------------------------------------------------------


def test_export_onto_its_own_database_is_refused_and_the_database_kept(capsys, tmp_path):
    db = _database(tmp_path / "t.db")
    # Checkpointed, as a database a collector ran on for a while is.
    import sqlite3

    with sqlite3.connect(tmp_path / "t.db") as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert main(["export", "--csv", "--db", db, "-o", str(tmp_path / "t.db")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    assert main(["export", "--csv", "--db", db]) == 0, capsys.readouterr().err
    assert ROUTE in capsys.readouterr().out


# -- standard output that is not UTF-8, or cannot be written ----------------------------------


def test_export_to_a_latin1_stdout_is_the_same_utf8_csv_as_a_file(tmp_path):
    db = _database(tmp_path / "t.db")
    to_file = _export("--db", db, "-o", str(tmp_path / "out.csv"))
    assert to_file.returncode == 0, to_file.stderr
    to_stdout = _export("--db", db, env={"PYTHONIOENCODING": "latin-1"})
    assert b"Traceback" not in to_stdout.stderr, to_stdout.stderr.decode()
    assert to_stdout.returncode == 0
    assert to_stdout.stdout == (tmp_path / "out.csv").read_bytes()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_export_to_a_full_stdout_is_one_line(tmp_path):
    db = _database(tmp_path / "t.db")
    with open("/dev/full", "wb") as full:
        result = _export("--db", db, stdout=full, stderr=subprocess.PIPE)
    err = result.stderr.decode()
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert result.returncode == 2
    assert err.count("\n") == 1 and err.startswith("reqtelemetry export: error: "), err


# -- the help, with a password in REQTELEMETRY_COLLECTOR_DB ------------------------------------


@pytest.mark.parametrize("command", ["collector", "export", "prune"])
def test_help_shows_no_password_of_the_database_variable(capsys, monkeypatch, command):
    monkeypatch.setenv(
        "REQTELEMETRY_COLLECTOR_DB", "postgresql://telemetry:Hunter2pw@db.internal/telemetry"
    )
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Hunter2pw" not in out.replace(" ", "").replace("-", "")
    assert "db.internal" in out  # still says which database


def _help(monkeypatch, capsys, command: str, url: str) -> str:
    monkeypatch.setenv("REQTELEMETRY_COLLECTOR_DB", url)
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split()).replace(" ", "")


@pytest.mark.parametrize("command", ["collector", "export", "prune"])
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # Percent-encoding (an "@" in the user name), and a "%" in a file name.
        ("postgresql://app%40corp:Hunter2pw@db.internal/telemetry", "db.internal"),
        ("sqlite:///data/100%.db", "100%.db"),
    ],
)
def test_help_with_a_percent_in_the_database_url_is_no_traceback(
    capsys, monkeypatch, command, url, shown
):
    out = _help(monkeypatch, capsys, command, url)
    assert shown in out and "Hunter2pw" not in out.replace("-", "")


@pytest.mark.parametrize("command", ["collector", "export", "prune"])
def test_help_hides_the_password_of_a_url_the_collector_refuses(capsys, monkeypatch, command):
    # SQLAlchemy's spelling, refused by the collector: --help is where one looks next.
    url = "postgresql+psycopg://telemetry:Hunter2pw@db.internal/telemetry"
    out = _help(monkeypatch, capsys, command, url)
    assert "db.internal" in out and "Hunter2pw" not in out.replace("-", "")
