"""Session tokens: issued by one replica, accepted by any with the same secret, and
refused when forged, tampered with, expired, or not a token at all."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reqtelemetry.collector.tokens import Claims, TokenError, TokenSigner

SECRET = b"s" * 32
DEPLOYMENT = "66b45185-3674-4fb0-be40-154cd0413851"
INSTANCE = "f8637ae6-ac0f-4325-945a-6b7916a2bf1c"
NOW = 1_763_776_800.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def refusal(signer: TokenSigner, token: str, now: float = NOW) -> str:
    try:
        signer.verify(token, now=now)
    except TokenError as error:
        return error.reason
    return "ok"


def test_round_trip() -> None:
    signer = TokenSigner(SECRET, ttl=3600)
    token, expires_at = signer.issue(DEPLOYMENT, INSTANCE, now=NOW)
    assert expires_at == NOW + 3600
    claims = signer.verify(token, now=NOW + 10)
    assert claims == Claims(DEPLOYMENT, INSTANCE, NOW + 3600, claims.nonce)
    assert claims.nonce
    # Another replica with the same secret accepts it.
    assert TokenSigner(SECRET).verify(token, now=NOW) == claims


def test_format_is_the_documented_one() -> None:
    signer = TokenSigner(SECRET)
    token, _ = signer.issue(DEPLOYMENT, INSTANCE, now=NOW)
    body, signature = token.split(".")
    message = unb64(body)
    assert set(json.loads(message)) == {"d", "i", "exp", "n"}
    assert unb64(signature) == hmac.new(SECRET, message, hashlib.sha256).digest()
    assert "=" not in token and "+" not in token and "/" not in token


def test_every_token_is_unique() -> None:
    signer = TokenSigner(SECRET)
    tokens = {signer.issue(DEPLOYMENT, INSTANCE, now=NOW)[0] for _ in range(50)}
    assert len(tokens) == 50


def test_forged_signature() -> None:
    token, _ = TokenSigner(b"another secret").issue(DEPLOYMENT, INSTANCE, now=NOW)
    assert refusal(TokenSigner(SECRET), token) == "bad_token"
    body, signature = TokenSigner(SECRET).issue(DEPLOYMENT, INSTANCE, now=NOW)[0].split(".")
    flipped = bytearray(unb64(signature))
    flipped[0] ^= 1
    assert refusal(TokenSigner(SECRET), f"{body}.{b64(bytes(flipped))}") == "bad_token"


def test_tampered_claims() -> None:
    signer = TokenSigner(SECRET)
    token, _ = signer.issue(DEPLOYMENT, INSTANCE, now=NOW)
    body, signature = token.split(".")
    claims = json.loads(unb64(body))
    for change in ({"exp": NOW + 10**6}, {"d": INSTANCE}, {"i": DEPLOYMENT}):
        forged = json.dumps({**claims, **change}, separators=(",", ":"), sort_keys=True)
        assert refusal(signer, f"{b64(forged.encode())}.{signature}") == "bad_token"


def test_signed_but_malformed_claims_are_bad_tokens() -> None:
    """Claims the secret's holder signed but that do not read as claims."""
    signer = TokenSigner(SECRET)
    for message in (
        b"not json",
        b"[]",
        b'{"d": "x"}',
        b'{"d": 1, "i": "x", "exp": 5, "n": "n"}',
        b'{"d": "x", "i": "y", "exp": true, "n": "n"}',
    ):
        signature = hmac.new(SECRET, message, hashlib.sha256).digest()
        assert refusal(signer, f"{b64(message)}.{b64(signature)}") == "bad_token"


def test_expired() -> None:
    signer = TokenSigner(SECRET, ttl=60)
    token, expires_at = signer.issue(DEPLOYMENT, INSTANCE, now=NOW)
    assert refusal(signer, token, now=expires_at - 0.001) == "ok"
    assert refusal(signer, token, now=expires_at) == "token_expired"
    assert refusal(signer, token, now=expires_at + 86400) == "token_expired"


def test_expired_and_forged_is_bad_token() -> None:
    """The signature is checked before the expiry: a forgery learns nothing."""
    token, _ = TokenSigner(b"another").issue(DEPLOYMENT, INSTANCE, now=NOW - 10**6)
    assert refusal(TokenSigner(SECRET), token) == "bad_token"


@pytest.mark.parametrize(
    "token",
    ["", ".", "abc", "abc.", ".abc", "a.b.c", "!!!.???", "é.é", "a" * 5000, "x" * 10 + "." + "y"],
)
def test_garbage(token: str) -> None:
    assert refusal(TokenSigner(SECRET), token) == "bad_token"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.from_regex(r"\A[A-Za-z0-9_-]{0,80}\.[A-Za-z0-9_-]{0,60}\Z"))
def test_random_text_is_only_ever_a_token_error(token: str) -> None:
    assert refusal(TokenSigner(SECRET), token) == "bad_token"


def test_signer_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        TokenSigner(b"")
    with pytest.raises(ValueError):
        TokenSigner(SECRET, ttl=0)
    with pytest.raises(ValueError):
        TokenSigner("text secret")  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", [10**400, float("inf"), float("nan"), -1, "3600"])
def test_signer_refuses_a_ttl_no_expiry_can_be_computed_from(ttl: object) -> None:
    # 10**400 was an OverflowError (math.isfinite converts to a float first),
    # which the collector's start-up turned into a traceback.
    with pytest.raises(ValueError, match="ttl must be a positive, finite number"):
        TokenSigner(SECRET, ttl=ttl)  # type: ignore[arg-type]
