"""The durable point of acknowledgement: one writer thread, group commit.

Request handlers ``await journal.append(...)``; the writer thread takes everything queued
at that moment, inserts each batch as one row, commits once (an fsync with
``synchronous=FULL``) and only then resolves the handlers' futures. Concurrent requests
thus share a commit, and throughput is not capped by the disk's fsync rate. A batch is
stored as it came (compressed: ``codec.py``), beside a narrow row saying what it holds
(``batches.py``): it becomes events only when it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from ..config import DEFAULTS
from ..errors import IdempotencyConflict, StorageUnavailable
from ..schema import Item
from .codec import LZ4, pack
from .dedup import RecentBatches, Verdict, fingerprint
from .expand import Span, span
from .sqlite import connect, transaction

log = logging.getLogger("trubrics_ingestion.journal")


@dataclass(frozen=True, slots=True)
class Entry:
    """One validated batch waiting for its commit, and who waits for it."""

    batch: Batch
    idempotency_key: str | None
    future: asyncio.Future[bool]
    loop: asyncio.AbstractEventLoop


_STOP = object()
PRUNE_EVERY_S = 1.0
PROBE_EVERY_S = 1.0  # while commits fail and nothing is queued: how often to try a write
PROBE_MARGIN_BYTES = 1 << 20  # free space wanted beyond what the failed commit needed
LOCK_POLL_S = 0.0002  # while a forwarder writes its cursor: ask for the lock this often
_INSERT = (
    "INSERT INTO batches (batch, project, source, received_at, events, first_at, last_at,"
    " digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class CommitMetrics(Protocol):
    """What the journal reports (``node.metrics``)."""

    def commit(self, batches: int, seconds: float) -> None: ...

    def commit_failed(self) -> None: ...

    def dedup_evicted(self) -> None: ...


class _Uncounted:
    """``CommitMetrics`` for a journal nobody watches (tools, tests)."""

    def commit(self, batches: int, seconds: float) -> None:
        pass

    def commit_failed(self) -> None:
        pass

    def dedup_evicted(self) -> None:
        pass


class Journal:
    """Group-committing writer of acknowledged batches."""

    def __init__(
        self,
        database: Path,
        *,
        dedup_window_s: float = DEFAULTS.dedup_window_s,
        dedup_max_entries: int = DEFAULTS.dedup_max_entries,
        max_batches_per_commit: int = 256,
        metrics: CommitMetrics | None = None,
    ) -> None:
        self._database = database
        self._metrics = metrics or _Uncounted()
        self._max_batches = max_batches_per_commit
        self._recent = RecentBatches(window_s=dedup_window_s, max_entries=dedup_max_entries)
        self._pruned_at = 0.0
        self._queue: queue.SimpleQueue[Entry | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failing = False  # the last commit (or probe) failed: disk full, read-only...
        self._needed_bytes = 0  # free space that the failed commit would have wanted

    def start(self) -> None:
        """Open the store and start the writer thread."""
        conn = connect(self._database)
        conn.execute("PRAGMA busy_timeout = 0")  # transaction(poll_s=...) does the waiting
        self._recent.load(conn)
        self._thread = threading.Thread(target=self._run, args=(conn,), name="journal", daemon=True)
        self._thread.start()

    def append(
        self,
        project: str,
        source: str,
        body: bytes,
        received_at: int,
        idempotency_key: str | None = None,
        *,
        items: Sequence[Item],
    ) -> asyncio.Future[bool]:
        """Queue the batch; the future is True once it is durably committed, False if it
        repeats one that was. ``items`` are what ``body`` decoded to: only their span (the
        narrow row's counts and times) is kept, so that the caller can let them go while
        the commit is awaited (held by dozens of requests at once, they cost every later
        allocation a cache miss).

        Raises (at once, or from the future) ``StorageUnavailable`` if it could not be
        stored, ``IdempotencyConflict`` if its ``Idempotency-Key`` was used for another body.
        """
        if self._closed:
            raise StorageUnavailable("The server is shutting down; nothing was stored.")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        batch = Batch.of(project, source, received_at, body, items)
        self._queue.put(Entry(batch, idempotency_key, future, loop))
        return future

    def ready(self) -> bool:
        """True while batches can be committed: the writer runs and its last commit worked.
        A failing store is probed every second when idle, so a node that a load balancer
        took out of rotation comes back once the disk has room again, without traffic."""
        alive = not self._closed and self._thread is not None and self._thread.is_alive()
        return alive and not self._failing

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what is queued, stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            stop = False
            while not stop:
                entries, stop = self._take()
                if entries:
                    self._commit(conn, entries)
                elif self._failing and not stop:
                    self._probe(conn)
        finally:
            self._closed = True
            self._fail_queued()
            conn.close()

    def _fail_queued(self) -> None:
        """Answer anyone still waiting with a 503: a writer that stopped must not leave hangs."""
        refused: list[tuple[Entry, Verdict | Exception]] = []
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._queue.get_nowait()
                if isinstance(item, Entry):
                    refused.append((item, StorageUnavailable()))
        _resolve(refused)

    def _take(self) -> tuple[list[Entry], bool]:
        """Everything queued right now, waiting for the first; and whether to stop after it."""
        entries: list[Entry] = []
        try:
            item = self._queue.get(timeout=PROBE_EVERY_S if self._failing else None)
            while item is not _STOP:
                entries.append(item)  # type: ignore[arg-type]
                if len(entries) >= self._max_batches:
                    return entries, False
                item = self._queue.get_nowait()
            return entries, True
        except queue.Empty:
            return entries, False

    def _commit(self, conn: sqlite3.Connection, entries: list[Entry]) -> None:
        """Journal the new entries in one durable transaction; tell every waiter the outcome."""
        remembered: list[bytes] = []
        outcomes: Sequence[Verdict | Exception]
        started = time.perf_counter()
        try:
            with transaction(conn, poll_s=LOCK_POLL_S):
                outcomes = self._store_new(conn, entries, remembered)
        except sqlite3.Error as exc:
            log.error("journal commit of %d batches failed: %s", len(entries), exc)
            self._metrics.commit_failed()
            self._recent.forget(remembered)
            self._failing = True
            written = sum(len(entry.batch.body) for entry in entries)
            self._needed_bytes = 2 * written + PROBE_MARGIN_BYTES  # WAL, then checkpoint
            outcomes = [StorageUnavailable()] * len(entries)
        else:
            self._metrics.commit(len(entries), time.perf_counter() - started)
            self._recovered()
            self._prune_now_and_then()
        _resolve(list(zip(entries, outcomes, strict=True)))

    def _store_new(
        self, conn: sqlite3.Connection, entries: list[Entry], remembered: list[bytes]
    ) -> list[Verdict]:
        """Insert the entries that repeat no stored batch (nor one before them in this
        commit); the verdict of each."""
        first = _next_batch(conn)
        pending: dict[int, tuple[str, bytes]] = {}  # this commit's new batches, by number
        new: list[Batch] = []
        digests: list[bytes | None] = []
        verdicts = []
        for entry in entries:
            number = first + len(pending)
            verdict, digest = self._admit(conn, entry, number, pending)
            if verdict is Verdict.NEW:
                pending[number] = (entry.batch.source, entry.batch.body)
                new.append(entry.batch)
                digests.append(digest)
                if digest is not None:
                    remembered.append(digest)
            verdicts.append(verdict)
        insert(conn, new, first, digests)
        return verdicts

    def _probe(self, conn: sqlite3.Connection) -> None:
        """Enough free space for what failed, and a write that changes nothing but still
        needs the disk (a WAL frame, an fsync). The write alone is not enough: it fits in
        WAL space that the failed commit already took, while real batches would not."""
        with contextlib.suppress(OSError):
            if shutil.disk_usage(self._database.parent).free < self._needed_bytes:
                return
        try:
            with transaction(conn, poll_s=LOCK_POLL_S):
                conn.execute("UPDATE meta SET value = value WHERE name = 'keys_version'")
        except sqlite3.Error:
            return
        self._recovered()

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("journal commits succeed again")

    def _admit(
        self,
        conn: sqlite3.Connection,
        entry: Entry,
        number: int,
        pending: dict[int, tuple[str, bytes]],
    ) -> tuple[Verdict, bytes | None]:
        """Is this batch new (to be stored as ``number``), or a retry of one already
        journaled (or earlier in this commit)? With the fingerprint its row keeps (None:
        dedup is off)."""
        if not self._recent.enabled:
            return Verdict.NEW, None
        batch, key = entry.batch, entry.idempotency_key
        digest = fingerprint(batch.project, batch.source, batch.body, key)
        keyed = key is not None
        verdict = self._recent.check(conn, digest, batch.source, batch.body, pending, keyed=keyed)
        if verdict is Verdict.NEW and self._recent.remember(digest, number):
            self._metrics.dedup_evicted()
        return verdict, digest

    def _prune_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._recent.prune()
            self._pruned_at = now


class Batch(NamedTuple):
    """A validated batch to store (``insert``): the journal's, or another writer's."""

    project: str
    source: str
    received_at: int
    body: bytes
    span: Span

    @classmethod
    def of(
        cls, project: str, source: str, received_at: int, body: bytes, items: Sequence[Item]
    ) -> Batch:
        """The batch ``body``, which decoded to ``items``."""
        return cls(project, source, received_at, body, span(items, source, received_at))


def _next_batch(conn: sqlite3.Connection) -> int:
    (last,) = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'batches'").fetchone()
    return int(last) + 1


def insert(
    conn: sqlite3.Connection,
    entries: Sequence[Batch],
    first: int | None = None,
    digests: Sequence[bytes | None] | None = None,
) -> None:
    """Store the entries as the next batches (numbered from ``first``, by default the next
    number), with their dedup fingerprints if given, in the caller's write transaction,
    which no other writer of batches (the OTLP resolver) can interleave. They are numbered
    here, not by SQLite, so that bodies and dedup can use the numbers."""
    first = _next_batch(conn) if first is None else first
    numbers = range(first, first + len(entries))
    conn.executemany(
        _INSERT,
        [
            (
                n,
                e.project,
                e.source,
                e.received_at,
                *e.span,
                digest,
            )
            for n, e, digest in zip(numbers, entries, digests or [None] * len(entries), strict=True)
        ],
    )
    conn.executemany(
        "INSERT INTO bodies (batch, body, codec) VALUES (?, ?, ?)",
        [(n, pack(e.body), LZ4) for n, e in zip(numbers, entries, strict=True)],
    )


def _resolve(outcomes: list[tuple[Entry, Verdict | Exception]]) -> None:
    """Hand the outcomes to the requests' event loops (which may have gone away meanwhile),
    one wake-up per loop: waking a loop is a system call, and a commit holds dozens."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Entry, Verdict | Exception]]] = {}
    for entry, outcome in outcomes:
        by_loop.setdefault(entry.loop, []).append((entry, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, settled)


def _settle(outcomes: list[tuple[Entry, Verdict | Exception]]) -> None:
    for entry, outcome in outcomes:
        if entry.future.done():
            continue
        if isinstance(outcome, Exception):
            entry.future.set_exception(outcome)
        elif outcome is Verdict.CONFLICT:
            entry.future.set_exception(IdempotencyConflict())
        else:
            entry.future.set_result(outcome is Verdict.NEW)
