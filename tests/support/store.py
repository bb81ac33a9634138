"""Batches put into a node's store as the journal writes them, without a server."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trubrics_ingestion.schema import Source, decode_batch
from trubrics_ingestion.store.codec import LZ4, pack
from trubrics_ingestion.store.journal import Batch, insert
from trubrics_ingestion.store.sqlite import transaction


def journal(
    conn: sqlite3.Connection, batches: Sequence[tuple[str, Source, list[dict[str, Any]]]]
) -> None:
    """Store ``(project, source, items)`` batches, validated as the server does, in one
    commit."""
    now = time.time_ns() // 1000
    encoded = [(project, source, json.dumps(items).encode()) for project, source, items in batches]
    with transaction(conn):
        insert(
            conn,
            [Batch.of(p, s, now, body, decode_batch(body, s)) for p, s, body in encoded],
        )


def poison(
    database: Path,
    project: str,
    body: bytes = b"[not json",
    received_at: int = 1_780_000_000_000_000,
    *,
    blob: bytes | None = None,
) -> int:
    """Store a batch that cannot be read back (as if a bug let it through, or a hand edit):
    ``body`` compressed as the journal does, or ``blob`` as the compressed bytes (a damaged
    file); returns its number."""
    conn = sqlite3.connect(database)
    with transaction(conn):
        (last,) = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'batches'").fetchone()
        conn.execute(
            "INSERT INTO batches (batch, project, source, received_at, events, first_at,"
            " last_at) VALUES (?, ?, 'event', ?, 1, 0, 0)",
            (last + 1, project, received_at),
        )
        conn.execute(
            "INSERT INTO bodies (batch, body, codec) VALUES (?, ?, ?)",
            (last + 1, pack(body) if blob is None else blob, LZ4),
        )
    conn.close()
    return int(last + 1)
