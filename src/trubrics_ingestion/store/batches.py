"""The node's store of events: journaled batches, expanded into events as they are read.

An acknowledged batch is kept as it arrived (its validated request body, compressed:
``codec.py``) in ``bodies``, and
described by one narrow row in ``batches``: project, source, receive time, how many events
it expands to and the span of their timestamps. Nothing turns batches into per-event rows
on the way in (that cost several times the request itself); readers and forwarders expand
the batches they read (``expand.py``), and event ids are derived from the batch number, so
every reading gives every event the same id.

The narrow table is what makes reading cheap: counting sums ``events`` over it (a few MB
for tens of millions of events) and a time range picks its batches through the index on
``last_at`` without touching the others' bodies.

A batch that cannot be expanded (a bug, or a hand edit) is set aside in ``quarantine``
with its error by whoever meets it first while forwarding, so it never blocks the batches
after it; readers skip it and say so.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import NamedTuple

import msgspec

from ..clock import now_us
from . import genai
from .codec import unpack
from .expand import EventColumns, EventRow, expand, expand_events, items_of
from .ids import batch_ids, id_factory
from .sqlite import meta, transaction
from .upgrade import LEGACY_ROWS

_BY_TIME = "batches_by_time"  # the index on last_at


class Stored(NamedTuple):
    """One journaled batch as it is read back."""

    batch: int
    project: str
    source: str
    received_at: int
    blob: bytes  # the body as stored, in ``codec``
    codec: str

    @property
    def body(self) -> bytes:
        """The validated request body; ``ValueError`` if the stored blob is damaged."""
        return unpack(self.blob, self.codec)


class Unexpandable(Exception):
    """A stored batch that cannot be turned into events."""


def events_of(stored: Stored, node: int) -> list[EventRow]:
    """The batch's events, in the order the client sent them, with their derived ids."""
    return columns_of(stored, node).rows()


def columns_of(stored: Stored, node: int, *, compact: bool = False) -> EventColumns:
    """``events_of``, column by column (what forwarders encode); ``compact``: properties
    written plainly, without whitespace between tokens or optional escapes (plain events'
    are so made by ``expand_events``, the others' are encoded so)."""
    try:
        if stored.source == "event":
            with contextlib.suppress(ValueError):  # msgspec's errors included
                return _plain_events(stored, node, compact)
        return EventColumns.of(_rows(stored, node))
    except Exception as exc:
        raise Unexpandable(f"batch {stored.batch}: {type(exc).__name__}: {exc}") from exc


def _rows(stored: Stored, node: int) -> list[EventRow]:
    if stored.source == LEGACY_ROWS:
        return _legacy_rows(stored)
    if stored.source in _OTLP:
        return _OTLP[stored.source](stored, node)
    return _events(stored, node)  # an error is named as the request's decoder names it


def _plain_events(stored: Stored, node: int, compact: bool) -> EventColumns:
    """The fast way, for the common batch: plain events that read back as they were
    acknowledged (``expand_events``)."""
    ids = partial(batch_ids, stored.received_at // 1000, stored.batch, node)
    return expand_events(
        stored.body,
        project=stored.project,
        received_at=stored.received_at,
        ids=ids,
        compact=compact,
    )


def _events(stored: Stored, node: int) -> list[EventRow]:
    """The way of every batch: decoded as a request is, then expanded event by event."""
    items = items_of(stored.body, stored.source, stored.received_at)
    new_id = id_factory(stored.received_at // 1000, stored.batch, node)
    return list(
        expand(items, project=stored.project, received_at=stored.received_at, new_id=new_id)
    )


def _calls(stored: Stored, node: int) -> list[EventRow]:
    new_id = id_factory(stored.received_at // 1000, stored.batch, node)
    return genai.call_rows(
        stored.body, project=stored.project, received_at=stored.received_at, new_id=new_id
    )


# OpenTelemetry's batches (``genai.py``): exports are not events, resolved calls are.
_OTLP: dict[str, Callable[[Stored, int], list[EventRow]]] = {
    genai.EXPORT: lambda stored, node: [],
    genai.CALLS: _calls,
}

_LegacyRow = tuple[str, str, str, int, str | None, str, str]
_legacy = msgspec.json.Decoder(list[_LegacyRow])


def _legacy_rows(stored: Stored) -> list[EventRow]:
    """Rows a release before v6 materialised, as the upgrade moved them (``upgrade.py``):
    ``[id, user_id, event, timestamp, thread_id, properties, source]`` each."""
    return [
        EventRow(
            id_,
            stored.project,
            user,
            event,
            at,
            thread,
            properties.encode(),
            stored.received_at,
            source,
        )
        for id_, user, event, at, thread, properties, source in _legacy.decode(stored.body)
    ]


def node_id(conn: sqlite3.Connection) -> int:
    return meta(conn, "node_id")


def total(conn: sqlite3.Connection, project: str | None = None) -> int:
    """Events stored (for one project): a sum over the narrow table, no body is read."""
    where, args = ("", ()) if project is None else (" WHERE project = ?", (project,))
    (events,) = conn.execute(
        f"SELECT coalesce(sum(events), 0) FROM batches{where}", args
    ).fetchone()
    return int(events)


def newest(conn: sqlite3.Connection) -> int:
    """The newest batch number (0: none yet)."""
    return int(conn.execute("SELECT coalesce(max(batch), 0) FROM batches").fetchone()[0])


def after(conn: sqlite3.Connection, batch: int, limit: int) -> list[tuple[int, int]]:
    """``(batch, events)`` of up to ``limit`` batches after ``batch``, oldest first."""
    rows: list[tuple[int, int]] = conn.execute(
        "SELECT batch, events FROM batches WHERE batch > ? ORDER BY batch LIMIT ?", (batch, limit)
    ).fetchall()
    return rows


def first_received(conn: sqlite3.Connection, since: int) -> int:
    """The number of the first batch received at ``since`` or later (past the newest: none).

    A binary search on the batch numbers, as batches are numbered in the order they are
    committed, which is that of their receipt but for requests overlapping in time: start
    a minute (``RECEIPT_SLACK_US``) earlier and filter on ``received_at`` for an exact
    range. No index on ``received_at`` is kept for this (the journal would pay it per batch)."""
    low, high = conn.execute(
        "SELECT coalesce(min(batch), 1), coalesce(max(batch), 0) + 1 FROM batches"
    ).fetchone()
    while low < high:
        middle = (low + high) // 2
        row = conn.execute(
            "SELECT batch, received_at FROM batches WHERE batch >= ? ORDER BY batch LIMIT 1",
            (middle,),
        ).fetchone()
        if row is None or row[1] >= since:
            high = middle
        else:
            low = row[0] + 1
    return int(low)


RECEIPT_SLACK_US = 60_000_000


def per_minute(conn: sqlite3.Connection, since: int) -> list[tuple[int, str, str, int]]:
    """``(minute, project, source, events)`` of the batches received since ``since``, the
    minute as microseconds since the epoch: a sum over the narrow rows of that range."""
    first = first_received(conn, since - RECEIPT_SLACK_US)
    rows: list[tuple[int, str, str, int]] = conn.execute(
        "SELECT received_at / 60000000 * 60000000 AS minute, project, source, sum(events)"
        " FROM batches WHERE batch >= ? AND received_at >= ?"
        " GROUP BY minute, project, source ORDER BY minute",
        (first, since),
    ).fetchall()
    return rows


def recent(conn: sqlite3.Connection, project: str, *, since: int, limit: int) -> list[int]:
    """Numbers of the newest ``limit`` batches of ``project`` received since ``since``,
    newest first: what a bounded search of the store by thread or user opens."""
    first = first_received(conn, since - RECEIPT_SLACK_US)
    found = conn.execute(
        "SELECT batch FROM batches WHERE batch >= ? AND project = ? AND received_at >= ?"
        " ORDER BY batch DESC LIMIT ?",
        (first, project, since, limit),
    )
    return [batch for (batch,) in found]


def matching(
    conn: sqlite3.Connection,
    *,
    project: str | None = None,
    since: int | None = None,
    until: int | None = None,
    after: int = 0,
) -> Iterator[int]:
    """Numbers of the batches after ``after`` that may hold events of ``project`` timed in
    ``[since, until)``, oldest first. With ``since``, only the index's range is visited."""
    clauses = ["batch > ?"]
    args: list[object] = [after]
    for clause, value in (
        ("project = ?", project),
        ("last_at >= ?", since),
        ("first_at < ?", until),
    ):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    where = " AND ".join(clauses)
    if since is None:
        found = conn.execute(f"SELECT batch FROM batches WHERE {where} ORDER BY batch", args)
        yield from (batch for (batch,) in found)
        return
    found = conn.execute(f"SELECT batch FROM batches INDEXED BY {_BY_TIME} WHERE {where}", args)
    yield from sorted(batch for (batch,) in found)


def read(conn: sqlite3.Connection, batch: int) -> Stored | None:
    """One stored batch, body included (None: pruned or quarantined meanwhile)."""
    found = read_range(conn, batch - 1, batch)
    return found[0] if found else None


def read_range(conn: sqlite3.Connection, after: int, last: int) -> list[Stored]:
    """The stored batches numbered after ``after`` up to ``last``, oldest first, bodies
    included: one query for what a forwarder sends at once."""
    rows = conn.execute(
        "SELECT b.batch, project, source, received_at, body, codec FROM batches AS b"
        " JOIN bodies USING (batch) WHERE b.batch > ? AND b.batch <= ? ORDER BY b.batch",
        (after, last),
    ).fetchall()
    return [Stored(*row) for row in rows]


def events_at(conn: sqlite3.Connection, batch: int, node: int) -> list[EventRow] | None:
    """The events of stored batch ``batch`` (None: pruned or quarantined meanwhile);
    ``Unexpandable`` if it cannot be turned into events."""
    stored = read(conn, batch)
    return None if stored is None else events_of(stored, node)


def quarantine(conn: sqlite3.Connection, batch: int, error: str) -> None:
    """Set the batch aside with its error, so the batches after it go on."""
    with transaction(conn):
        conn.execute(
            "INSERT OR IGNORE INTO quarantine (batch, project, source, received_at, body, codec,"
            " error, quarantined_at) SELECT b.batch, project, source, received_at, body, codec,"
            " ?, ?"
            " FROM batches AS b JOIN bodies USING (batch) WHERE b.batch = ?",
            (error, now_us(), batch),
        )
        delete(conn, [batch])


def delete(conn: sqlite3.Connection, batches: Sequence[int]) -> None:
    """Remove batches (pruning, quarantine); in the caller's transaction."""
    numbers = [(batch,) for batch in batches]
    conn.executemany("DELETE FROM batches WHERE batch = ?", numbers)
    conn.executemany("DELETE FROM bodies WHERE batch = ?", numbers)
