"""A small Flask service instrumented with reqtelemetry, as the README shows.

Run it: ``flask --app examples.flask_app.app run`` (from the repository root).
"""

from __future__ import annotations

import os

from flask import Blueprint, Flask, Response, abort, jsonify, request

from reqtelemetry import Telemetry, WSGIMiddleware

telemetry = Telemetry(
    endpoint=os.environ.get("TELEMETRY_ENDPOINT"),  # None: nothing is sent
    app_name="example-flask",
    app_version="2.0.1",
    exclude_paths=["/healthz"],
)

USERS = {name: {"name": name, "posts": 3} for name in ("ada", "grace", "linus")}

users = Blueprint("users", __name__, url_prefix="/users")


@users.get("/<name>")
def get_user(name: str):
    if name not in USERS:
        abort(404)
    return jsonify(USERS[name])


@users.get("/<name>/posts/<int:post_id>")
@users.get("/<name>/p/<int:post_id>")  # a short alias: both rules, one view
def get_post(name: str, post_id: int):
    return jsonify({"user": name, "post": post_id})


api = Blueprint("api", __name__, url_prefix="/api")
api.register_blueprint(users)


@api.get("/search")
def search():
    query = request.args.get("q", "")
    return jsonify([user for user in USERS if query in user])


@api.post("/users")
def create_user():
    telemetry.count("feature.signup")
    return jsonify(request.get_json(silent=True) or {}), 201


@api.get("/export")
def export():
    def rows():
        yield "name,posts\n"
        for user in USERS.values():
            yield f"{user['name']},{user['posts']}\n"

    return Response(rows(), mimetype="text/csv")


@api.get("/crash")
def crash():
    raise RuntimeError("this route always fails")


app = Flask(__name__)
app.register_blueprint(api)


@app.get("/healthz")
def healthz():
    return {"ok": True}


app.wsgi_app = WSGIMiddleware(app.wsgi_app, telemetry=telemetry)  # type: ignore[method-assign]
