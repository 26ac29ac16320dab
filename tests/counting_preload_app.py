"""The Flask example, counting as it loads, then loading on for a while: what
a preloading gunicorn master runs before it forks its workers (an app that
counts its boots, and whose import goes on past the flusher's first look)."""

import time

from examples.flask_app.app import app, telemetry

telemetry.count("app.boot")
time.sleep(1.5)  # the rest of a heavy import: past IDLE_POLL_SECONDS

__all__ = ["app"]
