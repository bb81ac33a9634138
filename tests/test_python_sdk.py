"""The real ``trubrics==1.8.5`` SDK from PyPI, unmodified, pointed at our server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from importlib.metadata import version

import pytest
from trubrics import Trubrics

from support.node import Node


def test_the_pinned_sdk_is_the_one_under_test() -> None:
    assert version("trubrics") == "1.8.5"


@pytest.mark.parametrize("prefix", ["", "/api/ingestion"])
def test_track_and_track_llm_store_every_field(node: Node, prefix: str) -> None:
    client = Trubrics(api_key=node.key, host=node.url + prefix)
    naive = datetime(2026, 6, 20, 12, 0, 0, 123456)
    aware = datetime(2026, 6, 20, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    client.track(user_id="u1", event="Sign up", properties={"country": "US"}, timestamp=naive)
    client.track(user_id="u1", event="No props")  # properties None, timestamp now
    client.track_llm(
        user_id="u1",
        prompt="Hi?",
        generation="Hello!",
        assistant_id="gpt-4o",
        properties={"plan": "team"},
        timestamp=aware,
        latency=2.5,
        thread_id="thread-9",
    )
    client.track_llm(user_id="u2", prompt="Q", generation="A")  # every optional left out
    client.close()

    signup, no_props, prompt, generation, bare_prompt, bare_generation = node.export()
    assert (signup["user_id"], signup["event"]) == ("u1", "Sign up")
    assert signup["timestamp"] == "2026-06-20T12:00:00.123456Z"  # naive: taken as UTC
    assert signup["properties"] == {"country": "US"} and signup["thread_id"] is None
    assert signup["source"] == "event" and signup["project"] == node.project
    assert no_props["properties"] == {} and no_props["event"] == "No props"
    sent_at = datetime.fromisoformat(no_props["timestamp"])
    assert abs(sent_at - datetime.now(UTC)) < timedelta(minutes=1)

    assert (prompt["event"], generation["event"]) == ("Prompt", "Generation")
    assert generation["timestamp"] == "2026-06-20T12:00:00.000000Z"
    assert prompt["timestamp"] == "2026-06-20T11:59:57.500000Z"
    assert prompt["thread_id"] == generation["thread_id"] == "thread-9"
    assert prompt["properties"] == {
        "$text": "Hi?",
        "$generation_id": generation["id"],
        "plan": "team",
        "$thread_id": "thread-9",
    }
    assert generation["properties"] == {
        "$text": "Hello!",
        "$assistant_id": "gpt-4o",
        "$prompt": "Hi?",
        "latency(s)": 2.5,
        "$prompt_id": prompt["id"],
        "plan": "team",
        "$thread_id": "thread-9",
    }
    assert {prompt["source"], generation["source"]} == {"llm"}

    assert bare_prompt["properties"] == {"$text": "Q", "$generation_id": bare_generation["id"]}
    assert bare_generation["properties"]["$assistant_id"] is None
    assert bare_generation["properties"]["latency(s)"] is None
    assert bare_prompt["thread_id"] is None and bare_prompt["user_id"] == "u2"
    assert bare_prompt["timestamp"] == bare_generation["timestamp"]


def test_sdk_batches_of_hundreds_arrive_exactly_once(node: Node) -> None:
    client = Trubrics(api_key=node.key, host=node.url, flush_batch_size=100)
    for i in range(250):
        client.track(user_id=f"user-{i}", event="Clicked", properties={"i": i})
    client.close()
    stored = node.export()
    assert sorted(e["properties"]["i"] for e in stored) == list(range(250))


def test_sdk_with_an_unknown_key_stores_nothing(node: Node) -> None:
    client = Trubrics(api_key="trb_not_a_real_key_000000000000", host=node.url)
    client.track(user_id="u", event="e")
    client.close()  # the SDK logs the 401 and retries once, 5 s later
    assert node.export() == []
