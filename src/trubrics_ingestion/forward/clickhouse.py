"""ClickHouse sink over HTTP or HTTPS (stdlib ``http.client``), from Debian's 18.16 to current.

Why HTTP and ``JSONEachRow``: it is the one insert path every ClickHouse version speaks
(clickhouse-connect cannot talk to 18.16), it needs no dependency, and msgspec encodes it
fast enough that the engine, not Python, sets the pace.

Layout. Without a cluster, ``DB.events`` is a ReplacingMergeTree table. With
``?cluster=NAME``, ``DB.events_local`` (the ReplacingMergeTree) is created ``ON CLUSTER``
on every shard and ``DB.events`` is a Distributed table over it, sharded by
``cityHash64(id)``; inserts use ``insert_distributed_sync=1``, so a batch is on its shards
when the INSERT returns, or the INSERT fails and the batch is sent again.
``ddl_statements()`` gives the exact DDL for a server version, without a server.

Idempotence. Redelivered rows are identical, so they share the sorting key
``(project, timestamp, id)`` (and, being sharded by their id, the shard and the monthly
partition): ReplacingMergeTree collapses them at merge time, and ``SELECT ... FINAL``
always counts each event once.

Time. ``migrate()`` asks the server's ``version()`` before creating the tables:
from 22.8 on (when DateTime64 reached its 1900-2299 range), ``timestamp`` and
``received_at`` are ``DateTime64(6, 'UTC')``, exact to the microsecond, and times outside
1900-01-01 .. 2299-12-31 23:59:59.999999 are clamped to those bounds (as those servers
would do themselves). Before 22.8, and on 18.16 which has no DateTime64, they are
``DateTime('UTC')``: whole seconds (the microseconds are dropped, floored), clamped to
1970-01-01 00:00:00 .. 2105-12-31 23:59:59 (DateTime ends in 2106, 18.16 formats dates only
up to 2105); 18.16 shows the lower bound, 0, as its "zero" DateTime ``0000-00-00 00:00:00``,
which is how a pre-1970 time reads there. The node's store and PostgreSQL keep the exact
value either way.

One wire form for both column types: times travel as ISO-8601 strings with microseconds
(``"2026-06-20T12:00:00.123456Z"``, or with the offset the client wrote, or none for a
naive time, which the UTC column takes as UTC, as the node does) read with
``date_time_input_format=best_effort``, which 18.16 and current servers both accept;
DateTime keeps the seconds, DateTime64 everything. (A number with a fraction, which
DateTime64 takes, is an error for 18.16's DateTime; whole seconds, which both take, would
lose the microseconds.) Only the clamping bounds depend on the table, whose time type
``migrate()`` reads from ``system.columns`` (so a server upgraded over 18.16's tables
keeps getting what they hold).

TLS. ``clickhouses://`` (or ``?secure=1``) speaks HTTPS with the certificate and host name
verified, against the system's CAs or only the URL's ``ca_cert``: a server that cannot
prove who it is gets no password and no events.

No JSONExtract in 18.16: ``properties`` is the compact JSON text as a String, which the
``visitParam*`` functions read on every version (``JSONExtract*`` too on current ones).
Both sets also assume field names written without escapes. The node keeps the text its
client wrote (``store/expand.py``): this sink asks for it without whitespace between its
tokens and without optional escapes (``compact_json``; the Python SDK's ``json.dumps``
escapes every non-ASCII character).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import cast

import msgspec

from ..clock import to_micros
from ..urls import SinkUrl
from .sink import Columns, Moment, micros

CONNECT_TIMEOUT_S = 10.0
INSERT_TIMEOUT_S = 120.0
DDL_TIMEOUT_S = 300.0  # ON CLUSTER waits for every shard (distributed_ddl_task_timeout)
DATETIME64_SINCE = (22, 8)  # the first release whose DateTime64 spans 1900..2299
# Inclusive bounds of each column type, in microseconds since the epoch.
DATETIME_SPAN = (0, 4_291_747_199_999_999)  # 1970-01-01 .. 2105-12-31 23:59:59(.999999)
DATETIME64_SPAN = (-2_208_988_800_000_000, 10_413_791_999_999_999)  # 1900 .. 2299-12-31
_COLUMNS = """(
    id String,
    project String,
    user_id String,
    event String,
    timestamp {time},
    thread_id Nullable(String),
    properties String,
    received_at {time},
    source String
)"""
_ENGINE = (
    "ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(timestamp) ORDER BY (project, timestamp, id)"
)
_NAIVE_EPOCH = datetime(1970, 1, 1)  # + whole seconds: isoformat() is YYYY-MM-DDThh:mm:ss


class ClickHouseError(RuntimeError):
    """ClickHouse answered with an error status (the message is the server's)."""


class _JsonRow(msgspec.Struct, gc=False):
    """One ``JSONEachRow`` line; the field names are the table's columns (texts only: no
    cycles, so the collector need not track the 50,000 of a batch)."""

    id: str
    project: str
    user_id: str
    event: str
    timestamp: datetime | str  # within the table's span (``_times``)
    thread_id: str | None
    properties: str
    received_at: str
    source: str


_encoder = msgspec.json.Encoder()
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def server_version(text: str) -> tuple[int, int]:
    """``(major, minor)`` of a ``SELECT version()`` answer such as ``18.16.1``."""
    found = re.match(r"\s*(\d+)\.(\d+)", text)
    if found is None:
        raise ClickHouseError(f"unrecognised ClickHouse version {text.strip()!r}")
    return int(found[1]), int(found[2])


def time_type(version: tuple[int, int]) -> str:
    """The column type of ``timestamp`` and ``received_at`` on a server of ``version``."""
    return "DateTime64(6, 'UTC')" if version >= DATETIME64_SINCE else "DateTime('UTC')"


def span_of(column_type: str) -> tuple[int, int]:
    """The clamping bounds for a time column of ``column_type`` (as ``system.columns``
    spells it)."""
    return DATETIME64_SPAN if column_type.startswith("DateTime64") else DATETIME_SPAN


def ddl_statements(database: str, cluster: str | None, version: tuple[int, int]) -> list[str]:
    """The statements ``migrate()`` issues to create the tables on a server of
    ``version``, in order (each ``IF NOT EXISTS``; ``ON CLUSTER`` with a cluster)."""
    on_cluster = f" ON CLUSTER `{cluster}`" if cluster else ""
    columns = _COLUMNS.format(time=time_type(version))
    statements = []
    if database != "default":
        statements.append(f"CREATE DATABASE IF NOT EXISTS `{database}`{on_cluster}")
    if cluster is None:
        statements.append(f"CREATE TABLE IF NOT EXISTS `{database}`.events {columns} {_ENGINE}")
        return statements
    local = f"`{database}`.events_local{on_cluster}"
    statements.append(f"CREATE TABLE IF NOT EXISTS {local} {columns} {_ENGINE}")
    statements.append(
        f"CREATE TABLE IF NOT EXISTS `{database}`.events{on_cluster} AS `{database}`.events_local"
        f" ENGINE = Distributed(`{cluster}`, `{database}`, events_local, cityHash64(id))"
    )
    return statements


def insert_settings(cluster: str | None) -> dict[str, str]:
    """The settings of every INSERT (``best_effort`` reads the times' ISO form)."""
    settings = {"date_time_input_format": "best_effort"}
    if cluster:
        settings["insert_distributed_sync"] = "1"
    return settings


class ClickHouseSink:
    """Writes events into ``DB.events`` of a ClickHouse server or cluster."""

    def __init__(self, url: SinkUrl) -> None:
        self._url = url
        self._conn: http.client.HTTPConnection | None = None
        self._headers = {"Content-Type": "application/octet-stream"}
        if url.user is not None or url.password is not None:
            token = f"{url.user or 'default'}:{url.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        self._tables = ("events", "events_local") if url.cluster else ("events",)
        self._insert = f"INSERT INTO `{url.database}`.events FORMAT JSONEachRow"
        self._insert_settings = insert_settings(url.cluster)
        # The span of the table's time columns, known once migrate() has read their type.
        self._span: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return self._url.display

    @property
    def compact_json(self) -> bool:
        return True  # see the module's docstring

    def migrate(self) -> None:
        """Create the database and tables unless they exist (IF NOT EXISTS, ON CLUSTER when
        clustered: every shard gets ``events_local``), with the time type the server's
        version supports; then learn the type the table actually has. Checked first, so a
        restart that finds them does not queue distributed DDL."""
        types = self._time_types()
        if len(types) < len(self._tables):
            version = server_version(self._query("SELECT version()"))
            for statement in ddl_statements(self._url.database, self._url.cluster, version):
                self._query(statement, DDL_TIMEOUT_S)
            types = self._time_types()
        if "events" not in types:
            raise ClickHouseError(f"{self.name}: table events has no timestamp column")
        self._span = span_of(types["events"])

    def encode(self, events: Columns) -> bytes:
        """Events as the table's time type can hold them: call ``migrate()`` first."""
        if self._span is None:
            raise RuntimeError(f"{self.name}: encode() before migrate()")
        return encode_json_lines(events, self._span)

    def send(self, payload: bytes, count: int) -> None:
        if count:
            self._query(self._insert, INSERT_TIMEOUT_S, payload, self._insert_settings)

    def close(self) -> None:
        """Drop the connection and forget the table's time type: the forwarder closes a
        sink after a failure, and the next migrate() reads the type again (the server
        behind the URL may have changed meanwhile)."""
        self._span = None
        self._disconnect()

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def query(self, sql: str) -> str:
        """Run one statement and return its text output (for status checks and tests)."""
        return self._query(sql)

    def _time_types(self) -> dict[str, str]:
        """The type of ``timestamp`` in each of our tables that exists."""
        names = ", ".join(f"'{name}'" for name in self._tables)
        found = self._query(
            "SELECT table, type FROM system.columns"
            f" WHERE database = '{self._url.database}' AND table IN ({names})"
            " AND name = 'timestamp' FORMAT TabSeparated"
        )
        return dict(line.split("\t", 1) for line in found.splitlines() if "\t" in line)

    def _query(
        self,
        sql: str,
        timeout_s: float = INSERT_TIMEOUT_S,
        data: bytes | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> str:
        """POST one statement; with ``data`` the statement goes in the URL and the rows in
        the body. Any failure closes the connection, so the next call starts clean."""
        params = dict(settings or {})  # no database=: it may not exist yet; names are qualified
        if data is None:
            body = sql.encode()
        else:
            params["query"] = sql
            body = data
        path = "/?" + urllib.parse.urlencode(params)
        try:
            status, text = self._post(path, body, timeout_s)
        except _STALE:  # the server dropped our idle keep-alive connection: once more, anew
            status, text = self._post(path, body, timeout_s)
        if status != 200:
            self._disconnect()
            raise ClickHouseError(f"{self.name}: HTTP {status}: {text.strip()[:2000]}")
        return text

    def _post(self, path: str, body: bytes, timeout_s: float) -> tuple[int, str]:
        """One request. A failure closes the connection (the next call starts clean);
        the stale-connection errors are re-raised as such only on a reused connection,
        where they mean "closed while idle", not "the server is down"."""
        reused = self._conn is not None and self._conn.sock is not None
        conn = self._connection(timeout_s)
        try:
            conn.request("POST", path, body, self._headers)
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        except _STALE:
            self._disconnect()
            if reused:
                raise
            raise ConnectionError(f"{self.name}: connection lost") from None
        except BaseException:
            self._disconnect()
            raise

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        """Connected (within ``CONNECT_TIMEOUT_S``: an unreachable host fails fast) and
        with ``timeout_s`` for this request's answer."""
        if self._conn is None:
            self._conn = _new_connection(self._url)
        if self._conn.sock is None:
            self._conn.connect()
        sock = self._conn.sock
        assert sock is not None  # connect() sets it or raises
        sock.settimeout(timeout_s)
        return self._conn


def _new_connection(url: SinkUrl) -> http.client.HTTPConnection:
    """HTTP, or HTTPS verifying the server; the CA file is read at each connection, so a
    replaced one is picked up, and a missing one is an error of that attempt, retried."""
    if not url.secure:
        return http.client.HTTPConnection(url.host, url.port, timeout=CONNECT_TIMEOUT_S)
    context = ssl.create_default_context(cafile=url.ca_cert)
    return http.client.HTTPSConnection(
        url.host, url.port, timeout=CONNECT_TIMEOUT_S, context=context
    )


def encode_json_lines(events: Columns, span: tuple[int, int] = DATETIME64_SPAN) -> bytes:
    """``JSONEachRow`` lines for ``events``, times clamped to ``span`` (microseconds,
    inclusive) and written as ISO-8601 (``_times``). Inline, with ``received_at``
    formatted again only when it changes (a journal batch shares one): a function call
    per value would cost more than the rest of the row. The properties as
    ``compact_json`` asks for them."""
    lines: list[_JsonRow] = []
    add = lines.append
    seconds: dict[int, str] = {}  # "YYYY-MM-DDThh:mm:ss.%06dZ" by second since the epoch
    last_received, got_text = None, ""
    for id_, project, user, event, at, thread, props, received, source in zip(
        events.id,
        events.project,
        events.user_id,
        events.event,
        _times(events.timestamp, span, seconds),
        events.thread_id,
        events.properties,
        events.received_at,
        events.source,
        strict=True,
    ):
        if received != last_received:
            last_received = received
            got_text = _iso_texts([received], span, seconds)[0]
        add(_JsonRow(id_, project, user, event, at, thread, str(props, "utf-8"), got_text, source))
    return _encoder.encode_lines(lines)


def _times(
    moments: list[Moment], span: tuple[int, int], seconds: dict[int, str]
) -> list[datetime] | list[str]:
    """The timestamps as msgspec is to write them: a plain batch's decoded datetimes as
    they are, if all lie within ``span`` (msgspec writes them in C, with their UTC offset,
    or none if naive, which the UTC column reads as UTC); else each as ISO-8601 UTC text
    with microseconds, clamped (``_iso_texts``)."""
    if moments and type(moments[0]) is datetime:
        with contextlib.suppress(TypeError):  # microseconds among them, or naive and aware
            first, last = min(moments), max(moments)
            low, high = span
            if low <= to_micros(cast(datetime, first)) and to_micros(cast(datetime, last)) <= high:
                return cast(list[datetime], moments)
    return _iso_texts(micros(moments), span, seconds)


def _iso_texts(stamps: list[int], span: tuple[int, int], seconds: dict[int, str]) -> list[str]:
    """Each time clamped to ``span`` and written as ISO-8601 UTC with microseconds, each
    second's text made once (``seconds``: neighbouring events share it)."""
    low, high = span
    texts = []
    for stamp in stamps:
        at = low if stamp < low else high if stamp > high else stamp
        second, fraction = divmod(at, 1_000_000)
        texts.append((seconds.get(second) or _second_format(seconds, second)) % fraction)
    return texts


def _second_format(cache: dict[int, str], second: int) -> str:
    """The %-format of the times within ``second``, remembered in ``cache``."""
    text = cache[second] = (_NAIVE_EPOCH + timedelta(seconds=second)).isoformat() + ".%06dZ"
    return text
