"""The collector's HTTP face: a Starlette app.

Public, for clients: ``POST /v1/session`` (a signed token), ``POST /v1/report``
(a report with its proof of work), ``GET /healthz``. For the maintainer,
behind the dashboard credentials when configured (without them, to a
loopback ``Host`` only: :class:`LocalHostOnly`): ``GET /`` (the dashboard),
``GET /api/summary`` (its data) and ``GET /export.csv``; those two take
``?days=`` (the window) and ``?app=`` (one app's figures only).

What the endpoint code guarantees, and why:

* Bodies are read as a stream and abandoned as soon as they pass the cap, and
  a gzip body is inflated only up to the cap: a client cannot make the
  collector hold more than ``max_body_bytes`` of its bytes, however it encodes
  them (see :mod:`.verify`).
* Any bad input is a 4xx with ``{"error", "detail"}``, counted by reason, in
  memory (:mod:`.refusals`): a refusal costs its sender nothing, and must
  not cost the database a write either.
  Parsing, schema validation and every storage call run in a worker thread
  (``run_in_threadpool``): a megabyte of JSON or a slow database must not stall
  the event loop that serves everyone else.
* Reports are verified a few at a time (:class:`Gate`): each verification
  holds an inflated body, and once its stamp holds a parsed payload, so a
  flood must not hold them all at once. A full line is a ``503 busy``.
* A storage failure is a ``503`` with ``Retry-After``: the client keeps its
  data and tries later, which is the truth (nothing was stored). The log
  gets the first failure of an outage, then a line a minute (:mod:`.failures`). The one
  exception is a value the database cannot hold (``UnstorableReport``): the
  same report would fail forever, so it is a ``422 invalid_payload``, which
  the client drops rather than retries.
* A report is committed only within its budget, counted from its arrival
  (:func:`commit_budget`), else rolled back and answered ``503``: a client
  that stopped waiting keeps its data and sends it again under a new stamp,
  and a copy committed after that would count its requests twice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import logging
import math
import os
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .._version import __version__
from ..transport import WAIT_HEADER
from .export import Started, app_filter, csv_chunks, endpoint_rows, since_days, started
from .failures import LOG_EVERY, FailureLog
from .outcomes import REPLAY_DETAIL, StampOutcomes
from .refusals import WRITE_EVERY, RefusalTally, RefusalWriter
from .settings import DAY_SECONDS, CollectorSettings
from .storage import open_storage
from .storage.base import (
    CommitUnknown,
    DeadlineExceeded,
    Pruned,
    ReadersBusy,
    ReplayError,
    RolledUp,
    Storage,
    StoredReport,
    UnstorableReport,
)
from .storage.sql import MAX_READERS
from .summary import DEFAULT_DAYS, MAX_DAYS, build_summary
from .tokens import TokenSigner
from .verify import (
    Limits,
    Refusal,
    check_declared_size,
    verify_report,
    verify_session_request,
)

logger = logging.getLogger("reqtelemetry.collector")
T = TypeVar("T")

#: A session request is two UUIDs; anything much larger is not one.
SESSION_MAX_BYTES = 4096
#: ``?days=``: ASCII digits, a few of them. ``str.isdigit`` also accepts "²"
#: (which ``int`` refuses) and "٣" (which it reads as 3), and ``int`` refuses
#: more than 4300 digits: each of those was a bare 500 or a surprise.
DAYS_PATTERN = re.compile(r"[0-9]{1,8}")
#: Seconds between two rounds of upkeep: deleting the reports past the
#: retention, rolling the days over since up.
UPKEEP_EVERY = 3600.0
#: How long a client should wait when storage is down.
UNAVAILABLE_RETRY_AFTER = 60
#: Seconds from a report's arrival within which it must be committed, or not
#: at all. Well under the client's default timeout (15 s, ``Config.timeout``):
#: that leaves the commit itself and the answer's way back time to finish
#: while the client still waits. A client that states a shorter wait
#: (:data:`~reqtelemetry.transport.WAIT_HEADER`) gets half of it instead.
COMMIT_BUDGET = 8.0
#: The shortest time left to store a report whose missed deadline says
#: anything about the database: a report with less (its client stated a wait
#: of 0, or its body or its turn took its time) is answered as too slow, but
#: not logged as a storage failure, which would announce an outage, then its
#: end. Well under what any client states on purpose: a final report at
#: shutdown states its 2 s, a budget of 1 s, and a database that holds it up
#: must be said.
SHORTEST_TELLING_TIME = 0.1
#: ``Reqtelemetry-Wait``: seconds, in ASCII digits with an optional fraction
#: of any length, and, as a client that prints its float as it is may send
#: them, ``.5``, ``1.`` and an exponent (``1e-05``): ignored, such a report had
#: the full budget and was stored after its client gave up.
WAIT_PATTERN = re.compile(r"(?=\.?[0-9])[0-9]{0,9}(\.[0-9]*)?([eE][-+]?[0-9]{1,3})?")
#: Reports verified at once. Verifying holds the inflated body, and for a
#: report whose stamp holds its parsed payload: memory in proportion to the
#: body, so a flood of concurrent bodies must not each get its own. More at
#: once would not go faster either, the parsing holding the GIL.
VERIFY_CONCURRENCY = 4
#: Reports waiting for their turn, beyond which a report is answered ``503``
#: at once (``BUSY_RETRY_AFTER``): a waiting report holds only its body as
#: sent, but the wait of the last in line must stay within a client's timeout.
VERIFY_QUEUE = 64
#: Seconds a report's or a session request's body may take to arrive, counted
#: from its headers. A client sends its body at once (a megabyte at most, by
#: default); one that trickles it, or stops short, would otherwise hold its
#: place in the line, and its bytes, for as long as it keeps its connection.
BODY_TIMEOUT = 30.0
#: Seconds a stopping collector (SIGTERM) waits for the requests under way
#: before it cancels them, and writes its refusal counts and closes its
#: database. Long enough for any report under way to be answered as it would
#: have been (its body's time, then its commit's); without a limit, one CSV
#: download whose client stopped reading kept the collector from stopping at
#: all, until a SIGKILL lost what a clean stop writes.
SHUTDOWN_GRACE = math.ceil(BODY_TIMEOUT + COMMIT_BUDGET) + 2
#: Dashboard summaries (and CSV exports' queries) read at once. Why a turn
#: before the worker thread, and not only the storage's own read turns: a
#: summary waiting for those holds one of the worker threads that report
#: stores run in (anyio's 40), so enough dashboard tabs at once held reports
#: up. Waiting here takes no thread.
SUMMARY_CONCURRENCY = MAX_READERS
#: Summaries waiting for their turn, beyond which one is answered ``503`` at once.
SUMMARY_QUEUE = 16
#: CSV downloads (``/export.csv``) under way at once; another is answered
#: ``503`` at once. Why a bound: each download reads on a database
#: connection of its own for as long as its client takes to fetch it, and a
#: client that stops reading keeps it forever. On PostgreSQL those are the
#: server's connections, shared with every replica: 45 stalled downloads
#: took all of a server's 40, and no other replica could connect.
EXPORT_CONCURRENCY = 4
#: How long a client should wait when the verifications are all taken.
BUSY_RETRY_AFTER = 10
#: The answer to a report the database refused to hold (the database's own
#: words go to the log, not to the client).
UNSTORABLE_DETAIL = (
    "the database cannot hold a value of this report (a number out of range or a "
    "character it does not accept); sending it again cannot succeed"
)
#: The dashboard loads only its own files and talks only to its own origin.
DASHBOARD_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # The page may carry ?token=: never hand the URL to anyone else.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class DashboardFiles(StaticFiles):
    """The dashboard's files under ``/static``, each with the dashboard's headers.

    Why: ``index.html`` is one of them, and served as a plain file it was the
    dashboard's page without its Content-Security-Policy, its refusal to be
    framed and its ``Referrer-Policy`` (a ``?token=`` on that URL could be
    passed on). The script and the style sheet lose nothing by them; they
    keep being cached (no ``Cache-Control: no-store``), as before.
    """

    def file_response(
        self,
        full_path: Any,
        stat_result: os.stat_result,
        scope: Any,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(_STATIC_HEADERS)
        return response


#: The dashboard's headers but ``Cache-Control``: its script and style sheet
#: may be kept and revalidated (a 304), as they were before they had these.
_STATIC_HEADERS = {
    name: value for name, value in DASHBOARD_HEADERS.items() if name != "Cache-Control"
}


@dataclass(frozen=True)
class Timing:
    """The collector's internal time limits, replaceable so that tests run in
    milliseconds what production waits seconds for."""

    #: See :data:`COMMIT_BUDGET`.
    commit_budget: float = COMMIT_BUDGET
    #: Seconds between two writes of the refusal counts (see :mod:`.refusals`).
    refusal_write_every: float = WRITE_EVERY
    #: Seconds between two log lines about one storage outage (see :mod:`.failures`).
    failure_log_every: float = LOG_EVERY
    #: See :data:`BODY_TIMEOUT`.
    body_timeout: float = BODY_TIMEOUT


def commit_budget(stated_wait: str | None, default: float = COMMIT_BUDGET) -> float:
    """Seconds a report may take to be committed, counted from its arrival.

    ``stated_wait`` is the client's ``Reqtelemetry-Wait`` header: how long it
    waits for this answer. Half of it at most, so that the commit and the
    answer fit in the other half (the client's clock started before ours, and
    the answer must get back); never more than ``default``, which covers
    clients that state nothing. A value that is not plain seconds is ignored:
    the header is advice from an unauthenticated sender, so it can only
    shorten the budget.
    """
    if stated_wait is None:
        return default
    text = stated_wait.strip()
    if WAIT_PATTERN.fullmatch(text) is None:
        return default
    seconds = float(text)
    if not math.isfinite(seconds):  # 1e999
        return default
    return min(default, seconds / 2)


def create_app(
    settings: CollectorSettings,
    storage: Storage | None = None,
    *,
    host: str | None = None,
    timing: Timing | None = None,
) -> Starlette:
    """The collector app. Without ``storage``, opens (and migrates) ``settings.db_url``
    and closes it at shutdown; a given ``storage`` stays the caller's to close.

    ``host`` is the address it listens on (``--host``): a dashboard without
    credentials answers to it as ``Host``, besides the loopback names
    (see :class:`LocalHostOnly`). ``timing``: the internal time limits
    (tests shorten them).

    ``app.state.refusals`` is the :class:`~.refusals.RefusalTally` of the
    refusals not yet written; its ``write()`` writes them at once.
    """
    timing = Timing() if timing is None else timing
    owns_storage = storage is None
    store: Storage = open_storage(settings.db_url) if storage is None else storage
    if owns_storage:
        store.migrate()
    signer = TokenSigner(settings.secret, ttl=settings.token_ttl)
    limits = Limits(
        max_body_bytes=settings.max_body_bytes,
        bits=settings.bits,
        stamp_max_age=settings.stamp_max_age,
        stamp_max_future=settings.stamp_max_future,
    )
    dashboard_html = (files("reqtelemetry.collector") / "static" / "index.html").read_text(
        encoding="utf-8"
    )
    gate = Gate(VERIFY_CONCURRENCY, VERIFY_QUEUE)
    # Stamps answered for good: a copy is answered again without check 10.
    outcomes = StampOutcomes(settings.stamp_max_age + settings.stamp_max_future)
    # The bodies still arriving hold no more than the line's bodies would.
    reading = BodyBudget((VERIFY_CONCURRENCY + VERIFY_QUEUE) * settings.max_body_bytes)
    summary_gate = Gate(SUMMARY_CONCURRENCY, SUMMARY_QUEUE)
    downloads = threading.BoundedSemaphore(EXPORT_CONCURRENCY)
    tally = RefusalTally(store)
    # Writes and reads apart: a database that refuses writes (a full disk, a
    # lock) may still answer the dashboard, and one log's successes would
    # end the other's outage over and over.
    write_failures = FailureLog(every=timing.failure_log_every)
    read_failures = FailureLog(every=timing.failure_log_every)

    async def refuse(refusal: Refusal) -> JSONResponse:
        # The detail as repr: it echoes the sender's input (a field's name, a
        # JSON error), which may hold a newline, a carriage return or a
        # terminal escape. Escaped, one refusal is one line of the log, and no
        # sender can forge another line or recolour the operator's terminal.
        logger.debug("refused: %s (%r)", refusal.reason, refusal.detail)
        tally.add(refusal.reason)
        return JSONResponse(refusal.body(), status_code=refusal.status)

    async def session(request: Request) -> Response:
        try:
            raw = await read_body(request, SESSION_MAX_BYTES, timing.body_timeout)
            encoding = request.headers.get("content-encoding")
            deployment_id, instance_id = verify_session_request(raw, encoding, SESSION_MAX_BYTES)
        except Refusal as refusal:
            return await refuse(refusal)
        except ClientDisconnect:
            return Response(status_code=400)
        except BodyTimeout as late:
            return _body_too_slow(late.seconds)
        token, expires_at = signer.issue(deployment_id, instance_id, now=time.time())
        return JSONResponse({"token": token, "expires_at": expires_at, "bits": settings.bits})

    async def report(request: Request) -> Response:
        budget = commit_budget(request.headers.get(WAIT_HEADER), timing.commit_budget)
        deadline = time.monotonic() + budget
        try:
            # A body declared too large is a 413 first (it must be split, not
            # sent again as it is); a full line is answered at once, unread.
            check_declared_size(request.headers.get("content-length"), settings.max_body_bytes)
            if gate.full():
                return _busy()
            raw = await read_body(request, settings.max_body_bytes, timing.body_timeout, reading)
            try:  # its bytes held until verified: waiting in line, a body holds them still
                async with gate.turn() as admitted:
                    if not admitted:
                        return _busy()
                    now = time.time()
                    try:
                        verified = await run_in_threadpool(
                            verify_report,
                            raw,
                            request.headers.get("content-encoding"),
                            signer=signer,
                            limits=limits,
                            now=now,
                            answered=outcomes.answer,
                        )
                    except Refusal as refusal:
                        if refusal.stamp is not None:  # refused for its payload
                            outcomes.refused(refusal.stamp, refusal)
                        if refusal.late_stamp is None:
                            raise
                        # In the verification's turn: a stamp, once minted, can
                        # be sent again and again, each time for a lookup.
                        return await answer_late_stamp(refusal, deadline)
            finally:
                reading.give_back(len(raw))
        except Refusal as refusal:
            return await refuse(refusal)
        except ClientDisconnect:
            return Response(status_code=400)
        except BodyTimeout as late:
            return _body_too_slow(late.seconds)
        except ReadingFull:
            return _busy()
        if await request.is_disconnected():
            # The client gave up waiting before its report could be stored:
            # this collector was stopped, or its loop or disk held, past the
            # client's deadline, which counts from the send, not from here.
            # The client keeps the data for its next report; stored now, it
            # would count twice (a collector frozen for 20 s stored 82 % more
            # requests than were served).
            return Response(status_code=400)
        # Check 11, the replay, is the storage's unique index: two replicas racing
        # with one stamp cannot both store it.
        stored = StoredReport(stamp=verified.stamp, received_at=now, payload=verified.payload)
        not_stored = await store_report(stored, deadline, budget)
        if not_stored is not None:
            return not_stored
        outcomes.stored(verified.stamp)
        answer: dict[str, Any] = {"stored": True}
        if settings.next_interval is not None:
            answer["next_interval"] = settings.next_interval
        return JSONResponse(answer)

    async def answer_late_stamp(refusal: Refusal, deadline: float) -> Response:
        """A genuine stamp (``refusal.late_stamp``) refused for its age, its
        work or its token's: ``409 replay`` if it is stored (its client sends
        it again after every answer was lost), else the refusal, which tells
        the client to mint a new one.

        When the lookup fails, neither can be said: ``503``, and the client
        keeps the report as it is.
        """
        stamp = refusal.late_stamp
        assert stamp is not None
        left = deadline - time.monotonic()
        try:
            stored = await run_in_threadpool(store.stamp_stored, stamp, deadline=deadline)
        except Exception as error:
            if isinstance(error, DeadlineExceeded) and left < SHORTEST_TELLING_TIME:
                # No time was left to look anything up (the client stated a
                # wait of 0): no sign of an outage, as in store_report.
                logger.debug("a late stamp's %.3f s left were too short to look it up", left)
            else:
                read_failures.failed("look a stamp up", error)
            return _unavailable(
                "the collector cannot tell now whether it stored this stamp; send it again later"
            )
        read_failures.worked()
        if stored:
            return await refuse(Refusal("replay", REPLAY_DETAIL))
        return await refuse(refusal)

    async def store_report(
        stored: StoredReport, deadline: float, budget: float
    ) -> JSONResponse | None:
        """Store ``stored`` by ``deadline``: None when it was, else the answer to give."""
        left = deadline - time.monotonic()
        try:
            await run_in_threadpool(store.store, stored, deadline=deadline)
        except ReplayError:
            write_failures.worked()
            outcomes.stored(stored.stamp)
            return await refuse(Refusal("replay", REPLAY_DETAIL))
        except UnstorableReport as error:
            write_failures.worked()
            outcomes.refused(stored.stamp, Refusal("invalid_payload", UNSTORABLE_DETAIL))
            # The checks should have refused it already; say which value in the log.
            logger.warning("refused a report the database cannot hold: %s", error)
            return await refuse(Refusal("invalid_payload", UNSTORABLE_DETAIL))
        except CommitUnknown as error:
            write_failures.failed("store a report", error)
            return _unconfirmed(budget)
        except DeadlineExceeded as error:
            if left < SHORTEST_TELLING_TIME:
                # No time was left to store anything: no sign of an outage (a
                # client near the end of its flush states a wait of a few
                # milliseconds, or none; a slow body took the rest), so nothing
                # to log as one.
                logger.debug("a report's %.3f s left were too short to store it", left)
            else:
                write_failures.failed(f"store a report within its {budget:.1f} s", error)
            return _too_slow(budget)
        except Exception as error:
            write_failures.failed("store a report", error)
            return _unavailable("the collector cannot store reports right now")
        write_failures.worked()
        return None

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(dashboard_html, headers=DASHBOARD_HEADERS)

    @contextlib.asynccontextmanager
    async def dashboard_read_turn(request: Request) -> AsyncIterator[bool]:
        """A turn for one of the dashboard's heavy reads (a summary, an export's
        query), held while it reads; raises ``ReadersBusy`` when the line is full.

        Yields False when the client left while it waited (the page was
        closed, or asked for another period): reading it would only delay the
        rest, by minutes on a large database.
        """
        async with summary_gate.turn() as admitted:
            if not admitted:
                raise ReadersBusy(f"{SUMMARY_QUEUE} dashboard reads already wait for a turn")
            yield not await request.is_disconnected()

    async def summary(request: Request) -> Response:
        days = days_param(request)
        app_name = app_param(request)
        try:
            async with dashboard_read_turn(request) as wanted:
                if not wanted:
                    return Response(status_code=400)
                data = await run_in_threadpool(read_summary, days, app_name)
        except ReadersBusy:
            # More summaries at once than the storage reads at once: the
            # database works, so this is no outage to log.
            return _unavailable("too many dashboard reads at once; try again")
        except Exception as error:
            read_failures.failed("read the summary", error)
            return _unavailable("the collector cannot read its database right now")
        read_failures.worked()
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    def read_summary(days: int, app_name: str | None) -> dict[str, Any]:
        return build_summary(
            store,
            days,
            app=app_name,
            retention_days=settings.retention_days,
            refusals=tally.counts(),
        )

    async def export_csv(request: Request) -> Response:
        days = days_param(request)
        app_name = app_param(request)
        chunks = csv_chunks(_one_of(downloads, endpoint_rows(store, since_days(days), app_name)))
        try:
            # The query runs here, before the status is sent: a failing database
            # is a 503. It takes a summary's turn: 40 exports at once, each in
            # a worker thread until its query ended, once left the reports
            # none to be stored in (0.1 stored a second for five minutes).
            async with dashboard_read_turn(request) as wanted:
                if not wanted:
                    return Response(status_code=400)
                started_chunks = await run_in_threadpool(started, chunks)
        except ReadersBusy:
            return _unavailable("too many dashboard reads at once; try again")
        except Exception as error:
            read_failures.failed("read the endpoint report", error)
            return _unavailable("the collector cannot read its database right now")
        read_failures.worked()
        return _Download(
            _streamed(started_chunks),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": 'attachment; filename="reqtelemetry-endpoints.csv"',
                "Cache-Control": "no-store",
            },
        )

    protect = _guard(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        upkeep = Upkeep(store, settings.retention_days)
        upkeep.start()
        writer = RefusalWriter(
            tally,
            every=timing.refusal_write_every,
            budget=timing.commit_budget,
            on_written=lambda count: write_failures.worked(),
            on_failed=lambda error: write_failures.failed("write the refusal counts", error),
        )
        writer.start()
        yield
        await writer.stop()
        await upkeep.stop()
        # The downloads a stop cancelled end their reads in worker threads
        # after this began (uvicorn does not wait for them): closed before
        # they are, SQLite's log stays beside the file.
        await _downloads_ended(downloads, SHUTDOWN_GRACE - BODY_TIMEOUT - COMMIT_BUDGET)
        if owns_storage:
            store.close()

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return JSONResponse(
            {"error": _ERROR_NAMES.get(error.status_code, "error"), "detail": error.detail},
            status_code=error.status_code,
            headers=error.headers,
        )

    app = Starlette(
        routes=[
            Route("/v1/session", session, methods=["POST"]),
            Route("/v1/report", report, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/", protect(dashboard), methods=["GET"]),
            Route("/api/summary", protect(summary), methods=["GET"]),
            Route("/export.csv", protect(export_csv), methods=["GET"]),
            Mount(
                "/static",
                DashboardFiles(packages=[("reqtelemetry.collector", "static")]),
                name="static",
            ),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
        middleware=_host_guard(settings, host),
    )
    # No redirect of "/api/summary/" to "/api/summary": Starlette names in its
    # Location whatever Host the request gave, and answers before any
    # endpoint checks credentials. Behind a proxy or a cache that passes the
    # Host on, that sent browsers to another site, a ?token= along with them.
    # The clients and the dashboard's links never add a slash.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.storage = store
    app.state.gate = gate
    app.state.reading = reading
    app.state.summary_gate = summary_gate
    app.state.refusals = tally
    app.state.write_failures = write_failures
    app.state.read_failures = read_failures
    return app


class Upkeep:
    """Keeps the database fit to read: at start, then every :data:`UPKEEP_EVERY`
    seconds, deletes what is past the retention (when one is set) and rolls
    the days over since up (``Storage.roll_up``).

    Why in the collector, and not only a command for cron: upkeep that
    depends on a second moving part is upkeep that silently stops. Every
    replica runs it; deleting what another replica deleted first is a no-op,
    and a day another replica rolled up is not added twice. The work runs in
    a worker thread. At shutdown the prune's batch under way is finished,
    and a day being rolled up is left, its claim let go: it is rolled up
    again, whole, next time (nothing of it was read meanwhile). The prune
    goes first, so that days past the retention are not rolled up only to
    be deleted.
    """

    def __init__(
        self, storage: Storage, retention_days: int | None, every: float = UPKEEP_EVERY
    ) -> None:
        self.storage = storage
        self.days = retention_days
        self.every = every
        self._stop = threading.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            if self.days:
                await self.prune_once()
            if not self._stop.is_set():
                await self.roll_up_once()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every)

    async def prune_once(self) -> Pruned | None:
        """Delete what is older than the retention now; None when the database failed."""
        assert self.days
        before = time.time() - self.days * DAY_SECONDS
        try:
            pruned: Pruned = await run_in_threadpool(self.storage.prune, before, self._stop)
        except Exception:
            logger.exception("could not delete reports older than %d days", self.days)
            return None
        if pruned.reports or pruned.instances or pruned.deployments:
            logger.info(
                "retention (%d days): deleted %d reports, %d instances, %d deployments",
                self.days,
                pruned.reports,
                pruned.instances,
                pruned.deployments,
            )
        return pruned

    async def roll_up_once(self) -> RolledUp | None:
        """Roll the days over since up; None when the database failed."""
        try:
            rolled: RolledUp = await run_in_threadpool(self.storage.roll_up, None, self._stop)
        except Exception:
            logger.exception("could not roll the past days' aggregates up")
            return None
        if rolled.days:
            logger.info("rolled up %d days into %d daily rows", rolled.days, rolled.rows)
        return rolled


class Gate:
    """At most ``size`` holders at once, and ``queue`` waiting for a turn.

    Why not a bare semaphore: its line has no end, and a flood would keep
    honest reports waiting past their clients' timeouts; a full line is
    told to come back (``503``), which a client does within its budget.
    Kept per event loop: an asyncio semaphore belongs to the loop it first
    waited in, and one app may be served by several loops in turn (tests).
    """

    def __init__(self, size: int, queue: int) -> None:
        self.size = size
        self.queue = queue
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Line] = (
            weakref.WeakKeyDictionary()
        )

    def full(self) -> bool:
        """Whether a request asking for a turn now would be refused."""
        line = self._line()
        return line.semaphore.locked() and line.waiting >= self.queue

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[bool]:
        """Wait for a turn and hold it; yields False, at once, when the line is full."""
        line = self._line()
        if line.semaphore.locked() and line.waiting >= self.queue:
            yield False
            return
        line.waiting += 1
        try:
            await line.semaphore.acquire()
        finally:
            line.waiting -= 1
        try:
            yield True
        finally:
            line.semaphore.release()

    def waiting(self) -> int:
        """Requests waiting for a turn, on every loop."""
        return sum(line.waiting for line in list(self._loops.values()))

    def _line(self) -> _Line:
        return _of_running_loop(self._loops, lambda: _Line(asyncio.Semaphore(self.size)))


def _of_running_loop(
    by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T], make: Callable[[], T]
) -> T:
    """The running event loop's entry of ``by_loop``, made on first use.

    Why per loop: asyncio objects belong to the loop they were first used in,
    and one app may be served by several loops in turn (tests)."""
    loop = asyncio.get_running_loop()
    entry = by_loop.get(loop)
    if entry is None:
        entry = by_loop[loop] = make()
    return entry


@dataclass
class _Line:
    semaphore: asyncio.Semaphore
    waiting: int = 0


async def _streamed(chunks: Started[str]) -> AsyncIterator[str]:
    """``chunks`` (a CSV export being read), each read in a worker thread, and
    their read ended (its database connection closed, in a worker thread too:
    a read cut short may have to cancel a statement) however the download
    ends: finished, failed, or given up by the client.

    A database failure once the status is sent can only cut the download
    short (the client sees an unfinished response, never a complete-looking
    file): it is logged and raised again.
    """
    try:
        while True:
            chunk = await run_in_threadpool(next, chunks, None)
            if chunk is None:
                return
            yield chunk
    except Exception:
        logger.exception("the endpoint report failed while it was being sent")
        raise
    finally:
        with anyio.CancelScope(shield=True):  # even when the download was cancelled
            await run_in_threadpool(chunks.close)


class _Download(StreamingResponse):
    """A CSV download whose read ends however the response does.

    Why: Starlette leaves the body's generator as it is when the response is
    cancelled while it waits to send (a stop's cancel of a download whose
    client stopped reading). Its read (a database connection, a download's
    slot) then ended only when the garbage collector found it: at a stop,
    after the database was closed, which left SQLite's log beside the file.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            body = self.body_iterator
            if hasattr(body, "aclose"):
                with anyio.CancelScope(shield=True):
                    await body.aclose()


async def _downloads_ended(downloads: threading.BoundedSemaphore, within: float) -> None:
    """Until every download has given its slot back, or ``within`` seconds."""
    deadline = time.monotonic() + within
    taken = 0
    try:
        while taken < EXPORT_CONCURRENCY:
            if downloads.acquire(blocking=False):
                taken += 1
            elif time.monotonic() >= deadline:
                return
            else:
                await asyncio.sleep(0.01)
    finally:
        for _ in range(taken):
            downloads.release()


def _one_of(
    downloads: threading.BoundedSemaphore, rows: Generator[T, None, None]
) -> Generator[T, None, None]:
    """``rows`` (a download's), read while holding one of ``downloads``; raises
    ``ReadersBusy`` when none is free, before ``rows`` opens its connection.

    Taken when the first row is read and given back when the rows end, are
    closed or are collected, as the read's connection is: a download held
    one, whether its client fetches it or not.
    """
    if not downloads.acquire(blocking=False):
        raise ReadersBusy(f"{EXPORT_CONCURRENCY} CSV downloads are already under way")
    try:
        yield from rows
    finally:
        downloads.release()


def _busy() -> JSONResponse:
    """Every verification is taken and the line is full: come back shortly."""
    return JSONResponse(
        {"error": "busy", "detail": "the collector is verifying as many reports as it can"},
        status_code=503,
        headers={"Retry-After": str(BUSY_RETRY_AFTER)},
    )


def _body_too_slow(seconds: float) -> JSONResponse:
    """The body took longer than ``seconds`` to arrive: not read, not counted
    as a refusal (a slow link is no bad report), and the client tries again
    as after any ``408``."""
    return JSONResponse(
        {"error": "timeout", "detail": f"the body did not arrive within {seconds:g} s"},
        status_code=408,
        headers={"Connection": "close"},
    )


def _unavailable(detail: str) -> JSONResponse:
    """The database failed: say so, and when to come back (never a bare 500)."""
    return JSONResponse(
        {"error": "unavailable", "detail": detail},
        status_code=503,
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
    )


def _unconfirmed(budget: float) -> JSONResponse:
    """The commit's answer was lost: the report may be stored. Not the
    ``unavailable`` of :func:`_unavailable`, which tells the client nothing was
    stored (it then sends the data again under a new stamp): this one has it
    send the report again with its stamp, a replay if the commit landed."""
    return JSONResponse(
        {
            "error": "unconfirmed",
            "detail": "the database did not confirm the commit: the report may be stored; "
            "send it again with the same stamp",
        },
        status_code=503,
        headers={"Retry-After": str(max(1, math.ceil(budget)))},
    )


def _too_slow(budget: float) -> JSONResponse:
    """The report could not be committed within ``budget``, and was not.

    ``Retry-After`` is about as long as was waited: the lock or the load that
    held this report up is expected to last about that long, and a client
    with time left in its flush tries again within it.
    """
    return JSONResponse(
        {
            "error": "unavailable",
            "detail": f"the database could not store the report within {budget:.1f} s; "
            "nothing was stored",
        },
        status_code=503,
        headers={"Retry-After": str(max(1, math.ceil(budget)))},
    )


_ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
}


class BodyTimeout(Exception):
    """A body did not arrive within ``seconds`` of its request's headers."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the body did not arrive within {seconds:g} s")
        self.seconds = seconds


class ReadingFull(Exception):
    """The bodies being read hold as many bytes as they may: come back later."""


class BodyBudget:
    """The bytes the report bodies held may take together, per event loop:
    those still arriving and those waiting for, or in, their verification.

    Why bytes, and not a place in the verification line for each body being
    read: a sender that stops short holds what it sent. Counted by places,
    68 connections that had each sent one byte shut every honest report out
    for as long as they kept coming back; counted by bytes, they hold 68
    bytes, and holding the budget means sending its megabytes first. And
    without any bound, 100 senders that each stopped a byte short of 1 MiB
    held 120 MB for as long as they kept their connections.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[int]] = (
            weakref.WeakKeyDictionary()
        )

    def _counter(self) -> list[int]:
        return _of_running_loop(self._held, lambda: [0])

    def take(self, count: int) -> None:
        """Hold ``count`` more bytes; raises :class:`ReadingFull` past the limit."""
        counter = self._counter()
        if counter[0] + count > self.limit:
            raise ReadingFull
        counter[0] += count

    def give_back(self, count: int) -> None:
        self._counter()[0] -= count

    def held(self) -> int:
        """Bytes held now, on every loop."""
        return sum(counter[0] for counter in list(self._held.values()))


async def read_body(
    request: Request, cap: int, timeout: float, budget: BodyBudget | None = None
) -> bytes:
    """The raw body, refused (413) once it passes ``cap`` bytes: by the declared
    length before reading, then by counting as it streams in. Raises
    :class:`BodyTimeout` when it has not all arrived within ``timeout``
    seconds, and :class:`ReadingFull` when the bodies held would take more
    than ``budget`` allows. A body returned still holds its bytes in
    ``budget``, for the caller to give back once done with it; on any
    failure they are given back here."""
    check_declared_size(request.headers.get("content-length"), cap)
    body = bytearray()
    taken = 0
    try:
        with anyio.move_on_after(timeout) as reading:
            async for chunk in request.stream():
                if len(body) + len(chunk) > cap:  # too large, whatever the budget
                    raise Refusal("too_large", f"the body is over the limit of {cap} bytes")
                if budget is not None:
                    budget.take(len(chunk))
                    taken += len(chunk)
                body += chunk
            taken = 0  # the caller's to give back now
            return bytes(body)
    finally:
        if budget is not None and taken:
            budget.give_back(taken)
    assert reading.cancelled_caught
    raise BodyTimeout(timeout)


def days_param(request: Request) -> int:
    """``?days=N``: a whole number of days in ASCII digits, 1 to 3650 (default 30)."""
    value = request.query_params.get("days")
    if value is None or value == "":
        return DEFAULT_DAYS
    if DAYS_PATTERN.fullmatch(value) is None or not 1 <= int(value) <= MAX_DAYS:
        raise HTTPException(400, f"days must be a whole number from 1 to {MAX_DAYS}")
    return int(value)


def app_param(request: Request) -> str | None:
    """``?app=NAME``: one app's figures; absent or empty, every app's."""
    try:
        return app_filter(request.query_params.get("app"))
    except ValueError as error:
        raise HTTPException(400, f"app {error}") from None


Endpoint = Callable[[Request], Any]


def _guard(settings: CollectorSettings) -> Callable[[Endpoint], Endpoint]:
    """Wrap the maintainer's endpoints in the configured credentials check.

    A bearer token (header, or ``?token=`` so a browser can open the dashboard
    from a link) and/or HTTP basic auth; either configured method suffices.
    Comparisons are constant-time.
    """
    token = _utf8(settings.dashboard_token) if settings.dashboard_token else None
    basic = (
        (_utf8(settings.dashboard_basic_auth[0]), _utf8(settings.dashboard_basic_auth[1]))
        if settings.dashboard_basic_auth
        else None
    )
    challenge = 'Basic realm="reqtelemetry", charset="UTF-8"' if basic else "Bearer"

    def allowed(request: Request) -> bool:
        authorization = request.headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if token is not None:
            if scheme == "bearer" and hmac.compare_digest(_utf8(credentials), token):
                return True
            offered = request.query_params.get("token")
            if offered is not None and hmac.compare_digest(_utf8(offered), token):
                return True
        if basic is not None and scheme == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True)
            except (binascii.Error, ValueError):
                return False
            user, sep, password = decoded.partition(b":")
            # Both compared, always: no early exit that times the user name.
            user_ok = hmac.compare_digest(user, basic[0])
            password_ok = hmac.compare_digest(password, basic[1])
            return bool(sep) and user_ok and password_ok
        return False

    def protect(endpoint: Endpoint) -> Endpoint:
        if not settings.dashboard_protected:
            return endpoint

        async def guarded(request: Request) -> Response:
            if not allowed(request):
                return JSONResponse(
                    {
                        "error": "unauthorized",
                        "detail": "credentials required: Authorization: Bearer <token>, "
                        "?token=<token>, or HTTP basic auth, as configured",
                    },
                    status_code=401,
                    headers={"WWW-Authenticate": challenge},
                )
            response: Response = await endpoint(request)
            return response

        return guarded

    return protect


#: The clients' endpoints: they answer whatever the ``Host``, since what they
#: accept carries its own proof (a token, a stamp) and they hold nothing to read.
CLIENT_PATHS = frozenset({"/v1/session", "/v1/report", "/healthz"})
LOOPBACK_NAMES = frozenset({"localhost"})
WRONG_HOST_DETAIL = (
    "this dashboard has no credentials, so it answers only to a loopback Host "
    "(localhost, 127.0.0.1, [::1]) or its --host; set REQTELEMETRY_DASHBOARD_TOKEN "
    "to open it under another name"
)


def _host_guard(settings: CollectorSettings, host: str | None) -> list[Middleware]:
    """:class:`LocalHostOnly` for a dashboard without credentials, unless it
    was published on purpose (``--public-dashboard``)."""
    if settings.dashboard_protected or settings.dashboard_public:
        return []
    return [Middleware(LocalHostOnly, listen_host=host)]


class LocalHostOnly:
    """Answer everything but the clients' endpoints only to a loopback ``Host``.

    Why: a dashboard without credentials listens on loopback, trusting that
    only the maintainer's machine reaches it. A web page the maintainer
    visits can still reach it, by DNS rebinding: its own name, resolved
    again to 127.0.0.1, makes the browser send the page's requests here as
    same-origin, and read ``/api/summary`` and ``/export.csv``. Those
    requests carry the page's name as ``Host``; a loopback name or the
    address listened on cannot be rebound.
    """

    def __init__(self, app: ASGIApp, listen_host: str | None = None) -> None:
        self.app = app
        self.allowed = set(LOOPBACK_NAMES)
        if listen_host:
            self.allowed.add(_host_name(listen_host))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in CLIENT_PATHS or self._local(scope):
            await self.app(scope, receive, send)
            return
        answer = JSONResponse({"error": "wrong_host", "detail": WRONG_HOST_DETAIL}, status_code=403)
        await answer(scope, receive, send)

    def _local(self, scope: Scope) -> bool:
        header = Headers(scope=scope).get("host")
        if header is None:
            return False
        name = _host_name(header)
        return name in self.allowed or _is_loopback_address(name)


def _host_name(host: str) -> str:
    """``host`` (a ``Host`` header or ``--host``) without port or brackets,
    lower case and without a final dot: ``[::1]:8600`` is ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.removesuffix(".")


def _is_loopback_address(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")
