"""How a collector is configured: one frozen object, resolved once at start.

Everything comes from ``REQTELEMETRY_COLLECTOR_*`` / ``REQTELEMETRY_DASHBOARD_*``
environment variables, with command-line flags taking precedence (the CLI
passes them in as overrides). Resolving once means a running collector never
changes behaviour because the environment changed under it, and a bad value
fails at start with a message that names the variable, not at the first report.

Why the secret matters: session tokens are HMAC-signed with it, so every
replica behind a load balancer must hold the same one, and it must survive
restarts, or clients lose their tokens. A development collector may invent one
(and says what that costs); a production collector refuses to start without it.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..config import Config

logger = logging.getLogger("reqtelemetry.collector")

DEFAULT_DB_URL = "sqlite:///telemetry.db"
DEFAULT_BITS = 20
DEFAULT_TOKEN_TTL = 3600
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
#: The largest body cap that can be asked for (1 GiB): a body is held in
#: memory with its inflated copy and its parse, and a 1 MiB report already
#: takes most of a second to check; more is a typo, and past 2**63 zlib
#: cannot even be asked for that much output.
MAX_MAX_BODY_BYTES = 1024**3
#: The longest a session token can live (a week): clients renew theirs
#: within a minute of expiry, so longer only keeps a leaked token usable;
#: and a TTL past a float's range broke every session request.
MAX_TOKEN_TTL = 7 * 86400
DEFAULT_STAMP_MAX_AGE = 600.0
DEFAULT_STAMP_MAX_FUTURE = 120.0
#: Shorter secrets can be guessed offline from one captured token.
MIN_SECRET_BYTES = 16
#: Clients refuse to work for a collector that asks more than their
#: ``max_proof_of_work_bits`` (24 by default): more would stop every default client.
MAX_BITS: int = Config.max_proof_of_work_bits
#: A production dashboard token, or basic-auth password, shorter than this is
#: a placeholder or guessable.
MIN_DASHBOARD_TOKEN_CHARS = 16
#: The longest data retention that can be asked for (a century): more is a typo.
MAX_RETENTION_DAYS = 36500
DAY_SECONDS = 86400

ENV_DB = "REQTELEMETRY_COLLECTOR_DB"
ENV_SECRET = "REQTELEMETRY_COLLECTOR_SECRET"
ENV_PRODUCTION = "REQTELEMETRY_COLLECTOR_PRODUCTION"
ENV_BITS = "REQTELEMETRY_COLLECTOR_BITS"
ENV_TOKEN_TTL = "REQTELEMETRY_COLLECTOR_TOKEN_TTL"
ENV_MAX_BODY = "REQTELEMETRY_COLLECTOR_MAX_BODY_BYTES"
ENV_NEXT_INTERVAL = "REQTELEMETRY_COLLECTOR_NEXT_INTERVAL"
ENV_STAMP_MAX_AGE = "REQTELEMETRY_COLLECTOR_STAMP_MAX_AGE"
ENV_STAMP_MAX_FUTURE = "REQTELEMETRY_COLLECTOR_STAMP_MAX_FUTURE"
ENV_RETENTION_DAYS = "REQTELEMETRY_COLLECTOR_RETENTION_DAYS"
ENV_DASHBOARD_TOKEN = "REQTELEMETRY_DASHBOARD_TOKEN"
ENV_DASHBOARD_BASIC = "REQTELEMETRY_DASHBOARD_BASIC_AUTH"
ENV_DASHBOARD_PUBLIC = "REQTELEMETRY_DASHBOARD_PUBLIC"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})

SECRET_HINT = (
    f"set {ENV_SECRET} to the same random value on every replica, e.g. "
    "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
)


class SettingsError(ValueError):
    """The configuration cannot work; the message says which variable to fix."""


@dataclass(frozen=True)
class CollectorSettings:
    """Everything a running collector needs to know (secrets are kept out of ``repr``)."""

    secret: bytes = field(repr=False)
    db_url: str = DEFAULT_DB_URL
    production: bool = False
    #: True when the secret was made up at start (development only).
    secret_generated: bool = False
    bits: int = DEFAULT_BITS
    token_ttl: int = DEFAULT_TOKEN_TTL
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Seconds a client should wait before its next report; None leaves it to the client.
    next_interval: float | None = None
    stamp_max_age: float = DEFAULT_STAMP_MAX_AGE
    stamp_max_future: float = DEFAULT_STAMP_MAX_FUTURE
    #: Days reports are kept; older ones are deleted (see ``Storage.prune``).
    #: None keeps everything.
    retention_days: int | None = None
    #: Bearer token for the dashboard, the API and the CSV (or ``?token=`` in a browser).
    dashboard_token: str | None = field(default=None, repr=False)
    #: ``(user, password)`` for HTTP basic auth on the same pages.
    dashboard_basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    #: Serve the dashboard without credentials even in production (an explicit choice).
    dashboard_public: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < MIN_SECRET_BYTES:
            raise SettingsError(
                f"the collector secret must be at least {MIN_SECRET_BYTES} bytes; {SECRET_HINT}"
            )
        if not 1 <= self.bits <= MAX_BITS:
            raise SettingsError(
                f"--bits / {ENV_BITS} must be between 1 and {MAX_BITS}, got {self.bits}: "
                f"clients refuse a collector asking more than their max_proof_of_work_bits "
                f"setting (default {MAX_BITS}), so every default client would stop reporting"
            )
        if not 60 <= self.token_ttl <= MAX_TOKEN_TTL:
            raise SettingsError(
                f"{ENV_TOKEN_TTL} must be from 60 to {MAX_TOKEN_TTL} seconds (a week), "
                f"got {_shown(self.token_ttl)}"
            )
        if not 1024 <= self.max_body_bytes <= MAX_MAX_BODY_BYTES:
            raise SettingsError(
                f"{ENV_MAX_BODY} must be from 1024 to {MAX_MAX_BODY_BYTES} bytes (1 GiB), "
                f"got {_shown(self.max_body_bytes)}"
            )
        if self.next_interval is not None and not 0 < self.next_interval < math.inf:
            raise SettingsError(
                f"{ENV_NEXT_INTERVAL} must be a positive number of seconds, "
                f"got {self.next_interval}"
            )
        if not 0 < self.stamp_max_age < math.inf:
            raise SettingsError(
                f"{ENV_STAMP_MAX_AGE} must be a positive number of seconds, "
                f"got {self.stamp_max_age}"
            )
        if not 0 <= self.stamp_max_future < math.inf:
            raise SettingsError(
                f"{ENV_STAMP_MAX_FUTURE} must be a number of seconds, 0 or more, "
                f"got {self.stamp_max_future}"
            )
        if self.retention_days is not None:
            if not 1 <= self.retention_days <= MAX_RETENTION_DAYS:
                raise SettingsError(
                    f"--retention-days / {ENV_RETENTION_DAYS} must be between 1 and "
                    f"{MAX_RETENTION_DAYS} days, got {self.retention_days}"
                )
            if self.retention_days * DAY_SECONDS <= self.stamp_max_age + self.stamp_max_future:
                # A stamp is refused as a replay only while its report is stored:
                # pruned within the stamp window, it could be sent again.
                raise SettingsError(
                    f"{ENV_RETENTION_DAYS} must keep reports longer than the stamp window "
                    f"({ENV_STAMP_MAX_AGE} + {ENV_STAMP_MAX_FUTURE}), or a pruned report's "
                    "stamp would be accepted a second time"
                )
        if self.dashboard_token is not None and not self.dashboard_token:
            raise SettingsError(f"{ENV_DASHBOARD_TOKEN} must not be empty")
        if self.dashboard_token is not None:
            _check_token_text(self.dashboard_token)
        if (
            self.production
            and self.dashboard_token is not None
            and len(self.dashboard_token) < MIN_DASHBOARD_TOKEN_CHARS
        ):
            raise SettingsError(
                f"in production {ENV_DASHBOARD_TOKEN} must be at least "
                f"{MIN_DASHBOARD_TOKEN_CHARS} random characters (a placeholder or a short "
                "word is guessed quickly), e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if self.dashboard_basic_auth is not None:
            self._check_basic_auth(*self.dashboard_basic_auth)
        if self.production and not self.dashboard_protected and not self.dashboard_public:
            raise SettingsError(
                "a production collector needs dashboard credentials: set "
                f"{ENV_DASHBOARD_TOKEN} and/or {ENV_DASHBOARD_BASIC}=user:password, "
                f"or {ENV_DASHBOARD_PUBLIC}=1 to publish the dashboard on purpose"
            )

    def _check_basic_auth(self, user: str, password: str) -> None:
        """The basic-auth pair must be usable, and in production as hard to
        guess as a token: it opens the same pages, and nothing slows down a
        guesser (a one-character password fell in 65 tries, 0.1 s)."""
        if not user or not password or ":" in user:
            raise SettingsError(
                f"{ENV_DASHBOARD_BASIC} must be user:password with a non-empty user "
                "(without ':') and a non-empty password"
            )
        if self.production and len(password) < MIN_DASHBOARD_TOKEN_CHARS:
            raise SettingsError(
                f"in production the password of {ENV_DASHBOARD_BASIC} must be at least "
                f"{MIN_DASHBOARD_TOKEN_CHARS} random characters (a placeholder or a short "
                "word is guessed quickly), e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )

    @property
    def dashboard_protected(self) -> bool:
        """Whether the dashboard, the API and the CSV ask for credentials."""
        return self.dashboard_token is not None or self.dashboard_basic_auth is not None

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        production: bool | None = None,
        db_url: str | None = None,
        bits: int | None = None,
        dashboard_public: bool | None = None,
        retention_days: int | None = None,
    ) -> CollectorSettings:
        """Settings from the environment, with explicit arguments (the CLI's flags) winning.

        Raises :class:`SettingsError` when the result cannot work, notably a
        production collector without a secret.
        """
        env = os.environ if environ is None else environ
        if production is None:
            production = _flag(env, ENV_PRODUCTION)
        if dashboard_public is None:
            dashboard_public = _flag(env, ENV_DASHBOARD_PUBLIC)
        raw_secret = env.get(ENV_SECRET, "")
        generated = False
        if raw_secret:
            secret = _secret_bytes(raw_secret)
        elif production:
            raise SettingsError(f"production mode refuses to start without a secret: {SECRET_HINT}")
        else:
            secret = secrets.token_bytes(32)
            generated = True
            logger.warning(
                "no %s set, using a random one for this process: "
                "session tokens will not survive a restart and other replicas will refuse "
                "them (fine for development; %s)",
                ENV_SECRET,
                SECRET_HINT,
            )
        basic = env.get(ENV_DASHBOARD_BASIC)
        basic_auth: tuple[str, str] | None = None
        if basic:
            user, sep, password = basic.partition(":")
            if not sep:
                raise SettingsError(f"{ENV_DASHBOARD_BASIC} must be user:password")
            basic_auth = (user, password)
        token = env.get(ENV_DASHBOARD_TOKEN) or None
        settings = cls(
            secret=secret,
            db_url=db_url or env.get(ENV_DB) or DEFAULT_DB_URL,
            production=production,
            secret_generated=generated,
            bits=bits if bits is not None else _int(env, ENV_BITS, DEFAULT_BITS),
            token_ttl=_int(env, ENV_TOKEN_TTL, DEFAULT_TOKEN_TTL),
            max_body_bytes=_int(env, ENV_MAX_BODY, DEFAULT_MAX_BODY_BYTES),
            next_interval=_optional_float(env, ENV_NEXT_INTERVAL),
            stamp_max_age=_float(env, ENV_STAMP_MAX_AGE, DEFAULT_STAMP_MAX_AGE),
            stamp_max_future=_float(env, ENV_STAMP_MAX_FUTURE, DEFAULT_STAMP_MAX_FUTURE),
            retention_days=(
                retention_days
                if retention_days is not None
                else _optional_int(env, ENV_RETENTION_DAYS)
            ),
            dashboard_token=token,
            dashboard_basic_auth=basic_auth,
            dashboard_public=dashboard_public,
        )
        if settings.dashboard_token is not None:
            _warn_of_link_changes(settings.dashboard_token)
        if not settings.dashboard_protected:
            logger.warning(
                "the dashboard, /api/summary and /export.csv are "
                "open to anyone who can reach this port (set %s or %s)",
                ENV_DASHBOARD_TOKEN,
                ENV_DASHBOARD_BASIC,
            )
        return settings


def _secret_bytes(text: str) -> bytes:
    """The secret's bytes as the operator set them.

    Why ``surrogateescape``: Python hands an environment value that is not
    UTF-8 (random bytes make a fine secret) to us with each stray byte as a
    lone surrogate; encoding it back gives the original bytes, the same on
    every replica given the same value, where plain UTF-8 raised. A lone
    surrogate outside that range can only come from a mapping built in code.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise SettingsError(
            f"{ENV_SECRET} is not text Python can turn back into bytes; {SECRET_HINT}"
        ) from None


def _shown(number: int) -> str:
    """``number`` for a message: a typo of 400 digits is not echoed whole."""
    text = str(number)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name} must be 1/0 (or true/false), got {value!r}")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    number = _optional_int(env, name)
    return default if number is None else number


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {value!r}") from None


def _optional_float(env: Mapping[str, str], name: str) -> float | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise SettingsError(f"{name} must be a finite number, got {value!r}")
    return number


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    number = _optional_float(env, name)
    return default if number is None else number


def _check_token_text(token: str) -> None:
    """Refuse a dashboard token that a browser or ``curl`` could never send
    as it is configured.

    Why: a token with a space at either end (easily left by an env file) or a
    character outside ASCII matched no ``Authorization`` header (the header
    is trimmed, and read as Latin-1), only a ``?token=``: the dashboard page
    opened, and its own requests, which send the header, were all refused.
    """
    if token != token.strip() or not all(" " <= char <= "~" for char in token):
        raise SettingsError(
            f"{ENV_DASHBOARD_TOKEN} must be printable ASCII without spaces at either end "
            "(no client can send another as an Authorization header), e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )


def _warn_of_link_changes(token: str) -> None:
    """Warn of a token that a link's raw ``?token=`` changes (a ``+`` reads as a space)."""
    # What a link's query changes: "+" reads as a space, "&" and "#" end the
    # value, "%" starts an escape, a space is no URL character. The rest of
    # printable ASCII ("/", "=", ":", "!"...) arrives as it was written.
    unsafe = sorted({char for char in token if char in "+&#% "})
    if unsafe:
        logger.warning(
            "%s holds %s, which a link's ?token= must percent-encode (a raw '+' reads as a "
            "space); the Authorization header takes it as it is",
            ENV_DASHBOARD_TOKEN,
            " ".join(repr(char) for char in unsafe),
        )
