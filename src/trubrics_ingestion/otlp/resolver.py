"""Turning journaled OTLP exports into stored GenAI calls, exactly once, crash or not.

A GenAI span names its user and conversation itself, or an ancestor span does, and
exporters send each span when it ends: the model's span usually arrives before the app's
span that wraps it, often in another request, and its content may come in a log record of
yet another. So the resolver, a thread of the node, reads the exports the journal stored
(source ``otlp``) in order, after its cursor, and keeps in two tables of the store:

- ``otlp_spans``: every span's link in its trace (parent, the user and thread it names),
  and, for a GenAI call not resolved yet, the call;
- ``otlp_logs``: GenAI log records whose call is not resolved yet.

A call is resolved once its trace's root span has arrived (a span without a parent, or
whose parent is remote), or once it has waited ``window_s``: its user and thread are the
nearest ones on the span or its ancestors, else its resource's; with no user anywhere,
``user_id`` is ``trace:<trace id>``. Resolved calls are written as a stored batch of
source ``otlp_llm`` (``store.genai``) in the SAME transaction that records the spans and
log records read and moves the cursor: after a kill at any point, the exports after the
cursor are read again and every call becomes its two events once.

The thread reads and computes outside the write lock (it is the only writer of its
tables and of its cursor, so what it read stays true) and then writes in one short
transaction, so that the journal is never held up for long. Rows of spans and records
are kept for twice the window, then pruned (a record still unmatched then is counted).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import msgspec

from ..clock import now_us
from ..config import DEFAULTS
from ..schema import MAX_BATCH_ITEMS, Item
from ..store import batches
from ..store.genai import CALLS, EXPORT, RESOLVED_THROUGH, GenAICall, resolved_through
from ..store.journal import Batch, insert
from ..store.sqlite import connect, transaction
from . import conventions
from .counts import OtlpCounts
from .records import Call, LogRecord, SpanRecord, decode_call, decode_export, decode_log, encode

log = logging.getLogger("trubrics_ingestion.otlp")

EXPORTS_PER_STEP = 50  # journaled exports read per transaction
IDLE_POLL_S = 1.0  # with nothing to wake it: how often it looks anyway
PRUNE_EVERY_S = 5.0
ANONYMOUS = "trace:"  # + the trace id: the user of a trace that names none
TraceKey = tuple[str, str]  # project, trace id
SpanKey = tuple[str, str, str]  # project, trace id, span id
NewLogs = dict[SpanKey, list[tuple[int, int, LogRecord, int]]]  # batch, item, record, held_at


@dataclass(frozen=True, slots=True)
class Link:
    """A span's place in its trace."""

    parent: str | None
    root: bool
    user: str | None
    thread: str | None


@dataclass(slots=True)
class Waiting:
    """A GenAI call not resolved yet, stored (``new`` False) or just read."""

    span: str
    call: Call
    held_at: int
    new: bool


@dataclass
class Trace:
    """What is known of one trace: stored rows, plus what this step read."""

    links: dict[str, Link] = field(default_factory=dict)
    waiting: list[Waiting] = field(default_factory=list)
    new_links: list[tuple[str, Link, Call | None, int]] = field(default_factory=list)  # just read

    @property
    def has_root(self) -> bool:
        return any(link.root for link in self.links.values())


@dataclass
class Plan:
    """What one step writes, in one transaction."""

    spans: list[tuple[object, ...]] = field(default_factory=list)  # rows of otlp_spans
    settled: list[tuple[str, str, str]] = field(default_factory=list)  # stored calls now resolved
    logs: list[tuple[object, ...]] = field(default_factory=list)  # rows of otlp_logs
    calls: dict[str, list[GenAICall]] = field(default_factory=lambda: defaultdict(list))
    by: dict[str, int] = field(default_factory=lambda: {"root": 0, "window": 0})


class Resolver:
    """Resolves the node's journaled OTLP exports, in a thread or one ``step`` at a time."""

    def __init__(
        self,
        database: Path,
        *,
        window_s: float = DEFAULTS.otlp_window_s,
        counts: OtlpCounts | None = None,
    ) -> None:
        self.window_us = round(window_s * 1_000_000)
        self.counts = counts or OtlpCounts()
        self._database = database
        self._conn: sqlite3.Connection | None = None
        self._scanned = 0  # batches read up to here (the stored cursor may lag behind)
        self._pruned_at = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> sqlite3.Connection:
        """The store, where the resolver's tables (``otlp_spans``, ``otlp_logs``) are."""
        if self._conn is None:
            # synchronous=FULL, as connect() sets it: a step lost in a power cut would be
            # resolved again into another batch, whose events the engines may then hold twice
            # (the forwarder may have shipped the lost one: its events have other ids).
            conn = connect(self._database)
            self._scanned = resolved_through(conn)
            self._conn = conn
        return self._conn

    def start(self) -> None:
        self.open()
        self._thread = threading.Thread(target=self._run, name="otlp resolver", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """An export was journaled: look now (from any thread)."""
        self._wake.set()

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._conn is not None and (self._thread is None or not self._thread.is_alive()):
            self._conn.close()
            self._conn = None

    def step(self, now: int | None = None) -> int:
        """Read new exports, resolve what can be, write it all at once: the calls stored."""
        conn = self.open()
        now = now_us() if now is None else now
        newest = batches.newest(conn)
        found = conn.execute(
            "SELECT batch FROM batches WHERE batch > ? AND batch <= ? AND source = ?"
            " ORDER BY batch LIMIT ?",
            (self._scanned, newest, EXPORT, EXPORTS_PER_STEP),
        ).fetchall()
        through = found[-1][0] if len(found) == EXPORTS_PER_STEP else newest
        traces, logs = self._read(conn, [number for (number,) in found], now)
        plan = self._plan(conn, traces, logs, now)
        prune = time.monotonic() - self._pruned_at >= PRUNE_EVERY_S
        if found or plan.spans or plan.settled or prune:
            self._write(conn, plan, through, now, prune)
        self._scanned = through
        resolved = sum(map(len, plan.calls.values()))
        self.counts.resolved["root"] += plan.by["root"]
        self.counts.resolved["window"] += plan.by["window"]
        (self.counts.waiting,) = conn.execute(
            "SELECT count(*) FROM otlp_spans WHERE call IS NOT NULL"
        ).fetchone()
        return resolved

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.step()
            except Exception:  # a broken store, a bug: say so, try again later
                log.exception("resolving OTLP exports failed; retrying")
                self._stop.wait(IDLE_POLL_S)
            self._wake.wait(self._pause_s())

    def _pause_s(self) -> float:
        """Until the first waiting call's window passes, at most ``IDLE_POLL_S``."""
        if self._conn is None:
            return IDLE_POLL_S
        (first,) = self._conn.execute(
            "SELECT min(held_at) FROM otlp_spans WHERE call IS NOT NULL"
        ).fetchone()
        if not isinstance(first, int):
            return IDLE_POLL_S
        return min(max((first + self.window_us - now_us()) / 1e6, 0.01), IDLE_POLL_S)

    # --- reading -----------------------------------------------------------------------

    def _read(
        self, conn: sqlite3.Connection, numbers: list[int], now: int
    ) -> tuple[dict[TraceKey, Trace], NewLogs]:
        """The traces touched by these exports, or waiting past the window, as stored, with
        the spans the exports add; and the exports' log records, by span."""
        logs: NewLogs = defaultdict(list)
        news: list[tuple[str, SpanRecord, int]] = []
        for number in numbers:
            stored = batches.read(conn, number)
            if stored is None:
                continue
            try:
                export = decode_export(stored.body)
            except (msgspec.DecodeError, ValueError) as exc:  # a hand edit: never block the rest
                log.error("stored OTLP export %d cannot be read, skipped: %s", number, exc)
                continue
            news += [(stored.project, span, stored.received_at) for span in export.spans]
            for item, record in enumerate(export.logs):
                key = (stored.project, record.trace, record.span)
                logs[key].append((number, item, record, stored.received_at))
        keys = [(project, span.trace) for project, span, _ in news]  # in the order they came
        keys += [(project, trace) for project, trace, _ in logs]
        traces = _stored_traces(conn, [*keys, *self._expired(conn, now)])
        for project, span, held_at in news:
            _add(traces[project, span.trace], span, held_at)
        return traces, logs

    def _expired(self, conn: sqlite3.Connection, now: int) -> Iterator[TraceKey]:
        found = conn.execute(
            "SELECT DISTINCT project, trace FROM otlp_spans"
            " WHERE call IS NOT NULL AND held_at <= ?",
            (now - self.window_us,),
        )
        yield from found

    # --- resolving ---------------------------------------------------------------------

    def _plan(
        self, conn: sqlite3.Connection, traces: dict[TraceKey, Trace], logs: NewLogs, now: int
    ) -> Plan:
        """Which waiting calls are due, resolved; and the rows to store."""
        plan = Plan()
        stored_logs = _stored_logs(conn, traces)
        for (project, trace_id), trace in traces.items():
            due_by = "root" if trace.has_root else None
            resolved = set()
            for waiting in trace.waiting:
                by = due_by or ("window" if waiting.held_at <= now - self.window_us else None)
                if by is None:
                    continue
                key = (project, trace_id, waiting.span)
                records = stored_logs.get(key, []) + [r for _, _, r, _ in logs.pop(key, [])]
                user, thread = _identity(trace.links, waiting, trace_id)
                ids = (trace_id, waiting.span)
                call = conventions.to_call(ids, waiting.call, records, user, thread)
                plan.calls[project].append(call)
                plan.by[by] += 1
                resolved.add(waiting.span)
                if not waiting.new:
                    plan.settled.append((project, trace_id, waiting.span))
            for span, link, new_call, held_at in trace.new_links:
                kept = None if new_call is None or span in resolved else encode(new_call)
                plan.spans.append(
                    (project, trace_id, span, link.parent, link.root, link.user, link.thread,
                     kept, held_at)
                )  # fmt: skip
        for (project, trace_id, span), unmatched in logs.items():
            plan.logs += [
                (project, trace_id, span, number, item, encode(record), held_at)
                for number, item, record, held_at in unmatched
            ]
        return plan

    # --- writing -----------------------------------------------------------------------

    def _write(
        self, conn: sqlite3.Connection, plan: Plan, through: int, now: int, prune: bool
    ) -> None:
        with transaction(conn):
            conn.executemany(
                "INSERT OR IGNORE INTO otlp_spans (project, trace, span, parent, root, user,"
                " thread, call, held_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                plan.spans,
            )
            conn.executemany(
                "UPDATE otlp_spans SET call = NULL WHERE project = ? AND trace = ? AND span = ?",
                plan.settled,
            )
            conn.executemany(
                "DELETE FROM otlp_logs WHERE project = ? AND trace = ? AND span = ?",
                plan.settled,
            )
            conn.executemany(
                "INSERT OR IGNORE INTO otlp_logs (project, trace, span, batch, item, record,"
                " held_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                plan.logs,
            )
            insert(conn, list(_batches(plan.calls, now)))
            if prune:
                self._prune(conn, now)
            conn.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (RESOLVED_THROUGH, through),
            )

    def _prune(self, conn: sqlite3.Connection, now: int) -> None:
        """Forget spans and log records older than twice the window (calls never: they
        are resolved once their window has passed)."""
        before = now - 2 * self.window_us
        unmatched = conn.execute("DELETE FROM otlp_logs WHERE held_at < ?", (before,)).rowcount
        conn.execute("DELETE FROM otlp_spans WHERE call IS NULL AND held_at < ?", (before,))
        self.counts.unmatched_logs += unmatched
        self._pruned_at = time.monotonic()


def _add(trace: Trace, span: SpanRecord, held_at: int) -> None:
    """A span just read, unless its trace already holds it (an exporter's retry)."""
    if span.span in trace.links:
        return
    link = Link(span.parent, span.root, span.user, span.thread)
    trace.links[span.span] = link
    trace.new_links.append((span.span, link, span.call, held_at))
    if span.call is not None:
        trace.waiting.append(Waiting(span.span, span.call, held_at, new=True))


def _by_project(keys: Iterable[TraceKey]) -> dict[str, str]:
    """Trace ids by project, as the JSON array that ``json_each`` reads in a query."""
    traces: dict[str, list[str]] = defaultdict(list)
    for project, trace in keys:
        traces[project].append(trace)
    return {project: encode(ids).decode() for project, ids in traces.items()}


def _stored_traces(conn: sqlite3.Connection, keys: list[TraceKey]) -> dict[TraceKey, Trace]:
    """What the store holds of these traces (one query per project), in the order given."""
    traces = {key: Trace() for key in keys}
    for project, ids in _by_project(traces).items():
        rows = conn.execute(
            "SELECT trace, span, parent, root, user, thread, call, held_at FROM otlp_spans"
            " WHERE project = ? AND trace IN (SELECT value FROM json_each(?))",
            (project, ids),
        )
        for trace_id, span, parent, root, user, thread, call, held_at in rows:
            trace = traces[project, trace_id]
            trace.links[span] = Link(parent, bool(root), user, thread)
            if call is not None:
                trace.waiting.append(Waiting(span, decode_call(call), held_at, new=False))
    return traces


def _stored_logs(
    conn: sqlite3.Connection, keys: Iterable[TraceKey]
) -> dict[SpanKey, list[LogRecord]]:
    """The stored log records of these traces, by span, in the order they came."""
    found: dict[SpanKey, list[LogRecord]] = defaultdict(list)
    for project, ids in _by_project(keys).items():
        rows = conn.execute(
            "SELECT trace, span, record FROM otlp_logs"
            " WHERE project = ? AND trace IN (SELECT value FROM json_each(?))"
            " ORDER BY batch, item",
            (project, ids),
        )
        for trace, span, record in rows:
            found[project, trace, span].append(decode_log(record))
    return found


def _identity(links: dict[str, Link], waiting: Waiting, trace: str) -> tuple[str, str | None]:
    """The user and thread of a call: the nearest named on the span or an ancestor, else
    its resource's; a trace that names no user is its own (``ANONYMOUS``)."""
    user = thread = None
    seen: set[str] = set()
    current: str | None = waiting.span
    while current is not None and current not in seen and (user is None or thread is None):
        seen.add(current)
        link = links.get(current)
        if link is None:
            break
        user, thread = user or link.user, thread or link.thread
        current = link.parent
    call = waiting.call
    user = user or call.resource_user or ANONYMOUS + trace
    return user, thread or call.resource_thread


def _batches(calls: dict[str, list[GenAICall]], now: int) -> Iterator[Batch]:
    """Stored batches of at most ``MAX_BATCH_ITEMS`` calls, one project each. The narrow
    row's span reads a call's timestamp and latency as it reads an LLM event's."""
    for project, resolved in calls.items():
        for start in range(0, len(resolved), MAX_BATCH_ITEMS):
            chunk = resolved[start : start + MAX_BATCH_ITEMS]
            yield Batch.of(project, CALLS, now, encode(chunk), cast(Sequence[Item], chunk))
