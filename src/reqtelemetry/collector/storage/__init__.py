"""Choosing a storage backend from one URL, the way the collector is configured.

Why a URL: one setting (``--db`` / an environment variable) must say both which
database and where, and the forms people already know work: SQLAlchemy-style
``sqlite:///relative.db`` and ``sqlite:////absolute.db``, a bare file path, and
libpq's ``postgresql://`` / ``postgres://``. The PostgreSQL driver is imported
only when a PostgreSQL URL is given, so SQLite needs nothing beyond the
standard library.

A bare path that looks like libpq's keyword form (``host=db dbname=x``: it
has ``=`` or whitespace) is refused rather than taken as a file name: taken
as one, every production replica would quietly keep its own SQLite file.

``open_storage`` only opens; call :meth:`Storage.migrate` before use (the
collector does at start). A reader (``reqtelemetry export``) opens with
``read_only=True`` and calls :meth:`SQLStorage.check_schema` instead, so it
neither creates a database nor alters one.
"""

from __future__ import annotations

import functools
import itertools
import re
import sqlite3
import sys
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, urlencode

from .base import CommitUnknown, ReplayError, Storage, StoredReport
from .sql import SchemaMismatch, SQLStorage

__all__ = [
    "ReplayError",
    "SchemaMismatch",
    "Storage",
    "StoredReport",
    "database_errors",
    "describe_database",
    "mask_passwords",
    "open_storage",
    "shown_part",
]

_SQLITE = "sqlite://"
_POSTGRES = ("postgresql://", "postgres://")
#: The start of a libpq keyword string (``host=db dbname=telemetry``), which
#: must not be taken for a SQLite file name; a path with spaces is a path.
_KEYWORD_DSN = re.compile(r"\s*[A-Za-z_]+\s*=")
#: A bare path that starts as a database URL but is none (a slash or a colon
#: short: ``postgresql:/user:pw@db/x``, ``postgres:user@db/x``,
#: ``postgresql//db/x``, ``sqlite:/x.db``). Taken for a file, it made a SQLite
#: database under a directory named after the URL, password and all.
_MISTYPED_URL = re.compile(r"(?:postgres(?:ql)?|sqlite)(?::|//)", re.IGNORECASE)
#: A bare path that starts with a URL's user info, password and all, with no
#: scheme (``app:pw@db:5432/x``), a misspelt one (``postgre:/app:pw@db/x``)
#: or only its slashes (``//app:pw@db/x``): group 1 is all before the password.
_USER_INFO_PATH = re.compile(r"((?:[A-Za-z][A-Za-z0-9+.-]*:)?/*[^/@:\s]*:)[^/@\s]*@")
#: Where a query (``?timeout=30``) or a fragment (``#x``) of a SQLite URL begins.
_SQLITE_QUERY = re.compile(r"[?#]")
#: ``password=...`` in a keyword DSN (or anywhere in a text).
_PASSWORD_PAIR = re.compile(
    r"((?:password|oauth_client_secret|scram_client_key|scram_server_key)\s*=\s*)"
    r"('(?:[^'\\]|\\.)*'|\S*)",
    re.IGNORECASE,
)
#: The parameters of libpq's whose values are secrets: the password, the
#: client key's passphrase, and the OAuth and SCRAM secrets.
_SECRET_PARAMETERS = frozenset(
    {"password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key"}
)
#: A secret's ``name=value`` in a URL's query, up to the next parameter
#: (libpq reads a "#" as part of the value).
_QUERY_PASSWORD = re.compile(
    rf"([?&](?:{'|'.join(sorted(_SECRET_PARAMETERS))})=)([^&]*)", re.IGNORECASE
)
#: The characters at which libpq cuts a URL into its parts (user and password,
#: hosts and ports, database, parameters), and psycopg a list of hosts. Where
#: a password has one unescaped, its pieces land in those parts, and errors
#: quote them: ``failed to resolve host 'Xw7Kv3@db'`` for ``Zq9@Xw7Kv3``.
_URL_CUTS = frozenset("@:/?,[]&=")
#: The characters at which libpq ends a URL's user info (or reads on past
#: it): a password holding one is read apart, its pieces as other parts.
_USER_INFO_CUTS = frozenset("@/?")
#: The shortest piece of a password masked on its own (the whole password is
#: masked however short): shorter ones occur by chance in any message, and
#: masking each of their occurrences would leave no message to read.
_SHORTEST_PIECE = 3
#: A password with more cut positions than this has its pieces taken across
#: at most :data:`_WIDEST_SPAN` of them, not between every pair.
_MOST_BOUNDS_PAIRED = 40
_WIDEST_SPAN = 8


def describe_database(url: str) -> str:
    """``url`` as it may be shown in a message or a log line: any password replaced by ``***``.

    Never raises: it describes URLs that failed, and a failure to describe one
    would replace the operator's one line with a traceback (showing the URL).

    A PostgreSQL URL is shown as libpq reads it (user, hosts and ports,
    database, parameters), each secret masked where libpq finds it: the rest
    stays readable, even where the password is the same word
    (``postgres:postgres@.../postgres``), and an ``@`` in a parameter
    (``user=app@server``) is not taken for the end of a user info. Where
    libpq's reading shows a password cut apart by an unescaped ``@``, ``/``
    or ``?`` (a host ``Xw7Kv3@db``, a port ``Ab3``), each piece of it is
    masked wherever it appears; a URL libpq cannot read at all is shown as
    written up to its first secret (see :func:`_described_as_written`).
    """
    try:
        return _described(str(url))
    except Exception:  # a URL nothing here can read (a lone surrogate): its scheme only
        return str(url).strip().partition("://")[0][:20] + "://***"


def _described(url: str) -> str:
    text = url.strip()
    if not text.lower().startswith(_POSTGRES):
        mistyped = _MISTYPED_URL.match(text)
        if mistyped is not None and not text.lower().startswith(_SQLITE):
            # A URL a slash or a colon short (postgresql:/app:pw@db/x), which
            # open_storage refuses quoting its start only: what follows may
            # well be a password, and --help showed it as written. Also where
            # a "://" follows (in a parameter), which made it a scheme's.
            return mistyped.group() + "***"
        if "://" in text and not text.lower().startswith(_SQLITE):
            # A scheme open_storage refuses (SQLAlchemy's postgresql+psycopg://,
            # mysql://) is still shown, by --help from REQTELEMETRY_COLLECTOR_DB:
            # its user info's password was printed as written.
            return _described_as_written(text, url)
        if _USER_INFO_PATH.match(text):
            # A URL without its scheme (see open_storage): its password hidden.
            return _USER_INFO_PATH.sub(r"\1***@", text, count=1)
        return _PASSWORD_PAIR.sub(r"\1***", text)
    scheme, separator, rest = text.partition("://")
    text = scheme.lower() + separator + rest  # as open_storage hands it to libpq
    try:
        info = _read_by_libpq(text)
    except Exception:  # unreadable to libpq (or no psycopg): shown as written
        return _described_as_written(text, url)
    shown = _libpq_reading(scheme, dict(info), text)
    for secret in _cut_passwords(text, info):
        # As read, and as the description writes it (percent-encoded).
        for form in (secret, quote(secret, safe=""), quote_plus(secret, safe="")):
            shown = shown.replace(form, "***")
    return shown


def _read_by_libpq(text: str) -> dict[str, str]:
    """libpq's own reading of a URL (``conninfo_to_dict``), each value as text;
    raises where libpq cannot read it."""
    from psycopg.conninfo import conninfo_to_dict

    return {key: str(value) for key, value in conninfo_to_dict(text).items()}


def _described_as_written(text: str, url: str) -> str:
    """A URL libpq cannot read, as written up to its first secret (the
    operator has a typo to find): everything from the first secret
    parameter on hidden, the user info's password masked up to the last
    ``@``, and every piece of a password masked wherever it still occurs.

    No reading of a broken URL can be trusted to tell where a password
    ends (an ``@`` in a parameter, a ``#`` or a space in a password): what
    any reading might take for one is hidden.
    """
    scheme, _, rest = text.partition("://")
    # The user info first, to the last "@": a password may hold "?password=".
    head, at, host_on = rest.rpartition("@")
    if at:
        user, has_password, _ = head.partition(":")
        rest = f"{user}{':***' if has_password else ''}@{host_on}"
    secret = _QUERY_PASSWORD.search(rest)
    if secret is not None:
        rest = rest[: secret.start()] + secret.group(1) + "***"
    shown = _masked(f"{scheme}://{rest}", url)
    shown.encode("utf-8")  # a lone surrogate (an undecodable --db byte): raises, shown as ***
    return shown


def _libpq_reading(scheme: str, info: dict[str, str], written: str) -> str:
    """A URL of what libpq read (``conninfo_to_dict``), its secrets masked,
    its parameters in the order ``written`` has them."""
    user = info.pop("user", None)
    has_password = info.pop("password", None) is not None
    hosts = info.pop("host", "")
    ports = info.pop("port", "")
    dbname = info.pop("dbname", "")
    if hosts.startswith("/"):  # a socket directory: a parameter in a URL
        info = {"host": hosts, **info}
        hosts = ""
    host_list = hosts.split(",") if hosts else []
    port_list = ports.split(",") if ports else []
    netloc = ",".join(
        (f"[{host}]" if ":" in host else host)
        + (f":{port_list[index]}" if index < len(port_list) and port_list[index] else "")
        for index, host in enumerate(host_list)
    )
    if not host_list and port_list:  # the default host, or a socket directory's
        if info.get("host", "").startswith("/"):
            info["port"] = ports
        else:
            netloc = f":{ports}"
    # Where the URL holds its password, as libpq reads it: in the user info
    # (before the first "@" that comes before any "/"), in the query, or both.
    rest = written.partition("://")[2]
    end = next((index for index, char in enumerate(rest) if char in "@/"), len(rest))
    in_user_info = end < len(rest) and rest[end] == "@" and ":" in rest[:end]
    after_user_info = rest[end + 1 :] if in_user_info else rest
    in_query = re.search(r"[?&]password=", after_user_info, re.IGNORECASE) is not None
    if user is not None or in_user_info:
        user_text = quote(user, safe="") if user is not None else ""
        netloc = f"{user_text}{':***' if has_password and in_user_info else ''}@{netloc}"
    if has_password and (in_query or not in_user_info):
        info = {"password": "***", **info}

    def place(key: str) -> int:
        found = written.find(f"{key}=")
        return found if found >= 0 else len(written)

    shown = [
        (key, "***" if key.lower() in _SECRET_PARAMETERS else value)
        for key, value in sorted(info.items(), key=lambda item: place(item[0]))
    ]
    query = urlencode(shown, safe="*")
    return f"{scheme}://{netloc}/{quote(dbname, safe='')}" + (f"?{query}" if query else "")


def _cut_passwords(url: str, info: dict[str, str]) -> list[str]:
    """Pieces of each password libpq read cut apart by an unescaped ``@``, ``/``
    or ``?``, longest first: what must not show where libpq put them.

    libpq's own password, when it has one of those characters, and the
    user info's password as the text reads up to its last ``@``, when
    libpq's reading shows signs of one cut apart: a port that is no number,
    an ``@`` in a host or the database name (``app:Ab3/x9@host/db`` is host
    ``app``, port ``Ab3``, database ``x9@host/db`` to libpq).
    """
    candidates = [info.get("password", "")]
    suspicious = (
        any(char in _USER_INFO_CUTS for char in candidates[0])
        or not all(port.isdigit() for port in info.get("port", "").split(",") if port)
        or "@" in info.get("host", "")
        or "@" in info.get("dbname", "")
        # A password's tail read as a parameter: "...@host/db" in its value
        # (an "@" of a parameter alone, as user=app@server, is no sign).
        or any("/" in value.partition("@")[2] for value in info.values())
    )
    if suspicious:
        candidates.extend(_passwords(url))
    return _forms_of(
        password
        for password in candidates
        if any(char in _USER_INFO_CUTS for char in unquote(password))
    )


def mask_passwords(message: str, url: str) -> str:
    """``message`` (a driver's error about ``url``) with every password of ``url`` masked.

    Why: libpq quotes what it cannot parse, password included (a ``%`` not
    followed by two hex digits: ``invalid percent-encoded token: "S3cr%tPW"``,
    or the whole URL after an unclosed ``[``), and the CLI prints its message.
    A password with an unescaped ``@``, ``/``, ``?`` or ``&`` is cut by libpq
    into pieces it reads as a host, a port or a parameter, and quotes those:
    every stretch of a password between two such characters is masked too
    (:func:`_password_pieces`). Each is masked as written and percent-decoded,
    wherever it occurs; a password short enough to occur by chance masks more
    than itself, which costs readability, never the secret.
    """
    return _PASSWORD_PAIR.sub(r"\1***", _masked(message, url))


def _masked(text: str, url: str) -> str:
    """``text`` with every password of ``url``, and each piece of one, replaced by ``***``."""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def _secrets(url: str) -> list[str]:
    """What a message about ``url`` must not show (see :func:`_forms_of`)."""
    return _forms_of(_passwords(url))


def _forms_of(passwords: Iterable[str]) -> list[str]:
    """Each of ``passwords`` and each piece of one libpq may quote, longest
    first (a piece is part of a longer one): as written, percent-decoded (libpq
    decodes what it reads), and without the spaces around it (libpq drops
    those around a host or a port); never the empty string."""
    found: set[str] = set()
    for password in passwords:
        for text in (password, *_password_pieces(password)):
            found.update((text, unquote(text)))
        found.update(_password_pieces(unquote(password)))
    found.update([text.strip() for text in found if len(text.strip()) >= _SHORTEST_PIECE])
    found.discard("")
    return sorted(found, key=len, reverse=True)


def _password_pieces(password: str) -> set[str]:
    """Every stretch of ``password`` from one of :data:`_URL_CUTS` (or its
    start) to another (or its end), at least :data:`_SHORTEST_PIECE` long.

    Why every stretch and not just what lies between two neighbouring cuts:
    libpq cuts at some of them only (the first "@" ends the user info, and a
    host runs on over a later "@"), so a part it quotes may span several.
    """
    bounds = [-1, *(i for i, char in enumerate(password) if char in _URL_CUTS), len(password)]
    if len(bounds) <= _MOST_BOUNDS_PAIRED:
        spans: Iterable[tuple[int, int]] = itertools.combinations(bounds, 2)
    else:
        # Every pair of a long password full of cuts made millions of pieces
        # (2,000 characters: 490,000 of them, 778 MiB, a second a message):
        # only pieces across at most eight cuts, whose own pieces cover the rest.
        spans = (
            (start, end)
            for index, start in enumerate(bounds)
            for end in bounds[index + 1 : index + 1 + _WIDEST_SPAN]
        )
    return {password[start + 1 : end] for start, end in spans if end - start - 1 >= _SHORTEST_PIECE}


def shown_part(value: str | None, url: str) -> str | None:
    """``value``, a part of ``url`` as libpq read it (a host, a database
    name), or ``***`` where it holds a piece of a password libpq cut apart.

    Why only those pieces (see :func:`_cut_passwords`): a password without an
    unescaped "@", "/" or "?" is never read as a host or a database, and
    masking its word wherever it occurs hid ``dbname='postgres'`` behind
    ``postgres:postgres@``.
    """
    if value is None:
        return None
    try:
        info = _read_by_libpq(url.strip())
    except Exception:  # unreadable: no part of it is shown at all
        return "***"
    for secret in _cut_passwords(url.strip(), info):
        if secret in value:
            return "***"
    return value


def _passwords(url: str) -> list[str]:
    """Every password ``url`` holds (user info, ``password=`` in its query or a
    keyword string), as written."""
    text = url.strip()
    written: list[str] = []
    if text.lower().startswith(_POSTGRES):
        userinfo, _ = _split_user_info(text.partition("://")[2])
        _, has_password, password = (userinfo or "").partition(":")
        if has_password:
            written.append(password)
        written.extend(_query_passwords(text))
        return written
    for match in _PASSWORD_PAIR.finditer(text):  # a keyword string, refused but quoted
        value = match.group(2)
        written.extend((value, value.strip("'")))
    return written


def _split_user_info(rest: str) -> tuple[str | None, str]:
    """``rest`` (a PostgreSQL URL after its ``://``) as its user info (None
    without one) and what follows the ``@`` after it.

    Cut on the raw text, at the last "@": a password with an unescaped "/",
    "?" or "#" (base64 makes them) would end a parsed netloc early and be
    shown whole. But not past a ``password=`` of the query, whose value may
    have an "@" of its own: the user info would then have taken in the host,
    the database and the start of that password, and shown the rest of it.
    """
    query_password = _QUERY_PASSWORD.search(rest)
    head = rest[: query_password.start()] if query_password else rest
    userinfo, at, _ = head.rpartition("@")
    if not at:
        return None, rest
    return userinfo, rest[len(userinfo) + 1 :]


def _query_passwords(text: str) -> list[str]:
    """Each ``password=`` value of ``text``'s query as written, with any
    parameters after it that libpq has no name for.

    Why those: a raw "&" in the password ended its value there, and libpq
    quotes the rest back as a parameter it does not know (``invalid URI
    query parameter: "Xw7"`` for ``password=Zq9&Xw7``).
    """
    known = _libpq_parameters()
    values: list[str] = []
    for match in _QUERY_PASSWORD.finditer(text):
        value = match.group(2)
        for parameter in text[match.end() :].split("&")[1:]:
            if parameter.partition("=")[0] in known:
                break
            value += "&" + parameter
        values.append(value)
    return values


@functools.cache
def _libpq_parameters() -> frozenset[str]:
    """The parameter names libpq takes in a URL's query (``ssl`` too, which it
    reads as ``sslmode``). None without psycopg: then every parameter after a
    password is taken for a piece of it, which hides too much, never too little.
    """
    try:
        from psycopg.pq import Conninfo
    except ImportError:
        return frozenset()
    return frozenset(option.keyword.decode() for option in Conninfo.get_defaults()) | {"ssl"}


def _refuse_sqlite_query(url: str) -> None:
    """A clear :class:`ValueError` for a ``sqlite://`` URL with a query or a fragment.

    Why: SQLAlchemy reads ``sqlite:///t.db?timeout=30`` as a file and an
    option; taken here as a path, it made a file named ``t.db?timeout=30``,
    the option silently lost and the data elsewhere than the operator looks.
    Only the URL before the ``?`` or ``#`` is quoted back: a query may hold a
    key or a password.
    """
    cut = _SQLITE_QUERY.search(url)
    if cut is None:
        return
    raise ValueError(
        f"SQLite URLs take no query or fragment: {url[: cut.start()]!r} is followed by "
        f"{cut.group()!r}...; write sqlite:///path.db alone (a SQLite file whose name "
        "has '?' or '#': give its path without sqlite:///, as ./name.db)"
    )


def database_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "this database cannot be used" (not a bug here):
    the drivers' own errors, a missing file, :class:`SchemaMismatch`, and a
    commit whose answer was lost (:class:`~.base.CommitUnknown`)."""
    errors: list[type[BaseException]] = [sqlite3.Error, OSError, SchemaMismatch, CommitUnknown]
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None:
        errors.append(psycopg.Error)
    return tuple(errors)


def open_storage(url: str, *, read_only: bool = False) -> SQLStorage:
    """The storage ``url`` names; a clear :class:`ValueError` for anything else.

    ``read_only``: open an existing database only (a missing SQLite file is a
    :class:`FileNotFoundError`), in a mode where the database refuses writes.

    - ``sqlite:///data/collector.db``: a path relative to the working directory
    - ``sqlite:////var/lib/reqtelemetry/collector.db``: an absolute path
    - ``sqlite:///:memory:`` or ``:memory:``: an in-memory database (tests)
    - no ``?query`` or ``#fragment`` on a ``sqlite://`` URL: refused, not taken as the name
    - ``data/collector.db``: a bare path is a SQLite file
    - ``postgresql://user:password@host:5432/dbname`` (or ``postgres://``)

    Nothing connects here for PostgreSQL (the first use does); a SQLite file
    is opened at once.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("the database URL is empty")
    url = url.strip()
    lowered = url.lower()
    if lowered.startswith(_POSTGRES):
        from .postgres import PostgresStorage

        # libpq takes only a lower-case scheme for a URL: POSTGRESQL://...
        # was read as a keyword string, and its error quoted the password.
        scheme, separator, rest = url.partition("://")
        return PostgresStorage(scheme.lower() + separator + rest, read_only=read_only)
    if lowered.startswith(_SQLITE):
        rest = url[len(_SQLITE) :]
        if not rest.startswith("/") or len(rest) < 2:
            raise ValueError(
                f"cannot read SQLite URL {url!r}: use sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db"
            )
        _refuse_sqlite_query(url)
        from .sqlite import SQLiteStorage

        return SQLiteStorage(rest[1:], read_only=read_only)
    mistyped = _MISTYPED_URL.match(url)
    if mistyped:
        # Only its start is quoted back: what follows may well be a password.
        # Before the "://" below, which a parameter may hold (?x=file://...):
        # all before it was quoted as the scheme, password and all.
        raise ValueError(
            f"the database URL starts with {mistyped.group()!r} but is no URL: write "
            "postgresql://user:password@host/dbname or sqlite:///path.db (a SQLite "
            "file whose name starts so: ./that/path.db)"
        )
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}: use sqlite:///path.db, a file path, "
            "or postgresql://user:password@host/dbname"
        )
    if _USER_INFO_PATH.match(url):
        # Taken for a file, it made a SQLite database under a directory named
        # after the URL, and the collector's start line showed its password.
        raise ValueError(
            f"{describe_database(url)!r} looks like a database URL without its scheme "
            "(user:password@host): write postgresql://user:password@host/dbname (a SQLite "
            "file whose name has ':' and '@': sqlite:///that/path.db)"
        )
    if _KEYWORD_DSN.match(url):
        raise ValueError(
            f"{describe_database(url)!r} looks like a libpq connection string, not a file "
            "path: write it as a URL, postgresql://user@host/dbname (a SQLite file whose "
            "name has '=' or spaces: sqlite:///that/path.db)"
        )
    from .sqlite import SQLiteStorage

    return SQLiteStorage(url, read_only=read_only)
