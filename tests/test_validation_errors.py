"""Invalid payloads: a 422 in FastAPI's shape naming every bad item and field, nothing stored."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from support.node import Node

GOOD = {"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}
GOOD_LLM = {"user_id": "u", "prompt": "p", "generation": "g"}


def errors(response: Any) -> list[tuple[tuple[Any, ...], str]]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert all(set(e) == {"loc", "msg", "type"} and e["msg"] for e in detail)
    return [(tuple(e["loc"]), e["type"]) for e in detail]


def test_every_bad_event_and_field_is_named_and_nothing_is_stored(node: Node) -> None:
    batch = [
        GOOD,
        {"user_id": "", "event": 5, "timestamp": "yesterday"},
        {"event": "e", "timestamp": "2026-06-20T12:00:00Z", "properties": []},
        "not an object",
        {**GOOD, "timestamp": None},
    ]
    assert errors(node.post("/publish_events", batch)) == [
        (("body", 1, "user_id"), "string_too_short"),
        (("body", 1, "event"), "string_type"),
        (("body", 1, "timestamp"), "datetime_parsing"),
        (("body", 2, "user_id"), "missing"),
        (("body", 2, "properties"), "dict_type"),
        (("body", 3), "dict_type"),
        (("body", 4, "timestamp"), "datetime_parsing"),
    ]
    assert node.export() == []


def test_llm_field_errors(node: Node) -> None:
    batch = [
        {**GOOD_LLM, "latency": -1},
        {**GOOD_LLM, "latency": "fast"},
        {**GOOD_LLM, "prompt": None, "generation": 3},
        {**GOOD_LLM, "properties": "x", "assistant_id": 4, "prompt_event_name": ""},
        {**GOOD_LLM, "latency": True, "thread_id": 12},
    ]
    assert errors(node.post("/publish_llm_events", batch)) == [
        (("body", 0, "latency"), "greater_than_equal"),
        (("body", 1, "latency"), "float_type"),
        (("body", 2, "prompt"), "string_type"),
        (("body", 2, "generation"), "string_type"),
        (("body", 3, "assistant_id"), "string_type"),
        (("body", 3, "prompt_event_name"), "string_too_short"),
        (("body", 3, "properties"), "dict_type"),
        (("body", 4, "latency"), "float_type"),
        (("body", 4, "thread_id"), "string_type"),
    ]
    assert node.export() == []


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"{not json", "json_invalid"),
        (b"", "json_invalid"),
        (b'{"user_id": "u"}', "list_type"),
        (b'[{"user_id": "u", "event": "e", "timestamp": NaN}]', "json_invalid"),
        (
            b'[{"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z",'
            b' "properties": {"x": 1e400}}]',
            "value_error",
        ),
        (
            b'[{"user_id": "\xff\xfe", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}]',
            "json_invalid",
        ),
        (
            b'[{"user_id": "\\ud800", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}]',
            "json_invalid",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "json_invalid"),
    ],
)
def test_malformed_bodies(node: Node, body: bytes, kind: str) -> None:
    found = errors(node.post("/publish_events", data=body))
    assert kind in {k for _, k in found}
    assert node.export() == []


def test_absurd_property_nesting_is_rejected(node: Node) -> None:
    nested = '{"a":' * 20_000 + "1" + "}" * 20_000
    body = (
        '[{"user_id":"u","event":"e","timestamp":"2026-06-20T12:00:00Z","properties":'
        + nested
        + "}]"
    ).encode()
    assert errors(node.post("/publish_events", data=body)) == [(("body",), "json_invalid")]
    assert node.export() == []
    assert requests.get(node.url + "/healthz", timeout=5).status_code == 200


def test_more_than_100_items_is_rejected(node: Node) -> None:
    for path, item in (("/publish_events", GOOD), ("/publish_llm_events", GOOD_LLM)):
        assert errors(node.post(path, [item] * 101)) == [(("body",), "too_long")]
    assert node.export() == []


def test_one_bad_item_rejects_the_whole_batch(node: Node) -> None:
    batch = [GOOD] * 99 + [{**GOOD, "user_id": None}]
    assert errors(node.post("/publish_events", batch)) == [(("body", 99, "user_id"), "string_type")]
    assert node.export() == []
