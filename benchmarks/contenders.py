"""The peers reqtelemetry is compared with, configured once for every benchmark.

Not a benchmark itself (it is not in ``MODULES``): :mod:`benchmarks.overhead`
and :mod:`benchmarks.throughput` build their contenders here, so that "the OTel
instrumentation" means the same configuration in both tables.

What a user would otherwise install, each set up the way its documentation
shows, with everything it records kept in this process:

- **OpenTelemetry** (``opentelemetry-instrumentation-asgi`` / ``-wsgi``): the
  ``OpenTelemetryMiddleware`` of each package wrapping the app from outside,
  given its own SDK ``TracerProvider`` (default sampler, always on, with a
  ``BatchSpanProcessor``, the SDK's production processor, feeding an exporter
  that counts spans and sends nothing) and its own SDK ``MeterProvider`` (an
  ``InMemoryMetricReader``, so every request's histogram and counter updates
  are aggregated as in production and read only at the end). The providers are
  passed to the middleware, never installed globally. The cost of a real
  exporter (serialising and sending spans and metrics, on the SDK's background
  threads) is left out, as reqtelemetry's flushes are left out of the same rows.
- **starlette-exporter**: ``PrometheusMiddleware`` in the Starlette app's
  middleware list with its defaults (``group_paths=True``: labels carry the
  route template) and the ``/metrics`` route (``handle_metrics``) after the
  measured routes; metrics go to ``prometheus_client``'s default registry, as
  the package does.
- **prometheus-flask-exporter**: ``PrometheusMetrics(app, group_by="url_rule")``
  (labels carry the URL rule, like reqtelemetry's keys; the default,
  ``group_by="path"``, keys by raw path) with its own ``CollectorRegistry``, and
  its ``/metrics`` endpoint.

Each peer needs packages from the ``bench`` extra (``pip install -e
'.[bench]'``, pinned there); :func:`missing` says which one is absent, and the
benchmarks then report the row as skipped rather than fail.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

#: Import names each peer needs, and the distribution that brings each.
REQUIREMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "otel-asgi": (
        ("opentelemetry.sdk", "opentelemetry-sdk"),
        ("opentelemetry.instrumentation.asgi", "opentelemetry-instrumentation-asgi"),
    ),
    "otel-wsgi": (
        ("opentelemetry.sdk", "opentelemetry-sdk"),
        ("opentelemetry.instrumentation.wsgi", "opentelemetry-instrumentation-wsgi"),
    ),
    "starlette-exporter": (("starlette_exporter", "starlette-exporter"),),
    "prometheus-flask-exporter": (("prometheus_flask_exporter", "prometheus-flask-exporter"),),
}

#: Distributions whose versions the results name.
PEER_DISTRIBUTIONS = (
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-asgi",
    "opentelemetry-instrumentation-wsgi",
    "starlette-exporter",
    "prometheus-flask-exporter",
    "prometheus-client",
)


def describe(peer: str) -> str:
    """One line on how ``peer`` is set up, for the notes under a table."""
    if peer == "otel":
        semconv = os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
        return (
            "OpenTelemetry: `OpenTelemetryMiddleware` (opentelemetry-instrumentation-asgi / "
            "-wsgi) wrapping the app, with its own SDK `TracerProvider` (always-on sampling, "
            "`BatchSpanProcessor` into an exporter that counts and discards) and SDK "
            "`MeterProvider` (`InMemoryMetricReader`); "
            f"`OTEL_SEMCONV_STABILITY_OPT_IN={semconv!r}` (empty: the default, old HTTP "
            "conventions); the cost of a real exporter is not included"
        )
    if peer == "starlette-exporter":
        return (
            "starlette-exporter: `PrometheusMiddleware` (defaults: `group_paths=True`) in the "
            "Starlette middleware list, its `/metrics` route after the measured ones, "
            "prometheus_client's default registry"
        )
    if peer == "prometheus-flask-exporter":
        return (
            'prometheus-flask-exporter: `PrometheusMetrics(app, group_by="url_rule", '
            "registry=CollectorRegistry())`, its `/metrics` endpoint included"
        )
    raise KeyError(peer)


def version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def missing(peer: str) -> str | None:
    """Why ``peer`` cannot be measured here, or None when it can."""
    for module, distribution in REQUIREMENTS[peer]:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            return f"{distribution} not installed (`pip install -e '.[bench]'`)"
    return None


def versions_line() -> str:
    return ", ".join(f"{name} {version(name)}" for name in PEER_DISTRIBUTIONS)


# -- OpenTelemetry -------------------------------------------------------------------------


@dataclass
class OTelSDK:
    """An SDK tracer and meter provider of our own, and what they received."""

    tracer_provider: Any
    meter_provider: Any
    reader: Any
    exporter: Any

    def flush(self) -> None:
        self.tracer_provider.force_flush()

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    def duration_count(self) -> int:
        """Requests the server-duration histograms counted (old or new conventions)."""
        data = self.reader.get_metrics_data()
        total = 0
        for resource in getattr(data, "resource_metrics", None) or ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name in ("http.server.duration", "http.server.request.duration"):
                        total += sum(point.count for point in metric.data.data_points)
        return total

    def summary(self) -> str:
        self.flush()
        return (
            f"{self.exporter.spans} spans exported, "
            f"{self.duration_count()} requests in the server-duration histogram"
        )


def otel_sdk() -> OTelSDK:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class CountingExporter(SpanExporter):
        """Counts the spans it is handed and sends nothing."""

        def __init__(self) -> None:
            self.spans = 0

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            self.spans += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    exporter = CountingExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    return OTelSDK(tracer_provider, meter_provider, reader, exporter)


def otel_asgi(app: Any, sdk: OTelSDK) -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(
        app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider
    )


def otel_wsgi(wsgi_app: Any, sdk: OTelSDK) -> Any:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(
        wsgi_app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider
    )


# -- Prometheus exporters ------------------------------------------------------------------


def starlette_exporter_parts() -> tuple[list[Any], list[Any]]:
    """The middleware entry and the ``/metrics`` route a Starlette app adds."""
    from starlette.middleware import Middleware
    from starlette.routing import Route
    from starlette_exporter import PrometheusMiddleware, handle_metrics

    return [Middleware(PrometheusMiddleware)], [Route("/metrics", handle_metrics)]


def starlette_exporter_count(route: str, status: int = 200) -> int:
    """Requests starlette-exporter counted for ``GET route`` (default registry)."""
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "starlette_requests_total",
        {"method": "GET", "path": route, "status_code": str(status), "app_name": "starlette"},
    )
    return int(value or 0)


@dataclass
class FlaskExporter:
    metrics: Any
    registry: Any

    def count(self, route: str, status: int = 200) -> int:
        """Requests prometheus-flask-exporter timed for ``GET route``."""
        value = self.registry.get_sample_value(
            "flask_http_request_duration_seconds_count",
            {"method": "GET", "url_rule": route, "status": str(status)},
        )
        return int(value or 0)


def prometheus_flask(app: Any) -> FlaskExporter:
    from prometheus_client import CollectorRegistry
    from prometheus_flask_exporter import PrometheusMetrics

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(app, group_by="url_rule", registry=registry)
    return FlaskExporter(metrics, registry)
