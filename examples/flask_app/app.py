"""A small Flask service instrumented with reqtelemetry, exactly as the README shows.

Run it from the repository root: ``flask --app examples.flask_app.app run`` or
``gunicorn -w 2 examples.flask_app.app:app``; ``README.md`` next to this file
says what it reports and how to turn that off.
"""

from __future__ import annotations

import os

from flask import Blueprint, Flask, Response, abort, jsonify, request

from reqtelemetry import Telemetry
from reqtelemetry.flask import init_app

telemetry = Telemetry(
    endpoint=os.environ.get("TELEMETRY_ENDPOINT"),  # your collector; unset: nothing is sent
    app_name="example-flask",
    app_version="2.0.1",
    exclude_paths=["/healthz"],  # never measured
)
app = Flask(__name__)
init_app(app, telemetry)  # measures from inside Flask; opted out, installs nothing

USERS = {name: {"name": name, "posts": 3} for name in ("ada", "grace", "linus")}

api = Blueprint("api", __name__, url_prefix="/api")
users = Blueprint("users", __name__, url_prefix="/users")


@users.get("/<name>")
def get_user(name: str) -> Response:
    if name not in USERS:
        abort(404)
    return jsonify(USERS[name])


@users.get("/<name>/posts/<int:post_id>")
@users.get("/<name>/p/<int:post_id>")  # a short alias: two rules, one view, two keys
def get_post(name: str, post_id: int) -> Response:
    return jsonify({"user": name, "post": post_id})


@api.get("/search")
def search() -> Response:
    query = request.args.get("q", "")
    return jsonify([name for name in USERS if query in name])


@api.post("/users")
def create_user() -> tuple[Response, int]:
    telemetry.count("feature.signup")  # an app-defined usage counter
    return jsonify(request.get_json(silent=True) or {}), 201


@api.get("/export")
def export() -> Response:
    def rows():  # streamed: measured to the last chunk
        yield "name,posts\n"
        for user in USERS.values():
            yield f"{user['name']},{user['posts']}\n"

    return Response(rows(), mimetype="text/csv")


@api.get("/crash")
def crash() -> Response:
    raise RuntimeError("this route always fails")


@app.get("/healthz")
def healthz() -> dict:
    return {"ok": True}


api.register_blueprint(users)
app.register_blueprint(api)
