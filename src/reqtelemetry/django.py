"""``reqtelemetry.django.TelemetryMiddleware``: the name to put in ``MIDDLEWARE``."""

from .integrations.django import TelemetryMiddleware, get_telemetry, reset_telemetry

__all__ = ["TelemetryMiddleware", "get_telemetry", "reset_telemetry"]
