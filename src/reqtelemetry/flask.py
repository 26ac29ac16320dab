"""Flask helpers: ``init_app(app, telemetry)`` wraps ``app.wsgi_app``."""

from .integrations.flask import init_app, install

__all__ = ["init_app", "install"]
