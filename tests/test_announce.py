"""The one start-up log line: on or off, where reports go, how to opt out."""

from __future__ import annotations

import logging

import pytest

from reqtelemetry import Config, Telemetry


def announced(caplog: pytest.LogCaptureFixture, **options) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reqtelemetry"):
        telemetry = Telemetry(
            config=Config.resolve(environ=options.pop("environ", {}), argv=[], **options)
        )
        telemetry.close(timeout=1.0)
    return [r.getMessage() for r in caplog.records if "usage telemetry is" in r.getMessage()]


def test_on_says_where_what_and_how_to_opt_out(caplog, receiver, tmp_path):
    (line,) = announced(
        caplog,
        endpoint=receiver.url,
        send_in_tests=True,
        deployment_id_path=str(tmp_path / "id"),
        retry_base_delay=0.01,
    )
    assert "is on" in line
    assert receiver.url in line
    assert "SQA_OPT_OUT=true" in line and "DO_NOT_TRACK=1" in line
    assert "REQTELEMETRY_DEBUG=1" in line and "reqtelemetry inspect" in line


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (
            {"environ": {"SQA_OPT_OUT": "true"}, "endpoint": "http://127.0.0.1:9"},
            "SQA_OPT_OUT is set",
        ),
        (
            {"environ": {"DO_NOT_TRACK": "1"}, "endpoint": "http://127.0.0.1:9"},
            "DO_NOT_TRACK is set",
        ),
        ({}, "no endpoint is configured"),
        ({"endpoint": "http://127.0.0.1:9"}, "running under a test runner"),
    ],
)
def test_off_says_why(caplog, options, reason):
    (line,) = announced(caplog, **options)
    assert "is off" in line
    assert reason in line


def test_debug_mode_says_reports_go_to_stderr(caplog, tmp_path):
    (line,) = announced(caplog, debug=True, deployment_id_path=str(tmp_path / "id"))
    assert "is on" in line and "stderr" in line


def test_credentials_in_the_endpoint_are_not_logged(caplog, receiver, tmp_path):
    scheme, rest = receiver.url.split("://", 1)
    endpoint = f"{scheme}://svc:canary-password@{rest}"
    (line,) = announced(
        caplog,
        endpoint=endpoint,
        send_in_tests=True,
        deployment_id_path=str(tmp_path / "id"),
        max_attempts=1,
        timeout=0.5,
    )
    assert receiver.url in line
    assert "canary" not in line


def test_an_opted_out_apps_bad_setting_is_named_not_quoted(caplog):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reqtelemetry"):
        config = Config.resolve(
            environ={"SQA_OPT_OUT": "true", "REQTELEMETRY_MAX_KEYS": "canary-secret-token"},
            argv=[],
        )
    assert not config.enabled
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "REQTELEMETRY_MAX_KEYS" in text
    assert "canary" not in text


# -- visible when nothing configures logging (uvicorn, gunicorn, flask run) ---------------

ANNOUNCING_APP = """
import logging, sys
{logging_setup}
from reqtelemetry import Config, Telemetry
telemetry = Telemetry(config=Config.resolve(
    environ={{}}, argv=[], debug=True, deployment_id_path=sys.argv[1]))
telemetry.close(timeout=1.0)
"""


def run_app(tmp_path, logging_setup: str = "") -> list[str]:
    """The lines of a child app's stderr that carry the "is on" notice."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("REQTELEMETRY_")}
    for name in ("SQA_OPT_OUT", "DO_NOT_TRACK"):
        env.pop(name, None)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            ANNOUNCING_APP.format(logging_setup=logging_setup),
            str(tmp_path / "id"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return [line for line in done.stderr.splitlines() if "usage telemetry is on" in line]


def test_the_notice_reaches_stderr_when_logging_is_unconfigured(tmp_path):
    # As under uvicorn/gunicorn/flask run: no handler for "reqtelemetry" or root,
    # and the last-resort handler would drop an INFO record.
    (line,) = run_app(tmp_path)
    assert line.startswith("reqtelemetry: anonymous usage telemetry is on")
    assert "SQA_OPT_OUT=true" in line and "DO_NOT_TRACK=1" in line


def test_the_notice_goes_through_the_apps_logging_once(tmp_path):
    setup = "logging.basicConfig(level=logging.INFO, format='LOGGED %(name)s %(message)s')"
    (line,) = run_app(tmp_path, setup)
    assert line.startswith("LOGGED reqtelemetry reqtelemetry: anonymous usage telemetry is on")


def test_an_app_that_silenced_info_logging_is_respected(tmp_path):
    assert run_app(tmp_path, "logging.basicConfig(level=logging.WARNING)") == []


@pytest.mark.parametrize(
    "setup",
    [
        "logging.getLogger('reqtelemetry').setLevel(logging.WARNING)",
        "logging.disable(logging.INFO)",
    ],
)
def test_an_app_that_turned_the_lines_off_without_a_handler_is_respected(tmp_path, setup):
    assert run_app(tmp_path, setup) == []
