"""Checking what clients send, as pure functions: bytes in, a parsed report or a refusal out.

The order is the protocol's (``docs/protocol.md``), cheapest first, stopping at
the first failure, so that junk costs the collector as little as possible: a
size comparison before any parsing, a signature before any SHA-1 of a stamp,
one SHA-1 before parsing and schema-validating up to a megabyte of report.
Only the last check (the stamp was never seen) needs storage; the app does it.

Nothing here does I/O or reads a clock, so every branch is testable with plain
values, and the app can run the whole pipeline in a worker thread (parsing and
validating a large report must not stall the event loop).

Parsing is strict on purpose: JSON only in UTF-8, no ``NaN``/``Infinity``
(Python accepts them, SQL and other JSON readers do not), no integers beyond
64 bits, no duplicate keys (two parsers must not read one body two ways), no
nesting that would exhaust the stack. Any of these is the sender's error, so
it must be a 4xx answer, never a crash. Strict parsing costs a Python call
per value, so it is kept for the payload, after the stamp: before, the
envelope is only read, as an object of three strings
(:func:`read_string_object`), and a gzip body may not inflate past a ratio no
report reaches (:func:`gunzip_capped`).

The report's values must also fit both databases (integers written as
integers within their columns, no NUL in text, histogram indexes in range,
latencies whose sums cannot overflow, endpoints short enough for an index),
and agree with themselves (a record's histogram holds ``count`` requests):
SQLite and PostgreSQL then accept exactly the same reports, and nothing
stored can break a later summary.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from .. import hashcash
from ..histogram import MAX_INDEX, MIN_INDEX
from ..payload import MAX_ENDPOINT_KEY_BYTES, MAX_METRIC_VALUE, metric_value_fits
from ..schema_loader import load_payload_schema
from .tokens import Claims, TokenError, TokenSigner

#: Status of each refusal reason (the protocol's table; ``bad_session`` is the
#: session request's counterpart of ``bad_envelope``).
STATUS: dict[str, int] = {
    "too_large": 413,
    "malformed_json": 400,
    "bad_envelope": 400,
    "bad_session": 400,
    "bad_token": 401,
    "token_expired": 401,
    "bad_stamp": 400,
    "stale_stamp": 400,
    "insufficient_work": 400,
    "stamp_mismatch": 400,
    "invalid_payload": 422,
    "replay": 409,
}
ENVELOPE_FIELDS = frozenset({"token", "stamp", "payload"})
SESSION_FIELDS = frozenset({"deployment_id", "instance_id"})
#: Canonical, lower-case UUIDs only (what clients send; one spelling per id).
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_INT64 = 2**63
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
#: JSON can carry a NUL character only escaped (a raw control character is not
#: JSON), so a body without this text holds none.
_NUL_ESCAPE = re.compile(rb"\\u0000")
_STAMP_REASONS = frozenset({"bad_stamp", "stale_stamp", "insufficient_work", "stamp_mismatch"})
_TOKEN_REASONS = frozenset({"bad_token", "token_expired"})
#: Refusals that say nothing of whether the report is stored: its stamp may be
#: one a client sends again after every answer to it was lost (see
#: :func:`verify_report`).
_LATE_REASONS = frozenset({"bad_token", "token_expired", "stale_stamp", "insufficient_work"})
_DETAIL_LIMIT = 200
#: Gzip members accepted in one body. A client sends exactly one; a few more
#: allow for tools that concatenate compressed files (gzip(1) does), while
#: keeping the work per body linear in its size (see :func:`gunzip_capped`).
MAX_GZIP_MEMBERS = 8
#: How many times its size a gzip body may inflate to, beyond
#: :data:`GZIP_RATIO_SLACK`. Real reports, built by the client and gzipped at
#: its level, inflate at most about 80 times (10,000 records differing only by
#: a number in the route); gzip -9 takes the same reports to about 130. Deflate
#: can reach some 1,000: a body past 256 is built to inflate, not a report.
MAX_GZIP_RATIO = 256
#: Inflated bytes every gzip body may have whatever its ratio: small reports
#: (a startup report, a part of a few records) are never refused for their
#: ratio, and a report too compressible still fits once the client splits it.
GZIP_RATIO_SLACK = 64 * 1024
#: The schema's limit on pairs in one latency histogram (checked by hand).
MAX_HISTOGRAM_PAIRS = 1024
#: The longest latency believed, in seconds (about 32 years; the schema's
#: maximum for ``min``, ``max`` and the percentiles). Not the histogram's
#: ``MAX_TRACKED``: a client clamps only the histogram, while ``sum``, ``min``
#: and ``max`` are exact, and a streamed response may run for days.
MAX_LATENCY_SECONDS = 1e9


def _is_written_integer(checker: Any, instance: Any) -> bool:
    """The schema's ``integer``: a number written as one (``type(x) is int``).

    Why stricter than JSON Schema, which calls ``1e300`` and ``8.0`` integers:
    Python parses those as floats, and a float is not what an integer column
    should receive (PostgreSQL rounds it into a BIGINT or fails on overflow,
    SQLite may keep it as REAL). A client writes its counters as integers.
    ``bool`` is excluded by ``type(x) is int`` already.
    """
    return type(instance) is int


def _ecma_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    """``pattern`` as JSON Schema means it (ECMA-262), where ``$`` matches
    only at the end of the text (see :func:`_ecma_compiled`).

    Why: Python's ``$`` also matches before a final newline, so a metric name
    or a method ending in a newline passed here and was stored apart from the
    real one, where another validator refuses the whole report.
    """
    if not isinstance(instance, str):
        return
    if _ecma_compiled(pattern).search(instance) is None:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache  # the schema's few patterns, each compiled once
def _ecma_compiled(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled to match as ECMA-262 does, for what the schema's
    patterns use (``^``, ``$``, ASCII classes, escaped dots): every ``$``
    anchor (not escaped, not in a class) matches at the very end only, and
    ``\\d`` and ``\\w`` are ASCII's. Not a translator of every ECMA pattern:
    ECMA's ``\\s`` and ``.`` differ from both of Python's, and ``[]`` is
    written differently."""
    out = []
    escaped = in_class = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        elif char == "$" and not in_class:
            out.append(r"\Z")
            continue
        out.append(char)
    return re.compile("".join(out), re.ASCII)


# types-jsonschema leaves extend()'s parameters untyped.
_PayloadValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    validators={"pattern": _ecma_pattern},
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", _is_written_integer
    ),
)
_SCHEMA = load_payload_schema()
_VALIDATOR = _PayloadValidator(_SCHEMA, format_checker=jsonschema.FormatChecker())
#: The schema's bounds on how many items an array or an object holds, checked
#: by hand before the validator (see :func:`_count_problem`): records, metric
#: names of each kind, and withheld traits (unique names of its enum).
MAX_RECORDS: int = _SCHEMA["$defs"]["batch"]["properties"]["records"]["maxItems"]
MAX_METRIC_NAMES: int = _SCHEMA["$defs"]["metrics"]["properties"]["counters"]["maxProperties"]
MAX_WITHHELD: int = len(_SCHEMA["$defs"]["trait_name"]["enum"])


def _written_out(text: str) -> str:
    """``text`` with what UTF-8 cannot hold (a lone surrogate) written as an
    escape (``\\udce9``): what a refusal's detail may echo of the sender's input."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Refusal(Exception):
    """A request the collector will not accept: answered ``status`` with
    ``{"error": reason, "detail": detail}`` and counted under ``reason``."""

    def __init__(self, reason: str, detail: str, status: int | None = None) -> None:
        # A detail echoes the sender's input, which may hold a lone surrogate
        # (a key read again without the strict parser's checks, to say where
        # a number out of range is): written out, so that the answer can be
        # encoded as UTF-8 (it was a 500, and a traceback per copy).
        detail = _written_out(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = STATUS.get(reason, 400) if status is None else status
        #: A stamp refused only for its age, its token's or its bits, though it
        #: binds its token and payload and carries work: if storage has it,
        #: the answer is ``409 replay`` instead (see :func:`verify_report`).
        self.late_stamp: str | None = None
        #: The stamp of a report refused for its payload (check 10), which
        #: holds otherwise: a copy of it gets this refusal again (see
        #: :mod:`.outcomes`).
        self.stamp: str | None = None

    def body(self) -> dict[str, str]:
        return {"error": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class Limits:
    """The knobs of the checks (from :class:`~.settings.CollectorSettings`)."""

    max_body_bytes: int
    bits: int
    stamp_max_age: float
    stamp_max_future: float


@dataclass(frozen=True)
class VerifiedReport:
    """A report that passed checks 1 to 10; storing it is check 11 (replay)."""

    stamp: str
    claims: Claims
    payload: dict[str, Any]


# -- 1 and 2: size and JSON -----------------------------------------------------------


def check_declared_size(content_length: str | None, cap: int) -> None:
    """Refuse before reading when the declared length is already over the cap."""
    if content_length is None:
        return
    try:
        declared = int(content_length)
    except ValueError:
        return  # the server rejects such a header itself; the streamed count still applies
    if declared > cap:
        raise Refusal("too_large", f"the body is {declared} bytes; the limit is {cap}")


def gunzip_capped(data: bytes, cap: int) -> bytes:
    """Decompress gzip ``data`` (at most :data:`MAX_GZIP_MEMBERS` members),
    producing at most ``cap`` bytes, and at most :func:`inflation_limit` of them.

    A gzip bomb (a small body that inflates to gigabytes) is stopped after
    ``cap + 1`` bytes of output, whatever its ratio: zlib is never asked for more.
    A body inflating past :data:`MAX_GZIP_RATIO` times its size (plus the
    slack) is stopped there too, before the cap: a kilobyte that inflates to
    the cap's megabyte costs the collector memory and CPU its sender did not
    pay for, and no client's report compresses that well.
    A body of many members is refused after the limit: each member hands the
    rest of the body back as a new ``unused_data`` copy, so a megabyte of
    empty 20-byte members would cost a quadratic amount of copying (seconds of
    CPU) before the token is even looked at.
    """
    limit = inflation_limit(len(data), cap)
    out = bytearray()
    rest = data
    for _ in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        # max_length >= 1 here (0 would mean unlimited), and at most what zlib
        # takes (a C ssize_t): a larger one was an OverflowError, a 500 for
        # every gzip body, and no body can be that long anyway.
        budget = min(limit + 1 - len(out), sys.maxsize)
        try:
            out += inflater.decompress(rest, budget)
        except zlib.error as error:
            raise Refusal("malformed_json", f"the body is not valid gzip ({error})") from None
        if len(out) > limit:
            raise _inflated_too_much(len(data), limit, cap)
        if not inflater.eof:
            raise Refusal("malformed_json", "the gzip body is truncated")
        rest = inflater.unused_data
        if not rest.strip(b"\0"):  # trailing zero padding, as gzip(1) tolerates
            return bytes(out)
    raise Refusal(
        "malformed_json",
        f"the gzip body has more than {MAX_GZIP_MEMBERS} members; send it as one",
    )


def inflation_limit(compressed: int, cap: int) -> int:
    """The most bytes a gzip body of ``compressed`` bytes may inflate to."""
    return min(cap, compressed * MAX_GZIP_RATIO + GZIP_RATIO_SLACK)


def _inflated_too_much(compressed: int, limit: int, cap: int) -> Refusal:
    """The ``too_large`` refusal for a body past ``limit``, saying which limit.

    Both are a ``413``: a client told so sends its data again in bodies half
    the size, which is what an honest report refused for its ratio needs (the
    slack then takes it), and what an attacker gains nothing from.
    """
    if limit < cap:
        return Refusal(
            "too_large",
            f"the {compressed}-byte gzip body inflates to more than {limit} bytes, over "
            f"{MAX_GZIP_RATIO} times its size: no report compresses that well",
        )
    return Refusal("too_large", f"the body inflates to more than {cap} bytes")


def decode_text(raw: bytes, content_encoding: str | None, cap: int) -> str:
    """Check 1 and the start of 2: the body within ``cap`` before and after
    gunzip, and UTF-8 text."""
    if len(raw) > cap:
        raise Refusal("too_large", f"the body is {len(raw)} bytes; the limit is {cap}")
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        raw = gunzip_capped(raw, cap)
    elif encoding != "identity":
        raise Refusal(
            "malformed_json",
            f"Content-Encoding {_clip(encoding)!r} is not supported (use gzip or none)",
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _malformed(f"not UTF-8 ({error.reason} at byte {error.start})") from None


def _malformed(why: str) -> Refusal:
    return Refusal("malformed_json", f"the body is not JSON: {_clip(why)}")


def parse_json(data: bytes | str) -> Any:
    """Strict JSON: UTF-8, finite numbers, 64-bit integers, unique keys.

    Raises ValueError (also for nesting too deep for the parser).
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"not UTF-8 ({error.reason} at byte {error.start})") from None
    try:
        value = json.loads(
            data,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_int64,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if _SURROGATE_ESCAPE.search(data) is not None:
        # Escaped surrogates are fine in pairs (an emoji); alone they make
        # strings no database or UTF-8 writer accepts.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds an unpaired surrogate escape") from None
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {_clip(text)}")
    return value


def _int64(text: str) -> int:
    value = int(text)
    if not -_INT64 <= value < _INT64:
        raise ValueError(f"integer out of the 64-bit range: {_clip(text)}")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {_clip(key)!r}")
            seen.add(key)
    return result


# -- 2 and 3, cheaply: an object of strings --------------------------------------------

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_INT64_DIGITS = 19
_LITERALS = (("true", "a boolean"), ("false", "a boolean"), ("null", "null"))
_CONSTANTS = ("NaN", "Infinity", "-Infinity")


def read_string_object(text: str, fields: frozenset[str], reason: str) -> dict[str, str]:
    """Checks 2 and 3 of a body that must be one JSON object of exactly
    ``fields``, each a string: the object, or a Refusal (``malformed_json``
    for what is not JSON, ``reason`` for JSON of another shape).

    Why not ``json.loads``, then a look at the result: that parses everything
    before anything is checked, and a megabyte of ``[{},{},...]`` or of
    floats is a million Python objects and a hundred milliseconds of CPU,
    spent for a sender who has shown no token. Read left to right, by the C
    string scanner, a body costs about what reading it does: the first thing
    that is not an envelope's (a ``[`` where ``{`` must be, an unknown key, a
    value not a string) ends the reading, and what follows is never parsed.
    A refusal therefore names the first fault, not necessarily every one.
    The strings are checked as strictly as :func:`parse_json` checks them
    (no duplicate keys, no raw control characters, no unpaired surrogates).
    """
    try:
        return _read_string_object(text, fields, reason)
    except ValueError as error:
        raise _malformed(str(error)) from None


def _read_string_object(text: str, fields: frozenset[str], reason: str) -> dict[str, str]:
    position = _skip(text, 0)
    if not text.startswith("{", position):
        raise Refusal(reason, f"the body must be a JSON object, not {_kind_at(text, position)}")
    found: dict[str, str] = {}
    position = _skip(text, position + 1)
    if not text.startswith("}", position):
        while True:
            position = _skip(text, _read_member(text, position, found, fields, reason))
            if text.startswith("}", position):
                break
            if not text.startswith(",", position):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
            position = _skip(text, position + 1)
    if _skip(text, position + 1) < len(text):
        raise json.JSONDecodeError("Extra data", text, _skip(text, position + 1))
    if set(found) != fields:
        raise Refusal(reason, _fields_detail(set(found), fields))
    return found


def _read_member(
    text: str, position: int, found: dict[str, str], fields: frozenset[str], reason: str
) -> int:
    """Read ``"key": "value"`` at ``position`` into ``found``; the position after it."""
    key, position = _string_at(text, position, "Expecting property name enclosed in quotes")
    if key in found:
        raise ValueError(f"duplicate key {_clip(key)!r}")
    if key not in fields:
        raise Refusal(reason, _fields_detail(set(fields) | {key}, fields))
    position = _skip(text, position)
    if not text.startswith(":", position):
        raise json.JSONDecodeError("Expecting ':' delimiter", text, position)
    position = _skip(text, position + 1)
    if not text.startswith('"', position):
        raise Refusal(reason, f"{key} must be a string, not {_kind_at(text, position)}")
    found[key], position = _string_at(text, position, "Expecting value")
    return position


def _skip(text: str, position: int) -> int:
    """Past the JSON whitespace at ``position``."""
    match = _WHITESPACE.match(text, position)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _string_at(text: str, position: int, expecting: str) -> tuple[str, int]:
    """The JSON string at ``position`` and the position after it.

    Scanned by ``json``'s own (C) scanner, so escapes and control
    characters are judged as ``json.loads`` judges them.
    """
    if not text.startswith('"', position):
        raise json.JSONDecodeError(expecting, text, position)
    # json.decoder has scanstring at run time; typeshed leaves it out.
    value, end = json.decoder.scanstring(text, position + 1, True)  # type: ignore[attr-defined]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds an unpaired surrogate escape") from None
    return value, end


def _kind_at(text: str, position: int) -> str:
    """What JSON value starts at ``position`` ("an array", ...), read no further
    than a number or a literal: a container is named by its first character.

    Raises ValueError where no JSON value starts, and for the numbers
    :func:`parse_json` refuses (not finite, or an integer past 64 bits), so
    that a number is refused for the same reason as before.
    """
    if text.startswith(("{", "[", '"'), position):
        return {"{": "an object", "[": "an array", '"': "a string"}[text[position]]
    for constant in _CONSTANTS:
        if text.startswith(constant, position):
            raise ValueError(f"{constant} is not JSON")
    for literal, kind in _LITERALS:
        if text.startswith(literal, position):
            return kind
    number = _NUMBER.match(text, position)
    if number is None:
        raise json.JSONDecodeError("Expecting value", text, position)
    _check_number(number)
    return "a number"


def _check_number(number: re.Match[str]) -> None:
    """The range checks of :func:`_finite_float` and :func:`_int64`, without
    converting an integer of a million digits (a quadratic ``int`` before
    Python 3.10.7)."""
    written = number.group()
    if number.group(1) is not None or number.group(2) is not None:
        _finite_float(written)
    elif len(written.lstrip("-")) > _INT64_DIGITS:
        raise ValueError(f"integer out of the 64-bit range: {_clip(written)}")
    else:
        _int64(written)


# -- 3: the envelope ------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    token: str
    stamp: str
    payload: str
    #: The report's exact bytes (what the stamp's resource hashes).
    payload_bytes: bytes


def read_envelope(text: str) -> Envelope:
    """Checks 2 and 3: exactly ``token``, ``stamp``, ``payload``, all strings.

    Only the envelope is read here; the payload's JSON is parsed at check 10,
    once the token and the stamp hold (:func:`check_payload`).
    """
    fields = read_string_object(text, ENVELOPE_FIELDS, "bad_envelope")
    payload = fields["payload"]
    return Envelope(fields["token"], fields["stamp"], payload, payload.encode("utf-8"))


# -- 4 and 5: the token ---------------------------------------------------------------


def check_token(signer: TokenSigner, token: str, now: float) -> Claims:
    """Checks 4 and 5: the signature, then the expiry; returns the claims."""
    try:
        claims = signer.verify(token, now=now)
    except TokenError as error:
        reason = _reason(error, _TOKEN_REASONS, "bad_token")
        detail = "the token has expired; get a new one" if reason == "token_expired" else None
        raise Refusal(reason, detail or "the token is not one this collector issued") from None
    return claims


# -- 6 to 9: the stamp ----------------------------------------------------------------


def check_stamp(stamp: str, token: str, payload_bytes: bytes, limits: Limits, now: float) -> None:
    """Checks 6 to 9 (form, date window, work, binding), in :func:`hashcash.verify`'s order."""
    resource = hashcash.payload_resource(token, payload_bytes)
    try:
        hashcash.verify(
            stamp,
            resource,
            limits.bits,
            now,
            max_age=limits.stamp_max_age,
            max_future=limits.stamp_max_future,
        )
    except hashcash.StampError as error:
        reason = _reason(error, _STAMP_REASONS, "bad_stamp")
        raise Refusal(reason, _STAMP_DETAILS[reason].format(bits=limits.bits)) from None


_STAMP_DETAILS = {
    "bad_stamp": "the stamp is not a hashcash v1 stamp: 1:bits:YYMMDDhhmmss:resource::rand:counter",
    "stale_stamp": "the stamp's date is outside the accepted window; mint a fresh one",
    "insufficient_work": "the stamp does not carry {bits} bits of work",
    "stamp_mismatch": "the stamp's resource is not sha256(token + '.' + sha256(payload))",
}


# -- 10: the report -------------------------------------------------------------------


def check_payload(payload_bytes: bytes, claims: Claims) -> dict[str, Any]:
    """Check 10: the report is JSON, valid against the schema, and from the token's owner."""
    try:
        payload = parse_json(payload_bytes)
    except ValueError as error:
        where = _out_of_range_path(payload_bytes) if _about_a_number(error) else None
        if where is not None:
            raise Refusal(
                "invalid_payload", f"{where}: a number out of range ({_clip(str(error))})"
            ) from None
        raise Refusal("invalid_payload", f"the payload is not JSON: {_clip(str(error))}") from None
    too_many = _count_problem(payload)
    if too_many is not None:
        raise Refusal("invalid_payload", too_many)
    try:
        violation = best_match(_VALIDATOR.iter_errors(_without_histograms(payload)))
    except RecursionError:
        raise Refusal("invalid_payload", "the payload is nested too deeply") from None
    if violation is not None:
        where = "/".join(str(part) for part in violation.absolute_path) or "<root>"
        raise Refusal("invalid_payload", f"{where}: {_clip(violation.message)}")
    if _NUL_ESCAPE.search(payload_bytes) is not None:
        where = _nul_path(payload)
        if where is not None:
            raise Refusal(
                "invalid_payload", f"{where}: strings must not contain the NUL character (\\u0000)"
            )
    if payload["part"] >= payload["parts"]:
        raise Refusal("invalid_payload", "part must be less than parts")
    records = payload["batch"]["records"]
    problem = (
        _histogram_count_problem(records)
        or _latency_sum_problem(records)
        or _endpoint_key_problem(payload)
        or _metric_value_problem(payload["metrics"])
    )
    if problem is not None:
        raise Refusal("invalid_payload", problem)
    if (
        payload["deployment_id"] != claims.deployment_id
        or payload["instance_id"] != claims.instance_id
    ):
        raise Refusal(
            "invalid_payload", "deployment_id and instance_id must be the ones the token was for"
        )
    checked: dict[str, Any] = payload  # an object: the schema's root is one
    return checked


def _count_problem(payload: Any) -> str | None:
    """An array or object of the payload holding more items than the schema
    allows (records, withheld traits, metric names), as ``where: why``; None
    if none does.

    Why by hand, before the validator: jsonschema validates every item of an
    array past its ``maxItems`` (every key past ``maxProperties``), and
    ``best_match`` reads every error. A 1 MiB payload of 350,000 empty records
    took 25 s of the collector's CPU to refuse, for one stamp (a third of a
    second of its sender's): four of them held every verification turn for
    two minutes. Anything not where the schema expects it is left to the
    validator.
    """
    if not isinstance(payload, dict):
        return None
    withheld = payload.get("withheld")
    if isinstance(withheld, list) and len(withheld) > MAX_WITHHELD:
        return f"withheld: has more than {MAX_WITHHELD} items, one per trait name at most"
    batch = payload.get("batch")
    records = batch.get("records") if isinstance(batch, dict) else None
    if isinstance(records, list) and len(records) > MAX_RECORDS:
        return f"batch/records: has more than {MAX_RECORDS} records"
    metrics = payload.get("metrics")
    for kind in ("counters", "gauges"):
        names = metrics.get(kind) if isinstance(metrics, dict) else None
        if isinstance(names, dict) and len(names) > MAX_METRIC_NAMES:
            return f"metrics/{kind}: has more than {MAX_METRIC_NAMES} names"
    return None


def _histogram_count_problem(records: list[dict[str, Any]]) -> str | None:
    """A record whose histogram counts do not add up to its ``count``, as
    ``where: why``; None if every one does.

    Why: the dashboard shows ``count`` as the endpoint's calls and reads its
    percentiles off the histogram. A record of 10 calls whose histogram holds
    one would show 10 calls with the percentiles of one, and nothing on the
    page could tell. A client counts every request into both at once (and
    merges both together), so a disagreement is never a rounding, always a
    broken or forged sender. Only called once the schema holds (and the
    histogram pairs, by :func:`_histogram_problem`), so both are integers.
    """
    for position, record in enumerate(records):
        held = sum(count for _, count in record["latency"]["histogram"])
        if held != record["count"]:
            return (
                f"batch/records/{position}: count is {record['count']} but the latency "
                f"histogram's counts add up to {held}; they must be equal"
            )
    return None


def _metric_value_problem(metrics: dict[str, dict[str, Any]]) -> str | None:
    """A metric value past :data:`~reqtelemetry.payload.MAX_METRIC_VALUE`, as
    ``where: why``; None if none is.

    Why: the schema takes any finite number, and the summary adds metric
    values up in a float column: two values near 1.8e308 made that sum
    overflow, an error on PostgreSQL (infinity on SQLite). The client never
    sends more (:mod:`reqtelemetry.metrics` saturates there).
    """
    for kind in ("counters", "gauges"):
        for name, value in metrics.get(kind, {}).items():
            # The client's own rule, so that the two sides cannot drift apart.
            if not metric_value_fits(value, counter=kind == "counters"):
                return (
                    f"metrics/{kind}/{_clip(name)}: {value!r} is past the largest metric "
                    f"value, {MAX_METRIC_VALUE}"
                )
    return None


def _latency_sum_problem(records: list[dict[str, Any]]) -> str | None:
    """A record whose latency ``sum`` exceeds ``count`` times the longest latency, as
    ``where: why``; None if none does.

    Why: the collector adds up ``sum`` across every stored record, and
    PostgreSQL's float8 ``SUM`` fails on overflow, so two records of
    ``1.5e308`` would break the summary and the export for good. Bounded by
    ``count * MAX_LATENCY_SECONDS`` (at most about 9.2e27), no number of
    records can reach float8's 1.8e308.
    """
    for position, record in enumerate(records):
        if record["latency"]["sum"] > record["count"] * MAX_LATENCY_SECONDS:
            return (
                f"batch/records/{position}/latency/sum: must be at most count times "
                f"{MAX_LATENCY_SECONDS:g} seconds"
            )
    return None


def _endpoint_key_problem(payload: dict[str, Any]) -> str | None:
    """A record whose endpoint key is too long for PostgreSQL's index, as
    ``where: why``; None if none is.

    Why: the schema counts characters, an index counts bytes. A route of 512
    four-byte characters with an app name and version of 128 each is valid,
    yet PostgreSQL cannot index it (SQLite can): stored, it failed on every
    attempt, and the client, answered ``503``, retried for ever. Refused here,
    both backends answer alike. Only called once the schema holds, so the
    fields are strings (``app_*`` may also be null or withheld).
    """
    traits = payload["traits"]
    app_bytes = sum(
        len(value.encode("utf-8"))
        for value in (traits.get("app_name"), traits.get("app_version"))
        if isinstance(value, str)
    )
    for position, record in enumerate(payload["batch"]["records"]):
        size = app_bytes + len(record["method"].encode("utf-8"))
        size += len(record["route"].encode("utf-8"))
        if size > MAX_ENDPOINT_KEY_BYTES:
            return (
                f"batch/records/{position}: app_name, method, route and app_version take "
                f"{size} bytes of UTF-8 together; at most {MAX_ENDPOINT_KEY_BYTES} can be "
                "stored (shorten the route, the app name or the app version)"
            )
    return None


def _out_of_range_path(payload_bytes: bytes) -> str | None:
    """Where the first number a 64-bit column cannot hold is, as
    ``metrics/counters/jobs``; None when it cannot be told.

    Why: :func:`parse_json` refuses such a number as it reads, before the
    schema could say where it is, and a maintainer told "the payload is not
    JSON" about a counter of 2^63 looked for a bug in the wrong place. Only
    on that error path: the body is read again, without the range checks.
    """
    try:
        # Integers too long to convert (Python refuses over 4,300 digits) are
        # out of range anyway: read as one that is, without converting them.
        value = json.loads(payload_bytes, parse_constant=float, parse_int=_int_or_too_large)
    except (ValueError, RecursionError):
        return None
    pending: list[tuple[tuple[str, ...], Any]] = [((), value)]
    while pending:  # depth first, in the document's order: the first such number
        path, item = pending.pop()
        if isinstance(item, dict):
            # Written out before clipping (as Refusal writes a detail): a
            # lone surrogate clipped first became 6 characters after it, and
            # the clipped path a detail of 1,175.
            children = [
                ((*path, _clip(_written_out(str(key)), 40)), child) for key, child in item.items()
            ]
            pending.extend(reversed(children))
        elif isinstance(item, list):
            children = [((*path, str(index)), child) for index, child in enumerate(item)]
            pending.extend(reversed(children))
        elif (type(item) is int and not -_INT64 <= item < _INT64) or (
            type(item) is float and not math.isfinite(item)
        ):
            # Clipped whole: as deep as the parser reads, under keys of 40
            # characters, a path was a detail of 37,000, answered and
            # remembered with its stamp (:mod:`.outcomes` counts ~500 bytes).
            return _clip("/".join(path) or "<root>")
    return None


def _about_a_number(error: ValueError) -> bool:
    """Whether ``error`` refused a number (out of range, or too long to convert),
    by its own words, before any text of the payload's that it quotes."""
    words = str(error)
    return words.startswith(("integer out of", "number out of", "Exceeds the limit"))


def _int_or_too_large(text: str) -> int:
    """``text`` as an integer, or one past the 64-bit range where it has too many digits."""
    return _INT64 if len(text.lstrip("-")) > _INT64_DIGITS else int(text)


def _nul_path(value: Any) -> str | None:
    """Where a string (or key) holding a NUL character is, as
    ``traits/app_name``; None when there is none.

    Why refuse them: JSON and SQLite accept NUL in text, PostgreSQL does not.
    Stored there, such a report fails on every attempt, and a client told to
    retry would retry for ever; refused here, both backends answer alike.
    """
    pending: list[tuple[tuple[str, ...], Any]] = [((), value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str):
            if "\0" in item:
                return "/".join(path) or "<root>"
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\0" in key:
                    return "/".join(path) + f"/{_clip(key, 40)!r}"
                pending.append(((*path, key), child))
        elif isinstance(item, list):
            pending.extend(((*path, str(index)), child) for index, child in enumerate(item))
    return None


def _without_histograms(payload: Any) -> Any:
    """The payload with every well-placed latency histogram checked here and
    emptied for the schema validator.

    Why: jsonschema walks each ``[index, count]`` pair through ``prefixItems``,
    which was 85 % of a collector's CPU per report (about 60 ms for 50
    records). The same rules, checked by a plain loop, cost a fraction of that.
    Anything not where the schema expects it is left for the validator to
    refuse with its usual message.
    """
    if not isinstance(payload, dict):
        return payload
    batch = payload.get("batch")
    if not isinstance(batch, dict):
        return payload
    records = batch.get("records")
    if not isinstance(records, list):
        return payload
    light_records = []
    for position, record in enumerate(records):
        latency = record.get("latency") if isinstance(record, dict) else None
        if not isinstance(latency, dict) or "histogram" not in latency:
            light_records.append(record)
            continue
        problem = _histogram_problem(latency["histogram"])
        if problem is not None:
            raise Refusal("invalid_payload", f"batch/records/{position}/latency/histogram{problem}")
        light_records.append({**record, "latency": {**latency, "histogram": []}})
    return {**payload, "batch": {**batch, "records": light_records}}


def _histogram_problem(histogram: Any) -> str | None:
    """What the schema's ``histogram`` rule would refuse, as ``/where: why``; None if fine.

    Bucket indexes must be the histogram's own (``MIN_INDEX`` to ``MAX_INDEX``,
    the buckets from ``min_tracked`` to ``max_tracked``): a client clamps every
    latency into them, and PostgreSQL reads an index as a 32-bit integer, so a
    stored ``[2**40, 1]`` would fail every summary and export from then on.
    """
    if not isinstance(histogram, list):
        return ": must be an array of [bucket index, count] pairs"
    if len(histogram) > MAX_HISTOGRAM_PAIRS:
        return f": has more than {MAX_HISTOGRAM_PAIRS} pairs"
    for position, pair in enumerate(histogram):
        if not (
            type(pair) is list
            and len(pair) == 2
            and type(pair[0]) is int
            and type(pair[1]) is int
            and MIN_INDEX <= pair[0] <= MAX_INDEX
            and pair[1] >= 1
        ):
            return f"/{position}: must be [bucket index {MIN_INDEX} to {MAX_INDEX}, count >= 1]"
    return None


# -- the pipelines --------------------------------------------------------------------


def verify_report(
    raw: bytes,
    content_encoding: str | None,
    *,
    signer: TokenSigner,
    limits: Limits,
    now: float,
    answered: Callable[[str], Refusal | None] | None = None,
) -> VerifiedReport:
    """Checks 1 to 10 of a ``/v1/report`` body, in the protocol's order.

    ``answered`` tells the refusal already given for a stamp (see
    :mod:`.outcomes`): a stamp that holds, once answered, is answered so
    again without check 10, the costly one. A refusal at check 10 carries
    its stamp (``stamp``), for the caller to remember.

    A refusal of the token (4, 5), of the stamp's date (7) or of its work
    (8) carries the stamp in ``late_stamp`` when the stamp holds otherwise
    (see :func:`_worth_looking_up`). Why: a client whose every answer
    was lost sends that report again, with that stamp, at its next flush,
    an hour later by default: long after the stamp's window and often after
    its token, maybe after the difficulty was raised. Whether storage has
    the stamp is what it needs to know (``409 replay``: stored; the
    refusal: not stored, mint a new one); the refusal alone would have it
    send the data again under a new stamp, and counted twice if it was
    stored.
    """
    envelope = read_envelope(decode_text(raw, content_encoding, limits.max_body_bytes))
    try:
        claims = check_token(signer, envelope.token, now)
        check_stamp(envelope.stamp, envelope.token, envelope.payload_bytes, limits, now)
    except Refusal as refusal:
        if refusal.reason in _LATE_REASONS and _worth_looking_up(envelope, limits, now):
            refusal.late_stamp = envelope.stamp
        raise
    if answered is not None:
        already = answered(envelope.stamp)
        if already is not None:
            raise already
    try:
        payload = check_payload(envelope.payload_bytes, claims)
    except Refusal as refusal:
        refusal.stamp = envelope.stamp
        raise
    return VerifiedReport(stamp=envelope.stamp, claims=claims, payload=payload)


def _worth_looking_up(envelope: Envelope, limits: Limits, now: float) -> bool:
    """Whether the envelope's stamp is well formed, binds the envelope's token
    and payload, and carries half the bits of work asked for now, whatever its
    date: a stamp storage may hold, which cost its sender real work.

    Half: a difficulty raised since the stamp was minted must not hide it
    (a step of a few bits is what an operator makes); a stamp with no work
    to speak of must not buy a database lookup.
    """
    resource = hashcash.payload_resource(envelope.token, envelope.payload_bytes)
    try:
        hashcash.verify(
            envelope.stamp, resource, limits.bits // 2, now, max_age=math.inf, max_future=math.inf
        )
    except hashcash.StampError:
        return False
    return True


def verify_session_request(raw: bytes, content_encoding: str | None, cap: int) -> tuple[str, str]:
    """A ``/v1/session`` body: JSON with exactly two lower-case UUIDs.

    Returns ``(deployment_id, instance_id)``.
    """
    body = read_string_object(
        decode_text(raw, content_encoding, cap), SESSION_FIELDS, "bad_session"
    )
    for name in sorted(SESSION_FIELDS):
        if UUID_RE.fullmatch(body[name]) is None:
            raise Refusal("bad_session", f"{name} must be a lower-case canonical UUID string")
    return body["deployment_id"], body["instance_id"]


# -- helpers --------------------------------------------------------------------------


def _reason(error: Exception, known: frozenset[str], default: str) -> str:
    reason = getattr(error, "reason", None)
    if reason is None and error.args:
        reason = error.args[0]
    return reason if isinstance(reason, str) and reason in known else default


def _fields_detail(keys: set[str], expected: frozenset[str]) -> str:
    parts = []
    missing = sorted(expected - keys)
    unknown = sorted(keys - expected)
    if missing:
        parts.append("missing " + ", ".join(missing))
    if unknown:
        shown = ", ".join(_clip(name, 40) for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        parts.append(f"unknown {shown}{more}")
    return f"expected exactly {', '.join(sorted(expected))}: " + "; ".join(parts)


def _clip(text: str, limit: int = _DETAIL_LIMIT) -> str:
    """Details echo the sender's input; keep them short."""
    return text if len(text) <= limit else text[:limit] + "..."
