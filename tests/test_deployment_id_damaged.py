"""A damaged (empty) deployment id file is replaced once: workers starting
together on it agree on one id, and one that cannot be renamed over (a file
bind-mounted into a container) is written in place."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from reqtelemetry import traits
from reqtelemetry.traits import load_deployment_id


def test_starts_that_all_found_the_id_file_damaged_agree_on_one_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "deployment_id"
    path.write_bytes(b"")  # what a crash, or an operator's ``touch``, leaves
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


def test_a_damaged_id_file_that_cannot_be_renamed_over_is_written_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file bind-mounted into a container (``docker run -v host_file:file``, a
    Kubernetes ``subPath``) starts empty, and renaming over a mount point fails
    with EBUSY: the id must still be kept, the same at the next start."""
    import errno
    import os

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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deployment_id"]
