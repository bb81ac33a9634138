"""The OTLP resolver on a real store: who a GenAI span's user is, when it is resolved, where
its content comes from, and that each call becomes its two events once."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from support import otlp
from trubrics_ingestion.otlp import wire
from trubrics_ingestion.otlp.records import encode
from trubrics_ingestion.otlp.resolver import Resolver
from trubrics_ingestion.store import read, sqlite
from trubrics_ingestion.store.genai import EXPORT
from trubrics_ingestion.store.journal import Batch, insert

TRACE = "0af7651916cd43dd8448eb211c80319c"
ROOT, APP, CALL, CALL2 = (
    "1000000000000001",
    "2000000000000002",
    "3000000000000003",
    "4000000000000004",
)
T0 = 1_800_000_000_000_000  # received at, microseconds
WINDOW_S = 30.0


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite.connect(tmp_path / "trubrics.db")
    yield connection
    connection.close()


@pytest.fixture
def resolver(tmp_path: Path, conn: sqlite3.Connection) -> Iterator[Resolver]:
    resolver = Resolver(tmp_path / "trubrics.db", window_s=WINDOW_S)
    yield resolver
    resolver.close()


def journal(conn: sqlite3.Connection, request: Message, at: int = T0, project: str = "p") -> None:
    """Store an export as the receiver does."""
    signal = wire.TRACES if isinstance(request, ExportTraceServiceRequest) else wire.LOGS
    decoded = wire.decode(signal, wire.PROTOBUF, request.SerializeToString())
    with sqlite.transaction(conn):
        insert(conn, [Batch.of(project, EXPORT, at, encode(decoded.export), ())])


def events(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return list(read.export(conn))


def test_the_user_and_thread_are_the_nearest_ancestors_once_the_root_arrives(
    conn: sqlite3.Connection, resolver: Resolver
) -> None:
    journal(conn, otlp.traces(otlp.chat(TRACE, CALL, APP)))
    journal(conn, otlp.traces(otlp.span(TRACE, APP, ROOT, attributes={"session.id": "s-app"})))
    assert resolver.step(T0) == 0 and events(conn) == []  # the root has not arrived
    root = otlp.span(TRACE, ROOT, attributes={"user.id": "u-root", "session.id": "s-root"})
    journal(conn, otlp.traces(root))
    assert resolver.step(T0) == 1
    prompt, generation = events(conn)
    assert (prompt["event"], generation["event"]) == ("Prompt", "Generation")
    assert {prompt["user_id"], generation["user_id"]} == {"u-root"}
    assert {prompt["thread_id"], generation["thread_id"]} == {"s-app"}  # the nearest
    assert resolver.counts.resolved == {"root": 1, "window": 0}
    assert resolver.step(T0) == 0 and len(events(conn)) == 2


def test_a_span_that_names_its_user_wins_over_its_ancestors(
    conn: sqlite3.Connection, resolver: Resolver
) -> None:
    call = otlp.chat(TRACE, CALL, ROOT, user__id="u-call", gen_ai__conversation__id="c-1")
    root = otlp.span(TRACE, ROOT, attributes={"user.id": "u-root"})
    journal(conn, otlp.traces(call, root))
    resolver.step(T0)
    assert {(e["user_id"], e["thread_id"]) for e in events(conn)} == {("u-call", "c-1")}


def test_without_a_user_anywhere_the_resource_then_the_trace_names_it(
    conn: sqlite3.Connection, resolver: Resolver
) -> None:
    journal(conn, otlp.traces(otlp.chat(TRACE, CALL), resource={"enduser.id": "u-resource"}))
    other = "1af7651916cd43dd8448eb211c80319c"
    journal(conn, otlp.traces(otlp.chat(other, CALL)))
    resolver.step(T0)
    users = [(e["user_id"], e["thread_id"]) for e in events(conn)]
    assert users == [("u-resource", None)] * 2 + [(f"trace:{other}", None)] * 2


def test_a_call_waits_for_its_root_no_longer_than_the_window(
    conn: sqlite3.Connection, resolver: Resolver
) -> None:
    journal(conn, otlp.traces(otlp.chat(TRACE, CALL, APP, user__id="u-1")))
    window_us = int(WINDOW_S * 1_000_000)
    assert resolver.step(T0 + window_us - 1) == 0
    assert resolver.counts.waiting == 1
    assert resolver.step(T0 + window_us) == 1
    assert resolver.counts.resolved == {"root": 0, "window": 1} and resolver.counts.waiting == 0
    assert [e["user_id"] for e in events(conn)] == ["u-1", "u-1"]
    # the root comes late: nothing again
    journal(conn, otlp.traces(otlp.span(TRACE, APP)), at=T0 + window_us + 1)
    assert resolver.step(T0 + window_us + 2) == 0 and len(events(conn)) == 2


def test_a_call_after_its_root_is_resolved_at_once_and_a_repeated_one_never_twice(
    conn: sqlite3.Connection, resolver: Resolver
) -> None:
    journal(conn, otlp.traces(otlp.span(TRACE, ROOT, attributes={"user.id": "u-1"})))
    resolver.step(T0)
    journal(conn, otlp.traces(otlp.chat(TRACE, CALL, ROOT)))
    assert resolver.step(T0) == 1
    journal(conn, otlp.traces(otlp.chat(TRACE, CALL, ROOT)))  # a retry the dedup missed
    assert resolver.step(T0) == 0
    assert [e["user_id"] for e in events(conn)] == ["u-1", "u-1"]


def test_timestamps_latency_and_properties_are_those_of_an_llm_event(
    conn: sqlite3.Connection, resolver: Resolver
) -> None:
    call = otlp.chat(
        TRACE,
        CALL,
        gen_ai__response__model="gpt-4o-2024-08-06",
        gen_ai__response__finish_reasons=["stop"],
        gen_ai__input__messages='[{"role": "system", "parts": [{"type": "text", "content": "S"}]},'
        ' {"role": "user", "parts": [{"type": "text", "content": "Q1"}, {"type": "text",'
        ' "content": "Q2"}]}]',
        gen_ai__output__messages='[{"role": "assistant", "parts": [{"type": "text",'
        ' "content": "A"}], "finish_reason": "stop"}]',
    )
    journal(conn, otlp.traces(call))
    resolver.step(T0)
    prompt, generation = events(conn)
    assert prompt["timestamp"] == "2026-05-28T20:26:40.000000Z"
    assert generation["timestamp"] == "2026-05-28T20:26:41.500000Z"
    assert prompt["source"] == generation["source"] == "llm"
    common = {
        "$otel_trace_id": TRACE,
        "$otel_span_id": CALL,
        "$provider": "openai",
        "$operation": "chat",
        "$request_model": "gpt-4o",
        "$input_tokens": 10,
        "$output_tokens": 4,
        "$finish_reasons": ["stop"],
        "$otel_service": "test-app",
    }
    assert prompt["properties"] == {
        "$text": "Q1\nQ2",
        "$generation_id": generation["id"],
        **common,
        "$input_messages": [
            {"role": "system", "parts": [{"type": "text", "content": "S"}]},
            {
                "role": "user",
                "parts": [{"type": "text", "content": "Q1"}, {"type": "text", "content": "Q2"}],
            },
        ],
    }
    assert generation["properties"] == {
        "$text": "A",
        "$assistant_id": "gpt-4o-2024-08-06",
        "$prompt": "Q1\nQ2",
        "latency(s)": 1.5,
        "$prompt_id": prompt["id"],
        **common,
        "$output_messages": [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": "A"}],
                "finish_reason": "stop",
            }
        ],
    }


def test_without_content_there_is_no_text(conn: sqlite3.Connection, resolver: Resolver) -> None:
    journal(conn, otlp.traces(otlp.chat(TRACE, CALL)))
    resolver.step(T0)
    prompt, generation = events(conn)
    assert "$text" not in prompt["properties"] and "$input_messages" not in prompt["properties"]
    assert "$text" not in generation["properties"] and "$prompt" not in generation["properties"]
    assert generation["properties"]["$assistant_id"] == "gpt-4o"


def test_legacy_indexed_attributes_and_openinference(
    conn: sqlite3.Connection, resolver: Resolver
) -> None:
    legacy = otlp.span(
        TRACE,
        CALL,
        attributes={
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-3.5",
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "old question",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "old answer",
            "gen_ai.usage.prompt_tokens": 3,
        },
    )
    openinference = otlp.span(
        TRACE,
        CALL2,
        attributes={
            "openinference.span.kind": "LLM",
            "llm.model_name": "claude",
            "llm.input_messages.0.message.role": "user",
            "llm.input_messages.0.message.contents.0.message_content.type": "text",
            "llm.input_messages.0.message.contents.0.message_content.text": "oi question",
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.content": "oi answer",
            "llm.token_count.completion": 5,
            "user.id": "u-oi",
        },
    )
    not_calls = [
        otlp.span(TRACE, ROOT, attributes={"gen_ai.operation.name": "invoke_agent"}),
        otlp.span(TRACE, APP, ROOT, attributes={"openinference.span.kind": "CHAIN"}),
    ]
    journal(conn, otlp.traces(legacy, openinference, *not_calls))
    assert resolver.step(T0) == 2
    texts = [
        (e["properties"].get("$text"), e["properties"].get("$assistant_id")) for e in events(conn)
    ]
    assert texts == [
        ("old question", None),
        ("old answer", "gpt-3.5"),
        ("oi question", None),
        ("oi answer", "claude"),
    ]
    assert events(conn)[0]["properties"]["$input_tokens"] == 3
    assert events(conn)[3]["properties"]["$output_tokens"] == 5


def test_content_from_log_records_before_or_after_the_span(
    conn: sqlite3.Connection, resolver: Resolver
) -> None:
    details = otlp.log_record(
        TRACE,
        CALL,
        "gen_ai.client.inference.operation.details",
        gen_ai__input__messages=[{"role": "user", "parts": [{"type": "text", "content": "Q"}]}],
        gen_ai__output__messages=[
            {"role": "assistant", "parts": [{"type": "text", "content": "A"}]}
        ],
    )
    journal(conn, otlp.logs(details))  # before its span
    journal(conn, otlp.traces(otlp.chat(TRACE, CALL, ROOT)))
    resolver.step(T0)  # the root is missing: the log record waits with its call
    per_message = [
        otlp.log_record(TRACE, CALL2, "gen_ai.system.message", body={"content": "Be kind"}),
        otlp.log_record(TRACE, CALL2, "gen_ai.user.message", body={"content": "Q2"}),
        otlp.log_record(
            TRACE,
            CALL2,
            "gen_ai.choice",
            body={"index": 0, "finish_reason": "stop", "message": {"content": "A2"}},
        ),
    ]
    journal(conn, otlp.traces(otlp.chat(TRACE, CALL2, ROOT)))
    journal(conn, otlp.logs(*per_message))  # after its span
    journal(conn, otlp.traces(otlp.span(TRACE, ROOT)))
    assert resolver.step(T0) == 2
    texts = [e["properties"].get("$text") for e in events(conn)]
    assert texts == ["Q", "A", "Q2", "A2"]
    assert events(conn)[3]["properties"]["$finish_reasons"] == ["stop"]
    assert conn.execute("SELECT count(*) FROM otlp_logs").fetchone() == (0,)


def test_log_records_without_their_call_are_dropped_after_twice_the_window(
    conn: sqlite3.Connection, resolver: Resolver
) -> None:
    journal(conn, otlp.logs(otlp.log_record(TRACE, CALL, "gen_ai.user.message", body={})))
    resolver.step(T0)
    assert conn.execute("SELECT count(*) FROM otlp_logs").fetchone() == (1,)
    resolver._pruned_at = 0.0  # prune now
    resolver.step(T0 + int(2 * WINDOW_S * 1_000_000) + 1)
    assert conn.execute("SELECT count(*) FROM otlp_logs").fetchone() == (0,)
    assert resolver.counts.unmatched_logs == 1


def test_exports_count_no_events_and_projects_never_mix(
    conn: sqlite3.Connection, resolver: Resolver
) -> None:
    root = otlp.span(TRACE, ROOT, attributes={"user.id": "u-a"})
    journal(conn, otlp.traces(otlp.chat(TRACE, CALL, ROOT)), project="a")
    journal(conn, otlp.traces(root), project="b")  # the same ids, another project's
    assert read.count(conn) == 0
    resolver.step(T0)
    assert read.count(conn) == 0  # project a's trace still has no root
    journal(conn, otlp.traces(root), project="a")
    resolver.step(T0)
    assert read.count(conn) == 2 == read.count(conn, "a")
