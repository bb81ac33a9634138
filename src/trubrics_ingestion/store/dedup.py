"""Recognising a retried batch, so that a lost response never means stored twice.

Both SDKs retry a failed batch once, 5 s later, with the identical body. A batch is a
repeat when the same project sent the same body to the same endpoint within the window,
or, for clients that send one, the same ``Idempotency-Key`` (then the body must match
too, or it is a conflict; and identical bodies under different keys are distinct).

The journal writer is the only caller, so check-and-remember needs no lock and two
concurrent copies of a batch cannot both pass. The in-memory map is the authority; each
remembered digest is also appended to the ``dedup`` table in the batch's own transaction,
so a restart (even after a crash) still recognises retries of batches acknowledged before.

Memory is bounded: at most ``max_entries`` digests (about 280 bytes each), the oldest
forgotten first, at once. So the window is really the last ``window_s`` seconds or the last
``max_entries`` batches, whichever is shorter: one key holder sending thousands of batches
a second can shorten it, never grow the node's memory. A retry of a forgotten batch is
stored again (counted: ``trubrics_dedup_evictions``).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections import OrderedDict
from enum import Enum

PRUNE_ROWS = 10_000


class Verdict(Enum):
    NEW = "new"
    REPEAT = "repeat"
    CONFLICT = "conflict"  # an Idempotency-Key reused with another body


def batch_digests(
    project: str, source: str, body: bytes, idempotency_key: str | None
) -> tuple[bytes, bytes]:
    """The batch's identity and its body's digest (they coincide without a key)."""
    body_digest = _digest(project, source, body)
    if idempotency_key is None:
        return body_digest, body_digest
    return _digest(project, "idempotency-key", idempotency_key.encode()), body_digest


def _digest(project: str, source: str, data: bytes) -> bytes:
    # hashlib releases the GIL on large inputs: hashing in the writer thread is free for the loop.
    prefix = f"{project}\0{source}\0".encode()
    return hashlib.blake2b(prefix + data, digest_size=16).digest()


class RecentBatches:
    """Digests of the batches journaled within the window, oldest first."""

    def __init__(self, *, window_s: float, max_entries: int) -> None:
        self._window_s = window_s
        self._max_entries = max_entries
        self._seen: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._window_s > 0

    def load(self, conn: sqlite3.Connection) -> None:
        """Remember what was journaled within the window before a restart (the newest
        ``max_entries`` of it: the table may hold more, from a larger bound)."""
        now = time.time()
        rows = conn.execute(
            "SELECT digest, body_digest, expires_at FROM (SELECT * FROM dedup"
            " WHERE expires_at > ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            (now, self._max_entries),
        )
        for digest, body_digest, expires_at in rows:
            self._seen[digest] = (body_digest, expires_at)

    def check(self, digest: bytes, body_digest: bytes) -> Verdict:
        found = self._seen.get(digest)
        if found is None or found[1] <= time.time():
            return Verdict.NEW
        return Verdict.REPEAT if found[0] == body_digest else Verdict.CONFLICT

    def remember(self, conn: sqlite3.Connection, digest: bytes, body_digest: bytes) -> bool:
        """Record a batch being journaled, inside the caller's transaction; True if the
        oldest digest was forgotten to make room."""
        expires_at = time.time() + self._window_s
        conn.execute(  # first: if it fails, nothing is remembered that is not on disk
            "INSERT INTO dedup (digest, body_digest, expires_at) VALUES (?, ?, ?)",
            (digest, body_digest, expires_at),
        )
        self._seen[digest] = (body_digest, expires_at)
        self._seen.move_to_end(digest)
        if len(self._seen) <= self._max_entries:
            return False
        self._seen.popitem(last=False)  # on disk it stays until it expires: load() skips it
        return True

    def forget(self, digests: list[bytes]) -> None:
        """Undo ``remember`` for batches whose transaction rolled back."""
        for digest in digests:
            self._seen.pop(digest, None)

    def prune(self, conn: sqlite3.Connection) -> None:
        """Drop expired digests, here and on disk.

        Digests expire in the order they were stored, so on disk only the front of the
        table needs looking at: at most ``PRUNE_ROWS`` rows per call, never a scan.
        """
        now = time.time()
        while self._seen:
            digest, (_, expires_at) = next(iter(self._seen.items()))
            if expires_at > now:
                break
            del self._seen[digest]
        conn.execute(
            "DELETE FROM dedup WHERE seq IN (SELECT seq FROM dedup ORDER BY seq LIMIT ?)"
            " AND expires_at <= ?",
            (PRUNE_ROWS, now),
        )
