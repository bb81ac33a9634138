"""Journal batches -> per-event rows, after the acknowledgement, in a process of its own.

Writing 100 indexed rows costs several times more than journaling the batch as one row,
and building them is Python work that would hold the GIL against the request loop. So
the server only journals (``journal.py``), and a low-priority child process
(``trubrics-ingestion events materialise --follow``, see ``children.py``) turns
batches into rows: under load it yields the CPU to ingestion
and the backlog waits durably in the journal; when load drops it catches up.

Each step inserts the rows of some batches and deletes those batches in ONE
transaction, so every acknowledged event becomes exactly one row even when the child
and a CLI reader both run it: whoever commits second finds its batches gone and retries.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from .expand import EventRow, expand
from .ids import id_factory
from .schema import Kind, decode_batch
from .store import connect, meta, transaction

log = logging.getLogger("trubrics_ingestion.materialise")

BATCHES_PER_STEP = 8  # about 800 rows: keeps the write lock, and so journal commits, brief
IDLE_POLL_S = 0.05
FAILURE_BACKOFF_S = 1.0
NICENESS = 10  # the child gets the CPU that ingestion leaves over
_INSERT = (
    "INSERT INTO events (id, project, user_id, event, timestamp, thread_id, properties,"
    " received_at, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
Journaled = tuple[int, str, str, int, bytes]


def materialise(conn: sqlite3.Connection, *, max_batches: int = BATCHES_PER_STEP) -> int:
    """Turn up to ``max_batches`` of the oldest journal batches into events; returns how many.

    A batch that cannot become rows (a bug, or data that slipped past validation) is moved
    to ``quarantine`` with its error instead of blocking every batch after it forever.
    Errors of the environment (disk full, locked) are raised: the same batches are retried.
    """
    batches: list[Journaled] = conn.execute(
        "SELECT batch, project, source, received_at, body FROM journal ORDER BY batch LIMIT ?",
        (max_batches,),
    ).fetchall()
    if not batches:
        return 0
    node = meta(conn, "node_id")
    try:
        return _move(conn, batches, node)
    except sqlite3.OperationalError:
        raise
    except Exception:  # one of them is bad: find it by moving them one at a time
        return sum(_move_or_quarantine(conn, batch, node) for batch in batches)


def _move_or_quarantine(conn: sqlite3.Connection, batch: Journaled, node: int) -> int:
    try:
        return _move(conn, [batch], node)
    except sqlite3.OperationalError:
        raise
    except Exception as exc:
        log.error("journal batch %d cannot be materialised, quarantined: %r", batch[0], exc)
        with transaction(conn):
            conn.execute(
                "INSERT INTO quarantine SELECT *, ?, ? FROM journal WHERE batch = ?",
                (repr(exc), time.time_ns() // 1000, batch[0]),
            )
            conn.execute("DELETE FROM journal WHERE batch = ?", (batch[0],))
        return 1


def _move(conn: sqlite3.Connection, batches: list[Journaled], node: int) -> int:
    """Rows in, batches out, in one transaction; the rows are built before the lock is taken."""
    rows = [row for batch in batches for row in _rows(batch, node)]
    first, last = batches[0][0], batches[-1][0]
    with transaction(conn):
        still_there = conn.execute(
            "SELECT count(*) FROM journal WHERE batch BETWEEN ? AND ?", (first, last)
        ).fetchone()[0]
        if still_there != len(batches):  # another materialiser got there first
            return 0
        conn.executemany(_INSERT, rows)
        conn.execute("DELETE FROM journal WHERE batch BETWEEN ? AND ?", (first, last))
    return len(batches)


def catch_up(conn: sqlite3.Connection) -> None:
    """Materialise every batch journaled before this call, so readers see every acknowledged
    event (and, under endless load, do not chase batches that arrive meanwhile)."""
    (target,) = conn.execute("SELECT max(batch) FROM journal").fetchone()
    while target is not None and _oldest_batch(conn) <= target:
        materialise(conn)


def _oldest_batch(conn: sqlite3.Connection) -> float:
    (oldest,) = conn.execute("SELECT min(batch) FROM journal").fetchone()
    return float("inf") if oldest is None else float(oldest)


def _rows(journaled: Journaled, node: int) -> Iterator[EventRow]:
    batch, project, source, received_at, body = journaled
    items = decode_batch(body, cast(Kind, source))
    new_id = id_factory(received_at // 1000, batch, node)
    return expand(items, project=project, received_at=received_at, new_id=new_id)


def follow(database: Path, *, parent_pid: int | None = None) -> None:
    """Materialise whatever gets journaled, forever (or until ``parent_pid`` is gone)."""
    os.nice(NICENESS)
    conn = connect(database)
    conn.execute("PRAGMA synchronous=NORMAL")  # the journal holds the batches durably
    while parent_pid is None or os.getppid() == parent_pid:
        try:
            if not materialise(conn):
                time.sleep(IDLE_POLL_S)
        except Exception:  # a bad batch or a full disk: say so, back off, retry
            log.exception("materialising journaled batches failed; will retry")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            time.sleep(FAILURE_BACKOFF_S)
