"""Turn validated items into events, including the LLM expansion; and the span of their
timestamps that a batch's narrow row keeps (``batches.py``).

The LLM rules match what the ``trubrics`` Python SDK did client-side before 1.8: each
LLM event becomes a prompt event and a generation event. We additionally link the two
(``$generation_id`` on the prompt, ``$prompt_id`` on the generation) and honour the
top-level ``thread_id`` that SDK 1.8 sends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, NamedTuple, cast

import msgspec
from msgspec import Meta, Raw, Struct

from .. import segment
from ..clock import EPOCH, MICROSECOND, to_micros
from ..schema import (
    MAX_BATCH_ITEMS,
    TIME_RANGE_MSG,
    Event,
    Item,
    LLMEvent,
    NonEmptyStr,
    decode_batch,
)

PROMPT_EVENT = "Prompt"
GENERATION_EVENT = "Generation"
THREAD_KEY = "$thread_id"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


JsonText = bytes | Raw  # a JSON text, UTF-8; a Raw is a slice of a stored body, not copied
# A time: microseconds since the Unix epoch in UTC, or a decoded datetime (naive: UTC).
Moment = int | datetime


class EventRow(NamedTuple):
    """One event as readers and forwarders see it (and as the engines' tables hold it)."""

    id: str
    project: str
    user_id: str
    event: str
    timestamp: int  # microseconds since the Unix epoch, UTC
    thread_id: str | None
    properties: bytes  # a JSON object, UTF-8: as its client wrote it, or as we encoded it
    received_at: int  # microseconds since the Unix epoch, UTC
    source: str  # "event" or "llm"


_new_row = partial(tuple.__new__, EventRow)  # EventRow(*fields) without its Python __new__


class EventColumns(NamedTuple):
    """Events column by column, each column a list of one length: how forwarders take a
    stored batch's events, as the engines' encoders work column by column (making a tuple
    of every event only to take it apart again cost as much as the encoding).

    A plain batch's ``timestamp`` column holds the datetimes its decoder made, the others'
    hold microseconds: an encoder that writes times as text has msgspec write the
    datetimes (in C), which costs less than computing their microseconds, and one that
    needs microseconds gets them from ``micros``."""

    id: list[str]
    project: list[str]
    user_id: list[str]
    event: list[str]
    timestamp: list[Moment]
    thread_id: list[str | None]
    properties: list[JsonText]
    received_at: list[int]
    source: list[str]

    @classmethod
    def of(cls, rows: Iterable[EventRow]) -> EventColumns:
        """The columns of ``rows``."""
        columns = [list(column) for column in zip(*rows, strict=True)]
        return cls(*columns) if columns else cls.empty()

    @classmethod
    def empty(cls) -> EventColumns:
        return cls(*([] for _ in cls._fields))

    @property
    def size(self) -> int:
        """How many events (``len`` is the number of columns)."""
        return len(self.id)

    def rows(self) -> list[EventRow]:
        """The events one by one (each with its time in microseconds and its properties'
        text as ``bytes``)."""
        at = cast(list[Moment], micros(self.timestamp))
        plain = self._replace(timestamp=at, properties=list(map(bytes, self.properties)))
        return list(map(_new_row, zip(*plain, strict=True)))

    def extend(self, other: EventColumns) -> None:
        """Append ``other``'s events."""
        for mine, theirs in zip(self, other, strict=True):
            mine += theirs  # type: ignore[operator]


_NAIVE_EPOCH = EPOCH.replace(tzinfo=None)
_NULL, _EMPTY = b"null", b"{}"
_RAW_NULL = Raw(_NULL)
_THREAD_NAME = f'"{THREAD_KEY}"'.encode()
# What schema.storable allows: every event within years 1 to 9999 once in UTC.
_FIRST_US = to_micros(datetime(1, 1, 1, tzinfo=UTC))
_LAST_US = to_micros(datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))


class Span(NamedTuple):
    """What the narrow row says about a batch's events, computed once when it is journaled."""

    events: int
    first_at: int  # at most the earliest event timestamp (microseconds since the epoch)
    last_at: int  # at least the latest one


def span(items: Sequence[Item], source: str, received_at: int) -> Span:
    """The batch's event count and time bounds, for counting and time-range reads.

    Bounds, not exact values, keep this cheap (a ``min``/``max`` in C over the decoded
    datetimes): an LLM event's prompt lies ``latency`` before its generation, so the lower
    bound takes the largest latency off the earliest generation. Readers filter each event
    by its own timestamp; the bounds only choose the batches worth opening. The other
    clients' batches (``segment``) hold both kinds: each kind is bounded on its own."""
    if source == "event":
        events = cast(Sequence[Event], items)
        first, last = _extremes([item.timestamp for item in events])
        return Span(len(items), first, last)
    if source != "llm":
        return _mixed_span(items, received_at)
    llm = cast(Sequence[LLMEvent], items)
    moments = [item.timestamp for item in llm if item.timestamp is not None]
    first, last = _extremes(moments) if moments else (received_at, received_at)
    if len(moments) < len(llm):  # a generation without a timestamp is at receive time
        first, last = min(first, received_at), max(last, received_at)
    latency = max((item.latency or 0.0 for item in llm), default=0.0)
    return Span(2 * len(items), first - round(latency * 1_000_000), last)


def _mixed_span(items: Sequence[Item], received_at: int) -> Span:
    """The span of a batch holding plain and LLM events: each kind's, joined. Anything
    not a plain event is timed as an LLM event (OTLP's resolved calls, ``genai.py``, have
    its ``timestamp`` and ``latency``)."""
    plain = [item for item in items if isinstance(item, Event)]
    llm = [item for item in items if not isinstance(item, Event)]
    kinds = (("event", plain), ("llm", llm))
    parts = [span(group, kind, received_at) for kind, group in kinds if group]
    return Span(
        sum(part.events for part in parts),
        min((part.first_at for part in parts), default=received_at),
        max((part.last_at for part in parts), default=received_at),
    )


def items_of(body: bytes, source: str, received_at: int) -> list[Item]:
    """The items a stored batch holds, read as its request was: the other clients' bodies
    become the events they describe (``segment``), the same at every reading."""
    if source in segment.BODIES:
        body_kind = segment.BODIES[source]
        return body_kind.items(body_kind.decode(body), received_at)
    if source == segment.SINGLE_EVENT:
        return [segment.decode_event(body)]
    return decode_batch(body, source)


def _extremes(moments: list[datetime]) -> tuple[int, int]:
    try:
        return to_micros(min(moments)), to_micros(max(moments))
    except TypeError:  # naive and aware datetimes together do not compare: convert each
        micros = [to_micros(moment) for moment in moments]
        return min(micros), max(micros)


def expand(
    items: Iterable[Item], *, project: str, received_at: int, new_id: Callable[[], str]
) -> Iterator[EventRow]:
    """Rows for a batch, in the order the client sent them (prompt before generation)."""
    for item in items:
        if isinstance(item, Event):
            yield _event_row(item, project, received_at, new_id())
        else:
            yield from _llm_rows(item, project, received_at, new_id(), new_id())


class StoredEvent(Struct, gc=False):
    """A plain event of a stored batch, as readers and forwarders decode it: validated
    when it was acknowledged (``expand_events`` checks the time range ``Event`` checks),
    and its properties left as the JSON text its client wrote. Decoding them into objects
    and encoding them again cost more than the rest of the event; the engines parse the
    text themselves (``forward/``), and exports decode it.

    ``gc=False``: decoded JSON holds no reference cycles, and the cycle collector then
    never walks the thousands of these a forwarded batch holds."""

    user_id: NonEmptyStr
    event: NonEmptyStr
    timestamp: datetime
    properties: Raw = Raw(_NULL)


class _Thread(Struct, gc=False, rename={"value": THREAD_KEY}):
    value: Any = None


class _ThreadOf(Struct, gc=False):
    """Only an event's ``$thread_id``: decoding a batch into these skips everything else."""

    properties: _Thread | None = None


_stored_events = msgspec.json.Decoder(
    Annotated[list[StoredEvent], Meta(max_length=MAX_BATCH_ITEMS)]
)
_threads = msgspec.json.Decoder(list[_ThreadOf])
_compact = cast(Callable[[bytes], bytes], partial(msgspec.json.format, indent=-1))


def expand_events(
    body: bytes,
    *,
    project: str,
    received_at: int,
    ids: Callable[[int], list[str]],
    compact: bool = False,
) -> EventColumns:
    """The events ``expand`` makes of a stored batch of plain events (``ids(count)``: the
    batch's ids, in order), made column by column: readers and forwarders expand every
    stored batch, and a few function calls per event cost as much as decoding and
    encoding it. The body is decoded twice, each time in one call: for its events with
    their properties' text, and for nothing but their ``$thread_id``. ``compact``: the
    properties' text written plainly (``_plainly``)."""
    text = _compact(body) if compact else body
    items = _stored_events.decode(text)
    moments = [item.timestamp for item in items]
    if moments:
        first, last = _extremes(moments)
        if first < _FIRST_US or last > _LAST_US:
            raise ValueError(TIME_RANGE_MSG)
    properties: list[JsonText] = [item.properties for item in items]
    if _RAW_NULL in properties:  # ``"properties": null``
        properties = [_EMPTY if document == _RAW_NULL else document for document in properties]
    if compact and b"\\" in text:
        properties = _plainly(list(map(bytes, properties)))
    count = len(items)
    return EventColumns(
        ids(count),
        [project] * count,
        [item.user_id for item in items],
        [item.event for item in items],
        cast(list[Moment], moments),
        _thread_ids(text, properties),
        properties,
        [received_at] * count,
        ["event"] * count,
    )


def _thread_ids(text: bytes, properties: list[JsonText]) -> list[str | None]:
    """Each event's ``$thread_id``, decoded only if the body may name one: the name
    written plainly, or an escape (``\\u0024...`` spells it too) somewhere in the body.
    That decode also refuses properties that are neither an object nor null, as the
    request's did; without it, each one's text must begin as an object's or null's."""
    if _THREAD_NAME not in text and b"\\u" not in text:
        starts = b"\0" + b"\0".join(properties)  # no NUL in JSON text but these
        if starts.count(b"\0{") + starts.count(b"\0n") != len(properties):
            raise ValueError("properties: Expected `object | null`")
        return [None] * len(properties)
    found = [None if of.properties is None else of.properties.value for of in _threads.decode(text)]
    return [v if v is None or type(v) is str else _thread_text(v) for v in found]


def _plainly(documents: list[bytes]) -> list[bytes]:
    """JSON texts already without whitespace between tokens (stripped from the whole body
    at once, a third cheaper than from each event's), and now without optional escapes:
    a text holding any is decoded and encoded again, which writes names and strings
    plainly (the Python SDK's ``json.dumps`` escapes every non-ASCII character)."""
    return [text if b"\\" not in text else _encode(_decode(text)) for text in documents]


def micros(moments: list[Moment]) -> list[int]:
    """Each moment in microseconds since the epoch (``to_micros``), without a call each:
    the common column is all aware or all naive datetimes (one client wrote it), tried as
    its first one is; or all microseconds already."""
    kinds = set(map(type, moments))
    if kinds <= {int}:
        return cast(list[int], moments)
    if kinds == {datetime}:
        first = cast(datetime, moments[0])
        epoch = EPOCH if first.tzinfo is not None else _NAIVE_EPOCH
        with contextlib.suppress(TypeError):  # naive and aware together
            return [(moment - epoch) // MICROSECOND for moment in moments]  # type: ignore[operator]
    return [at if type(at) is int else to_micros(cast(datetime, at)) for at in moments]


def _event_row(item: Event, project: str, received_at: int, event_id: str) -> EventRow:
    at = to_micros(item.timestamp)
    return make_row(
        event_id, project, item.user_id, item.event, at, item.properties or {}, received_at, "event"
    )


def _llm_rows(
    item: LLMEvent, project: str, received_at: int, prompt_id: str, generation_id: str
) -> tuple[EventRow, EventRow]:
    user = dict(item.properties or {})
    if item.thread_id is not None:
        user[THREAD_KEY] = item.thread_id
    generated_at = to_micros(item.timestamp) if item.timestamp else received_at
    prompted_at = generated_at - round((item.latency or 0) * 1_000_000)
    prompt = {"$text": item.prompt, "$generation_id": generation_id, **user}
    generation = {
        "$text": item.generation,
        "$assistant_id": item.assistant_id,
        "$prompt": item.prompt,
        "latency(s)": item.latency,
        "$prompt_id": prompt_id,
        **user,
    }
    prompt_name = item.prompt_event_name or PROMPT_EVENT
    generation_name = item.generation_event_name or GENERATION_EVENT
    return (
        make_row(
            prompt_id, project, item.user_id, prompt_name, prompted_at, prompt, received_at, "llm"
        ),
        make_row(
            generation_id,
            project,
            item.user_id,
            generation_name,
            generated_at,
            generation,
            received_at,
            "llm",
        ),
    )


def make_row(
    event_id: str,
    project: str,
    user_id: str,
    name: str,
    at: int,
    properties: dict[str, Any],
    received_at: int,
    source: str,
) -> EventRow:
    encoded = _encode(properties)
    thread_id = _thread_id(properties)
    return EventRow(event_id, project, user_id, name, at, thread_id, encoded, received_at, source)


def _thread_id(properties: dict[str, Any]) -> str | None:
    """The conversation id from ``$thread_id``."""
    return _thread_text(properties.get(THREAD_KEY))


def _thread_text(value: Any) -> str | None:
    """Strings and numbers are conversation ids, anything else not."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value)
