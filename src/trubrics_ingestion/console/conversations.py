"""A thread's or a user's events, for the console's pages: from an engine when the node
forwards to one (``engines``: every node's events, indexed), else from the node's store.

The node's store keeps batches, with no index by thread or user: a search there opens
the newest ``SCAN_BATCHES`` batches of the project received in the last
``SCAN_WINDOW_S``, expands them, and keeps the matching events. The page says so
(``Found.bound``), and what is older, or further back than that, is not shown.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..clock import now_us
from ..store import batches
from ..store.expand import EventRow
from ..store.read import TimeTexts, record
from ..store.sqlite import connect

SCAN_BATCHES = 2_000
SCAN_WINDOW_S = 7 * 86_400
MAX_EVENTS = 1_000  # shown on one page
Record = dict[str, Any]  # an event as ``events export`` writes it


@dataclass
class Found:
    """The events found (in time order), where they were read, and how far a search went."""

    events: list[Record]
    source: str
    bound: str | None = None  # None: every stored event was searched
    truncated: bool = False  # more than MAX_EVENTS matched: the newest are shown
    notes: list[str] = field(default_factory=list)


class Conversations(Protocol):
    """Where the thread and user pages read from."""

    def thread(self, project: str, thread_id: str) -> Found: ...

    def user(self, project: str, user_id: str) -> Found: ...

    def close(self) -> None: ...


class StoreConversations:
    """A bounded search of the node's store (its own connection, used by one thread)."""

    def __init__(self, database: Path) -> None:
        self._database = database
        self._conn: sqlite3.Connection | None = None

    def thread(self, project: str, thread_id: str) -> Found:
        return self._search(project, lambda event: event.thread_id == thread_id)

    def user(self, project: str, user_id: str) -> Found:
        return self._search(project, lambda event: event.user_id == user_id)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _search(self, project: str, wanted: Callable[[EventRow], bool]) -> Found:
        conn = self._connection()
        numbers = batches.recent(
            conn, project, since=now_us() - SCAN_WINDOW_S * 1_000_000, limit=SCAN_BATCHES
        )
        node = batches.node_id(conn)
        matched: list[EventRow] = []
        unreadable = 0
        for number in numbers:
            try:
                matched += [e for e in batches.events_at(conn, number, node) or () if wanted(e)]
            except (batches.Unexpandable, ValueError):
                unreadable += 1
        matched.sort(key=lambda event: (event.timestamp, event.id))
        times = TimeTexts()
        found = Found(
            [record(event, times) for event in matched[-MAX_EVENTS:]],
            "this node's store",
            bound=f"the newest {SCAN_BATCHES:,} batches of project {project} received in the"
            f" last {SCAN_WINDOW_S // 86_400} days ({len(numbers):,} searched)",
            truncated=len(matched) > MAX_EVENTS,
        )
        if unreadable:
            found.notes.append(f"{unreadable} stored batch(es) could not be read")
        return found

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self._database)
        return self._conn
