"""What the node journals of an OTLP export: the spans and log records the resolver needs,
in a compact form of our own, decoded with one msgspec call when it is read back.

Every span is kept as a link of its trace (trace, span, parent, and the user and thread it
names itself): a GenAI span's user may sit on any ancestor. Only GenAI calls keep their
times and attributes, and only GenAI log records are kept at all.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct


class Call(Struct, gc=False):
    """What a GenAI span says beyond its place in the trace."""

    start_ns: int
    end_ns: int
    name: str
    attributes: dict[str, Any]
    resource_user: str | None = None  # named by the resource (the process), the last resort
    resource_thread: str | None = None
    service: str | None = None  # the resource's service.name
    error: str | None = None  # the span's status message, when its status is ERROR


class SpanRecord(Struct, gc=False):
    """One span: its place in the trace, who it names, and the call if it is one."""

    trace: str  # 32 hex digits
    span: str  # 16 hex digits
    parent: str | None
    root: bool  # no parent here: none at all, or a remote one (another service's span)
    user: str | None = None
    thread: str | None = None
    call: Call | None = None


class LogRecord(Struct, gc=False):
    """A GenAI log record (an event), naming the span whose content it carries."""

    trace: str
    span: str
    name: str
    time_ns: int
    attributes: dict[str, Any]
    body: Any = None


class Export(Struct, gc=False):
    """One journaled export (of spans or of log records)."""

    spans: list[SpanRecord] = []
    logs: list[LogRecord] = []


encode = msgspec.json.Encoder().encode
decode_export = msgspec.json.Decoder(Export).decode
decode_call = msgspec.json.Decoder(Call).decode
decode_log = msgspec.json.Decoder(LogRecord).decode
