"""Salted hashing (ORY's scheme) of path segments and query strings."""

from __future__ import annotations

import copy
import hashlib
import pickle
import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reqtelemetry import Anonymizer, hash_value
from reqtelemetry.anonymize import MAX_QUERY_FIELDS, MAX_QUERY_PAIRS, new_salt
from reqtelemetry.payload import MAX_ROUTE_LENGTH, truncate_route

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def test_ory_test_vector():
    assert (
        hash_value("foo", "ABCDEFGH")
        == "0301424a80469ad03a208de925563a97ec6ab2f9dc7a2ad71b2ded85a7f7a7af"
    )


def test_hash_is_sha256_of_value_bar_salt():
    assert hash_value("42", "s") == hashlib.sha256(b"42|s").hexdigest()
    assert Anonymizer(salt="ABCDEFGH").hash("foo") == hash_value("foo", "ABCDEFGH")


def test_a_lone_surrogate_is_hashed_without_an_error_holding_the_salt():
    """A path decoded with ``surrogateescape`` may hold a lone surrogate:
    strict UTF-8 raised a ``UnicodeEncodeError`` whose args held the whole
    ``value|salt``, for any log or error reporter to write out. Valid text
    hashes as before."""
    anonymizer = Anonymizer(salt="salt-canary-8f3a")
    key = anonymizer.path("/files/report\udcff.pdf")
    assert key == f"/{hash_value('files', 'salt-canary-8f3a')}/" + hash_value(
        "report\udcff.pdf", "salt-canary-8f3a"
    )
    assert (
        hash_value("report\udcff.pdf", "s")
        == hashlib.sha256("report\udcff.pdf|s".encode("utf-8", "surrogatepass")).hexdigest()
    )
    assert hash_value("café", "s") == hashlib.sha256("café|s".encode()).hexdigest()


def test_allowed_segments_kept_others_hashed():
    anonymizer = Anonymizer(salt="salt", allowed_segments=["api", "users"])
    assert anonymizer.path("/api/users/42") == f"/api/users/{hash_value('42', 'salt')}"
    assert anonymizer.path("/api/Users/42") == (
        f"/api/{hash_value('Users', 'salt')}/{hash_value('42', 'salt')}"
    )  # case-sensitive
    assert anonymizer.path("/") == "/"
    assert anonymizer.path("/api/") == "/api/"
    assert anonymizer.path("//api") == "//api"
    assert anonymizer.path("api") == "/api"


def test_no_allowed_segments_hashes_every_segment():
    anonymizer = Anonymizer(salt="salt")
    result = anonymizer.path("/users/alice@example.com/profile")
    segments = result.split("/")
    assert segments[0] == ""
    assert len(segments) == 4
    assert all(HEX64.match(segment) for segment in segments[1:])
    assert "alice" not in result and "users" not in result and "profile" not in result


def test_same_value_same_hash_within_instance():
    anonymizer = Anonymizer()
    assert anonymizer.path("/a/42") == anonymizer.path("/a/42")
    assert anonymizer.path("/a/42") != anonymizer.path("/a/43")


def test_query_values_always_hashed_keys_only_when_allowed():
    anonymizer = Anonymizer(salt="s", allowed_query_keys=["page", "q"])
    result = anonymizer.query("q=secret&page=2&token=abc&email=a%40b.c")
    assert result == f"page={hash_value('2', 's')}&q={hash_value('secret', 's')}"
    assert "secret" not in result and "token" not in result and "email" not in result


def test_query_without_allowed_keys_is_empty():
    anonymizer = Anonymizer(salt="s")
    assert anonymizer.query("q=secret&page=2") == ""
    assert anonymizer.url("/x", "q=secret") == f"/{hash_value('x', 's')}"


def test_query_blank_values_and_repeated_keys():
    anonymizer = Anonymizer(salt="s", allowed_query_keys=["a"])
    empty = hash_value("", "s")
    assert anonymizer.query("a=&a=1") == "&".join(
        sorted([f"a={empty}", f"a={hash_value('1', 's')}"])
    )


def test_url_appends_kept_query():
    anonymizer = Anonymizer(salt="s", allowed_segments=["search"], allowed_query_keys=["q"])
    assert anonymizer.url("/search", "q=cats&sid=123") == f"/search?q={hash_value('cats', 's')}"
    assert anonymizer.url("/search") == "/search"
    assert anonymizer.url("/search", "") == "/search"


def test_salt_never_in_repr_or_output():
    salt = new_salt()
    anonymizer = Anonymizer(salt=salt, allowed_segments=["api"], allowed_query_keys=["q"])
    outputs = [
        repr(anonymizer),
        str(anonymizer),
        anonymizer.path(f"/api/{salt}"),
        anonymizer.query(f"q={salt}"),
        anonymizer.url(f"/api/{salt}", f"q={salt}&{salt}=1"),
    ]
    for output in outputs:
        assert salt not in output
    assert "api" in repr(anonymizer) and "q" in repr(anonymizer)


def test_telemetry_repr_does_not_show_salt(telemetry):
    salt = telemetry.anonymizer._salt
    assert salt not in repr(telemetry)
    assert salt not in repr(telemetry.anonymizer)
    assert salt not in repr(telemetry.config)


def test_two_anonymizers_have_different_salts():
    first, second = Anonymizer(), Anonymizer()
    assert first._salt != second._salt
    assert first.path("/42") != second.path("/42")
    for anonymizer in (first, second):
        assert uuid.UUID(anonymizer._salt).version == 4


def test_two_telemetry_instances_have_different_salts(make_telemetry):
    assert make_telemetry().anonymizer._salt != make_telemetry().anonymizer._salt


def test_unrouted_paths_are_hashed_once_and_the_cache_stays_bounded(make_telemetry):
    from reqtelemetry.telemetry import ANONYMIZED_CACHE_SIZE

    telemetry = make_telemetry()
    first = telemetry.route_for_unrouted("/users/42", matched=True)
    assert first == telemetry.anonymizer.path("/users/42")
    assert telemetry.route_for_unrouted("/users/42", matched=True) is first  # from the cache
    for i in range(ANONYMIZED_CACHE_SIZE + 10):
        telemetry.route_for_unrouted(f"/users/{i}", matched=True)
    assert len(telemetry._anonymized) <= ANONYMIZED_CACHE_SIZE
    assert telemetry.route_for_unrouted("/users/42", matched=True) == first  # same answer


def test_long_unrouted_paths_are_hashed_but_not_cached(make_telemetry):
    from reqtelemetry.telemetry import ANONYMIZED_CACHE_MAX_LENGTH

    telemetry = make_telemetry(record_query=True, allowed_query_keys=["q"])
    long_path = "/files/" + "a" * 8192
    route = telemetry.route_for_unrouted(long_path, matched=True)
    assert route == telemetry.anonymizer.path(long_path)
    assert telemetry.route_for_unrouted(long_path, matched=True) == route  # same answer
    long_query = "q=" + "b" * ANONYMIZED_CACHE_MAX_LENGTH
    with_query = telemetry.route_for_unrouted("/files/x", long_query, matched=True)
    assert with_query == telemetry.anonymizer.url("/files/x", long_query)
    assert telemetry._anonymized == {}  # neither is kept
    telemetry.route_for_unrouted("/files/short", matched=True)
    assert list(telemetry._anonymized) == [("/files/short", "")]


def test_unrouted_paths_outside_ascii_are_hashed_each_time_not_cached(make_telemetry):
    """The bound is in bytes: a server decodes a percent-encoded emoji into a
    character CPython stores at 4 bytes, and 4096 paths of 256 of them took
    the cache about 3 MiB past its bound. Outside ASCII, path or query, a
    request is hashed each time, as alike."""
    telemetry = make_telemetry(record_query=True, allowed_query_keys=["q"])
    for path, query in (("/\N{PILE OF POO}", ""), ("/caf\u00e9", ""), ("/a", "q=caf\u00c3\u00a9")):
        key = telemetry.route_for_unrouted(path, query, matched=True)
        anonymizer = telemetry.anonymizer
        assert key == (anonymizer.url(path, query) if query else anonymizer.path(path))
        assert telemetry.route_for_unrouted(path, query, matched=True) == key
    assert telemetry._anonymized == {}
    telemetry.route_for_unrouted("/cafe", "q=x", matched=True)
    assert list(telemetry._anonymized) == [("/cafe", "q=x")]


def test_the_salt_cannot_be_pickled_or_copied_out(telemetry):
    # Pickled, the salt would be written out of the process (a cache, a queue).
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="salt never leaves"):
            attempt(telemetry.anonymizer)


def _every_segment_hashed_then_cut(anonymizer: Anonymizer, path: str, allowed: set[str]) -> str:
    """What ``Anonymizer.path`` gave before it stopped at the cut: every segment
    hashed, joined, then cut to the wire format's limit."""
    joined = "/".join(
        segment if not segment or segment in allowed else anonymizer.hash(segment)
        for segment in path.split("/")
    )
    return truncate_route(joined if joined.startswith("/") else "/" + joined)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from(["", "api", "v1", "x"]), st.text(max_size=12)),
        max_size=40,
    ),
    st.booleans(),
)
def test_a_long_path_gives_the_key_as_if_every_segment_were_hashed(segments, leading_slash):
    allowed = {"api", "v1"}
    anonymizer = Anonymizer(salt="s", allowed_segments=allowed)
    path = ("/" if leading_slash else "") + "/".join(segments)
    assert anonymizer.path(path) == _every_segment_hashed_then_cut(anonymizer, path, allowed)


@pytest.mark.parametrize(
    "path",
    ["/a" * 30_000, "/" * 60_000, "/api" * 20_000 + "/x", "x/" * 30_000],
    ids=["short segments", "empty segments", "allowed segments", "no leading slash"],
)
def test_a_long_path_costs_only_the_hashes_its_key_can_hold(path, monkeypatch):
    """Any client can send a 60 KB path: hashing each of its segments took a
    route-less app's event loop 13 ms a request. Only what the cut keeps is
    hashed now, and the key is the same."""
    anonymizer = Anonymizer(salt="s", allowed_segments=["api"])
    expected = _every_segment_hashed_then_cut(anonymizer, path, {"api"})
    hashed = []
    hash_one = anonymizer.hash
    monkeypatch.setattr(
        Anonymizer, "hash", lambda self, value: hashed.append(value) or hash_one(value)
    )
    assert anonymizer.path(path) == expected
    assert len(hashed) <= MAX_ROUTE_LENGTH // 65 + 2


def test_a_long_query_costs_only_the_hashes_its_key_can_hold(monkeypatch):
    anonymizer = Anonymizer(salt="s", allowed_query_keys=["q"])
    hashed = []
    hash_one = anonymizer.hash
    monkeypatch.setattr(
        Anonymizer, "hash", lambda self, value: hashed.append(value) or hash_one(value)
    )
    kept = anonymizer.query("&".join(f"q={n}" for n in range(20_000)))
    assert len(hashed) == MAX_QUERY_PAIRS
    assert kept.count("q=") == MAX_QUERY_PAIRS
    # Fields past the first MAX_QUERY_FIELDS are not read at all.
    assert anonymizer.query("junk=1&" * MAX_QUERY_FIELDS + "q=late") == ""
