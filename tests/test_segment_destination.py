"""End to end with Segment's "Trubrics (Actions)" destination, run for real: the npm
package ``@segment/action-destinations`` (pinned in ``tests/node/package.json``, installed
by ``tests/setup-node.sh``) under Node, driven as Segment's runtime drives it
(``tests/node/segment.mjs``: ``Destination.onEvent`` / ``onBatch`` from
``@segment/actions-core``, each action subscribed with its default mappings).

The destination builds ``https://{url}/...`` itself, so the node is reached through a TLS
terminator (``support.tls_proxy``, as a load balancer would be in front) whose
certificate Node trusts through ``NODE_EXTRA_CA_CERTS``. Its setting ``url`` is the host and
prefix: ``127.0.0.1:PORT/api/ingestion`` as its default ``app.trubrics.com/api/ingestion``
has it, or ``127.0.0.1:PORT``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from support.engines import TlsFiles, make_tls_files
from support.expected import llm_properties
from support.node import Node
from support.nodejs import NODE_DIR, node_with
from support.tls_proxy import tls_terminator

PACKAGE = "@segment/action-destinations"
CONTEXT = {"library": {"name": "analytics.js", "version": "2.11.1"}, "locale": "en-US"}
LLM_PROPERTIES = {
    "$trubrics_assistant_id": "gpt-4o",
    "$trubrics_prompt": "What is 2+2?",
    "$trubrics_generation": "4",
    "$trubrics_thread_id": "thread-1",
    "$trubrics_latency": 2,
}


def segment_event(kind: str, **fields: Any) -> dict[str, Any]:
    """An event as Segment hands it to a destination."""
    return {
        "type": kind,
        "messageId": f"m-{len(json.dumps(fields))}",
        "timestamp": "2026-06-20T12:00:00.000Z",
        "userId": "user-1",
        "anonymousId": "anon-1",
        "context": CONTEXT,
        **fields,
    }


@pytest.fixture(scope="module")
def node_bin() -> str:
    """The ``node`` executable, once the pinned destination package is installed."""
    return node_with(PACKAGE)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def https(node: Node, tls: TlsFiles) -> Iterator[int]:
    """The port of HTTPS in front of ``node``."""
    with tls_terminator(node.port, tls) as port:
        yield port


def run(node_bin: str, tls: TlsFiles, url: str, key: str, calls: list[Any]) -> list[Any]:
    """What ``onEvent``/``onBatch`` returned for each call (or the error it threw)."""
    done = subprocess.run(
        [node_bin, "segment.mjs"],
        input=json.dumps({"url": url, "apiKey": key, "calls": calls}),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=NODE_DIR,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(tls.ca)},
    )
    assert done.returncode == 0, f"driver failed:\n{done.stdout}{done.stderr}"
    results: list[Any] = json.loads(done.stdout)["results"]
    return results


def statuses(result: Any) -> list[int]:
    """The HTTP status of each event of an onBatch result."""
    return [entry["status"] for entry in result[0]["multistatus"]]


@pytest.mark.parametrize("prefix", ["", "/api/ingestion"], ids=["bare", "hosted"])
def test_track_and_identify_through_the_real_destination(
    node_bin: str, tls: TlsFiles, node: Node, https: int, prefix: str
) -> None:
    llm = segment_event(
        "track", event="Chat answered", userId=None, properties={"plan": "pro", **LLM_PROPERTIES}
    )
    plain = segment_event("track", event="Clicked", properties={"button": "go"})
    partial = segment_event(
        "track", event="Asked", properties={"$trubrics_prompt": "half"}, context={}
    )
    traits = {"name": "Ada", "address": {"city": "London", "geo": {"lat": 51.5}}}
    calls = [
        {"action": "track", "events": [llm]},
        {"action": "track", "events": [plain, partial]},
        {"action": "identify", "events": [segment_event("identify", traits=traits)]},
        {"action": "identify", "events": [segment_event("identify", userId="user-2")] * 2},
    ]
    single, batch, identified, identified_batch = run(
        node_bin, tls, f"127.0.0.1:{https}{prefix}", node.key, calls
    )
    assert single[-1]["output"] == "Action Executed"
    assert single[-1]["data"] == {"status": "success", "events": 2}
    assert statuses(batch) == [200, 200]
    assert identified[-1]["data"] == {"status": "success", "events": 1}
    assert statuses(identified_batch) == [200, 200]

    rows = node.export()
    events = [(row["event"], row["user_id"], row["source"]) for row in rows]
    assert events == [
        ("Prompt", "anon-1", "llm"),
        ("Generation", "anon-1", "llm"),
        ("Clicked", "user-1", "event"),
        ("Asked", "user-1", "event"),
        ("$identify", "user-1", "event"),
        ("$identify", "user-2", "event"),
        ("$identify", "user-2", "event"),
    ]
    prompt, generation, clicked, asked, identify, *_ = rows
    shared = {
        "plan": "pro",
        **LLM_PROPERTIES,
        "$context": CONTEXT,
        "$anonymous_id": "anon-1",
        "$segment_event": "Chat answered",
        "$thread_id": "thread-1",
    }
    sent = {name.removeprefix("$trubrics_"): field for name, field in LLM_PROPERTIES.items()}
    stored = [prompt["properties"], generation["properties"]]
    assert stored == llm_properties(prompt, generation, sent, shared)
    assert (prompt["timestamp"], generation["timestamp"]) == (
        "2026-06-20T11:59:58.000000Z",
        "2026-06-20T12:00:00.000000Z",
    )
    assert clicked["properties"] == {"button": "go", "$context": CONTEXT, "$anonymous_id": "anon-1"}
    assert asked["properties"] == {
        "$trubrics_prompt": "half",
        "$context": {},
        "$anonymous_id": "anon-1",
        "$llm_properties": {"prompt": "half"},
    }
    assert identify["properties"] == {**traits, "$anonymous_id": "anon-1"}
    assert identify["timestamp"] == "2026-06-20T12:00:00.000000Z"


def test_an_event_without_any_user_is_refused_with_its_batch(
    node_bin: str, tls: TlsFiles, node: Node, https: int
) -> None:
    """Segment leaves out a null userId; with no anonymousId either, the item has no user:
    the node answers 422 for the whole batch, and the destination throws it as an error
    (Segment's runtime then counts every event of the batch as failed)."""
    nobody = segment_event("track", event="Nobody", userId=None, anonymousId=None)
    somebody = segment_event("track", event="Somebody")
    (refused,) = run(
        node_bin,
        tls,
        f"127.0.0.1:{https}",
        node.key,
        [{"action": "track", "events": [somebody, nobody]}],
    )
    assert refused == {"error": "Unprocessable Entity", "status": 422}
    assert node.export() == []
