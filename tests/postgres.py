"""A throwaway PostgreSQL for the test suite, started from the installed binaries.

Why a real server rather than a fake: the storage tests must prove that
replays are refused by a unique index, that concurrent migrations take turns
under an advisory lock, and that the SQL is PostgreSQL's own, none of which a
stand-in can show.

:class:`ThrowawayCluster` runs ``initdb`` and ``pg_ctl`` into a temporary
directory and serves on ``127.0.0.1`` at a free port (plus a Unix socket in the
same directory, never ``/var/run``), with ``trust`` authentication and
durability switched off for speed. ``initdb`` refuses to run as root, so as
root both run as the ``postgres`` system user (created when missing), through
``runuser`` or ``su``. :meth:`ThrowawayCluster.stop` stops the server and
deletes the directory; it also runs at interpreter exit, in case a test run is
cut short.

:func:`scratch_schema` gives each test its own schema, so tests neither see
each other's tables nor pay for a new database each.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

#: Set this to test against an existing server instead (its database must allow
#: CREATE SCHEMA for the connecting user).
URL_VARIABLE = "REQTELEMETRY_TEST_POSTGRES_URL"
SYSTEM_USER = "postgres"

#: Settings for a server whose data may be lost at any time.
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "40",
    "max_wal_size": "256MB",
    "logging_collector": "off",
}


class PostgresUnavailable(Exception):
    """No PostgreSQL server binaries here: the PostgreSQL tests are skipped."""


def find_binaries() -> tuple[Path, Path]:
    """``initdb`` and ``pg_ctl`` of one installation (``PATH`` first, then Debian's layout).

    Both must come from the same directory: an ``initdb`` of one major version
    and a server of another cannot share a data directory.
    """
    candidates: list[Path] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda path: [int(n) for n in re.findall(r"\d+", path)], reverse=True)
    candidates.extend(Path(path) for path in versions)
    for directory in candidates:
        initdb, pg_ctl = directory / "initdb", directory / "pg_ctl"
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return initdb, pg_ctl
    raise PostgresUnavailable(
        "PostgreSQL tests need the server binaries initdb and pg_ctl (looked in PATH and "
        f"/usr/lib/postgresql/*/bin), or {URL_VARIABLE} pointing at a server"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", SYSTEM_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(SYSTEM_USER)


class ThrowawayCluster:
    """One PostgreSQL server in a temporary directory, for one test session."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = find_binaries()
        self.as_root = os.geteuid() == 0
        # As root, a private TMPDIR (under /root, say) would shut the postgres user out.
        parent = "/tmp" if self.as_root and os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="reqtelemetry-pg-", dir=parent))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self.port = 0
        self.started = False

    # -- running the binaries, as the right user --------------------------------------

    def _command(self, argv: list[str]) -> list[str]:
        if not self.as_root:
            return argv
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", SYSTEM_USER, "--", *argv]
        return ["su", SYSTEM_USER, "-s", "/bin/sh", "-c", shlex.join(argv)]

    def _run(self, argv: list[str], timeout: float = 120) -> None:
        done = subprocess.run(
            self._command(argv),
            cwd=self.root,  # the user running the binaries must be able to enter it
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}\n{log}"
            )

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> str:
        """Create and start the server; return a URL for its ``postgres`` database."""
        self.sockets.mkdir()
        if self.as_root:
            user = _ensure_system_user()
            for path in (self.root, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)
        atexit.register(self.stop)
        self._run(
            [
                str(self.initdb),
                "--pgdata",
                str(self.data),
                "--username",
                SYSTEM_USER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ]
        )
        settings = {
            **SERVER_SETTINGS,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.sockets),
        }
        options = " ".join(f"-c {key}={value}" for key, value in settings.items())
        # A port someone else takes between probing and binding makes pg_ctl
        # fail; a few tries make that race harmless.
        for attempt in range(5):
            self.port = free_port()
            try:
                self._run(
                    [
                        str(self.pg_ctl),
                        "--pgdata",
                        str(self.data),
                        "--log",
                        str(self.log),
                        "--wait",
                        "--timeout",
                        "60",
                        "--options",
                        f"{options} -p {self.port}",
                        "start",
                    ]
                )
                break
            except RuntimeError:
                if attempt == 4 or "could not bind" not in self.log.read_text(errors="replace"):
                    raise
        self.started = True
        return f"postgresql://{SYSTEM_USER}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        """Stop the server (immediately: its data is thrown away) and delete everything."""
        if self.started:
            self.started = False
            with contextlib.suppress(Exception):
                self._run(
                    [
                        str(self.pg_ctl),
                        "--pgdata",
                        str(self.data),
                        "--mode",
                        "immediate",
                        "--wait",
                        "stop",
                    ],
                    timeout=60,
                )
        shutil.rmtree(self.root, ignore_errors=True)


def with_search_path(url: str, schema: str) -> str:
    """``url`` with every connection's ``search_path`` set to ``schema``."""
    option = quote(f"-c search_path={schema}", safe="")
    if url.startswith(("postgresql://", "postgres://")):
        return f"{url}{'&' if '?' in url else '?'}options={option}"
    from psycopg.conninfo import make_conninfo

    return make_conninfo(url, options=f"-c search_path={schema}")


@contextlib.contextmanager
def scratch_schema(url: str) -> Iterator[str]:
    """A new, empty schema for one test: yields a URL that uses it, drops it after."""
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
