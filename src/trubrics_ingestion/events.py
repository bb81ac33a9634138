"""Reading stored events back: count, export, tail.

Every reader first materialises whatever is still only in the journal (``catch_up``), so
it sees every acknowledged event even while a busy server lags behind.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from .expand import to_micros
from .materialise import catch_up

COLUMNS = (
    "id",
    "project",
    "user_id",
    "event",
    "timestamp",
    "thread_id",
    "properties",
    "received_at",
    "source",
)
_SELECT = f"SELECT seq, {', '.join(COLUMNS)} FROM events"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(text: str) -> int:
    """An ISO-8601 time (naive means UTC) as microseconds since the epoch."""
    return to_micros(datetime.fromisoformat(text))


def format_time(micros: int) -> str:
    """Microseconds since the epoch as ISO-8601 UTC with a ``Z`` (and always 4-digit years,
    which ``strftime("%Y")`` does not give before year 1000)."""
    t = _EPOCH + timedelta(microseconds=micros)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f".{t.microsecond:06d}Z"
    )


def count(conn: sqlite3.Connection, project: str | None = None) -> int:
    catch_up(conn)
    where, args = _filters(project, None, None)
    return int(conn.execute(f"SELECT count(*) FROM events{where}", args).fetchone()[0])


def export(
    conn: sqlite3.Connection,
    *,
    project: str | None = None,
    since: int | None = None,
    until: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Events in the order they were stored, as export records."""
    catch_up(conn)
    where, args = _filters(project, since, until)
    for row in conn.execute(f"{_SELECT}{where} ORDER BY seq", args):
        yield _record(row)


def tail(
    conn: sqlite3.Connection, *, project: str | None = None, poll_s: float = 0.2
) -> Iterator[dict[str, Any]]:
    """New events as they arrive, forever; starts after the newest stored event."""
    catch_up(conn)
    last = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    where, args = _filters(project, None, None)
    where += " AND seq > ?" if where else " WHERE seq > ?"
    while True:
        catch_up(conn)
        for row in conn.execute(f"{_SELECT}{where} ORDER BY seq", (*args, last)):
            last = row[0]
            yield _record(row)
        time.sleep(poll_s)


def to_ndjson(record: dict[str, Any]) -> str:
    return msgspec.json.encode(record).decode()


def to_csv_lines(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    """CSV with a header row; ``properties`` as a JSON string."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for record in records:
        record["properties"] = msgspec.json.encode(record["properties"]).decode()
        writer.writerow(record[column] for column in COLUMNS)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(COLUMNS, row[1:], strict=True))
    record["timestamp"] = format_time(record["timestamp"])
    record["received_at"] = format_time(record["received_at"])
    record["properties"] = msgspec.json.decode(record["properties"])
    return record


def _filters(
    project: str | None, since: int | None, until: int | None
) -> tuple[str, tuple[Any, ...]]:
    clauses, args = [], []
    for clause, value in (
        ("project = ?", project),
        ("timestamp >= ?", since),
        ("timestamp < ?", until),
    ):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)
