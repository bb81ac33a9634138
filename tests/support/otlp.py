"""OTLP exports made by hand, for tests of what the real exporters do not send: spans
without their parents, legacy attributes, invalid ids. Built with ``opentelemetry-proto``'s
messages, and turned into OTLP/JSON as the specification writes it (hex ids, enums as
integers)."""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

START_NS = 1_780_000_000_000_000_000  # 2026-05-28T20:26:40Z
HAS_IS_REMOTE = 0x100  # what the SDKs set on a span whose parent is local


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, dict):
        return AnyValue(kvlist_value={"values": key_values(value)})
    return AnyValue(array_value={"values": [any_value(item) for item in value]})


def key_values(attributes: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=any_value(value)) for key, value in attributes.items()]


def span(
    trace: str,
    span_id: str,
    parent: str = "",
    *,
    attributes: dict[str, Any] | None = None,
    start_ns: int = START_NS,
    latency_ns: int = 1_500_000_000,
    name: str = "span",
    flags: int = HAS_IS_REMOTE,
) -> dict[str, Any]:
    """A span as ``ExportTraceServiceRequest`` takes it (ids in hex)."""
    return {
        "trace_id": bytes.fromhex(trace),
        "span_id": bytes.fromhex(span_id),
        "parent_span_id": bytes.fromhex(parent),
        "name": name,
        "kind": 3,  # SPAN_KIND_CLIENT
        "start_time_unix_nano": start_ns,
        "end_time_unix_nano": start_ns + latency_ns,
        "attributes": key_values(attributes or {}),
        "flags": flags,
    }


def chat(trace: str, span_id: str, parent: str = "", **attributes: Any) -> dict[str, Any]:
    """A GenAI chat span (OpenTelemetry's conventions) with content on the span."""
    defaults: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 4,
    }
    merged = {**defaults, **{key.replace("__", "."): v for key, v in attributes.items()}}
    return span(trace, span_id, parent, attributes=merged, name="chat gpt-4o")


def traces(
    *spans: dict[str, Any], resource: dict[str, Any] | None = None
) -> ExportTraceServiceRequest:
    attributes = key_values(resource or {"service.name": "test-app"})
    return ExportTraceServiceRequest(
        resource_spans=[
            {"resource": {"attributes": attributes}, "scope_spans": [{"spans": list(spans)}]}
        ]
    )


def log_record(
    trace: str, span_id: str, event_name: str, *, body: Any = None, **attributes: Any
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "time_unix_nano": START_NS,
        "trace_id": bytes.fromhex(trace),
        "span_id": bytes.fromhex(span_id),
        "event_name": event_name,
        "attributes": key_values({k.replace("__", "."): v for k, v in attributes.items()}),
    }
    if body is not None:
        record["body"] = any_value(body)
    return record


def logs(*records: dict[str, Any]) -> ExportLogsServiceRequest:
    return ExportLogsServiceRequest(
        resource_logs=[{"scope_logs": [{"log_records": list(records)}]}]
    )


def to_json(message: Message) -> bytes:
    """OTLP/JSON: protobuf's JSON mapping with hex ids and integer enums."""
    document = MessageToDict(message, use_integers_for_enums=True)
    _hex_ids(document)
    return json.dumps(document, ensure_ascii=False).encode()


def _hex_ids(value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            _hex_ids(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in ("traceId", "spanId", "parentSpanId"):
                value[key] = base64.b64decode(item).hex()
            else:
                _hex_ids(item)
