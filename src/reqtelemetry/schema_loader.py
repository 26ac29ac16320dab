"""The JSON Schema of the wire format, shipped as package data.

Kept as a data file (``schema/payload-v1.json``) rather than Python so that
the collector, the docs and third parties read one and the same document.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

PAYLOAD_SCHEMA_VERSION = 1


def load_payload_schema() -> dict[str, Any]:
    """The draft 2020-12 JSON Schema of a version-1 report body (a fresh copy each call)."""
    resource = files("reqtelemetry") / "schema" / f"payload-v{PAYLOAD_SCHEMA_VERSION}.json"
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema
