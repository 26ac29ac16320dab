"""Run the example apps (and a collector) under real servers, as child processes.

Shared by ``make demo`` (:mod:`examples.demo`) and the end-to-end tests
(``tests/test_examples_e2e.py``), so that the commands the tests prove are the
ones the demo runs. Each :class:`Launch` is one way to serve one example, with
what the collector should then see: how many instances report, and which
framework and server they name.

Process hygiene: every child starts in a new session (its own process group),
so a Ctrl-C in the terminal reaches only the parent, which then stops its
children gracefully, in order; whatever is left of a group afterwards (a
worker, a proof-of-work minter) is killed with it. A graceful stop sends one
signal to the group's leader: SIGTERM to gunicorn (which passes it on to its
workers; they exit normally, so ``atexit`` sends their final reports) and to
uvicorn (FastAPI, and Django wrapped in ``LifespanFlush``: the final report goes
at lifespan shutdown); SIGINT, Ctrl-C, to Werkzeug's development server, which
has no SIGTERM handler: Python's default action for SIGTERM would end it
without running ``atexit``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[1]

#: Variables a child must not inherit: this machine's own telemetry settings and
#: opt-outs (a run sets what it means to), and pytest's marker, which makes
#: ``Telemetry`` stay silent "under a test runner" (subprocesses inherit it).
_NOT_INHERITED_PREFIXES = ("REQTELEMETRY_",)
_NOT_INHERITED = frozenset(
    {"SQA_OPT_OUT", "DO_NOT_TRACK", "PYTEST_CURRENT_TEST", "TELEMETRY_ENDPOINT"}
)
#: Django settings come from each entry point (``setdefault``): never from outside.
_NOT_INHERITED_DJANGO = frozenset({"DJANGO_SETTINGS_MODULE"})


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_environment(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without telemetry settings, plus ``overrides``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_NOT_INHERITED_PREFIXES)
        and name not in _NOT_INHERITED
        and name not in _NOT_INHERITED_DJANGO
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides or {})
    return env


def app_environment(
    collector_url: str | None,
    deployment_id_path: Path,
    flush_interval: float,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """What an example app needs to report to ``collector_url``.

    ``TELEMETRY_ENDPOINT`` is the examples' own setting (read in their code, as
    a maintainer would wire it); ``REQTELEMETRY_FLUSH_INTERVAL`` and
    ``REQTELEMETRY_DEPLOYMENT_ID_PATH`` are the library's operator overrides.
    Every process of one deployment must share the one id file, so that the
    workers of a gunicorn count as instances of one deployment.
    """
    overrides = {
        "REQTELEMETRY_FLUSH_INTERVAL": f"{flush_interval:g}",
        "REQTELEMETRY_DEPLOYMENT_ID_PATH": str(deployment_id_path),
    }
    if collector_url is not None:
        overrides["TELEMETRY_ENDPOINT"] = collector_url
    overrides.update(extra or {})
    return child_environment(overrides)


def gunicorn_args(
    target: str,
    workers: int,
    *,
    preload: bool = False,
    graceful_timeout: int = 15,
    worker_class: str | None = None,
) -> tuple[str, ...]:
    """``python -m gunicorn ...`` serving ``target`` on 127.0.0.1:{port}."""
    argv = [
        "-m",
        "gunicorn",
        "--workers",
        str(workers),
        "--bind",
        "127.0.0.1:{port}",
        "--graceful-timeout",
        str(graceful_timeout),
    ]
    if preload:
        argv.append("--preload")
    if worker_class is not None:
        argv += ["--worker-class", worker_class]
    with contextlib.suppress(Exception):  # gunicorn >= 25 also opens a control socket in $HOME
        from gunicorn.config import KNOWN_SETTINGS

        if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
            argv.append("--no-control-socket")
    return (*argv, target)


def uwsgi_args(target: str, processes: int) -> tuple[str, ...]:
    """uWSGI's arguments to serve ``target`` on 127.0.0.1:{port}, as most deploy it:
    a master that loads the app, then forks ``processes`` workers from it.

    Its ``--http-socket`` closes every connection after one answer without
    saying so, and a client that reused it now and then found it reset: the
    answers say so (``--http11-socket`` keeps them open instead, and each
    idle one holds a worker until it times out).
    """
    return (
        "--http-socket",
        "127.0.0.1:{port}",
        "--add-header",
        "Connection: close",
        "--master",
        "--processes",
        str(processes),
        "--home",
        sys.prefix,  # the environment this runs in, which has the examples' frameworks
        "--pythonpath",
        str(ROOT),
        "--module",
        target,
        "--need-app",
        "--disable-logging",
    )


def uvicorn_args(target: str) -> tuple[str, ...]:
    """``python -m uvicorn ...`` serving ``target`` on 127.0.0.1:{port}."""
    return ("-m", "uvicorn", target, "--host", "127.0.0.1", "--port", "{port}")


@dataclass(frozen=True)
class Launch:
    """One example app under one server, and what the collector should see of it."""

    #: ``fastapi-uvicorn``, ``flask-gunicorn``, ...
    name: str
    #: ``fastapi``, ``flask`` or ``django``: the example, and the framework trait.
    example: str
    #: The server trait the instances report.
    server: str
    #: Arguments after the Python executable; ``{port}`` is filled in.
    args: tuple[str, ...]
    #: Processes that report: one per worker (no ``--preload``: the master never
    #: imports the app, so it has no Telemetry of its own).
    instances: int
    app_version: str
    #: For people: "Flask under gunicorn (2 workers)".
    label: str
    stop_signal: signal.Signals = signal.SIGTERM
    #: The program the arguments are for, when not this Python (uWSGI's own binary).
    program: str | None = None

    def argv(self, port: int) -> list[str]:
        program = self.program or sys.executable
        return [program, *(arg.replace("{port}", str(port)) for arg in self.args)]


LAUNCHES: dict[str, Launch] = {
    launch.name: launch
    for launch in (
        Launch(
            "fastapi-uvicorn",
            "fastapi",
            "uvicorn",
            uvicorn_args("examples.fastapi_app.app:app"),
            instances=1,
            app_version="1.4.2",
            label="FastAPI under uvicorn",
        ),
        Launch(
            "flask-gunicorn",
            "flask",
            "gunicorn",
            gunicorn_args("examples.flask_app.app:app", workers=2),
            instances=2,
            app_version="2.0.1",
            label="Flask under gunicorn (2 workers)",
        ),
        Launch(
            "flask-werkzeug",
            "flask",
            "werkzeug",
            ("-m", "flask", "--app", "examples.flask_app.app", "run", "--port", "{port}"),
            instances=1,
            app_version="2.0.1",
            label="Flask under Werkzeug (flask run)",
            stop_signal=signal.SIGINT,
        ),
        Launch(
            "django-gunicorn",
            "django",
            "gunicorn",
            gunicorn_args("examples.django_site.wsgi:application", workers=2),
            instances=2,
            app_version="3.1.0",
            label="Django (WSGI) under gunicorn (2 workers)",
        ),
        Launch(
            "django-uvicorn",
            "django",
            "uvicorn",
            uvicorn_args("examples.django_site.asgi:application"),
            instances=1,
            app_version="3.1.0",
            label="Django (ASGI) under uvicorn",
            # SIGTERM, as an orchestrator sends: asgi.py wraps Django in
            # LifespanFlush, so the final report goes at lifespan shutdown.
        ),
    )
}


class ChildFailed(RuntimeError):
    """A child process did not start, or did not stop, as it should have."""


@contextlib.contextmanager
def _not_ignored_by_children(signum: signal.Signals) -> Iterator[None]:
    """Children started in this block do not inherit an ignored ``signum``.

    Why: an ignored signal stays ignored across ``exec``, and a shell ignores
    SIGINT in the jobs it starts in the background (``make demo &``, a CI step
    under ``nohup``). Python then installs no handler of its own for it, and
    Werkzeug's server, stopped with SIGINT, never stopped. A signal with a
    handler is reset to its default action by ``exec``: so, for the block, this
    process handles it by doing nothing, which is what ignoring it did.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    if not in_main_thread or signal.getsignal(signum) != signal.SIG_IGN:
        yield
        return
    signal.signal(signum, lambda number, frame: None)
    try:
        yield
    finally:
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM arriving in the block take effect at its end.

    Why: a child started and not yet registered for stopping (``Popen``
    returned, or is about to) would be left running in its own session,
    outside the terminal's process group, if the interrupt landed there. The
    signal is noted, not lost: once the block is over, the handlers in place
    before it get it. A handler set here is reset by ``exec``, so children
    get the default actions. Main thread only (elsewhere, nothing to hold).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    # A handler installed from C (an embedding program's) reads as None and
    # cannot be put back from Python: such a signal is left alone.
    previous = {
        signum: handler
        for signum in (signal.SIGINT, signal.SIGTERM)
        if (handler := signal.getsignal(signum)) is not None
    }
    for signum in previous:
        signal.signal(signum, lambda number, frame: arrived.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)


@dataclass
class ServerProcess:
    """One server as a child process in its own session, its output in a log file."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    port: int
    stop_signal: signal.Signals = signal.SIGTERM
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> ServerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- closed in kill()
        with _not_ignored_by_children(self.stop_signal):
            self.process = subprocess.Popen(
                list(self.argv),
                cwd=ROOT,
                env=dict(self.env),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, path: str = "/healthz", timeout: float = 30.0) -> None:
        """Until ``GET path`` answers 200 (the examples' health checks are not measured)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, trust_env=False, timeout=2.0) as client:
            while True:
                if not self.running:
                    raise ChildFailed(f"{self.name} exited at start:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(path).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise ChildFailed(f"{self.name} did not answer {path}:\n{self.log_tail()}")
                time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int:
        """Stop gracefully (one signal to the leader) and return its exit status.

        Whatever it leaves behind in its process group is killed afterwards.
        """
        process = self.process
        if process is None:
            return 0
        try:
            if process.poll() is None:
                process.send_signal(self.stop_signal)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    raise ChildFailed(
                        f"{self.name} did not stop within {timeout:g} s:\n{self.log_tail()}"
                    ) from None
            return int(process.returncode)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group (idempotent); for failures and leftovers."""
        process = self.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


def launch_app(
    launch: Launch, env: Mapping[str, str], log_dir: Path, port: int | None = None
) -> ServerProcess:
    """Start ``launch`` on a free port (not waiting for it to be ready)."""
    port = free_port() if port is None else port
    return ServerProcess(
        name=launch.name,
        argv=launch.argv(port),
        env=env,
        log_path=log_dir / f"{launch.name}.log",
        port=port,
        stop_signal=launch.stop_signal,
    ).start()


def launch_collector(
    db_url: str,
    log_dir: Path,
    *,
    bits: int,
    secret: str,
    dashboard_token: str,
    port: int | None = None,
) -> ServerProcess:
    """``reqtelemetry collector`` as a child process (not waiting for it to be ready)."""
    port = free_port() if port is None else port
    env = child_environment(
        {
            "REQTELEMETRY_COLLECTOR_SECRET": secret,
            "REQTELEMETRY_DASHBOARD_TOKEN": dashboard_token,
        }
    )
    argv = [
        sys.executable,
        "-m",
        "reqtelemetry.cli",
        "collector",
        "--db",
        db_url,
        "--port",
        str(port),
        "--bits",
        str(bits),
    ]
    return ServerProcess(
        name="collector", argv=argv, env=env, log_path=log_dir / "collector.log", port=port
    ).start()
