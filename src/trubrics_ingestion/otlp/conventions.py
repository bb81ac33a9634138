"""The GenAI semantic conventions, as the instrumentations in use write them: which span is
a model call, who and which conversation it names, where its content is, and how that
becomes a ``GenAICall`` (the README's mapping table says the same, for users).

Three families are read: OpenTelemetry's own (``gen_ai.*``, with content on the span as
``gen_ai.input.messages``/``gen_ai.output.messages``, or in a log record), its older
indexed form (``gen_ai.prompt.N.content``, OpenLLMetry) and OpenInference
(``llm.input_messages.N.message.content``). Messages are kept in the current
convention's shape, ``{"role", "parts": [{"type": "text", "content"}]}``, whatever form
they came in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import msgspec

from ..clock import EPOCH
from ..store.genai import GenAICall
from .records import Call, LogRecord

# gen_ai.operation.name of a model call; agents, tools and embeddings are not one.
INFERENCE_OPERATIONS = frozenset(("chat", "text_completion", "generate_content", "completion"))
# Who the user is and which conversation, in the order they are looked for on a span.
USER_KEYS = (
    "user.id",
    "enduser.id",
    "langfuse.user.id",
    "traceloop.association.properties.user_id",
)
THREAD_KEYS = (
    "session.id",
    "gen_ai.conversation.id",
    "langfuse.session.id",
    "traceloop.association.properties.session_id",
)
DETAILS_EVENT = "gen_ai.client.inference.operation.details"
CHOICE_EVENT = "gen_ai.choice"
MESSAGE_EVENTS = {  # the older per-message events, and the role each stands for
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
# Properties of both events, each from the first of its attributes that is set.
PROPERTIES = {
    "$provider": ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system"),
    "$operation": ("gen_ai.operation.name",),
    "$request_model": ("gen_ai.request.model", "llm.model_name"),
    "$response_id": ("gen_ai.response.id",),
    "$input_tokens": (
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens",
        "llm.token_count.prompt",
    ),
    "$output_tokens": (
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.token_count.completion",
    ),
}
ASSISTANT_KEYS = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
FINISH_KEYS = ("gen_ai.response.finish_reasons", "llm.finish_reason")
_LEGACY = {"input": "gen_ai.prompt.", "output": "gen_ai.completion."}
_OPENINFERENCE = {"input": "llm.input_messages.", "output": "llm.output_messages."}
_decode_json = msgspec.json.decode


def is_call(attributes: dict[str, Any]) -> bool:
    """Whether a span with these attributes is a call to a model."""
    operation = attributes.get("gen_ai.operation.name")
    if operation is not None:
        return operation in INFERENCE_OPERATIONS
    if attributes.get("openinference.span.kind") == "LLM":
        return True
    if "gen_ai.system" not in attributes:
        return False
    if attributes.get("llm.request.type") in ("chat", "completion"):
        return True
    return any(key.startswith(("gen_ai.prompt.", "gen_ai.completion.")) for key in attributes)


def is_call_log(name: str) -> bool:
    """Whether a log record (an event) of this name carries a model call's content."""
    return name in (DETAILS_EVENT, CHOICE_EVENT) or name in MESSAGE_EVENTS


def named(attributes: dict[str, Any], keys: Sequence[str]) -> str | None:
    """The first of ``keys`` that names something (a non-empty string or a number)."""
    for key in keys:
        value = attributes.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    return None


def to_call(
    record_ids: tuple[str, str],
    call: Call,
    logs: Sequence[LogRecord],
    user: str,
    thread: str | None,
) -> GenAICall:
    """The resolved call of a GenAI span (``record_ids``: its trace and span id), with its
    log records, for ``user`` in ``thread``."""
    attributes = call.attributes
    inputs = messages(attributes, "input")
    outputs = messages(attributes, "output")
    if inputs is None or outputs is None:
        logged_inputs, logged_outputs = logged_messages(logs)
        inputs = inputs if inputs is not None else logged_inputs
        outputs = outputs if outputs is not None else logged_outputs
    start_us, end_us = call.start_ns // 1000, call.end_ns // 1000
    return GenAICall(
        user_id=user,
        timestamp=EPOCH + timedelta(microseconds=end_us),
        latency=(end_us - start_us) / 1_000_000,
        prompt=prompt_text(inputs),
        generation=generation_text(outputs),
        assistant_id=named(attributes, ASSISTANT_KEYS),
        properties=properties(record_ids, call, thread, outputs),
        input_messages=inputs,
        output_messages=outputs,
    )


def properties(
    record_ids: tuple[str, str], call: Call, thread: str | None, outputs: list[Any] | None
) -> dict[str, Any]:
    """What both events of a call carry besides their texts (names in ``PROPERTIES``)."""
    trace, span = record_ids
    found: dict[str, Any] = {"$otel_trace_id": trace, "$otel_span_id": span}
    if thread is not None:
        found["$thread_id"] = thread
    for name, keys in PROPERTIES.items():
        value = next((call.attributes[k] for k in keys if k in call.attributes), None)
        if value is not None:
            found[name] = value
    reasons = finish_reasons(call.attributes, outputs)
    if reasons:
        found["$finish_reasons"] = reasons
    if call.service is not None:
        found["$otel_service"] = call.service
    if call.error is not None:
        found["$error"] = call.error
    return found


def finish_reasons(attributes: dict[str, Any], outputs: list[Any] | None) -> list[Any]:
    for key in FINISH_KEYS:
        value = attributes.get(key)
        if value is not None:
            return value if isinstance(value, list) else [value]
    messages = [m for m in outputs or () if isinstance(m, dict)]
    return [message["finish_reason"] for message in messages if "finish_reason" in message]


def messages(attributes: dict[str, Any], kind: str) -> list[Any] | None:
    """The input or output messages (``kind``) a span's or log record's attributes hold,
    in any of the three families; None when content was not captured."""
    value = attributes.get(f"gen_ai.{kind}.messages")
    if isinstance(value, str):
        with contextlib.suppress(msgspec.DecodeError):
            value = _decode_json(value)
    if isinstance(value, list):
        return value
    legacy = indexed(attributes, _LEGACY[kind])
    if legacy:
        return [text_message(m.get("role"), m.get("content")) for m in legacy]
    openinference = indexed(attributes, _OPENINFERENCE[kind])
    if openinference:
        return [_openinference_message(m) for m in openinference]
    return None


def indexed(attributes: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Attributes ``PREFIX.N.REST`` as one dict of ``REST`` per ``N``, in order of ``N``."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in attributes.items():
        if key.startswith(prefix):
            index, _, rest = key[len(prefix) :].partition(".")
            if index.isdigit() and rest:
                found.setdefault(int(index), {})[rest] = value
    return [found[index] for index in sorted(found)]


def _openinference_message(fields: dict[str, Any]) -> dict[str, Any]:
    content = fields.get("message.content")
    if content is None:  # multi-part: message.contents.N.message_content.text
        parts = indexed(fields, "message.contents.")
        texts = [p.get("message_content.text") for p in parts]
        content = "\n".join(text for text in texts if isinstance(text, str)) or None
    return text_message(fields.get("message.role"), content)


def text_message(role: Any, content: Any) -> dict[str, Any]:
    """A message in the current convention's shape, from a role and a text."""
    parts = [{"type": "text", "content": content}] if content is not None else []
    return {"role": role, "parts": parts}


def logged_messages(logs: Iterable[LogRecord]) -> tuple[list[Any] | None, list[Any] | None]:
    """The input and output messages that a span's log records carry: one details event,
    or the older per-message events (in the order they were recorded)."""
    inputs: list[Any] = []
    choices: dict[int, Any] = {}
    for log in sorted(logs, key=lambda log: log.time_ns):
        if log.name == DETAILS_EVENT:
            return messages(log.attributes, "input"), messages(log.attributes, "output")
        body = log.body if isinstance(log.body, dict) else {}
        if log.name in MESSAGE_EVENTS:
            role = body.get("role", MESSAGE_EVENTS[log.name])
            inputs.append(text_message(role, body.get("content")))
        elif log.name == CHOICE_EVENT:
            choices[_index(body.get("index"))] = _choice(body)
    outputs = [choices[index] for index in sorted(choices)]
    return inputs or None, outputs or None


def _index(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _choice(body: dict[str, Any]) -> dict[str, Any]:
    message = body.get("message")
    if not isinstance(message, dict):
        message = {}
    choice = text_message(message.get("role", "assistant"), message.get("content"))
    if "finish_reason" in body:
        choice["finish_reason"] = body["finish_reason"]
    return choice


def text_of(message: Any) -> str | None:
    """The text parts of a message, one a line (None: it has none)."""
    if not isinstance(message, dict):
        return None
    parts = message.get("parts")
    if not isinstance(parts, list):
        content = message.get("content")
        return content if isinstance(content, str) else None
    texts = [
        part["content"]
        for part in parts
        if isinstance(part, dict)
        and part.get("type", "text") == "text"
        and isinstance(part.get("content"), str)
    ]
    return "\n".join(texts) if texts else None


def prompt_text(inputs: list[Any] | None) -> str | None:
    """The last user message's text (else the last message's that has one)."""
    candidates = list(reversed(inputs or []))
    users = [m for m in candidates if isinstance(m, dict) and m.get("role") == "user"]
    for message in (*users, *candidates):
        text = text_of(message)
        if text is not None:
            return text
    return None


def generation_text(outputs: list[Any] | None) -> str | None:
    """The first output message's text (the first choice)."""
    return text_of(outputs[0]) if outputs else None
