"""Flask: tell the WSGI middleware which URL rule matched.

Flask keeps the matched rule on ``request.url_rule``, which is gone by the time
the WSGI response is closed. Flask sends the ``request_started`` signal after
matching and before any view or ``before_request`` function runs (for 404s
too), so a receiver there copies the rule (``/items/<int:item_id>``: the rule
that matched, not the endpoint's first one) into the WSGI environ for
:class:`~reqtelemetry.integrations.wsgi.WSGIMiddleware`. A request no rule
matched gets ``None``: the middleware then counts it as unmatched.
"""

from __future__ import annotations

import sys
from typing import Any

from .wsgi import ROUTE_KEY, WSGIApp

_INSTALLED_FLAG = "_reqtelemetry_route_hook"


def _copy_rule_to_environ(sender: Any, **_: Any) -> None:
    from flask import request

    rule = request.url_rule
    request.environ[ROUTE_KEY] = rule.rule if rule is not None else None


def install(flask_app: Any) -> None:
    """Connect the route hook to one Flask app (idempotent)."""
    if getattr(flask_app, _INSTALLED_FLAG, False):
        return
    from flask import request_started

    request_started.connect(_copy_rule_to_environ, flask_app, weak=False)
    setattr(flask_app, _INSTALLED_FLAG, True)


def install_if_flask(app: WSGIApp) -> None:
    """Install the hook when ``app`` is a Flask app or its bound ``wsgi_app``."""
    flask = sys.modules.get("flask")
    if flask is None:
        return
    candidate = getattr(app, "__self__", app)
    if isinstance(candidate, flask.Flask):
        install(candidate)


def init_app(flask_app: Any, telemetry: Any) -> None:
    """``init_app(app, telemetry)``: wrap ``app.wsgi_app`` with the middleware."""
    from .wsgi import WSGIMiddleware

    flask_app.wsgi_app = WSGIMiddleware(flask_app.wsgi_app, telemetry=telemetry)
