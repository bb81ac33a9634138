"""Configurable limits, each answered with a clear 4xx and a ``detail``."""

from __future__ import annotations

import gc
import json
import time

from support.node import Node
from trubrics_ingestion.schema import decode_batch

EVENT = {"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}


def nested(depth: int) -> dict[str, object]:
    """A properties object of exactly ``depth`` levels."""
    value: dict[str, object] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def test_property_nesting_depth_is_limited(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(env={"TRUBRICS_MAX_DEPTH": "5"})
    ok = node.post("/publish_events", [{**EVENT, "properties": nested(5)}])
    assert ok.status_code == 200
    batch = [{**EVENT, "properties": nested(6)}, EVENT, {**EVENT, "properties": {"l": [[[[[1]]]]]}}]
    response = node.post("/publish_events", batch)
    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [
        (["body", 0, "properties"], "too_deep"),
        (["body", 2, "properties"], "too_deep"),
    ]
    assert len(node.export()) == 1


def test_default_depth_accepts_32_levels_and_rejects_33(node: Node) -> None:
    assert node.post("/publish_events", [{**EVENT, "properties": nested(32)}]).status_code == 200
    assert node.post("/publish_events", [{**EVENT, "properties": nested(33)}]).status_code == 422


def test_braces_inside_strings_do_not_fool_the_depth_check(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(env={"TRUBRICS_MAX_DEPTH": "3"})
    props = {"text": "{[{[{[{[" * 10, "code": "}}}]]]" * 10}
    assert node.post("/publish_events", [{**EVENT, "properties": props}]).status_code == 200


def test_event_size_is_limited(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(env={"TRUBRICS_MAX_EVENT_BYTES": "2048"})
    small = {**EVENT, "properties": {"text": "x" * 1000}}
    big = {"user_id": "u", "prompt": "p", "generation": "y" * 3000}
    assert node.post("/publish_events", [small, small, small]).status_code == 200
    response = node.post(
        "/publish_llm_events", [{**big, "prompt": "a"}, big, {**big, "generation": ""}]
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [(e["loc"], e["type"]) for e in detail] == [
        (["body", 0], "too_large"),
        (["body", 1], "too_large"),
    ]
    assert "2048" in detail[0]["msg"]
    assert len(node.export()) == 3


def test_per_project_rate_limit(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(
        env={"TRUBRICS_RATE_LIMIT_EVENTS_PER_S": "10", "TRUBRICS_RATE_LIMIT_BURST": "300"}
    )  # a slow rate: the 4th batch would need 10 s of refill, however slow the machine
    batch = [{**EVENT, "user_id": f"u{i}"} for i in range(100)]
    statuses = [
        node.post("/publish_events", [{**e, "event": f"b{n}"} for e in batch]).status_code
        for n in range(4)
    ]
    assert statuses == [200, 200, 200, 429]
    limited = node.post("/publish_events", [{**EVENT, "user_id": "late"}] * 100)
    assert limited.status_code == 429 and limited.json()["detail"]
    assert limited.headers["retry-after"] == "10"  # 100 events at 10 a second
    other = node.cli("keys", "create", "--project", "quiet", "--json").stdout
    quiet = node.post("/publish_events", [EVENT], key=json.loads(other)["key"])
    assert quiet.status_code == 200, "another project is not limited by the noisy one"
    time.sleep(1.0)  # 10 events' worth
    assert node.post("/publish_events", [{**EVENT, "user_id": "later"}] * 5).status_code == 200
    assert len(node.export()) == 3 * 100 + 1 + 5


def escaped(batch: list[dict[str, object]], stamp: str) -> bytes:
    """``batch`` as JSON with each ``"timestamp"`` written as ``stamp``: JSON text, so its
    escapes are what the decoder sees and the raw bytes do not show."""
    return json.dumps(batch).replace('"@STAMP@"', f'"{stamp}"').encode()


def test_timestamps_out_of_range_are_refused_however_they_are_written(node: Node) -> None:
    event = {**EVENT, "timestamp": "@STAMP@"}
    llm = {"user_id": "u", "prompt": "p", "generation": "g", "timestamp": "@STAMP@"}
    refused = [
        ("/publish_events", escaped([event], "\\u0030001-01-01T00:00:00+01:00")),
        ("/publish_events", escaped([event], "\\u0039999-12-31T23:59:59-23:59")),
        ("/publish_events", escaped([EVENT, event], "9999-12-31T23:59:59\\u002d23:59")),
        ("/publish_llm_events", escaped([{**llm, "latency": 3600}], "\\u0030001-01-01T00:30:00Z")),
        ("/publish_llm_events", escaped([llm], "\\u0039999-12-31T23:59:59-00:01")),
    ]
    for path, body in refused:
        response = node.post(path, data=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, (body, response.text)
        (error,) = response.json()["detail"]
        assert error["loc"][2] == "timestamp" and error["type"] == "datetime_out_of_range", error
    edge = escaped([event], "\\u0030001-01-01T01:00:00+01:00")  # exactly year 1 in UTC
    assert node.post("/publish_events", data=edge).status_code == 200
    exported = node.cli("events", "export", check=False)
    assert exported.returncode == 0, exported.stderr
    assert [json.loads(line)["timestamp"] for line in exported.stdout.splitlines()] == [
        "0001-01-01T00:00:00.000000Z"
    ]


def test_the_422_names_every_bad_event_whatever_failed_first(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(env={"TRUBRICS_MAX_DEPTH": "3", "TRUBRICS_MAX_EVENT_BYTES": "2048"})
    batch = [
        {**EVENT, "timestamp": "@STAMP@"},
        {**EVENT, "properties": nested(4)},
        {**EVENT, "user_id": ""},
        {**EVENT, "properties": {"text": "x" * 3000}},
    ]
    body = escaped(batch, "\\u0030001-01-01T00:00:00+01:00")
    response = node.post("/publish_events", data=body)
    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [
        (["body", 0, "timestamp"], "datetime_out_of_range"),
        (["body", 1, "properties"], "too_deep"),
        (["body", 2, "user_id"], "string_too_short"),
        (["body", 3], "too_large"),
    ]
    assert node.export() == []


def test_decoded_properties_holding_a_container_are_tracked_by_the_gc() -> None:
    """What the depth check's first filter relies on (``limits._may_be_too_deep``)."""
    for properties, nested in (({"a": 1, "b": "x", "c": None}, False), ({"a": []}, True)):
        body = json.dumps([{**EVENT, "properties": properties}]).encode()
        (item,) = decode_batch(body, "event")
        assert gc.is_tracked(item.properties) is nested
