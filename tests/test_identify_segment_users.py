"""POST /identify_segment_users against a real server: the identify items of Segment's
Trubrics destination (``identify/utils.ts``), each stored as a ``$identify`` event whose
properties are the user's traits."""

from __future__ import annotations

from typing import Any

import pytest

from support.node import Node

TRAITS = {
    "name": "Ada",
    "email": "ada@example.com",
    "address": {"city": "London", "geo": {"lat": 51.5, "lon": -0.1}},
    "plans": [{"name": "team", "seats": 3}],
    "beta": True,
    "nothing": None,
}


def identify(**fields: Any) -> dict[str, Any]:
    """An item as the destination's ``prepareJSON`` builds it (undefined fields left out)."""
    return {"user_id": "user-1", "timestamp": "2026-06-20T12:00:00.000Z", **fields}


@pytest.mark.parametrize("prefix", ["", "/api/ingestion"], ids=["bare", "hosted"])
def test_identify_stores_the_traits_as_an_identify_event(node: Node, prefix: str) -> None:
    items = [
        identify(anonymous_id="anon-1", traits=TRAITS),
        identify(user_id="user-2", traits={"$thread_id": "t-7"}),
        {"user_id": "user-3"},  # traits, timestamp and anonymous_id left out
    ]
    response = node.post(prefix + "/identify_segment_users", items)
    assert response.json() == {"status": "success", "events": 3}

    first, second, third = node.export()
    assert [row["event"] for row in (first, second, third)] == ["$identify"] * 3
    assert [row["source"] for row in (first, second, third)] == ["event"] * 3
    assert [row["user_id"] for row in (first, second, third)] == ["user-1", "user-2", "user-3"]
    assert first["properties"] == {**TRAITS, "$anonymous_id": "anon-1"}
    assert first["timestamp"] == "2026-06-20T12:00:00.000000Z"
    assert first["thread_id"] is None
    assert second["thread_id"] == "t-7"
    assert third["properties"] == {} and third["timestamp"] == third["received_at"]


def test_every_bad_item_and_field_is_named(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(env={"TRUBRICS_MAX_DEPTH": "2"})
    items = [
        identify(),
        {"anonymous_id": "anon-only", "traits": {}},
        identify(user_id="", traits=[1], timestamp="soon"),
        identify(traits={"a": {"b": {"c": 1}}}),  # 3 levels
        identify(timestamp="9999-12-31T23:59:59-01:00"),
    ]
    response = node.post("/identify_segment_users", items)
    assert response.status_code == 422
    assert [(error["loc"], error["type"]) for error in response.json()["detail"]] == [
        (["body", 1, "user_id"], "missing"),
        (["body", 2, "user_id"], "string_too_short"),
        (["body", 2, "traits"], "dict_type"),
        (["body", 2, "timestamp"], "datetime_parsing"),
        (["body", 3, "traits"], "too_deep"),
        (["body", 4, "timestamp"], "datetime_out_of_range"),
    ]
    assert node.export() == []
