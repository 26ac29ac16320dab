"""Shared fixtures: telemetry built without reading the real process environment."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from receiver import Receiver, SilentEndpoint, settle
from reqtelemetry import Config, Telemetry


def make_config(**options: Any) -> Config:
    """A resolved config that ignores the real environment and command line."""
    return Config.resolve(environ={}, argv=[], **options)


@pytest.fixture(autouse=True)
def _no_opt_out_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own ``DO_NOT_TRACK=1`` must not switch off the suite's telemetry:
    the opt-out variables apply to ``Telemetry(config=...)`` too. Tests that opt out
    set them themselves."""
    for name in ("SQA_OPT_OUT", "REQTELEMETRY_OPT_OUT", "DO_NOT_TRACK"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _warnings_said_once_start_unsaid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Some warnings are said once per process (module flags): each test starts as
    a fresh process would, so that what it sees does not depend on the tests before."""
    from reqtelemetry import flusher, said_once

    monkeypatch.setattr(flusher, "_failure_warned", False)
    monkeypatch.setattr(said_once, "_said", set())


@pytest.fixture
def make_telemetry() -> Callable[..., Telemetry]:
    """``make_telemetry(**config_options)``: an enabled Telemetry, independent of os.environ."""

    def factory(**options: Any) -> Telemetry:
        return Telemetry(config=make_config(**options))

    return factory


@pytest.fixture
def telemetry(make_telemetry: Callable[..., Telemetry]) -> Telemetry:
    """A default, enabled Telemetry."""
    return make_telemetry()


def _records_by_key(telemetry: Telemetry) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["method"], r["route"], r["status"]): r for r in telemetry.snapshot()}


@pytest.fixture
def records() -> Callable[[Telemetry], dict[tuple[str, str, int], dict[str, Any]]]:
    """``records(telemetry)``: the snapshot as ``{(method, route, status): record}``."""
    return _records_by_key


@pytest.fixture
def counts() -> Callable[[Telemetry], dict[tuple[str, str, int], int]]:
    """``counts(telemetry)``: the snapshot as ``{(method, route, status): count}``."""

    def read(telemetry: Telemetry) -> dict[tuple[str, str, int], int]:
        return {key: record["count"] for key, record in _records_by_key(telemetry).items()}

    return read


# -- real HTTP on loopback (tests/receiver.py) ------------------------------------


@pytest.fixture(scope="session")
def _receiver_server() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def receiver(_receiver_server: Receiver) -> Iterator[Receiver]:
    """A collector stand-in on 127.0.0.1 (uvicorn + Starlette), fresh for each test.

    Every payload it receives is checked against the JSON Schema; a test whose
    client sent an invalid one fails at teardown.
    """
    _receiver_server.reset()
    yield _receiver_server
    errors = _receiver_server.all_schema_errors()
    _receiver_server.reset()
    assert not errors, "invalid payloads were received:\n" + "\n".join(errors)


@pytest.fixture
def silent_endpoint() -> Iterator[SilentEndpoint]:
    """A listening socket that must see no connection (``.url``, ``.assert_no_connection()``)."""
    endpoint = SilentEndpoint()
    yield endpoint
    endpoint.close()


#: Options that make a sending Telemetry fast and predictable in tests.
SENDER_DEFAULTS: dict[str, Any] = {
    "send_in_tests": True,
    "flush_interval": 3600.0,
    "retry_base_delay": 0.01,
    "max_attempts": 3,
    "timeout": 2.0,
    "shutdown_timeout": 2.0,
}


@pytest.fixture
def make_sender(receiver: Receiver, tmp_path: Any) -> Iterator[Callable[..., Telemetry]]:
    """``make_sender(**options)``: a Telemetry reporting to ``receiver``, closed after the test.

    Independent of the real environment; the deployment id lives in ``tmp_path``.
    With ``served=True`` (the default) it is an instance that has served its
    first request, whose startup report goes at once; with ``settled=True``
    (the default) it returns once the startup report's send has ended, so
    programmed answers apply to the test's own flushes.
    """
    created: list[Telemetry] = []

    def factory(settled: bool = True, served: bool = True, **options: Any) -> Telemetry:
        merged = {
            "endpoint": receiver.url,
            "deployment_id_path": str(tmp_path / "deployment_id"),
            **SENDER_DEFAULTS,
            **options,
        }
        telemetry = Telemetry(config=make_config(**merged))
        created.append(telemetry)
        if served:
            telemetry.note_first_request(None)
        if settled and served and telemetry.flusher is not None:
            settle(telemetry)
        return telemetry

    yield factory
    for telemetry in created:
        telemetry.close(timeout=1.0)


# -- Django ------------------------------------------------------------------------


def configure_django() -> None:
    """Configure Django once per process, only for the tests that need it."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="reqtelemetry-tests",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF="django_test_urls",
            MIDDLEWARE=["reqtelemetry.django.TelemetryMiddleware"],
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
            REQTELEMETRY={"app_name": "reqtelemetry-tests"},
        )
        django.setup()


@pytest.fixture
def django_telemetry_factory():
    """``factory(**config_options)``: the Telemetry the Django middleware will use.

    Puts a fresh instance in ``settings.REQTELEMETRY`` and resets the shared one,
    so each test (and each new test client) starts from zero.
    """
    configure_django()
    from django.test import override_settings

    from reqtelemetry.django import reset_telemetry

    overrides = []

    def factory(**options: Any) -> Telemetry:
        instance = Telemetry(config=make_config(**options))
        override = override_settings(REQTELEMETRY={"telemetry": instance})
        override.enable()
        overrides.append(override)
        reset_telemetry()
        return instance

    yield factory
    for override in reversed(overrides):
        override.disable()
    reset_telemetry()


@pytest.fixture
def django_telemetry(django_telemetry_factory) -> Telemetry:
    """The default Telemetry behind Django's middleware, fresh for this test."""
    return django_telemetry_factory()


# -- PostgreSQL (tests/postgres.py) --------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for this session: ``REQTELEMETRY_TEST_POSTGRES_URL`` if set,
    else a throwaway cluster from the installed binaries, stopped and deleted at the end.
    Skips the test when neither is available. Use ``scratch_schema`` for isolation."""
    import os

    from postgres import URL_VARIABLE, PostgresUnavailable, ThrowawayCluster

    given = os.environ.get(URL_VARIABLE)
    if given:
        yield given
        return
    try:
        cluster = ThrowawayCluster()
    except PostgresUnavailable as missing:
        pytest.skip(str(missing))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
