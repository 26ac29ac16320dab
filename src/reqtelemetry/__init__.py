"""reqtelemetry: anonymous, privacy-first usage telemetry for Python web services.

Users import from here; the modules behind it are internal and may move.
"""

from ._version import __version__
from .anonymize import Anonymizer, hash_value
from .config import Config, add_opt_out_argument
from .integrations.asgi import ASGIMiddleware
from .integrations.wsgi import WSGIMiddleware
from .telemetry import Telemetry

__all__ = [
    "ASGIMiddleware",
    "Anonymizer",
    "Config",
    "Telemetry",
    "WSGIMiddleware",
    "__version__",
    "add_opt_out_argument",
    "hash_value",
]
