"""Recognising a retried batch, so that a lost response never means stored twice.

Both SDKs retry a failed batch once, 5 s later, with the identical body. A batch is a
repeat when the same project sent the same body to the same endpoint within the window,
or, for clients that send one, the same ``Idempotency-Key`` (then the body must match
too, or it is a conflict; and identical bodies under different keys are distinct).

A batch is recognised by a cheap fingerprint (project, endpoint, length and CRC-32 of the
body; or project and ``Idempotency-Key``), which names the stored batch it matched; the
verdict then compares the bodies byte for byte, the stored one read back (retries are
rare, so this read is too). Hashing every body with a cryptographic digest instead cost a
third of the journal's CPU. Two different bodies with one fingerprint (a CRC collision)
are both stored: the check can only ever err towards storing.

The journal writer is the only caller, so check-and-remember needs no lock and two
concurrent copies of a batch cannot both pass. The in-memory map is the authority; each
remembered fingerprint is also stored in its batch's own row (``batches.digest``, written
by ``journal.insert``), so a restart (even after a crash) still recognises retries of
batches acknowledged before. A table of fingerprints of its own cost a row per batch and
a prune every second: ~8% of the node's CPU per event, measured.

Memory is bounded: at most ``max_entries`` fingerprints (about 200 bytes each), the oldest
forgotten first, at once. So the window is really the last ``window_s`` seconds or the last
``max_entries`` batches, whichever is shorter: one key holder sending thousands of batches
a second can shorten it, never grow the node's memory. A retry of a forgotten batch is
stored again (counted: ``trubrics_dedup_evictions``).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from enum import Enum

from .batches import read


class Verdict(Enum):
    NEW = "new"
    REPEAT = "repeat"
    CONFLICT = "conflict"  # an Idempotency-Key reused with another body


def fingerprint(project: str, source: str, body: bytes, idempotency_key: str | None) -> bytes:
    """What names a batch for retries: its key if it has one, else its body's length and
    CRC-32 (the small prefix is hashed so that every fingerprint takes 16 bytes)."""
    if idempotency_key is None:
        named = f"{project}\0{source}\0{len(body)}\0{zlib.crc32(body)}"
    else:
        named = f"{project}\0idempotency-key\0{idempotency_key}"
    return hashlib.blake2b(named.encode(), digest_size=16).digest()


class RecentBatches:
    """Fingerprints of the batches journaled within the window, oldest first, with the
    number of the batch each names."""

    def __init__(self, *, window_s: float, max_entries: int) -> None:
        self._window_s = window_s
        self._max_entries = max_entries
        self._seen: OrderedDict[bytes, tuple[int, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._window_s > 0

    def load(self, conn: sqlite3.Connection) -> None:
        """Remember what was journaled within the window before a restart (of the newest
        ``max_entries`` batches: the store may hold more, from a larger bound)."""
        now = time.time()
        newest = conn.execute(
            "SELECT digest, batch, received_at FROM batches WHERE digest IS NOT NULL"
            " ORDER BY batch DESC LIMIT ?",
            (self._max_entries,),
        ).fetchall()
        for digest, batch, received_at in reversed(newest):  # oldest first
            expires_at = received_at / 1e6 + self._window_s
            if expires_at > now:
                self._seen[digest] = (batch, expires_at)

    def check(
        self,
        conn: sqlite3.Connection,
        digest: bytes,
        source: str,
        body: bytes,
        pending: Mapping[int, tuple[str, bytes]],
        *,
        keyed: bool,
    ) -> Verdict:
        """Whether the batch repeats the one its fingerprint names, read from ``pending``
        (this commit's batches, by number) or the store. Another body under the same
        ``Idempotency-Key`` (``keyed``) is a conflict; without a key, a collision."""
        found = self._seen.get(digest)
        if found is None or found[1] <= time.time():
            return Verdict.NEW
        earlier = pending.get(found[0]) or _stored(conn, found[0])
        if earlier == (source, body):
            return Verdict.REPEAT
        return Verdict.CONFLICT if keyed and earlier is not None else Verdict.NEW

    def remember(self, digest: bytes, batch: int) -> bool:
        """Record a batch being journaled (its row stores the digest: ``forget`` it if that
        transaction rolls back); True if the oldest fingerprint was forgotten to make room."""
        self._seen[digest] = (batch, time.time() + self._window_s)
        self._seen.move_to_end(digest)
        if len(self._seen) <= self._max_entries:
            return False
        self._seen.popitem(last=False)  # on disk it stays until it expires: load() skips it
        return True

    def forget(self, digests: list[bytes]) -> None:
        """Undo ``remember`` for batches whose transaction rolled back."""
        for digest in digests:
            self._seen.pop(digest, None)

    def prune(self) -> None:
        """Drop expired digests (from the front: they expire in the order remembered). On
        disk they stay with their batches, and ``load`` skips them."""
        now = time.time()
        while self._seen:
            digest, (_, expires_at) = next(iter(self._seen.items()))
            if expires_at > now:
                break
            del self._seen[digest]


def _stored(conn: sqlite3.Connection, batch: int) -> tuple[str, bytes] | None:
    """The endpoint and body of a stored batch (None: pruned or quarantined since, or
    damaged: a batch that cannot be read back is no proof of a repeat)."""
    stored = read(conn, batch)
    if stored is None:
        return None
    try:
        return stored.source, stored.body
    except ValueError:
        return None
