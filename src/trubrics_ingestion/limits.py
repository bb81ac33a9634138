"""Per-event limits the schema cannot express: an event's size, its properties' depth, and
timestamps that stay within what can be stored and exported once converted to UTC.

The checks are arranged so that an ordinary batch pays almost nothing: no event can be
larger than the whole body; properties cannot nest deeper than the number of JSON
containers the body holds beyond the batch, its events and their property objects
(counted in C with ``bytes.count``); and only a year 0001 or 9999 can leave the range.
Only a batch that could break a limit is walked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from .errors import InvalidPayload
from .expand import to_micros
from .schema import Item

_CONTAINERS = (dict, list)
_MIN_MICROS = to_micros(datetime.min.replace(tzinfo=UTC))
_MAX_MICROS = to_micros(datetime.max.replace(tzinfo=UTC))
_split_items = msgspec.json.Decoder(list[msgspec.Raw]).decode


@dataclass(frozen=True, kw_only=True)
class PayloadLimits:
    max_event_bytes: int
    max_depth: int  # the properties object itself is level 1

    def check(self, body: bytes, items: list[Item]) -> None:
        """Raise ``InvalidPayload`` naming every event over a limit."""
        errors = self._size_errors(body) + self._depth_errors(body, items)
        errors += _time_errors(body, items)
        if errors:
            raise InvalidPayload(sorted(errors, key=lambda error: error["loc"][1]))

    def _size_errors(self, body: bytes) -> list[dict[str, Any]]:
        if len(body) <= self.max_event_bytes:
            return []
        return [
            _error(index, None, f"Event is larger than {self.max_event_bytes} bytes.", "too_large")
            for index, raw in enumerate(_split_items(body))
            if len(raw) > self.max_event_bytes
        ]

    def _depth_errors(self, body: bytes, items: list[Item]) -> list[dict[str, Any]]:
        property_objects = sum(1 for item in items if item.properties is not None)
        nested = body.count(b"{") + body.count(b"[") - 1 - len(items) - property_objects
        if nested < self.max_depth:  # cannot be deeper than the containers it holds, plus 1
            return []
        msg = f"Properties nest deeper than {self.max_depth} levels."
        return [
            _error(index, "properties", msg, "too_deep")
            for index, item in enumerate(items)
            if item.properties is not None and _depth(item.properties) > self.max_depth
        ]


def _time_errors(body: bytes, items: list[Item]) -> list[dict[str, Any]]:
    if b'"0001-' not in body and b'"9999-' not in body:
        return []
    msg = "Timestamp is out of range once converted to UTC (years 1 to 9999)."
    return [
        _error(index, "timestamp", msg, "datetime_out_of_range")
        for index, item in enumerate(items)
        if item.timestamp is not None and not _storable(item)
    ]


def _storable(item: Item) -> bool:
    """Whether the event's time, and for an LLM event its prompt's time, are in range."""
    at = to_micros(item.timestamp) if item.timestamp is not None else 0
    earliest = at - round((getattr(item, "latency", None) or 0) * 1_000_000)
    return earliest >= _MIN_MICROS and at <= _MAX_MICROS


def _depth(value: dict[str, Any]) -> int:
    """Nesting depth of a JSON object (an object of scalars is 1), without recursion."""
    deepest = 0
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        deepest = max(deepest, depth)
        children = container.values() if isinstance(container, dict) else container
        stack.extend((child, depth + 1) for child in children if isinstance(child, _CONTAINERS))
    return deepest


def _error(index: int, field: str | None, msg: str, kind: str) -> dict[str, Any]:
    loc: list[str | int] = ["body", index] if field is None else ["body", index, field]
    return {"loc": loc, "msg": msg, "type": kind}
