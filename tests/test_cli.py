"""``reqtelemetry inspect``: the report this environment would send, and nothing sent.

Called in-process (``reqtelemetry.cli.main``) and as the installed console
script in a subprocess; both print JSON valid against the schema that carries
none of the sample identifiers, and neither connects anywhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    environment = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT_KNOBS}
    environment.update(env)
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


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
