"""Per-event limits the schema cannot express: an event's size and its properties' depth.
(Timestamps that leave the storable range are refused while decoding: see ``schema``.)

Both are judged per event, so that the 422 names each one over a limit, along with every
other error of the batch; in the other clients' items, each free-form object is judged
(``properties`` and ``context``, or ``traits``: see ``clients``). They are arranged so
that an ordinary batch pays almost nothing: no event can be larger than the whole body,
properties holding no container are flat (the garbage collector knows, see
``_may_be_too_deep``), and properties cannot nest deeper than the JSON containers the body
holds beyond the batch, its events and their property objects (counted in C). Only a batch
that could break a limit is walked.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from ..errors import InvalidPayload
from ..schema import Item, decode_batch, item_error

_CONTAINERS = (dict, list)
_split_items = msgspec.json.Decoder(list[msgspec.Raw]).decode


Documents = Iterable[tuple[int, str, Any]]  # (item index, field, its free-form JSON value)
_PROPERTIES = ("properties",)  # what is free-form in an SDK's event


@dataclass(frozen=True, kw_only=True)
class PayloadLimits:
    max_event_bytes: int
    max_depth: int  # the properties object itself is level 1

    def decode(self, body: bytes, source: str) -> list[Item]:
        """The batch's items, or ``InvalidPayload`` naming every event that is invalid or
        over a limit, in batch order."""
        try:
            items = decode_batch(body, source)
        except InvalidPayload as invalid:
            raise self.joined(invalid, body, _PROPERTIES) from None
        if self._may_be_too_deep(body, items):
            self.check(body, documents(items, _PROPERTIES))
        elif errors := self._size_errors(body):
            raise _refusal(errors)
        return items

    def check(self, body: bytes, documents: Documents) -> None:
        """Raise ``InvalidPayload`` naming every item of the batch ``body`` over the size
        limit and every one of ``documents`` nesting too deep, if there are any."""
        if errors := self._errors(body, documents):
            raise _refusal(errors)

    def joined(
        self, invalid: InvalidPayload, body: bytes, free_form: tuple[str, ...]
    ) -> InvalidPayload:
        """``invalid`` (a batch refused item by item), naming the items over a limit too,
        their ``free_form`` fields judged, so that one answer names every problem; a batch
        wrong as a whole stays as it is."""
        if any(len(error["loc"]) < 2 for error in invalid.detail):
            return invalid  # there are no events to judge
        return _refusal(self._errors(body, documents_of(body, free_form)) + invalid.detail)

    def _errors(self, body: bytes, documents: Documents) -> list[dict[str, Any]]:
        """Every item over the size limit, and every document nesting too deep."""
        levels = self.max_depth
        too_deep = [
            item_error(
                index, field, f"The {field} object nests deeper than {levels} levels.", "too_deep"
            )
            for index, field, value in documents
            if isinstance(value, dict) and _deeper_than(value, self.max_depth)
        ]
        return self._size_errors(body) + too_deep

    def _size_errors(self, body: bytes) -> list[dict[str, Any]]:
        if len(body) <= self.max_event_bytes:
            return []
        try:
            raws = _split_items(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return []  # not a list of values: the decoder's errors say why
        msg = f"Event is larger than {self.max_event_bytes} bytes."
        return [
            item_error(index, None, msg, "too_large")
            for index, raw in enumerate(raws)
            if len(raw) > self.max_event_bytes
        ]

    def _may_be_too_deep(self, body: bytes, items: list[Item]) -> bool:
        """False only if no event's properties can nest deeper than ``max_depth``.

        First, almost free: CPython tracks a dict in its garbage collector as soon as a
        container is put in it (it must see every reference to a list or dict, or it could
        not find cycles), while a dict of strings, numbers, booleans and None stays
        untracked: an untracked properties object is flat. Else a bound: every container
        of a decoded value was written as a literal ``{`` or ``[`` in the body (an escaped
        ``\\u007b`` is in a string, never a container), so the body holds at least one
        such byte per container: the batch, each event, each properties object, and the
        levels below. Bytes inside strings, and in unknown fields, are counted too; that
        only makes the count larger, so it may walk for nothing but can never skip a deep
        object."""
        properties = [item.properties for item in items]
        if not any(map(gc.is_tracked, properties)):
            return False
        property_objects = len(items) - properties.count(None)
        below = body.count(b"{") + _brackets(body) - 1 - len(items) - property_objects
        return below >= self.max_depth  # levels below the properties object, at most


def _brackets(body: bytes) -> int:
    """``body.count(b"[")``, cheaply for the usual batch whose only ``[`` is its own:
    ``find`` is memchr (vectorised), several times faster than ``count``'s byte loop."""
    first = body.find(b"[")
    if first == -1 or body.find(b"[", first + 1) == -1:
        return 0 if first == -1 else 1
    return body.count(b"[")


def _refusal(errors: list[dict[str, Any]]) -> InvalidPayload:
    return InvalidPayload(sorted(errors, key=_item_index))


def documents(items: Sequence[Any], fields: tuple[str, ...]) -> Documents:
    """The free-form ``fields`` of each decoded item, as documents to judge."""
    return [
        (index, field, getattr(item, field)) for index, item in enumerate(items) for field in fields
    ]


def documents_of(body: bytes, fields: tuple[str, ...]) -> Documents:
    """The free-form ``fields`` of each item of a batch (a JSON array) that the decoder
    refused item by item."""
    items: list[Any] = msgspec.json.decode(body)
    return [
        (index, field, item.get(field))
        for index, item in enumerate(items)
        if isinstance(item, dict)
        for field in fields
    ]


def _deeper_than(value: dict[str, Any], limit: int) -> bool:
    """Whether a JSON object nests deeper than ``limit`` levels (itself is level 1): level
    by level, without recursion, stopping at ``limit``."""
    level: list[Any] = [value]
    for _ in range(limit):
        below = []
        for container in level:
            for child in container.values() if isinstance(container, dict) else container:
                if isinstance(child, _CONTAINERS):
                    below.append(child)
        if not below:
            return False
        level = below
    return True


def _item_index(error: dict[str, Any]) -> int:
    index: int = error["loc"][1]
    return index
