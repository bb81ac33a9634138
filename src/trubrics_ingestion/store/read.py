"""Reading stored events back: count, export, tail.

Every reader first materialises whatever is still only in the journal (``catch_up``), so
it sees every acknowledged event even while a busy server lags behind.

One stored row that cannot be read (a time out of range, properties that are not JSON,
text that is not UTF-8: an older server, or a hand edit, may have stored one) never stops
a reader: it is handed to ``on_unreadable`` with its ``seq`` and the reason, and the
reader goes on with the next row.

CSV is for spreadsheets, which run a cell starting with ``=``, ``+``, ``-``, ``@``, a tab
or a carriage return as a formula: such cells get a leading ``'`` (OWASP's advice against
CSV injection). NDJSON is written exactly as stored.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from ..clock import format_time
from .expand import EventRow
from .materialise import catch_up

COLUMNS = EventRow._fields  # what an export record holds, in this order
# Text read as bytes and decoded here: a row that is not UTF-8 would otherwise stop the
# cursor itself (sqlite3 raises on fetching it, and again on every later fetch).
_TEXT = ("id", "project", "user_id", "event", "thread_id", "source")
_SELECT = "SELECT seq, {} FROM events".format(
    ", ".join(f"CAST({c} AS BLOB)" if c in (*_TEXT, "properties") else c for c in COLUMNS)
)
_UNREADABLE = (ValueError, TypeError, OverflowError)  # UnicodeDecodeError, msgspec.DecodeError
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
OnUnreadable = Callable[[int, str], None]


class UnreadableRow(Exception):
    """A stored row that cannot be turned into a record (by default, readers raise this)."""


class Skipped:
    """An ``on_unreadable`` for the command line: one line on stderr per skipped row, as
    it is met, and how many there were."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, seq: int, reason: str) -> None:
        self.count += 1
        print(f"skipped stored event seq {seq}: {reason}", file=sys.stderr, flush=True)


def _refuse(seq: int, reason: str) -> None:
    raise UnreadableRow(f"stored event seq {seq}: {reason}")


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
    on_unreadable: OnUnreadable = _refuse,
) -> Iterator[dict[str, Any]]:
    """Events in the order they were stored, as export records."""
    catch_up(conn)
    where, args = _filters(project, since, until)
    for row in conn.execute(f"{_SELECT}{where} ORDER BY seq", args):
        record = _record(row, on_unreadable)
        if record is not None:
            yield record


def tail(
    conn: sqlite3.Connection,
    *,
    project: str | None = None,
    poll_s: float = 0.2,
    on_unreadable: OnUnreadable = _refuse,
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
            record = _record(row, on_unreadable)
            if record is not None:
                yield record
        time.sleep(poll_s)


def to_ndjson(record: dict[str, Any]) -> str:
    return msgspec.json.encode(record).decode()


def to_csv_lines(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    """CSV with a header row; ``properties`` as a JSON string; no cell a formula."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # RFC 4180 CRLF: a cell holding a lone \r is quoted too
    writer.writerow(COLUMNS)
    for record in records:
        record["properties"] = msgspec.json.encode(record["properties"]).decode()
        writer.writerow(_inert(record[column]) for column in COLUMNS)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _inert(cell: Any) -> Any:
    """The cell as a spreadsheet shows it as text, never runs it (OWASP: a leading ')."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_STARTS):
        return "'" + cell
    return cell


def _record(row: tuple[Any, ...], on_unreadable: OnUnreadable) -> dict[str, Any] | None:
    """The row as an export record, or None once ``on_unreadable`` was told why not."""
    record = dict(zip(COLUMNS, row[1:], strict=True))
    try:
        for column in _TEXT:
            if record[column] is not None:
                record[column] = record[column].decode()
        record["timestamp"] = format_time(record["timestamp"])
        record["received_at"] = format_time(record["received_at"])
        record["properties"] = msgspec.json.decode(record["properties"])
    except _UNREADABLE as exc:
        on_unreadable(row[0], f"{type(exc).__name__}: {exc}")
        return None
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
