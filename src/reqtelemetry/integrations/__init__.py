"""Thin framework adapters: measure a request, find its route, call ``Telemetry.record``."""
