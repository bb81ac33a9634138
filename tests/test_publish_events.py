"""POST /publish_events against a real server: what gets stored, field by field."""

from __future__ import annotations

import re
import time
from typing import Any

from support.node import Node

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def event(**overrides: Any) -> dict[str, Any]:
    base = {"user_id": "user_123", "event": "Sign up", "timestamp": "2026-06-20T12:00:00Z"}
    return {**base, **overrides}


def test_publish_stores_every_field(node: Node) -> None:
    before = time.time()
    response = node.post(
        "/publish_events",
        [
            event(properties={"country": "US", "$thread_id": "thread_abc", "n": [1, {"x": None}]}),
            event(user_id="user_456", event="Converted", timestamp="2026-06-20T12:05:00.250Z"),
        ],
    )
    assert response.status_code == 200
    assert response.json() == {"status": "success", "events": 2}
    first, second = node.export()
    assert first["project"] == node.project
    assert (first["user_id"], first["event"]) == ("user_123", "Sign up")
    assert first["timestamp"] == "2026-06-20T12:00:00.000000Z"
    assert first["thread_id"] == "thread_abc"
    assert first["properties"] == {
        "country": "US",
        "$thread_id": "thread_abc",
        "n": [1, {"x": None}],
    }
    assert first["source"] == "event"
    assert UUID7.match(first["id"]) and UUID7.match(second["id"])
    assert first["id"] < second["id"], "ids are time-ordered within a batch"
    assert second["timestamp"] == "2026-06-20T12:05:00.250000Z"
    assert second["thread_id"] is None and second["properties"] == {}
    received = time.mktime(time.strptime(first["received_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert before - 5 < received - time.timezone < time.time() + 5


def test_timestamps_are_normalised_to_utc(node: Node) -> None:
    sent = [
        "2026-06-20T12:00:00",  # naive: taken as UTC
        "2026-06-20T14:30:00+02:30",  # offset: converted
        "2026-06-20T12:00:00.123456789Z",  # more than microseconds: rounded
        "2026-06-20T07:00:00.5-05:00",
    ]
    assert node.post("/publish_events", [event(timestamp=t) for t in sent]).status_code == 200
    assert [e["timestamp"] for e in node.export()] == [
        "2026-06-20T12:00:00.000000Z",
        "2026-06-20T12:00:00.000000Z",
        "2026-06-20T12:00:00.123457Z",
        "2026-06-20T12:00:00.500000Z",
    ]


def test_nulls_and_unknown_fields_are_accepted(node: Node) -> None:
    response = node.post("/publish_events", [event(properties=None, event_type="event", extra=1)])
    assert response.status_code == 200
    (stored,) = node.export()
    assert stored["properties"] == {}
    assert "extra" not in stored and "event_type" not in stored["properties"]


def test_empty_batch_stores_nothing(node: Node) -> None:
    response = node.post("/publish_events", [])
    assert response.status_code == 200 and response.json()["status"] == "success"
    assert node.export() == []


def test_hundred_events_is_the_maximum_batch(node: Node) -> None:
    batch = [event(user_id=f"u{i}") for i in range(100)]
    assert node.post("/publish_events", batch).status_code == 200
    assert [e["user_id"] for e in node.export()] == [f"u{i}" for i in range(100)]


def test_hosted_prefix_is_served_too(node: Node) -> None:
    assert node.post("/api/ingestion/publish_events", [event()]).status_code == 200
    assert len(node.export()) == 1


def test_missing_content_type_still_parses_as_json(node: Node) -> None:
    body = b'[{"user_id":"u%d","event":"e","timestamp":"2026-06-20T12:00:00Z"}]'
    response = node.post("/publish_events", data=body % 1, headers={"content-type": "text/plain"})
    assert response.status_code == 200
    assert node.post("/publish_events", data=body % 2).status_code == 200
    assert len(node.export()) == 2


def test_unicode_survives_exactly(node: Node) -> None:
    props = {"text": 'héllo 🌍 \u2028 "quoted" \\ back', "emoji_key_🔑": "✓", "nul": "a\u0000b"}
    assert node.post("/publish_events", [event(user_id="ユーザー", properties=props)]).ok
    (stored,) = node.export()
    assert stored["user_id"] == "ユーザー" and stored["properties"] == props


def test_non_string_thread_ids(node: Node) -> None:
    batch = [event(properties={"$thread_id": 42}), event(properties={"$thread_id": {"a": 1}})]
    assert node.post("/publish_events", batch).status_code == 200
    assert [e["thread_id"] for e in node.export()] == ["42", None]
