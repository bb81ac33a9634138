"""OTLP/HTTP requests and answers, in protobuf or in JSON, as the OTLP specification defines
them: decoded with ``opentelemetry-proto``'s messages (JSON too, once its hex ids are made
the base64 that protobuf's JSON mapping expects), then reduced to ``records``.

Spans and log records that cannot be used are refused one by one and reported in the
answer's ``partial_success``, as the specification asks: ids of the wrong length, a call
that ends before it starts or lasts longer than an LLM event may.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from ..errors import InvalidOtlp, UnsupportedContentType
from ..schema import MAX_LATENCY_S
from . import conventions
from .records import Call, Export, LogRecord, SpanRecord

TRACES, LOGS = "traces", "logs"
PROTOBUF, JSON = b"application/x-protobuf", b"application/json"
STATUS_ERROR = 2  # Status.STATUS_CODE_ERROR
PARENT_IS_REMOTE = 0x200  # SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_REQUESTS: dict[str, type[Message]] = {
    TRACES: ExportTraceServiceRequest,
    LOGS: ExportLogsServiceRequest,
}
_ID_KEYS = ("traceId", "spanId", "parentSpanId")
_CONTAINERS = {
    TRACES: ("resourceSpans", "scopeSpans", "spans"),
    LOGS: ("resourceLogs", "scopeLogs", "logRecords"),
}
_TOO_LONG = f"{MAX_LATENCY_S} s"
_decode_json = msgspec.json.decode
_encode_json = msgspec.json.Encoder().encode


@dataclass
class Decoded:
    """An export reduced to what the node keeps, and what it counted on the way."""

    export: Export = field(default_factory=Export)
    calls: int = 0  # GenAI spans, or GenAI log records
    other: int = 0  # spans or log records that are no part of a GenAI call: not kept
    refused: Counter[str] = field(default_factory=Counter)  # by reason

    @property
    def rejected(self) -> int:
        return sum(self.refused.values())

    def refuse(self, reason: str) -> None:
        self.refused[reason] += 1


def media_type(content_type: bytes | None) -> bytes:
    """``PROTOBUF`` or ``JSON``, from the request's ``Content-Type``; else a 415."""
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    if media not in (PROTOBUF, JSON):
        raise UnsupportedContentType()
    return media


def decode(signal: str, media: bytes, body: bytes) -> Decoded:
    """The export of ``signal`` (``TRACES`` or ``LOGS``) in ``body``; a 400 if it is not one."""
    request = _parse(signal, media, body)
    if isinstance(request, ExportTraceServiceRequest):
        return _spans(request)
    assert isinstance(request, ExportLogsServiceRequest)
    return _logs(request)


def reply(signal: str, media: bytes, decoded: Decoded) -> bytes:
    """The ``Export*ServiceResponse``, with a ``partial_success`` if anything was refused."""
    rejected = decoded.rejected
    message = "; ".join(f"{count} {reason}" for reason, count in sorted(decoded.refused.items()))
    if media == JSON:
        if not rejected:
            return b"{}"
        counted = "rejectedSpans" if signal == TRACES else "rejectedLogRecords"
        return _encode_json({"partialSuccess": {counted: rejected, "errorMessage": message}})
    if signal == TRACES:
        traces = ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
        answer: Message = ExportTraceServiceResponse(partial_success=traces if rejected else None)
    else:
        logs = ExportLogsPartialSuccess(rejected_log_records=rejected, error_message=message)
        answer = ExportLogsServiceResponse(partial_success=logs if rejected else None)
    return bytes(answer.SerializeToString())


def _parse(signal: str, media: bytes, body: bytes) -> Message:
    message = _REQUESTS[signal]()
    try:
        if media == PROTOBUF:
            message.ParseFromString(body)
        else:
            document = _decode_json(body)
            if not isinstance(document, dict):
                raise ValueError("an OTLP/JSON body is an object")
            _ids_to_base64(document, signal)
            json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        kind = "protobuf" if media == PROTOBUF else "JSON"
        raise InvalidOtlp(f"The body is not an OTLP {kind} export of {signal}: {exc}") from None
    return message


def _ids_to_base64(document: dict[str, Any], signal: str) -> None:
    """OTLP/JSON writes ids in hex; protobuf's JSON mapping reads bytes as base64."""
    for item in _items(document, _CONTAINERS[signal]):
        for holder in (item, *_objects(item.get("links"))):
            for key in _ID_KEYS:
                value = holder.get(key)
                if isinstance(value, str):
                    holder[key] = base64.b64encode(bytes.fromhex(value)).decode()


def _items(document: dict[str, Any], path: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    level: Iterable[dict[str, Any]] = [document]
    for key in path:
        level = [child for parent in level for child in _objects(parent.get(key))]
    return iter(level)


def _objects(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _spans(request: ExportTraceServiceRequest) -> Decoded:
    decoded = Decoded()
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                record = _span(span, resource, decoded)
                if record is not None:
                    decoded.export.spans.append(record)
    return decoded


def _span(span: Any, resource: dict[str, Any], decoded: Decoded) -> SpanRecord | None:
    ids = _ids(span.trace_id, span.span_id)
    parent = span.parent_span_id
    if ids is None or len(parent) not in (0, 8):
        decoded.refuse("spans with an invalid trace, span or parent id")
        return None
    attributes = attributes_of(span.attributes)
    call = None
    if conventions.is_call(attributes):
        call = _call(span, attributes, resource)
        if call is None:
            decoded.refuse(f"GenAI spans ending before they start or lasting over {_TOO_LONG}")
            return None
        decoded.calls += 1
    else:
        decoded.other += 1
    return SpanRecord(
        trace=ids[0],
        span=ids[1],
        parent=parent.hex() or None,
        root=not parent or bool(span.flags & PARENT_IS_REMOTE),
        user=conventions.named(attributes, conventions.USER_KEYS),
        thread=conventions.named(attributes, conventions.THREAD_KEYS),
        call=call,
    )


def _call(span: Any, attributes: dict[str, Any], resource: dict[str, Any]) -> Call | None:
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if not 0 <= end - start <= MAX_LATENCY_S * 1_000_000_000:
        return None
    failed = span.status.code == STATUS_ERROR
    service = resource.get("service.name")
    return Call(
        start_ns=start,
        end_ns=end,
        name=span.name,
        attributes=attributes,
        resource_user=conventions.named(resource, conventions.USER_KEYS),
        resource_thread=conventions.named(resource, conventions.THREAD_KEYS),
        service=service if isinstance(service, str) else None,
        error=(span.status.message or "error") if failed else None,
    )


def _logs(request: ExportLogsServiceRequest) -> Decoded:
    decoded = Decoded()
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                kept = _log(record, decoded)
                if kept is not None:
                    decoded.export.logs.append(kept)
    return decoded


def _log(record: Any, decoded: Decoded) -> LogRecord | None:
    attributes = attributes_of(record.attributes)
    name = record.event_name or attributes.get("event.name")
    if not isinstance(name, str) or not conventions.is_call_log(name):
        decoded.other += 1
        return None
    ids = _ids(record.trace_id, record.span_id)
    if ids is None:
        decoded.refuse("GenAI log records without the trace and span id of their call")
        return None
    decoded.calls += 1
    return LogRecord(
        trace=ids[0],
        span=ids[1],
        name=name,
        time_ns=record.time_unix_nano or record.observed_time_unix_nano,
        attributes=attributes,
        body=value_of(record.body) if record.HasField("body") else None,
    )


def _ids(trace: bytes, span: bytes) -> tuple[str, str] | None:
    """Hex trace and span ids, if both are valid (the right length, not all zeros)."""
    if len(trace) != 16 or len(span) != 8 or not any(trace) or not any(span):
        return None
    return trace.hex(), span.hex()


def attributes_of(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """OTLP attributes as a JSON-ready dict (a repeated key: the last one)."""
    return {pair.key: value_of(pair.value) for pair in pairs}


def value_of(value: AnyValue) -> Any:
    """An ``AnyValue`` as JSON: arrays as lists, key-value lists as objects, bytes as base64."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind)
