"""Real LLM apps traced with OpenTelemetry feed the same Prompt and Generation events as the
Trubrics SDKs: the official OpenAI client (against a stub model on loopback) instrumented
by opentelemetry-instrumentation-openai-v2 in each content mode and by OpenInference,
exporting protobuf with gzip through the real OTLP exporter; and a Node app exporting
OTLP/JSON with @opentelemetry/exporter-trace-otlp-http."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.node import Node
from support.waiting import wait_until

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "otel"))
import openai_app as app  # noqa: E402  (the app's constants: what the events must hold)


def run(*command: str) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def events_of(node: Node) -> list[dict[str, Any]]:
    wait_until(lambda: len(node.export()) >= 2, timeout_s=15, what="the call's two events")
    return node.export()


def check_call(events: list[dict[str, Any]], trace_id: str, *, content: bool) -> None:
    """One call: a Prompt and a Generation for the app's user and session, linked, timed like
    LLM events, with the model's figures; with its texts exactly when content was captured."""
    prompt, generation = events
    assert (prompt["event"], generation["event"]) == ("Prompt", "Generation")
    for event in events:
        assert (event["user_id"], event["thread_id"], event["source"]) == (
            app.USER,
            app.SESSION,
            "llm",
        )
        assert event["properties"]["$otel_trace_id"] == trace_id
        assert event["properties"]["$provider"] == "openai"
        assert event["properties"]["$otel_service"] == "weather-bot"
    p, g = prompt["properties"], generation["properties"]
    assert (p["$generation_id"], g["$prompt_id"]) == (generation["id"], prompt["id"])
    assert g["$assistant_id"] == app.RESPONSE_MODEL
    assert (g["$input_tokens"], g["$output_tokens"]) == (21, 9)
    assert 0 < g["latency(s)"] < 10
    assert _micros(generation["timestamp"]) - _micros(prompt["timestamp"]) == round(
        g["latency(s)"] * 1_000_000
    )
    if content:
        assert (p["$text"], g["$text"], g["$prompt"]) == (app.PROMPT, app.ANSWER, app.PROMPT)
        assert [m["role"] for m in p["$input_messages"]] == ["system", "user"]
        assert g["$output_messages"][0]["role"] == "assistant"
    else:
        assert not {"$text", "$input_messages"} & set(p)
        assert not {"$text", "$prompt", "$output_messages"} & set(g)


def _micros(text: str) -> int:
    from trubrics_ingestion.clock import parse_time

    return parse_time(text.replace("Z", "+00:00"))


@pytest.mark.parametrize(
    ("mode", "content"), [("NO_CONTENT", False), ("SPAN_ONLY", True), ("EVENT_ONLY", True)]
)
def test_openai_v2_instrumentation_in_each_content_mode(
    node: Node, mode: str, content: bool
) -> None:
    ran = run(
        sys.executable, str(HERE / "otel" / "openai_app.py"), node.url, node.key, "openai-v2", mode
    )
    assert ran["answer"] == app.ANSWER
    check_call(events_of(node), ran["trace_id"], content=content)
    logs = [line for line in node.log().splitlines() if '"path":"/v1/logs"' in line]
    assert len(logs) == (1 if mode == "EVENT_ONLY" else 0)


def test_openinference_with_using_attributes(node: Node) -> None:
    ran = run(
        sys.executable, str(HERE / "otel" / "openai_app.py"), node.url, node.key, "openinference"
    )
    check_call(events_of(node), ran["trace_id"], content=True)


def test_a_node_app_exporting_otlp_json_with_non_ascii_text(node: Node) -> None:
    ran = run("node", str(HERE / "node" / "otel.mjs"), node.url, node.key)
    prompt, generation = events_of(node)
    assert (prompt["user_id"], prompt["thread_id"]) == ("ユーザー-1", "会話-1")
    assert prompt["properties"]["$text"] == ran["prompt"] == "日本語で天気を教えて — Ünïcödé 🌸"
    assert generation["properties"]["$text"] == ran["answer"]
    assert generation["properties"]["$assistant_id"] == "claude-x"
    assert generation["properties"]["$otel_trace_id"] == ran["trace_id"]
    assert generation["properties"]["$finish_reasons"] == ["stop"]
