"""``reqtelemetry.django.TelemetryMiddleware``: the name to put in ``MIDDLEWARE``."""

from .integrations.django import (
    LifespanFlush,
    TelemetryMiddleware,
    get_telemetry,
    reset_telemetry,
)

__all__ = ["LifespanFlush", "TelemetryMiddleware", "get_telemetry", "reset_telemetry"]
