"""Flask helpers: ``init_app(app, telemetry)`` measures a Flask app from inside."""

from .integrations.flask import init_app, install

__all__ = ["init_app", "install"]
