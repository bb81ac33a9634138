"""POST /publish_llm_events: each LLM event becomes a linked prompt and generation event."""

from __future__ import annotations

import time
from typing import Any

from support.node import Node


def llm(**overrides: Any) -> dict[str, Any]:
    base = {
        "user_id": "user_123",
        "prompt": "What is product analytics for AI?",
        "generation": "It tracks user and AI events together.",
    }
    return {**base, **overrides}


def test_llm_event_expands_into_prompt_and_generation(node: Node) -> None:
    response = node.post(
        "/publish_llm_events",
        [
            llm(
                assistant_id="gpt-4o",
                latency=1.42,
                timestamp="2026-06-20T12:00:00Z",
                properties={"$thread_id": "thread_abc", "plan": "team"},
            )
        ],
    )
    assert response.status_code == 200
    assert response.json() == {"status": "success", "events": 2}
    prompt, generation = node.export()
    assert prompt["event"] == "Prompt" and generation["event"] == "Generation"
    assert prompt["timestamp"] == "2026-06-20T11:59:58.580000Z"
    assert generation["timestamp"] == "2026-06-20T12:00:00.000000Z"
    assert prompt["properties"] == {
        "$text": "What is product analytics for AI?",
        "$generation_id": generation["id"],
        "$thread_id": "thread_abc",
        "plan": "team",
    }
    assert generation["properties"] == {
        "$text": "It tracks user and AI events together.",
        "$assistant_id": "gpt-4o",
        "$prompt": "What is product analytics for AI?",
        "latency(s)": 1.42,
        "$prompt_id": prompt["id"],
        "$thread_id": "thread_abc",
        "plan": "team",
    }
    for stored in (prompt, generation):
        assert stored["thread_id"] == "thread_abc"
        assert stored["source"] == "llm" and stored["user_id"] == "user_123"
        assert stored["project"] == node.project


def test_sdk_style_nulls_custom_names_and_top_level_thread_id(node: Node) -> None:
    before = time.time()
    response = node.post(
        "/publish_llm_events",
        [
            llm(
                assistant_id=None,
                latency=None,
                timestamp=None,
                properties=None,
                thread_id="t-1",
                prompt_event_name="User prompt",
                generation_event_name="AI generation",
                event_type="llm_event",
            )
        ],
    )
    assert response.status_code == 200
    prompt, generation = node.export()
    assert (prompt["event"], generation["event"]) == ("User prompt", "AI generation")
    assert prompt["thread_id"] == generation["thread_id"] == "t-1"
    assert prompt["properties"]["$thread_id"] == "t-1"
    assert generation["properties"]["$assistant_id"] is None
    assert generation["properties"]["latency(s)"] is None
    # No timestamp: the generation happened when the batch arrived; no latency: same instant.
    assert prompt["timestamp"] == generation["timestamp"] == generation["received_at"]
    stamp = time.strptime(generation["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")
    assert abs(time.mktime(stamp) - time.timezone - before) < 10


def test_top_level_thread_id_overrides_property(node: Node) -> None:
    payload = [llm(thread_id="top", properties={"$thread_id": "inner"})]
    assert node.post("/publish_llm_events", payload).status_code == 200
    assert {e["thread_id"] for e in node.export()} == {"top"}


def test_batch_order_is_kept_and_pairs_stay_linked(node: Node) -> None:
    batch = [llm(prompt=f"p{i}", generation=f"g{i}", latency=i) for i in range(100)]
    assert node.post("/publish_llm_events", batch).json()["events"] == 200
    stored = node.export()
    assert len(stored) == 200
    for i in range(100):
        prompt, generation = stored[2 * i], stored[2 * i + 1]
        assert prompt["properties"]["$text"] == f"p{i}"
        assert generation["properties"]["$text"] == f"g{i}"
        assert prompt["properties"]["$generation_id"] == generation["id"]
        assert generation["properties"]["$prompt_id"] == prompt["id"]
    assert len({e["id"] for e in stored}) == 200


def test_empty_prompt_and_generation_are_allowed(node: Node) -> None:
    assert node.post("/publish_llm_events", [llm(prompt="", generation="")]).status_code == 200
    assert [e["properties"]["$text"] for e in node.export()] == ["", ""]
