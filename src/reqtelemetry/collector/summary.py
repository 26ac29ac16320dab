"""The dashboard's data: one JSON document answering the maintainer's questions.

Assembled from the :class:`~.storage.base.Storage` methods, so SQLite and
PostgreSQL answer identically. The comparison a release manager wants, "did
this version get slower?", is computed here rather than in the browser: each
endpoint-and-version row carries the previous version's p95 and the change, so
the page only colours it and a test can check the arithmetic.

One collector may serve several apps (``traits.app_name``). Every section can
be limited to one of them; the list of apps seen in the window (``apps``) is
always complete, so that the page can offer the others.

The endpoint lists are cut (see ``storage.base.MAX_ENDPOINTS``) and say how
many rows each cut left out: the document, and what it costs to build, must
not grow with every endpoint ever stored. The CSV export has them all. The
versions and platforms are cut alike (``MAX_VERSIONS``, ``MAX_PLATFORMS``):
each is text a client chooses, so a flood of them must not make the
document grow either.
"""

from __future__ import annotations

import datetime
import decimal
import itertools
import math
import re
import string
import time
from collections.abc import Mapping
from typing import Any

from .export import DAY
from .storage.base import Storage

DEFAULT_DAYS = 30
MAX_DAYS = 3650
HOUR = 3600

# -- the order of versions (see version_key; dashboard.js has the same) --------
#: One part of a version's key: (rank, length, text). A number is its digits
#: without leading zeros, and its length, so that comparing the tuples compares
#: the numbers.
VersionItem = tuple[int, int, str]
#: (is a version, release, phase, pre/post/dev parts, the text itself).
VersionKey = tuple[int, tuple[VersionItem, ...], int, tuple[VersionItem, ...], str]
_VERSION = re.compile(
    r"v?(?:([0-9]+)!)?([0-9]+(?:\.[0-9]+)*)"  # 1: epoch, 2: release
    r"(?:(?:[-_.]?(alpha|a|beta|b|preview|pre|c|rc)[-_.]?([0-9]*))?"  # 3, 4: PEP 440 pre
    r"(?:[-_.]?(post|rev|r)[-_.]?([0-9]*))?"  # 5, 6: post
    r"(?:[-_.]?(dev)[-_.]?([0-9]*))?"  # 7, 8: dev
    r"|-([0-9a-z]+(?:[.-][0-9a-z]+)*))"  # 9: SemVer pre-release
    r"(?:\+[0-9a-z]+(?:[-_.][0-9a-z]+)*)?"  # build metadata, PEP 440 local version
)
_VERSION_PART = re.compile(r"[0-9]+|[a-z]+")
#: Only ASCII letters are folded: Python and JavaScript fold the others apart.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
#: PEP 440's other spellings of a pre- or post-release.
_SYNONYMS = {
    "a": "alpha",
    "b": "beta",
    "c": "rc",
    "pre": "rc",
    "preview": "rc",
    "r": "post",
    "rev": "post",
}
# Item ranks: a development part sorts before the end of the parts, which
# sorts before a number, which sorts before a word (SemVer: alpha < alpha.1 <
# alpha.beta; PEP 440: 1.0a1.dev1 < 1.0a1).
_DEV_RANK, _END_RANK, _NUMBER, _WORD = 0, 1, 2, 3
_DEV_ITEM: VersionItem = (_DEV_RANK, 0, "")
_END: VersionItem = (_END_RANK, 0, "")
_POST_ITEM: VersionItem = (_WORD, 0, "post")
_ZERO: VersionItem = (_NUMBER, 0, "")
# Phases: where a release's pre-, post- or development parts put it.
_DEV, _PRE, _RELEASE, _POST = 0, 1, 2, 3


def bucket_seconds(days: int) -> int:
    """Hourly points for a short window, daily ones otherwise (a readable line either way)."""
    return HOUR if days <= 2 else DAY


def build_summary(
    storage: Storage,
    days: int,
    now: float | None = None,
    app: str | None = None,
    retention_days: int | None = None,
    refusals: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Everything ``GET /api/summary`` returns, JSON-ready: of every app, or of
    ``app`` only (``apps`` and ``refusals`` are never limited: refusals happen
    before a report's app is known). ``retention_days`` is the collector's
    retention (None: everything is kept), said on the page so that a window
    longer than it does not look like missing data. ``refusals``: the counts
    to show, where the stored ones are not all (a collector adds those it
    has not written yet); None reads the stored ones."""
    now = time.time() if now is None else now
    since = now - days * DAY
    totals = dict(storage.totals(since, app=app))
    requests = totals.get("requests") or 0
    totals["error_rate"] = (totals.get("errors") or 0) / requests if requests else 0.0
    bucket = bucket_seconds(days)
    # Per app: an endpoint one app stopped serving is unused, whatever another
    # app's endpoint of the same name does. Each list cut in the database (the
    # CSV export has every row); the histograms read once for both.
    endpoints = storage.endpoint_summary(since, app=app)
    versions = storage.versions(since, app=app)
    platforms = storage.platforms(since, app=app)
    apps = storage.apps(since)
    summary = {
        "generated_at": now,
        "days": days,
        "since": since,
        "bucket_seconds": bucket,
        "app": app,
        "retention_days": retention_days,
        "apps": apps["apps"],
        "apps_left_out": apps["left_out"],
        "app_limit": apps["limit"],
        "totals": totals,
        "activity": fill_activity(storage.activity(since, bucket, app=app), since, now, bucket),
        "versions": versions["versions"],
        "versions_left_out": versions["left_out"],
        "version_limit": versions["limit"],
        "endpoints": endpoints["endpoints"],
        "endpoints_by_version": with_previous_version(endpoints["endpoints_by_version"]),
        "endpoints_left_out": endpoints["left_out"],
        "endpoint_limits": endpoints["limits"],
        "platforms": platforms["platforms"],
        "platforms_left_out": platforms["left_out"],
        "platform_limit": platforms["limit"],
        "refusals": storage.refusals() if refusals is None else dict(refusals),
        "metrics": storage.app_metrics(since, app=app),
        "dropped": dropped_requests(storage, since, app),
    }
    result: dict[str, Any] = jsonable(summary)
    return result


def dropped_requests(storage: Storage, since: float, app: str | None) -> dict[str, Any]:
    """``{"requests", "by_app", "left_out"}``: requests past the clients' key cap in the window.

    Why its own figure: they are in the request totals, but only as the
    ``<overflow>`` endpoint, so a maintainer whose endpoints look too few
    should learn that some were not itemised (and that ``max_keys`` says how
    many are). ``by_app`` says which app, when several report.
    """
    return storage.dropped(since, app=app)


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


def version_key(version: str) -> VersionKey:
    """The order in which versions were released, as PEP 440 and SemVer define
    it, and a total, deterministic order for any other string.

    Why both: apps number their releases their own way (``3.0rc1``,
    ``2.0.0-rc.1``, ``v1.2.3``), and a pre-release sorted as newer than its
    release would compare ``2.0.0`` with ``1.9.0`` and call the release
    candidate the newest. ``dashboard.js`` has the same key (``versionKey``),
    so that the page's newest version is the one this module compares with;
    a change here is a change there.

    The rules, in order of precedence:

    - A string that is not a version (a git hash, ``latest``, ``main``) is
      older than every version, so that the newest is a real release; among
      themselves, such strings compare by their ASCII words and numbers.
    - A version is an optional ``v``, an optional PEP 440 epoch (``1!``), the
      release numbers (``1.10`` after ``1.9``; ``1.0`` and ``1.0.0`` the
      same), then either PEP 440's pre-, post- and development-release parts
      (``a1``, ``.post1``, ``.dev1``, with their alternative spellings) or a
      SemVer pre-release (``-rc.1``, ``-alpha.beta``), then an optional
      ``+build`` or ``+local`` part, which does not change the order.
    - ``dev`` < pre-release < release < ``post``: ``1.0.dev1 < 1.0a1 < 1.0 <
      1.0.post1``. Pre-releases compare part by part, numbers before words,
      fewer parts first (SemVer: ``alpha < alpha.1 < alpha.beta < beta``);
      ``a``, ``b``, ``c``/``pre``/``preview``, ``r``/``rev`` are spellings of
      ``alpha``, ``beta``, ``rc`` and ``post``.
    - A SemVer pre-release wins where the two disagree: ``1.0-1`` is a
      pre-release of ``1.0``, not PEP 440's post-release.
    - Ties (``1.0`` and ``1.0.0``, ``1.0+a`` and ``1.0+b``) are broken by the
      text itself, compared by code points, so that no two different strings
      share a key and the order never depends on the order rows came in.
    """
    lowered = version.translate(_ASCII_LOWER)
    match = _VERSION.fullmatch(lowered)
    if match is None:
        return (0, tuple(_words_and_numbers(lowered, synonyms=False)), 0, (), version)
    epoch, release, semver = match.group(1, 2, 9)
    numbers = [_number_item(part) for part in release.split(".")]
    while numbers and numbers[-1] == _ZERO:
        numbers.pop()  # 1.0 is 1
    release_items = (_number_item(epoch or "0"), *numbers)
    if semver is not None:
        items = _words_and_numbers(semver, synonyms=True)
    else:
        items = _pep440_items(match.group(3, 4, 5, 6, 7, 8))
    if not items:
        return (1, release_items, _RELEASE, (), version)
    phase = _DEV if items[0] == _DEV_ITEM else _POST if items[0] == _POST_ITEM else _PRE
    return (1, release_items, phase, (*items, _END), version)


def _pep440_items(groups: tuple[str | None, ...]) -> list[VersionItem]:
    """The pre-, post- and development-release parts that matched, each a word
    and its number (PEP 440: ``1.0a`` is ``1.0a0``)."""
    items = []
    for word, number in zip(groups[::2], groups[1::2], strict=True):
        if word is not None:
            items.append(_word_item(word, synonyms=True))
            items.append(_number_item(number or "0"))
    return items


def _words_and_numbers(text: str, *, synonyms: bool) -> list[VersionItem]:
    """The ASCII numbers and words of ``text`` as key items (see :func:`_word_item`)."""
    return [
        _number_item(part) if part.isdigit() else _word_item(part, synonyms=synonyms)
        for part in _VERSION_PART.findall(text)
    ]


def _word_item(word: str, *, synonyms: bool) -> VersionItem:
    """A word; with ``synonyms``, PEP 440's spellings as one word each, and
    ``dev`` before any other part (PEP 440's development releases)."""
    if not synonyms:
        return (_WORD, 0, word)
    return _DEV_ITEM if word == "dev" else (_WORD, 0, _SYNONYMS.get(word, word))


def _number_item(digits: str) -> VersionItem:
    """A number as its length, then its digits: exact at any size, without
    ``int()`` (whose digit limit raises) or JavaScript's 53-bit numbers."""
    significant = digits.lstrip("0")
    return (_NUMBER, len(significant), significant)


def with_previous_version(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``previous_version``, ``p95_previous`` and ``p95_change`` (relative:
    ``0.25`` is 25 % slower) to each row, against the same endpoint's nearest
    older version of the same app that had calls, older by :func:`version_key`
    (``2.0.0`` against ``2.0.0-rc.1``, not ``1.9.0``). Rows keep their order.
    Only ``rows`` are compared: where the summary's list was cut, a version
    with too few calls to be listed is no row's previous version.

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
