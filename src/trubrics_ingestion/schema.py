"""The two request bodies, decoded and validated with msgspec.

A valid batch takes the fast path: one typed ``Decoder`` call. Only when that fails do
we pay for the slow path, which checks every field of every item so that the 422 names
*all* problems at once (msgspec stops at the first), in FastAPI's ``loc``/``msg``/``type``
shape. Both paths use the same annotated types, so they cannot disagree.

Unknown fields are ignored on purpose: the real SDKs send some (``event_type`` in older
versions, ``thread_id`` at the top level of LLM events).

Every timestamp must stay within years 1 to 9999 once converted to UTC, and an LLM event's
prompt time (its timestamp minus the latency) too, or the row could be neither stored nor
exported. JSON Schema cannot say so; the structs check it as they are decoded
(``__post_init__``), on the decoded value, so a timestamp written with JSON escapes is
judged like any other; the slow path runs the same check.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from .clock import MICROSECOND
from .errors import InvalidPayload

MAX_BATCH_ITEMS = 100

NonEmptyStr = Annotated[str, Meta(min_length=1)]
MAX_LATENCY_S = 7 * 24 * 3600  # longer is a mistake, and would push timestamps out of range
Seconds = Annotated[float, Meta(ge=0, le=MAX_LATENCY_S)]
Properties = dict[str, Any]
TIME_RANGE_MSG = "Timestamp is out of range once converted to UTC (years 1 to 9999)"
# A UTC offset is under a day and a latency at most 7 days: only these years can leave the range.
_EDGE_YEARS = (1, 9999)


def storable(moment: datetime | None, latency: float | None = None) -> bool:
    """Whether an event at ``moment`` (naive is UTC), and a prompt ``latency`` seconds
    before it, can be stored and exported: both within years 1 to 9999 in UTC."""
    if moment is None or moment.year not in _EDGE_YEARS:
        return True
    try:  # the same arithmetic as ``expand``: to UTC, then whole microseconds of latency
        utc = moment.astimezone(UTC) if moment.tzinfo is not None else moment
        utc - round((latency or 0) * 1_000_000) * MICROSECOND
    except OverflowError:
        return False
    return True


class Event(Struct, gc=False):
    """One product analytics event, as posted to ``/publish_events``.

    ``gc=False``: decoded JSON holds no reference cycles, so the cycle collector need
    never walk the events of a batch."""

    user_id: NonEmptyStr
    event: NonEmptyStr
    timestamp: datetime
    properties: Properties | None = None

    def __post_init__(self) -> None:
        if not storable(self.timestamp):
            raise ValueError(TIME_RANGE_MSG)


class LLMEvent(Struct):
    """One prompt and its generation, as posted to ``/publish_llm_events``."""

    user_id: NonEmptyStr
    prompt: str
    generation: str
    assistant_id: str | None = None
    latency: Seconds | None = None
    timestamp: datetime | None = None
    prompt_event_name: NonEmptyStr | None = None
    generation_event_name: NonEmptyStr | None = None
    properties: Properties | None = None
    thread_id: str | None = None

    def __post_init__(self) -> None:
        if not storable(self.timestamp, self.latency):
            raise ValueError(TIME_RANGE_MSG)


Source = Literal["event", "llm"]  # which endpoint a batch came to: stored as `source`
Item = Event | LLMEvent
STRUCTS: dict[str, type[Event] | type[LLMEvent]] = {"event": Event, "llm": LLMEvent}
_DECODERS = {
    source: msgspec.json.Decoder(Annotated[list[struct], Meta(max_length=MAX_BATCH_ITEMS)])  # type: ignore[valid-type]
    for source, struct in STRUCTS.items()
}
_FIELDS = {source: msgspec.structs.fields(struct) for source, struct in STRUCTS.items()}
ItemErrors = Callable[[int, Any], list[dict[str, Any]]]  # (index, item as decoded JSON) -> errors
Fields = tuple[msgspec.structs.FieldInfo, ...]


def decode_batch(body: bytes, source: str) -> list[Item]:
    """Decode and validate a whole batch, or raise ``InvalidPayload`` naming every error."""
    try:
        return _DECODERS[source].decode(body)  # type: ignore[no-any-return]
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidPayload(batch_errors(body, partial(_item_errors, source=source))) from None


def batch_errors(body: bytes, item_errors: ItemErrors) -> list[dict[str, Any]]:
    """The slow path: find every problem in a body that failed the fast path, the errors
    of each item as ``item_errors(index, item)`` finds them."""
    try:
        items = msgspec.json.decode(body)
    except msgspec.ValidationError as exc:  # a number too large for a float
        return [_error(["body"], str(exc), "value_error")]
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return [_error(["body"], f"Invalid JSON: {exc}", "json_invalid")]
    except RecursionError:
        return [_error(["body"], "JSON is nested too deeply.", "json_invalid")]
    if not isinstance(items, list):
        return [_error(["body"], "Input should be a valid array of events.", "list_type")]
    if len(items) > MAX_BATCH_ITEMS:
        msg = f"A batch holds at most {MAX_BATCH_ITEMS} items, got {len(items)}."
        return [_error(["body"], msg, "too_long")]
    errors = [error for index, item in enumerate(items) for error in item_errors(index, item)]
    return errors or [_error(["body"], "Invalid payload.", "value_error")]


def _item_errors(index: int, item: Any, source: str) -> list[dict[str, Any]]:
    errors, values = field_errors(index, item, _FIELDS[source])
    judged = not failed(errors) & {"timestamp", "latency"}
    if judged and not storable(values.get("timestamp"), values.get("latency")):
        errors.append(out_of_range(index))
    return errors


def field_errors(
    index: int,
    item: Any,
    fields: Fields,
    nested: Mapping[str, Fields] | None = None,
    within: tuple[str, ...] = (),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The errors of item ``index``'s fields, each converted alone (all of them: msgspec
    stops at the first), and the values of those that converted. An object given for a
    field in ``nested`` has the errors of its own fields, each named."""
    if not isinstance(item, dict):
        return [_error(["body", index], "Input should be a valid object.", "dict_type")], {}
    errors = []
    values: dict[str, Any] = {}
    for field in fields:
        loc: list[str | int] = ["body", index, *within, field.name]
        if field.name not in item:
            if field.required:
                errors.append(_error(loc, "Field required.", "missing"))
            continue
        value = item[field.name]
        if nested and field.name in nested and isinstance(value, dict):
            inner, _ = field_errors(index, value, nested[field.name], None, (*within, field.name))
            errors.extend(inner)
            if inner:
                continue
        try:
            values[field.name] = msgspec.convert(value, field.type)
        except msgspec.ValidationError as exc:
            errors.append(_validation_error(loc, str(exc)))
    return errors, values


def failed(errors: list[dict[str, Any]]) -> set[str]:
    """The fields that ``errors`` name (none for an item that is not an object)."""
    return {error["loc"][2] for error in errors if len(error["loc"]) > 2}


def out_of_range(index: int) -> dict[str, Any]:
    """Item ``index``'s event (or its prompt) would leave years 1 to 9999."""
    return item_error(index, "timestamp", TIME_RANGE_MSG + ".", "datetime_out_of_range")


def item_error(index: int, field: str | None, msg: str, kind: str) -> dict[str, Any]:
    """A problem of item ``index`` (of its ``field``), as the 422 names it."""
    return _error(["body", index] if field is None else ["body", index, field], msg, kind)


_PATH = re.compile(r" - at `\$(.*)`$")
_TYPES = {"str": "string_type", "float": "float_type", "object": "dict_type", "null": "none"}


def _validation_error(loc: list[str | int], message: str) -> dict[str, Any]:
    """Translate a msgspec message into a FastAPI-style error with a pydantic-like type."""
    match = _PATH.search(message)
    if match:
        message = message[: match.start()]
        loc = loc + [part for part in re.split(r"[.\[\]]+", match.group(1)) if part]
    if message.startswith("Expected `str` of length"):
        kind = "string_too_short"
    elif message.startswith("Expected `float` >="):
        kind = "greater_than_equal"
    elif message.startswith("Expected `float` <="):
        kind = "less_than_equal"
    elif "RFC3339" in message or "datetime" in message:
        kind = "datetime_parsing"
    elif message.startswith("Expected `"):
        expected = message.split("`")[1].split(" | ")[0]
        kind = _TYPES.get(expected, "type_error")
    else:
        kind = "value_error"
    return _error(loc, message + ".", kind)


def _error(loc: list[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind}
