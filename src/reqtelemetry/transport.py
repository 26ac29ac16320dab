"""Delivering report bodies to the collector over HTTP (httpx).

Runs only on the flusher thread, never on a request. It speaks the collector
protocol (``docs/protocol.md``): a session token from ``/v1/session``, then each
report POSTed (gzipped) to ``/v1/report`` with a hashcash stamp bound to the
token and the exact report bytes. Minting that stamp is CPU work: above a few
hundred hashes it runs in a child process, so it never holds the app's GIL.
Retries of one report reuse its stamp, so when a report was stored but the
answer got lost, the retry is refused as a replay and counts as delivered:
nothing is counted twice. A report whose every answer was lost that way goes
again at the next flush with that same stamp (see :class:`Sent`), however
old: the collector looks such a stamp up before refusing it as too old, and
answers a replay. Failures are retried with exponential
backoff and full jitter (the AWS architecture blog's recommendation: spread
retries of many instances so they do not arrive in waves) within a time budget.

The server paces the client (Caddy's lesson): ``429``/``503`` with
``Retry-After`` mean wait that long; ``410 Gone`` means stop for the life of
the process; a successful reply may carry ``{"next_interval": seconds}``, which
the flusher applies within the bounds the operator configured.
"""

from __future__ import annotations

import contextlib
import contextvars
import email.utils
import enum
import json
import logging
import math
import os
import random
import socket
import ssl
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import urlsplit, urlunsplit

import httpx

from . import green, hashcash
from ._version import __version__
from .config import Config, redacted_url, scrubbed, url_secrets
from .payload import PACED, YIELD_PAUSE, Pacer, Pacing
from .said_once import warn_once

logger = logging.getLogger("reqtelemetry")
#: Whether this thread (or green thread, or task) is sending one of
#: reqtelemetry's requests now (see :class:`_OwnRequestsUnlogged`). A context
#: variable, not a ``threading.local``: made at import, before gevent patches
#: threading (``gunicorn -k gevent --preload``), a thread-local was one for
#: every greenlet, and the app's own httpx lines went missing while a report
#: was sent; each greenlet has a context of its own.
_sending: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "reqtelemetry_sending", default=False
)


class _OwnRequestsUnlogged(logging.Filter):
    """Drops what httpx logs of reqtelemetry's own requests.

    Why: httpx logs every request at INFO with its whole URL (``HTTP
    Request: POST http://user:key@collector/v1/report?key=... "HTTP/1.1 200
    OK"``), so an app logging at INFO wrote the endpoint's credentials and
    key to its logs, a line per report and session. httpx logs from the
    thread that sends, while it sends: only records made then are dropped,
    and the app's own requests through httpx are logged as they were.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not _sending.get()


_OWN_REQUESTS_UNLOGGED = _OwnRequestsUnlogged()


def _leave_own_requests_unlogged() -> None:
    """Put the filter on httpx's logger, once (a logger keeps one of each filter)."""
    logging.getLogger("httpx").addFilter(_OWN_REQUESTS_UNLOGGED)


REPORT_PATH = "/v1/report"
SESSION_PATH = "/v1/session"
#: The seconds this client waits for the answer to a report (docs/protocol.md):
#: the collector commits the report within half of that or not at all, so a
#: report this client gave up on is never stored behind its back, to be sent
#: again and counted twice.
WAIT_HEADER = "Reqtelemetry-Wait"
#: Refusals of a stamp (not of the report) that a new session and stamp can cure:
#: the collector's difficulty went up since the session was granted, or the stamp's
#: date fell outside its window (clocks apart). docs/protocol.md, checks 7 and 8.
RENEWING_REFUSALS = frozenset({"insufficient_work", "stale_stamp"})
#: A difference between the collector's clock (its ``Date`` header) and ours below
#: this is the header's one-second resolution and the round trip: not applied.
CLOCK_TOLERANCE = 2.0
#: Renew a token this long before the collector says it expires.
TOKEN_MARGIN = 60.0
#: Characters of report escaped per slice when building the envelope.
ENVELOPE_SLICE = 16384
#: gzip level of report bodies. A full batch (1,000 keys, 640 kB of JSON) takes
#: 5.5 ms of CPU at level 1 for 3.2:1, 25 ms at level 6 for 4.2:1: the flusher's
#: CPU is taken from the app's threads, the 50 kB saved once a flush are not worth it.
GZIP_LEVEL = 1
#: Bytes deflated between two offers of the CPU to other threads (see :func:`gzip_paced`).
GZIP_SLICE = 32768
#: ``zlib`` window bits for a gzip header and trailer around a deflate stream.
_GZIP_WBITS = 31
#: Difficulty below which minting is cheap enough to do here, on the flusher thread:
#: about 2**8 = 256 hashes on average, some 0.1 ms. Minting holds the GIL, unpaced;
#: at 15 bits (32,768 hashes, ~20 ms) a request thread beside 20 stamps waited
#: 6 ms at the median for it (design decision 5), against under 0.2 ms once every
#: stamp of 9 bits and more goes to a child process (see docs/protocol.md).
SUBPROCESS_MINT_BITS = 9
#: Statuses worth retrying: the collector or a proxy in front is overloaded or down.
#: So is every status from 500 up (:func:`retryable`): a 507, a CDN's 521-524,
#: a proxy's 599 say nothing about the report, and docs/protocol.md keeps the data on 5xx.
RETRYABLE = frozenset({408, 425, 429})
#: The collector's own ``503`` reasons: it stored nothing. A ``503`` without
#: one may be a proxy's (Envoy's "upstream reset", say), which can come after
#: the collector stored the report.
NOTHING_STORED_REASONS = frozenset({"unavailable", "busy"})
#: The collector's refusals of a token or a stamp, which it answers only after
#: it looked the stamp up and did not find it (docs/protocol.md): the report
#: is not stored, and may go under a new stamp. A proxy's ``401`` says no such thing.
LOOKED_UP_REASONS = frozenset({"bad_token", "token_expired", "stale_stamp", "insufficient_work"})
#: The statuses the collector refuses a report itself with, as invalid
#: (docs/protocol.md): ``400`` and ``422``. It answers no report ``403``,
#: ``404`` or ``405``: those come from a gateway or proxy in front, and say
#: something of the endpoint (a key being rotated, a route missing), not of
#: the report, whose data is then kept, as it is for a session request.
REPORT_REFUSALS = frozenset({400, 422})


def retryable(status: int) -> bool:
    """Whether an answer means "not now": the data is kept and sent again."""
    return status in RETRYABLE or status >= 500


def may_have_been_stored(status: int, reason: str | None) -> bool:
    """Whether a "not now" answer may come from behind a report that was stored.

    The collector says ``503`` with its reason (:data:`NOTHING_STORED_REASONS`)
    when it stored nothing. Other ``5xx`` come from a proxy in front (``502``,
    ``504``, a mesh's ``503``: the collector's own answer did not get through,
    and it may have stored the report first) or from a crash, which can come
    after the commit. ``408``, ``425`` and ``429`` are said before a request is
    handled.
    """
    if status < 500:
        return False
    return not (status == 503 and reason in NOTHING_STORED_REASONS)


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    #: Not delivered now; keep the data and try again at the next flush.
    FAILED = "failed"
    #: The collector refused this body as invalid; retrying cannot help.
    REJECTED = "rejected"
    #: ``410 Gone``: the collector asks this client to stop reporting for good.
    GONE = "gone"
    #: ``413``: the body is over the collector's size cap (or a proxy's). The same
    #: data in smaller bodies may pass: the flusher splits it again, smaller.
    TOO_LARGE = "too_large"


@dataclass
class Session:
    token: str
    #: Local monotonic time after which the token must be renewed.
    renew_at: float
    bits: int


@dataclass
class Sent:
    """The token and stamp a report went with, and whether the collector may hold it.

    Why it is kept: when every answer to a report was lost (a proxy that
    held them past the timeout, a connection cut after the commit), the
    collector may have stored it. Sent again under a new stamp it would count
    twice; with this one, the collector answers ``409 replay`` if it has it,
    or stores it now. A collector that refuses the stamp as too old, or its
    token as expired, has looked it up first (docs/protocol.md): that refusal
    says it is not stored, and a new stamp is safe.
    """

    token: str
    stamp: str
    #: Some attempt with this stamp may have been stored.
    maybe_stored: bool = False


@dataclass
class Result:
    outcome: Outcome
    #: Seconds the server asked to wait before the next attempt (Retry-After).
    retry_after: float | None = None
    #: The reporting interval the server asked for, unbounded (the flusher clamps it).
    next_interval: float | None = None
    status: int | None = None
    error: str | None = None
    #: Asking again within this flush cannot help (the data is kept for the next one).
    end_flush: bool = False
    #: The session was dropped: a new one, and a new stamp, may help right away.
    renew: bool = False
    #: Bytes of the request body the collector refused as too large (``413``),
    #: uncompressed: the envelope around the report, as the collector measures it.
    refused_bytes: int | None = None
    #: This attempt may have been stored although no answer says so.
    maybe_stored: bool = False
    #: The ``error`` of the collector's refusal body, when there is one.
    reason: str | None = None
    #: What the report last went with (:meth:`Transport.deliver`'s result only).
    sent: Sent | None = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit alone takes "²", which float refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except Exception:  # not a date: ValueError, TypeError, OverflowError past year 9999
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _redirected(response: httpx.Response, what: str) -> Result:
    """A 3xx: kept, not followed, and said once per process at WARNING.

    Never followed: the token and the report must not go to a host the
    operator did not configure. Not retried in this flush either (the answer
    will not change); the operator has to fix the endpoint (often
    ``http://`` where the collector wants ``https://``), so it is said loudly once.
    """
    # Shown without credentials or query: a redirect to a login page or a
    # signed URL may carry a token, and logs are read by more people.
    location = redacted_url(response.headers.get("Location", ""))
    status = response.status_code
    warn_once(
        "redirect",
        "reqtelemetry: the collector answered %s with a redirect (HTTP %s) to %r; redirects "
        "are not followed, so reports are kept but not delivered: set the endpoint to "
        "where the collector really is",
        what,
        status,
        location,
    )
    return Result(
        Outcome.FAILED,
        status=status,
        error=f"{what}: HTTP {status} redirect to {location!r} (not followed)",
        end_flush=True,
    )


#: The longest answer read from a collector (raw bytes, as sent); its real
#: answers are JSON objects of a few hundred bytes.
MAX_ANSWER_BYTES = 64 * 1024


def _without_body(response: httpx.Response) -> httpx.Response:
    """``response``'s status and headers, with an empty body (one not read)."""
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(
        response.status_code, headers=headers, content=b"", request=response.request
    )


def endpoint_url(endpoint: str, path: str) -> str:
    """The URL of ``path`` (``/v1/report``) under ``endpoint``, its query kept.

    Why not ``endpoint + path``: an endpoint may carry a query (an API
    gateway's ``?key=...``), which must stay the query, not become the start
    of the path.
    """
    parts = urlsplit(endpoint)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, parts.query, ""))


def waitable(seconds: float) -> float:
    """``seconds`` clamped to what ``Event.wait``/``Lock.acquire``/``join`` accept.

    Past ``threading.TIMEOUT_MAX`` (about 9.2e9 s on Linux) they raise
    ``OverflowError``, which on the flusher thread would end it for good.
    """
    return min(max(0.0, seconds), threading.TIMEOUT_MAX)


def started(thread: threading.Thread) -> bool:
    """Start ``thread``; False where no thread can be started now.

    Python 3.12 refuses new threads at interpreter shutdown, inside an
    ``atexit`` function too, which is where a WSGI app's final report goes
    out. The callers then do without the thread.
    """
    try:
        thread.start()
    except RuntimeError:
        return False
    return True


def wait_header(seconds: float) -> str:
    """``seconds`` as :data:`WAIT_HEADER` says it: rounded down to the
    millisecond (saying less than we wait is safe, saying more is not)."""
    return f"{math.floor(max(0.0, seconds) * 1000) / 1000:.3f}"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**attempt)]``."""
    return rng.uniform(0.0, min(cap, base * (2.0**attempt)))


def _shut_down(sock: socket.socket) -> None:
    """Shut ``sock`` down both ways, waking a thread blocked on it; a socket
    already closed is left as it is. The plain socket's method even on a TLS
    socket (see :meth:`Transport._cut_connections`)."""
    with contextlib.suppress(OSError, ValueError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Transport:
    """Sends bodies to one collector; thread-safe enough for one flusher thread."""

    def __init__(
        self,
        config: Config,
        client: httpx.Client | None = None,
        *,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        max_attempts: int = 4,
        rng: random.Random | None = None,
    ) -> None:
        if not config.endpoint:
            raise ValueError("a transport needs an endpoint")
        self.url = endpoint_url(config.endpoint, REPORT_PATH)
        self.session_url = endpoint_url(config.endpoint, SESSION_PATH)
        _leave_own_requests_unlogged()  # once per transport, not per request
        self._session: Session | None = None
        self.config = config
        self._client = client
        self._owns_client = client is None
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_attempts = max_attempts
        self._rng = rng or random.Random()
        self._owns_rng = rng is None
        self._stop = threading.Event()
        #: This client's wall clock (Unix seconds); replaceable to test a skewed one.
        self.wall_clock: Callable[[], float] = time.time
        #: The collector's clock minus ours, from the ``Date`` of its session answer.
        self.clock_offset = 0.0
        #: Sockets of this client's connections (see :meth:`_trace`), cut at a deadline.
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._sockets_lock = threading.Lock()
        #: Set by :meth:`interrupt` to stop the stamp being minted now (its child is killed).
        self._mint_cancel: threading.Event | None = None
        #: How the delivery under way makes way for request threads (see
        #: :meth:`_make_way`): its flush's, hurried by :meth:`interrupt` too.
        self._pacing = Pacing(hurry=self._stop)
        #: Whether the request under way has handed its whole body to the socket
        #: (see :meth:`_trace`): until then the collector cannot have stored it.
        self._body_sent = False
        self._sending_tunnel_request = False
        #: Set once the request under way is past its deadline (see :meth:`_deadline`).
        self._past_deadline: threading.Event | None = None
        #: What the endpoint's and the proxy's URLs hide in logs, taken out of
        #: what a server answers too (see :meth:`_answer`).
        self._secrets = url_secrets(config.endpoint, config.proxy)
        self.headers = {
            "User-Agent": f"reqtelemetry/{__version__} httpx/{httpx.__version__}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            # trust_env=False: the app's environment is for the app's traffic.
            # It guards no credentials here (httpx >= 0.24 reads .netrc only
            # through an explicit NetRCAuth); what it keeps out is HTTP(S)_PROXY,
            # ALL_PROXY and SSL_CERT_FILE/DIR, so that telemetry never takes a
            # route the operator did not choose for it, and a proxy variable
            # meant for something else (a socks5:// one without socksio makes
            # httpx.Client() raise) cannot break it. The operator chooses
            # explicitly: ``proxy`` and ``ca_bundle`` (REQTELEMETRY_PROXY,
            # REQTELEMETRY_CA_BUNDLE).
            self._client = httpx.Client(
                timeout=self.config.timeout,
                # No cookie is kept: the protocol has none, and one set by
                # whatever answers at the endpoint's host (a CDN, a load
                # balancer, a captive portal) was sent back with every later
                # report, an identifier of this process; and the jar grew
                # without bound (500 cookies made every request's header too
                # large for an nginx in front, for the life of the process).
                cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
                trust_env=False,
                verify=_trust_store(self.config.ca_bundle),
                proxy=self.config.proxy,
                event_hooks={"request": [self._make_way], "response": [self._make_way]},
            )
        return self._client

    def _make_way(self, _: httpx.Request | httpx.Response) -> None:
        """Between building a request, sending it and reading the answer: a pause.

        Why: a POST costs httpx about 0.7 ms of plain Python on this GIL
        (building the request, driving the connection, reading the answer),
        and a request thread that wants the GIL meanwhile waits for each
        stretch of it. A real sleep at each hook cuts the POST in three. Not
        while the final report goes out at shutdown (unpaced).
        """
        # No pauses once shutting down or hurried, nor past the flush's share for them.
        pacing = self._pacing
        if pacing.paced and not self._stop.is_set() and not pacing.pauses_over():
            time.sleep(YIELD_PAUSE)

    def after_fork_in_child(self) -> None:
        """Forget the parent's client: its pooled connections are the parent's
        sockets (a request from here would interleave with the parent's on the
        same connection), and its locks may have been held by a parent thread.
        Not closed: closing would shut connections the parent still uses."""
        if self._owns_client:
            self._client = None
        self._stop = threading.Event()
        self._pacing = Pacing(hurry=self._stop)
        self._session = None  # the token names the parent's instance
        if self._owns_rng:
            # Else every worker of one master waits out the same backoffs, and
            # they come back to a recovered collector all at once.
            self._rng = random.Random()
        # The parent's sockets are shared with this process: cutting one at a
        # deadline here would kill the parent's request on it.
        self._sockets = weakref.WeakSet()
        self._sockets_lock = threading.Lock()

    def interrupt(self) -> None:
        """Cut short any backoff wait, and skip those to come (shutdown).

        Also stops a stamp being minted (by a periodic flush) in a child
        process: minting one can take longer than the whole shutdown budget,
        and the final flush waits for the flush under way to end.
        """
        self._stop.set()
        cancel = self._mint_cancel
        if cancel is not None:
            cancel.set()

    def close(self) -> None:
        self._stop.set()
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    # -- a hard deadline per request ------------------------------------------------

    def _trace(self, event: str, info: dict[str, object]) -> None:
        """httpcore's trace hook: note the socket of every connection opened,
        and when a request's body has all been written.

        Connections are opened by :meth:`_post`'s requests only (and reused by
        them), so these are all the sockets a request of ours can be blocked on.
        The body's end tells a failure the collector cannot have stored
        (no connection, a deadline or a reset before the body was all
        written) from one it may have: the exception does not (httpcore
        swallows a failed write to read an answer, and a deadline's cut is a
        timeout in whatever phase it comes).
        """
        if event.endswith(".send_request_body.started"):
            # A proxy tunnel's CONNECT is traced as ours too: nothing of the
            # report has left when its body is written.
            request = info.get("request")
            self._sending_tunnel_request = getattr(request, "method", None) == b"CONNECT"
            return
        if event.endswith(".send_request_body.complete"):
            if not self._sending_tunnel_request:
                self._body_sent = True
            return
        if not event.endswith((".connect_tcp.complete", ".start_tls.complete")):
            return
        stream = info.get("return_value")
        get_extra_info = getattr(stream, "get_extra_info", None)
        sock = get_extra_info("socket") if get_extra_info is not None else None
        if isinstance(sock, socket.socket):
            with self._sockets_lock:
                self._sockets.add(sock)
            past = self._past_deadline
            if past is not None and past.is_set():
                # Connected after the deadline's cut (a name lookup that took
                # longer than the request's whole budget): there was nothing
                # to cut then, and the cut comes once. Without this, only
                # httpx's per-step timeouts bounded the request, and a server
                # trickling its answer held a 6 s flush for hours.
                _shut_down(sock)

    def _cut_connections(self) -> None:
        """At a request's deadline (a timer thread): shut its connections down.

        ``shutdown`` wakes the flusher thread blocked in a read or write at
        once (httpx then raises a ReadError or similar). The plain socket's
        method is called even on a TLS socket: ``SSLSocket.shutdown`` would
        also drop its SSL object under the reading thread's feet.
        """
        with self._sockets_lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shut_down(sock)

    @contextlib.contextmanager
    def _deadline(self, seconds: float) -> Iterator[None]:
        """Cut the request under way off after ``seconds``, whatever it is doing.

        Why: httpx's timeouts bound each step (connect, each read, each write),
        not the request. A collector or proxy trickling its answer a byte at a
        time, each within the read timeout, kept a flush with a 2 s budget
        running for over a minute, and ``Flusher.close`` promises never to take
        more than its timeout. With a client given from outside (tests,
        in-process transports) there is no socket to cut, and nothing is done.
        """
        if green.threads_are_green():
            with _green_deadline(seconds):
                yield
            return
        fired = threading.Event()
        over = False
        # Held while cutting, and to mark the request over: a timer that fires
        # as the request ends must not cut the connection of the next one.
        guard = threading.Lock()

        def cut() -> None:
            with guard:
                if over:
                    return
                fired.set()
                self._cut_connections()

        timer = threading.Timer(max(0.0, seconds), cut)
        timer.daemon = True
        self._past_deadline = fired
        if not started(timer):
            # The request is bounded by httpx's timeout on each step, which is what is left.
            logger.debug("reqtelemetry: no thread for the request's deadline; going on without")
        try:
            yield
        except httpx.HTTPError as error:
            if fired.is_set():
                raise httpx.TimeoutException(
                    f"no complete answer within {seconds:.1f} s (cut off)"
                ) from error
            raise
        finally:
            timer.cancel()
            with guard:
                over = True
            self._past_deadline = None

    def _post(
        self, url: str, content: bytes, headers: dict[str, str], timeout: float
    ) -> httpx.Response:
        """One POST, never followed elsewhere, over by ``timeout`` seconds at the latest.

        The answer is read up to :data:`MAX_ANSWER_BYTES` as it arrives: a
        collector's answers are a few hundred bytes, and ``client.post`` would
        keep whatever comes (a captive portal, a wrong endpoint streaming a
        file) in the app's memory until the deadline: 1.8 GB in 5 s over
        loopback. Past that, the rest is not read and the answer counts as
        having no body: its status still says what became of the report (a
        stored report must not be sent twice), and a session answer without
        a token fails as any bad answer does. So does a compressed answer:
        none is asked for, and inflated it could hold gigabytes.
        """
        self._body_sent = False
        self._sending_tunnel_request = False
        token = _sending.set(True)
        try:
            return self._post_unlogged(url, content, headers, timeout)
        finally:
            _sending.reset(token)

    def _post_unlogged(
        self, url: str, content: bytes, headers: dict[str, str], timeout: float
    ) -> httpx.Response:
        """:meth:`_post`'s request, made while httpx's records of it are dropped."""
        with (
            self._deadline(timeout),
            self.client.stream(
                "POST",
                url,
                content=content,
                # Answers come as they are: a compressed one could inflate far
                # past the cap (1,827 bytes of gzip in gzip held 1 GiB).
                headers={**headers, "Accept-Encoding": "identity"},
                timeout=timeout,
                follow_redirects=False,
                extensions={"trace": self._trace},
            ) as streamed,
        ):
            raw = bytearray()
            for chunk in streamed.iter_raw():
                raw += chunk
                if len(raw) > MAX_ANSWER_BYTES:
                    logger.debug(
                        "reqtelemetry: the answer to %s is longer than %d bytes; not read",
                        redacted_url(url),
                        MAX_ANSWER_BYTES,
                    )
                    return _without_body(streamed)
        if streamed.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            # Compressed though asked not to be: not a collector's answer, and
            # not inflated here.
            return _without_body(streamed)
        return httpx.Response(
            streamed.status_code,
            headers=streamed.headers,
            content=bytes(raw),
            request=streamed.request,
        )

    # -- the session ---------------------------------------------------------------

    def _open_session(self, deployment_id: str, instance_id: str, timeout: float) -> Result:
        """Get (or reuse) a token; a non-DELIVERED result says why not."""
        session = self._session
        if session is not None and time.monotonic() < session.renew_at:
            return Result(Outcome.DELIVERED)
        self._session = None
        body = json.dumps({"deployment_id": deployment_id, "instance_id": instance_id})
        asked_at = self.wall_clock()
        try:
            response = self._post(
                self.session_url,
                body.encode(),
                {"User-Agent": self.headers["User-Agent"], "Content-Type": "application/json"},
                timeout,
            )
        except httpx.HTTPError as error:
            return Result(
                Outcome.FAILED, error=self._quoted(f"session: {type(error).__name__}: {error}")
            )
        status = response.status_code
        if status == 410:
            return Result(Outcome.GONE, status=status)
        if 300 <= status < 400:
            return _redirected(response, "the session request")
        if status != 200:
            # Also for other 4xx: a misconfigured endpoint must not cost the data.
            return Result(
                Outcome.FAILED,
                status=status,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                error=f"session: HTTP {status}: {self._answer(response)}",
            )
        self._learn_the_collectors_clock(response, asked_at)
        try:
            answer = response.json()
            token, bits = str(answer["token"]), int(answer["bits"])
            lifetime = float(answer["expires_at"]) - self.collector_time()
        except Exception as error:
            # OverflowError: ``"bits": 1e999`` parses as inf, and int(inf) raises;
            # RecursionError: a body nested past the interpreter's limit.
            return Result(Outcome.FAILED, status=status, error=f"session: bad answer ({error})")
        if not 0 <= bits <= self.config.max_proof_of_work_bits:
            # Not obeyed, and not asked again in this flush: the answer would be
            # the same. The data is kept; the next flush asks again.
            return Result(
                Outcome.FAILED,
                status=status,
                error=f"session: the collector asks for {bits} bits of work, more "
                f"than max_proof_of_work_bits={self.config.max_proof_of_work_bits}",
                end_flush=True,
            )
        renew_at = time.monotonic() + max(0.0, lifetime - TOKEN_MARGIN)
        self._session = Session(token=token, renew_at=renew_at, bits=bits)
        return Result(Outcome.DELIVERED)

    def collector_time(self) -> float:
        """Now, by the collector's clock as far as we know it (Unix seconds)."""
        return self.wall_clock() + self.clock_offset

    def _learn_the_collectors_clock(self, response: httpx.Response, asked_at: float) -> None:
        """Estimate the collector's clock from the ``Date`` of its session answer.

        Why: the collector refuses stamps dated more than 10 minutes before or
        2 minutes after its own clock (``stale_stamp``). A host whose clock is
        a few minutes off would lose every report. Stamps (and the token's
        lifetime) are therefore reckoned by the collector's clock. ``Date``
        has a resolution of one second: the collector's time is taken as its
        middle, against the middle of our request; differences within
        :data:`CLOCK_TOLERANCE` are that resolution, not a skew, and ignored.
        An answer without a usable ``Date`` keeps what was known.
        """
        value = response.headers.get("Date")
        if not value:
            return
        try:
            theirs = email.utils.parsedate_to_datetime(value).timestamp() + 0.5
        except (TypeError, ValueError, OverflowError):
            return
        ours = (asked_at + self.wall_clock()) / 2
        offset = theirs - ours
        if not math.isfinite(offset):
            return
        self.clock_offset = offset if abs(offset) > CLOCK_TOLERANCE else 0.0

    def _mint(self, resource: str, bits: int, timeout: float, idle: bool = True) -> str:
        now = self.collector_time()
        if bits < SUBPROCESS_MINT_BITS:
            return hashcash.mint(resource, bits, now)
        cancel = self._mint_cancel = threading.Event()
        if idle and self._stop.is_set():
            cancel.set()  # a periodic flush reaching this after interrupt(): do not start
        try:
            if green.threads_are_green():  # no child can be waited for here
                return hashcash.mint_in_slices(resource, bits, timeout, now=now, cancel=cancel)
            return hashcash.mint_in_subprocess(
                resource, bits, timeout=timeout, idle=idle, now=now, cancel=cancel
            )
        finally:
            self._mint_cancel = None

    # -- one report -------------------------------------------------------------------

    def _quoted(self, text: str) -> str:
        """``text`` (an error's, for logs) without the endpoint's or proxy's secrets."""
        return scrubbed(text, self._secrets)

    def _answer(self, response: httpx.Response) -> str:
        """The start of an answer's body, to quote in an error: without the
        endpoint's or proxy's secrets, which a proxy's or a gateway's error
        page may quote back (the request line it refused, query and all)."""
        try:
            text = response.text
        except Exception:  # a charset Python has no text codec for ("rot13", "base64")
            text = response.content.decode("utf-8", "replace")
        return self._quoted(text)[:200]

    def send_once(self, envelope: bytes, timeout: float | None = None) -> Result:
        """One POST of a ready envelope. Compression happens here, on the flusher thread.

        It says how long it waits (:data:`WAIT_HEADER`): the collector then
        stores the report only while this attempt can still hear so.
        """
        compressed = gzip_paced(envelope, GZIP_LEVEL, paced=self._pacing.paced)
        wait = self.config.timeout if timeout is None else timeout
        try:
            response = self._post(
                self.url,
                compressed,
                {**self.headers, WAIT_HEADER: wait_header(wait)},
                wait,
            )
        except httpx.HTTPError as error:
            return Result(
                Outcome.FAILED,
                error=self._quoted(f"{type(error).__name__}: {error}"),
                maybe_stored=self._body_sent,
            )
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if 200 <= status < 300:
            return Result(Outcome.DELIVERED, next_interval=_next_interval(response), status=status)
        if 300 <= status < 400:
            return _redirected(response, "a report")
        if status == 409:
            # This stamp was stored before: an earlier attempt of this very
            # report got through and only its answer was lost.
            return Result(Outcome.DELIVERED, status=status)
        if status == 410:
            return Result(Outcome.GONE, status=status)
        if status == 413:
            # Any 413, the collector's ``too_large`` or a proxy's own page: the
            # body, not its data, is too big. Not retried as it is (the answer
            # would be the same); the flusher sends the data again in smaller bodies.
            return Result(
                Outcome.TOO_LARGE,
                status=status,
                error=self._answer(response),
                refused_bytes=len(envelope),
            )
        reason = _refusal_reason(response)
        if status == 407:
            # A forward proxy wants credentials: the proxy's setting, not the
            # report, is at fault, and the data is kept for when it is fixed.
            return Result(
                Outcome.FAILED,
                status=status,
                error="the proxy asks for credentials (HTTP 407): check REQTELEMETRY_PROXY",
                end_flush=True,
            )
        if status == 401:
            # The token expired or the collector's secret changed: a new
            # session, then a new stamp, on the next attempt.
            self._session = None
            return Result(
                Outcome.FAILED,
                status=status,
                error=self._answer(response),
                renew=True,
                reason=reason,
            )
        if status == 400 and reason in RENEWING_REFUSALS:
            # The stamp, not the report, was refused: with the session's bits
            # and date as the collector sees them now, a new one will do.
            self._session = None
            return Result(
                Outcome.FAILED,
                status=status,
                error=self._answer(response),
                renew=True,
                reason=reason,
            )
        if retryable(status):
            return Result(
                Outcome.FAILED,
                retry_after=retry_after,
                status=status,
                next_interval=_next_interval(response),
                maybe_stored=may_have_been_stored(status, reason),
                reason=reason,
            )
        if status not in REPORT_REFUSALS:
            # Not the collector's refusal: dropped, the data of every report
            # was lost while the session, asked for once an hour, was reused.
            return Result(
                Outcome.FAILED,
                status=status,
                error=f"HTTP {status}: {self._answer(response)}",
                end_flush=True,
            )
        return Result(Outcome.REJECTED, status=status, error=self._answer(response))

    def deliver(
        self,
        body: bytes,
        budget: float,
        deployment_id: str,
        instance_id: str,
        *,
        pacing: Pacing = PACED,
        sent: Sent | None = None,
    ) -> Result:
        """Send with retries until delivered, refused for good, or ``budget`` seconds pass.

        ``pacing`` is the flush's (see :class:`~reqtelemetry.payload.Pacing`):
        paced, the envelope and the POST make way for request threads until
        the flush is hurried or its share of the budget for pauses is spent;
        unpaced (the final report at shutdown), they pause nowhere, and the
        stamp is minted at the app's own priority: there is a deadline, and
        no request of this process left to make way for. A pacing without
        its own ``hurry`` is hurried by :meth:`interrupt`.

        ``sent``: what ``body`` went with before, when the collector may hold
        it (a :class:`Sent` from an earlier result). It goes again as it is,
        token and stamp, whatever this process's session is now. The result's
        ``sent`` says what the body last went with, and whether the collector
        may hold it.
        """
        delivery = _Delivery(sent if sent is not None and sent.maybe_stored else None)
        if pacing.hurry is None:
            pacing = replace(pacing, hurry=self._stop)
        self._pacing = pacing
        result = self._deliver(body, budget, deployment_id, instance_id, delivery)
        return replace(result, sent=delivery.sent)

    def _deliver(
        self,
        body: bytes,
        budget: float,
        deployment_id: str,
        instance_id: str,
        delivery: _Delivery,
    ) -> Result:
        deadline = time.monotonic() + budget
        pacing = self._pacing
        result = Result(Outcome.FAILED, error="no attempt made")
        payload_text = body.decode("utf-8")
        renewed = False  # a session dropped on a 401 or a refused stamp is renewed once at once
        attempt = 0
        while attempt < self.max_attempts:
            # Stopping (interrupt()) only cuts the waits below short: a session
            # renewal, which needs none, still goes ahead, so that the final
            # report at shutdown survives a collector restarted with a new secret.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            timeout = min(self.config.timeout, remaining)
            held = delivery.sent
            if held is not None and held.maybe_stored:
                # Its stamp may be stored: it goes as it went, token and all,
                # until the collector says what became of it.
                session_ready = True
            else:
                result = self._open_session(deployment_id, instance_id, timeout)
                session_ready = result.outcome is Outcome.DELIVERED
            if session_ready:
                if held is None or not (held.maybe_stored or self._is_current(held)):
                    session = self._session
                    assert session is not None
                    try:
                        resource = hashcash.payload_resource(session.token, body)
                        stamp = self._mint(
                            resource,
                            session.bits,
                            max(0.0, deadline - time.monotonic()),
                            idle=pacing.paced,  # the unpaced final report has a deadline to keep
                        )
                    except Exception as error:  # timed out, or the child failed
                        return Result(Outcome.FAILED, error=f"minting: {error}")
                    held = delivery.sent = Sent(session.token, stamp)
                envelope = build_envelope(held.token, held.stamp, payload_text, pacing=pacing)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # Minting and encoding took what was left. Not "delivered",
                    # which the open session's result said until here.
                    result = Result(Outcome.FAILED, error="no time left to send the report")
                    break
                result = self.send_once(envelope, timeout=min(self.config.timeout, remaining))
                if result.maybe_stored:
                    held.maybe_stored = True
                if result.renew and (not held.maybe_stored or result.reason in LOOKED_UP_REASONS):
                    # Not stored: the collector refused the stamp (or its
                    # token) after looking it up. A new one goes next. A
                    # proxy's 401 says nothing of it: the stamp goes again.
                    delivery.sent = None
            if result.outcome is not Outcome.FAILED or result.end_flush:
                return result
            if result.renew and not renewed:
                renewed = True
                continue  # a fresh session and stamp right away, no backoff, as an extra attempt
            if result.renew and result.status != 401:
                # A fresh session's stamp refused again: not curable now. Kept.
                return replace(result, end_flush=True)
            if result.retry_after is not None:
                # The server said when; a wait past our budget ends this flush,
                # and the flusher keeps the data and waits at least that long.
                delay = result.retry_after
            else:
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap, self._rng)
            if self._stop.is_set():
                break  # shutting down: no waiting, the data is kept
            if attempt + 1 >= self.max_attempts or time.monotonic() + delay > deadline:
                break
            if self._stop.wait(waitable(delay)):
                break
            attempt += 1
        return result

    def _is_current(self, sent: Sent) -> bool:
        """Whether ``sent``'s token is this process's session's (its stamp can be reused)."""
        session = self._session
        return session is not None and session.token == sent.token


@dataclass
class _Delivery:
    """What one :meth:`Transport.deliver` call's attempts share: the stamp."""

    sent: Sent | None


def gzip_paced(data: bytes, level: int, *, paced: bool = True) -> bytes:
    """``data`` gzipped, offering the CPU to other threads after every :data:`GZIP_SLICE` bytes.

    Why: deflating a full batch takes about 2 ms of CPU per part. zlib releases
    the GIL meanwhile, but not the core: a request thread that the kernel
    wakes on the same core can wait behind it for milliseconds, the flusher's
    nice 19 notwithstanding, until an idle core takes it over. Measured with a
    thread sleeping 0.2 ms in a loop beside back-to-back flushes: its waits of
    over 0.8 ms, nearly all of it time spent runnable on a run queue
    (``/proc/self/task/<tid>/schedstat``) while gzip ran, fell from about 60
    to 10 in 20 s with a yield after every 32 KiB. ``sched_yield`` costs a
    system call when nobody waits, and unlike a sleep it does not slow the
    flush. ``paced=False`` (the final report at shutdown) compresses in one go.
    Both ways the result is one gzip member with a zero time stamp.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
    if not paced:  # one call; ``zlib.compress`` takes no ``wbits`` before Python 3.11
        return compressor.compress(data) + compressor.flush()
    view = memoryview(data)
    parts = []
    for start in range(0, len(view), GZIP_SLICE):
        parts.append(compressor.compress(view[start : start + GZIP_SLICE]))
        _offer_the_cpu()
    parts.append(compressor.flush())
    return b"".join(parts)


def _offer_the_cpu() -> None:
    """Let a thread waiting for this core run now (the GIL is released meanwhile)."""
    if _sched_yield is not None:
        _sched_yield()
    else:  # no sched_yield on this platform: a zero sleep also lets the OS switch
        time.sleep(0)


_sched_yield = getattr(os, "sched_yield", None)


def build_envelope(
    token: str,
    stamp: str,
    payload_text: str,
    *,
    pacing: Pacing = PACED,
) -> bytes:
    """``{"token", "stamp", "payload"}`` as JSON bytes, the payload escaped piecewise.

    One ``json.dumps`` of a 256 KiB string holds the GIL for milliseconds;
    escaping it in slices, letting request threads run between them, does not
    (paced as ``pacing`` says: not at all for the final flush at shutdown).
    """
    pacer = Pacer(pacing)
    escaped = []
    for start in range(0, len(payload_text), ENVELOPE_SLICE):
        escaped.append(json.dumps(payload_text[start : start + ENVELOPE_SLICE])[1:-1])
        pacer.tick()
    text = (
        f'{{"token":{json.dumps(token)},"stamp":{json.dumps(stamp)},'
        f'"payload":"{"".join(escaped)}"}}'
    )
    return text.encode("ascii")


def _trust_store(ca_bundle: str | None) -> ssl.SSLContext | bool:
    """The TLS verification for ``ca_bundle`` (True: httpx's default, certifi)."""
    if ca_bundle is None:
        return True
    if os.path.isdir(ca_bundle):
        return ssl.create_default_context(capath=ca_bundle)
    return ssl.create_default_context(cafile=ca_bundle)


def _refusal_reason(response: httpx.Response) -> str | None:
    """The ``error`` of a refusal's ``{"error": reason, "detail": ...}`` body.

    Never raises: an answer is read after the report was sent, and a body
    that fails to parse in any way (nested past the recursion limit, in a
    charset Python cannot decode) must not undo a delivery, whose data then
    went back into the recorder and was sent, and stored, again.
    """
    try:
        reason = response.json().get("error")
    except Exception:
        return None
    return reason if isinstance(reason, str) else None


def _next_interval(response: httpx.Response) -> float | None:
    """The ``next_interval`` of an answer's body; never raises (see :func:`_refusal_reason`)."""
    try:
        value = response.json().get("next_interval")
    except Exception:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


@contextlib.contextmanager
def _green_deadline(seconds: float) -> Iterator[None]:
    """``Transport._deadline`` under gevent: a ``gevent.Timeout`` raised in the
    request at its deadline (a timer thread would be a greenlet, whose end
    gevent's ``threading`` failed on; see :mod:`.green`)."""
    from gevent import Timeout

    deadline = Timeout(max(0.0, seconds))
    deadline.start()
    try:
        yield
    except Timeout as error:
        if error is not deadline:
            raise
        raise httpx.TimeoutException(
            f"no complete answer within {seconds:.1f} s (cut off)"
        ) from None
    finally:
        deadline.close()
