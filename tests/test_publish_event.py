"""POST /publish_event against a real server: one event object, as ``trubrics-beta``
(PyPI 0.3.0, run for real here) and the first version of Segment's Trubrics destination
send it, the latter with the key in the ``project_api_key`` query parameter.

That first version is no longer published (``@segment/action-destinations`` carries only
the current one, see ``test_segment_destination.py``), so it is tested with the exact
request its code built (``trubrics/track/index.ts`` at segmentio/action-destinations
633b4a70): ``POST https://{url}/publish_event?project_api_key={apiKey}`` with
``{event, properties: {...renamed properties, ...context}, traits, timestamp, user_id}``.
"""

from __future__ import annotations

import signal
import socket
from datetime import UTC, datetime, timedelta
from importlib.metadata import version

import pytest
import requests
from trubrics_beta import Trubrics

from support.node import Node, create_key

HOST_STYLES = pytest.mark.parametrize("prefix", ["", "/api/ingestion"], ids=["bare", "hosted"])
EVENT = {"user_id": "user-1", "event": "Signed up", "timestamp": "2026-06-20T12:00:00Z"}


@HOST_STYLES
def test_one_event_is_stored_as_a_batch_of_one(node: Node, prefix: str) -> None:
    sent = {**EVENT, "properties": {"plan": "pro", "$thread_id": "t-1"}, "extra": 1}
    response = node.post(prefix + "/publish_event", sent)
    assert response.json() == {"status": "success", "events": 1}
    (row,) = node.export()
    assert (row["user_id"], row["event"], row["source"]) == ("user-1", "Signed up", "event")
    assert row["timestamp"] == "2026-06-20T12:00:00.000000Z"
    assert (row["properties"], row["thread_id"]) == ({"plan": "pro", "$thread_id": "t-1"}, "t-1")


def test_problems_are_named_without_an_index(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(env={"TRUBRICS_MAX_DEPTH": "2", "TRUBRICS_MAX_EVENT_BYTES": "1024"})
    bad = {"user_id": 7, "event": "", "properties": {"a": {"b": {"c": 1}}}}
    response = node.post("/publish_event", bad)
    assert response.status_code == 422
    assert [(error["loc"], error["type"]) for error in response.json()["detail"]] == [
        (["body", "properties"], "too_deep"),
        (["body", "user_id"], "string_type"),
        (["body", "event"], "string_too_short"),
        (["body", "timestamp"], "missing"),
    ]
    big = node.post("/publish_event", {**EVENT, "properties": {"text": "x" * 2000}})
    assert [(e["loc"], e["type"]) for e in big.json()["detail"]] == [(["body"], "too_large")]
    for body, kind in [
        (b"[" + bytes(str(EVENT).replace("'", '"'), "ascii") + b"]", "dict_type"),
        (b'{"user_id": "u"}, {"user_id": "v"}', "json_invalid"),
        (b"{", "json_invalid"),
        (b'"text"', "dict_type"),
    ]:
        response = node.post("/publish_event", data=body)
        assert response.status_code == 422, body
        assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(["body"], kind)]
    assert node.export() == []


def test_a_key_in_the_query_string_is_accepted_and_never_written(
    make_node,  # type: ignore[no-untyped-def]
) -> None:
    """Segment's first destination put the key in the URL. It is accepted there on
    /publish_event, and appears in nothing the node writes: its output (the access log,
    every other log line), its /metrics, its answers, its store."""
    node: Node = make_node(project="query-project", env={"TRUBRICS_LOG_LEVEL": "debug"})
    revoked = create_key(node.data_dir, "query-project")
    node.cli("keys", "revoke", revoked["id"])
    wrong = "trb_" + "Q" * 43
    answers = []

    def post(path: str, key: str, payload: object, status: int) -> None:
        response = requests.post(
            f"{node.url}{path}?project_api_key={key}", json=payload, timeout=10
        )
        assert response.status_code == status, (path, response.text)
        answers.append(response.text)

    post("/publish_event", node.key, EVENT, 200)
    post("/api/ingestion/publish_event", node.key, {**EVENT, "user_id": "u2"}, 200)
    post("/publish_event", node.key, {"event": "no user"}, 422)
    post("/publish_event", node.key + "&project_api_key=" + node.key, EVENT, 401)  # ambiguous
    post("/publish_event", wrong, EVENT, 401)
    post("/publish_event", revoked["key"], EVENT, 401)
    post("/publish_events", node.key, [EVENT], 401)  # only where a client sends it
    post("/publish_segment_events", node.key, [EVENT], 401)
    post("/no_such_path", node.key, EVENT, 404)
    header_wins = requests.post(
        f"{node.url}/publish_event?project_api_key={wrong}",
        json={**EVENT, "user_id": "u3"},
        headers={"x-api-key": node.key},
        timeout=10,
    )
    assert header_wins.status_code == 200
    answers.append(header_wins.text)
    answers.append(unparsable(node, f"/publish_event?project_api_key={node.key}"))
    metrics = requests.get(node.url + "/metrics", timeout=10).text
    assert [row["user_id"] for row in node.export()] == ["user-1", "u2", "u3"]
    assert node.stop(signal.SIGTERM) == 0

    output = node.log()
    assert '"path":"/publish_event"' in output and '"project":"query-project"' in output
    assert "project_api_key" not in output
    written = [output, metrics, *answers]
    written += [
        path.read_bytes().decode("latin-1") for path in node.data_dir.rglob("*") if path.is_file()
    ]
    for secret in (node.key, wrong, revoked["key"]):
        for text in written:
            assert secret not in text


def unparsable(node: Node, target: str) -> str:
    """The answer to a request the HTTP parser refuses (a header name with a space), sent
    to ``target``: one more way into the node's log."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(f"POST {target} HTTP/1.1\r\nhost: x\r\nbad header: 1\r\n\r\n".encode())
        answer = sock.recv(65536).decode("latin-1")
    assert answer.startswith("HTTP/1.1 400"), answer
    return answer


def test_segments_first_destination(node: Node) -> None:
    """Its exact request: $-renamed properties with the context merged in, traits beside."""
    context = {"library": {"name": "analytics-node", "version": "6.0.0"}, "locale": "en-US"}
    renamed = {"$assistant_id": "gpt-4o", "$thread_id": "thread-1", "$text": "Hi", "plan": "pro"}
    body = {
        "event": "User prompt",
        "properties": {**renamed, **context},
        "traits": {"email": "ada@example.com"},
        "timestamp": "2024-05-21T16:00:00.000Z",
        "user_id": "user-1",  # payload.user_id || payload.anonymous_id
    }
    url = f"{node.url}/api/ingestion/publish_event?project_api_key={node.key}"
    response = requests.post(url, json=body, timeout=10)
    assert response.json() == {"status": "success", "events": 1}
    (row,) = node.export()
    assert (row["user_id"], row["event"], row["thread_id"]) == ("user-1", "User prompt", "thread-1")
    assert row["properties"] == {**renamed, **context}
    assert row["timestamp"] == "2024-05-21T16:00:00.000000Z"


def test_the_pinned_beta_sdk_is_the_one_under_test() -> None:
    assert version("trubrics-beta") == "0.3.0"


@HOST_STYLES
def test_trubrics_beta_tracks_through_publish_event(node: Node, prefix: str) -> None:
    client = Trubrics(api_key=node.key, host=node.url + prefix)
    client.track(user_id="user-1", event="User prompt", properties={"$text": "Hi", "n": 1})
    client.track(user_id="user-2", event="No properties")  # properties: null
    client.executor.shutdown(wait=True)  # its requests run in a thread pool

    rows = sorted(node.export(), key=lambda row: row["user_id"])
    assert [(row["user_id"], row["event"]) for row in rows] == [
        ("user-1", "User prompt"),
        ("user-2", "No properties"),
    ]
    assert [row["properties"] for row in rows] == [{"$text": "Hi", "n": 1}, {}]
    for row in rows:  # stamped by the SDK with datetime.now(timezone.utc)
        assert abs(datetime.fromisoformat(row["timestamp"]) - datetime.now(UTC)) < timedelta(
            minutes=1
        )


def test_the_served_contract_has_the_other_clients_endpoints(node: Node) -> None:
    contract = requests.get(node.url + "/openapi.json", timeout=5).json()
    shared = contract["components"]["responses"]
    for path, body in [
        ("/publish_event", "#/components/schemas/Event"),
        ("/publish_segment_events", "#/components/schemas/SegmentTrack"),
        ("/identify_segment_users", "#/components/schemas/SegmentIdentify"),
    ]:
        operation = contract["paths"][path]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body in (schema.get("$ref"), schema.get("items", {}).get("$ref")), path
        responses = operation["responses"]
        assert {"200", "401", "413", "422", "429", "503"} <= set(responses), path
        for response in responses.values():
            assert response["$ref"].rsplit("/", 1)[1] in shared
    schemes = contract["paths"]["/publish_event"]["post"]["security"]
    assert schemes == [{"apiKeyAuth": []}, {"apiKeyQuery": []}]
    query = contract["components"]["securitySchemes"]["apiKeyQuery"]
    assert (query["in"], query["name"]) == ("query", "project_api_key")
