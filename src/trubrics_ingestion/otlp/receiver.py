"""What the HTTP app (``ingest.app``) asks of an OTLP export: its media type, what to
journal of it, the answer, and a word to the resolver once it is durable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..store.genai import EXPORT
from . import wire
from .counts import OtlpCounts
from .records import encode


@dataclass(frozen=True)
class Accepted:
    """An export, decoded: what to journal (empty: nothing worth keeping) and the answer."""

    source: str
    body: bytes
    events: int  # the events it will become (for the rate limit)
    reply: bytes
    content_type: bytes


class Receiver:
    """Decodes exports for the app; ``on_stored`` is told when one was journaled."""

    def __init__(self, counts: OtlpCounts, on_stored: Callable[[], None]) -> None:
        self.counts = counts
        self._on_stored = on_stored

    def media_type(self, content_type: bytes | None) -> bytes:
        """``application/x-protobuf`` or ``application/json``, else a 415."""
        return wire.media_type(content_type)

    def accept(self, signal: str, media: bytes, body: bytes) -> Accepted:
        """The export of ``signal`` (``traces``, ``logs``) in ``body``; a 400 if it is none."""
        decoded = wire.decode(signal, media, body)
        self.counts.count(signal, decoded)
        export = decoded.export
        kept = encode(export) if export.spans or export.logs else b""
        events = 2 * decoded.calls if signal == wire.TRACES else 0
        return Accepted(EXPORT, kept, events, wire.reply(signal, media, decoded), media)

    def stored(self) -> None:
        self._on_stored()
