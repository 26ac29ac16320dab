"""On NFS, flock() is emulated by a byte-range lock on the whole file, and an
exclusive one needs a file opened for writing (flock(2), NOTES): a lock taken
on a file opened read-only fails with EBADF. A damaged id file there must still
be written in place where it cannot be renamed over (a Kubernetes subPath of an
NFS or EFS volume), and workers starting together must still agree."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path

import pytest

from reqtelemetry import traits
from reqtelemetry.traits import load_deployment_id


@pytest.fixture
def nfs_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    """flock() as an NFS client does it: EBADF for LOCK_EX on a read-only file."""
    flock = fcntl.flock

    def as_on_nfs(fd: int, operation: int) -> None:
        read_only = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        if operation & fcntl.LOCK_EX and read_only:
            raise OSError(errno.EBADF, "Bad file descriptor")
        flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", as_on_nfs)


def test_on_nfs_a_file_that_cannot_be_renamed_over_is_written_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nfs_locks: None
) -> None:
    path = tmp_path / "deployment_id"
    path.write_bytes(b"")

    def busy(src: str, dst: str) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy", dst)

    monkeypatch.setattr(os, "replace", busy)
    first = load_deployment_id(str(path))
    traits._READ_ONLY_IDS.clear()  # the next start is a new process
    again = load_deployment_id(str(path))
    assert first[1] == "persisted", first
    assert path.read_text() == first[0] + "\n"
    assert again == first


def test_on_nfs_starts_that_all_found_the_id_file_damaged_agree_on_one_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nfs_locks: None
) -> None:
    path = tmp_path / "deployment_id"
    path.write_bytes(b"")
    both_read = threading.Barrier(2)
    first_done = threading.Event()
    seen: set[str] = set()
    read_id = traits._read_id

    def read_then_meet(p: str) -> str | None:
        found = read_id(p)
        name = threading.current_thread().name
        if name not in seen:
            seen.add(name)
            both_read.wait(timeout=10)
            if name == "second":
                first_done.wait(timeout=10)
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
    assert path.read_text() == results["first"][0] + "\n"


def test_where_no_lock_is_had_a_file_that_cannot_be_renamed_over_is_written_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFSv3 without its lock daemon (ENOLCK), or a file opened read-only on NFS."""
    path = tmp_path / "deployment_id"
    path.write_bytes(b"")

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    def busy(src: str, dst: str) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy", dst)

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(os, "replace", busy)
    first = load_deployment_id(str(path))
    assert first[1] == "persisted", first
    assert path.read_text() == first[0] + "\n"
