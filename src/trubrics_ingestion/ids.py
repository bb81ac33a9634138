"""Time-ordered event ids (UUIDv7, RFC 9562) that are derived, not drawn.

An id is built from the batch's receive time, the node's id, the journal batch number
and the event's position in the batch. Ids therefore sort by time (B-tree inserts stay
at the right edge, unlike random uuid4 keys), never collide within a node, differ
between nodes through the node id, and come out the same if a batch is ever
materialised again, which keeps downstream writes idempotent.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable

NODE_BITS = 24
BATCH_BITS = 42
INDEX_BITS = 8  # 256 ids per batch: 100 LLM events expand to 200 events
_VERSION_7 = 0x7 << 76
_VARIANT = 0b10 << 62


def new_node_id() -> int:
    """A random node id, drawn once when a store is created."""
    return secrets.randbits(NODE_BITS)


def event_id(received_at_ms: int, batch: int, index: int, node: int) -> str:
    """The UUIDv7 string for the ``index``-th event of journal batch ``batch``."""
    tail = (batch % (1 << BATCH_BITS)) << (INDEX_BITS + NODE_BITS) | index << NODE_BITS | node
    rand_a, rand_b = tail >> 62, tail & ((1 << 62) - 1)
    value = (received_at_ms & ((1 << 48) - 1)) << 80 | _VERSION_7 | rand_a << 64 | _VARIANT | rand_b
    return str(uuid.UUID(int=value))


def id_factory(received_at_ms: int, batch: int, node: int) -> Callable[[], str]:
    """A callable handing out the ids of one batch in order."""
    counter = iter(range(1 << INDEX_BITS))
    return lambda: event_id(received_at_ms, batch, next(counter), node)
