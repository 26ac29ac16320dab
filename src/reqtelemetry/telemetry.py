"""The core object an app creates once: configuration, recorder, anonymizer.

Integrations measure a request and call :meth:`Telemetry.record`; they know
their framework and nothing about the wire. Everything here that runs per
request is kept to a few attribute reads and one locked dict update.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import re
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from numbers import Integral
from typing import Any

from . import green, prefork
from .anonymize import Anonymizer
from .config import Config, OptionsBesideEndpoint, Unpack, redacted_url
from .metrics import AppMetrics, check_count, check_gauge
from .payload import MAX_LATENCY_SECONDS
from .recorder import MAX_RECORD_INTEGER, Recorder, has_no_body
from .traits import SystemTraits, detect_test_runner

logger = logging.getLogger("reqtelemetry")

#: Methods kept as they are; anything else is recorded as ``_OTHER`` so that a
#: client cannot invent keys (the OpenTelemetry convention).
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
OTHER_METHOD = "_OTHER"
#: The one key that requests no route matched share (when grouping is on).
UNMATCHED_ROUTE = "<unmatched>"
#: Stands for the language prefix of Django's ``i18n_patterns`` in a route
#: template (``/<language-code>/about/<int:pk>/``), whatever the language,
#: prefixed or not (``prefix_default_language=False``). A hyphen cannot be in
#: a ``path()`` parameter's name (Django refuses the route), so no real route
#: looks like it.
LANGUAGE_PREFIX = "<language-code>"
#: The first segment of such a template, as :meth:`Telemetry.is_excluded_route` looks for it.
LANGUAGE_SEGMENT = f"/{LANGUAGE_PREFIX}/"
#: A character a regex escapes (``\.``), as :meth:`Telemetry.is_excluded_route` reads it.
_REGEX_ESCAPE = re.compile(r"\\(.)")

#: Raw paths whose anonymized form is remembered (per instance, in memory only).
ANONYMIZED_CACHE_SIZE = 4096
#: Paths (with their query) longer than this are hashed each time, not cached:
#: 4096 entries of 8 KB paths would hold 64 MiB, far past the memory bound.
ANONYMIZED_CACHE_MAX_LENGTH = 256
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "0.0.0.0"})
#: Status recorded when the client went away before the response completed
#: (nginx's convention).
CLIENT_CLOSED_STATUS = 499
#: Where a generic middleware (``ASGIMiddleware``, ``WSGIMiddleware``) leaves
#: its :class:`Mark` in a request's ASGI scope or WSGI environ, so that no
#: request counts twice where it meets the same telemetry again: a generic
#: middleware nested inside (around an app mounted in another, or both added
#: and wrapped around an app) lets it pass; a framework's integration (Flask's
#: ``init_app``, Django's middleware), which knows the route better, takes it
#: over once it has served it, and the middleware that marked it leaves it to
#: that one.
MEASURED_KEY = "reqtelemetry.measured_by"
#: Digits a byte count can have and still fit the payload's 64-bit integers.
_MAX_LENGTH_DIGITS = 18


class Mark:
    """What a generic middleware leaves at :data:`MEASURED_KEY`: its object
    for the request, with the ``telemetry`` that measures it and whether a
    framework's integration has ``taken_over`` the request.

    Copied with the environ or scope (a middleware's ``dict(environ)``,
    hypercorn's ``ProxyFixMiddleware``'s ``deepcopy``), a mark stays itself:
    an integration behind the copy takes the request over from the very
    middleware that marked it, and nothing deep-copies a :class:`Telemetry`,
    whose locks cannot be (every request of such an app was a 500).
    """

    __slots__ = ()

    telemetry: Telemetry
    taken_over: bool
    #: Whether the request is one the operator excluded (see :class:`ExcludedMark`).
    excluded = False

    def __copy__(self) -> Mark:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Mark:
        return self


class ExcludedMark(Mark):
    """What a middleware leaves at :data:`MEASURED_KEY` for a request the
    operator excluded: every middleware and integration of its telemetry
    inside lets the request pass, unmeasured.

    Why: one inside a mount compares the path without the mount's prefix
    (``/users/7`` of ``/admin/users/7``), which the exclusion does not name,
    and measured what the operator had left out. One per middleware, made
    once; nothing of a request is kept in it.
    """

    __slots__ = ("telemetry",)

    excluded = True
    #: Nobody takes an excluded request over: nobody measures it.
    taken_over = True

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry


def marked_by(mark: Any, telemetry: Telemetry) -> bool:
    """Whether ``mark`` (whatever :data:`MEASURED_KEY` holds) is the
    :class:`Mark` of a middleware of ``telemetry``."""
    return isinstance(mark, Mark) and mark.telemetry is telemetry


def take_over(mark: Any, telemetry: Telemetry) -> None:
    """Tell the middleware that left ``mark`` (a :class:`Mark`, or whatever
    :data:`MEASURED_KEY` holds, None if nothing) that ``telemetry``'s
    framework integration has measured its request, if it is that
    telemetry's: it then records nothing of it."""
    if marked_by(mark, telemetry):
        mark.taken_over = True


def parse_content_length(value: object) -> int:
    """A ``Content-Length`` value as bytes; 0 when absent or not a plain number.

    Why not ``str.isdigit`` and ``int``: ``isdigit`` accepts "²", which ``int``
    refuses, and ``int`` refuses over 4,300 digits; a request's headers are the
    client's to write, and a bad one must cost its count, not the record.
    """
    if type(value) is not str:
        value = str(value) if isinstance(value, int) else ""
    if value.isascii() and value.isdigit() and len(value) <= _MAX_LENGTH_DIGITS:
        return int(value)
    return 0


def _with_wsgi_forms(entries: Iterable[str]) -> list[str]:
    """``entries``, each followed, where it has a character outside ASCII, by
    the form a WSGI server gives such a path in ``PATH_INFO``: its UTF-8
    bytes decoded as latin-1 (PEP 3333).

    Why: the WSGI integrations compare ``PATH_INFO``, in which ``/café/``
    reads ``/cafÃ©/``, and an exclusion written as the path reads excluded
    nothing there, while ASGI's decoded ``scope["path"]`` and Django's
    ``path_info`` matched it. Made once, here: nothing more per request.
    ``surrogateescape``: an entry read from the environment or the command
    line with a byte that is not UTF-8 holds it as a lone surrogate (PEP
    383), and strict UTF-8 raised, stopping the app at start; escaped back,
    it is that byte, as ``PATH_INFO`` holds it. A surrogate that stands for
    no byte is in no path: such an entry gets no second form.
    """
    forms = []
    for entry in entries:
        forms.append(entry)
        try:
            wsgi_form = entry.encode("utf-8", "surrogateescape").decode("latin-1")
        except UnicodeEncodeError:
            continue
        if wsgi_form != entry:
            forms.append(wsgi_form)
    return forms


class AnonymizedRoute(str):
    """A key made of an anonymized path (:meth:`Telemetry.route_for_unrouted`):
    text as any key, told apart from a route template by its type alone."""

    __slots__ = ()


class Telemetry:
    """Usage telemetry for one service instance.

    ``Telemetry(endpoint=..., app_name=..., app_version=...)`` takes any
    :class:`~reqtelemetry.config.Config` field as a keyword; or pass a ready
    ``config=``: built with ``Config(...)``, this process's environment and
    command line apply to it as to keyword options; made by
    :meth:`Config.resolve`, only their opt-out does (it was resolved against
    the environment its caller chose). Opting out is resolved here, once: an
    opted-out instance records nothing, and the middlewares then only call
    the app they wrap.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        config: Config | None = None,
        **options: Unpack[OptionsBesideEndpoint],
    ) -> None:
        if config is None:
            if endpoint is not None:
                config = Config.resolve(endpoint=endpoint, **options)
            else:
                config = Config.resolve(**options)
        elif endpoint is not None or options:
            raise TypeError("pass either config= or keyword options, not both")
        elif not config.environment_applied:
            # Built by hand (``Config(...)``): it has seen no environment, and
            # this process's applies to it as to keyword options.
            config = config.with_environment()
        else:
            # Resolved against an environment of the caller's choosing: this
            # process's opt-out applies all the same.
            config = config.with_opt_out_applied()
            config.validate()
        self.config = config
        self.enabled = config.enabled
        self.exclude_paths = frozenset(_with_wsgi_forms(config.exclude_paths))
        self.exclude_prefixes = tuple(_with_wsgi_forms(config.exclude_prefixes))
        #: The prefixes as a template under ``i18n_patterns`` is compared with
        #: them: without its language, and, once the app's languages are known
        #: (:meth:`note_language_codes`), without theirs (see :meth:`is_excluded_route`).
        self._language_free_prefixes = self.exclude_prefixes
        #: The app's language codes, where a prefix names one (see
        #: :meth:`note_language_codes`): a path in any of them, or in none, is
        #: then compared with the prefixes written with a language, without it.
        self._prefix_languages: frozenset[str] = frozenset()
        self._prefixes_without_language: tuple[str, ...] = ()
        #: What integrations call per request: ``is_excluded``, or None when
        #: nothing is excluded, so the common case costs one comparison.
        self.excluded: Callable[[str], bool] | None = (
            self.is_excluded if self.exclude_paths or self.exclude_prefixes else None
        )
        #: The same question of a recorded route template (see :meth:`is_excluded_route`).
        self.excluded_route: Callable[[str], bool] | None = (
            self.is_excluded_route if self.excluded is not None else None
        )
        self.recorder = Recorder(max_keys=config.max_keys, excluded_route=self.excluded_route)
        self.anonymizer = self._new_anonymizer()
        self.internal_errors = 0
        self._internal_error_logged = False
        self._anonymized: dict[tuple[str, str], str] = {}
        self.metrics = AppMetrics(max_names=config.max_metrics)
        self.instance_id = str(uuid.uuid4())
        self.started_at = time.time()
        #: The process this instance is, to tell a worker uWSGI forked
        #: without Python's fork hooks (see :mod:`.prefork`).
        self._pid = os.getpid()
        #: Whether the flusher waits for this worker to be forked (uWSGI) or
        #: to serve (gevent to come), instead of starting with the instance.
        self._in_each_worker = False
        self._otel: Any = None
        self.flusher: Any = None
        if self.enabled:
            self.traits = SystemTraits(config, started_at=self.started_at)
            if config.otel:
                from .otel import OTelInstruments

                self._otel = OTelInstruments()
        #: For the middlewares' hot path: the recorder's queue when recording
        #: is only queueing (see :attr:`Recorder.queue`), None when every
        #: request must go through :meth:`record` (OpenTelemetry instruments too).
        self.queue: deque[tuple[str, str, int, float, int, int]] | None = None
        if self._otel is None:
            # Not ``self.record = self.recorder.record``: only the app's own
            # calls come through :meth:`record` (the integrations append to
            # the queue), and those must have their numbers fitted first.
            self.queue = self.recorder.queue
        self.sending, why_not = self._decide_sending()
        _announce(self, why_not)
        if self.sending:
            self._start_flusher()

    def _new_anonymizer(self) -> Anonymizer:
        """An anonymizer with a fresh random salt (one per instance, never sent)."""
        return Anonymizer(
            allowed_segments=self.config.allowed_path_segments,
            allowed_query_keys=self.config.allowed_query_keys,
        )

    def _decide_sending(self) -> tuple[bool, str | None]:
        config = self.config
        if not self.enabled:
            return False, config.opt_out_reason
        if config.debug:
            return True, None
        if not config.endpoint:
            return False, "no endpoint is configured"
        if not config.send_in_tests:
            test_run = detect_test_runner()
            if test_run is not None:
                return False, (
                    f"running under a test runner ({test_run}); "
                    "REQTELEMETRY_SEND_IN_TESTS=1 sends anyway"
                )
        return True, None

    def _start_flusher(self) -> None:
        from .flusher import Flusher
        from .transport import Transport

        config = self.config
        transport = None
        if config.endpoint and not config.debug:
            transport = Transport(
                config, backoff_base=config.retry_base_delay, max_attempts=config.max_attempts
            )
        self.flusher = Flusher(self, transport)
        _import_before_the_thread_starts(self, transport)
        _live.add(self)
        prefork.call_at_worker_exit(close_all_at_exit)
        if prefork.workers_fork_later():
            # A thread running when uWSGI forks hangs every worker: see .prefork.
            self._in_each_worker = True
            prefork.call_in_each_worker(_start_in_uwsgi_worker)
            return
        self._start_thread()

    def _start_thread(self) -> None:
        if self.flusher is None:
            return
        self.flusher.start()
        _closing_at_exit[self] = None  # once, however many times started
        self._close_as_this_multiprocessing_child_ends()

    def _close_as_this_multiprocessing_child_ends(self) -> None:
        """Where this instance was made in a child of ``multiprocessing``, have
        its final report sent as the child ends.

        Why: such a child ends with ``os._exit``, which runs no ``atexit``
        function: granian's WSGI workers, which load the app themselves, never
        sent their final report, and what they had served since the last one
        was lost. The child runs ``multiprocessing``'s own finalizers instead.
        Only for an instance made there: the children that merely inherited
        one (a ``Pool``'s workers, a ``ProcessPoolExecutor``'s) end as they
        did, without waiting for a report on their way out.

        A child started with ``forkserver`` imports the app while
        ``multiprocessing`` prepares it (the parent's main module, the
        pickled target's module): it does not know its parent yet, and
        ``multiprocessing`` clears its finalizers before the child runs. It
        says so by the process object's ``_inheriting`` flag (which
        ``multiprocessing`` itself reads for the same question, in
        ``spawn._check_not_importing_main``), and the instance is put in
        :data:`_closing_as_child_ends` by the hook ``multiprocessing`` calls
        once the child runs. Missed, a ``forkserver`` child, which ends with
        ``os._exit``, lost its last report. (A ``spawn`` child runs no such
        hook, and needs none: it ends through ``sys.exit``, so ``atexit``.)

        All the instances made in the child are closed by one finalizer,
        within one ``shutdown_timeout``, as :func:`close_all_at_exit` closes
        a process's.
        """
        util = sys.modules.get("multiprocessing.util")
        if util is None or self in _closing_as_child_ends:
            return
        import multiprocessing

        if multiprocessing.parent_process() is not None:
            _closing_as_child_ends[self] = os.getpid()
            _finalize_this_child(util)
        elif getattr(multiprocessing.current_process(), "_inheriting", False):
            util.register_after_fork(self, functools.partial(_close_as_child_made_in, os.getpid()))

    def _start_in_worker(self, serving: bool) -> None:
        """In a worker: become an instance of its own, if the fork did not make
        this one (uWSGI's runs no fork hooks), and start the flusher, once.

        Before the worker serves (``serving`` False: uWSGI's post-fork hook),
        not while gevent is yet to patch threading (uWSGI's late
        ``--gevent-monkey-patch``): its first request starts it instead.
        """
        if not self._in_each_worker or self.flusher is None or prefork.not_a_worker():
            return
        if self._pid != os.getpid():
            self._after_fork_in_child()
        if not serving and green.green_threads_coming():
            green.when_patched(_start_when_patched)
            return
        if not self.flusher.running:
            self._start_thread()

    def _after_fork_in_child(self) -> None:
        """A forked worker is a new instance: own id, empty aggregates, own thread."""
        self.instance_id = str(uuid.uuid4())
        self.started_at = time.time()
        self._pid = os.getpid()
        # A salt of its own too: shared, the same identifier would hash alike
        # in every worker, and the collector could match it across instances.
        self.anonymizer = self._new_anonymizer()
        self._anonymized = {}
        self.recorder.reset()
        self.metrics.reset()
        self.internal_errors = 0
        if self.enabled:
            self.traits.after_fork(self.started_at)
        if self.flusher is not None:
            if green.green_threads_coming():
                # gevent patches threading in this worker after the fork (gunicorn
                # -k gevent with --preload): a real thread started now runs beside
                # its hub, and every flush failed. Started as a greenlet once
                # gevent has patched, or at the worker's first request.
                self._in_each_worker = True
                self.flusher.after_fork_in_child(restart=False)
                green.when_patched(_start_when_patched)
            else:
                self.flusher.after_fork_in_child()

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
        scheme: str = "http",
    ) -> None:
        """Add one measured request (the route must already be identifier-free).

        Numbers the wire format cannot carry are fitted to it first (see
        :func:`fitted_measurement`): this method is open to any caller, and one
        negative, infinite or NaN value got every report refused or unbuilt.
        So are numbers of another type: a byte count that is a float (even
        ``2048.0``) got the whole report refused, and a ``Decimal`` duration
        left a record no report could be built from, for good. A method or
        route that is not text is a TypeError here: accepted, it stopped every
        report (``getattr(request.url_rule, "rule", None)`` gave a None route).
        A ``str`` of a subclass is text: ``http.HTTPMethod.GET`` is sent as ``GET``.
        """
        if not isinstance(method, str) or not isinstance(route, str):
            raise TypeError(f"method and route must be str, got {method!r} and {route!r}")
        if not (
            type(duration) is float
            and type(request_bytes) is int
            and type(response_bytes) is int
            and 0.0 <= duration <= MAX_LATENCY_SECONDS
            and 0 <= request_bytes <= MAX_RECORD_INTEGER
            and 0 <= response_bytes <= MAX_RECORD_INTEGER
        ):
            duration, request_bytes, response_bytes = fitted_measurement(
                duration, request_bytes, response_bytes
            )
        self.recorder.record(method, route, status, duration, request_bytes, response_bytes)
        if self._otel is not None and not (
            self.excluded_route is not None and self.excluded_route(route)
        ):
            if has_no_body(status):  # as the report writes them (see there)
                response_bytes = 0
            self._otel.record(
                method, route, status, duration, request_bytes, response_bytes, scheme
            )

    def is_excluded(self, path: str) -> bool:
        """True for paths the operator asked never to measure (health checks, ...).

        A prefix written with one of the app's languages (``/en/secret/``)
        covers the same pages in every language and without one: the 404s
        under ``/fr/secret/`` were recorded (hashed, with ``group_unmatched``
        off), though no template told them.
        """
        if path in self.exclude_paths or (
            bool(self.exclude_prefixes) and path.startswith(self.exclude_prefixes)
        ):
            return True
        languages = self._prefix_languages
        if not languages:
            return False
        end = path.find("/", 1)
        if end > 0 and path[1:end].lower() in languages:
            path = path[end:]
        return path.startswith(self._prefixes_without_language)

    def is_excluded_route(self, route: str) -> bool:
        """True for a route template under the paths the operator excluded.

        Asked of the template a request was recorded under, besides the
        request's own path (:meth:`is_excluded`), since a path the exclusion
        does not cover can lead to it: ``/SecretAdmin``, which the router
        redirects to ``/SecretAdmin/``, is recorded under that template. A
        template under Django's ``i18n_patterns`` starts with
        ``/<language-code>``, which no exclusion names: it is asked of the
        prefixes without it too (not of ``exclude_paths``: ``/`` would then
        take every language's home page), and a prefix written as a browser
        shows it, with one of the app's languages (``/en/secret/``), is asked
        without its language, so that it also covers the redirect from
        ``/secret/`` into it and the same pages in every other language. A
        key made of an anonymized path is not asked: its raw path was, as the
        request came in.
        """
        if type(route) is AnonymizedRoute:
            # Its raw path was compared as the request came in; its hashes
            # are hex, and would match a prefix such as "/cafe". Told by where
            # it came from, not by its look: a template can hold 64 hex
            # digits too (a secret URL made with ``secrets.token_hex(32)``).
            return False
        if self._is_excluded_template(route):
            return True
        # A ``re_path``'s template is its regex, whose literal text is escaped
        # (``re.escape`` writes ``/canary\-7f3a9c\.admin/``): compared as the
        # path it matches too. Under ``i18n_patterns`` nothing else tells such
        # a page: its path starts with a language no prefix names, and the
        # hidden admin's secret URL was sent in its key.
        return "\\" in route and self._is_excluded_template(_REGEX_ESCAPE.sub(r"\1", route))

    def _is_excluded_template(self, route: str) -> bool:
        """:meth:`is_excluded_route` of a template as it reads."""
        if self.is_excluded(route):
            return True
        return (
            bool(self.exclude_prefixes)
            and route.startswith(LANGUAGE_SEGMENT)
            and route[len(LANGUAGE_SEGMENT) - 1 :].startswith(self._language_free_prefixes)
        )

    def note_language_codes(self, codes: Iterable[str]) -> None:
        """The language codes of the app's URL prefixes (Django's
        ``settings.LANGUAGES``), so that an exclusion written with one of them
        (``/en/secret/``) also covers that page in every language.

        Only these codes, never any short first segment: ``/api/`` read as a
        language left ``/``, which excluded every localized page.
        """
        languages = {code.lower() for code in codes}
        without_language = []
        for prefix in self.exclude_prefixes:
            _, first, rest = prefix.split("/", 2) if prefix.count("/") >= 2 else ("", "", "")
            if first.lower() in languages and rest:
                without_language.append("/" + rest)
        self._language_free_prefixes = self.exclude_prefixes + tuple(without_language)
        self._prefix_languages = frozenset(languages) if without_language else frozenset()
        self._prefixes_without_language = tuple(without_language)

    def route_for_unrouted(self, path: str, query: str = "", matched: bool = False) -> str:
        """The key for a request without a route template.

        ``matched=False`` means a router saw the request and found nothing (a
        404 from a scanner): those share one key when ``group_unmatched`` is on.
        """
        if not matched and self.config.group_unmatched:
            return UNMATCHED_ROUTE
        if not (self.config.record_query and query):
            query = ""
        # Hashing every segment with SHA-256 costs microseconds per request; a
        # route-less app sees the same paths again and again. Bounded: the
        # cache is emptied when full (its keys are raw paths, never sent), and
        # long paths are not kept at all, so it holds at most ~4096 * 256
        # bytes of them. Nor are paths outside ASCII: CPython stores a string
        # at up to 4 bytes a character (a path of emoji, percent-encoded and
        # decoded by the server), with a larger header, and 4096 such paths
        # took the cache 3 MiB past its bound. They are hashed each time.
        if len(path) + len(query) > ANONYMIZED_CACHE_MAX_LENGTH:
            return self._anonymized_route(path, query)
        cache = self._anonymized
        found = cache.get((path, query))
        if found is None:
            found = self._anonymized_route(path, query)
            if path.isascii() and query.isascii():
                if len(cache) >= ANONYMIZED_CACHE_SIZE:
                    cache.clear()
                cache[(path, query)] = found
        return found

    def _anonymized_route(self, path: str, query: str) -> AnonymizedRoute:
        anonymizer = self.anonymizer
        return AnonymizedRoute(anonymizer.url(path, query) if query else anonymizer.path(path))

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

    # -- app-defined metrics ----------------------------------------------------

    def count(self, name: str, value: float = 1) -> None:
        """Add to the usage counter ``name`` (``"feature.export_pdf"``); reported as a delta.

        A bad name or increment raises ``ValueError`` whether or not telemetry
        is on, so that it shows where the app is developed, not first in production.
        """
        if self.enabled:
            self.metrics.count(name, value)
        else:
            check_count(name, value)

    def gauge(self, name: str, callback: Callable[[], float]) -> None:
        """Report ``callback()`` as the gauge ``name`` at every flush (checked as :meth:`count`)."""
        if self.enabled:
            self.metrics.gauge(name, callback)
        else:
            check_gauge(name, callback)

    def note_development(self, reason: str) -> None:
        """Integrations call this when the app runs in debug mode or on localhost."""
        if self.enabled:
            self.traits.note_development(reason)

    def note_framework(self, name: str) -> None:
        """Integrations say which framework they serve (reported as a trait)."""
        if self.enabled:
            self.traits.note_framework(name)

    def note_first_request(self, host: str | None) -> None:
        """Called once per integration: a localhost ``Host`` marks a development run,
        and the startup report goes (see :data:`.flusher.STARTUP_GRACE`).

        Also where a uWSGI worker whose post-fork hook was replaced (by code
        that does not chain it) starts its flusher after all (see :mod:`.prefork`).
        """
        if self._in_each_worker:
            _start_in_workers(serving=True)
        flusher = self.flusher
        if flusher is not None:
            flusher.note_use()
        if self.enabled and host:
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if name.lower() in _LOCAL_HOSTS:
                self.traits.note_development("localhost Host header")

    # -- reading and sending ---------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """The current aggregates as plain JSON-ready records, without resetting them."""
        return self.recorder.snapshot()

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is recorded now; returns when done, True when delivered.

        False when nothing can be sent (opted out, no endpoint, under a test
        runner, stopped by the collector) or delivery failed; then the data is
        kept for the next report.
        """
        if self.flusher is None:
            return False
        return bool(self.flusher.flush(budget=timeout))

    def close(self, timeout: float | None = None) -> bool:
        """Flush a last time (bounded by ``shutdown_timeout``) and stop the thread."""
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float))
        ):
            # Checked before the flusher is let go of: a timeout read as text
            # raised TypeError after it, and the final report was lost, neither
            # this call nor a later one nor the exit's sending it.
            raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
        flusher, self.flusher = self.flusher, None
        if flusher is None:
            return False
        _closing_at_exit.pop(self, None)
        _closing_as_child_ends.pop(self, None)
        _live.discard(self)
        return bool(flusher.close(timeout))


def fitted_measurement(
    duration: float, request_bytes: int, response_bytes: int
) -> tuple[float, int, int]:
    """A request's numbers within what a report carries: a ``float`` duration
    from 0 to :data:`MAX_LATENCY_SECONDS` (NaN as 0), ``int`` byte counts from
    0 to :data:`MAX_RECORD_INTEGER` (NaN as 0, a fraction cut off).

    Why: the collector refuses a whole report for one negative or oversized
    number (``422``, the good records with it), and for a byte count that is
    not written as an integer (``2048.0``); an infinite or NaN duration could
    not even be written, so that flush failed, and for an infinite one every
    flush after it, the record being merged back each time. A number of
    another type (a ``Decimal``, a ``Fraction``) is taken as what ``float()``
    makes of it: a ``Decimal`` duration broke the aggregation halfway, and
    left a record with an infinite minimum that no report could carry.
    Text stays a ``TypeError``, where the caller made it.
    """
    duration = _as_float(duration)
    if duration != duration:  # NaN
        duration = 0.0
    duration = min(max(duration, 0.0), MAX_LATENCY_SECONDS)
    return duration, _fitted_bytes(request_bytes), _fitted_bytes(response_bytes)


def _as_float(value: object) -> float:
    """``value`` as a float (past a float's range, infinite); TypeError for text."""
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"a measurement must be a number, got {type(value).__name__}")
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:  # an int or a Fraction past a float's range
        return math.inf if value > 0 else -math.inf  # type: ignore[operator]


def _fitted_bytes(value: object) -> int:
    """A byte count as an ``int`` from 0 to :data:`MAX_RECORD_INTEGER`."""
    if isinstance(value, Integral):
        number: float = int(value)
    else:
        number = _as_float(value)
        if number != number:  # NaN
            return 0
    return int(min(max(number, 0), MAX_RECORD_INTEGER))


def _close_as_child_made_in(pid: int, telemetry: Telemetry) -> None:
    """``multiprocessing``'s hook as a child it prepared starts to run: the
    finalizer of an instance made while it was prepared. Not in a process
    forked from that child later, which inherits the hook with the instance."""
    if os.getpid() == pid:
        telemetry._close_as_this_multiprocessing_child_ends()


def _announce(telemetry: Telemetry, why_not: str | None) -> None:
    """The one start-up line that tells an operator what happens and how to stop it.

    It goes to the ``reqtelemetry`` logger at INFO. Under uvicorn, gunicorn or
    ``flask run`` nothing configures that logger, and Python's last-resort
    handler shows WARNING and above only, so the promise of a visible notice
    would be kept nowhere: when no handler anywhere up the logger's chain
    would receive the record, the "on" line is written to stderr instead
    (once: never in addition to a handler the app configured).
    """
    import contextlib
    import sys

    config = telemetry.config
    if why_not is not None:
        logger.info("reqtelemetry: usage telemetry is off (%s); nothing is sent", why_not)
        return
    where = "stderr (REQTELEMETRY_DEBUG)" if config.debug else redacted_url(config.endpoint or "")
    message = (
        "reqtelemetry: anonymous usage telemetry is on, reporting to %s about every %s: "
        "counts, latencies and sizes per route template, and system traits (OS, Python, "
        "versions, CPU count, memory); never IPs, hostnames, paths, headers or bodies. "
        "Print it instead with REQTELEMETRY_DEBUG=1 (or its shape with `reqtelemetry inspect`); "
        "turn it off with SQA_OPT_OUT=true or DO_NOT_TRACK=1."
    )
    arguments = (where, _human_seconds(config.flush_interval))
    current: logging.Logger | None = logger
    while current is not None:
        if current.handlers:
            logger.info(message, *arguments)  # the app configured logging: its choice
            return
        current = current.parent if current.propagate else None
    if logger.level > logging.INFO or logging.root.manager.disable >= logging.INFO:
        return  # the app turned these lines off on purpose (level, logging.disable)
    # No usable stderr (None under pythonw, closed, detached): nowhere to say it.
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.write(message % arguments + "\n")
        sys.stderr.flush()


def _human_seconds(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _import_before_the_thread_starts(telemetry: Telemetry, transport: Any) -> None:
    """Do, on the calling thread, every first-time import the flusher would do.

    Why: gunicorn ``--preload`` forks workers while the master's flusher may be
    in its first flush. A module being imported holds a per-module lock; a
    worker forked during that import inherits the lock held by a thread that
    does not exist in the worker, and its telemetry hangs forever on the same
    import. Importing here, before the thread exists, leaves nothing to race.
    """
    import gzip  # noqa: F401

    import platformdirs  # noqa: F401

    "localhost".encode("idna")  # socket.getaddrinfo looks this codec up on first connect
    telemetry.traits.current()  # psutil, importlib.metadata, platform
    if transport is not None:
        transport.client  # noqa: B018  (httpx builds its transport: httpcore, ssl)


#: Instances whose final report goes at exit, in the order they started (held
#: until then, as ``atexit`` would hold them).
_closing_at_exit: dict[Telemetry, None] = {}


def close_all_at_exit() -> None:
    """What runs at exit (``atexit``, and uWSGI's exit hook in a worker, see
    :func:`.prefork.call_at_worker_exit`): every instance's final report, all
    of them within one ``shutdown_timeout`` (the longest configured), then
    whatever else has a flusher (one still waiting for its worker to start).

    Why one budget for all, not one each: a process holds many instances
    where each test of a suite makes its app (``unittest.main()``, which is
    not recognised as a test run), and one after the other, each waited for
    its own budget: 100 of them held the exit for a minute. An instance
    whose turn comes after the budget is spent sends nothing. Ctrl-C while
    it waits ends the waiting, without a traceback.
    """
    _close_within_one_budget(list(dict.fromkeys([*_closing_at_exit, *_live])))


def _close_within_one_budget(instances: list[Telemetry]) -> None:
    """Close ``instances``, all within the longest ``shutdown_timeout`` of them."""
    if not instances:
        return
    deadline = time.monotonic() + max(t.config.shutdown_timeout for t in instances)
    try:
        for telemetry in instances:
            try:
                telemetry.close(timeout=max(deadline - time.monotonic(), 0.0))
            except Exception as error:  # never let telemetry break the exit
                telemetry.internal_error(error)
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C while waiting, or gunicorn's worker, which turns a second
        # SIGINT or SIGQUIT into sys.exit(): ends the waiting, quietly.
        return


#: Instances made in a child of ``multiprocessing``, by the process they were
#: made in: closed by :func:`_close_as_child_ends` (see
#: :meth:`Telemetry._close_as_this_multiprocessing_child_ends`). A process
#: forked from that child inherits them, and closes only its own.
_closing_as_child_ends: dict[Telemetry, int] = {}
#: The process whose ``multiprocessing`` finalizers run :func:`_close_as_child_ends`.
_finalized_child: int | None = None


def _finalize_this_child(util: Any) -> None:
    """Have ``multiprocessing`` run :func:`_close_as_child_ends` as this child
    ends (once per process: its finalizers are not inherited)."""
    global _finalized_child
    if _finalized_child != os.getpid():
        _finalized_child = os.getpid()
        util.Finalize(None, _close_as_child_ends, exitpriority=10)


def _close_as_child_ends() -> None:
    """The final reports of the instances made in this child, within one budget."""
    pid = os.getpid()
    _close_within_one_budget(
        [t for t, made_in in list(_closing_as_child_ends.items()) if made_in == pid]
    )


#: Instances with a flusher, re-initialised in a child after ``os.fork()``.
_live: weakref.WeakSet[Telemetry] = weakref.WeakSet()


_worker_start_lock = threading.Lock()


def _start_in_uwsgi_worker() -> None:
    """uWSGI's post-fork hook (see :mod:`.prefork`)."""
    _start_in_workers(serving=False)


def _start_when_patched() -> None:
    """gevent has patched this worker: its flushers start, as greenlets."""
    _start_in_workers(serving=True)


def _start_in_workers(serving: bool) -> None:
    """Start the flushers that wait for this worker; never raises into the server."""
    with _worker_start_lock:
        for telemetry in list(_live):
            try:
                telemetry._start_in_worker(serving)
            except Exception as error:  # never let telemetry break a worker
                telemetry.internal_error(error)


def _reinit_after_fork() -> None:
    for telemetry in list(_live):
        telemetry._after_fork_in_child()


def _note_fork_in_parent() -> None:
    """The parent's side of a fork: the child is an instance of its own, and a
    parent that serves nothing itself (a pre-fork master) is none (see
    :meth:`.flusher.Flusher.note_fork`)."""
    for telemetry in list(_live):
        flusher = telemetry.flusher
        if flusher is not None:
            flusher.note_fork()


atexit.register(close_all_at_exit)  # with nothing to close, it costs nothing

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork, after_in_parent=_note_fork_in_parent)
