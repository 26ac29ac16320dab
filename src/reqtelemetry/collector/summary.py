"""The dashboard's data: one JSON document answering the maintainer's questions.

Assembled from the :class:`~.storage.base.Storage` methods, so SQLite and
PostgreSQL answer identically. The comparison a release manager wants, "did
this version get slower?", is computed here rather than in the browser: each
endpoint-and-version row carries the previous version's p95 and the change, so
the page only colours it and a test can check the arithmetic.

One collector may serve several apps (``traits.app_name``). Every section can
be limited to one of them; the list of apps seen in the window (``apps``) is
always complete, so that the page can offer the others.
"""

from __future__ import annotations

import datetime
import decimal
import itertools
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from .export import DAY
from .storage.base import Storage

DEFAULT_DAYS = 30
MAX_DAYS = 3650
HOUR = 3600
_VERSION_PART = re.compile(r"\d+|[A-Za-z]+")


def bucket_seconds(days: int) -> int:
    """Hourly points for a short window, daily ones otherwise (a readable line either way)."""
    return HOUR if days <= 2 else DAY


def build_summary(
    storage: Storage,
    days: int,
    now: float | None = None,
    app: str | None = None,
    retention_days: int | None = None,
) -> dict[str, Any]:
    """Everything ``GET /api/summary`` returns, JSON-ready: of every app, or of
    ``app`` only (``apps`` and ``refusals`` are never limited: refusals happen
    before a report's app is known). ``retention_days`` is the collector's
    retention (None: everything is kept), said on the page so that a window
    longer than it does not look like missing data."""
    now = time.time() if now is None else now
    since = now - days * DAY
    totals = dict(storage.totals(since, app=app))
    requests = totals.get("requests") or 0
    totals["error_rate"] = (totals.get("errors") or 0) / requests if requests else 0.0
    bucket = bucket_seconds(days)
    # Per app: an endpoint one app stopped serving is unused, whatever another
    # app's endpoint of the same name does. Both lists from one read.
    by_app, by_version = storage.endpoints_by_app_and_version(since, app=app)
    summary = {
        "generated_at": now,
        "days": days,
        "since": since,
        "bucket_seconds": bucket,
        "app": app,
        "retention_days": retention_days,
        "apps": storage.apps(since),
        "totals": totals,
        "activity": fill_activity(storage.activity(since, bucket, app=app), since, now, bucket),
        "versions": storage.versions(since, app=app),
        "endpoints": by_app,
        "endpoints_by_version": with_previous_version(by_version),
        "platforms": storage.platforms(since, app=app),
        "refusals": storage.refusals(),
        "metrics": storage.app_metrics(since, app=app),
        "dropped": dropped_requests(storage, since, app),
    }
    result: dict[str, Any] = jsonable(summary)
    return result


def dropped_requests(storage: Storage, since: float, app: str | None) -> dict[str, Any]:
    """``{"requests", "by_app"}``: requests past the clients' key cap in the window.

    Why its own figure: they are in the request totals, but only as the
    ``<overflow>`` endpoint, so a maintainer whose endpoints look too few
    should learn that some were not itemised (and that ``max_keys`` says how
    many are). ``by_app`` says which app, when several report.
    """
    by_app = storage.dropped(since, app=app)
    return {"requests": sum(row["requests"] for row in by_app), "by_app": by_app}


def fill_activity(
    points: list[dict[str, Any]], since: float, now: float, bucket: int
) -> list[dict[str, Any]]:
    """Every bucket from ``since`` to ``now``, zeros where nobody reported.

    Storage returns only buckets with reports; a chart that joined those
    directly would draw a quiet week as a straight line between busy days.
    """
    known = {float(point["bucket_start"]): point for point in points}
    filled = []
    start = math.floor(since / bucket) * bucket
    for index in range(int((now - start) // bucket) + 1):
        at = float(start + index * bucket)
        filled.append(known.pop(at, {"bucket_start": at, "deployments": 0, "instances": 0}))
    # Anything outside the window (clock skew between replicas) is kept, in order.
    return sorted(filled + list(known.values()), key=lambda point: point["bucket_start"])


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """An order for version strings that puts ``1.10`` after ``1.9`` (numbers compare
    as numbers), without requiring PEP 440: apps number releases their own way."""
    return tuple(
        (1, int(part)) if part.isdigit() else (0, part.lower())
        for part in _VERSION_PART.findall(version)
    )


def with_previous_version(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``previous_version``, ``p95_previous`` and ``p95_change`` (relative:
    ``0.25`` is 25 % slower) to each row, against the same endpoint's nearest
    older version of the same app that had calls. Rows keep their order.

    Why the app is part of the endpoint: two apps behind one collector number
    their releases independently, so billing's 1.0 is not inventory's 1.1's
    predecessor, even where both serve ``GET /items/{item_id}``. Rows of an
    unknown app (None) are compared among themselves, as before app names.
    """
    by_endpoint: dict[tuple[Any, Any, Any], list[dict[str, Any]]] = {}
    out = [dict(row) for row in rows]
    for row in out:
        row["previous_version"] = row["p95_previous"] = row["p95_change"] = None
        if isinstance(row.get("app_version"), str) and row.get("calls"):
            endpoint = (row.get("app_name"), row.get("method"), row.get("route"))
            by_endpoint.setdefault(endpoint, []).append(row)
    for group in by_endpoint.values():
        group.sort(key=lambda row: version_key(row["app_version"]))
        for older, newer in itertools.pairwise(group):
            newer["previous_version"] = older["app_version"]
            before, after = older.get("p95"), newer.get("p95")
            newer["p95_previous"] = before
            if before and after is not None:
                newer["p95_change"] = (float(after) - float(before)) / float(before)
    return out


def jsonable(value: Any) -> Any:
    """Plain JSON values: database numbers as floats, no NaN or infinity (as null)."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, (float, decimal.Decimal)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return str(value)
