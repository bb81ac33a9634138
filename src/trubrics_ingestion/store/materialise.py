"""Journal batches -> per-event rows, after the acknowledgement, in processes of their own.

Writing 100 rows costs several times more than journaling the batch as one row, and
building them is Python work that would hold the GIL against the request loop. So the
server only journals (``journal.py``), and low-priority child processes
(``trubrics-ingestion events materialise --follow``, see ``node.children``) turn batches
into rows: under load they yield the CPU to ingestion and the backlog waits durably in
the journal; when load drops they catch up.

Each step inserts the rows of some batches and deletes those batches in ONE
transaction, so every acknowledged event becomes exactly one row even when a child
and a CLI reader both run it: whoever commits second finds its batches gone and retries.

Building rows is about half of the work and needs no lock, so the server runs several
materialisers (``serve --materialisers``, 2 by default), each taking every n-th run of
``BATCHES_PER_STEP`` batches (a ``Shard``): they build rows on several cores at once and
take turns to insert them, oldest run first, so that rows still land in journal order
(an event's ``seq`` follows its batch's, as one materialiser would have it).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from ..clock import now_us
from ..schema import Source, decode_batch
from .expand import EventRow, expand
from .ids import id_factory
from .sqlite import connect, meta, transaction

log = logging.getLogger("trubrics_ingestion.materialise")

BATCHES_PER_STEP = 8  # about 800 rows: keeps the write lock, and so journal commits, brief
IDLE_POLL_S = 0.05
TURN_POLL_S = 0.0005  # a shard with rows ready checks whether its turn has come, first
TURN_POLL_MAX_S = 0.002  # ... then every 2 ms at most: a run takes about 10 ms to insert
TURN_TIMEOUT_S = 5.0  # then it starts over (after checking on its parent)
FAILURE_BACKOFF_S = 1.0
NICENESS = 10  # the child gets the CPU that ingestion leaves over
_INSERT = (
    "INSERT INTO events (id, project, user_id, event, timestamp, thread_id, properties,"
    " received_at, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = "SELECT batch, project, source, received_at, body FROM journal"
Journaled = tuple[int, str, str, int, bytes]


@dataclass(frozen=True)
class Shard:
    """Materialiser ``index`` of ``count``: it takes the runs of ``BATCHES_PER_STEP``
    consecutive batches whose number (batch // BATCHES_PER_STEP) is ``index`` modulo
    ``count``, and inserts each run only once every older batch is gone from the journal."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"``, counting from 1 as people do: ``"1/2"`` and ``"2/2"`` share the work."""
        try:
            number, count = (int(part) for part in text.split("/"))
        except ValueError:
            number = count = 0
        if not 1 <= number <= count:
            raise ValueError(f"not a shard: {text!r} (want K/N with 1 <= K <= N)")
        return cls(number - 1, count)

    def __str__(self) -> str:
        return f"{self.index + 1}/{self.count}"


ALL = Shard()


def materialise(
    conn: sqlite3.Connection, *, max_batches: int = BATCHES_PER_STEP, shard: Shard = ALL
) -> int:
    """Turn up to ``max_batches`` of the oldest journal batches into events (a ``shard``
    other than ``ALL``: its oldest run, whatever ``max_batches``); returns how many.

    A batch that cannot become rows (a bug, or data that slipped past validation) is moved
    to ``quarantine`` with its error instead of blocking every batch after it forever.
    Errors of the environment (disk full, locked) are raised: the same batches are retried.
    """
    batches = _next_batches(conn, max_batches, shard)
    if not batches:
        return 0
    node = meta(conn, "node_id")
    in_turn = shard.count > 1
    try:
        return _move(conn, batches, node, in_turn=in_turn)
    except sqlite3.OperationalError:
        raise
    except Exception:  # one of them is bad: find it by moving them one at a time
        return sum(_move_or_quarantine(conn, batch, node, in_turn) for batch in batches)


def _next_batches(conn: sqlite3.Connection, max_batches: int, shard: Shard) -> list[Journaled]:
    if shard.count == 1:
        rows: list[Journaled] = conn.execute(
            f"{_SELECT} ORDER BY batch LIMIT ?", (max_batches,)
        ).fetchall()
        return rows
    rows = conn.execute(
        f"{_SELECT} WHERE (batch / ?) % ? = ? ORDER BY batch LIMIT ?",
        (BATCHES_PER_STEP, shard.count, shard.index, BATCHES_PER_STEP),
    ).fetchall()
    run = rows[0][0] // BATCHES_PER_STEP if rows else None  # never two runs: one lies between
    return [row for row in rows if row[0] // BATCHES_PER_STEP == run]


def _move_or_quarantine(
    conn: sqlite3.Connection, batch: Journaled, node: int, in_turn: bool
) -> int:
    try:
        return _move(conn, [batch], node, in_turn=in_turn)
    except sqlite3.OperationalError:
        raise
    except Exception as exc:
        log.error("journal batch %d cannot be materialised, quarantined: %r", batch[0], exc)
        with transaction(conn):
            conn.execute(
                "INSERT INTO quarantine SELECT *, ?, ? FROM journal WHERE batch = ?",
                (repr(exc), now_us(), batch[0]),
            )
            conn.execute("DELETE FROM journal WHERE batch = ?", (batch[0],))
        return 1


def _move(
    conn: sqlite3.Connection, batches: list[Journaled], node: int, *, in_turn: bool = False
) -> int:
    """Rows in, batches out, in one transaction; the rows are built before the lock is taken
    (and, ``in_turn``, inserted only once no older batch is left)."""
    rows = [row for batch in batches for row in _rows(batch, node)]
    first, last = batches[0][0], batches[-1][0]
    if in_turn and not _wait_turn(conn, first):
        return 0
    with transaction(conn):
        still_there = conn.execute(
            "SELECT count(*) FROM journal WHERE batch BETWEEN ? AND ?", (first, last)
        ).fetchone()[0]
        if still_there != len(batches):  # another materialiser got there first
            return 0
        conn.executemany(_INSERT, rows)
        conn.execute("DELETE FROM journal WHERE batch BETWEEN ? AND ?", (first, last))
    return len(batches)


def _wait_turn(conn: sqlite3.Connection, first: int) -> bool:
    """Wait, without a lock, until batch ``first`` is the oldest in the journal: batch
    numbers only grow, so once it is, it stays so. False if it is gone (another
    materialiser took it) or the wait outlasts ``TURN_TIMEOUT_S``."""
    deadline = time.monotonic() + TURN_TIMEOUT_S
    delay = TURN_POLL_S
    while (oldest := _oldest_batch(conn)) < first:
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(2 * delay, TURN_POLL_MAX_S)
    return oldest == first


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
    items = decode_batch(body, cast(Source, source))
    new_id = id_factory(received_at // 1000, batch, node)
    return expand(items, project=project, received_at=received_at, new_id=new_id)


def follow(database: Path, *, parent_pid: int | None = None, shard: Shard = ALL) -> None:
    """Materialise whatever gets journaled (``shard``'s runs of it), forever (or until
    ``parent_pid`` is gone)."""
    os.nice(NICENESS)
    conn = connect(database)
    conn.execute("PRAGMA synchronous=NORMAL")  # the journal holds the batches durably
    while parent_pid is None or os.getppid() == parent_pid:
        try:
            if not materialise(conn, shard=shard):
                time.sleep(IDLE_POLL_S)
        except Exception:  # a bad batch or a full disk: say so, back off, retry
            log.exception("materialising journaled batches failed; will retry")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            time.sleep(FAILURE_BACKOFF_S)
