"""Opted out means gone: no thread, no file, no connection — for every way of opting out.

The endpoint is a plain listening socket (``silent_endpoint``) whose accept
queue must stay empty; ``send_in_tests=True`` and a short flush interval make
sure that only the opt-out stands between the code and a connection.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from reqtelemetry import ASGIMiddleware, Config, Telemetry

OPT_OUT_VARIABLES = ("SQA_OPT_OUT", "REQTELEMETRY_OPT_OUT", "DO_NOT_TRACK")

WAYS = {
    "SQA_OPT_OUT": ("env", "SQA_OPT_OUT", "true"),
    "REQTELEMETRY_OPT_OUT": ("env", "REQTELEMETRY_OPT_OUT", "1"),
    "DO_NOT_TRACK": ("env", "DO_NOT_TRACK", "1"),
    "opt_out=True": ("argument", "opt_out", True),
    "--sqa-opt-out": ("argv", "--sqa-opt-out", None),
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in OPT_OUT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("REQTELEMETRY_DEBUG", raising=False)
    # Where the default deployment id would go (platformdirs reads XDG_DATA_HOME).
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "argv", ["app.py"])


def opt_out(way: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Apply one way of opting out; the code options it needs."""
    kind, name, value = WAYS[way]
    if kind == "env":
        monkeypatch.setenv(name, value)
        return {}
    if kind == "argv":
        monkeypatch.setattr(sys, "argv", ["app.py", "--port", "8000", name])
        return {}
    return {name: value}


def flusher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "reqtelemetry-flusher"]


def app_with(telemetry: Telemetry) -> ASGIMiddleware:
    async def hello(request):
        return PlainTextResponse("hello")

    return ASGIMiddleware(Starlette(routes=[Route("/hello/{name}", hello)]), telemetry=telemetry)


@pytest.mark.parametrize("way", list(WAYS))
def test_opted_out_makes_no_thread_no_file_and_no_connection(
    way, monkeypatch, silent_endpoint, tmp_path
):
    options = opt_out(way, monkeypatch)
    threads_before = set(flusher_threads())
    id_path = tmp_path / "deployment_id"
    telemetry = Telemetry(
        endpoint=silent_endpoint.url,
        send_in_tests=True,
        flush_interval=0.05,
        retry_base_delay=0.01,
        deployment_id_path=str(id_path),
        **options,
    )
    assert not telemetry.enabled
    assert not telemetry.sending
    assert telemetry.config.opt_out_reason
    assert telemetry.flusher is None
    with TestClient(app_with(telemetry)) as client:  # lifespan start and shutdown too
        for name in ("alice", "bob"):
            assert client.get(f"/hello/{name}").text == "hello"
    telemetry.count("feature.used")
    telemetry.gauge("queue.depth", lambda: 3)
    assert telemetry.snapshot() == []
    assert telemetry.flush() is False
    assert telemetry.close() is False
    assert set(flusher_threads()) == threads_before
    assert not id_path.exists()
    assert not (tmp_path / "xdg").exists()
    silent_endpoint.assert_no_connection()


@pytest.mark.parametrize("way", list(WAYS))
def test_opted_out_with_the_default_deployment_id_path_writes_nothing(
    way, monkeypatch, silent_endpoint, tmp_path
):
    options = opt_out(way, monkeypatch)
    telemetry = Telemetry(endpoint=silent_endpoint.url, send_in_tests=True, **options)
    telemetry.flush()
    telemetry.close()
    assert not (tmp_path / "xdg").exists()
    assert not (tmp_path / "home").exists()
    silent_endpoint.assert_no_connection(wait=0.05)


@pytest.mark.parametrize("way", list(WAYS))
def test_middleware_built_from_options_honours_the_opt_out(way, monkeypatch, silent_endpoint):
    options = opt_out(way, monkeypatch)

    async def hello(request):
        return PlainTextResponse("hello")

    app = ASGIMiddleware(
        Starlette(routes=[Route("/", hello)]),
        endpoint=silent_endpoint.url,
        send_in_tests=True,
        **options,
    )
    with TestClient(app) as client:
        assert client.get("/").text == "hello"
    assert app.telemetry.flusher is None
    silent_endpoint.assert_no_connection(wait=0.05)


@pytest.mark.parametrize("way", [w for w in WAYS if WAYS[w][0] != "argument"])
@pytest.mark.parametrize("made_by", ["Config()", "Config.resolve(environ={})"])
def test_a_ready_config_honours_the_environment_and_argv_opt_out(
    way, made_by, monkeypatch, silent_endpoint
):
    opt_out(way, monkeypatch)
    options = {"endpoint": silent_endpoint.url, "send_in_tests": True, "flush_interval": 3600}
    if made_by == "Config()":
        config = Config(**options)
    else:  # resolved, but against another environment and command line
        config = Config.resolve(environ={}, argv=[], **options)
    assert config.enabled
    telemetry = Telemetry(config=config)
    assert not telemetry.enabled
    assert not telemetry.sending
    assert telemetry.flusher is None
    assert WAYS[way][1] in telemetry.config.opt_out_reason
    assert telemetry.flush() is False
    silent_endpoint.assert_no_connection(wait=0.05)


def test_a_ready_config_from_django_settings_honours_the_environment_opt_out(
    monkeypatch, silent_endpoint
):
    from conftest import configure_django

    configure_django()
    from django.test import override_settings

    from reqtelemetry.django import get_telemetry, reset_telemetry

    monkeypatch.setenv("DO_NOT_TRACK", "1")
    config = Config(endpoint=silent_endpoint.url, send_in_tests=True)
    reset_telemetry()
    try:
        with override_settings(REQTELEMETRY={"config": config}):
            telemetry = get_telemetry()
            assert not telemetry.enabled
            assert telemetry.flusher is None
    finally:
        reset_telemetry()
    silent_endpoint.assert_no_connection(wait=0.05)


def test_a_ready_config_with_opt_out_true_says_why():
    telemetry = Telemetry(config=Config(opt_out=True))
    assert not telemetry.enabled
    assert "opt_out=True" in telemetry.config.opt_out_reason


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SQA_OPT_OUT", "false"),
        ("REQTELEMETRY_OPT_OUT", "0"),
        ("DO_NOT_TRACK", "0"),
        ("DO_NOT_TRACK", ""),
    ],
)
def test_values_that_do_not_opt_out_do_send(variable, value, monkeypatch, receiver, tmp_path):
    """The other side of the silent checks: the same set-up does connect when not opted out."""
    monkeypatch.setenv(variable, value)
    telemetry = Telemetry(
        endpoint=receiver.url,
        send_in_tests=True,
        deployment_id_path=str(tmp_path / "id"),
        flush_interval=3600,
    )
    try:
        assert telemetry.enabled
        assert telemetry.flush() is True
    finally:
        telemetry.close()
    assert receiver.reports_from(telemetry.instance_id)
    assert (tmp_path / "id").exists()


def test_the_environment_wins_over_the_code(monkeypatch, silent_endpoint):
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    telemetry = Telemetry(endpoint=silent_endpoint.url, send_in_tests=True, opt_out=False)
    assert not telemetry.enabled
    assert telemetry.config.opt_out_reason == "DO_NOT_TRACK is set"
    silent_endpoint.assert_no_connection(wait=0.05)
