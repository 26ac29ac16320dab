"""What MANIFEST.in puts in the source distribution, beside the package itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _manifest_files() -> set[str]:
    """The files MANIFEST.in's own lines add, read as setuptools reads them."""
    egg_info = pytest.importorskip("setuptools.command.egg_info")
    files = egg_info.FileList()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        # The tree as an sdist sees it, without .venv, .git and the caches.
        tree = []
        for folder, folders, names in os.walk(ROOT):
            folders[:] = [name for name in folders if not name.startswith(".")]
            tree.extend(os.path.relpath(os.path.join(folder, name), ROOT) for name in names)
        files.allfiles = tree
        for line in (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                files.process_template_line(line)
    finally:
        os.chdir(cwd)
    return {name.replace(os.sep, "/") for name in files.files}


def test_the_sdist_carries_the_makefile_its_readme_runs() -> None:
    # README.md, the sdist's first page, starts with `make demo` and `make test`.
    assert "Makefile" in _manifest_files()
