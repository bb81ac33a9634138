"""Time-ordered event ids (UUIDv7, RFC 9562) that are derived, not drawn.

An id is built from the batch's receive time, the node's id, the journal batch number
and the event's position in the batch. Ids therefore sort by time (B-tree inserts stay
at the right edge, unlike random uuid4 keys), never collide within a node, differ
between nodes through the node id, and come out the same if a batch is ever
expanded again, which keeps downstream writes idempotent.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

NODE_BITS = 24
BATCH_BITS = 42
INDEX_BITS = 8  # 256 ids per batch: 100 LLM events expand to 200 events
_VERSION_7 = 0x7 << 76
_VARIANT = 0b10 << 62
# The index's hex digits in the text: the last group (12 digits) ends with the node's.
_INDEX_AT = len("01234567-0123-0123-0123-") + 12 - (NODE_BITS + INDEX_BITS) // 4
_INDEXES = [f"{index:0{INDEX_BITS // 4}x}" for index in range(1 << INDEX_BITS)]


def new_node_id() -> int:
    """A random node id, drawn once when a store is created."""
    return secrets.randbits(NODE_BITS)


def event_id(received_at_ms: int, batch: int, index: int, node: int) -> str:
    """The UUIDv7 string for the ``index``-th event of journal batch ``batch``."""
    return _format(_uuid7(received_at_ms, batch, node) | index << NODE_BITS)


def id_factory(received_at_ms: int, batch: int, node: int) -> Callable[[], str]:
    """A callable handing out the ids of one batch in order."""
    return iter(batch_ids(received_at_ms, batch, node)).__next__


def batch_ids(
    received_at_ms: int, batch: int, node: int, count: int = 1 << INDEX_BITS
) -> list[str]:
    """The first ``count`` ids of one batch, in order. Cheaply: the index is a fixed pair
    of hex digits of the text, so each id is the index-0 text with those two replaced
    (formatting a 128-bit integer per id would cost more than expanding its event)."""
    text = _format(_uuid7(received_at_ms, batch, node))
    before, after = text[:_INDEX_AT], text[_INDEX_AT + len(_INDEXES[0]) :]
    return [before + index + after for index in _INDEXES[:count]]


def _uuid7(received_at_ms: int, batch: int, node: int) -> int:
    """The id's integer with index 0; the index bits lie in rand_b, below the variant."""
    tail = (batch % (1 << BATCH_BITS)) << (INDEX_BITS + NODE_BITS) | node
    rand_a, rand_b = tail >> 62, tail & ((1 << 62) - 1)
    return (received_at_ms & ((1 << 48) - 1)) << 80 | _VERSION_7 | rand_a << 64 | _VARIANT | rand_b


def _format(value: int) -> str:
    """Canonical 8-4-4-4-12 text, as ``str(uuid.UUID(int=value))`` but without the object."""
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
