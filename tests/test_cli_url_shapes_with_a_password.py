"""Database URLs the collector refuses, whose password --help and the refusal
showed: a URL a slash or a colon short whose parameters hold a "://" (all
before it was quoted as its scheme), and one without its scheme, or with a
misspelt one, which was taken for a SQLite file: a database was made under a
directory named after it, and the start line showed its password."""

from __future__ import annotations

import pytest

from reqtelemetry.cli import main
from reqtelemetry.collector.storage import open_storage

URLS = [
    # A slash or a colon short.
    "postgresql:/telemetry:Hunter2pw@db.internal/telemetry",
    "postgres:telemetry:Hunter2pw@db.internal/telemetry",
    "postgresql//telemetry:Hunter2pw@db.internal/telemetry",
    "postgresql:/telemetry:Hunter2pw@db.internal/telemetry?sslrootcert=file://ca.pem",
    "telemetry:Hunter2pw@db.internal:5432/telemetry",
    "postgre:/telemetry:Hunter2pw@db.internal/telemetry",
    "pgsql:/telemetry:Hunter2pw@db.internal/telemetry",
    "//telemetry:Hunter2pw@db.internal/telemetry",
]


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("command", ["collector", "export", "prune"])
def test_help_hides_the_password(capsys, monkeypatch, command, url):
    monkeypatch.setenv("REQTELEMETRY_COLLECTOR_DB", url)
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    out = " ".join(capsys.readouterr().out.split()).replace(" ", "").replace("-", "")
    assert "***" in out and "Hunter2pw" not in out


@pytest.mark.parametrize("url", URLS)
def test_the_refusal_hides_the_password(monkeypatch, tmp_path, url):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as refused:
        open_storage(url)
    assert "Hunter2pw" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []  # no SQLite file made under its name


def test_the_collector_refuses_quoting_no_password(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["collector", "--db", URLS[0], "--port", "0"])
    except SystemExit as stop:  # the refusal as argparse's error
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert "postgresql:" in err and "Hunter2pw" not in err
