"""The same measurements through OpenTelemetry instruments (``otel=True``).

Checked with the real SDK: a ``MeterProvider`` with an ``InMemoryMetricReader``,
passed to :class:`~reqtelemetry.otel.OTelInstruments` directly, and — because
the global provider can be set only once per process — set globally in a
subprocess for ``Telemetry(otel=True)`` behind the ASGI middleware.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.metrics")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import reqtelemetry
from reqtelemetry.otel import DURATION_BUCKETS, OTelInstruments

NAMES = {
    "http.server.request.duration": "s",
    "http.server.request.body.size": "By",
    "http.server.response.body.size": "By",
}
ATTRIBUTES = {"http.request.method", "http.route", "http.response.status_code", "url.scheme"}


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    """``{name: (metric, scope)}`` from the reader."""
    found = {}
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else []:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found[metric.name] = (metric, scope_metrics.scope)
    return found


def points_by_route(metric: Any) -> dict[tuple[str, str, int], Any]:
    return {
        (
            p.attributes["http.request.method"],
            p.attributes["http.route"],
            p.attributes["http.response.status_code"],
        ): p
        for p in metric.data.data_points
    }


def test_instruments_follow_the_http_semantic_conventions():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = OTelInstruments(meter_provider=provider)
    instruments.record("GET", "/items/{item_id}", 200, 0.012, 0, 512)
    instruments.record("GET", "/items/{item_id}", 200, 0.030, 0, 488)
    instruments.record("POST", "/items", 201, 0.2, 230, 64, scheme="https")
    found = collect(reader)
    assert {name: metric.unit for name, (metric, _) in found.items()} == NAMES
    for metric, scope in found.values():
        assert scope.name == "reqtelemetry"
        assert scope.version == reqtelemetry.__version__
        for point in metric.data.data_points:
            assert set(point.attributes) == ATTRIBUTES

    duration = points_by_route(found["http.server.request.duration"][0])
    get = duration[("GET", "/items/{item_id}", 200)]
    assert get.count == 2
    assert get.sum == pytest.approx(0.042)
    assert get.attributes["url.scheme"] == "http"
    assert tuple(get.explicit_bounds) == DURATION_BUCKETS
    post = duration[("POST", "/items", 201)]
    assert post.attributes["url.scheme"] == "https"
    assert isinstance(post.attributes["http.response.status_code"], int)

    request_size = points_by_route(found["http.server.request.body.size"][0])
    assert request_size[("POST", "/items", 201)].sum == 230
    response_size = points_by_route(found["http.server.response.body.size"][0])
    assert response_size[("GET", "/items/{item_id}", 200)].sum == 1000
    assert response_size[("GET", "/items/{item_id}", 200)].count == 2
    provider.shutdown()


def test_an_excluded_route_reaches_no_instrument(make_telemetry):
    """A template under the exclusions (reached by a path outside them: a
    redirect to it) is no more the instruments' than the reports'."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = make_telemetry(exclude_prefixes=["/secret-admin/"])
    telemetry._otel = OTelInstruments(meter_provider=provider)  # what otel=True makes
    record = reqtelemetry.Telemetry.record  # the method with instruments (not the recorder's)
    record(telemetry, "GET", "/secret-admin/", 308, 0.001, 0, 0)
    record(telemetry, "GET", "/items/{item_id}", 200, 0.012, 0, 512)
    duration = points_by_route(collect(reader)["http.server.request.duration"][0])
    assert set(duration) == {("GET", "/items/{item_id}", 200)}
    assert [r["route"] for r in telemetry.snapshot()] == ["/items/{item_id}"]
    provider.shutdown()


def test_a_route_less_apps_paths_make_no_series_of_their_own(make_telemetry):
    """A route-less app's key is its anonymized path: as ``http.route`` it made
    a time series per path (one per user in ``/users/{id}/profile``), without
    a cap, until the SDK's overflow series took every later request."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = make_telemetry()
    telemetry._otel = OTelInstruments(meter_provider=provider)  # what otel=True makes
    record = reqtelemetry.Telemetry.record
    for user in range(50):
        route = telemetry.route_for_unrouted(f"/users/{user}/profile", "", True)
        record(telemetry, "GET", route, 200, 0.003, 0, 10)
    record(telemetry, "GET", "/items/{item_id}", 503, 0.5, 0, 10)
    (metric, _) = collect(reader)["http.server.request.duration"]
    points = {
        (p.attributes.get("http.route"), p.attributes["http.response.status_code"]): p
        for p in metric.data.data_points
    }
    assert set(points) == {(None, 200), ("/items/{item_id}", 503)}
    assert points[None, 200].count == 50
    assert "error.type" not in points[None, 200].attributes
    assert points["/items/{item_id}", 503].attributes["error.type"] == "503"
    assert len(telemetry.snapshot()) == 51  # the reports keep their own keys
    provider.shutdown()


def test_without_an_sdk_provider_the_instruments_are_no_ops():
    from opentelemetry.metrics import NoOpMeterProvider

    instruments = OTelInstruments(meter_provider=NoOpMeterProvider())
    instruments.record("GET", "/", 200, 0.01, 0, 0)  # nothing to see, nothing raised


SCRIPT = textwrap.dedent(
    """
    import json
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from reqtelemetry import ASGIMiddleware, Config, Telemetry

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    async def item(request):
        return PlainTextResponse("x" * 10)

    async def create(request):
        await request.body()
        return PlainTextResponse("made", status_code=201)

    def app_with(telemetry):
        routes = [Route("/items/{item_id}", item), Route("/items", create, methods=["POST"])]
        return ASGIMiddleware(Starlette(routes=routes), telemetry=telemetry)

    # Opted out, otel=True: nothing may be recorded anywhere.
    off = Telemetry(config=Config.resolve(environ={}, argv=[], otel=True, opt_out=True))
    with TestClient(app_with(off)) as client:
        client.get("/items/1")

    on = Telemetry(config=Config.resolve(environ={}, argv=[], otel=True))
    with TestClient(app_with(on)) as client:
        for i in range(3):
            client.get(f"/items/{i}")
        client.post("/items", content=b"y" * 7)
        client.get("/nowhere")
    with TestClient(app_with(on), base_url="https://testserver") as client:
        client.get("/items/9")

    out = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = {
                    "unit": m.unit,
                    "scope": sm.scope.name,
                    "points": [
                        {"attributes": dict(p.attributes), "count": p.count, "sum": p.sum}
                        for p in m.data.data_points
                    ],
                }
    out["recorded"] = sum(r["count"] for r in on.snapshot())
    print(json.dumps(out))
    """
)


def run_script(script: Path, text: str) -> dict:
    """Run ``text`` in a fresh interpreter (OpenTelemetry's provider is global) and
    return the JSON on its last line; opt-out variables of the caller are left out."""
    script.write_text(text)
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in {"SQA_OPT_OUT", "REQTELEMETRY_OPT_OUT", "DO_NOT_TRACK", "REQTELEMETRY_DEBUG"}
    }
    result = subprocess.run(
        [sys.executable, "-W", "ignore", str(script)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_telemetry_with_otel_records_through_the_global_provider(tmp_path):
    out = run_script(tmp_path / "otel_app.py", SCRIPT)
    assert out.pop("recorded") == 6  # the recorder still gets every request
    assert {name: data["unit"] for name, data in out.items()} == NAMES
    duration = {
        (
            p["attributes"]["http.request.method"],
            p["attributes"].get("http.route"),
            p["attributes"]["http.response.status_code"],
            p["attributes"]["url.scheme"],
        ): p
        for p in out["http.server.request.duration"]["points"]
    }
    assert {key: p["count"] for key, p in duration.items()} == {
        ("GET", "/items/{item_id}", 200, "http"): 3,
        ("GET", "/items/{item_id}", 200, "https"): 1,
        ("POST", "/items", 201, "http"): 1,
        ("GET", None, 404, "http"): 1,  # no template: no http.route, as the conventions say
    }
    for (_, route, _, _), point in duration.items():
        assert set(point["attributes"]) == (ATTRIBUTES if route else ATTRIBUTES - {"http.route"})
        assert point["sum"] > 0
    sizes = {
        p["attributes"].get("http.route"): p["sum"]
        for p in out["http.server.request.body.size"]["points"]
    }
    assert sizes["/items"] == 7
    responses: dict[str, int] = {}
    for p in out["http.server.response.body.size"]["points"]:
        route = p["attributes"].get("http.route")
        responses[route] = responses.get(route, 0) + p["sum"]
    assert responses["/items/{item_id}"] == 40  # 4 answers of 10 bytes, http and https


FLASK_SCRIPT = textwrap.dedent(
    """
    import json
    from flask import Flask
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from reqtelemetry import Config, Telemetry
    from reqtelemetry.flask import init_app

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    app = Flask("otel_flask")

    @app.route("/items/<int:item_id>")
    def item(item_id):
        return "x" * 10

    on = Telemetry(config=Config.resolve(environ={}, argv=[], otel=True))
    init_app(app, on)
    client = app.test_client()
    for i in range(2):
        client.get(f"/items/{i}").data
    client.get("/items/9", base_url="https://localhost").data

    counts = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "http.server.request.duration":
                    for p in m.data.data_points:
                        a = p.attributes
                        key = f'{a["http.route"]} {a["url.scheme"]}'
                        counts[key] = p.count
    print(json.dumps({"counts": counts, "recorded": sum(r["count"] for r in on.snapshot())}))
    """
)


def test_flask_with_otel_records_through_the_global_provider(tmp_path):
    # With OpenTelemetry on, the WSGI middleware records through Telemetry.record
    # (instruments and recorder), not by queueing into the recorder alone.
    out = run_script(tmp_path / "otel_flask.py", FLASK_SCRIPT)
    assert out["recorded"] == 3
    assert out["counts"] == {"/items/<int:item_id> http": 2, "/items/<int:item_id> https": 1}


DJANGO_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    import types

    import django
    from django.conf import settings
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    settings.configure(
        DEBUG=False,
        SECRET_KEY="otel-test-key-" + "x" * 40,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="otel_urls",
        MIDDLEWARE=["reqtelemetry.integrations.django.TelemetryMiddleware"],
        REQTELEMETRY={"otel": True, "endpoint": None},
    )
    from django.http import HttpResponse
    from django.urls import path

    urls = types.ModuleType("otel_urls")
    urls.urlpatterns = [path("items/<int:pk>/", lambda request, pk: HttpResponse("x" * 10))]
    sys.modules["otel_urls"] = urls
    django.setup()

    from django.test import Client
    from reqtelemetry.integrations.django import get_telemetry

    client = Client()
    for i in range(2):
        client.get(f"/items/{i}/")
    client.get("/items/9/", secure=True)
    counts = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "http.server.request.duration":
                    for p in m.data.data_points:
                        a = p.attributes
                        counts[f'{a["http.route"]} {a["url.scheme"]}'] = p.count
    recorded = sum(r["count"] for r in get_telemetry().snapshot())
    print(json.dumps({"counts": counts, "recorded": recorded}))
    """
)


def test_django_with_otel_records_through_the_global_provider(tmp_path):
    # Without OpenTelemetry the middleware only queues and never reads
    # ``request.scheme``; with it, every request reaches the instruments with its scheme.
    out = run_script(tmp_path / "otel_django.py", DJANGO_SCRIPT)
    assert out["recorded"] == 3
    assert out["counts"] == {"/items/<int:pk>/ http": 2, "/items/<int:pk>/ https": 1}


def test_scheme_attribute_is_one_of_a_few_known_values():
    from reqtelemetry.otel import OTHER_SCHEME, scheme_attribute

    assert [scheme_attribute(s) for s in ("http", "https", "ws", "wss")] == [
        "http",
        "https",
        "ws",
        "wss",
    ]
    assert scheme_attribute("HTTPS") == "https"  # URI schemes are case-insensitive
    for other in ("", "ftp", "https ", "https, http", "x" * 10_000, "CANARY-7f3a"):
        assert scheme_attribute(other) == OTHER_SCHEME


#: What a client forges into X-Forwarded-Proto: it must not reach any attribute.
SCHEME_CANARY = "CANARY-7f3a alice@example.com"

PROXY_FIX_SCRIPT = textwrap.dedent(
    """
    import json
    import threading

    import httpx
    from flask import Flask
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from werkzeug.middleware.proxy_fix import ProxyFix
    from werkzeug.serving import WSGIRequestHandler, make_server

    from reqtelemetry import Config, Telemetry
    from reqtelemetry.flask import init_app

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    app = Flask("otel_proxy_fix")

    @app.route("/items/<int:item_id>")
    def item(item_id):
        return "x"

    init_app(app, Telemetry(config=Config.resolve(environ={}, argv=[], otel=True)))
    # As behind a reverse proxy: the scheme is whatever X-Forwarded-Proto says.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_proto=1)

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args, **kwargs):
            pass

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.port}/items/1"
    with httpx.Client() as client:
        for proto in (CANARY, "https", "HTTPS", None):
            headers = {} if proto is None else {"X-Forwarded-Proto": proto}
            assert client.get(url, headers=headers).status_code == 200
    server.shutdown()

    points = []
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    points.append({"name": m.name, "count": p.count, **p.attributes})
    print(json.dumps({"points": points}))
    """
).replace("CANARY", repr(SCHEME_CANARY))


def test_a_forwarded_scheme_reaches_otel_only_as_a_known_value(tmp_path):
    # A real werkzeug server: Flask, init_app, and ProxyFix trusting
    # X-Forwarded-Proto, as an app behind a reverse proxy is set up. What a
    # client puts in the header is recorded as "_OTHER"; "https" (in any case)
    # as "https"; no header leaves the server's own "http".
    points = run_script(tmp_path / "otel_proxy_fix.py", PROXY_FIX_SCRIPT)["points"]
    assert points
    assert "CANARY" not in json.dumps(points)
    assert "alice" not in json.dumps(points)
    for name in NAMES:
        schemes = {p["url.scheme"]: p["count"] for p in points if p["name"] == name}
        assert schemes == {"_OTHER": 1, "https": 2, "http": 1}
