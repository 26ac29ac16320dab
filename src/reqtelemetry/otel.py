"""The same measurements through OpenTelemetry instruments (``otel=True``).

Why: an operator who already runs an OpenTelemetry SDK can see in their own
pipeline exactly what the maintainer receives, under the names the HTTP
semantic conventions give them. Only ``opentelemetry-api`` is used: without an
SDK configured, the instruments are no-ops.
"""

from __future__ import annotations

from opentelemetry import metrics

from ._version import __version__

#: What :mod:`reqtelemetry.telemetry` keys a request no route took by (its
#: ``UNMATCHED_ROUTE``, repeated here: that module imports this one).
UNMATCHED_ROUTE = "<unmatched>"

#: The bucket boundaries the HTTP semantic conventions recommend for durations.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

#: The ``url.scheme`` values an HTTP server can really have been reached by.
#: Why a fixed set: the scheme an integration sees may be a client's header
#: (Werkzeug's ``ProxyFix(x_proto=1)`` copies ``X-Forwarded-Proto`` into
#: ``wsgi.url_scheme`` unchecked; uvicorn checks it, other proxy middlewares
#: need not), and an attribute leaves the process with every data point: any
#: text there would be sent, and any number of distinct values would each make
#: a time series.
_KNOWN_SCHEMES = {scheme: scheme for scheme in ("http", "https", "ws", "wss")}

#: What any other scheme is recorded as. The semantic conventions list no
#: values for ``url.scheme``; ``_OTHER`` is the fallback they define for
#: ``http.request.method``, and the one this package records unknown methods as.
OTHER_SCHEME = "_OTHER"

#: Longer than any known scheme: not worth lower-casing to look it up.
_LONGEST_SCHEME = max(len(scheme) for scheme in _KNOWN_SCHEMES)


def scheme_attribute(scheme: str) -> str:
    """``scheme`` as one of :data:`_KNOWN_SCHEMES` (case-insensitive, as URI
    schemes are), else :data:`OTHER_SCHEME`: never the text it was given."""
    known = _KNOWN_SCHEMES.get(scheme)
    if known is not None:  # the common case: one lookup
        return known
    if len(scheme) > _LONGEST_SCHEME:
        return OTHER_SCHEME
    return _KNOWN_SCHEMES.get(scheme.lower(), OTHER_SCHEME)


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
        """Record one request in all three instruments.

        ``scheme`` is normalised here, the one place every integration's scheme
        passes through, and only when OpenTelemetry is on: without it no
        request pays for the check.
        """
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "http.response.status_code": status,
            "url.scheme": scheme_attribute(scheme),
        }
        if type(route) is str and route != UNMATCHED_ROUTE:
            # A template only. Not a route-less app's anonymized path (an
            # ``AnonymizedRoute``, a str subclass), nor "<unmatched>": the
            # conventions leave ``http.route`` out where there is no template,
            # and a path's hashes made a time series per path (203 for 203
            # users), with no cap, until the SDK's overflow series swallowed
            # every later request, errors on real routes included.
            attributes["http.route"] = route
        if status >= 500:
            attributes["error.type"] = str(status)  # the conventions' value for a 5xx
        self.duration.record(duration, attributes)
        self.request_size.record(request_bytes, attributes)
        self.response_size.record(response_bytes, attributes)
