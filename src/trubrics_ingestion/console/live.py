"""The live view's feed: what the node acknowledged and refused, to every browser watching.

The app hands the feed the requests it answered in each turn of its event loop (its
``account``), and only while somebody watches: with nobody, the request path pays one
check of an empty set per turn. An acknowledged batch is there once its commit is durable
and its 200 sent; a refusal with its status and reason (and, but for a 401, its detail:
never anything of a key).

With viewers, the work is done once per turn for all of them: the batches are expanded
into events (``store.expand``, as readers do) and each event is encoded once, at most
``LIVE_EVENTS_PER_S`` a second; a browser could not show more, and the cost stays bounded
whatever the load (events beyond are counted as skipped). Each viewer then gets the
encoded events its filters admit, in a buffer of at most ``VIEWER_BUFFER_EVENTS``: a
viewer that stops reading loses what does not fit, and is told how many events it missed
("n events skipped") once it reads again. Nothing ever waits for a viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from ..clock import format_time
from ..schema import Item
from ..store.expand import expand

LIVE_EVENTS_PER_S = 500  # events expanded for the viewers, all together; beyond: skipped
VIEWER_BUFFER_EVENTS = 1_000  # entries waiting for one viewer; beyond: dropped, counted
MAX_TEXT_CHARS = 2_000  # of an event's properties or a refusal's detail, as shown
_encode = msgspec.json.Encoder().encode


class Answered(Protocol):
    """What the feed reads of an answered request (``ingest.app.Exchange``)."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def project(self) -> str | None: ...
    @property
    def events(self) -> int: ...
    @property
    def answered_at(self) -> float: ...
    @property
    def path(self) -> str: ...
    @property
    def stored(self) -> tuple[str, Sequence[Item], int, int] | None:
        """An acknowledged batch: its source, the items ``LiveFeed.reserve`` kept, its
        receive time, and the events granted (those of the items kept)."""
        ...

    @property
    def detail(self) -> Any:
        """Why it was refused, as the client was told."""
        ...


@dataclass(frozen=True)
class Filters:
    """What one viewer asked to see; None: anything."""

    project: str | None = None
    event: str | None = None
    user: str | None = None
    thread: str | None = None

    def admits(self, entry: Entry) -> bool:
        """Refusals carry no event, user or thread: shown unless one of those is asked."""
        if self.project is not None and entry.project != self.project:
            return False
        if entry.refused:
            return self.event is None and self.user is None and self.thread is None
        return (
            (self.event is None or entry.event == self.event)
            and (self.user is None or entry.user == self.user)
            and (self.thread is None or entry.thread == self.thread)
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the live view, encoded once for every viewer, and what filters read."""

    project: str | None
    event: str | None
    user: str | None
    thread: str | None
    refused: bool
    encoded: bytes


class Viewer:
    """One browser's stream: a bounded buffer of encoded entries, and what it missed."""

    def __init__(self, filters: Filters) -> None:
        self.filters = filters
        self._pending: list[bytes] = []
        self._skipped = 0
        self._ready = asyncio.Event()

    def offer(self, entries: Sequence[Entry]) -> None:
        """Keep what the filters admit and the buffer holds; count the rest as skipped."""
        room = VIEWER_BUFFER_EVENTS - len(self._pending)
        admitted = [entry.encoded for entry in entries if self.filters.admits(entry)]
        self._pending += admitted[:room]
        self._count_skipped(len(admitted) - len(admitted[:room]))

    def skip(self, project: str | None, events: int) -> None:
        """``events`` of ``project`` were never expanded (over the feed's rate)."""
        if self.filters.project is None or self.filters.project == project:
            self._count_skipped(events)

    def _count_skipped(self, events: int) -> None:
        self._skipped += events
        if self._pending or self._skipped:
            self._ready.set()

    def close(self) -> None:
        """The browser went: wake whoever waits on ``next``."""
        self._ready.set()

    async def next(self, timeout_s: float) -> bytes | None:
        """The next server-sent event (entries and skipped count), once there is one;
        None after ``timeout_s`` without."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        if not self._ready.is_set():
            return None
        self._ready.clear()
        pending, self._pending = self._pending, []
        skipped, self._skipped = self._skipped, 0
        return b'data: {"skipped":%d,"entries":[%b]}\n\n' % (skipped, b",".join(pending))


class RateBudget:
    """A token bucket of events per second (a second's worth at most, at once)."""

    def __init__(self, per_s: float) -> None:
        self._per_s = per_s
        self._tokens = per_s
        self._at = time.monotonic()

    def take(self, wanted: int) -> int:
        """How many of ``wanted`` events may be expanded now."""
        now = time.monotonic()
        self._tokens = min(self._per_s, self._tokens + (now - self._at) * self._per_s)
        self._at = now
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted


class LiveFeed:
    """The viewers of this node's traffic; the app calls ``answered`` while there are any."""

    def __init__(self, events_per_s: float = LIVE_EVENTS_PER_S) -> None:
        self.viewers: set[Viewer] = set()
        self._budget = RateBudget(events_per_s)

    def watch(self, filters: Filters) -> Viewer:
        viewer = Viewer(filters)
        self.viewers.add(viewer)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    def reserve(self, items: Sequence[Item], events: int) -> tuple[Sequence[Item], int]:
        """What the viewers will be shown of a batch as it is queued for its commit (the
        budget is taken then, not once it is answered): the first whole items for the
        events granted (usually none at high rates; an LLM item makes two events), and how
        many events were granted. The request keeps only those while its commit is
        awaited, not thousands of objects that would slow every allocation after them."""
        granted = self._budget.take(events)
        per_item = max(1, events // len(items))
        return items[: -(-granted // per_item)], granted

    def answered(self, exchanges: Sequence[Answered]) -> None:
        """One turn's answered requests, to every viewer (on the event loop's thread)."""
        skipped: dict[str | None, int] = {}  # events over the budget, by project
        entries = list(self._entries(exchanges, skipped))
        for viewer in self.viewers:
            if entries:
                viewer.offer(entries)
            for project, events in skipped.items():
                viewer.skip(project, events)

    def _entries(
        self, exchanges: Sequence[Answered], skipped: dict[str | None, int]
    ) -> Iterator[Entry]:
        for exchange in exchanges:
            stored = exchange.stored
            if exchange.reason is not None:
                yield _refusal(exchange)
            elif stored is not None and exchange.events:
                project, events = exchange.project or "", exchange.events
                _, kept, received_at, granted = stored
                if granted < events:
                    skipped[project] = skipped.get(project, 0) + events - granted
                if granted:
                    yield from _events(project, kept, received_at)


def _events(project: str, kept: Sequence[Item], received_at: int) -> Iterator[Entry]:
    """The events of the items kept for the viewers."""
    received = format_time(received_at)
    for row in expand(kept, project=project, received_at=received_at, new_id=str):
        yield Entry(
            project,
            row.event,
            row.user_id,
            row.thread_id,
            False,
            _encode(
                {
                    "kind": "event",
                    "time": format_time(row.timestamp),
                    "received_at": received,
                    "project": project,
                    "event": row.event,
                    "user_id": row.user_id,
                    "thread_id": row.thread_id,
                    "source": row.source,
                    "properties": row.properties.decode()[:MAX_TEXT_CHARS],
                }
            ),
        )


def _refusal(exchange: Answered) -> Entry:
    """A refused request: status, reason, and what the client was told (not for a 401:
    whatever its detail says, it is about a key)."""
    detail = None if exchange.status == 401 else exchange.detail
    text = detail if detail is None or isinstance(detail, str) else _encode(detail).decode()
    at = round(exchange.answered_at * 1_000_000)
    record = {
        "kind": "refused",
        "received_at": format_time(at),
        "project": exchange.project,
        "path": exchange.path,
        "status": exchange.status,
        "reason": exchange.reason,
        "detail": None if text is None else text[:MAX_TEXT_CHARS],
    }
    return Entry(exchange.project, None, None, None, True, _encode(record))
