"""What a type checker sees of the package's top level, as a user's mypy --strict reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

SRC = Path(__file__).resolve().parents[1] / "src"

USER_CODE = """\
import reqtelemetry
from reqtelemetry import ASGIMiddleware, Telemetri
x: int = reqtelemetry.Telemtry
reveal_type(ASGIMiddleware)
reveal_type(reqtelemetry.ASGIMiddleware)
"""


def test_a_misspelt_name_is_an_error_and_the_lazy_middleware_keeps_its_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The package's lazy ``__getattr__`` (ASGIMiddleware imported on demand)
    # must not make every unknown name ``Any`` to a checker: a typo would pass
    # mypy --strict and fail only at import.
    monkeypatch.setenv("MYPYPATH", str(SRC))
    script = tmp_path / "user.py"
    script.write_text(USER_CODE, encoding="utf-8")
    arguments = ["--strict", "--no-incremental", "--config-file", "", str(script)]
    out, err, status = mypy_api.run(["--cache-dir", str(tmp_path / "cache"), *arguments])
    out += err
    assert status == 1, out
    assert 'Module "reqtelemetry" has no attribute "Telemetri"' in out, out
    assert 'Module has no attribute "Telemtry"' in out, out
    assert out.count("-> reqtelemetry.integrations.asgi.ASGIMiddleware") >= 2, out
