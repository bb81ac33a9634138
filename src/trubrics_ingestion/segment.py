"""The bodies Segment's Trubrics destination posts, and the events each of their items is.

Segment's "Trubrics (Actions)" destination (``segmentio/action-destinations``,
``destinations/trubrics``) posts up to 100 items at a time: track items to
``/publish_segment_events`` and identify items to ``/identify_segment_users``. Its first
version posted one event at a time to ``/publish_event``, as ``trubrics-beta`` does:
that body is one ``schema.Event`` (``decode_event``).

An item is validated as an SDK's is (one typed decode, else ``schema``'s slow path naming
every error), then read as the ``Event`` or ``LLMEvent`` it describes (``BODIES``). That
reading runs when a batch is acknowledged (to count its events and journal their span)
and again whenever the stored batch is read, so it is a pure function of the batch and
its receive time:

- a track item whose ``llm_properties`` hold a prompt and a generation is an LLM event
  (a Prompt and a Generation, as ``/publish_llm_events`` stores them), else a plain event;
- its user is ``user_id``, or ``anonymous_id`` when it has none (the destination's own
  comment: Trubrics requires a user id, so the anonymous id stands in); with neither it
  is refused;
- its properties are kept, with ``context`` as ``$context``, ``anonymous_id`` as
  ``$anonymous_id``, an LLM item's Segment event name as ``$segment_event``, and
  ``llm_properties`` without a prompt and a generation as ``$llm_properties`` (their
  thread as ``$thread_id``);
- an identify item is an ``$identify`` event whose properties are the user's traits;
- an item without a timestamp happened when its batch was received.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, NamedTuple

import msgspec
from msgspec import Meta, Struct

from .clock import EPOCH, MICROSECOND
from .errors import InvalidPayload
from .schema import (
    MAX_BATCH_ITEMS,
    TIME_RANGE_MSG,
    Event,
    Item,
    ItemErrors,
    LLMEvent,
    NonEmptyStr,
    Properties,
    Seconds,
    batch_errors,
    failed,
    field_errors,
    item_error,
    out_of_range,
    storable,
)

SINGLE_EVENT = "single_event"  # the sources these batches are stored with
TRACK = "segment_track"
IDENTIFY = "segment_identify"
IDENTIFY_EVENT = "$identify"
NO_USER_MSG = "Field required: a user_id, or an anonymous_id standing in for it."


class LLMProperties(Struct, omit_defaults=True):
    """What the destination maps from a track's ``$trubrics_*`` properties (any of them)."""

    assistant_id: str | None = None
    prompt: str | None = None
    generation: str | None = None
    thread_id: str | None = None
    latency: Seconds | None = None

    @property
    def complete(self) -> bool:
        """Whether these describe an LLM event: a prompt and its generation."""
        return self.prompt is not None and self.generation is not None


class Track(Struct):
    """One track item, as the destination builds it (``track/utils.ts``)."""

    event: NonEmptyStr
    timestamp: datetime | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    llm_properties: LLMProperties | None = None
    context: Properties | None = None
    properties: Properties | None = None

    def __post_init__(self) -> None:
        if not (self.user_id or self.anonymous_id):
            raise ValueError(NO_USER_MSG)
        if not storable(self.timestamp, _prompt_latency(self.llm_properties)):
            raise ValueError(TIME_RANGE_MSG)


class Identify(Struct):
    """One identify item, as the destination builds it (``identify/utils.ts``)."""

    user_id: NonEmptyStr
    anonymous_id: str | None = None
    traits: Properties | None = None
    timestamp: datetime | None = None

    def __post_init__(self) -> None:
        if not storable(self.timestamp):
            raise ValueError(TIME_RANGE_MSG)


def _prompt_latency(llm: LLMProperties | None) -> float | None:
    """How long before the item's timestamp its prompt was, if it is an LLM event."""
    return llm.latency if llm is not None and llm.complete else None


_TRACK_FIELDS = msgspec.structs.fields(Track)
_LLM_FIELDS = {"llm_properties": msgspec.structs.fields(LLMProperties)}
_IDENTIFY_FIELDS = msgspec.structs.fields(Identify)


def _track_errors(index: int, item: Any) -> list[dict[str, Any]]:
    """The slow path's errors of one track item: its fields', then its two rules', each
    judged when the fields it reads are valid."""
    errors, values = field_errors(index, item, _TRACK_FIELDS, _LLM_FIELDS)
    if not isinstance(item, dict):
        return errors
    broken = failed(errors)
    user = values.get("user_id") or values.get("anonymous_id")
    if not (user or broken & {"user_id", "anonymous_id"}):
        errors.append(item_error(index, "user_id", NO_USER_MSG, "missing"))
    moment, latency = values.get("timestamp"), _prompt_latency(values.get("llm_properties"))
    if not broken & {"timestamp", "llm_properties"} and not storable(moment, latency):
        errors.append(out_of_range(index))
    return errors


def _identify_errors(index: int, item: Any) -> list[dict[str, Any]]:
    errors, values = field_errors(index, item, _IDENTIFY_FIELDS)
    if "timestamp" not in failed(errors) and not storable(values.get("timestamp")):
        errors.append(out_of_range(index))
    return errors


def _decoder(struct: type[Struct], item_errors: ItemErrors) -> Callable[[bytes], list[Any]]:
    """The batch decoder for ``struct`` items: typed, else ``InvalidPayload`` naming
    every error (``schema``'s slow path, each item judged by ``item_errors``)."""
    typed = msgspec.json.Decoder(Annotated[list[struct], Meta(max_length=MAX_BATCH_ITEMS)])  # type: ignore[valid-type]

    def decode(body: bytes) -> list[Any]:
        try:
            return typed.decode(body)  # type: ignore[no-any-return]
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            raise InvalidPayload(batch_errors(body, item_errors)) from None

    return decode


def _received(received_at: int) -> datetime:
    return EPOCH + received_at * MICROSECOND


def _track_item(track: Track, received_at: int) -> Item:
    user = track.user_id or track.anonymous_id or ""  # one of them, by __post_init__
    llm = track.llm_properties
    if llm is not None and llm.complete:
        return _llm_event(track, llm, user)
    properties = _kept(track)
    if llm is not None and (given := msgspec.to_builtins(llm)):
        properties["$llm_properties"] = given
        if llm.thread_id is not None:
            properties["$thread_id"] = llm.thread_id
    at = track.timestamp or _received(received_at)
    return Event(user_id=user, event=track.event, timestamp=at, properties=properties)


def _llm_event(track: Track, llm: LLMProperties, user: str) -> LLMEvent:
    """A track item with a prompt and a generation, as ``/publish_llm_events`` takes it."""
    return LLMEvent(
        user_id=user,
        prompt=llm.prompt or "",  # neither is None: llm.complete
        generation=llm.generation or "",
        assistant_id=llm.assistant_id,
        latency=llm.latency,
        timestamp=track.timestamp,  # None: when received, as for the SDKs' LLM events
        properties={**_kept(track), "$segment_event": track.event},
        thread_id=llm.thread_id,
    )


def _kept(track: Track) -> dict[str, Any]:
    """The item's properties, with what Segment adds to them (a copy: the item is read
    again at every reading of its batch)."""
    properties = dict(track.properties or {})
    if track.context is not None:
        properties["$context"] = track.context
    if track.anonymous_id is not None:
        properties["$anonymous_id"] = track.anonymous_id
    return properties


def _identify_item(identify: Identify, received_at: int) -> Item:
    properties = dict(identify.traits or {})
    if identify.anonymous_id is not None:
        properties["$anonymous_id"] = identify.anonymous_id
    at = identify.timestamp or _received(received_at)
    return Event(
        user_id=identify.user_id, event=IDENTIFY_EVENT, timestamp=at, properties=properties
    )


class Body(NamedTuple):
    """One of the destination's request bodies."""

    decode: Callable[[bytes], list[Any]]  # its items, or InvalidPayload naming every error
    free_form: tuple[str, ...]  # the fields of an item holding JSON objects of any shape
    item: Callable[[Any, int], Item]  # (decoded item, received_at) -> the event it is

    def items(self, decoded: Sequence[Any], received_at: int) -> list[Item]:
        """The events the decoded items are, in order."""
        return [self.item(one, received_at) for one in decoded]


BODIES = {
    TRACK: Body(_decoder(Track, _track_errors), ("properties", "context"), _track_item),
    IDENTIFY: Body(_decoder(Identify, _identify_errors), ("traits",), _identify_item),
}
decode_event = msgspec.json.Decoder(Event).decode  # one event: the first destination's body
