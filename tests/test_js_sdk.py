"""End to end with the unmodified Trubrics JavaScript SDK (``@trubrics/trubrics``, pinned in
``tests/node/package.json``, installed by ``tests/setup-node.sh``).

The SDK runs under Node and talks HTTP to a real server; then every stored field of every
event is checked, because the SDK is what real clients run and it shapes the payloads
(``Date`` -> ISO with ``Z`` at millisecond precision, no top-level ``thread_id``, integer
latency only). The SDK only logs its failures, so ``publish.mjs`` reports each request.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from support.node import Node
from support.nodejs import NODE_DIR, node_with

SDK = "@trubrics/trubrics"
STORED_FIELDS = {
    "id",
    "project",
    "user_id",
    "event",
    "timestamp",
    "thread_id",
    "properties",
    "received_at",
    "source",
}
SLACK = timedelta(seconds=1)  # for received_at, stamped by another process's clock read
HOST_STYLES = pytest.mark.parametrize("prefix", ["", "/api/ingestion"], ids=["bare", "hosted"])

EVENTS: list[dict[str, Any]] = [
    {
        "user_id": "user-1",
        "event": "Signed up",
        "timestamp": "2024-05-01T14:34:56.789+02:00",
        "properties": {
            "$thread_id": "thread-1",
            "plan": "pro",
            "seats": 3,
            "ratio": 0.25,
            "beta": True,
            "nothing": None,
            "tags": ["a", "b"],
            "nested": {"k": [1, {"x": "y"}]},
            "text": "héllo ✓ 🚀",
        },
    },
    {
        "user_id": "user-2",
        "event": "Clicked",
        "timestamp": "1999-12-31T23:59:59.999Z",
        "properties": {"$thread_id": 42},
    },
    {"user_id": "user-1", "event": "Viewed page", "timestamp": "2024-05-01T00:00:00Z"},
    {"user_id": "user-3", "event": "Stamped by the SDK", "properties": {}},
]
LLM_EVENTS: list[dict[str, Any]] = [
    {
        "user_id": "user-1",
        "prompt": "What is 2+2?",
        "generation": "4",
        "assistant_id": "gpt-4o",
        "latency": 3,
        "timestamp": "2024-05-01T12:00:00.500Z",
        "properties": {"$thread_id": "thread-9", "model": "gpt-4o", "tokens": 12},
    },
    {
        "user_id": "user-2",
        "prompt": "Bonjour ✓",
        "generation": "Salut 🚀",
        "assistant_id": "a-2",
        "latency": 0,
        "timestamp": "2024-05-01T14:00:00+02:00",
    },
    {"user_id": "user-3", "prompt": "p", "generation": "g", "assistant_id": "a-3"},
]


@pytest.fixture(scope="module")
def node_bin() -> str:
    """The ``node`` executable, once the pinned SDK is known to be installed."""
    return node_with(SDK)


def publish(node_bin: str, node: Node, scenario: dict[str, Any], host: str) -> list[dict[str, Any]]:
    """Run the SDK driver; return the requests it made (url, status, items)."""
    done = subprocess.run(
        [node_bin, "publish.mjs", host],
        input=json.dumps(scenario),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=NODE_DIR,
        env={**os.environ, "TRUBRICS_API_KEY": node.key},
    )
    assert done.returncode == 0, f"driver failed:\n{done.stdout}{done.stderr}\n{node.log()}"
    requests: list[dict[str, Any]] = json.loads(done.stdout)["requests"]
    return requests


def stored_time(text: str | datetime) -> str:
    """How the store renders a moment: UTC, six fractional digits, ``Z``."""
    moment = datetime.fromisoformat(text) if isinstance(text, str) else text
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def thread_of(properties: dict[str, Any]) -> str | None:
    """The stored ``thread_id``: ``$thread_id`` as text (JSON numbers included)."""
    value = properties.get("$thread_id")
    return None if value is None else str(value)


def check_common(
    row: dict[str, Any], node: Node, source: str, start: datetime, end: datetime
) -> None:
    """The fields the server adds: project, source, a UUIDv7 id, a recent ``received_at``."""
    assert set(row) == STORED_FIELDS
    assert row["project"] == node.project
    assert row["source"] == source
    event_id = uuid.UUID(row["id"])
    assert str(event_id) == row["id"]
    assert event_id.version == 7 and event_id.variant == uuid.RFC_4122
    assert row["received_at"] == stored_time(row["received_at"])
    assert start - SLACK <= parse(row["received_at"]) <= end + SLACK


def stamped_by_sdk(text: str, start: datetime, end: datetime) -> bool:
    """Whether the SDK's own ``new Date()`` (milliseconds) fell while the driver ran."""
    low = start.replace(microsecond=start.microsecond // 1000 * 1000)
    return text == stored_time(text) and low <= parse(text) <= end


@HOST_STYLES
def test_track_stores_every_field(node_bin: str, node: Node, prefix: str) -> None:
    host = node.url + prefix
    start = datetime.now(UTC)
    requests = publish(node_bin, node, {"events": EVENTS}, host)
    end = datetime.now(UTC)
    assert requests == [{"url": f"{host}/publish_events", "status": 200, "items": len(EVENTS)}]

    rows = node.export()
    assert len(rows) == len(EVENTS)
    for sent, row in zip(EVENTS, rows, strict=True):
        check_common(row, node, "event", start, end)
        properties = sent.get("properties", {})
        assert (row["user_id"], row["event"]) == (sent["user_id"], sent["event"])
        assert row["properties"] == properties
        assert row["thread_id"] == thread_of(properties)
        if "timestamp" in sent:
            assert row["timestamp"] == stored_time(sent["timestamp"])
        else:
            assert stamped_by_sdk(row["timestamp"], start, end)
    assert len({row["id"] for row in rows}) == len(rows)


@HOST_STYLES
def test_track_llm_stores_prompt_and_generation(node_bin: str, node: Node, prefix: str) -> None:
    host = node.url + prefix
    start = datetime.now(UTC)
    requests = publish(node_bin, node, {"llm_events": LLM_EVENTS}, host)
    end = datetime.now(UTC)
    url = f"{host}/publish_llm_events"
    assert requests == [{"url": url, "status": 200, "items": len(LLM_EVENTS)}]

    rows = node.export()
    assert len(rows) == 2 * len(LLM_EVENTS)
    for sent, prompt, generation in zip(LLM_EVENTS, rows[::2], rows[1::2], strict=True):
        user = sent.get("properties", {})
        for row in (prompt, generation):
            check_common(row, node, "llm", start, end)
            assert row["user_id"] == sent["user_id"]
            assert row["thread_id"] == thread_of(user)
        assert (prompt["event"], generation["event"]) == ("Prompt", "Generation")
        assert prompt["properties"] == {
            **user,
            "$text": sent["prompt"],
            "$generation_id": generation["id"],
        }
        assert generation["properties"] == {
            **user,
            "$text": sent["generation"],
            "$assistant_id": sent["assistant_id"],
            "$prompt": sent["prompt"],
            "latency(s)": sent.get("latency"),
            "$prompt_id": prompt["id"],
        }
        if "timestamp" in sent:
            assert generation["timestamp"] == stored_time(sent["timestamp"])
        else:
            assert stamped_by_sdk(generation["timestamp"], start, end)
        latency = timedelta(seconds=sent.get("latency") or 0)
        assert prompt["timestamp"] == stored_time(parse(generation["timestamp"]) - latency)
    assert len({row["id"] for row in rows}) == len(rows)


def test_batch_of_150_is_stored_exactly_once(node_bin: str, node: Node) -> None:
    """The SDK posts at most 100 items per request and per ``flush()`` call."""
    base = datetime(2024, 6, 1, tzinfo=UTC)
    events: list[dict[str, Any]] = [
        {
            "user_id": f"user-{n % 7}",
            "event": "Batched",
            "timestamp": (base + timedelta(milliseconds=n)).isoformat(),
            "properties": {"n": n},
        }
        for n in range(150)
    ]
    requests = publish(node_bin, node, {"events": events}, node.url)
    url = f"{node.url}/publish_events"
    assert requests == [
        {"url": url, "status": 200, "items": 100},
        {"url": url, "status": 200, "items": 50},
    ]

    rows = node.export()
    assert [row["properties"] for row in rows] == [{"n": n} for n in range(150)]
    assert [row["user_id"] for row in rows] == [event["user_id"] for event in events]
    assert [row["timestamp"] for row in rows] == [stored_time(e["timestamp"]) for e in events]
    assert len({row["id"] for row in rows}) == 150


@HOST_STYLES
def test_the_source_property_that_0_5_28_adds_is_kept(node: Node, prefix: str) -> None:
    """@trubrics/trubrics 0.5.28 adds ``properties.source = "js_sdk_0.5.28"`` to every
    event, and lets ``trackLLM`` send a ``thread_id`` and no ``assistant_id``
    (trubrics/trubrics-js, commits 9593a74 and eb8fd39). The npm registry reachable here
    serves 0.5.25 only (``npm view @trubrics/trubrics versions``), so these are the bodies
    0.5.28 posts, built as its ``track``/``trackLLM`` build them: ``source`` is stored as an
    ordinary property, and the stored ``source`` column still says what kind of event it is."""
    source = {"source": "js_sdk_0.5.28"}
    event = {**EVENTS[0], "properties": {**EVENTS[0]["properties"], **source}}
    llm = {
        "user_id": "user-1",
        "prompt": "What is 2+2?",
        "generation": "4",
        "thread_id": "thread-9",
        "latency": 3,
        "timestamp": "2024-05-01T12:00:00.500Z",
        "properties": source,
    }
    assert node.post(prefix + "/publish_events", [event]).status_code == 200
    assert node.post(prefix + "/publish_llm_events", [llm]).status_code == 200
    stored, prompt, generation = node.export()
    assert (stored["properties"], stored["source"]) == (event["properties"], "event")
    for row in (prompt, generation):
        assert row["properties"]["source"] == "js_sdk_0.5.28" and row["source"] == "llm"
        assert row["thread_id"] == "thread-9"
    assert generation["properties"]["$assistant_id"] is None
