"""Session tokens: HMAC-signed claims that any collector replica can check alone.

Why signed rather than stored: the collector scales out as stateless replicas,
and a token issued by one must be accepted by the next without a database
round trip or shared memory. A token is
``base64url(claims JSON) + "." + base64url(HMAC-SHA256(secret, claims JSON))``
with claims ``{"d": deployment_id, "i": instance_id, "exp": unix seconds,
"n": random nonce}`` (``docs/protocol.md``). The nonce makes every token
unique, so two sessions of one instance never share stamps' resources.

Tokens carry no secret and grant nothing but the right to spend proof of work
on reports for the ids they name; the collector still checks that a report's
ids match its token's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import time
from dataclasses import dataclass

__all__ = ["Claims", "TokenError", "TokenSigner"]

#: Longer tokens are refused unread (a real one is about 250 characters).
MAX_TOKEN_LENGTH = 1024
_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class TokenError(ValueError):
    """A token was refused; ``reason`` is ``bad_token`` or ``token_expired``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Claims:
    """What a valid token says."""

    deployment_id: str
    instance_id: str
    expires_at: float
    nonce: str


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes:
    """Strict unpadded base64url: anything else is a forgery or garbage."""
    raw = text.encode("ascii")
    if not raw or not set(raw) <= _B64URL or len(raw) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


class TokenSigner:
    """Issues and verifies session tokens with one secret.

    Every replica given the same ``secret`` accepts the others' tokens.
    ``ttl`` is a token's lifetime in seconds (one hour by default).
    """

    def __init__(self, secret: bytes, ttl: float = 3600) -> None:
        if not isinstance(secret, bytes) or not secret:
            raise ValueError("the token secret must be non-empty bytes")
        try:
            # An int past a float's range is an OverflowError; text is no number.
            seconds = math.nan if isinstance(ttl, (str, bytes)) else float(ttl)
        except (OverflowError, TypeError, ValueError):
            seconds = math.nan
        if not 0 < seconds < math.inf:
            raise ValueError("ttl must be a positive, finite number of seconds")
        self._secret = secret
        self.ttl = seconds

    def _sign(self, message: bytes) -> bytes:
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def issue(
        self, deployment_id: str, instance_id: str, now: float | None = None
    ) -> tuple[str, float]:
        """A new token for these ids, and when it expires (Unix seconds)."""
        issued = time.time() if now is None else float(now)
        expires_at = round(issued + self.ttl, 3)
        claims = {
            "d": deployment_id,
            "i": instance_id,
            "exp": expires_at,
            "n": secrets.token_urlsafe(12),
        }
        message = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode("utf-8")
        return f"{_encode(message)}.{_encode(self._sign(message))}", expires_at

    def verify(self, token: str, now: float | None = None) -> Claims:
        """The token's claims, or :class:`TokenError`.

        ``bad_token`` when it is malformed or its signature is wrong (checked
        before the claims are even parsed, in constant time);
        ``token_expired`` when it is genuine but past its expiry.
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise TokenError("bad_token", "not a token")
        body, dot, signature = token.partition(".")
        if not dot:
            raise TokenError("bad_token", "not a token")
        try:
            message = _decode(body)
            given = _decode(signature)
        except (ValueError, binascii.Error):
            raise TokenError("bad_token", "not base64url") from None
        if not hmac.compare_digest(given, self._sign(message)):
            raise TokenError("bad_token", "bad signature")
        try:
            claims = json.loads(message)
            deployment_id, instance_id = claims["d"], claims["i"]
            expires_at, nonce = claims["exp"], claims["n"]
        except (ValueError, TypeError, KeyError):
            raise TokenError("bad_token", "unreadable claims") from None
        if (
            not isinstance(deployment_id, str)
            or not isinstance(instance_id, str)
            or not isinstance(nonce, str)
            or isinstance(expires_at, bool)
            or not isinstance(expires_at, (int, float))
        ):
            raise TokenError("bad_token", "unreadable claims")
        moment = time.time() if now is None else float(now)
        if moment >= expires_at:
            raise TokenError("token_expired", "the session token expired; open a new session")
        return Claims(deployment_id, instance_id, float(expires_at), nonce)
