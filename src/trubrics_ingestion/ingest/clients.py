"""The endpoints of the clients beyond the SDKs' batches: Segment's Trubrics destination,
and the one-event endpoint of its first version and of ``trubrics-beta``.

``app`` routes them as it routes the SDKs' (``PUBLISH``): the same key check, body
limits, dedup, rate limits, journal, metrics and access log. What differs is here: how
a body becomes items (``decode``, the bodies themselves being ``segment``'s), how many
events they are (``events``), and, on ``/publish_event`` only, a key in the
``project_api_key`` query parameter, where the destination's first version put it. The
query string is read for that alone: the access log and metrics name the path, which
excludes it, and a refusal never repeats a key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

import msgspec
from starlette.types import Scope

from .. import segment
from ..errors import InvalidPayload
from ..schema import Item, LLMEvent
from .limits import PayloadLimits, documents

SOURCES = {
    "/publish_event": segment.SINGLE_EVENT,
    "/publish_segment_events": segment.TRACK,
    "/identify_segment_users": segment.IDENTIFY,
}
ENDPOINTS = tuple(SOURCES)
DECODED = frozenset(SOURCES.values())  # by ``decode`` (the SDKs' batches: by ``PayloadLimits``)
# Stored events per item, as app's EXPANSION; 0: it varies (a track item may be an LLM event).
EXPANSION = {segment.SINGLE_EVENT: 1, segment.TRACK: 0, segment.IDENTIFY: 1}
KEY_IN_QUERY = frozenset({segment.SINGLE_EVENT})
QUERY_KEY = "project_api_key"
_one_value = msgspec.json.Decoder(msgspec.Raw).decode


def query_key(scope: Scope) -> str | None:
    """The key in the query string; None if absent or given more than once (ambiguous)."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(QUERY_KEY, [])
    return values[0] if len(values) == 1 else None


def decode(limits: PayloadLimits, body: bytes, source: str, received_at: int) -> list[Item]:
    """The events a body holds, or ``InvalidPayload`` naming every problem, limits included."""
    if source == segment.SINGLE_EVENT:
        return _single_event(limits, body)
    kind = segment.BODIES[source]
    try:
        decoded = kind.decode(body)
    except InvalidPayload as invalid:
        raise limits.joined(invalid, body, kind.free_form) from None
    limits.check(body, documents(decoded, kind.free_form))
    return kind.items(decoded, received_at)


def events(items: Sequence[Item]) -> int:
    """How many events the items are stored as."""
    return sum(2 if isinstance(item, LLMEvent) else 1 for item in items)


def _single_event(limits: PayloadLimits, body: bytes) -> list[Item]:
    """One event object, judged as a batch of one by the SDK's path (``/publish_events``);
    its problems are named without an index, as FastAPI names a single object's."""
    try:
        value = _one_value(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _invalid(f"Invalid JSON: {exc}", "json_invalid") from None
    if not bytes(value).startswith(b"{"):
        raise _invalid("Input should be a valid event object.", "dict_type")
    try:
        return limits.decode(b"[" + body + b"]", "event")
    except InvalidPayload as invalid:
        raise InvalidPayload([_unindexed(error) for error in invalid.detail]) from None


def _unindexed(error: dict[str, Any]) -> dict[str, Any]:
    return {**error, "loc": [error["loc"][0], *error["loc"][2:]]}


def _invalid(msg: str, kind: str) -> InvalidPayload:
    return InvalidPayload([{"loc": ["body"], "msg": msg, "type": kind}])
