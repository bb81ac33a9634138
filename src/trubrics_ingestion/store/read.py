"""Reading stored events back: count, export, tail.

Counting sums the batches' narrow rows; exports and tails expand the batches they read
(``batches.py``), and a time range opens only the batches whose events may lie in it.

A stored batch that cannot be read (a hand edit, or a bug) never stops a reader: it is
handed to ``on_unreadable`` with its number and the reason, and the reader goes on with
the next batch.

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
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any

import msgspec

from ..clock import format_time
from . import batches
from .expand import EventRow

COLUMNS = EventRow._fields  # what an export record holds, in this order
_UNREADABLE = (ValueError, TypeError, OverflowError)  # msgspec.DecodeError included
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
OnUnreadable = Callable[[int, str], None]
_encoder = msgspec.json.Encoder()
_decode = msgspec.json.Decoder().decode


class UnreadableBatch(Exception):
    """A stored batch that cannot be turned into records (by default, readers raise this)."""


class Skipped:
    """An ``on_unreadable`` for the command line: one line on stderr per skipped batch, as
    it is met, and how many there were."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, batch: int, reason: str) -> None:
        self.count += 1
        print(f"skipped stored batch {batch}: {reason}", file=sys.stderr, flush=True)


def _refuse(batch: int, reason: str) -> None:
    raise UnreadableBatch(f"stored batch {batch}: {reason}")


def count(conn: sqlite3.Connection, project: str | None = None) -> int:
    return batches.total(conn, project)


def export(
    conn: sqlite3.Connection,
    *,
    project: str | None = None,
    since: int | None = None,
    until: int | None = None,
    on_unreadable: OnUnreadable = _refuse,
) -> Iterator[dict[str, Any]]:
    """Events in the order they were stored, as export records."""
    found = export_batches(
        conn, project=project, since=since, until=until, on_unreadable=on_unreadable
    )
    return chain.from_iterable(found)


def export_batches(
    conn: sqlite3.Connection,
    *,
    project: str | None = None,
    since: int | None = None,
    until: int | None = None,
    on_unreadable: OnUnreadable = _refuse,
) -> Iterator[list[dict[str, Any]]]:
    """``export``'s records, a stored batch's at a time (what a writer writes at once)."""
    numbers = batches.matching(conn, project=project, since=since, until=until)
    yield from _records(conn, list(numbers), since, until, on_unreadable, TimeTexts())


def rows(conn: sqlite3.Connection, *, after: int = 0) -> Iterator[EventRow]:
    """The events of every batch after batch ``after``, as forwarders see them (for tools:
    an unexpandable batch raises ``batches.Unexpandable``)."""
    node = batches.node_id(conn)
    for number in list(batches.matching(conn, after=after)):
        yield from batches.events_at(conn, number, node) or ()


def tail(
    conn: sqlite3.Connection,
    *,
    project: str | None = None,
    poll_s: float = 0.2,
    on_unreadable: OnUnreadable = _refuse,
) -> Iterator[list[dict[str, Any]]]:
    """New events as they arrive, forever, a stored batch's records at a time; starts
    after the newest stored batch."""
    last = batches.newest(conn)
    times = TimeTexts()
    while True:
        numbers = list(batches.matching(conn, project=project, after=last))
        yield from _records(conn, numbers, None, None, on_unreadable, times)
        last = numbers[-1] if numbers else last
        time.sleep(poll_s)


def _records(
    conn: sqlite3.Connection,
    numbers: list[int],
    since: int | None,
    until: int | None,
    on_unreadable: OnUnreadable,
    times: TimeTexts,
) -> Iterator[list[dict[str, Any]]]:
    """The events of each numbered batch within ``[since, until)``, as records (batches
    without any left out)."""
    node = batches.node_id(conn)
    for number in numbers:
        try:
            events = batches.events_at(conn, number, node)
            if events is None:  # pruned meanwhile
                continue
            records = [
                record(event, times)
                for event in events
                if (since is None or event.timestamp >= since)
                and (until is None or event.timestamp < until)
            ]
        except (batches.Unexpandable, *_UNREADABLE) as exc:
            on_unreadable(number, f"{type(exc).__name__}: {exc}")
            continue
        if records:
            yield records


class TimeTexts:
    """``format_time`` that makes each second's text once: an export's events share
    seconds, and a stored batch's events their receive time (formatting from scratch
    was a fifth of an export's CPU). Remembers at most ``MAX_SECONDS`` seconds."""

    MAX_SECONDS = 100_000

    def __init__(self) -> None:
        self._seconds: dict[int, str] = {}

    def __call__(self, micros: int) -> str:
        second, fraction = divmod(micros, 1_000_000)
        head = self._seconds.get(second) or self._head(second)
        return f"{head}{fraction:06d}Z"

    def _head(self, second: int) -> str:
        """The text up to the fraction: ``format_time``'s, which also raises as it does."""
        if len(self._seconds) >= self.MAX_SECONDS:
            self._seconds.clear()
        head = self._seconds[second] = format_time(second * 1_000_000)[: -len("000000Z")]
        return head


def record(event: EventRow, times: TimeTexts) -> dict[str, Any]:
    """An event as export writes it (the columns in ``COLUMNS``' order)."""
    return {
        "id": event.id,
        "project": event.project,
        "user_id": event.user_id,
        "event": event.event,
        "timestamp": times(event.timestamp),
        "thread_id": event.thread_id,
        "properties": _decode(event.properties),
        "received_at": times(event.received_at),
        "source": event.source,
    }


def to_ndjson(record: dict[str, Any]) -> str:
    return msgspec.json.encode(record).decode()


def to_ndjson_lines(records: list[dict[str, Any]]) -> str:
    """``to_ndjson`` of each record, one a line, in one string."""
    return _encoder.encode_lines(records).decode()


def to_csv_chunks(record_batches: Iterable[list[dict[str, Any]]]) -> Iterator[str]:
    """CSV with a header row, one chunk of lines per batch of records; ``properties`` as
    a JSON string; no cell a formula."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # RFC 4180 CRLF: a cell holding a lone \r is quoted too
    writer.writerow(COLUMNS)
    for records in record_batches:
        for record in records:
            record["properties"] = _encoder.encode(record["properties"]).decode()
            writer.writerow([_inert(record[column]) for column in COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _inert(cell: Any) -> Any:
    """The cell as a spreadsheet shows it as text, never runs it (OWASP: a leading ')."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_STARTS):
        return "'" + cell
    return cell
