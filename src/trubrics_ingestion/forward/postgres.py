"""PostgreSQL sink: binary COPY, idempotent by the event id, with a versioned schema.

Why binary COPY built here rather than psycopg's ``write_row`` or a text COPY: the
timestamps are integers (microseconds) and PostgreSQL's binary ``timestamptz`` is exactly
that (shifted to 2000-01-01), so they travel without any formatting or parsing and without
losing a microsecond, and the properties go as the client's JSON text, which jsonb parses
anyway (whitespace and all); the encoding is a few C calls per column (``encode_copy``),
and the server (jsonb parsing, three indexes) is the bottleneck.

Idempotence: a batch is normally COPYed straight into ``events`` (fastest). If that hits
an id already there (a batch redelivered after a crash or an outage), the transaction is
rolled back and the batch goes through a temp staging table and
``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING``; staging stays in use until a batch
turns out to be entirely new again. Either way a batch is one transaction: all of it or
none of it is written.

NUL: PostgreSQL's ``text`` cannot hold U+0000 and ``jsonb`` refuses ``\\u0000``, which
would reject the batch forever and wedge the forwarder. For this engine only, every NUL
in a string (and in property keys and values) becomes U+FFFD, the replacement character;
the node's store and the other engines keep the original.
"""

from __future__ import annotations

import contextlib
import re
import struct
from collections.abc import Callable
from itertools import chain, repeat
from operator import sub
from typing import Any

import msgspec
import psycopg
from psycopg import errors

from .. import pg
from ..urls import SinkUrl
from .sink import Columns, micros

STATEMENT_TIMEOUT_MS = 120_000  # a batch that takes longer is retried (idempotently)
# Bumped when MIGRATIONS grows; the row lives in trubrics_schema(component='events').
MIGRATIONS = (
    """
    CREATE TABLE events (
        id uuid PRIMARY KEY,
        project text NOT NULL,
        user_id text NOT NULL,
        event text NOT NULL,
        timestamp timestamptz NOT NULL,
        thread_id text,
        properties jsonb NOT NULL,
        received_at timestamptz NOT NULL,
        source text NOT NULL
    );
    CREATE INDEX events_by_time ON events (project, timestamp);
    CREATE INDEX events_by_thread ON events (project, thread_id) WHERE thread_id IS NOT NULL;
    """,
    # Byte order for the indexed text columns: equality is unchanged, and every index update
    # no longer goes through the locale's collation (measured: about a fifth of the server's
    # CPU per row). Rebuilds both indexes, under a lock, once.
    """
    ALTER TABLE events
        ALTER COLUMN project TYPE text COLLATE "C",
        ALTER COLUMN thread_id TYPE text COLLATE "C";
    """,
    # Time ranges through a BRIN index instead of a B-tree on (project, timestamp): events
    # arrive roughly in time order, so block ranges summarise them well, and keeping a BRIN
    # index costs next to nothing per row where the B-tree cost about 2.5 µs of the
    # server's ~14 (measured with bench/forward.py's rows). Queries by time still use it;
    # by project alone they scan, which analytics over all events does anyway. Built
    # before the old one is dropped: readers are locked out only for the drop, not the
    # build; autosummarize keeps the newest block ranges indexed without a VACUUM.
    """
    CREATE INDEX events_by_time_brin ON events USING brin (timestamp)
        WITH (autosummarize = on);
    DROP INDEX IF EXISTS events_by_time;
    ALTER INDEX events_by_time_brin RENAME TO events_by_time;
    """,
)
_INSERT_COLUMNS = (
    "id, project, user_id, event, timestamp, thread_id, properties, received_at, source"
)
_STAGE = "trubrics_stage"
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix microseconds
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
_NULL = struct.pack(">i", -1)
# A tuple's start: its field count and the uuid's length (the uuid's 16 bytes follow).
_START = struct.pack(">hi", 9, 16).hex()
_TUPLE_STARTS = re.compile(b".{%d}" % (len(_START) // 2 + 16), re.DOTALL).findall
_LENGTH = struct.Struct(">i").pack
_TIMESTAMP = struct.Struct(">iq").pack  # length 8, microseconds since 2000-01-01
_JSONB_HEAD = struct.Struct(">ib").pack  # length (the document's + 1), jsonb's version
_JSONB_VERSION = 1
_NUL, _REPLACEMENT = "\x00", "\ufffd"
_ESCAPED_NUL = b"\\u0000"
_encode_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode


class PostgresSink:
    """Writes events into ``events`` of one PostgreSQL database (psycopg 3, autocommit)."""

    def __init__(self, url: SinkUrl) -> None:
        self._url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._direct = True  # COPY straight into events until a batch meets a known id

    @property
    def name(self) -> str:
        return self._url.display

    @property
    def compact_json(self) -> bool:
        return False  # jsonb parses the text, whitespace and all

    def migrate(self) -> None:
        """Create or upgrade ``events`` (safe from many nodes at once, see ``pg.migrate``)."""
        pg.migrate(self._connection(), "events", MIGRATIONS)

    def encode(self, events: Columns) -> bytes:
        return encode_copy(events)

    def send(self, payload: bytes, count: int) -> None:
        if not count:
            return
        conn = self._connection()
        if self._direct:
            try:
                with conn.transaction():
                    _copy(conn, f"events ({_INSERT_COLUMNS})", payload)
                return
            except errors.UniqueViolation:
                self._direct = False  # a redelivery: from now on merge until one is all new
        with conn.transaction():
            conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE}"
                " (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            _copy(conn, f"{_STAGE} ({_INSERT_COLUMNS})", payload)
            inserted = conn.execute(
                f"INSERT INTO events ({_INSERT_COLUMNS}) SELECT {_INSERT_COLUMNS} FROM {_STAGE}"
                " ON CONFLICT (id) DO NOTHING"
            ).rowcount
        self._direct = inserted == count

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection: nothing left to save
                conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = pg.connect(
                self._url,
                application="trubrics-forwarder",
                statement_timeout_ms=STATEMENT_TIMEOUT_MS,
            )
        return self._conn


def _copy(conn: psycopg.Connection[Any], target: str, payload: bytes) -> None:
    with conn.cursor() as cursor, cursor.copy(f"COPY {target} FROM STDIN (FORMAT binary)") as copy:
        copy.write(_HEADER)
        copy.write(payload)
        copy.write(_TRAILER)


def encode_copy(events: Columns) -> bytes:
    """Events as binary COPY tuples in ``_INSERT_COLUMNS`` order (``send`` adds the header
    and trailer, so that the encodings of consecutive events concatenate).

    Written for speed, as the forwarder's CPU competes with the engine's on small machines:
    column by column, without running Python code per event (``_tuples``). NUL (see the
    module's docstring): only if the properties hold an escaped NUL anywhere (rare) are
    they decoded, and the tuples built again. Looked for in their joined text only if it
    holds a backslash at all: a search for one byte is several times faster than for
    six, and the other text fields had their NULs replaced as they were encoded."""
    if not events.size:
        return b""
    payload = _tuples(events)
    documents = b"".join(events.properties)
    if b"\\" not in documents or _ESCAPED_NUL not in documents:
        return payload
    without_nul = map(json_without_nul, map(bytes, events.properties))
    return _tuples(events._replace(properties=list(without_nul)))


def _tuples(events: Columns) -> bytes:
    """Each field of every tuple made by a ``map`` in C, and the fields interleaved by one
    join. Fields next to each other that repeat within a batch are made together, once
    per distinct value (``_Fields``): project, user and event; receive time and source.
    The ids are converted from hex in one call, with each tuple's start between them."""
    ids, projects, users, names, stamps, threads, documents, received, sources = events
    starts_and_ids = _TUPLE_STARTS(bytes.fromhex(_START + _START.join(ids).replace("-", "")))
    texts = _Fields(_texts)
    fields = (
        starts_and_ids,
        map(texts.__getitem__, zip(projects, users, names, strict=True)),
        map(_TIMESTAMP, repeat(8), map(sub, micros(stamps), repeat(_PG_EPOCH_US))),
        map(_Fields(_text).__getitem__, threads),
        map(_Fields(_jsonb_head).__getitem__, map(len, documents)),
        documents,
        map(_Fields(_received_and_source).__getitem__, zip(received, sources, strict=True)),
    )
    return b"".join(chain.from_iterable(zip(*fields, strict=True)))


class _Fields(dict[Any, bytes]):
    """Encoded fields by value, each made once by ``make`` (a dict: looked up in C)."""

    def __init__(self, make: Callable[[Any], bytes]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, value: Any) -> bytes:
        field = self[value] = self._make(value)
        return field


def _text(text: str | None) -> bytes:
    """A text field (length, then UTF-8, NUL replaced); None is SQL's NULL."""
    if text is None:
        return _NULL
    encoded = text.replace(_NUL, _REPLACEMENT).encode()
    return _LENGTH(len(encoded)) + encoded


def _texts(texts: tuple[str, ...]) -> bytes:
    return b"".join(map(_text, texts))


def _jsonb_head(length: int) -> bytes:
    """What precedes a jsonb document of ``length`` bytes: its length with the version
    byte, and the version."""
    return _JSONB_HEAD(length + 1, _JSONB_VERSION)


def _received_and_source(pair: tuple[int, str]) -> bytes:
    received, source = pair
    return _TIMESTAMP(8, received - _PG_EPOCH_US) + _text(source)


def json_without_nul(document: bytes) -> bytes:
    """The JSON ``document`` with every NUL in its strings and keys replaced by U+FFFD.
    Decoding is needed: the text ``\\u0000`` may also be an escaped backslash followed by
    ``u0000``, which is no NUL and is kept."""
    if _ESCAPED_NUL not in document:
        return document
    return _encode_json(_replace_nul(_decode_json(document)))


def _replace_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_NUL, _REPLACEMENT)
    if isinstance(value, dict):
        return {_replace_nul(k): _replace_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_nul(item) for item in value]
    return value
