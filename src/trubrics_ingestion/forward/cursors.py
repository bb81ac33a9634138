"""The forwarder's state in the node's SQLite file: one cursor per engine, and pruning.

A cursor is the ``seq`` of the last event an engine confirmed. ``events.seq`` is the
table's rowid, handed out in commit order under SQLite's single writer lock, so every row
committed later has a larger seq: "seq > cursor" is exactly "not yet delivered".

Because ``seq`` is a plain rowid (not AUTOINCREMENT), SQLite hands out ``max(seq) + 1``:
deleting the newest row would let the next event reuse its seq, below a cursor, and it
would never be forwarded. Pruning therefore always keeps the newest row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..clock import now_us
from .sink import COLUMNS, Row

# Idempotent; store.py's migrations will take it over.
CREATE = """
CREATE TABLE IF NOT EXISTS forward_cursors (
    sink TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated_at INTEGER
)
"""
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
PRUNE_CHUNK = 5000  # rows per delete transaction: keeps the write lock brief


def ensure_table(conn: sqlite3.Connection) -> None:
    """Create the cursor table if missing (no write at all when it exists)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'forward_cursors'"
    ).fetchone()
    if exists is None:
        conn.execute(CREATE)


def cursor(conn: sqlite3.Connection, sink: str) -> int:
    """The last seq delivered to ``sink`` (0: nothing yet)."""
    row = conn.execute("SELECT seq FROM forward_cursors WHERE sink = ?", (sink,)).fetchone()
    return 0 if row is None else int(row[0])


def advance(conn: sqlite3.Connection, sink: str, seq: int) -> None:
    """Record that ``sink`` confirmed everything up to ``seq``; never moves backwards (a
    second forwarder for the same engine, e.g. during a restart, cannot undo progress)."""
    conn.execute(
        "INSERT INTO forward_cursors (sink, seq, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (sink) DO UPDATE SET seq = max(seq, excluded.seq),"
        " updated_at = excluded.updated_at",
        (sink, seq, now_us()),
    )


def reset(conn: sqlite3.Connection, sink: str, seq: int = 0) -> None:
    """Move ``sink``'s cursor to ``seq`` (backwards too): everything after is sent again.
    For a stopped forwarder (a running one reads its cursor only when idle)."""
    ensure_table(conn)
    conn.execute(
        "INSERT INTO forward_cursors (sink, seq, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
        (sink, seq, now_us()),
    )


def read_batch(conn: sqlite3.Connection, after: int, limit: int) -> Sequence[Row]:
    """Up to ``limit`` events with seq > ``after``, oldest first."""
    rows: list[Row] = conn.execute(_SELECT, (after, limit)).fetchall()
    return rows


@dataclass(frozen=True)
class SinkStatus:
    """How far behind one engine is, from the store alone (no engine is contacted)."""

    sink: str  # the cursor id
    cursor: int  # last delivered seq
    backlog_rows: int  # newest seq minus cursor (pruned gaps count: an upper bound)
    oldest_undelivered_age_s: float | None  # now minus received_at of the next row, if any
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
    has_cursors = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'forward_cursors'"
    ).fetchone()
    row = None
    if has_cursors:
        row = conn.execute(
            "SELECT seq, updated_at FROM forward_cursors WHERE sink = ?", (sink,)
        ).fetchone()
    seq, updated_at = (0, None) if row is None else (int(row[0]), row[1])
    newest = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    oldest = conn.execute(
        "SELECT received_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (seq,)
    ).fetchone()
    age = None if oldest is None else max(0.0, (now_us() - oldest[0]) / 1e6)
    return SinkStatus(sink, seq, max(0, newest - seq), age, updated_at)


def prune(
    conn: sqlite3.Connection,
    sinks: Sequence[str],
    retention_s: float | None,
    *,
    at_us: int | None = None,
) -> int:
    """Delete events that every one of ``sinks`` has confirmed and that were received more
    than ``retention_s`` ago; returns how many. ``None`` (the default everywhere) keeps
    everything, and so does an empty ``sinks``: nothing is deleted that no engine holds.
    Deleted rows are gone from ``events export`` too. The newest row is always kept (see
    the module docstring)."""
    if retention_s is None or not sinks:
        return 0
    ensure_table(conn)
    delivered = min(cursor(conn, sink) for sink in sinks)
    newest = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    limit = min(delivered, newest - 1)
    cutoff = (at_us if at_us is not None else now_us()) - round(retention_s * 1_000_000)
    deleted = 0
    while True:
        done = conn.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq <= ?"
            " AND received_at < ? ORDER BY seq LIMIT ?)",
            (limit, cutoff, PRUNE_CHUNK),
        ).rowcount
        deleted += done
        if done < PRUNE_CHUNK:
            return deleted
