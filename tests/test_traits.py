"""System traits and the deployment id: coarse, withholdable, never identifying."""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
import stat
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from reqtelemetry.config import Config
from reqtelemetry.traits import (
    _CI_VARIABLES,
    TRAIT_NAMES,
    SystemTraits,
    detect_ci,
    detect_container,
    detect_server,
    detect_test_runner,
    load_deployment_id,
)

SCALARS = (str, int, float, bool, type(None))
DEVELOPMENT_VARIABLES = ("FLASK_DEBUG", "FLASK_ENV", "DJANGO_DEBUG", "PYTHONDEVMODE")


def make_config(**options: object) -> Config:
    return Config.resolve(environ={}, argv=[], **options)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No CI, container or development variables from the machine running the tests."""
    for name in (
        "CI",
        *_CI_VARIABLES,
        "KUBERNETES_SERVICE_HOST",
        "container",
        *DEVELOPMENT_VARIABLES,
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- the traits ---------------------------------------------------------------------


def test_all_traits_present_in_order_and_scalar() -> None:
    traits, withheld = SystemTraits(make_config()).current()
    assert tuple(traits) == TRAIT_NAMES
    assert withheld == []
    assert all(isinstance(value, SCALARS) for value in traits.values())
    assert traits["os"] == traits["os"].lower()
    assert traits["cpu_count"] == os.cpu_count()
    assert traits["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(traits["memory_rss_bytes"], int) and traits["memory_rss_bytes"] > 0
    for name in ("container", "ci", "development"):
        assert isinstance(traits[name], bool)


def test_app_traits_come_from_config() -> None:
    config = make_config(
        app_name="inventory",
        app_version="2.4.1",
        app_git_hash="9f2c1e7",
        app_build_time="2025-11-20T14:03:00Z",
    )
    traits, _ = SystemTraits(config).current()
    assert traits["app_name"] == "inventory"
    assert traits["app_version"] == "2.4.1"
    assert traits["app_git_hash"] == "9f2c1e7"
    assert traits["app_build_time"] == "2025-11-20T14:03:00Z"


def test_withheld_traits_are_absent_and_listed_sorted() -> None:
    config = make_config(disabled_traits="uptime_seconds,memory_rss_bytes,os")
    traits, withheld = SystemTraits(config).current()
    assert withheld == ["memory_rss_bytes", "os", "uptime_seconds"]
    assert tuple(traits) == tuple(n for n in TRAIT_NAMES if n not in withheld)


def test_withheld_from_environment_variable() -> None:
    config = Config.resolve(environ={"REQTELEMETRY_DISABLE": "cpu_count, development"}, argv=[])
    traits, withheld = SystemTraits(config).current()
    assert withheld == ["cpu_count", "development"]
    assert "cpu_count" not in traits and "development" not in traits


@pytest.mark.parametrize(
    ("withheld", "detected"),
    [
        ("framework,framework_version,server,server_version", set()),
        ("framework,server", {"framework", "server"}),  # their versions are still sent
        ("framework,framework_version", {"server"}),
    ],
)
def test_a_withheld_trait_is_not_even_worked_out(
    withheld: str, detected: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/payload.md says so; the framework and the server were still
    # detected (modules and their metadata read) at every report.
    import reqtelemetry.traits as traits_module

    ran: set[str] = set()

    def detected_as(name: str) -> Callable[[], tuple[str, str]]:
        def detect() -> tuple[str, str]:
            ran.add(name)
            return (f"some-{name}", "1.0")

        return detect

    monkeypatch.setattr(traits_module, "detect_framework", detected_as("framework"))
    monkeypatch.setattr(traits_module, "detect_server", detected_as("server"))
    traits, _ = SystemTraits(make_config(disabled_traits=withheld)).current()
    assert ran == detected
    assert not set(withheld.split(",")) & set(traits)


def test_withheld_development_stays_absent_after_note() -> None:
    system = SystemTraits(make_config(disabled_traits=["development"]))
    system.note_development("debug mode")
    traits, withheld = system.current()
    assert "development" not in traits
    assert withheld == ["development"]


def test_unknown_disabled_trait_raises_with_valid_names() -> None:
    with pytest.raises(ValueError) as error:
        SystemTraits(make_config(disabled_traits=["memory", "hostname"]))
    message = str(error.value)
    assert "hostname" in message and "memory" in message
    for name in TRAIT_NAMES:
        assert name in message


def test_nothing_identifying_in_traits() -> None:
    traits, _ = SystemTraits(make_config()).current()
    text = json.dumps(traits)
    forbidden = {
        socket.gethostname(),
        socket.getfqdn(),
        str(Path.home()),
        os.getcwd(),
        sys.executable,
        sys.prefix,
    }
    with contextlib.suppress(Exception):  # no user name in some containers
        forbidden.add(getpass.getuser())
    forbidden.discard("")
    for value in traits.values():
        assert value not in forbidden, value
    for value in forbidden:
        if len(value) > 3:  # a short hostname ("vm") may be part of a version by chance
            assert value not in text, value
    assert "/" not in "".join(v for v in traits.values() if isinstance(v, str))


def test_uptime_counts_from_started_at() -> None:
    import time

    traits, _ = SystemTraits(make_config(), started_at=time.time() - 100).current()
    assert 99.0 <= traits["uptime_seconds"] < 160.0
    traits, _ = SystemTraits(make_config()).current()
    assert 0.0 <= traits["uptime_seconds"] < 60.0


def test_note_development(clean_env: pytest.MonkeyPatch) -> None:
    system = SystemTraits(make_config())
    if sys.flags.dev_mode:
        pytest.skip("the test interpreter runs in development mode")
    assert system.current()[0]["development"] is False
    system.note_development("Host: localhost")
    assert system.current()[0]["development"] is True
    assert system.development_reason == "Host: localhost"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FLASK_DEBUG", "1"),
        ("DJANGO_DEBUG", "true"),
        ("PYTHONDEVMODE", "1"),
        ("FLASK_ENV", "development"),
    ],
)
def test_development_from_environment(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    assert SystemTraits(make_config()).current()[0]["development"] is True


def test_ci_detection_from_environment(clean_env: pytest.MonkeyPatch) -> None:
    assert detect_ci() is False
    assert SystemTraits(make_config()).current()[0]["ci"] is False
    clean_env.setenv("CI", "false")
    assert detect_ci() is False
    clean_env.setenv("GITHUB_ACTIONS", "true")
    assert detect_ci() is True
    assert SystemTraits(make_config()).current()[0]["ci"] is True
    clean_env.delenv("GITHUB_ACTIONS")
    clean_env.setenv("CI", "true")
    assert detect_ci() is True


def test_container_detection_from_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    traits, _ = SystemTraits(make_config()).current()
    assert traits["container"] is True
    assert "10.0.0.1" not in json.dumps(traits)


def test_container_detection_from_files(tmp_path: Path) -> None:
    assert detect_container(environ={}, root=str(tmp_path)) is False
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "cgroup").write_text("0::/init.scope\n")
    assert detect_container(environ={}, root=str(tmp_path)) is False
    (tmp_path / "proc" / "1" / "cgroup").write_text("0::/kubepods/besteffort/pod1234\n")
    assert detect_container(environ={}, root=str(tmp_path)) is True
    other = tmp_path / "other"
    other.mkdir()
    (other / ".dockerenv").touch()
    assert detect_container(environ={}, root=str(other)) is True
    podman = tmp_path / "podman"
    (podman / "run").mkdir(parents=True)
    (podman / "run" / ".containerenv").touch()
    assert detect_container(environ={}, root=str(podman)) is True


def test_server_detection() -> None:
    assert detect_server(modules={}, argv=["/usr/bin/gunicorn", "app:app"], environ={})[0] == (
        "gunicorn"
    )
    assert detect_server(modules={}, argv=["/venv/lib/uvicorn/__main__.py"], environ={})[0] == (
        "uvicorn"
    )
    assert detect_server(modules={}, argv=["waitress-serve"], environ={})[0] == "waitress"
    assert detect_server(modules={}, argv=["manage.py", "runserver"], environ={})[0] == (
        "django-runserver"
    )
    # python -m django runserver, and django-admin runserver: the same server.
    for launcher in ("/venv/lib/django/__main__.py", "/venv/bin/django-admin"):
        assert detect_server(modules={}, argv=[launcher, "runserver"], environ={})[0] == (
            "django-runserver"
        )
    assert detect_server(modules={"uvicorn.server": None}, argv=["app.py"], environ={})[0] == (
        "uvicorn"
    )
    both = {"uvicorn.server": None, "gunicorn.arbiter": None}
    assert detect_server(modules=both, argv=["app.py"], environ={})[0] == "gunicorn"
    # Flask imports werkzeug.serving: that alone is no evidence of the dev server.
    assert detect_server(modules={"werkzeug.serving": None}, argv=["app.py"], environ={}) == (
        None,
        None,
    )
    assert (
        detect_server(
            modules={"werkzeug.serving": None},
            argv=["app.py"],
            environ={"WERKZEUG_RUN_MAIN": "true"},
        )[0]
        == "werkzeug"
    )
    assert detect_server(modules={}, argv=[], environ={}) == (None, None)


def test_framework_detected_lazily_after_import() -> None:
    import flask  # noqa: F401  (the framework is imported; fastapi/django may be too)

    traits, _ = SystemTraits(make_config()).current()
    assert traits["framework"] in {"fastapi", "django", "flask"}
    assert isinstance(traits["framework_version"], str)


def test_traits_validate_against_payload_schema() -> None:
    import jsonschema

    from reqtelemetry.schema_loader import load_payload_schema

    schema = load_payload_schema()
    assert tuple(schema["$defs"]["traits"]["properties"]) == TRAIT_NAMES
    assert tuple(schema["$defs"]["trait_name"]["enum"]) == TRAIT_NAMES
    traits_schema = {
        "$schema": schema["$schema"],
        "$defs": schema["$defs"],
        "$ref": "#/$defs/traits",
    }
    for config in (make_config(app_name="x"), make_config(disabled_traits=["os", "ci"])):
        traits, _ = SystemTraits(config).current()
        jsonschema.validate(traits, traits_schema, cls=jsonschema.Draft202012Validator)


def test_text_traits_are_cut_to_the_schemas_limit() -> None:
    from reqtelemetry.schema_loader import load_payload_schema
    from reqtelemetry.traits import MAX_TEXT_LENGTH

    assert load_payload_schema()["$defs"]["short_text"]["maxLength"] == MAX_TEXT_LENGTH
    long_version = "1.0+" + "g" * 130
    config = make_config(app_name="n" * 500, app_version=long_version, app_git_hash="abc")
    traits, _ = SystemTraits(config).current()
    assert traits["app_version"] == long_version[:MAX_TEXT_LENGTH]
    assert traits["app_name"] == "n" * MAX_TEXT_LENGTH
    assert traits["app_git_hash"] == "abc"
    assert all(len(v) <= MAX_TEXT_LENGTH for v in traits.values() if isinstance(v, str))


@pytest.mark.parametrize("name", ["app_name", "app_version", "app_git_hash", "app_build_time"])
@pytest.mark.parametrize("value", [3.1, 3, b"3.1", ["3.1"]])
def test_a_non_string_app_trait_is_a_clear_error_at_start(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a string"):
        make_config(**{name: value})


@pytest.mark.parametrize(
    "argv",
    [
        ["/venv/bin/pytest", "-q"],
        ["py.test"],
        ["/venv/lib/python3.11/site-packages/pytest/__main__.py", "tests"],  # python -m pytest
        ["/usr/bin/python3 -m unittest", "-q", "tests"],  # as python -m unittest leaves it
        ["manage.py", "test"],
        ["/srv/app/manage.py", "test", "orders"],
        ["/venv/bin/django-admin", "test"],
        ["/venv/lib/python3.11/site-packages/django/__main__.py", "test"],  # python -m django
    ],
)
def test_test_runners_are_detected_from_the_command(argv: list[str]) -> None:
    assert detect_test_runner(environ={}, argv=argv, modules={}) is not None


@pytest.mark.parametrize(
    "argv",
    [
        ["/venv/bin/gunicorn", "app:app"],
        ["/venv/bin/uvicorn", "app:app"],
        ["manage.py", "runserver"],
        ["manage.py", "migrate", "test"],
        ["/venv/bin/django-admin", "shell"],
        ["/venv/lib/python3.11/site-packages/django/__main__.py", "runserver"],
        ["app.py"],
        ["/srv/pytest-dashboard/app.py"],  # a name that merely contains "pytest"
        ["-c"],
        [],
    ],
)
def test_serving_processes_are_not_taken_for_tests(argv: list[str]) -> None:
    # pytest and unittest imported (as any app may) are no evidence either.
    modules = {"pytest": sys.modules["pytest"], "unittest": sys.modules["unittest"]}
    assert detect_test_runner(environ={"CI": "1"}, argv=argv, modules=modules) is None


@pytest.mark.parametrize("variable", ["PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER"])
def test_pytests_variables_mean_a_test_run(variable: str) -> None:
    assert detect_test_runner(environ={variable: "x"}, argv=["-c"], modules={})


def test_django_test_environment_is_a_test_run() -> None:
    from conftest import configure_django

    configure_django()
    from django.test.utils import setup_test_environment, teardown_test_environment

    assert detect_test_runner(environ={}, argv=["app.py"]) is None
    setup_test_environment()
    try:
        assert "Django" in detect_test_runner(environ={}, argv=["app.py"])
    finally:
        teardown_test_environment()
    assert detect_test_runner(environ={}, argv=["app.py"]) is None


# -- the deployment id ------------------------------------------------------------


def test_deployment_id_persisted_with_mode_0600_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "data" / "deployment_id"
    first, how = load_deployment_id(str(path))
    assert how == "persisted"
    assert str(uuid.UUID(first)) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first
    assert load_deployment_id(str(path)) == (first, "persisted")
    assert [p.name for p in path.parent.iterdir()] == ["deployment_id"]  # no temp files left


@pytest.mark.parametrize("ending", ["\n", ""], ids=["as written", "cut before its newline"])
def test_existing_id_is_read(tmp_path: Path, ending: str) -> None:
    # The file as every version of this module wrote it: an upgrade keeps its id.
    path = tmp_path / "deployment_id"
    known = "66b45185-3674-4fb0-be40-154cd0413851"
    path.write_bytes((known + ending).encode("ascii"))
    assert load_deployment_id(str(path)) == (known, "persisted")
    assert path.read_bytes() == (known + ending).encode("ascii")


@pytest.mark.parametrize(
    "content",
    [
        b"3d1219c7c4c5404aaa1f6d2a48adfda4\n",  # /etc/machine-id, /var/lib/dbus/machine-id
        b"66B45185-3674-4FB0-BE40-154CD0413851\n",  # a UUID in capitals: not written here
        b"{66b45185-3674-4fb0-be40-154cd0413851}\n",
        b"urn:uuid:66b45185-3674-4fb0-be40-154cd0413851\n",
        b"66b45185-3674-4fb0-be40-154cd0413851\r\n",
        b" 66b45185-3674-4fb0-be40-154cd0413851\n",
        b"c232ab00-9414-11ec-b3c8-9e6bdeced846\n",  # version 1: a MAC address and a time
    ],
)
def test_only_an_id_of_the_shape_written_here_is_adopted(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # Anything a UUID parser takes, adopted, would be sent as the deployment id:
    # pointed at /etc/machine-id, that is a durable identifier of the machine.
    path = tmp_path / "deployment_id"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        found, how = load_deployment_id(str(path))
    assert how == "read-only"
    assert found.replace("-", "") not in content.decode("ascii").lower().replace("-", "")
    assert path.read_bytes() == content  # left alone, byte for byte
    assert [r for r in caplog.records if str(path) in r.getMessage()]


@pytest.mark.parametrize("content", ["", "66b45185-3674-4f", "\x00" * 37, "66b45185\x00\x00"])
def test_a_damaged_id_file_is_replaced(tmp_path: Path, content: str) -> None:
    # Empty, cut short, or zero-filled: what a crash while writing one leaves.
    path = tmp_path / "deployment_id"
    path.write_text(content, encoding="latin-1")
    new, how = load_deployment_id(str(path))
    assert how == "persisted"
    assert str(uuid.UUID(new)) == new
    assert path.read_text().strip() == new
    assert load_deployment_id(str(path)) == (new, "persisted")


@pytest.mark.parametrize(
    "content",
    [
        "not a uuid\n",
        "x" * 10000,
        "\x00\xff",
        "database:\n  url: postgresql://db\n",
        "48213\n",  # a PID file
        "4242",  # a PID file as Python writes one, without a newline
        "9f2c1e7",  # a short git revision
        "480a1568" * 5 + "\n",  # a git revision
        "\x00" * 1048576 + "IMPORTANT",  # an image whose start is zeros
        "\x00" * 38,  # longer than any id file of ours
        "\n",
    ],
)
def test_a_file_that_is_no_id_is_left_alone(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    # REQTELEMETRY_DEPLOYMENT_ID_PATH pointed at someone's file: never overwritten.
    path = tmp_path / f"settings-{len(content)}.yaml"
    path.write_text(content, encoding="latin-1")
    with caplog.at_level(logging.WARNING, logger="reqtelemetry"):
        first, how = load_deployment_id(str(path))
        again = load_deployment_id(str(path))
    assert how == "read-only"
    assert str(uuid.UUID(first)) == first
    assert again == (first, "read-only")  # the same id for the life of the process
    assert path.read_text(encoding="latin-1") == content
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0]


def _no_regular_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
    else:  # a copy of /dev/null, as REQTELEMETRY_DEPLOYMENT_ID_PATH=/dev/null would name it
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
    return path


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_id_path_that_is_no_regular_file_is_left_alone(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A device was replaced by a regular file holding an id, and a named pipe
    # was opened for reading, waiting for a writer, with the flush's lock held.
    path = _no_regular_file(tmp_path, kind)
    before = os.stat(path)
    found: list[tuple[str, str]] = []
    reader = threading.Thread(target=lambda: found.append(load_deployment_id(str(path))))
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock it, so that the suite goes on
        with open(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
        reader.join(10)
        pytest.fail("reading the id path waited on a named pipe")
    [(identifier, how)] = found
    assert how == "read-only" and str(uuid.UUID(identifier)) == identifier
    after = os.stat(path)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (
        before.st_mode,
        before.st_ino,
        before.st_rdev,
    )
    assert [r for r in caplog.records if str(path) in r.getMessage()]


def test_a_machine_id_at_the_id_path_is_never_sent(make_sender, receiver, tmp_path: Path) -> None:
    # REQTELEMETRY_DEPLOYMENT_ID_PATH=/etc/machine-id, as a stand-in: reports
    # to a real collector stand-in carry an id of the process's own.
    machine_id = "3d1219c7c4c5404aaa1f6d2a48adfda4"
    path = tmp_path / "machine-id"
    path.write_bytes(machine_id.encode("ascii") + b"\n")
    telemetry = make_sender(deployment_id_path=str(path))
    assert telemetry.flush() is True
    sent = [json.dumps(session) for session in receiver.sessions]
    sent += [r.body.decode("utf-8") for r in receiver.requests if r.body]
    assert receiver.reports_from(telemetry.instance_id)
    assert sent
    for text in sent:
        assert machine_id not in text.replace("-", "")
    assert path.read_bytes() == machine_id.encode("ascii") + b"\n"


def test_unwritable_location_gives_read_only_id(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("a regular file")
    path = afile / "deployment_id"  # NotADirectoryError, even for root
    first, how = load_deployment_id(str(path))
    assert how == "read-only"
    assert str(uuid.UUID(first)) == first
    assert load_deployment_id(str(path)) == (first, "read-only")  # stable in this process
    assert afile.read_text() == "a regular file"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_read_only_directory_gives_read_only_id(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        if os.access(directory, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes")
        new, how = load_deployment_id(str(directory / "deployment_id"))
        assert how == "read-only"
        assert str(uuid.UUID(new)) == new
    finally:
        directory.chmod(0o700)


def test_directory_in_place_of_file_gives_read_only_id(tmp_path: Path) -> None:
    path = tmp_path / "deployment_id"
    path.mkdir()
    _, how = load_deployment_id(str(path))
    assert how == "read-only"


def test_concurrent_creation_yields_one_id(tmp_path: Path) -> None:
    for attempt in range(5):
        path = tmp_path / f"run{attempt}" / "deployment_id"
        barrier = threading.Barrier(8)
        results: list[tuple[str, str]] = []
        lock = threading.Lock()

        def start(
            path: Path = path,
            barrier: threading.Barrier = barrier,
            lock: threading.Lock = lock,
            results: list[tuple[str, str]] = results,
        ) -> None:
            barrier.wait()
            found = load_deployment_id(str(path))
            with lock:
                results.append(found)

        threads = [threading.Thread(target=start) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert len(results) == 8
        assert len(set(results)) == 1, results
        assert results[0][1] == "persisted"
        assert path.read_text().strip() == results[0][0]
        assert sorted(p.name for p in path.parent.iterdir()) == ["deployment_id"]
