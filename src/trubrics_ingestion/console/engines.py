"""The console's thread and user pages, and the overview's chart, read from an engine the
node forwards to: there, every node's events are, with an index by thread (PostgreSQL's
``(project, thread_id)``; ClickHouse's sorting key starts with the project) and by time.
The chart counts events by their own time (``timestamp``, which both engines index; they
keep no index on ``received_at``), per project and kind (``source``).

Reads are plain ``SELECT``s of the ``events`` table the forwarder writes (README,
*Querying the events*), at most ``MAX_EVENTS`` rows; a user's timeline looks back
``USER_WINDOW_DAYS`` (PostgreSQL has no index by user: its time index bounds the scan).
An engine shows what has been forwarded to it so far: the overview gives the backlog.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from ..clock import format_time, to_micros
from ..forward.clickhouse import ClickHouseSink
from ..urls import SinkUrl
from .conversations import MAX_EVENTS, Found, Record

USER_WINDOW_DAYS = 30
COLUMNS = "id, project, user_id, event, timestamp, thread_id, properties, received_at, source"
STATEMENT_TIMEOUT_MS = 10_000
_THREAD = "project = {m} AND thread_id = {m} ORDER BY timestamp DESC, id DESC"
_USER = "project = {m} AND user_id = {m} AND timestamp >= {since} ORDER BY timestamp DESC, id DESC"
_decode = msgspec.json.Decoder().decode
Minute = tuple[int, str, str, int]  # minute (microseconds since the epoch), project, source, events


def open_engine(url: SinkUrl) -> PostgresConversations | ClickHouseConversations:
    """The reader of the engine at ``url``."""
    if url.kind == "postgresql":
        return PostgresConversations(url)
    return ClickHouseConversations(url)


class _EngineReader:
    """What the readers of both engines share: the two page reads, each made in its
    engine's SQL by ``_found``."""

    def __init__(self, url: SinkUrl) -> None:
        self._url = url

    @property
    def display(self) -> str:
        """The engine's URL without its password."""
        return self._url.display

    def thread(self, project: str, thread_id: str) -> Found:
        return self._found(_THREAD, (project, thread_id))

    def user(self, project: str, user_id: str) -> Found:
        return self._found(_USER, (project, user_id), days=USER_WINDOW_DAYS)

    def _found(self, where: str, params: tuple[str, str], days: int | None = None) -> Found:
        raise NotImplementedError


class PostgresConversations(_EngineReader):
    """Threads and users from PostgreSQL's ``events`` (one connection, reopened after a
    failure)."""

    def __init__(self, url: SinkUrl) -> None:
        super().__init__(url)
        self._conn: Any = None

    def per_minute(self, since: int) -> list[Minute]:
        """Events per minute of their time since ``since`` (microseconds since the epoch)."""
        sql = (
            "SELECT (extract(epoch FROM date_trunc('minute', timestamp)) * 1000000)::bigint"
            " AS minute, project, source, count(*) FROM events WHERE timestamp >= %s"
            " GROUP BY 1, 2, 3 ORDER BY 1"
        )
        rows = self._rows(sql, (datetime.fromtimestamp(since / 1e6, UTC),))
        return [(int(minute), project, source, int(n)) for minute, project, source, n in rows]

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _found(self, where: str, params: tuple[str, str], days: int | None = None) -> Found:
        since = f"now() - interval '{days} days'" if days else ""
        sql = f"SELECT {COLUMNS} FROM events WHERE {where.format(m='%s', since=since)} LIMIT %s"
        rows = self._rows(sql, (*params, MAX_EVENTS + 1))
        return _found([_pg_record(row) for row in rows], f"engine {self._url.display}", days)

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The rows of ``sql``; after a failure, the next read reconnects."""
        try:
            rows: list[tuple[Any, ...]] = self._connection().execute(sql, params).fetchall()
        except Exception:
            self.close()
            raise
        return rows

    def _connection(self) -> Any:
        if self._conn is None:
            from .. import pg  # psycopg only when used

            self._conn = pg.connect(
                self._url, application="trubrics-console", statement_timeout_ms=STATEMENT_TIMEOUT_MS
            )
        return self._conn


class ClickHouseConversations(_EngineReader):
    """Threads and users from ClickHouse's ``events``, read ``FINAL`` (each event once)."""

    def __init__(self, url: SinkUrl) -> None:
        super().__init__(url)
        self._sink = ClickHouseSink(url)  # its HTTP(S) client: queries are text in, text out

    def per_minute(self, since: int) -> list[Minute]:
        """Events per minute of their time since ``since`` (microseconds since the epoch),
        each event once (``FINAL``); 64-bit numbers come quoted in JSON, hence ``int``."""
        sql = (
            "SELECT toUInt64(toUnixTimestamp(toStartOfMinute(timestamp))) * 1000000 AS minute,"
            " project, source, count() AS n"
            f" FROM `{self._url.database}`.events FINAL"
            f" WHERE timestamp >= toDateTime({since // 1_000_000})"
            " GROUP BY minute, project, source ORDER BY minute FORMAT JSONEachRow"
        )
        rows = [_decode(line) for line in self._sink.query(sql).splitlines() if line]
        return [(int(r["minute"]), r["project"], r["source"], int(r["n"])) for r in rows]

    def close(self) -> None:
        self._sink.close()

    def _found(self, where: str, params: tuple[str, str], days: int | None = None) -> Found:
        since = f"now() - {days * 86_400}" if days else ""
        pieces = where.replace("{since}", since).split("{m}")
        condition = pieces[0] + "".join(
            quote(value) + piece for value, piece in zip(params, pieces[1:], strict=True)
        )
        sql = (
            f"SELECT {COLUMNS} FROM `{self._url.database}`.events FINAL WHERE {condition}"
            f" LIMIT {MAX_EVENTS + 1} FORMAT JSONEachRow"
        )
        lines = self._sink.query(sql).splitlines()
        records = [_clickhouse_record(_decode(line)) for line in lines if line]
        return _found(records, f"engine {self._url.display}", days)


def quote(text: str) -> str:
    """A ClickHouse string literal (every version, 18.16 included, which has no query
    parameters): backslashes and quotes escaped."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _found(newest_first: list[Record], source: str, days: int | None) -> Found:
    shown = newest_first[:MAX_EVENTS]
    shown.reverse()
    bound = f"the last {days} days" if days else None
    return Found(shown, source, bound=bound, truncated=len(newest_first) > MAX_EVENTS)


def _pg_record(row: tuple[Any, ...]) -> Record:
    id_, project, user, event, at, thread, properties, received, source = row
    return {
        "id": id_,
        "project": project,
        "user_id": user,
        "event": event,
        "timestamp": format_time(to_micros(at)),
        "thread_id": thread,
        "properties": properties,
        "received_at": format_time(to_micros(received)),
        "source": source,
    }


def _clickhouse_record(row: dict[str, Any]) -> Record:
    """Times as ISO-8601 UTC (ClickHouse writes ``YYYY-MM-DD hh:mm:ss[.ffffff]``)."""
    for name in ("timestamp", "received_at"):
        row[name] = row[name].replace(" ", "T") + "Z"
    row["properties"] = _decode(row["properties"])
    return row
