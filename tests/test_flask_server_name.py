"""Flask 3.1 serves hosts other than SERVER_NAME; their canonical redirects go to SERVER_NAME."""

from __future__ import annotations

import pytest
from flask import Flask

from reqtelemetry import WSGIMiddleware
from reqtelemetry.flask import init_app


@pytest.mark.parametrize("how", ["init_app", "middleware"])
def test_a_slash_redirect_to_the_server_name_is_keyed_by_its_rule(telemetry, counts, how):
    app = Flask(__name__)
    app.config["SERVER_NAME"] = "www.example.com"  # for url_for(_external=True) in jobs

    @app.route("/users/<int:user_id>/")
    def user(user_id):
        return "user"

    served = app
    if how == "init_app":
        init_app(app, telemetry)
    else:
        served = WSGIMiddleware(app, telemetry=telemetry)
    from werkzeug.test import Client

    client = Client(served)
    for host in ("www.example.com", "example.com", "10.0.0.7:8000"):
        response = client.get("/users/1", headers={"Host": host})
        response.get_data()  # a server sends the whole body
        assert response.status_code == 308
        assert response.headers["Location"] == "http://www.example.com/users/1/"
    assert counts(telemetry) == {("GET", "/users/<int:user_id>/", 308): 3}


def test_a_redirect_to_another_site_stays_unmatched(telemetry, counts):
    app = Flask(__name__)
    app.add_url_rule("/docs/<path:rest>", "docs", redirect_to="https://docs.example.org/<rest>")
    init_app(app, telemetry)
    from werkzeug.test import Client

    response = Client(app).get("/docs/a")
    response.get_data()
    assert response.status_code == 308
    assert counts(telemetry) == {("GET", "<unmatched>", 308): 1}
