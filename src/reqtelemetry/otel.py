"""The same measurements through OpenTelemetry instruments (``otel=True``).

Why: an operator who already runs an OpenTelemetry SDK can see in their own
pipeline exactly what the maintainer receives, under the names the HTTP
semantic conventions give them. Only ``opentelemetry-api`` is used: without an
SDK configured, the instruments are no-ops.
"""

from __future__ import annotations

from opentelemetry import metrics

from ._version import __version__

#: The bucket boundaries the HTTP semantic conventions recommend for durations.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class OTelInstruments:
    """``http.server.request.duration`` and the two body-size histograms."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter("reqtelemetry", __version__, meter_provider=meter_provider)
        self.duration = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.request_size = meter.create_histogram(
            "http.server.request.body.size",
            unit="By",
            description="Size of HTTP server request bodies.",
        )
        self.response_size = meter.create_histogram(
            "http.server.response.body.size",
            unit="By",
            description="Size of HTTP server response bodies.",
        )

    def record(
        self,
        method: str,
        route: str,
        status: int,
        duration: float,
        request_bytes: int,
        response_bytes: int,
        scheme: str = "http",
    ) -> None:
        attributes = {
            "http.request.method": method,
            "http.route": route,
            "http.response.status_code": status,
            "url.scheme": scheme,
        }
        self.duration.record(duration, attributes)
        self.request_size.record(request_bytes, attributes)
        self.response_size.record(response_bytes, attributes)
