"""The core object an app creates once: configuration, recorder, anonymizer.

Integrations measure a request and call :meth:`Telemetry.record`; they know
their framework and nothing about the wire. Everything here that runs per
request is kept to a few attribute reads and one locked dict update.
"""

from __future__ import annotations

import logging
from typing import Any

from .anonymize import Anonymizer
from .config import Config
from .recorder import Recorder

logger = logging.getLogger("reqtelemetry")

#: Methods kept as they are; anything else is recorded as ``_OTHER`` so that a
#: client cannot invent keys (the OpenTelemetry convention).
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
OTHER_METHOD = "_OTHER"
#: The one key that requests no route matched share (when grouping is on).
UNMATCHED_ROUTE = "<unmatched>"
#: Status recorded when the client went away before the response completed
#: (nginx's convention).
CLIENT_CLOSED_STATUS = 499


class Telemetry:
    """Usage telemetry for one service instance.

    ``Telemetry(endpoint=..., app_name=..., app_version=...)`` takes any
    :class:`~reqtelemetry.config.Config` field as a keyword; or pass a ready
    ``config=``. Opting out is resolved here, once: an opted-out instance records
    nothing, and the middlewares then only call the app they wrap.
    """

    def __init__(self, endpoint: str | None = None, *, config: Config | None = None,
                 **options: Any) -> None:
        if config is None:
            if endpoint is not None:
                options["endpoint"] = endpoint
            config = Config.resolve(**options)
        elif endpoint is not None or options:
            raise TypeError("pass either config= or keyword options, not both")
        self.config = config
        self.enabled = config.enabled
        self.recorder = Recorder(max_keys=config.max_keys)
        self.anonymizer = Anonymizer(
            allowed_segments=config.allowed_path_segments,
            allowed_query_keys=config.allowed_query_keys,
        )
        self.exclude_paths = frozenset(config.exclude_paths)
        self.exclude_prefixes = tuple(config.exclude_prefixes)
        self.internal_errors = 0
        self._internal_error_logged = False
        # The hot path calls ``telemetry.record``: bind the recorder's method
        # directly, saving a call per request.
        self.record = self.recorder.record  # type: ignore[method-assign]

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else f"opted out ({self.config.opt_out_reason})"
        return f"<Telemetry {self.config.app_name or '?'} {state}>"

    # -- per request -----------------------------------------------------

    def record(
        self,
        method: str,
        route: str,
        status: int,
        duration: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        """Add one measured request (the route must already be identifier-free)."""
        self.recorder.record(method, route, status, duration, request_bytes, response_bytes)

    def is_excluded(self, path: str) -> bool:
        """True for paths the operator asked never to measure (health checks, ...)."""
        return path in self.exclude_paths or (
            bool(self.exclude_prefixes) and path.startswith(self.exclude_prefixes)
        )

    def route_for_unrouted(self, path: str, query: str = "", matched: bool = False) -> str:
        """The key for a request without a route template.

        ``matched=False`` means a router saw the request and found nothing (a
        404 from a scanner): those share one key when ``group_unmatched`` is on.
        """
        if not matched and self.config.group_unmatched:
            return UNMATCHED_ROUTE
        if self.config.record_query and query:
            return self.anonymizer.url(path, query)
        return self.anonymizer.path(path)

    def internal_error(self, error: BaseException) -> None:
        """A bug in telemetry itself: count it, log it once, never let it escape."""
        self.internal_errors += 1
        if not self._internal_error_logged:
            self._internal_error_logged = True
            logger.warning(
                "reqtelemetry caught an internal error; the request was not affected "
                "and further errors are only counted",
                exc_info=error,
            )

    # -- reading ------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """The current aggregates as plain JSON-ready records, without resetting them."""
        return self.recorder.snapshot()


def normalize_method(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD
