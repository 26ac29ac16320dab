"""Flask: which URL rule matched, at (almost) no cost per request.

Flask keeps the matched rule on ``request.url_rule`` (``/items/<int:item_id>``:
the rule that matched, not the endpoint's first one). While the app calls
``start_response``, Werkzeug's live request object sits in the environ under
``werkzeug.request``, so :class:`~reqtelemetry.integrations.wsgi.WSGIMiddleware`
reads the rule there: no hook runs on an ordinary request.

Only when a view's exception propagates out of Flask (``PROPAGATE_EXCEPTIONS``,
testing and debug mode) is ``start_response`` never called; for that case a
receiver of Flask's ``got_request_exception`` signal, which fires only on
errors, copies the rule into the environ. The integration also tells the
traits that the framework is Flask, and whether the app runs in debug mode.
"""

from __future__ import annotations

import sys
from typing import Any

from .wsgi import ROUTE_KEY, WSGIApp

_INSTALLED_FLAG = "_reqtelemetry_route_hook"


def _copy_rule_on_exception(sender: Any, **_: Any) -> None:
    from flask import request

    rule = request.url_rule
    request.environ[ROUTE_KEY] = rule.rule if rule is not None else None


def install(flask_app: Any, telemetry: Any = None) -> None:
    """Connect the exception-path hook to one Flask app (idempotent)."""
    if telemetry is not None:
        telemetry.note_framework("flask")
        if flask_app.debug:
            telemetry.note_development("Flask debug mode")
    if getattr(flask_app, _INSTALLED_FLAG, False):
        return
    from flask import got_request_exception

    got_request_exception.connect(_copy_rule_on_exception, flask_app, weak=False)
    setattr(flask_app, _INSTALLED_FLAG, True)


def install_if_flask(app: WSGIApp, telemetry: Any = None) -> None:
    """Install the hook when ``app`` is a Flask app or its bound ``wsgi_app``."""
    flask = sys.modules.get("flask")
    if flask is None:
        return
    candidate = getattr(app, "__self__", app)
    if isinstance(candidate, flask.Flask):
        install(candidate, telemetry)


def init_app(flask_app: Any, telemetry: Any) -> None:
    """Measure a Flask app's requests, in the manner of Flask extensions.

    Enabled, ``app.wsgi_app`` is wrapped in a
    :class:`~reqtelemetry.integrations.wsgi.WSGIMiddleware`. Opted out, the app
    is left exactly as it was: not even a pass-through is installed, so an
    opted-out deployment pays nothing per request (a pass-through middleware
    object costs about 1,600 machine instructions per Flask request).

    Raises ``RuntimeError`` when the app is already instrumented: a second
    middleware would count every request twice.
    """
    from .wsgi import WSGIMiddleware

    if isinstance(flask_app.wsgi_app, WSGIMiddleware):
        raise RuntimeError("this Flask app is already instrumented by reqtelemetry")
    if telemetry.enabled:
        flask_app.wsgi_app = WSGIMiddleware(flask_app.wsgi_app, telemetry=telemetry)
