"""What every engine sink offers the forwarder, and the rows it is handed.

A sink owns its connection and opens it lazily, so that constructing one never fails
because an engine is down: the forwarder calls ``migrate()`` before encoding the first
batch and again after every failure (the engine may have come back empty, or another
server may answer at that address), then encodes and sends batches.
A sink raises on any failure and the forwarder retries the same rows later, so sending
must be idempotent: writing a row twice leaves the engine as if it had been written once
(keyed by the event id).

Sending is split in two, ``encode()`` (pure Python work, no I/O) and ``send()`` (the
engine's work), so that the forwarder can read and encode the next batch in another
thread while the engine is busy with this one: on a small machine that overlap is what
lifts throughput from "Python time plus engine time" towards the larger of the two.
"""

from __future__ import annotations

from typing import Protocol

from ..store.expand import EventColumns, EventRow, Moment, micros

Row = EventRow  # one event, as the forwarder expands it from a stored batch
Columns = EventColumns  # events column by column, as sinks encode them
__all__ = ["Columns", "Moment", "Row", "Sink", "micros"]  # micros: a timestamp column in µs


class Sink(Protocol):
    """An engine that receives the node's events."""

    @property
    def name(self) -> str:
        """The engine's URL without its password, for logs and status."""
        ...

    @property
    def compact_json(self) -> bool:
        """Whether ``encode`` needs the properties' JSON text written plainly, without
        whitespace between tokens or optional escapes (``batches.columns_of(compact=True)``)."""
        ...

    def migrate(self) -> None:
        """Create or upgrade the engine's tables; safe to repeat, also from several nodes."""
        ...

    def encode(self, events: Columns) -> bytes:
        """The engine's wire form of ``events``; no I/O, safe to call from another thread.
        The encodings of consecutive events concatenate."""
        ...

    def send(self, payload: bytes, count: int) -> None:
        """Write an ``encode()``d batch of ``count`` rows durably, or raise. Rows already
        present must not be duplicated."""
        ...

    def close(self) -> None:
        """Drop the connection (the next call reconnects); never raises."""
        ...
