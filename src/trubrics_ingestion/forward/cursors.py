"""The forwarder's state in the node's SQLite file: one cursor per engine, and pruning.

A cursor is the number of the last batch an engine confirmed (with every batch before
it). Batch numbers are handed out in commit order, inside the write transaction of the one
that stores them (the journal, or the OTLP resolver), and never reused (AUTOINCREMENT), so
"batch > cursor" is exactly "not yet delivered".
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..clock import now_us
from ..store import batches, genai
from ..store.sqlite import transaction

PRUNE_CHUNK = 50  # batches per delete transaction (about 5,000 events, as before): a brief lock


def cursor(conn: sqlite3.Connection, sink: str) -> int:
    """The last batch delivered to ``sink`` (0: nothing yet)."""
    row = conn.execute("SELECT batch FROM forward_cursors WHERE sink = ?", (sink,)).fetchone()
    return 0 if row is None else int(row[0])


def advance(conn: sqlite3.Connection, sink: str, batch: int) -> None:
    """Record that ``sink`` confirmed everything up to ``batch``; never moves backwards (a
    second forwarder for the same engine, e.g. during a restart, cannot undo progress)."""
    conn.execute(
        "INSERT INTO forward_cursors (sink, batch, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (sink) DO UPDATE SET batch = max(batch, excluded.batch),"
        " updated_at = excluded.updated_at",
        (sink, batch, now_us()),
    )


def reset(conn: sqlite3.Connection, sink: str, batch: int = 0) -> None:
    """Move ``sink``'s cursor to ``batch`` (backwards too): everything after is sent again.
    For a stopped forwarder (a running one reads its cursor only when idle)."""
    conn.execute(
        "INSERT INTO forward_cursors (sink, batch, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (sink) DO UPDATE SET batch = excluded.batch,"
        " updated_at = excluded.updated_at",
        (sink, batch, now_us()),
    )


@dataclass(frozen=True)
class SinkStatus:
    """How far behind one engine is, from the store alone (no engine is contacted)."""

    sink: str  # the cursor id
    cursor: int  # last delivered batch
    backlog_rows: int  # events in the batches after the cursor
    oldest_undelivered_age_s: float | None  # now minus received_at of the next batch, if any
    updated_at: int | None  # when the cursor last moved, microseconds since the epoch


def read_status(database: Path, sinks: Sequence[str]) -> list[SinkStatus]:
    """Status of each sink, reading the SQLite file read-only (safe while the server runs,
    and it never creates or migrates a store)."""
    uri = f"{database.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=1)  # /readyz and /metrics must not hang
    try:
        return [_status(conn, sink) for sink in sinks]
    finally:
        conn.close()


def _status(conn: sqlite3.Connection, sink: str) -> SinkStatus:
    row = conn.execute(
        "SELECT batch, updated_at FROM forward_cursors WHERE sink = ?", (sink,)
    ).fetchone()
    batch, updated_at = (0, None) if row is None else (int(row[0]), row[1])
    backlog, oldest = conn.execute(
        "SELECT coalesce(sum(events), 0), min(received_at) FROM batches WHERE batch > ?", (batch,)
    ).fetchone()
    age = None if oldest is None else max(0.0, (now_us() - oldest) / 1e6)
    return SinkStatus(sink, batch, int(backlog), age, updated_at)


def prune(
    conn: sqlite3.Connection,
    sinks: Sequence[str],
    retention_s: float | None,
    *,
    at_us: int | None = None,
) -> int:
    """Delete batches that every one of ``sinks`` has confirmed and that were received more
    than ``retention_s`` ago; returns how many events they held. ``None`` (the default
    everywhere) keeps everything, and so does an empty ``sinks``: nothing is deleted that
    no engine holds. Deleted events are gone from ``events export`` too."""
    if retention_s is None or not sinks:
        return 0
    delivered = min(cursor(conn, sink) for sink in sinks)
    cutoff = (at_us if at_us is not None else now_us()) - round(retention_s * 1_000_000)
    deleted = 0
    while True:
        with transaction(conn):
            found = conn.execute(  # and no OTLP export the resolver has not read yet
                "SELECT batch, events FROM batches WHERE batch <= ? AND received_at < ?"
                " AND NOT (source = ? AND batch > ?) ORDER BY batch LIMIT ?",
                (delivered, cutoff, genai.EXPORT, genai.resolved_through(conn), PRUNE_CHUNK),
            ).fetchall()
            batches.delete(conn, [batch for batch, _ in found])
        deleted += sum(int(events) for _, events in found)
        if len(found) < PRUNE_CHUNK:
            return deleted
