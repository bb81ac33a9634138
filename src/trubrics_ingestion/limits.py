"""Per-event limits the schema cannot express: an event's size and its properties' depth.

Both checks are arranged so that an ordinary batch pays almost nothing: no event can be
larger than the whole body, and properties cannot nest deeper than the number of JSON
containers the body holds beyond the batch, its events and their property objects
(counted in C with ``bytes.count``). Only a batch that could break a limit is walked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from .errors import InvalidPayload
from .schema import Item

_CONTAINERS = (dict, list)
_split_items = msgspec.json.Decoder(list[msgspec.Raw]).decode


@dataclass(frozen=True, kw_only=True)
class PayloadLimits:
    max_event_bytes: int
    max_depth: int  # the properties object itself is level 1

    def check(self, body: bytes, items: list[Item]) -> None:
        """Raise ``InvalidPayload`` naming every event over a limit."""
        errors = self._size_errors(body) + self._depth_errors(body, items)
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
