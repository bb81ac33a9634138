"""ClickHouse sink over plain HTTP (stdlib ``http.client``), down to Debian's 18.16.

Why HTTP and ``JSONEachRow``: it is the one insert path every ClickHouse version speaks
(clickhouse-connect cannot talk to 18.16), it needs no dependency, and msgspec encodes it
at about 1.3 million rows/s, so the engine, not Python, sets the pace.

Layout. Without a cluster, ``DB.events`` is a ReplacingMergeTree table. With
``?cluster=NAME``, ``DB.events_local`` (the ReplacingMergeTree) is created ``ON CLUSTER``
on every shard and ``DB.events`` is a Distributed table over it, sharded by
``cityHash64(id)``; inserts use ``insert_distributed_sync=1``, so a batch is on its shards
when the INSERT returns, or the INSERT fails and the batch is sent again.

Idempotence. Redelivered rows are identical, so they share the sorting key
``(project, timestamp, id)`` (and, being sharded by their id, the shard and the monthly
partition): ReplacingMergeTree collapses them at merge time, and ``SELECT ... FINAL``
always counts each event once.

Time. 18.16 has no DateTime64, so ``timestamp`` and ``received_at`` are ``DateTime('UTC')``:
whole seconds, the microseconds are dropped (floored). DateTime spans 1970-01-01 to
2106-02-07, and 18.16 formats dates only up to 2105, so times outside
1970-01-01 00:00:00 .. 2105-12-31 23:59:59 are clamped to those bounds here (the node's
store and PostgreSQL keep the exact value); ClickHouse shows the lower bound, 0, as its
"zero" DateTime ``0000-00-00 00:00:00``, which is how a pre-1970 time reads there.

No JSONExtract in 18.16: ``properties`` is the compact JSON text as a String, which the
``visitParam*`` functions read.
"""

from __future__ import annotations

import base64
import http.client
import urllib.parse
from collections.abc import Mapping, Sequence

import msgspec

from .sink import Row
from .urls import SinkUrl

CONNECT_TIMEOUT_S = 10.0
INSERT_TIMEOUT_S = 120.0
DDL_TIMEOUT_S = 300.0  # ON CLUSTER waits for every shard (distributed_ddl_task_timeout)
MIN_DATETIME = 0
MAX_DATETIME = 4_291_747_199  # 2105-12-31 23:59:59 UTC
_COLUMNS = """(
    id String,
    project String,
    user_id String,
    event String,
    timestamp DateTime('UTC'),
    thread_id Nullable(String),
    properties String,
    received_at DateTime('UTC'),
    source String
)"""
_ENGINE = (
    "ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(timestamp) ORDER BY (project, timestamp, id)"
)


class ClickHouseError(RuntimeError):
    """ClickHouse answered with an error status (the message is the server's)."""


class _JsonRow(msgspec.Struct):
    """One ``JSONEachRow`` line; the field names are the table's columns."""

    id: str
    project: str
    user_id: str
    event: str
    timestamp: int  # seconds since the epoch, clamped (DateTime accepts the number)
    thread_id: str | None
    properties: str
    received_at: int
    source: str


_encoder = msgspec.json.Encoder()
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class ClickHouseSink:
    """Writes events into ``DB.events`` of a ClickHouse server or cluster."""

    def __init__(self, url: SinkUrl) -> None:
        self._url = url
        self._conn: http.client.HTTPConnection | None = None
        self._headers = {"Content-Type": "application/octet-stream"}
        if url.user is not None or url.password is not None:
            token = f"{url.user or 'default'}:{url.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        db, cluster = url.database, url.cluster
        self._on_cluster = f" ON CLUSTER `{cluster}`" if cluster else ""
        self._insert = f"INSERT INTO `{db}`.events FORMAT JSONEachRow"
        self._insert_settings = {"insert_distributed_sync": "1"} if cluster else {}

    @property
    def name(self) -> str:
        return self._url.display

    def migrate(self) -> None:
        """Create the database and tables unless they exist (IF NOT EXISTS, ON CLUSTER when
        clustered: every shard gets ``events_local``). Checked first, so a restart that
        finds them does not queue distributed DDL."""
        if self._tables_exist():
            return
        db, cluster = self._url.database, self._url.cluster
        if db != "default":
            self._query(f"CREATE DATABASE IF NOT EXISTS `{db}`{self._on_cluster}", DDL_TIMEOUT_S)
        if cluster is None:
            self._query(f"CREATE TABLE IF NOT EXISTS `{db}`.events {_COLUMNS} {_ENGINE}")
            return
        local = f"`{db}`.events_local{self._on_cluster}"
        self._query(f"CREATE TABLE IF NOT EXISTS {local} {_COLUMNS} {_ENGINE}", DDL_TIMEOUT_S)
        self._query(
            f"CREATE TABLE IF NOT EXISTS `{db}`.events{self._on_cluster} AS `{db}`.events_local"
            f" ENGINE = Distributed(`{cluster}`, `{db}`, events_local, cityHash64(id))",
            DDL_TIMEOUT_S,
        )

    def encode(self, rows: Sequence[Row]) -> bytes:
        return encode_json_lines(rows)

    def send_batch(self, rows: Sequence[Row]) -> None:
        self.send(encode_json_lines(rows), len(rows))

    def send(self, payload: bytes, count: int) -> None:
        if count:
            self._query(self._insert, INSERT_TIMEOUT_S, payload, self._insert_settings)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def query(self, sql: str) -> str:
        """Run one statement and return its text output (for status checks and tests)."""
        return self._query(sql)

    def _tables_exist(self) -> bool:
        db = self._url.database
        wanted = ["events", "events_local"] if self._url.cluster else ["events"]
        names = ", ".join(f"'{name}'" for name in wanted)
        found = self._query(
            f"SELECT count() FROM system.tables WHERE database = '{db}' AND name IN ({names})"
        )
        return int(found) == len(wanted)

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
            self.close()
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
            self.close()
            if reused:
                raise
            raise ConnectionError(f"{self.name}: connection lost") from None
        except BaseException:
            self.close()
            raise

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        """Connected (within ``CONNECT_TIMEOUT_S``: an unreachable host fails fast) and
        with ``timeout_s`` for this request's answer."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection(
                self._url.host, self._url.port, timeout=CONNECT_TIMEOUT_S
            )
        if self._conn.sock is None:
            self._conn.connect()
        sock = self._conn.sock
        assert sock is not None  # connect() sets it or raises
        sock.settimeout(timeout_s)
        return self._conn


def encode_json_lines(rows: Sequence[Row]) -> bytes:
    """``JSONEachRow`` lines for ``rows``, times as whole seconds (floored) clamped to
    ``MIN_DATETIME .. MAX_DATETIME``, inline: a function call per value would cost more
    than the rest of the row's encoding."""
    lines: list[_JsonRow] = []
    add = lines.append
    low, high = MIN_DATETIME, MAX_DATETIME
    for _seq, id_, project, user, event, timestamp, thread, props, received, source in rows:
        at, got = timestamp // 1_000_000, received // 1_000_000
        at = low if at < low else high if at > high else at
        got = low if got < low else high if got > high else got
        add(_JsonRow(id_, project, user, event, at, thread, props, got, source))
    return _encoder.encode_lines(lines)
