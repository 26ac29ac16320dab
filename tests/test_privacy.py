"""Nothing a client sends may reach the aggregates: not paths, queries, headers nor bodies.

Every request below carries canaries (a marker, an email address, an IP address) in
every place a client controls; the JSON of the snapshot must contain none of them,
and never the anonymizer's salt, whatever the configuration.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tempfile
import warnings
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI, Request
from flask import Flask
from flask import request as flask_request
from werkzeug.test import Client

from reqtelemetry import ASGIMiddleware, WSGIMiddleware
from reqtelemetry.flask import init_app
from reqtelemetry.flusher import Flusher

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

MARKER = "canary-7f3a9c"
EMAIL = "alice.canary@example.com"
IP = "203.0.113.77"
# (No hex-only fragments: a sha256 could contain one by chance.)
CANARIES = [MARKER, EMAIL, IP, quote(EMAIL, safe=""), "canary", "alice", "203.0.113"]

PATHS = [
    f"/items/{MARKER}",
    f"/users/{quote(EMAIL)}/ip/{IP}",
    f"/{MARKER}/{IP}/{quote(EMAIL)}",
    f"/static/{MARKER}/{IP}.css",
    "/items/1",
]
QUERY = f"?q={MARKER}&email={quote(EMAIL)}&{MARKER}={IP}&page={IP}"
HEADERS = {
    "Authorization": f"Bearer {MARKER}",
    "Cookie": f"session={MARKER}; email={quote(EMAIL)}",
    "X-Forwarded-For": f"{IP}, 10.0.0.1",
    "X-Real-IP": IP,
    "User-Agent": f"scanner/{MARKER}",
    "Referer": f"https://{IP}/{MARKER}",
    "X-Canary": MARKER,
    "Host": f"{MARKER}.example:8443",  # read once, to tell a development run
}
BODY = json.dumps({"email": EMAIL, "ip": IP, "marker": MARKER}).encode()

CONFIGS = [
    {},
    {"record_query": True, "allowed_query_keys": ["q", "email", "page"]},
    {"record_query": True, "allowed_query_keys": ["q"], "group_unmatched": False},
    {"group_unmatched": False, "allowed_path_segments": ["items", "users", "ip", "static"]},
]


def assert_no_canary(text: str, salt: str) -> None:
    for canary in CANARIES:
        assert canary not in text, canary
        assert canary.lower() not in text.lower(), canary
    assert salt not in text


def the_reports(telemetry) -> str:
    """The reports exactly as the flusher would send them (its debug path, which
    builds them as a send does: traits, metrics, the batch, split into parts)."""
    telemetry.count("jobs.completed", 2)
    telemetry.config = replace(
        telemetry.config, deployment_id_path=os.path.join(tempfile.mkdtemp(), "id")
    )
    written = io.StringIO()
    assert Flusher(telemetry, None, debug_stream=lambda: written).flush()
    return written.getvalue()


def assert_clean(telemetry) -> None:
    snapshot = telemetry.snapshot()
    assert snapshot, "the requests were recorded"
    salt = telemetry.anonymizer._salt
    assert_no_canary(json.dumps(snapshot), salt)
    reports = the_reports(telemetry)
    assert '"jobs.completed":2' in reports  # the whole report, metrics and traits included
    assert sum(json.loads(line)["batch"]["records"] != [] for line in reports.splitlines())
    assert_no_canary(reports, salt)
    assert telemetry.internal_errors == 0


def requests_to_send():
    for path in PATHS:
        for query in ("", QUERY):
            yield "GET", path + query, None
            yield "POST", path + query, BODY


# -- ASGI ---------------------------------------------------------------------------


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    def get_item(item_id: str):
        return {"item": item_id}

    @app.post("/items/{item_id}")
    async def post_item(item_id: str, request: Request):
        return {"item": item_id, "body": (await request.body()).decode()}

    async def static(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    app.mount("/static", static)
    return app


async def routeless_asgi(scope, receive, send):
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    status = 404 if MARKER in scope["path"] else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode() + BODY})


@pytest.mark.parametrize("options", CONFIGS)
def test_fastapi(make_telemetry, options):
    telemetry = make_telemetry(**options)
    app = fastapi_app()
    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    client = TestClient(app, raise_server_exceptions=False)
    for method, url, body in requests_to_send():
        client.request(method, url, content=body, headers=HEADERS, cookies=None)
    assert_clean(telemetry)


@pytest.mark.parametrize("options", CONFIGS)
def test_routeless_asgi(make_telemetry, options):
    telemetry = make_telemetry(**options)
    app = ASGIMiddleware(routeless_asgi, telemetry=telemetry)

    async def run():
        transport = httpx.ASGITransport(app=app, client=(IP, 4242))
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{IP}") as client:
            for method, url, body in requests_to_send():
                await client.request(method, url, content=body, headers=HEADERS)

    asyncio.run(run())
    assert_clean(telemetry)


# -- WSGI ---------------------------------------------------------------------------


def flask_app() -> Flask:
    app = Flask(__name__)

    @app.route("/items/<item_id>", methods=["GET", "POST"])
    def item(item_id):
        return {"item": item_id, "body": flask_request.get_data(as_text=True)}

    return app


def routeless_wsgi(environ, start_response):
    size = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(size)
    status = "404 Not Found" if MARKER in environ["PATH_INFO"] else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode(), body]


@pytest.mark.parametrize("options", CONFIGS)
def test_flask(make_telemetry, options):
    telemetry = make_telemetry(**options)
    app = flask_app()
    init_app(app, telemetry)
    client = app.test_client()
    for method, url, body in requests_to_send():
        response = client.open(
            url, method=method, data=body, headers=HEADERS, environ_base={"REMOTE_ADDR": IP}
        )
        response.data  # noqa: B018
    assert_clean(telemetry)


def flask_app_that_fails() -> Flask:
    """Streams, errors, its own 404 page, and a session store that is down for marked requests."""
    from flask import Response
    from flask.sessions import SecureCookieSessionInterface

    class FlakySessions(SecureCookieSessionInterface):
        def open_session(self, app, request):
            if MARKER in request.path and request.method == "POST":
                raise ConnectionError(f"session store down for {request.path}")
            return super().open_session(app, request)

    app = Flask(__name__)
    app.session_interface = FlakySessions()

    @app.errorhandler(404)
    def not_found(error):  # a page of the app's own: a buffered body, no rule
        return f"nothing at {flask_request.path}", 404

    @app.route("/items/<item_id>", methods=["GET", "POST"])
    def item(item_id):
        if MARKER in item_id:
            raise RuntimeError(f"failed on {item_id}")
        return Response(iter([item_id.encode(), flask_request.get_data()]))

    return app


@pytest.mark.parametrize("propagate", [False, True])
@pytest.mark.parametrize("options", CONFIGS)
def test_flask_errors_and_streams(make_telemetry, options, propagate):
    """Every way ``init_app`` builds a record: streamed, failed in a view, failed before routing."""
    telemetry = make_telemetry(**options)
    app = flask_app_that_fails()
    app.config["PROPAGATE_EXCEPTIONS"] = propagate
    init_app(app, telemetry)
    client = app.test_client()
    for method, url, body in requests_to_send():
        try:
            response = client.open(
                url, method=method, data=body, headers=HEADERS, environ_base={"REMOTE_ADDR": IP}
            )
            response.data  # noqa: B018
        except (RuntimeError, ConnectionError):
            assert propagate
    statuses = {record["status"] for record in telemetry.snapshot()}
    assert {200, 404, 500} <= statuses
    assert_clean(telemetry)


@pytest.mark.parametrize("options", CONFIGS)
def test_routeless_wsgi(make_telemetry, options):
    telemetry = make_telemetry(**options)
    client = Client(WSGIMiddleware(routeless_wsgi, telemetry=telemetry))
    for method, url, body in requests_to_send():
        response = client.open(
            url, method=method, data=body, headers=HEADERS, environ_base={"REMOTE_ADDR": IP}
        )
        response.data  # noqa: B018
    assert_clean(telemetry)


# -- Django --------------------------------------------------------------------------


def django_headers():
    return {
        "HTTP_" + name.upper().replace("-", "_"): value
        for name, value in HEADERS.items()
        if name != "Cookie"
    } | {"HTTP_COOKIE": HEADERS["Cookie"], "REMOTE_ADDR": IP}


def django_paths():
    for method, url, body in requests_to_send():
        yield method, url.replace("/items/", "/echo/", 1), body


@pytest.mark.parametrize("options", CONFIGS)
def test_django_wsgi(django_telemetry_factory, options):
    from django.test import Client as DjangoClient

    telemetry = django_telemetry_factory(**options)
    client = DjangoClient(raise_request_exception=False)
    for method, url, body in django_paths():
        kwargs = {"data": body, "content_type": "application/json"} if body else {}
        getattr(client, method.lower())(url, **kwargs, **django_headers())
    assert_clean(telemetry)


@pytest.mark.parametrize("options", CONFIGS)
def test_django_asgi(django_telemetry_factory, options):
    from django.test import AsyncClient

    telemetry = django_telemetry_factory(**options)

    async def run():
        client = AsyncClient(raise_request_exception=False)
        headers = {name: value for name, value in HEADERS.items()}
        for method, url, body in django_paths():
            kwargs = {"data": body, "content_type": "application/json"} if body else {}
            await getattr(client, method.lower())(url, headers=headers, **kwargs)

    asyncio.run(run())
    assert_clean(telemetry)


# -- A secret in a route template, excluded as the README says -----------------------
#
# A template can hold a secret: a hidden admin URL read from the environment.
# The README has it left out with ``exclude_prefixes=["/" + ADMIN_URL]``. A
# path outside the prefix that the router redirects into it (the prefix
# without its slash, doubled slashes, a language prefix) was recorded under
# the secret's template all the same.

SECRET_ADMIN = f"{MARKER}-admin"


@pytest.mark.parametrize("way", ["init_app", "WSGIMiddleware"])
def test_flask_never_sends_an_excluded_template(make_telemetry, counts, way):
    app = Flask(__name__)

    @app.route(f"/{SECRET_ADMIN}/")
    def admin_index():
        return "admin"

    @app.route(f"/{SECRET_ADMIN}/users/<int:user_id>")
    def admin_user(user_id: int):
        return "user"

    @app.route("/items/<int:item_id>")
    def item(item_id: int):
        return "item"

    telemetry = make_telemetry(exclude_prefixes=[f"/{SECRET_ADMIN}/"])
    if way == "init_app":
        init_app(app, telemetry)
    else:
        app.wsgi_app = WSGIMiddleware(app.wsgi_app, telemetry=telemetry)
    client = app.test_client()
    statuses = []
    for path in [
        f"/{SECRET_ADMIN}/",
        f"/{SECRET_ADMIN}/users/1",
        f"/{SECRET_ADMIN}",  # 308 to the trailing slash
        f"/{SECRET_ADMIN}//users/1",  # 308, slashes merged
        "/items/1",
    ]:
        response = client.get(path)
        response.get_data()  # read to its end: closed before, it is a client that left
        statuses.append(response.status_code)
        response.close()
    assert statuses == [200, 200, 308, 308, 200]
    assert counts(telemetry) == {("GET", "/items/<int:item_id>", 200): 1}
    assert telemetry.recorder.dropped == 0  # left out, not dropped for the key cap
    assert_clean(telemetry)


def get_under_an_excluded_secret(app, secret, make_telemetry):
    """The Starlette ``app`` measured with ``/{secret}/`` excluded, asked for
    that URL, for it without its slash, and for ``/items/1``: the telemetry,
    and the statuses, in order."""
    telemetry = make_telemetry(exclude_prefixes=[f"/{secret}/"])
    app.add_middleware(ASGIMiddleware, telemetry=telemetry)
    with TestClient(app) as client:
        statuses = [
            client.get(path, follow_redirects=False).status_code
            for path in [f"/{secret}/", f"/{secret}", "/items/1"]
        ]
    return telemetry, statuses


def test_starlette_never_sends_an_excluded_template(make_telemetry, counts):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def page(request):
        return PlainTextResponse("page")

    app = Starlette(
        routes=[
            Mount(f"/{SECRET_ADMIN}", routes=[Route("/", page), Route("/users/{uid}", page)]),
            Route("/items/{item_id}", page),
        ]
    )
    telemetry, statuses = get_under_an_excluded_secret(app, SECRET_ADMIN, make_telemetry)
    assert statuses == [200, 307, 200]  # the 307: redirect_slashes
    assert counts(telemetry) == {("GET", "/items/{item_id}", 200): 1}
    assert_clean(telemetry)


def _hidden_admin_site() -> Any:
    """Django's settings for tests/django_test_hidden_admin_urls.py: its URLconf,
    English and French, and the middleware that redirects into a language."""
    from django.test import override_settings

    from django_test_hidden_admin_urls import LANGUAGES

    return override_settings(
        ROOT_URLCONF="django_test_hidden_admin_urls",
        LANGUAGE_CODE="en",
        LANGUAGES=LANGUAGES,
        MIDDLEWARE=[
            "reqtelemetry.django.TelemetryMiddleware",
            "django.middleware.locale.LocaleMiddleware",
            "django.middleware.common.CommonMiddleware",
        ],
    )


def test_django_never_sends_an_excluded_template(django_telemetry_factory, counts):
    """APPEND_SLASH's redirect, and the admin under ``i18n_patterns``, whose
    templates start with ``/<language-code>/``: excluded by the same prefix."""
    from django.test import Client as DjangoClient

    from django_test_hidden_admin_urls import ADMIN_URL, LOCALIZED_ADMIN_URL

    telemetry = django_telemetry_factory(
        exclude_prefixes=["/" + ADMIN_URL, "/" + LOCALIZED_ADMIN_URL]
    )
    with _hidden_admin_site():
        client = DjangoClient(raise_request_exception=False)
        statuses = [
            client.get(path).status_code
            for path in [
                "/" + ADMIN_URL,
                "/" + ADMIN_URL + "users/1/",
                "/" + ADMIN_URL.rstrip("/"),  # APPEND_SLASH: 301 to the admin
                "/en/" + LOCALIZED_ADMIN_URL + "users/1/",
                "/fr/" + LOCALIZED_ADMIN_URL.rstrip("/"),  # 301, in a language
                "/" + LOCALIZED_ADMIN_URL,  # 302 to a language's prefix
                "/items/1/",
            ]
        ]
    assert statuses == [200, 200, 301, 200, 301, 302, 200]
    assert counts(telemetry) == {("GET", "/items/<int:pk>/", 200): 1}
    assert_clean(telemetry)


def test_django_exclusion_written_with_a_language_covers_every_language(
    django_telemetry_factory, counts
):
    """An operator copies the hidden page's URL from the browser, language
    and all (``/en/<secret>/``): the redirect from ``/<secret>/`` into it and
    the same pages in French were sent, with the secret in their template."""
    from django.test import Client as DjangoClient

    from django_test_hidden_admin_urls import LOCALIZED_ADMIN_URL

    telemetry = django_telemetry_factory(exclude_prefixes=["/en/" + LOCALIZED_ADMIN_URL])
    with _hidden_admin_site():
        client = DjangoClient(raise_request_exception=False)
        statuses = [
            client.get(path).status_code
            for path in [
                "/en/" + LOCALIZED_ADMIN_URL + "users/1/",  # excluded by its path already
                "/" + LOCALIZED_ADMIN_URL + "users/3/",  # 302 into the excluded prefix
                "/fr/" + LOCALIZED_ADMIN_URL + "users/2/",  # the same page in French
                "/items/1/",
            ]
        ]
    assert statuses == [200, 302, 200, 200]
    assert counts(telemetry) == {("GET", "/items/<int:pk>/", 200): 1}
    assert_clean(telemetry)


def test_django_exclusion_written_with_a_language_leaves_out_every_languages_404s(
    django_telemetry_factory, counts
):
    """No template tells a 404 under the hidden prefix: its path alone must.
    In another language, or in none, it was recorded (hashed, with
    ``group_unmatched`` off) though the operator left that prefix out."""
    from django.test import Client as DjangoClient

    from django_test_hidden_admin_urls import LOCALIZED_ADMIN_URL

    telemetry = django_telemetry_factory(
        exclude_prefixes=["/en/" + LOCALIZED_ADMIN_URL], group_unmatched=False
    )
    with _hidden_admin_site():
        client = DjangoClient(raise_request_exception=False)
        statuses = [
            client.get(path).status_code
            for path in [
                "/en/" + LOCALIZED_ADMIN_URL + "nope/",
                "/fr/" + LOCALIZED_ADMIN_URL + "nope/",
                "/FR/" + LOCALIZED_ADMIN_URL + "nope/",
                "/" + LOCALIZED_ADMIN_URL + "nope/x",
                "/items/1/",
                "/nowhere/1/",  # not under the prefix: recorded, hashed
            ]
        ]
    assert statuses == [404, 404, 404, 404, 200, 404]
    recorded = counts(telemetry)
    assert recorded.pop(("GET", "/items/<int:pk>/", 200)) == 1
    assert [count for (_, _, status), count in recorded.items() if status == 404] == [1]
    assert_clean(telemetry)
    # A prefix without a language in it is not widened: "/en/" still names one language's pages.
    assert telemetry.is_excluded("/de/" + LOCALIZED_ADMIN_URL + "x") is False  # not a language here


def test_only_the_prefixes_written_with_a_language_cover_every_language(
    django_telemetry_factory,
):
    """The language taken off a path is compared with the prefixes that had
    one taken off: ``/api/`` beside ``/en/secret/`` left out ``/fr/api/x``."""
    from django_test_hidden_admin_urls import LOCALIZED_ADMIN_URL

    telemetry = django_telemetry_factory(exclude_prefixes=["/api/", "/en/" + LOCALIZED_ADMIN_URL])
    with _hidden_admin_site():
        from django.test import Client as DjangoClient

        DjangoClient(raise_request_exception=False).get("/items/1/")  # the languages are noted
    assert telemetry.is_excluded("/fr/" + LOCALIZED_ADMIN_URL + "x")
    assert telemetry.is_excluded("/api/x")
    assert not telemetry.is_excluded("/fr/api/x")


@pytest.mark.parametrize("prefix", ["/api/", "/js/", "/api-internal/", "/en/", "/api/v1/"])
def test_a_prefix_that_only_looks_like_a_language_excludes_no_localized_page(
    django_telemetry_factory, counts, prefix
):
    """Read as a language, ``/api/`` left ``/``, and every page under
    ``i18n_patterns`` went unrecorded. Only the app's own languages are cut
    from a prefix, and never down to ``/`` (``/en/`` leaves out the English
    pages' paths, not every language's template)."""
    from django.test import Client as DjangoClient

    from django_test_hidden_admin_urls import LOCALIZED_ADMIN_URL

    telemetry = django_telemetry_factory(exclude_prefixes=[prefix])
    with _hidden_admin_site():
        client = DjangoClient(raise_request_exception=False)
        assert client.get("/fr/" + LOCALIZED_ADMIN_URL + "users/2/").status_code == 200
    assert counts(telemetry) == {
        ("GET", "/<language-code>/" + LOCALIZED_ADMIN_URL + "users/<int:pk>/", 200): 1
    }


def test_an_anonymized_key_is_not_taken_for_an_excluded_template(make_telemetry, counts):
    """Hashes are hex: compared with the exclusions as templates are, keys of
    a route-less app's paths matched a prefix such as ``/a`` (one in 16) and
    their requests went unrecorded. Their raw paths were compared already."""

    def routeless(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    telemetry = make_telemetry(exclude_prefixes=["/a"], exclude_paths=["/"])
    client = Client(WSGIMiddleware(routeless, telemetry=telemetry))
    for n in range(500):
        client.get(f"/page-{n}").close()
    assert sum(counts(telemetry).values()) == 500
    # Templates still are compared, a language prefix's after it (prefixes
    # only: "/" excluded is not every language's home page).
    assert telemetry.is_excluded_route("/admin/users")
    assert telemetry.is_excluded_route("/<language-code>/admin/")
    assert not telemetry.is_excluded_route("/<language-code>/")
    assert telemetry.is_excluded_route("/")


def test_a_secret_template_of_hex_digits_is_still_left_out(make_telemetry, counts):
    """A secret URL made with ``secrets.token_hex(32)`` looks like a hash: told
    from an anonymized key by its look, its template went out through the
    redirect to its trailing slash."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    secret = "3f" * 32

    async def page(request):
        return PlainTextResponse("page")

    app = Starlette(routes=[Route(f"/{secret}/", page), Route("/items/{item_id}", page)])
    telemetry, statuses = get_under_an_excluded_secret(app, secret, make_telemetry)
    assert statuses == [200, 307, 200]
    assert counts(telemetry) == {("GET", "/items/{item_id}", 200): 1}
    assert secret not in json.dumps(telemetry.snapshot())
