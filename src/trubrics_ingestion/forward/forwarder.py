"""Ship the node's events to every configured engine, in order, at least once.

Per engine, a worker reads the stored batches after its cursor from the node's SQLite
store, expands them into events (``store.batches``), hands those to the engine's sink,
and advances the cursor only once the engine has confirmed them. A batch that cannot be
expanded is set aside in quarantine, logged, and skipped. A crash anywhere in between
re-sends those batches, which the sinks write idempotently (keyed by the event id): each
engine ends up with every event once.

The worker pipelines: while the engine writes, it reads and encodes the next batch, and an
engine that is bound by one connection's CPU gets several connections (``DELIVERY``).

Each engine has its own threads, cursor and backoff, so an engine that is down or slow
never holds back the others. A failing engine is retried after 0.5 s, doubling up to
10 s (``serve --forward-max-backoff-s``), with an error logged at every attempt: the
forwarder itself never gives up and never crashes on an engine's account. The store keeps
the backlog meanwhile (see ``forward_status``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..config import DEFAULTS
from ..store import batches
from ..store.sqlite import connect
from ..urls import SinkUrl, SinkUrlError, parse_sink_url
from . import cursors
from .clickhouse import ClickHouseSink
from .cursors import SinkStatus
from .postgres import PostgresSink
from .sink import Columns, Sink

log = logging.getLogger("trubrics_ingestion.forward")

IDLE_POLL_S = 0.2  # when everything is delivered: how soon new events leave the node
BACKOFF_START_S = 0.5
PARENT_CHECK_S = 0.5
PRUNE_EVERY_MAX_S = 60.0  # a short retention is pruned more often: a tenth of it, from 1 s
STOP_TIMEOUT_S = 10.0
PAGE_BATCHES = 64  # narrow rows read at a time when choosing the next batches to send

SinkFactory = Callable[[SinkUrl], Sink]


@dataclass(frozen=True)
class Delivery:
    """How one engine is fed: rows per batch, connections writing at once, and (if its
    wire form concatenates) rows encoded at a time."""

    batch_rows: int
    lanes: int
    part_rows: int | None = None  # None: a batch is encoded whole


# Measured with bench/forward.py on 2 cores. Both engines pay per statement far more than
# per row. PostgreSQL is bound by one backend's CPU (index updates, jsonb parsing): two
# connections took it from 74k to 122k rows/s. ClickHouse's server CPU per row falls from
# 12-14 µs in batches of 5,000 to about 4 µs at 50,000 (146k rows/s), and fewer, larger
# inserts mean fewer parts to merge.
DELIVERY: dict[str, Delivery] = {
    "postgresql": Delivery(batch_rows=5_000, lanes=2),
    "clickhouse": Delivery(batch_rows=50_000, lanes=1, part_rows=5_000),
}
# JSONEachRow payloads concatenate: ClickHouse's batches are encoded 5,000 events at a
# time, so that their expanded events die young instead of 50,000 of them outliving a few
# passes of the cycle collector (measured: 0.2-0.3 µs less per event).


def open_sink(url: SinkUrl) -> Sink:
    """The sink for ``url``'s engine (no connection is made yet)."""
    if url.kind == "postgresql":
        return PostgresSink(url)
    return ClickHouseSink(url)


def parse_sink_urls(texts: Sequence[str | SinkUrl]) -> list[SinkUrl]:
    """Parse the configured URLs; two URLs for one destination would share a cursor."""
    urls = [text if isinstance(text, SinkUrl) else parse_sink_url(text) for text in texts]
    seen: set[str] = set()
    for url in urls:
        if url.id in seen:
            raise SinkUrlError(f"engine configured twice: {url.display}")
        seen.add(url.id)
    return urls


class Backoff:
    """Exponential delays between attempts at a failing engine."""

    def __init__(
        self, start_s: float = BACKOFF_START_S, max_s: float = DEFAULTS.forward_max_backoff_s
    ) -> None:
        self.start_s = start_s
        self.max_s = max_s
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the delay before the next attempt (start, doubling, capped)."""
        delay = min(self.start_s * 2.0 ** min(self.failures, 32), self.max_s)
        self.failures += 1
        return delay

    def succeeded(self) -> int:
        """Reset; returns how many failures preceded this success."""
        failures, self.failures = self.failures, 0
        return failures


@dataclass(frozen=True)
class Prepared:
    """A batch read from the store and encoded for one engine, not yet sent."""

    last: int  # its last batch: the cursor once the engine confirms
    count: int
    payload: bytes


@dataclass(frozen=True)
class SinkHealth:
    """What the forwarder itself knows about an engine, beyond the store's cursor."""

    sink: str  # display name
    consecutive_failures: int
    last_error: str | None
    retry_in_s: float  # 0 when not backing off


@dataclass(frozen=True)
class InFlight:
    """A batch being written by one lane."""

    batch: Prepared
    lane: Sink
    done: Future[None]


class SinkWorker:
    """Delivers one engine's backlog over ``len(lanes)`` connections, in a pipeline.

    Each ``step()`` fills the idle lanes with the next batches, reads and encodes one more
    while they write (the engine's wait releases the GIL, so Python time and engine time
    overlap instead of adding up), then waits for the oldest batch in flight and moves the
    cursor past it. Batches may land out of order, but the cursor only moves over a batch
    once every earlier one is confirmed: after a failure or a crash, everything after the
    cursor is sent again, and the sinks write idempotently.
    """

    def __init__(
        self,
        database: Path,
        url: SinkUrl,
        lanes: Sequence[Sink],
        *,
        batch_rows: int,
        part_rows: int | None = None,
        backoff_max_s: float = DEFAULTS.forward_max_backoff_s,
    ) -> None:
        """``part_rows``: encode a batch this many rows at a time and join the parts (only
        for an engine whose wire form concatenates; None: whole)."""
        self.url = url
        self.lanes = list(lanes)
        self.batch_rows = batch_rows
        self.part_rows = part_rows
        self.backoff = Backoff(max_s=backoff_max_s)
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._migrated = False
        self._conn = _open_store(database)  # cursor reads and writes
        self._reader = _open_store(database)  # batch reads
        self._node = batches.node_id(self._conn)  # a part of every event id
        self._compact = self.lanes[0].compact_json
        self._writers = ThreadPoolExecutor(len(self.lanes), thread_name_prefix=f"send {url.id}")
        self._idle = list(self.lanes)
        self._in_flight: deque[InFlight] = deque()
        self._next: Prepared | None = None  # read and encoded, waiting for a lane
        self._read_after: int | None = None  # None: start again from the cursor

    def step(self) -> int:
        """Deliver the next batch; returns its size (0: nothing to send, backing off, or it
        failed, which is logged and retried later)."""
        if time.monotonic() < self._retry_at:
            return 0
        try:
            return self._deliver()
        except Exception as exc:  # engine down, rejected batch, store busy: retry later
            self._failed(exc)
            return 0

    def pause_s(self) -> float:
        """How long to wait before the next step when the last one delivered nothing."""
        return max(self._retry_at - time.monotonic(), IDLE_POLL_S)

    def health(self) -> SinkHealth:
        retry_in = max(0.0, self._retry_at - time.monotonic())
        return SinkHealth(self.url.display, self.backoff.failures, self.last_error, retry_in)

    def close(self) -> None:
        self._drain()
        self._writers.shutdown(wait=True)
        for lane in self.lanes:
            lane.close()
        self._conn.close()
        self._reader.close()

    def _deliver(self) -> int:
        if not self._migrated:  # before encoding: the encoding may depend on the tables
            self.lanes[0].migrate()
            self._migrated = True
        if self._read_after is None:  # idle or after a failure: from the stored cursor
            self._read_after = cursors.cursor(self._conn, self.url.id)
        self._fill()
        if not self._in_flight:
            self._read_after = None  # idle: the next step starts from the cursor again
            return 0
        oldest = self._in_flight.popleft()
        oldest.done.result()  # raises the engine's error
        self._idle.append(oldest.lane)
        cursors.advance(self._conn, self.url.id, oldest.batch.last)
        failures = self.backoff.succeeded()
        if failures:
            log.warning("%s: delivering again after %d failed attempts", self.url.display, failures)
            self.last_error = None
        return oldest.batch.count

    def _fill(self) -> None:
        """Give every idle lane a batch, then have one more ready for the next lane free."""
        while True:
            if self._next is None:
                self._next = self._prepare()
            if self._next is None or not self._idle:
                return
            batch, self._next = self._next, None
            lane = self._idle.pop()
            done = self._writers.submit(lane.send, batch.payload, batch.count)
            self._in_flight.append(InFlight(batch, lane, done))

    def _prepare(self) -> Prepared | None:
        """Read, expand and encode about ``batch_rows`` events from the stored batches after
        the last one read (None: nothing there yet)."""
        assert self._read_after is not None
        numbers = self._next_batches(self._read_after)
        if not numbers:
            return None
        encode = self.lanes[0].encode
        parts, events, count = [], Columns.empty(), 0
        for stored in batches.read_range(self._reader, self._read_after, numbers[-1]):
            events.extend(self._events_of(stored))
            if self.part_rows is not None and events.size >= self.part_rows:
                parts.append(encode(events))
                count, events = count + events.size, Columns.empty()
        if events.size or not parts:
            parts.append(encode(events))
            count += events.size
        self._read_after = numbers[-1]
        return Prepared(numbers[-1], count, parts[0] if len(parts) == 1 else b"".join(parts))

    def _events_of(self, stored: batches.Stored) -> Columns:
        """A stored batch's events (none if it cannot be expanded: it is quarantined)."""
        try:
            return batches.columns_of(stored, self._node, compact=self._compact)
        except batches.Unexpandable as exc:
            log.error("%s; quarantined", exc)
            batches.quarantine(self._conn, stored.batch, str(exc))
            return Columns.empty()

    def _next_batches(self, after: int) -> list[int]:
        """The batches after ``after`` that make up about ``batch_rows`` events, their
        narrow rows read a page at a time (reading ``batch_rows`` of them, as many as the
        events, cost a tenth of the forwarder's time)."""
        numbers, events = [], 0
        while page := batches.after(self._reader, after, PAGE_BATCHES):
            for number, count in page:
                numbers.append(number)
                events += count
                if events >= self.batch_rows:
                    return numbers
            after = page[-1][0]
        return numbers

    def _drain(self) -> None:
        """Wait for every batch in flight (their outcome is moot: whatever the cursor did
        not pass is sent again) and forget what was read ahead."""
        for flight in self._in_flight:
            flight.done.exception()
        self._in_flight.clear()
        self._idle = list(self.lanes)
        self._next = None
        self._read_after = None

    def _failed(self, exc: Exception) -> None:
        """Back off, drop the connections, and migrate again on the next attempt (the
        engine may come back without our tables)."""
        delay = self.backoff.failed()
        self._retry_at = time.monotonic() + delay
        self._migrated = False
        self._drain()
        for lane in self.lanes:
            lane.close()
        with contextlib.suppress(sqlite3.Error):  # a broken store must not end the thread
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        self.last_error = f"{type(exc).__name__}: {exc}"
        message = "%s: forwarding failed (attempt %d), retrying in %.1f s: %s"
        args = (self.url.display, self.backoff.failures, delay, self.last_error)
        if self.backoff.failures == 1:
            log.error(message, *args, exc_info=exc)
        else:
            log.error(message, *args)


class Forwarder:
    """The workers of every configured engine, stepped in turn or run in threads."""

    def __init__(
        self,
        database: Path,
        sink_urls: Sequence[str | SinkUrl],
        *,
        batch_rows: int | None = None,
        lanes: int | None = None,
        backoff_max_s: float = DEFAULTS.forward_max_backoff_s,
        make_sink: SinkFactory = open_sink,
    ) -> None:
        """``batch_rows`` and ``lanes`` override every engine's ``DELIVERY``."""
        self.database = Path(database)
        self.urls = parse_sink_urls(sink_urls)
        self._threads: list[threading.Thread] | None = None  # while or after run()
        self.workers = []
        for url in self.urls:
            delivery = DELIVERY[url.kind]
            self.workers.append(
                SinkWorker(
                    self.database,
                    url,
                    [make_sink(url) for _ in range(lanes or delivery.lanes)],
                    batch_rows=batch_rows or delivery.batch_rows,
                    part_rows=delivery.part_rows,
                    backoff_max_s=backoff_max_s,
                )
            )

    def step(self) -> int:
        """One batch for each engine that is not backing off; rows delivered in total."""
        return sum(worker.step() for worker in self.workers)

    def status(self) -> list[SinkStatus]:
        return forward_status(self.database, self.urls)

    def health(self) -> list[SinkHealth]:
        return [worker.health() for worker in self.workers]

    def run(
        self,
        stop: threading.Event,
        *,
        parent_pid: int | None = None,
        retention_s: float | None = None,
    ) -> None:
        """Run every worker in its own thread until ``stop`` is set or ``parent_pid`` is
        no longer our parent; prune delivered events regularly if ``retention_s``."""
        self._threads = threads = [
            threading.Thread(
                target=_work, args=(worker, stop), name=f"forward {worker.url.id}", daemon=True
            )
            for worker in self.workers
        ]
        for thread in threads:
            thread.start()
        next_prune = time.monotonic()
        try:
            while not stop.wait(PARENT_CHECK_S):
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.info("parent process %d is gone; the forwarder stops", parent_pid)
                    break
                if retention_s is not None and time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + _prune_every_s(retention_s)
                    self._prune(retention_s)
        finally:
            stop.set()
            for thread in threads:
                thread.join(STOP_TIMEOUT_S)

    def close(self) -> None:
        """Close every worker whose thread has ended; one still stuck in an engine call is
        left to the process exit (its cursor only ever moved past confirmed batches)."""
        for index, worker in enumerate(self.workers):
            thread = self._threads[index] if self._threads else None
            if thread is None or not thread.is_alive():
                worker.close()
            else:
                log.warning("%s: still busy at shutdown; not waiting for it", worker.url.display)

    def _prune(self, retention_s: float) -> None:
        try:
            conn = _open_store(self.database)
            try:
                ids = [url.id for url in self.urls]
                deleted = cursors.prune(conn, ids, retention_s)
            finally:
                conn.close()
        except Exception:  # pruning is housekeeping: never stop forwarding for it
            log.exception("pruning delivered events failed; will retry")
            return
        if deleted:
            log.info("pruned %d delivered events older than %s s", deleted, retention_s)


def _work(worker: SinkWorker, stop: threading.Event) -> None:
    """One engine's thread. ``step()`` handles its own failures; anything escaping it is a
    bug, which is logged and waited out rather than allowed to end the thread."""
    while not stop.is_set():
        try:
            delivered = worker.step()
        except Exception:
            log.exception("%s: unexpected forwarder error; continuing", worker.url.display)
            delivered = 0
        if not delivered:
            stop.wait(worker.pause_s())


def _prune_every_s(retention_s: float) -> float:
    return min(max(retention_s / 10, 1.0), PRUNE_EVERY_MAX_S)


def _open_store(database: Path) -> sqlite3.Connection:
    """The node's store. ``synchronous=NORMAL``: a cursor lost in a power cut only means a
    batch is delivered again, idempotently."""
    conn = connect(database)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def forward_status(database: Path, sink_urls: Sequence[str | SinkUrl]) -> list[SinkStatus]:
    """Backlog and oldest undelivered age per engine, read from the store read-only."""
    return cursors.read_status(Path(database), [url.id for url in parse_sink_urls(sink_urls)])


def run_forever(
    database_path: Path,
    sink_urls: Sequence[str | SinkUrl],
    parent_pid: int | None = None,
    *,
    stop: threading.Event | None = None,
    retention_s: float | None = None,
    batch_rows: int | None = None,
    backoff_max_s: float = DEFAULTS.forward_max_backoff_s,
) -> None:
    """Forward until ``stop`` is set (when run in a thread) or ``parent_pid`` is gone (when
    run in a child process). A bad URL raises at once; an engine being down never does."""
    forwarder = Forwarder(
        Path(database_path), sink_urls, batch_rows=batch_rows, backoff_max_s=backoff_max_s
    )
    try:
        forwarder.run(stop or threading.Event(), parent_pid=parent_pid, retention_s=retention_s)
    finally:
        forwarder.close()
