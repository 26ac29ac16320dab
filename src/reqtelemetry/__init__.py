"""reqtelemetry: anonymous, privacy-first usage telemetry for Python web services.

Users import from here; the modules behind it are internal and may move.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .anonymize import Anonymizer, hash_value
from .config import Config, add_opt_out_argument
from .integrations.wsgi import WSGIMiddleware
from .route_hook import note_route
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .integrations.asgi import ASGIMiddleware


if not TYPE_CHECKING:
    # Hidden from type checkers, which know ASGIMiddleware from the import
    # above: a module-level ``__getattr__`` returning ``Any`` would make every
    # other name a user reads from this package ``Any`` too, a misspelt one
    # (``from reqtelemetry import Telemetri``) included, so mypy --strict
    # would pass code that fails at import.

    def __getattr__(name: str) -> Any:
        """``ASGIMiddleware``, imported when first asked for: it brings asyncio and
        anyio, some 11 ms at import that a WSGI app (Flask, Django) never needs."""
        if name == "ASGIMiddleware":
            from .integrations.asgi import ASGIMiddleware

            return ASGIMiddleware
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "ASGIMiddleware"})


__all__ = [
    "ASGIMiddleware",
    "Anonymizer",
    "Config",
    "Telemetry",
    "WSGIMiddleware",
    "__version__",
    "add_opt_out_argument",
    "hash_value",
    "note_route",
]
