"""POST /publish_segment_events against a real server: the items of Segment's Trubrics
destination (``track/utils.ts``), exactly as it builds them, and what each is stored as.

The destination itself, run for real, is in ``test_segment_destination.py``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from support.engines import PostgresServer
from support.expected import llm_properties
from support.node import Node, scrape, value
from support.waiting import wait_until

HOST_STYLES = pytest.mark.parametrize("prefix", ["", "/api/ingestion"], ids=["bare", "hosted"])
CONTEXT = {
    "library": {"name": "analytics.js", "version": "2.11.1"},
    "page": {"path": "/chat", "url": "https://example.com/chat"},
    "locale": "en-US",
}
LLM = {
    "assistant_id": "gpt-4o",
    "prompt": "What is 2+2?",
    "generation": "4",
    "thread_id": "thread-1",
    "latency": 1.5,
}


def track(**fields: Any) -> dict[str, Any]:
    """An item as the destination's ``prepareJSON`` builds it (undefined fields left out)."""
    base = {"event": "Clicked", "timestamp": "2026-06-20T12:00:00.000Z", "user_id": "user-1"}
    return {**base, **fields}


def near(text: str, moment: datetime) -> bool:
    return abs(datetime.fromisoformat(text) - moment) < timedelta(minutes=1)


@HOST_STYLES
def test_each_item_is_stored_as_the_event_it_describes(node: Node, prefix: str) -> None:
    trubrics = {f"$trubrics_{name}": field for name, field in LLM.items()}
    items = [
        track(  # anonymous: user_id null, anonymous_id standing in; complete llm_properties
            event="Chat answered",
            user_id=None,
            anonymous_id="anon-1",
            llm_properties=LLM,
            context=CONTEXT,
            properties={"plan": "pro", **trubrics},
        ),
        track(anonymous_id="anon-2", llm_properties={}, context={}, properties={"n": 1}),
        track(event="Asked", llm_properties={"prompt": "half", "thread_id": "thread-2"}),
        track(event="Plain", llm_properties=None, context=None, properties=None),
        {"event": "Untimed", "user_id": "user-2"},  # every optional field left out
    ]
    response = node.post(prefix + "/publish_segment_events", items)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "success", "events": 6}

    rows = node.export()
    prompt, generation, clicked, asked, plain, untimed = rows
    assert [row["source"] for row in rows] == ["llm", "llm", "event", "event", "event", "event"]
    assert {row["project"] for row in rows} == {node.project}
    assert (prompt["event"], generation["event"]) == ("Prompt", "Generation")
    assert prompt["user_id"] == generation["user_id"] == "anon-1"
    assert prompt["thread_id"] == generation["thread_id"] == "thread-1"
    assert generation["timestamp"] == "2026-06-20T12:00:00.000000Z"
    assert prompt["timestamp"] == "2026-06-20T11:59:58.500000Z"  # 1.5 s of latency earlier
    kept = {
        "plan": "pro",
        **trubrics,
        "$context": CONTEXT,
        "$anonymous_id": "anon-1",
        "$segment_event": "Chat answered",
        "$thread_id": "thread-1",
    }
    stored = [prompt["properties"], generation["properties"]]
    assert stored == llm_properties(prompt, generation, LLM, kept)

    assert (clicked["user_id"], clicked["event"]) == ("user-1", "Clicked")
    assert clicked["properties"] == {"n": 1, "$context": {}, "$anonymous_id": "anon-2"}
    assert clicked["thread_id"] is None
    assert asked["properties"] == {
        "$llm_properties": {"prompt": "half", "thread_id": "thread-2"},
        "$thread_id": "thread-2",
    }
    assert asked["thread_id"] == "thread-2"
    assert (plain["properties"], plain["timestamp"]) == ({}, "2026-06-20T12:00:00.000000Z")
    assert untimed["properties"] == {} and untimed["user_id"] == "user-2"
    assert untimed["timestamp"] == untimed["received_at"]  # no timestamp: when received
    assert near(untimed["received_at"], datetime.now(UTC))
    assert len({row["id"] for row in rows}) == len(rows)


def test_user_id_null_needs_an_anonymous_id(node: Node) -> None:
    for missing in ({"user_id": None}, {"user_id": None, "anonymous_id": None}, {"user_id": ""}):
        item = {**track(), **missing}
        response = node.post("/publish_segment_events", [track(), item])
        assert response.status_code == 422, missing
        (error,) = response.json()["detail"]
        assert (error["loc"], error["type"]) == (["body", 1, "user_id"], "missing")
        assert "anonymous_id" in error["msg"]
    no_ids = {key: item for key, item in track().items() if key != "user_id"}
    assert node.post("/publish_segment_events", [no_ids]).status_code == 422
    assert node.export() == []


def test_the_422_names_every_bad_item_and_field(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(env={"TRUBRICS_MAX_DEPTH": "3"})
    deep = {"a": {"b": {"c": {"d": 1}}}}  # 4 levels
    items = [
        track(),
        track(event="", timestamp="yesterday", llm_properties={"prompt": 3, "latency": -1}),
        "not an object",
        track(user_id=None, context=deep, properties=deep),
        {"user_id": "u", "llm_properties": [], "context": [1]},
        track(timestamp="0001-01-01T00:00:00Z", llm_properties=LLM),  # the prompt before year 1
    ]
    response = node.post("/publish_segment_events", items)
    assert response.status_code == 422
    assert [(error["loc"], error["type"]) for error in response.json()["detail"]] == [
        (["body", 1, "event"], "string_too_short"),
        (["body", 1, "timestamp"], "datetime_parsing"),
        (["body", 1, "llm_properties", "prompt"], "string_type"),
        (["body", 1, "llm_properties", "latency"], "greater_than_equal"),
        (["body", 2], "dict_type"),
        (["body", 3, "properties"], "too_deep"),
        (["body", 3, "context"], "too_deep"),
        (["body", 3, "user_id"], "missing"),
        (["body", 4, "event"], "missing"),
        (["body", 4, "llm_properties"], "dict_type"),
        (["body", 4, "context"], "dict_type"),
        (["body", 5, "timestamp"], "datetime_out_of_range"),
    ]
    assert node.post("/publish_segment_events", [track(context=deep)]).status_code == 422
    assert node.post("/publish_segment_events", {"event": "e"}).status_code == 422
    assert node.post("/publish_segment_events", [track()] * 101).status_code == 422
    assert node.export() == []


def test_limits_dedup_metrics_and_access_log_are_the_publish_endpoints(make_node) -> None:  # type: ignore[no-untyped-def]
    limits = {"TRUBRICS_MAX_EVENT_BYTES": "2048", "TRUBRICS_RATE_LIMIT_BURST": "200"}
    node: Node = make_node(env={**limits, "TRUBRICS_RATE_LIMIT_EVENTS_PER_S": "0.001"})
    items = [track(llm_properties=LLM), track(event="Other")]  # three events
    first = node.post("/api/ingestion/publish_segment_events", items)
    assert first.json() == {"status": "success", "events": 3}
    again = node.post("/publish_segment_events", items)  # a retry: acknowledged, not stored
    assert again.json() == {"status": "success", "events": 3, "duplicate": True}
    big = track(properties={"text": "x" * 3000})
    too_large = node.post("/publish_segment_events", [track(), big])
    assert too_large.status_code == 422
    assert [e["loc"] for e in too_large.json()["detail"]] == [["body", 1]]
    llm_items = [track(event=f"LLM {n}", llm_properties=LLM) for n in range(98)]  # 196 events
    limited = node.post("/publish_segment_events", llm_items)  # 6 taken already, of 200
    assert limited.status_code == 429 and limited.headers["retry-after"]
    assert len(node.export()) == 3

    samples = scrape(node)
    requests = "trubrics_http_requests_total"
    label = "/publish_segment_events"
    assert value(samples, requests, endpoint=label, status="200") == 2
    assert value(samples, requests, endpoint=label, status="422") == 1
    assert value(samples, requests, endpoint=label, status="429") == 1
    assert value(samples, "trubrics_events_accepted_total") == 3
    assert value(samples, "trubrics_dedup_hits_total") == 1
    lines = [json.loads(line) for line in node.log().splitlines()]
    access = [line for line in lines if line.get("path", "").endswith(label)]
    assert [(line["path"], line["status"], line["events"], line["reason"]) for line in access] == [
        ("/api/ingestion/publish_segment_events", 200, 3, None),
        ("/publish_segment_events", 200, 0, None),
        ("/publish_segment_events", 422, 0, "too_large"),
        ("/publish_segment_events", 429, 0, "rate_limited"),
    ]
    assert all(line["project"] == node.project for line in access)


def test_reads_and_forwarding_give_the_same_events(
    make_node,  # type: ignore[no-untyped-def]
    postgres: PostgresServer,
) -> None:
    """The expansion is a function of the stored batch: what the forwarder ships is what
    ``events export`` reads, ids included."""
    node: Node = make_node(env={"TRUBRICS_FORWARD_TO": postgres.url})
    items = [
        track(user_id=None, anonymous_id="fwd-anon", llm_properties=LLM, context=CONTEXT),
        track(user_id="fwd-user", llm_properties={"assistant_id": "a"}, properties={"k": [1]}),
        {"event": "Untimed", "user_id": "fwd-untimed"},
    ]
    assert node.post("/publish_segment_events", items).status_code == 200
    sql = (
        "SELECT json_agg(json_build_object('id', id, 'user_id', user_id, 'event', event,"
        " 'thread_id', thread_id, 'properties', properties, 'source', source,"
        " 'timestamp', to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))"
        " ORDER BY id) FROM events WHERE user_id LIKE 'fwd-%'"
    )

    def forwarded() -> list[dict[str, Any]]:
        try:
            return json.loads(postgres.psql(sql).strip() or "null") or []
        except Exception:  # the forwarder has not created the table yet
            return []

    wait_until(lambda: len(forwarded()) == 4, what="4 rows in PostgreSQL", log=node.log())
    columns = ("id", "user_id", "event", "thread_id", "properties", "source", "timestamp")
    exported = [{column: row[column] for column in columns} for row in node.export()]
    assert forwarded() == sorted(exported, key=lambda row: row["id"])


@pytest.mark.parametrize("path", ["/publish_segment_events", "/identify_segment_users"])
def test_a_body_wrong_as_a_whole_is_named_as_such(node: Node, path: str) -> None:
    for body, kind in [
        (b"{not json", "json_invalid"),
        (b"", "json_invalid"),
        (b'{"event": "e", "user_id": "u"}', "list_type"),
        (
            b'[{"event": "e", "user_id": "u", "properties": {"x": 1e400}, "traits": {"x": 1e400}}]',
            "value_error",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "json_invalid"),
    ]:
        response = node.post(path, data=body)
        assert response.status_code == 422, (body[:40], response.text)
        assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(["body"], kind)]
    assert node.export() == []
