"""The Flask example in an app that patches gevent itself, first thing, and
counts as it loads: under ``gunicorn --preload -k gevent`` the master has
patched before it forks, so its flusher is a greenlet, which a fork does not
end, and its main thread's stack is a greenlet's."""

from gevent import monkey

monkey.patch_all()

import time  # noqa: E402  (after the patch, as such an app does)

from examples.flask_app.app import app, telemetry  # noqa: E402

telemetry.count("app.boot")
time.sleep(1.5)  # the rest of a heavy import: past IDLE_POLL_SECONDS

__all__ = ["app"]
