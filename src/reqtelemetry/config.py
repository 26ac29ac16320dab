"""One frozen configuration object, resolved once at start.

Why once: the middleware's hot path must not read the environment, and an
operator must be able to predict what happens from what they set at start.

Precedence, strongest first: the environment (``REQTELEMETRY_*``, and for
opting out also ``SQA_OPT_OUT`` and ``DO_NOT_TRACK``), then the command line's
``--sqa-opt-out``, then the arguments given in code. No variable switches
telemetry on against the code's wish, and none widens *what* is collected:
lists that withhold or exclude add to the code's, allow-lists can only shrink,
``RECORD_QUERY`` can only switch off, ``GROUP_UNMATCHED`` only on (see
:func:`_with_environment`). Where reports go and how (endpoint, interval,
timeouts, caps, debug, trait values) the environment decides; the one variable
that makes something send where it would not is ``REQTELEMETRY_SEND_IN_TESTS``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypedDict
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from .recorder import DEFAULT_MAX_KEYS

# For the signatures that take **options: Unpack[Options] (Telemetry and the
# middlewares), which import it from here. At run time too, so that
# typing.get_type_hints and inspect.signature(eval_str=True) (dependency
# injectors, documentation tools) can read them. typing's from 3.11; before,
# typing_extensions (a dependency there).
if sys.version_info >= (3, 11):
    from typing import Unpack as Unpack
else:
    from typing_extensions import Unpack as Unpack

logger = logging.getLogger("reqtelemetry")

OPT_OUT_FLAG = "--sqa-opt-out"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
DEFAULT_FLUSH_INTERVAL = 3600.0
#: The longest reporting interval accepted (a year): anything longer is a typo,
#: and ``threading.Event.wait`` raises on timeouts past ``threading.TIMEOUT_MAX``.
LONGEST_FLUSH_INTERVAL = 365 * 86400.0
#: The shortest ``flush_interval`` and ``timeout`` accepted (10 ms): shorter is
#: a typo or a unit mistake, never a setting. ``1e-320`` passed as positive:
#: the flusher then reported in a busy loop (11,227 reports in 2 s), and a
#: timeout that short left no attempt time to finish.
SHORTEST_SECONDS = 0.01
#: The wire format's limit on app-defined metric names per kind.
MAX_METRIC_NAMES = 100


def env_flag(value: str | None) -> bool:
    """True for ``1``/``true``/``yes``/``on`` (any case); anything else means not set."""
    return value is not None and value.strip().lower() in _TRUE


def add_opt_out_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--sqa-opt-out`` to an app's own ``argparse`` parser.

    The parsed value lands in ``args.sqa_opt_out``; pass it as
    ``Telemetry(opt_out=args.sqa_opt_out)``. The flag is also honoured when it
    is only present in ``sys.argv``, so an operator can rely on it even where the
    app forgot to pass it on.
    """
    parser.add_argument(
        OPT_OUT_FLAG,
        dest="sqa_opt_out",
        action="store_true",
        help="disable anonymous usage telemetry (same as SQA_OPT_OUT=true)",
    )
    return parser


class OptionsBesideEndpoint(TypedDict, total=False):
    """:class:`Options` but ``endpoint``, which ``Telemetry`` also takes by position."""

    app_name: str | None
    app_version: str | None
    app_git_hash: str | None
    app_build_time: str | None
    opt_out: bool
    exclude_paths: Iterable[str] | None
    exclude_prefixes: Iterable[str] | None
    max_keys: int
    group_unmatched: bool
    allowed_path_segments: Iterable[str] | None
    allowed_query_keys: Iterable[str] | None
    record_query: bool
    flush_interval: float
    min_flush_interval: float
    max_flush_interval: float
    max_payload_bytes: int
    timeout: float
    max_attempts: int
    max_proof_of_work_bits: int
    retry_base_delay: float
    shutdown_timeout: float
    disabled_traits: Iterable[str] | None
    deployment_id_path: str | os.PathLike[str] | None
    debug: bool
    send_in_tests: bool
    otel: bool
    max_metrics: int
    proxy: str | None
    ca_bundle: str | os.PathLike[str] | None


class Options(OptionsBesideEndpoint, total=False):
    """The keyword options of ``Telemetry(...)`` and the middlewares, as a
    user's type checker and IDE see them (``**options: Unpack[Options]``).

    Why: typed ``**options: Any``, a misspelt option (``exclude_path=``) or a
    wrong type (``app_version=3.10``) passed mypy --strict and pyright, to
    fail only at start, and an IDE offered none of them. The types are what
    :meth:`Config.resolve` takes, wider than :class:`Config`'s fields: a list
    for a tuple, a ``pathlib.Path`` for a file. ``tests/test_public_types.py``
    keeps the keys in step with those fields.
    """

    endpoint: str | None


#: Fields that are not options: :meth:`Config.resolve` sets them.
_NOT_OPTIONS = frozenset({"opt_out_reason", "environment_applied"})
_BOOL_FIELDS = frozenset(
    {"opt_out", "group_unmatched", "record_query", "debug", "send_in_tests", "otel"}
)
_INT_FIELDS = frozenset(
    {"max_keys", "max_payload_bytes", "max_attempts", "max_proof_of_work_bits", "max_metrics"}
)
_NUMBER_FIELDS = frozenset(
    {
        "flush_interval",
        "min_flush_interval",
        "max_flush_interval",
        "timeout",
        "retry_base_delay",
        "shutdown_timeout",
    }
)
#: The traits the app's code gives.
_APP_TRAITS = ("app_name", "app_version", "app_git_hash", "app_build_time")
#: Fields of text or None: blank text means not set.
_TEXT_FIELDS = (*_APP_TRAITS, "endpoint", "deployment_id_path", "proxy", "ca_bundle")
#: Text fields that name a file: a ``pathlib.Path`` is taken too.
_PATH_FIELDS = frozenset({"deployment_id_path", "ca_bundle"})
#: Text fields that hold a URL: taken without surrounding white space.
_URL_FIELDS = frozenset({"endpoint", "proxy"})

#: The fields that hold lists of strings.
_LIST_FIELDS = (
    "exclude_paths",
    "exclude_prefixes",
    "allowed_path_segments",
    "allowed_query_keys",
    "disabled_traits",
)


def redacted_url(url: str) -> str:
    """``url`` as it may be shown in logs: scheme, host, port and path only.

    Why: an endpoint may carry credentials (``https://user:token@host/`` or
    ``?key=...``), and a start-up log line is read by more people than the
    configuration is.
    """
    scheme, separator, rest = url.partition("://")
    before_query = rest.split("?", 1)[0].split("#", 1)[0]
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        # Unparseable (an unclosed "[" of an IPv6 host): cut by hand, never
        # raise, since this runs on the way to reporting an error.
        return scheme + separator + before_query.rsplit("@", 1)[-1].split("/", 1)[0]
    if separator and "@" in before_query and "@" not in parts.netloc:
        # An "@" in the path: a password holding a "/" as it is, whose tail
        # urlsplit took for the path (``https://svc:Xy/secret@host/`` was
        # shown as ``https://svc/secret@host/``), or a path that holds one
        # (``/u/@team/``). Which cannot be told: nothing is shown.
        return f"{scheme}://***"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    where = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, where, parts.path, "", ""))


#: Secrets shorter than this are not taken out of a server's answer
#: (:func:`scrubbed`): a query value of ``1`` would take every digit with it.
MIN_SECRET_LENGTH = 4
#: A query value alone is taken out only from this long, as a token is: a
#: short one (``format=json``) would take words out of the answer's text.
MIN_TOKEN_LENGTH = 12


def url_secrets(*urls: str | None) -> tuple[str, ...]:
    """What :func:`redacted_url` hides of ``urls`` that would tell a secret,
    as written and decoded, longest first: the credentials and the password,
    the query and each ``name=value`` of it, and a value alone where it is
    as long as a token. Not the user name, nor a short value, which would take
    words out of the text (``json`` of ``format=json``).

    Why: a proxy's or a gateway's error page may quote the request it
    refused, query and all (``cannot serve POST /v1/session?key=...``), and
    the flusher's warning quotes the answer it got.
    """
    found: set[str] = set()

    def hide(piece: str, least: int) -> None:
        for form in (piece, unquote_plus(piece)):
            if len(form) >= least:
                found.add(form)

    for url in urls:
        if not url:
            continue
        rest = url.partition("://")[2]
        userinfo = rest.split("?", 1)[0].split("#", 1)[0].rpartition("@")[0]
        query = rest.partition("?")[2].split("#", 1)[0]
        for piece in (userinfo, userinfo.partition(":")[2], query):
            hide(piece, MIN_SECRET_LENGTH)
        for pair in query.split("&"):
            hide(pair, MIN_SECRET_LENGTH)
            hide(pair.partition("=")[2], MIN_TOKEN_LENGTH)
    return tuple(sorted(found, key=len, reverse=True))


def scrubbed(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` (see :func:`url_secrets`) taken out."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _encodes(text: str) -> bool:
    """Whether ``text`` is valid Unicode (no lone surrogates), as JSON text must be."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _split(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    return tuple(item.strip() for item in value if item and item.strip())


def _list_option(name: str, value: Any) -> tuple[str, ...]:
    """A list option given in code, as :func:`_split` makes it; a ``ValueError``
    naming the option for anything but a string or an iterable of strings.

    Why here, before the environment's entries join it: stripped as they
    were, a number among them failed as an ``AttributeError`` naming nothing,
    a ``None`` went missing silently, and once joined, a bad entry of the
    code's was blamed on the variable.
    """
    if value is None or isinstance(value, str):
        return _split(value)
    items = list(value) if isinstance(value, Iterable) else None
    if items is None or not all(isinstance(item, str) for item in items):
        raise ValueError(_list_error(name, value))
    return _split(items)


def _finite(number: float) -> bool:
    """``math.isfinite``, false for an integer too large for a float (which it
    raises ``OverflowError`` on, naming no option)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def shown_value(value: object, limit: int | None = None) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters if given; an
    integer too long to write (Python refuses past 4,300 digits) or to read
    is described instead (``10**400`` would put 401 digits in a message)."""
    if isinstance(value, int) and value.bit_length() > 1000:
        return f"an integer of {value.bit_length():,} bits"
    text = repr(value)
    if limit is not None and len(text) > limit:
        return text[: limit - 3] + "..."
    return text


def _list_error(name: str, value: Any) -> str:
    return (
        f"{name} must be a list of strings (Config.resolve also takes a "
        f"comma-separated string), got {value!r}"
    )


@dataclass(frozen=True)
class Config:
    """Everything reqtelemetry needs to know, in one immutable place.

    Build it with :meth:`Config.resolve` so that the environment and opt-out
    rules apply; the plain constructor takes values as they are (for tests).
    """

    endpoint: str | None = None
    app_name: str | None = None
    app_version: str | None = None
    #: Reported as traits when given (from your build: ``git rev-parse HEAD``, a date).
    app_git_hash: str | None = None
    app_build_time: str | None = None
    opt_out: bool = False
    #: Why telemetry is off, for the start-up log line (``None`` when on).
    opt_out_reason: str | None = None
    #: Paths never measured: exact matches ...
    exclude_paths: tuple[str, ...] = ()
    #: ... and prefixes (``/static/`` excludes everything below it). Both are
    #: compared with the route template a request is recorded under as well.
    exclude_prefixes: tuple[str, ...] = ()
    max_keys: int = DEFAULT_MAX_KEYS
    #: Requests no route matched share one key (``<unmatched>``) instead of
    #: each getting its anonymized path: a scanner must not grow the payload.
    group_unmatched: bool = True
    #: Path segments kept verbatim when a path has to be anonymized.
    allowed_path_segments: tuple[str, ...] = ()
    #: Query keys kept (their values hashed) when ``record_query`` is on.
    allowed_query_keys: tuple[str, ...] = ()
    #: Append the anonymized query string to anonymized paths.
    record_query: bool = False
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    #: Bounds within which the collector may change the interval.
    min_flush_interval: float = 60.0
    max_flush_interval: float = 7 * 86400.0
    #: Largest request body before compression; bigger batches are split.
    max_payload_bytes: int = 256 * 1024
    #: Seconds one HTTP attempt may take.
    timeout: float = 15.0
    #: Retries of a failed send: attempts per flush, and the base of the
    #: exponential backoff (full jitter) between them, in seconds.
    max_attempts: int = 4
    #: The most proof of work (hashcash bits) this client agrees to do per
    #: report; a collector asking for more is not sent to.
    max_proof_of_work_bits: int = 24
    retry_base_delay: float = 1.0
    #: Seconds the final flush at shutdown may take, at most.
    shutdown_timeout: float = 2.0
    #: Trait names the operator withholds (``REQTELEMETRY_DISABLE=memory_rss_bytes,cpu_count``).
    disabled_traits: tuple[str, ...] = ()
    #: Where the deployment id is kept (default: the platform's user data dir).
    deployment_id_path: str | None = None
    #: Write payloads to stderr instead of sending them (``REQTELEMETRY_DEBUG=1``).
    debug: bool = False
    #: Send even under a test runner (the project's own end-to-end tests need it).
    send_in_tests: bool = False
    #: Also record through OpenTelemetry instruments (``opentelemetry-api``).
    otel: bool = False
    #: Most app-defined metric names (``count``/``gauge``) kept.
    max_metrics: int = 100
    #: The proxy reports go through (``http://``, ``https://`` or ``socks5://`` URL;
    #: ``REQTELEMETRY_PROXY``). The app's own ``HTTPS_PROXY`` is not used.
    proxy: str | None = None
    #: A CA bundle (PEM file, or a directory of hashed certificates) that replaces
    #: the default trust store for the collector (``REQTELEMETRY_CA_BUNDLE``), for
    #: a collector behind a private CA. ``SSL_CERT_FILE`` is not used.
    ca_bundle: str | None = None
    #: Whether :meth:`resolve` made this config (it has seen an environment, of
    #: the caller's choosing). A config built with the plain constructor has
    #: not: :class:`~reqtelemetry.Telemetry` applies this process's to it.
    environment_applied: bool = field(default=False, repr=False, compare=False)

    @property
    def enabled(self) -> bool:
        return not self.opt_out

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str] | None = None,
        argv: Iterable[str] | None = None,
        **options: Any,
    ) -> Config:
        """Combine code options, the command line and the environment, once."""
        environ = os.environ if environ is None else environ
        argv = sys.argv if argv is None else argv
        unknown = set(options) - (cls.field_names() - _NOT_OPTIONS)
        if unknown:
            raise TypeError(f"unknown reqtelemetry option(s): {', '.join(sorted(unknown))}")
        for name in _LIST_FIELDS:
            if name in options:
                options[name] = _list_option(name, options[name])
        for name in _TEXT_FIELDS:
            # Blank means not set, as for the variables: ``endpoint=os.environ.get(
            # "APP_TELEMETRY_URL")`` with the variable set but empty is "no endpoint".
            value = options.get(name)
            if isinstance(value, str) and not value.strip():
                options[name] = None
            elif name in _URL_FIELDS and isinstance(value, str):
                # As the variables are: a URL read from a file or a settings
                # entry often ends in a newline, and was refused for it.
                options[name] = value.strip()
            elif name in _PATH_FIELDS and isinstance(value, os.PathLike):
                options[name] = os.fspath(value)
        options["environment_applied"] = True
        if not isinstance(options.get("opt_out", False), bool):
            # Taken as true or false, "false" would be true: a bug in code,
            # refused alike whatever the environment says.
            raise ValueError(f"opt_out must be True or False, got {options['opt_out']!r}")
        # Opting out is decided first, from nothing that can be malformed: an
        # opted-out app must start whatever else the environment says.
        reason = _opt_out_reason(bool(options.get("opt_out")), environ, argv)
        overrides: dict[str, Any] = {}
        try:
            overrides = _from_environment(environ)
            config = cls(**_with_environment(options, overrides))
            config = replace(config, opt_out=reason is not None, opt_out_reason=reason)
            config.validate()
        except ValueError as error:
            if reason is None:  # on: a bad value is a clear error at start
                variable = _variable_at_fault(cls, options, overrides, error)
                if variable is not None and not str(error).startswith(variable):
                    raise ValueError(f"{variable}: {error}") from None
                raise
            # Off: nothing will use these values. The code's own values are
            # still checked below, so a bug in code fails the same either way.
            # Named, not quoted: a bad value may be a secret (a token pasted
            # into the endpoint, say), and logs are read by more people.
            variable = _variable_at_fault(cls, options, overrides, error)
            if variable is None and str(error).startswith("REQTELEMETRY_"):
                variable = str(error).split(" ")[0]  # one that did not parse names itself
            logger.info(
                "reqtelemetry: telemetry is off (%s); ignoring the REQTELEMETRY_* settings "
                "(%s), which are not all valid: %s cannot be used",
                reason,
                ", ".join(sorted(name for name in environ if name.startswith("REQTELEMETRY_"))),
                variable or "one of them",
            )
            config = replace(cls(**options), opt_out=True, opt_out_reason=reason)
            config.validate()
        return config

    def with_environment(
        self, environ: Mapping[str, str] | None = None, argv: Iterable[str] | None = None
    ) -> Config:
        """This config's values as code options, resolved against ``environ`` and ``argv``
        (by default this process's), exactly as :meth:`resolve` treats keyword options.

        Why: the README promises that the environment wins over code, and an
        operator's ``REQTELEMETRY_DEBUG`` or ``REQTELEMETRY_DISABLE`` must work
        however the app built its configuration, ``Config(...)`` included.
        Applying an environment twice changes nothing more than applying it once.
        """
        options = {
            item.name: getattr(self, item.name)
            for item in fields(self)
            if item.name not in _NOT_OPTIONS | {"environment_applied"}
        }
        return type(self).resolve(environ=environ, argv=argv, **options)

    def with_opt_out_applied(
        self, environ: Mapping[str, str] | None = None, argv: Iterable[str] | None = None
    ) -> Config:
        """This config, opted out if the environment or the command line says so.

        Why: a config resolved against another environment (a test's, say)
        has never seen this process's ``SQA_OPT_OUT``, ``DO_NOT_TRACK`` or
        ``--sqa-opt-out``; opting out must work whatever way the config was
        made. It can only switch telemetry off. (A config built by hand gets
        the whole environment: :meth:`with_environment`.)
        """
        environ = os.environ if environ is None else environ
        argv = sys.argv if argv is None else argv
        if self.opt_out and self.opt_out_reason is not None:
            return self
        reason = _opt_out_reason(self.opt_out, environ, argv)
        if reason is None:
            return self
        return replace(self, opt_out=True, opt_out_reason=reason)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option that cannot work.

        Types and ranges are checked whether telemetry is on or off, so that a
        bug in code fails where the app is developed (often with
        ``DO_NOT_TRACK=1`` set) as it would for its users. What only sending
        uses (endpoint, proxy, CA bundle) is checked only when on: opted out,
        it is never used, and a bad one must not stop the app.
        """
        self._validate_types()
        if self.max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {shown_value(self.max_keys)}")
        if not (
            SHORTEST_SECONDS
            <= self.min_flush_interval
            <= self.max_flush_interval
            <= LONGEST_FLUSH_INTERVAL
        ):
            # The floor too: a collector's next_interval is held to it, and
            # 1e-300 from a collector (or a proxy) made the same busy loop.
            raise ValueError(
                f"min_flush_interval must be at least {SHORTEST_SECONDS:g} s and at most "
                f"max_flush_interval, and max_flush_interval at most "
                f"{LONGEST_FLUSH_INTERVAL:g} s (a year)"
            )
        if not (_finite(self.flush_interval) and self.flush_interval >= SHORTEST_SECONDS):
            raise ValueError(
                "flush_interval must be a finite number of seconds, at least "
                f"{SHORTEST_SECONDS:g}, got {shown_value(self.flush_interval)}"
            )
        if self.flush_interval > LONGEST_FLUSH_INTERVAL:
            raise ValueError(
                f"flush_interval must be at most {LONGEST_FLUSH_INTERVAL:g} s (a year), "
                f"got {shown_value(self.flush_interval)}"
            )
        if self.max_payload_bytes < 16384:
            raise ValueError(
                "max_payload_bytes must be at least 16384, "
                f"got {shown_value(self.max_payload_bytes)}"
            )
        if self.max_attempts < 1:
            raise ValueError(
                f"max_attempts must be at least 1, got {shown_value(self.max_attempts)}"
            )
        if not (_finite(self.retry_base_delay) and self.retry_base_delay >= 0):
            raise ValueError(
                "retry_base_delay must be a finite number of seconds, not negative, "
                f"got {shown_value(self.retry_base_delay)}"
            )
        # Zero, negative or NaN timeouts leave no time for any attempt: telemetry
        # would say it is on and never send anything.
        if not (_finite(self.timeout) and self.timeout >= SHORTEST_SECONDS):
            raise ValueError(
                f"timeout must be a finite number of seconds, at least {SHORTEST_SECONDS:g}, "
                f"got {shown_value(self.timeout)}"
            )
        if not (_finite(self.shutdown_timeout) and self.shutdown_timeout >= 0):
            raise ValueError(
                f"shutdown_timeout must be zero or a finite positive number of seconds, "
                f"got {shown_value(self.shutdown_timeout)}"
            )
        if self.endpoint is not None and self.enabled:
            # Only when on: opted out, the URL is never used, nor httpx imported.
            _check_endpoint(self.endpoint)
        for name in _APP_TRAITS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                # Not converted: 3.10 would become "3.1". The wire format only
                # takes strings, and a number would get every report refused.
                raise ValueError(
                    f"{name} must be a string (quote it: {str(value)!r}), "
                    f"got {value!r} ({type(value).__name__})"
                )
            if value is not None and ("\x00" in value or not _encodes(value)):
                # The collector refuses a report with a NUL or a lone surrogate
                # in any string: every report of this app would be refused.
                raise ValueError(
                    f"{name} must be text without NUL characters or lone surrogates, got {value!r}"
                )
        for name in _LIST_FIELDS:
            value = getattr(self, name)
            if (
                isinstance(value, str)
                or not isinstance(value, Iterable)
                or not all(isinstance(item, str) for item in value)
            ):
                # A bare string would be taken as its characters: "users"
                # would let the segments "u", "s", "e" and "r" through unhashed.
                raise ValueError(_list_error(name, value))
        for name in ("exclude_paths", "exclude_prefixes"):
            # A path a request can have starts with "/": without it, an entry
            # excluded nothing, silently.
            for entry in getattr(self, name):
                if not entry.startswith("/"):
                    raise ValueError(f"{name} entries must start with '/', got {entry!r}")
        from .hashcash import MAX_BITS  # here: only validation needs it

        if not 1 <= self.max_proof_of_work_bits <= MAX_BITS:
            # 0 or less: every collector asks for some work, and every report
            # failed with telemetry saying it was on and sending.
            raise ValueError(
                f"max_proof_of_work_bits must be between 1 and {MAX_BITS}, "
                f"got {shown_value(self.max_proof_of_work_bits)}"
            )
        if not 1 <= self.max_metrics <= MAX_METRIC_NAMES:
            raise ValueError(
                f"max_metrics must be between 1 and {MAX_METRIC_NAMES} (the wire format's "
                f"limit), got {shown_value(self.max_metrics)}"
            )
        self._validate_network()
        from .traits import TRAIT_NAMES  # here: traits imports this module

        unknown = sorted(set(self.disabled_traits) - set(TRAIT_NAMES))
        if unknown:
            raise ValueError(
                f"unknown trait name(s) to withhold: {', '.join(unknown)}; "
                f"valid names are: {', '.join(TRAIT_NAMES)}"
            )

    def _validate_network(self) -> None:
        """``proxy`` and ``ca_bundle``: wrong ones are an error at start, not a silent
        failure at every flush (only when on: opted out, nothing is sent)."""
        if not self.enabled:
            return
        if self.proxy is not None:
            _check_proxy(self.proxy)
        if self.ca_bundle is not None and not os.path.exists(self.ca_bundle):
            raise ValueError(f"ca_bundle must be an existing file or directory: {self.ca_bundle!r}")
        if self.ca_bundle is not None and self.endpoint is not None:
            _check_ca_bundle(self.ca_bundle)

    def _validate_types(self) -> None:
        """Every option of the type it is used as, or a ``ValueError`` naming it.

        Why: options often come from the app's own settings, read from the
        environment as strings. ``record_query="false"`` is true to Python and
        would record queries; ``flush_interval="60"`` would fail later, on the
        flusher thread, with a ``TypeError`` that names nothing.
        """
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in _BOOL_FIELDS:
                if not isinstance(value, bool):
                    raise ValueError(
                        f"{item.name} must be True or False, got {value!r} ({type(value).__name__})"
                    )
            elif item.name in _INT_FIELDS:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(
                        f"{item.name} must be a whole number, got {value!r} "
                        f"({type(value).__name__})"
                    )
            elif item.name in _NUMBER_FIELDS:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(
                        f"{item.name} must be a number of seconds, got {value!r} "
                        f"({type(value).__name__})"
                    )
            elif item.name in _TEXT_FIELDS and value is not None and not isinstance(value, str):
                raise ValueError(f"{item.name} must be a string, got {type(value).__name__}")


#: ``REQTELEMETRY_<suffix>`` variables read as text, as lists, as numbers and
#: as flags: suffix -> option.
_TEXT_VARIABLES = {
    "ENDPOINT": "endpoint",
    "APP_NAME": "app_name",
    "APP_VERSION": "app_version",
    "APP_GIT_HASH": "app_git_hash",
    "APP_BUILD_TIME": "app_build_time",
    "DEPLOYMENT_ID_PATH": "deployment_id_path",
    "PROXY": "proxy",
    "CA_BUNDLE": "ca_bundle",
}
_LIST_VARIABLES = {
    "EXCLUDE_PATHS": "exclude_paths",
    "EXCLUDE_PREFIXES": "exclude_prefixes",
    "ALLOWED_PATH_SEGMENTS": "allowed_path_segments",
    "ALLOWED_QUERY_KEYS": "allowed_query_keys",
    "DISABLE": "disabled_traits",
}
_NUMBER_VARIABLES = {
    "MAX_KEYS": ("max_keys", int),
    "FLUSH_INTERVAL": ("flush_interval", float),
    "MAX_PAYLOAD_BYTES": ("max_payload_bytes", int),
    "TIMEOUT": ("timeout", float),
    "SHUTDOWN_TIMEOUT": ("shutdown_timeout", float),
}
_FLAG_VARIABLES = {
    "DEBUG": "debug",
    "OTEL": "otel",
    "SEND_IN_TESTS": "send_in_tests",
    "GROUP_UNMATCHED": "group_unmatched",
    "RECORD_QUERY": "record_query",
}
#: Option -> the variable that sets it.
_VARIABLE_OF = {
    name: f"REQTELEMETRY_{suffix}"
    for variables in (_TEXT_VARIABLES, _LIST_VARIABLES, _FLAG_VARIABLES)
    for suffix, name in variables.items()
} | {name: f"REQTELEMETRY_{suffix}" for suffix, (name, _) in _NUMBER_VARIABLES.items()}


def _variable_at_fault(
    cls: type[Config], options: dict[str, Any], overrides: dict[str, Any], error: ValueError
) -> str | None:
    """The ``REQTELEMETRY_*`` variable to blame for ``error``; None when it is
    none of them (the code's own options fail so, say).

    Why: a value that parses but cannot work (``REQTELEMETRY_MAX_KEYS=0``)
    failed with the option's name (``max_keys must be at least 1``), which the
    operator who set the variable may never have heard of. Only on the error
    path. The variable is that of the option the error names (its first
    word), or failing that the one without which everything works.
    """
    message = str(error)
    if _failure(cls, options, {}) == message:
        return None  # the code's own options fail so: no variable is to blame
    without = {
        name: _failure(cls, options, {k: v for k, v in overrides.items() if k != name})
        for name in overrides
    }
    for name, failure in without.items():
        # The option the error names, unless it fails the same without the
        # variable (a list the variable adds to, whose bad item is the code's).
        if message.startswith(f"{name} ") and failure != message:
            return _VARIABLE_OF.get(name)
    for name, failure in without.items():
        if failure is None:
            return _VARIABLE_OF.get(name)
    return None


def _failure(cls: type[Config], options: dict[str, Any], overrides: dict[str, Any]) -> str | None:
    """What the config of ``options`` with ``overrides`` fails with; None if it works."""
    try:
        cls(**_with_environment(options, overrides)).validate()
    except ValueError as error:
        return str(error)
    return None


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """``REQTELEMETRY_*`` overrides; bad values raise a clear error at start."""
    found: dict[str, Any] = {}
    for suffix, name in _TEXT_VARIABLES.items():
        value = environ.get(f"REQTELEMETRY_{suffix}", "").strip()
        if value:  # unset, empty or blank: not set
            found[name] = value
    for suffix, name in _LIST_VARIABLES.items():
        items = _split(environ.get(f"REQTELEMETRY_{suffix}"))
        if items:  # unset, empty or blank: not set
            found[name] = items
    for suffix, (name, kind) in _NUMBER_VARIABLES.items():
        value = environ.get(f"REQTELEMETRY_{suffix}", "").strip()
        if value:  # unset, empty or blank: not set
            try:
                found[name] = kind(value)
            except ValueError:
                what = "a whole number" if kind is int else "a number"
                raise ValueError(f"REQTELEMETRY_{suffix} must be {what}, got {value!r}") from None
    for suffix, name in _FLAG_VARIABLES.items():
        flag = environ.get(f"REQTELEMETRY_{suffix}")
        if flag is None or not flag.strip():
            continue  # empty means not set
        if flag.strip().lower() not in _FALSE | _TRUE:
            raise ValueError(f"REQTELEMETRY_{suffix} must be true or false, got {flag!r}")
        found[name] = env_flag(flag)
    return found


def _check_endpoint(endpoint: str) -> None:
    """Refuse at start an endpoint httpx would fail on at every flush.

    ``http://collector..example.org`` passes a prefix check, then raises at each
    request (``UnicodeError`` from the IDNA codec, or ``httpx.InvalidURL``).
    """
    url = _checked_url("endpoint", endpoint, ("http", "https"), "an http(s) URL")
    if url.fragment:
        # A fragment never reaches a server: whatever follows the ``#`` would
        # swallow the paths the reports go to.
        raise ValueError(f"endpoint must not have a #fragment, got {redacted_url(endpoint)!r}")


def _check_ca_bundle(ca_bundle: str) -> None:
    """Refuse at start a CA bundle file that holds no certificate.

    Why: the HTTP client loads it as ``Telemetry()`` starts, and a file that
    is no PEM bundle (a key, a DER file, an empty one) made that raise a bare
    ``ssl.SSLError`` (``[X509: NO_CERTIFICATE_OR_CRL_FOUND]``) naming no
    option nor variable. A directory is read certificate by certificate
    during a handshake, so there is nothing to load here.
    """
    if os.path.isdir(ca_bundle):
        return
    import ssl  # here: only a configured CA bundle needs it

    try:
        ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        raise ValueError(
            f"ca_bundle must be a PEM file of CA certificates (or a directory of hashed "
            f"ones): {ca_bundle!r} ({error})"
        ) from None


#: The schemes of a proxy httpx takes.
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


def _check_proxy(proxy: str) -> None:
    """Refuse at start a proxy httpx would fail on at every flush, or at the
    first one (``http://proxy:99999``, ``http://``, ``http://a b:3128``), and
    a SOCKS proxy without what httpx needs for it (``httpx.Client`` raised a
    bare ``ImportError``)."""
    url = _checked_url("proxy", proxy, _PROXY_SCHEMES, "an http(s):// or socks5:// URL")
    if url.scheme.startswith("socks"):
        import importlib.util

        if importlib.util.find_spec("socksio") is None:
            raise ValueError(
                "proxy is a SOCKS proxy, which needs the socksio package "
                f"(pip install 'httpx[socks]'): {redacted_url(proxy)!r}"
            )


def _checked_url(option: str, value: str, schemes: tuple[str, ...], kind: str) -> Any:
    """``value`` as an ``httpx.URL`` with a scheme of ``schemes``, a host and a
    valid port; else a ``ValueError`` naming ``option`` (and the URL without
    its credentials or query: the error's own text may quote them)."""
    import httpx

    try:
        url = httpx.URL(value)
        host = url.host
        port = url.port
        host.encode("idna")  # what the socket layer does with it
    except (httpx.InvalidURL, UnicodeError, ValueError) as error:
        raise ValueError(
            f"{option} is not a valid URL ({type(error).__name__}): {redacted_url(value)!r}"
        ) from None
    if url.scheme not in schemes:
        raise ValueError(f"{option} must be {kind}, got {redacted_url(value)!r}")
    if (
        not host
        or "%" in host
        or any(character.isspace() for character in host)
        or (port is not None and not 0 < port < 65536)
    ):
        raise ValueError(
            f"{option} must name a host (and a valid port), got {redacted_url(value)!r}"
        )
    return url


#: Lists that take something out of what is measured or sent: the
#: environment's entries are added to the code's.
_NARROWING_LISTS = ("exclude_paths", "exclude_prefixes", "disabled_traits")
#: Lists that let more through: the environment can only remove entries.
_WIDENING_LISTS = ("allowed_path_segments", "allowed_query_keys")


def _with_environment(options: Mapping[str, Any], found: Mapping[str, Any]) -> dict[str, Any]:
    """The code's options with the environment's overrides applied.

    For *how and where* reports go (endpoint, interval, timeouts, caps, debug,
    trait values) the environment replaces the code's value. For *what* is
    collected it can only narrow what the code allows: withheld traits and
    excluded paths add up, allow-lists can only shrink, query recording can
    only be switched off and grouping of unmatched paths only on.
    """
    merged = {**options, **found}
    for name in _NARROWING_LISTS:
        if name in found:
            code = tuple(options.get(name, ()))
            merged[name] = code + tuple(item for item in found[name] if item not in code)
    for name in _WIDENING_LISTS:
        if name in found:
            merged[name] = tuple(item for item in options.get(name, ()) if item in found[name])
    if "record_query" in found:
        merged["record_query"] = bool(options.get("record_query", False)) and found["record_query"]
    if "group_unmatched" in found:
        merged["group_unmatched"] = (
            bool(options.get("group_unmatched", True)) or found["group_unmatched"]
        )
    for name in _PATH_FIELDS:
        # A "~" as written in an env file or a systemd unit, which no shell
        # expanded: made a directory named "~" in the working directory.
        value = merged.get(name)
        if isinstance(value, str) and value.startswith("~"):
            merged[name] = os.path.expanduser(value)
    return merged


def asks_to_opt_out(value: str | None) -> bool:
    """Whether an opt-out variable's (or flag's) value asks for telemetry off.

    Anything but unset, blank or a clear "no" (``0``, ``false``, ``no``,
    ``off``) does: an operator who wrote ``SQA_OPT_OUT=y`` or ``=disable``
    meant off, and a value misread must err on the side of sending nothing.
    """
    return value is not None and value.strip().lower() not in _FALSE


def _opt_out_reason(in_code: bool, environ: Mapping[str, str], argv: Iterable[str]) -> str | None:
    for variable in ("SQA_OPT_OUT", "REQTELEMETRY_OPT_OUT", "DO_NOT_TRACK"):
        if asks_to_opt_out(environ.get(variable)):
            return f"{variable} is set"
    for argument in argv:
        name, equals, value = argument.partition("=")
        if name == OPT_OUT_FLAG and (not equals or asks_to_opt_out(value)):
            return f"{OPT_OUT_FLAG} was given"
    if in_code:
        return "opt_out=True in the configuration"
    return None
