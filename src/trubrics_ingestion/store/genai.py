"""The two kinds of stored batch that OpenTelemetry brings (``otlp/``), and how readers
expand them.

An OTLP export is journaled as it is acknowledged, as source ``otlp``: it holds spans and
log records, not events yet (a GenAI span's user may be on a parent span that has not
arrived), so it expands to nothing and counts 0 events. The node's resolver reads those
batches in order and writes the GenAI calls it resolved as batches of source
``otlp_llm``: one ``GenAICall`` per span, each expanded here into a Prompt and a
Generation event exactly like an LLM event of ``/publish_llm_events`` (the same names,
the same links, source ``llm``), except that a call whose content was not captured has
no ``$text`` (and no ``$prompt``) rather than an empty one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
from msgspec import Struct

from ..clock import to_micros
from .expand import GENERATION_EVENT, PROMPT_EVENT, EventRow, make_row

EXPORT = "otlp"  # an acknowledged OTLP export: spans and log records, 0 events
CALLS = "otlp_llm"  # GenAI calls resolved from exports: 2 events each
ROW_SOURCE = "llm"  # what the events' ``source`` says: the queries of LLM events cover them


class GenAICall(Struct, gc=False):
    """One GenAI span, resolved: who, when, what was said, and its other properties.
    ``timestamp`` and ``latency`` mean what they mean for an ``LLMEvent`` (the narrow
    row's time span is computed alike)."""

    user_id: str
    timestamp: datetime  # the span's end: the generation
    latency: float  # seconds from the span's start
    prompt: str | None = None
    generation: str | None = None
    assistant_id: str | None = None
    properties: dict[str, Any] = {}  # on both events
    input_messages: list[Any] | None = None  # on the Prompt
    output_messages: list[Any] | None = None  # on the Generation


_calls = msgspec.json.Decoder(list[GenAICall])


def call_rows(
    body: bytes, *, project: str, received_at: int, new_id: Callable[[], str]
) -> list[EventRow]:
    """The events of a stored ``otlp_llm`` batch, a Prompt then a Generation per call."""
    rows: list[EventRow] = []
    for call in _calls.decode(body):
        rows += _call_rows(call, project, received_at, new_id(), new_id())
    return rows


def _call_rows(
    call: GenAICall, project: str, received_at: int, prompt_id: str, generation_id: str
) -> tuple[EventRow, EventRow]:
    generated_at = to_micros(call.timestamp)
    prompted_at = generated_at - round(call.latency * 1_000_000)
    prompt: dict[str, Any] = _with_text(call.prompt)
    prompt["$generation_id"] = generation_id
    generation = _with_text(call.generation)
    generation["$assistant_id"] = call.assistant_id
    if call.prompt is not None:
        generation["$prompt"] = call.prompt
    generation["latency(s)"] = call.latency
    generation["$prompt_id"] = prompt_id
    prompt.update(call.properties)
    generation.update(call.properties)
    if call.input_messages is not None:
        prompt["$input_messages"] = call.input_messages
    if call.output_messages is not None:
        generation["$output_messages"] = call.output_messages
    user, at = call.user_id, received_at
    return (
        make_row(prompt_id, project, user, PROMPT_EVENT, prompted_at, prompt, at, ROW_SOURCE),
        make_row(
            generation_id, project, user, GENERATION_EVENT, generated_at, generation, at, ROW_SOURCE
        ),
    )


def _with_text(text: str | None) -> dict[str, Any]:
    return {} if text is None else {"$text": text}


RESOLVED_THROUGH = "otlp_resolved_through"  # in ``meta``: the resolver's cursor


def resolved_through(conn: sqlite3.Connection) -> int:
    """The last stored batch the resolver has read (every export up to it is resolved or
    held in its own tables): exports after it must not be pruned."""
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (RESOLVED_THROUGH,)).fetchone()
    return 0 if row is None else int(row[0])
