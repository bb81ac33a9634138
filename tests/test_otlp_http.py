"""POST /v1/traces and /v1/logs on a running node: OTLP/HTTP's answers, statuses and
media types, the same events from protobuf and from JSON, and no event lost or doubled by
a kill -9 while a call waits for its trace's root."""

from __future__ import annotations

import gzip
import time
from typing import Any

import requests
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from support import otlp
from support.node import Node, create_key, scrape, value
from support.processes import kill_node
from support.waiting import wait_until

PROTOBUF = {"content-type": "application/x-protobuf"}
JSON = {"content-type": "application/json"}
TRACE = "5b8efff798038103d269b633813fc60c"
ROOT, CALL = "eee19b7ec3c1b174", "eee19b7ec3c1b173"


def send(node: Node, request: Message, *, as_json: bool = False, **kw: Any) -> requests.Response:
    path = "/v1/traces" if "Trace" in type(request).__name__ else "/v1/logs"
    if as_json:
        return node.post(path, data=otlp.to_json(request), headers=JSON, **kw)
    return node.post(path, data=request.SerializeToString(), headers=PROTOBUF, **kw)


def trace_of(user: str) -> list[Message]:
    """A call then its root, the root naming ``user``, as two exports."""
    call = otlp.chat(
        TRACE,
        CALL,
        ROOT,
        gen_ai__input__messages='[{"role": "user", "parts": [{"content": "¿Qué?"}]}]',
    )
    root = otlp.span(TRACE, ROOT, attributes={"user.id": user, "session.id": "s-1"})
    return [otlp.traces(call), otlp.traces(root)]


def settled(node: Node, count: int, *args: str) -> list[dict[str, Any]]:
    """The node's events once it holds ``count`` of them."""
    wait_until(lambda: len(node.export(*args)) >= count, timeout_s=10)
    return node.export(*args)


def comparable(event: dict[str, Any]) -> dict[str, Any]:
    properties = {
        k: v for k, v in event["properties"].items() if k not in ("$prompt_id", "$generation_id")
    }
    kept = ("user_id", "event", "timestamp", "thread_id", "source")
    return {**{k: event[k] for k in kept}, "properties": properties}


def test_protobuf_and_json_of_the_same_spans_give_the_same_events(node: Node) -> None:
    json_key = create_key(node.data_dir, "json")["key"]
    for request in trace_of("u-1"):
        answer = send(node, request)
        assert answer.status_code == 200 and answer.content == b""
        assert answer.headers["content-type"] == "application/x-protobuf"
        answer = send(node, request, as_json=True, key=json_key)
        assert (answer.status_code, answer.json()) == (200, {})
        assert answer.headers["content-type"] == "application/json"
    from_protobuf = settled(node, 2, "--project", node.project)
    from_json = settled(node, 2, "--project", "json")
    assert [comparable(e) for e in from_protobuf] == [comparable(e) for e in from_json]
    assert [(e["user_id"], e["properties"].get("$text")) for e in from_json] == [
        ("u-1", "¿Qué?"),
        ("u-1", None),
    ]


def test_json_takes_integers_as_strings_or_numbers_gzip_chunks_and_the_hosted_prefix(
    node: Node,
) -> None:
    body = otlp.to_json(otlp.traces(otlp.chat(TRACE, CALL)))
    as_numbers = body.replace(b'"1780000000000000000"', b"1780000000000000000")
    assert as_numbers != body
    chunks = iter([gzip.compress(as_numbers)[:10], gzip.compress(as_numbers)[10:]])
    headers = {**JSON, "content-encoding": "gzip", "authorization": f"Bearer {node.key}"}
    answer = requests.post(
        node.url + "/api/ingestion/v1/traces", data=chunks, headers=headers, timeout=10
    )
    assert (answer.status_code, answer.json()) == (200, {})
    assert [e["timestamp"] for e in settled(node, 2)] == [
        "2026-05-28T20:26:40.000000Z",
        "2026-05-28T20:26:41.500000Z",
    ]


def test_refusals_with_otlp_statuses(make_node: Any) -> None:
    node = make_node(env={"TRUBRICS_MAX_BODY_BYTES": "4096"})
    request = otlp.traces(otlp.chat(TRACE, CALL))
    answers = {
        "garbage protobuf": node.post("/v1/traces", data=b"\xff\xff\xff\xff", headers=PROTOBUF),
        "garbage JSON": node.post("/v1/logs", data=b'{"resourceLogs": [', headers=JSON),
        "bad hex id": node.post(
            "/v1/traces", data=otlp.to_json(request).replace(TRACE.encode(), b"zz"), headers=JSON
        ),
        "no key": send(node, request, key=None),
        "wrong bearer": node.post(
            "/v1/traces",
            data=request.SerializeToString(),
            key=None,
            headers={**PROTOBUF, "authorization": "Bearer trb_not_a_key"},
        ),
        "text": node.post("/v1/traces", data=b"x", headers={"content-type": "text/plain"}),
        "too large": node.post("/v1/traces", data=b"\0" * 5000, headers=PROTOBUF),
        "GET": requests.get(node.url + "/v1/traces", timeout=5),
    }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "garbage protobuf": 400,
        "garbage JSON": 400,
        "bad hex id": 400,
        "no key": 401,
        "wrong bearer": 401,
        "text": 415,
        "too large": 413,
        "GET": 405,
    }
    assert "not an OTLP protobuf export of traces" in answers["garbage protobuf"].json()["detail"]
    time.sleep(0.5)
    assert node.export() == []
    samples = scrape(node)
    assert value(samples, "trubrics_batches_rejected_total", reason="invalid_otlp") == 3
    assert value(samples, "trubrics_http_requests_total", endpoint="/v1/traces", status="415") == 1


def test_unusable_spans_are_refused_in_a_partial_success(node: Node) -> None:
    short_ids = otlp.chat(TRACE, CALL)
    short_ids["trace_id"] = b"\x01\x02\x03\x04"
    backwards = otlp.chat(TRACE, ROOT)
    backwards["end_time_unix_nano"] = backwards["start_time_unix_nano"] - 1
    request = otlp.traces(otlp.chat(TRACE, "0000000000000001"), short_ids, backwards)
    answer = send(node, request)
    assert answer.status_code == 200
    response = ExportTraceServiceResponse.FromString(answer.content)
    assert response.partial_success.rejected_spans == 2
    assert (
        "1 spans with an invalid trace, span or parent id" in response.partial_success.error_message
    )
    in_json = send(node, request, as_json=True).json()["partialSuccess"]
    assert in_json["rejectedSpans"] == 2 and "1 GenAI spans ending" in in_json["errorMessage"]
    assert len(settled(node, 2)) == 2  # the good span, once (the JSON one repeats it)


def test_other_spans_and_logs_are_counted_not_stored(node: Node) -> None:
    plain = otlp.span(TRACE, ROOT, attributes={"http.method": "GET"})
    assert send(node, otlp.traces(plain)).status_code == 200
    other_log = otlp.log_record(TRACE, ROOT, "app.click")
    assert send(node, otlp.logs(other_log)).status_code == 200
    samples = scrape(node)
    assert value(samples, "trubrics_otlp_spans_total", kind="other") == 1
    assert value(samples, "trubrics_otlp_log_records_total", kind="other") == 1
    assert value(samples, "trubrics_http_requests_total", endpoint="/v1/logs", status="200") == 1
    assert node.cli("events", "count").stdout.strip() == "0"


def test_kill_9_while_a_call_waits_for_its_root_loses_and_doubles_nothing(node: Node) -> None:
    call, root = trace_of("u-kill")
    assert send(node, call).status_code == 200
    time.sleep(0.5)  # the resolver holds the call (its root has not come)
    assert node.export() == []
    kill_node(node)
    node.start()
    assert send(node, root).status_code == 200
    events = settled(node, 2)
    assert [(e["event"], e["user_id"]) for e in events] == [
        ("Prompt", "u-kill"),
        ("Generation", "u-kill"),
    ]
    kill_node(node)
    node.start()
    time.sleep(1.0)
    assert node.export() == events


def test_a_call_whose_window_passed_while_the_node_was_down_is_stored_at_start(
    make_node: Any,
) -> None:
    node = make_node(env={"TRUBRICS_OTLP_WINDOW_S": "1"})
    call, _ = trace_of("u-window")
    assert send(node, call).status_code == 200
    kill_node(node)
    time.sleep(1.2)
    node.start()
    events = settled(node, 2)
    assert {e["user_id"] for e in events} == {f"trace:{TRACE}"}  # its root never came
    assert value(scrape(node), "trubrics_otlp_calls_resolved_total", by="window") == 1


def test_the_rate_limit_counts_two_events_per_genai_span_and_says_when_to_retry(
    make_node: Any,
) -> None:
    node = make_node(env={"TRUBRICS_RATE_LIMIT_EVENTS_PER_S": "1"})  # a burst of 200 events
    calls = [otlp.chat(TRACE, f"{index + 1:016x}") for index in range(100)]
    assert send(node, otlp.traces(*calls)).status_code == 200
    refused = send(node, otlp.traces(otlp.chat(TRACE, ROOT)))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
