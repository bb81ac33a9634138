"""OTLP against ``/publish_llm_events``: the same LLM calls sent both ways to a real node.

Each request carries 100 calls: as an OTLP/HTTP protobuf export of 100 GenAI spans
(OpenTelemetry's conventions, content on the span, each span the root of its own trace,
so each is resolved as soon as it is read), or as 100 LLM events. Every request is unique
(the dedup would answer repeats without storing them). A Python client on the load core
(``PINNING``) sends them over keep-alive connections; the node runs as ``serve`` starts it.

The figures, per way: events stored per second, from the first request until the store
holds all 200 events of every request (for OTLP: until the resolver has stored them),
and the node's CPU (all its processes) over that time per call, a span or an LLM event.
Short: a few thousand calls each.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from node import CLI, PINNING, Server, running, settle, tree_cpu_seconds

CALLS_PER_REQUEST = 100
REQUESTS = 60  # per way: 6,000 calls, 12,000 events
CONNECTIONS = 8
START_NS = 1_780_000_000_000_000_000
MESSAGES_IN = json.dumps(
    [{"role": "user", "parts": [{"type": "text", "content": "What is product analytics?"}]}]
)
MESSAGES_OUT = json.dumps(
    [{"role": "assistant", "parts": [{"type": "text", "content": "It tracks users."}]}]
)
Body = tuple[str, bytes, str]  # path, body, content type


def _attribute(key: str, value: str | int) -> KeyValue:
    any_value = (
        AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
    )
    return KeyValue(key=key, value=any_value)


def otlp_body(request: int) -> Body:
    """An export of 100 GenAI spans, each its own trace's root, naming its user."""
    spans = []
    for index in range(CALLS_PER_REQUEST):
        start = START_NS + (request * CALLS_PER_REQUEST + index) * 1_000_000
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.usage.output_tokens": 5,
            "gen_ai.input.messages": MESSAGES_IN,
            "gen_ai.output.messages": MESSAGES_OUT,
            "user.id": f"user_{index % 10}",
            "session.id": f"thread_{request}",
        }
        spans.append(
            {
                "trace_id": (request * CALLS_PER_REQUEST + index + 1).to_bytes(16, "big"),
                "span_id": (index + 1).to_bytes(8, "big"),
                "name": "chat gpt-4o",
                "kind": 3,
                "start_time_unix_nano": start,
                "end_time_unix_nano": start + 1_200_000_000,
                "attributes": [_attribute(k, v) for k, v in attributes.items()],
            }
        )
    resource = [_attribute("service.name", "bench")]
    export = ExportTraceServiceRequest(
        resource_spans=[{"resource": {"attributes": resource}, "scope_spans": [{"spans": spans}]}]
    )
    return "/v1/traces", export.SerializeToString(), "application/x-protobuf"


def llm_body(request: int) -> Body:
    """The same calls as 100 LLM events."""
    events = [
        {
            "user_id": f"user_{index % 10}",
            "prompt": "What is product analytics?",
            "generation": "It tracks users.",
            "assistant_id": "gpt-4o-2024-08-06",
            "latency": 1.2,
            "timestamp": "2026-05-28T20:26:41.200000Z",
            "properties": {"$input_tokens": 12, "$output_tokens": 5, "request": request},
            "thread_id": f"thread_{request}",
        }
        for index in range(CALLS_PER_REQUEST)
    ]
    return "/publish_llm_events", json.dumps(events).encode(), "application/json"


WAYS: dict[str, Callable[[int], Body]] = {"otlp": otlp_body, "publish_llm_events": llm_body}


def send_all(server: Server, bodies: list[Body]) -> int:
    """POST every body over ``CONNECTIONS`` keep-alive connections; how many got a 200."""
    queue = iter(bodies)
    lock = threading.Lock()
    ok = [0]

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        while True:
            with lock:
                item = next(queue, None)
            if item is None:
                break
            path, body, media = item
            headers = {"content-type": media, "x-api-key": server.key}
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            with lock:
                ok[0] += response.status == 200
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ok[0]


def stored(server: Server) -> int:
    out = subprocess.run(
        [*CLI, "events", "count", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out)


@contextmanager
def on_load_core() -> Iterator[None]:
    """This process (the client) on the load core while it sends, as wrk would be."""
    before = os.sched_getaffinity(0)
    if PINNING.wrk:
        os.sched_setaffinity(0, {int(PINNING.wrk[-1])})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def measure_way(way: str, workdir: Path, requests: int) -> dict[str, Any]:
    """One fresh node, loaded with ``requests`` bodies of one way."""
    bodies = [WAYS[way](index) for index in range(requests)]
    expected = 2 * CALLS_PER_REQUEST * requests
    (workdir / way).mkdir()
    with running("node", workdir / way) as server:
        settle(server, 30)
        pid = server.process.pid
        cpu_before, started = tree_cpu_seconds(pid), time.monotonic()
        with on_load_core():
            ok = send_all(server, bodies)
        while stored(server) < expected and time.monotonic() - started < 120:
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        count = stored(server)
        settle(server, 30)
        cpu = tree_cpu_seconds(pid) - cpu_before
    calls = CALLS_PER_REQUEST * requests
    return {
        "requests_ok": ok,
        "stored_events": count,
        "verified": ok == requests and count == expected,
        "events_per_s": count / elapsed,
        "cpu_us_per_call": 1e6 * cpu / calls,
    }


def measure(workdir: Path, requests: int = REQUESTS) -> dict[str, Any]:
    """Both ways, in alternating order over two rounds; the best round of each (the
    machine is shared and noisy, and two rounds have no median worth the name)."""
    rounds: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    for index, order in enumerate((tuple(WAYS), tuple(reversed(WAYS)))):
        for way in order:
            round_dir = workdir / f"otlp-{index}"
            round_dir.mkdir(exist_ok=True)
            result = measure_way(way, round_dir, requests)
            rounds[way].append(result)
            print(
                f"otlp bench round {index + 1} {way:>18}: {result['events_per_s']:>9,.0f} events/s"
                f"  CPU {result['cpu_us_per_call']:6.1f} us/call  stored {result['stored_events']}",
                flush=True,
            )
    best = {way: max(runs, key=lambda r: r["events_per_s"]) for way, runs in rounds.items()}
    otlp, llm = best["otlp"], best["publish_llm_events"]
    return {
        "calls_per_way": requests * CALLS_PER_REQUEST,
        "best": best,
        "rounds": rounds,
        "events_per_s_ratio": otlp["events_per_s"] / llm["events_per_s"],
        "cpu_ratio": otlp["cpu_us_per_call"] / llm["cpu_us_per_call"],
        "verified": all(r["verified"] for runs in rounds.values() for r in runs),
    }


def print_summary(summary: dict[str, Any]) -> None:
    best = summary["best"]
    print(
        f"\nOTLP vs /publish_llm_events ({summary['calls_per_way']:,} calls each way, 100 per"
        " request; events/s until all are stored; node CPU per call, best of 2 rounds):"
    )
    labels = {"otlp": "OTLP protobuf, 100 GenAI spans", "publish_llm_events": "/publish_llm_events"}
    for way, label in labels.items():
        row = best[way]
        print(
            f"  {label:32} {row['events_per_s']:>9,.0f} events/s"
            f"  {row['cpu_us_per_call']:6.1f} us/call"
        )
    print(
        f"  OTLP / publish: events/s {summary['events_per_s_ratio']:.2f},"
        f" CPU per call {summary['cpu_ratio']:.2f}; every call stored:"
        f" {'yes' if summary['verified'] else 'NO'}"
    )


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-otlp-") as tmp:
        results = measure(Path(tmp))
    print_summary(results)
    sys.exit(0 if results["verified"] else 1)
