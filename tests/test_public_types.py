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
    out, status = _mypy(USER_CODE, tmp_path, monkeypatch)
    assert status == 1, out
    assert 'Module "reqtelemetry" has no attribute "Telemetri"' in out, out
    assert 'Module has no attribute "Telemtry"' in out, out
    assert out.count("-> reqtelemetry.integrations.asgi.ASGIMiddleware") >= 2, out


def _mypy(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    """What mypy --strict says of ``code``, checked as a user's project checks it,
    and its exit status."""
    monkeypatch.setenv("MYPYPATH", str(SRC))
    script = tmp_path / "user.py"
    script.write_text(code, encoding="utf-8")
    arguments = ["--strict", "--no-incremental", "--config-file", "", str(script)]
    out, err, status = mypy_api.run(["--cache-dir", str(tmp_path / "cache"), *arguments])
    return out + err, status


def _mypy_errors(
    code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[int], str]:
    """The lines mypy --strict finds errors on in ``code``."""
    out, _ = _mypy(code, tmp_path, monkeypatch)
    return sorted({int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line}), out


OTHER_ASGI_APPS = """\
import falcon.asgi
from flask import Flask
from litestar import Litestar
from quart import Quart

from reqtelemetry import ASGIMiddleware, Telemetry

telemetry = Telemetry(app_name="x")
falcon_app = ASGIMiddleware(falcon.asgi.App(), telemetry=telemetry)
litestar_app = ASGIMiddleware(Litestar(), telemetry=telemetry)
quart_app = ASGIMiddleware(Quart(__name__), telemetry=telemetry)
flask_app = ASGIMiddleware(Flask(__name__), telemetry=telemetry)  # wrong: a WSGI app
"""


def test_asgi_middleware_takes_the_apps_of_quart_litestar_and_falcon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # They type an app's scope as a dict or as TypedDicts, not as Starlette's
    # MutableMapping: the README's recipes for them failed a user's mypy.
    # A WSGI app must still be refused.
    for name in ("falcon", "litestar", "quart", "flask"):
        pytest.importorskip(name)
    errors, out = _mypy_errors(OTHER_ASGI_APPS, tmp_path, monkeypatch)
    assert errors == [12], out


QUART_NOTE_ROUTE = """\
from quart import Quart, request

from reqtelemetry import note_route

app = Quart(__name__)


@app.before_request
async def tell_route() -> None:
    rule = request.url_rule
    note_route(request.scope, rule.rule if rule is not None else None)
    note_route(request, None)  # wrong: the request, not its scope
"""


def test_note_route_takes_quarts_scope(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Quart types request.scope as hypercorn's TypedDicts, which are no
    # MutableMapping to a checker: the README's Quart recipe failed mypy.
    pytest.importorskip("quart")
    errors, out = _mypy_errors(QUART_NOTE_ROUTE, tmp_path, monkeypatch)
    assert errors == [12], out


MISTAKEN_OPTIONS = """\
from pathlib import Path

from reqtelemetry import ASGIMiddleware, Telemetry, WSGIMiddleware
from reqtelemetry.integrations.asgi import ASGIApp
from reqtelemetry.integrations.wsgi import WSGIApp


def check(asgi_app: ASGIApp, wsgi_app: WSGIApp) -> None:
    Telemetry("https://collector.example", app_name="x", exclude_paths=["/healthz"])
    Telemetry(deployment_id_path=Path("~/id"), flush_interval=60, allowed_query_keys=("page",))
    ASGIMiddleware(asgi_app, endpoint=None, app_version="1.4.2", opt_out=False)
    WSGIMiddleware(wsgi_app, endpoint="https://collector.example", max_keys=100)
    Telemetry(app_name="x", exclude_path=["/healthz"])
    Telemetry(app_version=3.10)
    ASGIMiddleware(asgi_app, app_nam="x")
    WSGIMiddleware(wsgi_app, record_query="false")
"""


def test_a_misspelt_or_mistyped_option_is_a_type_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Typed **options: Any, each of the last four passed mypy --strict and
    # failed only at start; an IDE offered no option names either.
    errors, out = _mypy_errors(MISTAKEN_OPTIONS, tmp_path, monkeypatch)
    assert errors == [13, 14, 15, 16], out


def test_the_typed_options_are_the_options() -> None:
    from reqtelemetry.config import _NOT_OPTIONS, Config, Options

    assert set(Options.__annotations__) == Config.field_names() - _NOT_OPTIONS


def test_the_signatures_resolve_at_run_time() -> None:
    # Dependency injectors and documentation tools read a class's __init__
    # with typing.get_type_hints: Unpack, imported for checkers only, was a
    # NameError there, where **options: Any had resolved.
    import inspect
    import typing

    from reqtelemetry import ASGIMiddleware, Telemetry, WSGIMiddleware

    for cls in (Telemetry, ASGIMiddleware, WSGIMiddleware):
        assert "options" in typing.get_type_hints(cls.__init__), cls
        assert "telemetry" in inspect.signature(cls, eval_str=True).parameters or cls is Telemetry
