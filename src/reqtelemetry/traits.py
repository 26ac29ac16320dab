"""System traits: what a deployment runs on, never who or where it is.

Why this module exists: the maintainer wants to know which platforms, Python
versions, frameworks and servers their users run, and which versions of their
own app are out there. The operator must be able to trust that nothing
identifying leaves the process. So every trait is a coarse JSON scalar (a
name, a version, a count, a boolean), and the module never reads the
hostname, IP addresses, user names or paths into a trait; environment
variables are only ever turned into booleans.

Static traits are computed once, cheaply (no subprocess, no network, no DNS);
the framework and the server are detected lazily at the first :meth:`current`
call, because the server module is often imported after ``Telemetry`` is
created. Memory and uptime are read at each call. An operator withholds any
trait by name (``REQTELEMETRY_DISABLE=memory_rss_bytes,cpu_count``); withheld
traits are not even computed, and their names are reported so the collector
can tell "withheld" from "unknown".

The deployment id (:func:`deployment_id_for`) is derived from a random UUID
kept in a file (:func:`load_deployment_id`), so restarts of the same
installation count as one deployment, and from the app and its collector, so
two apps on one machine, or one app sending to two collectors, cannot be
linked by it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import logging
import os
import platform
import stat
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .config import Config, env_flag

logger = logging.getLogger("reqtelemetry")

#: Every trait key, in the order they appear in a payload.
TRAIT_NAMES: tuple[str, ...] = (
    "os",
    "os_release",
    "arch",
    "cpu_count",
    "python_implementation",
    "python_version",
    "reqtelemetry_version",
    "framework",
    "framework_version",
    "server",
    "server_version",
    "app_name",
    "app_version",
    "app_git_hash",
    "app_build_time",
    "memory_rss_bytes",
    "uptime_seconds",
    "container",
    "ci",
    "development",
)
_KNOWN = frozenset(TRAIT_NAMES)
#: The wire format's longest text trait (``short_text`` in the JSON Schema):
#: longer values are cut, as the collector refuses a report with one.
MAX_TEXT_LENGTH = 128

#: Frameworks, most specific first (FastAPI is built on Starlette), with the
#: module that proves it is imported and its distribution name.
_FRAMEWORKS: tuple[tuple[str, str, str], ...] = (
    ("fastapi", "fastapi", "fastapi"),
    ("django", "django", "Django"),
    ("flask", "flask", "Flask"),
    ("starlette", "starlette", "starlette"),
)

#: Servers: trait value -> distribution whose version is reported.
_SERVER_DISTRIBUTIONS: dict[str, str] = {
    "gunicorn": "gunicorn",
    "uvicorn": "uvicorn",
    "hypercorn": "hypercorn",
    "daphne": "daphne",
    "waitress": "waitress",
    "granian": "granian",
    "uwsgi": "uWSGI",
    "werkzeug": "Werkzeug",
    "django-runserver": "Django",
}
#: Names of the launching command (``argv[0]``'s basename, or the package of a
#: ``python -m package`` run) -> server.
_SERVER_COMMANDS: dict[str, str] = {
    "gunicorn": "gunicorn",
    "uvicorn": "uvicorn",
    "hypercorn": "hypercorn",
    "daphne": "daphne",
    "waitress-serve": "waitress",
    "waitress": "waitress",
    "granian": "granian",
    "uwsgi": "uwsgi",
    "flask": "werkzeug",
}
#: Modules that are only imported when the server runs, in order of precedence:
#: a process manager (gunicorn) wins over the worker class it runs (uvicorn).
_SERVER_MODULES: tuple[tuple[str, str], ...] = (
    ("gunicorn.arbiter", "gunicorn"),
    ("hypercorn.run", "hypercorn"),
    ("daphne.server", "daphne"),
    ("waitress.server", "waitress"),
    ("granian.server", "granian"),
    ("granian", "granian"),
    ("uvicorn.server", "uvicorn"),
)

#: Variables whose mere presence means a CI system (``CI`` is read as a flag).
_CI_VARIABLES: tuple[str, ...] = (
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "BUILDKITE",
    "CIRCLECI",
    "JENKINS_URL",
    "HUDSON_URL",
    "TF_BUILD",
    "TRAVIS",
    "APPVEYOR",
    "TEAMCITY_VERSION",
    "BITBUCKET_BUILD_NUMBER",
    "CODEBUILD_BUILD_ID",
    "DRONE",
    "SEMAPHORE",
    "BUILD_BUILDID",
    "CI_NAME",
    "WOODPECKER_CI",
)
_CGROUP_HINTS: tuple[str, ...] = ("docker", "kubepods", "containerd", "libpod", "lxc", "podman")


def _metadata_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except Exception:
        return None


def _module_version(module_name: str, distribution: str) -> str | None:
    version = _metadata_version(distribution)
    if version is None:
        module = sys.modules.get(module_name)
        value = getattr(module, "__version__", None)
        version = value if isinstance(value, str) else None
    return version


def _reqtelemetry_version() -> str | None:
    package = sys.modules.get("reqtelemetry")
    value = getattr(package, "__version__", None)
    if isinstance(value, str):
        return value
    return _metadata_version("reqtelemetry")


def _read_small(path: str, limit: int = 65536) -> str:
    """A file's beginning as text, or ``""`` if it cannot be read (never raises)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except Exception:
        return ""


def detect_container(environ: Mapping[str, str] | None = None, root: str = "/") -> bool:
    """True when the process appears to run in a container (Docker, Podman, Kubernetes, LXC).

    ``root`` exists for tests; every file is read defensively.
    """
    environ = os.environ if environ is None else environ
    if environ.get("KUBERNETES_SERVICE_HOST") or environ.get("container"):
        return True
    try:
        for marker in (".dockerenv", os.path.join("run", ".containerenv")):
            if os.path.exists(os.path.join(root, marker)):
                return True
    except Exception:
        pass
    cgroup = _read_small(os.path.join(root, "proc", "1", "cgroup")).lower()
    return any(hint in cgroup for hint in _CGROUP_HINTS)


def detect_ci(environ: Mapping[str, str] | None = None) -> bool:
    """True when a continuous-integration system's variables are set."""
    environ = os.environ if environ is None else environ
    ci = environ.get("CI")
    if ci is not None and ci.strip().lower() not in {"", "0", "false", "no", "off"}:
        return True
    return any(environ.get(name) for name in _CI_VARIABLES)


def detect_development_environment(environ: Mapping[str, str] | None = None) -> bool:
    """True when the environment says this is a development run."""
    environ = os.environ if environ is None else environ
    if env_flag(environ.get("FLASK_DEBUG")) or env_flag(environ.get("DJANGO_DEBUG")):
        return True
    if environ.get("FLASK_ENV", "").strip().lower() == "development":
        return True
    if environ.get("PYTHONDEVMODE"):
        return True
    return bool(getattr(sys.flags, "dev_mode", False))


#: Launching commands that run tests (``argv[0]``'s name, or the package of
#: ``python -m package``), and Django's commands whose ``test`` subcommand does.
_TEST_COMMANDS = frozenset({"pytest", "py.test"})
_DJANGO_COMMANDS = frozenset({"manage", "django-admin", "django"})  # django: python -m django


def detect_test_runner(
    environ: Mapping[str, str] | None = None,
    argv: list[str] | None = None,
    modules: Mapping[str, Any] | None = None,
) -> str | None:
    """The evidence that this process runs tests (``"pytest"``, ...), or None.

    Only evidence a serving process cannot have by accident: a process started
    as ``pytest``/``py.test``/``python -m pytest``, ``python -m unittest`` or
    ``manage.py test``/``django-admin test``/``python -m django test``; pytest's own variables
    (``PYTEST_CURRENT_TEST`` while a test runs, ``PYTEST_XDIST_WORKER`` in an
    xdist worker); or Django's test environment set up
    (``django.test.utils.setup_test_environment()``, which Django's runner and
    pytest-django call). Importing ``pytest`` or ``unittest`` is not evidence.
    """
    environ = os.environ if environ is None else environ
    argv = getattr(sys, "argv", None) if argv is None else argv
    modules = sys.modules if modules is None else modules
    for variable in ("PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER"):
        if variable in environ:
            return f"{variable} is set"
    command = _command_name(argv)
    if command in _TEST_COMMANDS:
        return "pytest"
    if argv and isinstance(argv[0], str) and argv[0].endswith(" -m unittest"):
        return "python -m unittest"  # what ``python -m unittest`` makes argv[0]
    if command in _DJANGO_COMMANDS and argv and len(argv) > 1 and argv[1] == "test":
        return f"{command} test"
    django_test = modules.get("django.test.utils")
    state = getattr(django_test, "_TestState", None)
    if state is not None and getattr(state, "saved_data", None) is not None:
        return "Django's test environment"
    return None


def detect_framework(modules: Mapping[str, Any] | None = None) -> tuple[str | None, str | None]:
    """``(framework, version)`` of the first known web framework imported, else ``(None, None)``."""
    modules = sys.modules if modules is None else modules
    for name, module_name, distribution in _FRAMEWORKS:
        if module_name in modules:
            return name, _module_version(module_name, distribution)
    return None, None


def framework_of_app(app: Any, known: frozenset[str]) -> str | None:
    """The package of ``known`` whose app ``app`` is, or wraps; None if neither.

    Why: apps are often served wrapped (Werkzeug's ``ProxyFix``, WhiteNoise,
    Sentry's middleware, Starlette's ``CORSMiddleware`` around a Falcon or
    Quart app), and the wrapper's class named no framework, or the wrong one
    (``starlette``): the trait fell back to whichever framework the process
    imported. Wrappers keep what they wrap as ``app`` or ``application``; the
    innermost known class is the app's. A bound method is its object's:
    Quart's documented way to add middleware wraps ``app.asgi_app``, and the
    trait read Flask's, which Quart imports. Read once, never per request.
    """
    found = None
    for _ in range(16):  # a bound: a wrapper may hold itself
        try:
            package = type(app).__module__.partition(".")[0]
            if package in known:
                found = package
            inner = getattr(app, "app", None)
            if inner is None:
                inner = getattr(app, "application", None)
            if inner is None and inspect.ismethod(app):
                inner = app.__self__
        except Exception:  # a wrapper's property that fails: what was found holds
            break
        if inner is None or inner is app:
            break
        app = inner
    return found


def _command_name(argv: list[str] | None) -> str:
    if not argv or not isinstance(argv[0], str):
        return ""
    path = argv[0]
    base = os.path.basename(path)
    if base in {"__main__.py", "__main__"}:  # python -m package: the package's directory
        base = os.path.basename(os.path.dirname(path))
    base = base.lower()
    for suffix in (".exe", ".py"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base


def detect_server(
    modules: Mapping[str, Any] | None = None,
    argv: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str | None, str | None]:
    """``(server, version)`` of the server running this process, else ``(None, None)``.

    The launching command is the strongest evidence, then modules that are only
    imported when a server runs, then the Werkzeug reloader's variables.
    """
    modules = sys.modules if modules is None else modules
    argv = getattr(sys, "argv", None) if argv is None else argv
    environ = os.environ if environ is None else environ
    command = _command_name(argv)
    server = _SERVER_COMMANDS.get(command)
    if server is None and command in _DJANGO_COMMANDS and argv and "runserver" in argv[1:]:
        server = "django-runserver"
    if server is None:
        for module_name, name in _SERVER_MODULES:
            if module_name in modules:
                server = name
                break
    if (
        server is None
        and "werkzeug.serving" in modules
        and (environ.get("WERKZEUG_RUN_MAIN") or environ.get("WERKZEUG_SERVER_FD"))
    ):
        server = "werkzeug"
    if server is None and hasattr(modules.get("uwsgi"), "worker_id"):
        server = "uwsgi"  # its own module, which exists only inside it
    if server is None:
        return None, None
    version = _metadata_version(_SERVER_DISTRIBUTIONS[server])
    if version is None and server == "uwsgi":
        # A uWSGI from the system's packages has no Python distribution.
        raw = getattr(modules.get("uwsgi"), "version", None)
        version = raw.decode("ascii", "replace") if isinstance(raw, bytes) else None
    return server, version


class SystemTraits:
    """The traits of this process, with the operator's withheld ones removed.

    Thread-safe: :meth:`current` may run on the flusher thread while an
    integration calls :meth:`note_development` on a request thread.
    """

    def __init__(self, config: Config, started_at: float | None = None) -> None:
        unknown = sorted(set(config.disabled_traits) - _KNOWN)
        if unknown:
            raise ValueError(
                f"unknown trait name(s) in disabled_traits: {', '.join(unknown)}; "
                f"valid names are: {', '.join(TRAIT_NAMES)}"
            )
        self.withheld: list[str] = sorted(set(config.disabled_traits))
        self._withheld = frozenset(self.withheld)
        # ``started_at`` is a wall-clock (``time.time()``) timestamp; uptime is
        # then measured on the monotonic clock so clock jumps do not distort it.
        now_wall, now_mono = time.time(), time.monotonic()
        started_wall = now_wall if started_at is None else float(started_at)
        self._started_monotonic = now_mono - max(0.0, now_wall - started_wall)
        self._lock = threading.Lock()
        self._development_reason: str | None = None
        self._framework: tuple[str | None, str | None] | None = None
        self._framework_noted = False
        self._server: tuple[str | None, str | None] | None = None
        self._process: Any = None
        self._static = self._compute_static(config)

    def _compute_static(self, config: Config) -> dict[str, Any]:
        static: dict[str, Any] = {}
        computations: dict[str, Callable[[], Any]] = {
            "os": lambda: platform.system().lower() or None,
            "os_release": lambda: platform.release() or None,
            "arch": lambda: platform.machine() or None,
            "cpu_count": os.cpu_count,
            "python_implementation": platform.python_implementation,
            "python_version": platform.python_version,
            "reqtelemetry_version": _reqtelemetry_version,
            "app_name": lambda: config.app_name,
            "app_version": lambda: config.app_version,
            "app_git_hash": lambda: config.app_git_hash,
            "app_build_time": lambda: config.app_build_time,
            "container": detect_container,
            "ci": detect_ci,
            "development": detect_development_environment,
        }
        for name, compute in computations.items():
            if name in self._withheld:
                continue
            try:
                static[name] = compute()
            except Exception:
                static[name] = None
        return static

    def note_development(self, reason: str) -> None:
        """Mark this instance as a development run (debug mode, a localhost ``Host``).

        The reason is kept for debugging only; it is never sent.
        """
        with self._lock:
            if self._development_reason is None:
                self._development_reason = reason

    def after_fork(self, started_at: float) -> None:
        """In a forked worker: uptime counts from the fork; what integrations
        noted (framework, development) still holds, as the app is the same."""
        now_wall, now_mono = time.time(), time.monotonic()
        self._started_monotonic = now_mono - max(0.0, now_wall - started_at)
        self._process = None
        self._lock = threading.Lock()  # the parent's may have been held at the fork

    def note_framework(self, name: str) -> None:
        """The integration knows its framework better than ``sys.modules`` does
        (a process may import several); this answer wins over detection."""
        with self._lock:
            self._framework = (name, _metadata_version(name))
            self._framework_noted = True

    @property
    def development_reason(self) -> str | None:
        """Why :meth:`note_development` was called first, if it was (never sent)."""
        return self._development_reason

    def _detect_lazily(self) -> None:
        # Re-detected until found: the server module may be imported after the
        # first report; once found, the answer is cached. Not at all where
        # both of its traits are withheld: a withheld trait is not computed.
        withheld = self._withheld
        with self._lock:
            if (
                not self._framework_noted
                and (self._framework is None or self._framework[0] is None)
                and not withheld >= _FRAMEWORK_TRAITS
            ):
                try:
                    self._framework = detect_framework()
                except Exception:
                    self._framework = (None, None)
            if (self._server is None or self._server[0] is None) and not withheld >= _SERVER_TRAITS:
                try:
                    self._server = detect_server()
                except Exception:
                    self._server = (None, None)

    def _memory_rss_bytes(self) -> int | None:
        try:
            if self._process is None or self._process.pid != os.getpid():  # new after fork
                import psutil

                self._process = psutil.Process()
            return int(self._process.memory_info().rss)
        except Exception:
            return None

    def current(self) -> tuple[dict[str, Any], list[str]]:
        """All traits now, in :data:`TRAIT_NAMES` order without the withheld ones,
        and the sorted names of the withheld ones."""
        self._detect_lazily()
        framework = self._framework or (None, None)
        server = self._server or (None, None)
        values = dict(self._static)
        values["framework"], values["framework_version"] = framework
        values["server"], values["server_version"] = server
        if "development" not in self._withheld and self._development_reason is not None:
            values["development"] = True
        withheld = self._withheld
        if "memory_rss_bytes" not in withheld:
            values["memory_rss_bytes"] = self._memory_rss_bytes()
        if "uptime_seconds" not in withheld:
            uptime = max(0.0, time.monotonic() - self._started_monotonic)
            values["uptime_seconds"] = round(uptime, 3)
        traits = {name: _fit(values[name]) for name in TRAIT_NAMES if name not in withheld}
        return traits, list(self.withheld)


def _fit(value: Any) -> Any:
    """A text trait cut to :data:`MAX_TEXT_LENGTH` (an app version with a long
    build suffix, an odd kernel release string); other values as they are."""
    if isinstance(value, str) and len(value) > MAX_TEXT_LENGTH:
        return value[:MAX_TEXT_LENGTH]
    return value


# --- the deployment id -------------------------------------------------------

_READ_ONLY_IDS: dict[str, str] = {}
_READ_ONLY_LOCK = threading.Lock()
_MAX_ID_FILE_BYTES = 256


#: The traits one detection finds: neither is worked out where both are withheld.
_FRAMEWORK_TRAITS = frozenset({"framework", "framework_version"})
_SERVER_TRAITS = frozenset({"server", "server_version"})


def default_deployment_id_path() -> str:
    """``<user data dir>/deployment_id``, per platformdirs."""
    import platformdirs

    return os.path.join(platformdirs.user_data_dir("reqtelemetry"), "deployment_id")


class ForeignFileError(Exception):
    """The deployment id path holds a file that is no id of ours: it is left alone."""


#: The shape of an id file as this module writes it, ``str(uuid.uuid4())`` and
#: a newline, as every version of it has: ``x`` a lower-case hex digit, ``4``
#: the UUID version, ``y`` the variant's digit (8, 9, a or b).
_ID_FILE_SHAPE = b"xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx\n"
_ID_LENGTH = len(_ID_FILE_SHAPE) - 1  # without its newline
_FIRST_DASH = _ID_FILE_SHAPE.index(b"-")
_SHAPE_BYTES = {
    ord("x"): frozenset(b"0123456789abcdef"),
    ord("y"): frozenset(b"89ab"),
}


def _fits_shape(data: bytes) -> bool:
    """Whether ``data`` is :data:`_ID_FILE_SHAPE`, whole or its start."""
    if len(data) > len(_ID_FILE_SHAPE):
        return False
    return all(
        byte in _SHAPE_BYTES.get(shape, (shape,))
        for byte, shape in zip(data, _ID_FILE_SHAPE[: len(data)], strict=True)
    )


def _parse_id(data: bytes) -> str | None:
    """The id in a file of ours: a whole id, with its newline or cut just before it.

    Only that exact shape, no other spelling of a UUID: an id file is adopted
    and sent as it is, so anything a UUID parser also takes would be sent too,
    and ``/etc/machine-id`` (32 hex digits) or a UUID another program wrote
    (in capitals, or a version 1 one, which holds a MAC address) is an
    identifier of the machine, not one derived from nothing.
    """
    if len(data) >= _ID_LENGTH and _fits_shape(data):
        return data[:_ID_LENGTH].decode("ascii")
    return None


def _damaged_id(data: bytes) -> bool:
    """Whether ``data``, a whole file, is what a crash can leave of an id file of ours.

    An id is written whole under a temporary name and then linked into place,
    or, where links fail, written in place: a crash can leave an empty file,
    one filled with NUL bytes (some filesystems after a power loss), or the
    start of an id, zeros after it where the write was cut. Anything else is
    someone else's file: one longer than an id file (a disk image that
    starts with zeros), or a start of an id neither followed by zeros nor
    reaching the id's first dash (``4242``, a PID file as Python writes one;
    ``9f2c1e7``, a git revision).
    """
    if len(data) > len(_ID_FILE_SHAPE):
        return False
    kept = data.rstrip(b"\x00")
    if not kept:
        return True
    if len(kept) >= _ID_LENGTH or not _fits_shape(kept):
        return False
    return len(kept) < len(data) or len(kept) > _FIRST_DASH


def _read_id(path: str) -> str | None:
    """The valid id in ``path``; ``None`` if it holds a damaged id (to replace).

    Raises :class:`ForeignFileError` when the file holds anything else (an
    operator pointed ``REQTELEMETRY_DEPLOYMENT_ID_PATH`` at an existing file,
    say), or is no regular file (``/dev/null``, a named pipe): replacing it
    would destroy someone's data, or a device, and reading a pipe would wait
    for a writer with the flush's lock held. Raises
    :class:`FileNotFoundError` when there is no file, other :class:`OSError`
    when it cannot be read.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ForeignFileError(path)
    # Not blocking, and asked again of what was opened: a pipe put in its
    # place since is refused, never waited on.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    with open(os.open(path, flags), "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ForeignFileError(path)
        data = handle.read(_MAX_ID_FILE_BYTES + 1)
    found = _parse_id(data)
    if found is None and not _damaged_id(data):
        raise ForeignFileError(path)
    return found


def _write_new_file(path: str, content: bytes) -> None:
    """Create ``path`` exclusively (mode 0600) with ``content``, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_sibling(path: str, content: bytes) -> str:
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    _write_new_file(temporary, content)
    return temporary


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _create(path: str, new_id: str) -> str:
    """Publish ``new_id`` at ``path`` unless someone else did first; the id on disk.

    The file is written completely under a temporary name and then hard-linked
    into place: the link is atomic and fails if ``path`` exists, so a
    concurrent reader never sees a half-written file and exactly one creator
    wins. Where hard links are unsupported, ``path`` is created directly with
    ``O_CREAT|O_EXCL``.
    """
    content = (new_id + "\n").encode("ascii")
    temporary = _temporary_sibling(path, content)
    try:
        try:
            os.link(temporary, path)
            return new_id
        except FileExistsError:
            return _read_theirs(path)
        except (OSError, AttributeError, NotImplementedError):
            pass  # no hard links here (some network or FUSE filesystems)
    finally:
        _remove_quietly(temporary)
    try:
        _write_new_file(path, content)
        return new_id
    except FileExistsError:
        return _read_theirs(path)


def _read_theirs(path: str) -> str:
    """The id another process just created; waits briefly for its write to land."""
    for attempt in range(50):
        found = _read_id(path)
        if found is not None:
            return found
        time.sleep(0.01 * min(attempt + 1, 5))
    return _replace(path, str(uuid.uuid4()))


def _replace(path: str, new_id: str) -> str:
    """Replace a damaged id file; the id on disk afterwards.

    Workers starting together that all found it damaged must agree on one id,
    as they do when they create it: each locks the damaged file, and only the
    first replaces it. The others, once they hold the lock, find another file
    at ``path`` (or the lock taken on the new one) and adopt the id in it.
    Without ``fcntl`` (Windows), or where the lock is refused, it is replaced
    unlocked, as before (written in place too where it cannot be renamed over).
    """
    try:
        import fcntl
    except ImportError:
        return _replace_unlocked(path, new_id)
    try:
        # For writing where it may be: an NFS client takes flock() as a lock
        # on the whole file, whose exclusive kind needs a file opened for
        # writing (flock(2)); opened read-only, every lock there was refused.
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ForeignFileError(path)
        if not _lock_briefly(fd, fcntl):
            return _replace_or_write(path, fd, new_id)
        if not os.path.samestat(os.fstat(fd), os.stat(path)):
            # Another start replaced it while this one waited: take its id
            # (or, damaged again, replace that file the same way).
            return _read_id(path) or _replace(path, new_id)
        data = os.pread(fd, _MAX_ID_FILE_BYTES + 1, 0)
        found = _parse_id(data)
        if found is not None:
            return found  # locked after another start's replacement landed
        if not _damaged_id(data):
            raise ForeignFileError(path)
        return _replace_or_write(path, fd, new_id)  # the lock held until it is in place
    finally:
        os.close(fd)


def _replace_or_write(path: str, fd: int, new_id: str) -> str:
    """Replace the damaged file ``fd`` (open, at ``path``) by a rename, or,
    where it cannot be renamed over, write it in place; the id on disk afterwards."""
    try:
        return _replace_unlocked(path, new_id)
    except OSError:
        if not os.path.samestat(os.fstat(fd), os.stat(path)):
            raise  # it was replaced: what failed came after
        return _write_in_place(path, fd, new_id)


def _lock_briefly(fd: int, fcntl: Any) -> bool:
    """Whether ``fd`` was locked exclusively within about as long as
    :func:`_read_theirs` waits; False also where the file system has no locks.

    Not waited on for ever: a process forked while another held the lock
    keeps holding it as long as it lives, and the flush's lock is held here.
    """
    for attempt in range(50):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.01 * min(attempt + 1, 5))
        except OSError:
            return False
    return False


def _write_in_place(path: str, locked: int, new_id: str) -> str:
    """Write ``new_id`` over the damaged file ``locked`` (open, locked) itself.

    Why: some files cannot be renamed over, nor have a file made beside them,
    yet can be written: a file bind-mounted into a container (``docker run -v
    host_file:/data/deployment_id``, a Kubernetes ``subPath``), which must
    exist before it is mounted and so starts empty, in a directory that may
    be read-only. Replaced only by a rename, such a file stayed empty, and
    every process of every start sent an id of its own. The id goes in one
    write: a reader that still finds the file empty takes it for damaged, and
    waits for this lock.
    """
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
    try:
        if not os.path.samestat(os.fstat(fd), os.fstat(locked)):
            raise ForeignFileError(path)  # no longer the file locked: not written to
        view = memoryview((new_id + "\n").encode("ascii"))
        offset = 0
        while offset < len(view):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return new_id


def _replace_unlocked(path: str, new_id: str) -> str:
    """Atomically replace a damaged file; the id on disk afterwards."""
    temporary = _temporary_sibling(path, (new_id + "\n").encode("ascii"))
    try:
        os.replace(temporary, path)
    except BaseException:
        _remove_quietly(temporary)
        raise
    # Another process may have replaced it at the same moment: agree on the last.
    try:
        return _read_id(path) or new_id
    except ForeignFileError:
        return new_id


_WARNED_PATHS: set[str] = set()


def _first_time(path: str) -> bool:
    """True the first time ``path`` is asked about in this process (to warn once)."""
    with _READ_ONLY_LOCK:
        if path in _WARNED_PATHS:
            return False
        _WARNED_PATHS.add(path)
        return True


def _read_only_id(path: str) -> tuple[str, str]:
    with _READ_ONLY_LOCK:
        found = _READ_ONLY_IDS.get(path)
        if found is None:
            found = _READ_ONLY_IDS[path] = str(uuid.uuid4())
    return found, "read-only"


def deployment_id_for(kept: str, app_name: str | None, endpoint: str | None) -> str:
    """The deployment id an app sends: a version 4 UUID made from the id
    ``kept`` in the file, the app's name and its collector's origin (scheme,
    host, port).

    Why not the kept id itself: the file is one per user account (its path
    names no app), so every app on a machine, sending to any collector, sent
    the same long-lived id, by which two maintainers' collectors (or one
    maintainer's, for several products) could tell the same machine. The
    kept id never leaves the process; a restart gives the same id; another
    app or collector a different one, unlinkable to it without the file.
    """
    origin = ""
    if endpoint:
        # Not the path or query, which may carry a key; not the user info.
        try:
            parts = urlsplit(endpoint)
            default_port = {"http": 80, "https": 443}.get(parts.scheme.lower())
            port: int | str = parts.port or default_port or ""
            host = (parts.hostname or "").lower().rstrip(".")
            origin = f"{parts.scheme.lower()}://{host}:{port}"
        except ValueError:  # a port out of range: the config refuses it before this
            origin = endpoint
    digest = hashlib.sha256(f"{kept}|{app_name or ''}|{origin}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def load_deployment_id(path: str | None) -> tuple[str, str]:
    """``(deployment_id, how)``: the id kept at ``path`` (created on first start).

    ``how`` is ``"persisted"`` when the id is on disk (read or just written) and
    ``"read-only"`` when it cannot be: then a random id is made, the same for
    every call in this process. A damaged id file (empty, or an id cut short)
    is replaced; a file that holds anything else is left alone (``read-only``,
    with one warning). Never raises.
    """
    key = path if path is not None else ""
    try:
        if path is None:
            path = default_deployment_id_path()
        try:
            found = _read_id(path)
        except FileNotFoundError:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            return _create(path, str(uuid.uuid4())), "persisted"
        if found is not None:
            return found, "persisted"
        return _replace(path, str(uuid.uuid4())), "persisted"
    except ForeignFileError:
        found, how = _read_only_id(key)
        if _first_time(key):
            logger.warning(
                "reqtelemetry: %s holds something other than a deployment id; it is left "
                "as it is, and this process uses an id of its own. Point "
                "REQTELEMETRY_DEPLOYMENT_ID_PATH at a file of its own.",
                path,
            )
        return found, how
    except Exception:
        return _read_only_id(key)
