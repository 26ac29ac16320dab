"""A damaged (empty) deployment id file is replaced once: workers starting
together on it agree on one id, and one that cannot be renamed over (a file
bind-mounted into a container) is written in place. Also where flock() works
as on NFS, an exclusive lock needing a file open for writing (flock(2),
NOTES: EBADF otherwise), and where no lock is had at all (NFSv3 without its
lock daemon: ENOLCK)."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path

import pytest

from reqtelemetry import traits
from reqtelemetry.traits import load_deployment_id

LOCKS = ["local", "nfs", "none"]


def _locks_as(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """flock() as the file system of ``kind`` does it."""
    flock = fcntl.flock

    def as_on_nfs(fd: int, operation: int) -> None:
        read_only = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        if operation & fcntl.LOCK_EX and read_only:
            raise OSError(errno.EBADF, "Bad file descriptor")
        flock(fd, operation)

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    if kind == "nfs":
        monkeypatch.setattr(fcntl, "flock", as_on_nfs)
    elif kind == "none":
        monkeypatch.setattr(fcntl, "flock", no_locks)


def _damaged_id_file(tmp_path: Path) -> Path:
    path = tmp_path / "deployment_id"
    path.write_bytes(b"")  # what a crash, or an operator's ``touch``, leaves
    return path


@pytest.mark.parametrize("locks", ["local", "nfs"])
def test_starts_that_all_found_the_id_file_damaged_agree_on_one_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, locks: str
) -> None:
    _locks_as(locks, monkeypatch)
    path = _damaged_id_file(tmp_path)
    both_read = threading.Barrier(2)
    first_done = threading.Event()
    seen: set[str] = set()
    read_id = traits._read_id

    def read_then_meet(p: str) -> str | None:
        found = read_id(p)
        name = threading.current_thread().name
        if name not in seen:  # each start's first look: both see the damaged file
            seen.add(name)
            both_read.wait(timeout=10)
            if name == "second":
                first_done.wait(timeout=10)  # the first has replaced it meanwhile
        return found

    monkeypatch.setattr(traits, "_read_id", read_then_meet)
    results: dict[str, tuple[str, str]] = {}

    def start(name: str) -> None:
        results[name] = load_deployment_id(str(path))
        if name == "first":
            first_done.set()

    threads = [threading.Thread(target=start, args=(n,), name=n) for n in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results["first"] == results["second"], results
    assert results["first"][1] == "persisted"
    assert path.read_text() == results["first"][0] + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deployment_id"]


@pytest.mark.parametrize("locks", LOCKS)
def test_a_damaged_id_file_that_cannot_be_renamed_over_is_written_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, locks: str
) -> None:
    """A file bind-mounted into a container (``docker run -v host_file:file``, a
    Kubernetes ``subPath``, of an NFS or EFS volume too) starts empty, and
    renaming over a mount point fails with EBUSY: the id must still be kept,
    the same at the next start."""
    _locks_as(locks, monkeypatch)
    path = _damaged_id_file(tmp_path)

    def busy(src: str, dst: str) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy", dst)

    monkeypatch.setattr(os, "replace", busy)
    first = load_deployment_id(str(path))
    traits._READ_ONLY_IDS.clear()  # the next start is a new process
    again = load_deployment_id(str(path))
    assert first[1] == "persisted", first
    assert path.read_text() == first[0] + "\n"
    assert again == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deployment_id"]
