"""Salted hashing of path segments and query values.

Used only where no route template is known (an app without routing
information). The scheme is ORY's, exactly: ``sha256(f"{value}|{salt}")`` in
hex, with a random UUIDv4 salt made per instance. The salt never leaves the
process, so a hash cannot be reversed by trying likely values, yet the same
value hashes the same way for the life of the instance, which keeps
aggregation meaningful.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl

from .payload import MAX_ROUTE_LENGTH, truncate_route

#: The most allowed query pairs hashed into a key: more than fit in one.
MAX_QUERY_PAIRS = MAX_ROUTE_LENGTH // 8
#: The most fields of a query string read: the rest of it is not looked at.
MAX_QUERY_FIELDS = 1024


def hash_value(value: str, salt: str) -> str:
    """ORY's hash: ``sha256("value|salt")`` as 64 hex digits.

    ``surrogatepass``: a lone surrogate (a path decoded with
    ``surrogateescape``) made ``encode`` raise a ``UnicodeEncodeError`` whose
    args hold the whole ``value|salt``, for any log or error reporter to
    write out. Valid text encodes as before, so every hash stays the same.
    """
    return hashlib.sha256(f"{value}|{salt}".encode("utf-8", "surrogatepass")).hexdigest()


def new_salt() -> str:
    """A fresh random salt (a UUIDv4), one per instance."""
    return str(uuid.uuid4())


class Anonymizer:
    """Turns raw paths and query strings into identifier-free keys.

    Path segments on ``allowed_segments`` are kept as they are (compared
    case-sensitively); every other non-empty segment is hashed. Query values are
    always hashed; query keys are kept only when on ``allowed_query_keys`` and
    dropped otherwise, so a key cannot smuggle an identifier either.
    """

    __slots__ = ("_allowed_query_keys", "_allowed_segments", "_salt")

    def __init__(
        self,
        salt: str | None = None,
        allowed_segments: Iterable[str] = (),
        allowed_query_keys: Iterable[str] = (),
    ) -> None:
        self._salt = salt if salt is not None else new_salt()
        self._allowed_segments = frozenset(allowed_segments)
        self._allowed_query_keys = frozenset(allowed_query_keys)

    def __repr__(self) -> str:  # never show the salt, not even in a traceback
        return (
            f"Anonymizer(allowed_segments={sorted(self._allowed_segments)!r}, "
            f"allowed_query_keys={sorted(self._allowed_query_keys)!r})"
        )

    def __reduce__(self) -> Any:
        # Pickled, the salt would be written out of the process (a cache, a
        # queue, a crash dump): it must never leave it.
        raise TypeError("an Anonymizer cannot be pickled or copied: its salt never leaves")

    def hash(self, value: str) -> str:
        return hash_value(value, self._salt)

    def path(self, path: str) -> str:
        """``/api/users/42`` → ``/api/users/<hash of 42>`` (``api``, ``users`` allowed).

        Deep paths would pass the wire format's limit (65 characters a hashed
        segment): they are cut here, so that they also share a key. Only the
        segments the cut keeps are hashed: hashing them all cost a route-less
        app 13 ms of its event loop for a 60 KB path of short segments, which
        any client can send (a transparency review, under uvicorn), against
        microseconds now. The key is the same as if all were hashed and cut.
        """
        allowed = self._allowed_segments
        segments = []
        length = 0
        # Each segment adds at least its "/": past MAX_ROUTE_LENGTH + 2 of them
        # the cut is certain, so the path is not split further than that.
        for segment in path.split("/", MAX_ROUTE_LENGTH + 2):
            if segment and segment not in allowed:
                segment = self.hash(segment)
            segments.append(segment)
            length += len(segment) + 1
            if length > MAX_ROUTE_LENGTH + 2:
                break  # longer than the limit, with or without a leading "/": it is cut
        anonymized = "/".join(segments)
        if not anonymized.startswith("/"):
            anonymized = "/" + anonymized
        return truncate_route(anonymized)

    def query(self, query: str) -> str:
        """``q=secret&page=2&token=x`` → ``page=<hash>&q=<hash>`` (only allowed keys, sorted).

        Only the first :data:`MAX_QUERY_FIELDS` fields are read, and of the
        allowed ones the first :data:`MAX_QUERY_PAIRS` hashed (then sorted;
        a key holds about 7 of them before its cut): any client could
        otherwise buy a parse of each of thousands of fields, and a hash of
        each allowed one, with every request. A query past either limit keeps
        a key of its own, made of its first pairs.
        """
        allowed = self._allowed_query_keys
        fields = "&".join(query.split("&", MAX_QUERY_FIELDS)[:MAX_QUERY_FIELDS])
        found = (pair for pair in parse_qsl(fields, keep_blank_values=True) if pair[0] in allowed)
        kept = sorted((key, self.hash(value)) for key, value in islice(found, MAX_QUERY_PAIRS))
        return "&".join(f"{key}={value}" for key, value in kept)

    def url(self, path: str, query: str = "") -> str:
        """The anonymized path, with the anonymized query appended when it keeps anything."""
        anonymized = self.path(path)
        if query:
            kept = self.query(query)
            if kept:
                return truncate_route(f"{anonymized}?{kept}")
        return anonymized
