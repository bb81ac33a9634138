"""Journal batches -> per-event rows, after the acknowledgement.

Writing 100 indexed rows costs several times more than journaling the batch as one row,
so the request path only journals (see ``journal.py``) and this step builds the rows
later. Each step inserts the rows of some batches and deletes those batches in ONE
transaction, so every acknowledged event becomes exactly one row even when the server
and a CLI reader both run it: whoever takes the write lock second finds nothing left.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import cast

from .expand import EventRow, expand
from .ids import id_factory
from .schema import Kind, decode_batch
from .store import meta

_INSERT = (
    "INSERT INTO events (id, project, user_id, event, timestamp, thread_id, properties,"
    " received_at, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def materialise(conn: sqlite3.Connection, *, max_batches: int = 32) -> int:
    """Turn up to ``max_batches`` of the oldest journal batches into events; returns how many."""
    node = meta(conn, "node_id")
    conn.execute("BEGIN IMMEDIATE")
    try:
        batches = conn.execute(
            "SELECT batch, project, source, received_at, body FROM journal ORDER BY batch LIMIT ?",
            (max_batches,),
        ).fetchall()
        if batches:
            rows = (row for batch in batches for row in _rows(batch, node))
            conn.executemany(_INSERT, rows)
            conn.execute("DELETE FROM journal WHERE batch <= ?", (batches[-1][0],))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(batches)


def catch_up(conn: sqlite3.Connection) -> int:
    """Materialise everything journaled so far, so readers see every acknowledged event."""
    total = 0
    while done := materialise(conn):
        total += done
    return total


def pending_batches(conn: sqlite3.Connection) -> int:
    """Batches acknowledged but not yet materialised."""
    return int(conn.execute("SELECT count(*) FROM journal").fetchone()[0])


def _rows(journaled: tuple[int, str, str, int, bytes], node: int) -> Iterator[EventRow]:
    batch, project, source, received_at, body = journaled
    items = decode_batch(body, cast(Kind, source))
    new_id = id_factory(received_at // 1000, batch, node)
    return expand(items, project=project, received_at=received_at, new_id=new_id)
