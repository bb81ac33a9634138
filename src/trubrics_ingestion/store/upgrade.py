"""Schema v6: from per-event rows to batches read as events (``batches.py``).

Releases before v6 turned journal batches into rows of an ``events`` table and forwarded
those rows by their ``seq``. This upgrade, run once inside the migration's transaction,
keeps every event such a store holds, under the same id:

- Rows already materialised become batches of source ``rows`` (``LEGACY_ROWS``) that
  hold the rows themselves, ids included. Consecutive rows of one original batch share
  project, source and receive time, so each run of them becomes one batch, numbered
  from 1 upwards: below every batch still in the journal (those came later, and each run
  needed a batch number of its own back then).
- Batches still only journaled keep their number (their events' ids derive from it).
- A forward cursor (a row's seq) becomes the number of the last batch whose rows were
  all delivered: a run the engine got partly is sent again, which the engines absorb
  (their writes are keyed by the event id), so each engine still holds each event once.
- A row that cannot be read (text that is not UTF-8: a hand edit) is set aside in
  ``quarantine`` under the negative of its seq, with the reason.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from typing import Any, cast

import msgspec

from ..clock import format_time, now_us
from ..schema import Source, decode_batch
from .expand import Span, span

log = logging.getLogger("trubrics_ingestion.store")

LEGACY_ROWS = "rows"
CURSORS = """
CREATE TABLE forward_cursors (
    sink TEXT PRIMARY KEY,
    batch INTEGER NOT NULL,  -- the engine has every batch up to this one
    updated_at INTEGER
)
"""
_ROWS = (
    "SELECT seq, CAST(id AS BLOB), CAST(project AS BLOB), CAST(user_id AS BLOB),"
    " CAST(event AS BLOB), timestamp, CAST(thread_id AS BLOB), CAST(properties AS BLOB),"
    " received_at, CAST(source AS BLOB) FROM events ORDER BY seq"
)
_INSERT_BATCH = (
    "INSERT INTO batches (batch, project, source, received_at, events, first_at, last_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_encode = msgspec.json.Encoder().encode
_UNREADABLE = (ValueError, TypeError, OverflowError)  # UnicodeDecodeError, msgspec.DecodeError


def upgrade_to_batches(conn: sqlite3.Connection) -> None:
    """Move ``events`` and ``journal`` into ``batches`` and ``bodies`` (just created by
    the same migration), then drop them."""
    runs = _move_rows(conn)
    _convert_cursors(conn, runs)
    moved = _move_journal(conn)
    _continue_numbering(conn)
    conn.execute("DROP TABLE journal")
    conn.execute("DROP TABLE events")
    if runs or moved:
        log.warning(
            "store upgraded to v6: %d runs of stored events and %d journaled batches are now"
            " batches read as events",
            len(runs),
            moved,
        )


def _continue_numbering(conn: sqlite3.Connection) -> None:
    """New batches get numbers after every number the journal ever handed out."""
    (used,) = conn.execute(
        "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name IN ('journal', 'batches')"
    ).fetchone()
    conn.execute("DELETE FROM sqlite_sequence WHERE name = 'batches'")
    conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('batches', ?)", (used,))


def _move_rows(conn: sqlite3.Connection) -> list[int]:
    """Runs of legacy rows into batches 1, 2...; returns each run's last seq."""
    last_seqs: list[int] = []
    for run in _runs(conn):
        (_, _, project, _, _, _, _, _, received_at, source) = run[0]
        rows = [
            (id_, user, event, at, thread, props, source)
            for _, id_, _, user, event, at, thread, props, _, _ in run
        ]
        times = [row[3] for row in rows]
        number = len(last_seqs) + 1
        _insert(
            conn,
            number,
            project,
            LEGACY_ROWS,
            received_at,
            Span(len(rows), min(times), max(times)),
            _encode(rows),
        )
        last_seqs.append(run[-1][0])
    return last_seqs


def _runs(conn: sqlite3.Connection) -> Iterator[list[tuple[Any, ...]]]:
    """Readable legacy rows, in seq order, grouped into runs of one project, source and
    receive time; unreadable ones go to quarantine."""
    run: list[tuple[Any, ...]] = []
    for raw in conn.execute(_ROWS).fetchall():
        try:
            row = _readable(raw)
        except _UNREADABLE as exc:
            _quarantine_row(conn, raw, exc)
            continue
        if run and (run[-1][2], run[-1][8], run[-1][9]) != (row[2], row[8], row[9]):
            yield run
            run = []
        run.append(row)
    if run:
        yield run


def _readable(raw: tuple[Any, ...]) -> tuple[Any, ...]:
    """The row with its text decoded, if every reader and engine can take it."""
    row = tuple(value.decode() if isinstance(value, bytes) else value for value in raw)
    if not isinstance(msgspec.json.decode(row[7]), dict):
        raise TypeError("properties are not a JSON object")
    format_time(raw[5]), format_time(raw[8])  # raise if out of range
    return row


def _quarantine_row(conn: sqlite3.Connection, raw: tuple[Any, ...], exc: Exception) -> None:
    seq, project, received_at, source = raw[0], raw[2], raw[8], raw[9]
    conn.execute(
        "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            -seq,
            project,
            source,
            received_at,
            repr(raw).encode(),
            f"unreadable row: {exc!r}",
            now_us(),
        ),
    )


def _convert_cursors(conn: sqlite3.Connection, last_seqs: list[int]) -> None:
    """Cursors by row seq (a table the forwarder created itself) -> cursors by batch."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'forward_cursors'"
    ).fetchone()
    old = conn.execute("SELECT * FROM forward_cursors").fetchall() if exists else []
    conn.execute("DROP TABLE IF EXISTS forward_cursors")
    conn.execute(CURSORS)
    for sink, seq, updated_at in old:
        delivered = sum(1 for last in last_seqs if last <= seq)  # runs are numbered from 1
        conn.execute("INSERT INTO forward_cursors VALUES (?, ?, ?)", (sink, delivered, updated_at))


def _move_journal(conn: sqlite3.Connection) -> int:
    moved = 0
    for batch, project, source, received_at, body in conn.execute(
        "SELECT batch, project, source, received_at, body FROM journal ORDER BY batch"
    ).fetchall():
        try:
            items = decode_batch(body, cast(Source, source))
        except Exception as exc:  # set aside, never blocking (as before v6)
            conn.execute(
                "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)",
                (batch, project, source, received_at, body, repr(exc), now_us()),
            )
            continue
        _insert(
            conn,
            batch,
            project,
            source,
            received_at,
            span(items, cast(Source, source), received_at),
            body,
        )
        moved += 1
    return moved


def _insert(
    conn: sqlite3.Connection,
    batch: int,
    project: str,
    source: str,
    received_at: int,
    extent: Span,
    body: bytes,
) -> None:
    conn.execute(_INSERT_BATCH, (batch, project, source, received_at, *extent))
    conn.execute("INSERT INTO bodies VALUES (?, ?)", (batch, body))
