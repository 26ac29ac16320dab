"""The one storage interface the collector talks to (SQLite and PostgreSQL implement it).

Why an interface: the same behaviour must hold on the embedded default
(SQLite) and in production (PostgreSQL, shared by stateless replicas), and the
same test suite runs against both. Everything the dashboard and the CSV export
show is answered here, so both backends answer it the same way.

Time values are Unix seconds (floats). ``since`` filters on the report's
``received_at``. ``app``, where a question takes it, keeps only the rows of
the app of that name (``traits.app_name``); None means every app, those that
sent no name included. Percentiles are computed from the merged log histograms of
the stored aggregates (see :mod:`reqtelemetry.histogram`).
"""

from __future__ import annotations

import abc
import collections.abc
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ReplayError(Exception):
    """The stamp was stored before: the report is refused and nothing is written."""


class UnstorableReport(Exception):
    """The database refused a value of the report (a number out of its column's
    range, a character it cannot hold); nothing is written.

    Why a separate error: an outage is worth retrying, this is not. The same
    report would fail the same way forever, so the collector refuses it
    (``422``) instead of asking the client to come back (``503``).
    """


class ReadersBusy(TimeoutError):
    """Every turn the dashboard's reads take stayed taken for the whole wait.

    Why a type of its own: it says that the dashboard is busy (more summaries
    at once than the storage reads at once), not that the database failed;
    the collector answers ``503`` without logging it as an outage.
    """


class CommitUnknown(Exception):
    """The database was asked to commit and its answer never came: the work
    may be stored or not, and nothing here can tell.

    Why a type of its own: the collector's usual ``503`` says "nothing was
    stored", and a client that believes it sends the data again under a new
    stamp, counted twice if the commit landed. This one is answered ``503
    unconfirmed``: the client keeps the report, and its stamp, and sends it
    again, which storage then refuses as a replay if the commit landed.
    """


class DeadlineExceeded(Exception):
    """The work could not commit before its deadline: it was rolled back, nothing is written.

    Why a deadline at all: a client that stops waiting for an answer keeps
    its data and sends it again (under a new stamp). A report committed after
    that would be counted twice, so the collector commits only while its
    client is still waiting, and otherwise answers ``503`` (see
    docs/protocol.md, "How long a report may take").
    """


def seconds_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (a ``time.monotonic()`` instant), at least 0;
    None when there is no deadline."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def check_deadline(deadline: float | None, what: str = "the report") -> None:
    """Raise :class:`DeadlineExceeded` once ``deadline`` has passed (the last
    check before a commit: a commit after it could count a report twice)."""
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded(f"{what} could not be committed before its deadline")


@dataclass(frozen=True)
class StoredReport:
    """A verified report, ready to store (the collector has checked everything)."""

    stamp: str
    received_at: float
    payload: dict[str, Any]  # a schema-valid report (reqtelemetry.payload)


@dataclass(frozen=True)
class Pruned:
    """What one :meth:`Storage.prune` deleted."""

    reports: int
    instances: int
    deployments: int


@dataclass(frozen=True)
class RolledUp:
    """What one :meth:`Storage.roll_up` added up: whole days, and the daily
    rows (per endpoint, app version and deployment) written for them."""

    days: int
    rows: int


#: The dashboard's endpoint lists are cut, as its app metrics are, for the same
#: reason: nothing bounds the endpoints seen across reports (an app without
#: route templates sends hashed paths, new on every instance, up to
#: ``max_keys`` per flush), and a summary that listed them all grew without
#: bound in time, memory and JSON (200,000 routes: 27 s, 800 MB, 100 MB of
#: JSON). The CSV export lists them all. The endpoints called in the window,
#: the busiest first:
MAX_ENDPOINTS = 500
#: The endpoints seen before the window only ("unused"), the latest seen first:
MAX_UNUSED_ENDPOINTS = 100
#: The rows per endpoint and app version (of the endpoints listed), the busiest first:
MAX_ENDPOINT_VERSIONS = 2000


#: The summary's app versions, the most deployments first, at most this many
#: an app (one app's flood of versions leaves the others' alone). Cut for
#: the same reason: a version is any text of up to 128 characters a report
#: says, so nothing bounds how many there are (a build stamped with its
#: commit, a client sending a new one each time), and each was a bar on the
#: page and a row of the JSON. 100 is more than any fleet runs at once.
MAX_VERSIONS = 100
#: The summary's app versions of all apps together: an app name is client
#: text too, and with each app's 100, a flood of names made a bar and a row
#: per version of each (50,000 names: 34 MB of JSON, a page of 59 MB).
MAX_ALL_VERSIONS = 500
#: The summary's apps (the selector's choices, and the dropped requests by
#: app), the most deployments first: any app may be chosen by ``?app=`` still.
MAX_APPS = 100
#: The summary's platforms (instances per OS, architecture, Python version
#: and framework), the most instances first: each is client text too, and a
#: fleet's real mix is a few dozen combinations.
MAX_PLATFORMS = 200


@dataclass(frozen=True)
class EndpointLimits:
    """How long each of the summary's endpoint lists may be (see :data:`MAX_ENDPOINTS`)."""

    used: int = MAX_ENDPOINTS
    unused: int = MAX_UNUSED_ENDPOINTS
    by_version: int = MAX_ENDPOINT_VERSIONS

    def as_dict(self) -> dict[str, int]:
        return {"used": self.used, "unused": self.unused, "by_version": self.by_version}


class Storage(abc.ABC):
    """Reports in, answers out. Implementations are safe to share across threads."""

    @abc.abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema to the current version (idempotent, versioned)."""

    @abc.abstractmethod
    def store(self, report: StoredReport, deadline: float | None = None) -> None:
        """Store one report atomically: deployment, instance (traits, first/last seen),
        the report row, its aggregates and its metrics. Raises :class:`ReplayError`
        (and writes nothing) when the stamp was seen before: a unique index decides,
        so two replicas racing with the same stamp cannot both succeed. Raises
        :class:`UnstorableReport` (and writes nothing) when the database cannot
        hold one of the report's values. Raises :class:`CommitUnknown` when its
        commit was sent and the answer lost (the report may be stored).

        ``deadline`` (a ``time.monotonic()`` instant): commit before it or not
        at all. Every wait (a lock, a connection, a statement) is bounded by
        what is left, and the deadline is checked once more right before the
        commit; past it, :class:`DeadlineExceeded` is raised and nothing is
        written."""

    @abc.abstractmethod
    def stamp_stored(self, stamp: str, deadline: float | None = None) -> bool:
        """Whether a report with ``stamp`` is stored: a client sending one again
        after every answer to it was lost asks this of a stamp too old to be
        stored now. ``deadline`` bounds every wait, as for :meth:`store`."""

    @abc.abstractmethod
    def prune(self, before: float, stop: threading.Event | None = None) -> Pruned:
        """Delete every report received before ``before``, with its aggregates and
        metrics, then the instances and deployments last seen before it (the data
        retention). Works in short transactions, so that reports keep being stored
        meanwhile, and ends after the one under way once ``stop`` is set (the rest
        is deleted the next time). The refusal counters have no dates and are kept."""

    @abc.abstractmethod
    def roll_up(self, now: float | None = None, stop: threading.Event | None = None) -> RolledUp:
        """Add up the aggregates of each UTC day over since ``now`` (and an hour
        more: ``rollup.SETTLE``) per endpoint, app version and deployment, so that
        the dashboard reads a row per day where it read a row per report. The
        raw rows stay. Each day in a short transaction of its own, the oldest
        first; ends after the one under way once ``stop`` is set. Safe to run
        on several replicas at once: each day is added once."""

    @abc.abstractmethod
    def add_refusals(self, counts: Mapping[str, int], deadline: float | None = None) -> None:
        """Add ``counts`` (reason: how many) to the refusal counters in one
        transaction. The counters are shared by replicas: each adds its own
        (an upsert), none overwrites another's. ``deadline`` as for :meth:`store`."""

    @abc.abstractmethod
    def refusals(self) -> dict[str, int]:
        """Refusal counters by reason."""

    # -- the dashboard's questions ------------------------------------------------

    @abc.abstractmethod
    def totals(self, since: float, app: str | None = None) -> dict[str, Any]:
        """``{"deployments", "instances", "reports", "requests", "errors"}`` since ``since``."""

    @abc.abstractmethod
    def activity(
        self, since: float, bucket_seconds: int, app: str | None = None
    ) -> list[dict[str, Any]]:
        """Active deployments and instances per time bucket:
        ``[{"bucket_start", "deployments", "instances"}]`` in time order. Buckets
        are aligned to multiples of ``bucket_seconds`` since the epoch; a bucket
        without any report is absent (draw it as zero)."""

    @abc.abstractmethod
    def versions(
        self,
        since: float,
        app: str | None = None,
        limit: int = MAX_VERSIONS,
        total_limit: int = MAX_ALL_VERSIONS,
    ) -> dict[str, Any]:
        """App versions in use, per app, cut at ``limit`` versions an app and
        ``total_limit`` in all: ``{"versions": [{"app_name", "app_version",
        "deployments", "instances", "last_seen"}], "left_out", "limit"}``. The
        most deployments first, then the most instances, the latest seen, then
        by app and version (unknown, None, first; byte by byte); each app keeps
        its first ``limit`` in that order, and the list its first
        ``total_limit``. ``left_out``: how many versions the cuts left out, of
        all apps."""

    @abc.abstractmethod
    def apps(self, since: float, limit: int = MAX_APPS) -> dict[str, Any]:
        """The apps that reported since ``since``: ``{"apps": [{"app_name",
        "deployments", "instances", "reports", "last_seen"}], "left_out",
        "limit"}``, most deployments first, then most instances, most reports,
        and by name (None first, byte by byte), cut at ``limit``;
        ``app_name`` None stands for every report that carried no name."""

    @abc.abstractmethod
    def endpoints(
        self,
        since: float,
        by_version: bool = False,
        app: str | None = None,
        by_app: bool = False,
    ) -> list[dict[str, Any]]:
        """Per endpoint (``method``, ``route``; and ``app_name`` when ``by_app``, so
        that an endpoint one app no longer serves shows as unused even where
        another app's endpoint of the same name is busy; and ``app_name``,
        ``app_version`` when ``by_version``, so that each app's versions are
        compared only with each other):
        ``calls``, ``errors`` (status >= 500), ``error_rate``, ``p50``, ``p95``,
        ``p99``, ``mean`` (seconds), ``request_bytes``, ``response_bytes``,
        ``deployments``. Endpoints seen before ``since`` but not after appear with
        ``calls`` 0, so unused endpoints are visible; their ``error_rate``,
        percentiles and ``mean`` are None. ``app_name`` and ``app_version`` are None
        where the instance did not say. Most calls first."""

    @abc.abstractmethod
    def iter_endpoints(
        self, since: float, app: str | None = None
    ) -> collections.abc.Generator[dict[str, Any], None, None]:
        """``endpoints(since, by_version=True, app=app)`` (the CSV export's rows),
        yielded as they are read, so that memory stays bounded whatever the
        number of endpoints. The read has a connection of its own, and holds
        nothing that storing a report waits for, however slowly it is
        consumed; close the generator (or read it to the end) to end it."""

    @abc.abstractmethod
    def endpoint_summary(
        self, since: float, app: str | None = None, limits: EndpointLimits | None = None
    ) -> dict[str, Any]:
        """The dashboard's endpoint lists since ``since`` (of ``app``, when given),
        each cut at its limit (:class:`EndpointLimits`; the defaults when None):

        ``{"endpoints": [...], "endpoints_by_version": [...], "left_out":
        {"used", "unused", "by_version"}, "limits": {"used", "unused", "by_version"}}``.

        ``endpoints``: per app and endpoint (the rows of ``endpoints(since,
        by_app=True)``, with ``last_seen``), first those called in the window,
        the most calls first, at most ``limits.used``; then those seen before
        the window only (``calls`` 0), the latest seen first, at most
        ``limits.unused``. ``endpoints_by_version``: the rows of
        ``endpoints(since, by_version=True)`` with calls, of the endpoints
        listed, the most calls first, at most ``limits.by_version``.
        ``left_out`` says how many rows each cut left out."""

    @abc.abstractmethod
    def platforms(
        self, since: float, app: str | None = None, limit: int = MAX_PLATFORMS
    ) -> dict[str, Any]:
        """Instances seen since ``since`` by ``os``, ``arch``, ``python_version`` and
        ``framework``, cut at ``limit`` combinations: ``{"platforms": [{"os",
        "arch", "python_version", "framework", "instances", "deployments"}],
        "left_out", "limit"}``. The most instances first, then the most
        deployments, then by the four texts (unknown or withheld, None, first;
        byte by byte). ``left_out``: how many combinations the cut left out."""

    @abc.abstractmethod
    def app_metrics(self, since: float, app: str | None = None, limit: int = 100) -> dict[str, Any]:
        """The app-defined metrics (``telemetry.count()``, ``telemetry.gauge()``)
        reported since ``since``, per app and name:

        ``{"counters": [{"app_name", "name", "total", "deployments"}],
        "gauges": [{"app_name", "name", "sum", "median", "max", "deployments"}],
        "counter_names", "gauge_names", "limit"}``.

        A counter's ``total`` adds up the deltas of every report (every
        instance's). A gauge counts each deployment once, at the value of its
        most recent report carrying that gauge (its instances usually sample
        the same thing), and ``sum``, ``median`` and ``max`` are taken over
        those deployments. Each list holds at most ``limit`` names, the most
        deployments first (then the largest ``total`` or ``sum``); ``*_names``
        says how many there were before that cut."""

    @abc.abstractmethod
    def dropped(
        self, since: float, app: str | None = None, limit: int = MAX_APPS
    ) -> dict[str, Any]:
        """Requests that arrived past a client's key cap (``max_keys``) since
        ``since``: ``{"requests": all of them, "by_app": [{"app_name",
        "requests", "deployments"}], "left_out"}``, per app that had any, most
        requests first (then by name), cut at ``limit`` apps. They are in the
        request totals (the ``_OTHER <overflow>`` endpoint), but not under
        their own endpoint."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""
