"""Every line a node prints is one JSON object; one access line per request; no secrets."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime
from typing import Any

import requests

from support.node import Node, create_key
from support.waiting import wait_until

EVENT = {"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}
LLM = {"user_id": "u", "prompt": "p", "generation": "g"}
ACCESS = "trubrics_ingestion.access"
ACCESS_FIELDS = {
    "time",
    "level",
    "logger",
    "msg",
    "method",
    "path",
    "status",
    "project",
    "events",
    "body_bytes",
    "latency_ms",
    "reason",
}


def lines(node: Node) -> list[dict[str, Any]]:
    """Every line of the node's output, each of which must be a JSON object."""
    parsed = []
    for number, line in enumerate(node.log().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "msg"} <= set(record), line
        parsed.append(record)
    return parsed


def access_lines(node: Node) -> list[dict[str, Any]]:
    """The access lines, without the fixture's /healthz polls while the node started."""
    return [r for r in lines(node) if r["logger"] == ACCESS and r["path"] != "/healthz"]


def utc(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


def test_every_line_is_json_startup_to_shutdown(node: Node) -> None:
    assert node.post("/publish_events", [EVENT]).status_code == 200
    assert node.post("/publish_events", [{}]).status_code == 422
    assert node.post("/publish_events", [EVENT], key=None).status_code == 401
    assert requests.get(node.url + "/nowhere", timeout=5).status_code == 404
    assert requests.get(node.url + "/metrics", timeout=5).status_code == 200
    assert node.stop(signal.SIGTERM) == 0

    records = lines(node)
    started = [r for r in records if r["msg"] == "starting"]
    assert len(started) == 1
    uvicorn = [r for r in records if r["logger"].startswith("uvicorn")]
    assert any("Uvicorn running" in r["msg"] for r in uvicorn)
    assert any("Finished server process" in r["msg"] for r in uvicorn)  # to the very end
    times = [utc(r["time"]) for r in records]
    assert all(t.tzinfo == UTC for t in times)


def test_the_startup_line_names_every_limit(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(
        env={
            "TRUBRICS_MAX_BODY_BYTES": "200000",
            "TRUBRICS_RATE_LIMIT_EVENTS_PER_S": "500",
            "TRUBRICS_DEDUP_WINDOW_S": "60",
            "TRUBRICS_MAX_CONNECTIONS": "77",
            "TRUBRICS_INIT_PROJECT": "seeded",
            "TRUBRICS_INIT_API_KEY": "trb_seeded-secret-that-must-not-be-logged",
        }
    )
    (started,) = [r for r in lines(node) if r["msg"] == "starting"]
    assert started["version"]
    node_settings = started["node"]
    assert node_settings["data_dir"] == str(node.data_dir.resolve())
    assert (node_settings["host"], node_settings["port"]) == ("127.0.0.1", node.port)
    assert started["payload_limits"] == {
        "max_body_bytes": 200000,
        "max_event_bytes": 1048576,
        "max_depth": 32,
    }
    assert started["http_limits"] == {
        "max_head_bytes": 65536,
        "max_headers": 100,
        "request_timeout_s": 60,
        "max_connections": 77,
        "max_buffered_bytes": 268435456,
        "shutdown_timeout_s": 8,
    }
    assert started["rate_limit"] == {"rate_limit_events_per_s": 500, "rate_limit_burst": None}
    assert started["dedup"] == {"dedup_window_s": 60, "dedup_max_entries": 100000}
    assert started["keys"] == {
        "registry": None,
        "key_refresh_interval_s": 0.5,
        "init_project": "seeded",  # the key itself: never
    }
    assert started["forwarding"] == {
        "forward_to": [],
        "forward_retention_s": None,
        "forward_max_backoff_s": 10,
    }
    assert started["metrics"] == {
        "metrics_per_project": False,
        "metrics_token": "this host only",
    }
    assert "seeded-secret" not in node.log()


def test_one_access_line_per_request(node: Node) -> None:
    llm = node.post("/api/ingestion/publish_llm_events", [LLM, LLM])
    assert llm.status_code == 200
    assert node.post("/publish_events", [EVENT] * 3).status_code == 200
    assert node.post("/publish_events", [EVENT] * 3).json()["duplicate"] is True
    assert node.post("/publish_events", [{"event": "no user"}]).status_code == 422
    assert node.post("/publish_events", [EVENT], key="trb_wrong-key-0000000000").status_code == 401
    preflight = requests.options(
        node.url + "/publish_events",
        headers={"origin": "https://app.example", "access-control-request-method": "POST"},
        timeout=5,
    )
    assert preflight.status_code == 200
    assert requests.get(node.url + "/readyz", timeout=5).status_code == 200

    # Lines are written at the end of the server's loop iteration: maybe just after the answer.
    wait_until(lambda: len(access_lines(node)) >= 7, 15)
    records = access_lines(node)
    assert all(set(r) == ACCESS_FIELDS for r in records), records
    assert [
        (r["method"], r["path"], r["status"], r["project"], r["events"], r["reason"])
        for r in records
    ] == [
        ("POST", "/api/ingestion/publish_llm_events", 200, node.project, 4, None),
        ("POST", "/publish_events", 200, node.project, 3, None),
        ("POST", "/publish_events", 200, node.project, 0, None),  # a repeat: nothing stored
        ("POST", "/publish_events", 422, node.project, 0, "invalid"),
        ("POST", "/publish_events", 401, None, 0, "unauthorized"),
        ("OPTIONS", "/publish_events", 200, None, 0, None),
        ("GET", "/readyz", 200, None, 0, None),
    ]
    three = len(json.dumps([EVENT] * 3))
    assert [r["body_bytes"] for r in records] == [
        len(json.dumps([LLM, LLM])),
        three,
        three,
        len(json.dumps([{"event": "no user"}])),
        None,  # refused before the body was read
        None,
        None,
    ]
    for record in records:
        assert record["level"] == "info" and record["msg"] == "request"
        assert isinstance(record["latency_ms"], float) and 0 <= record["latency_ms"] < 10_000
        assert abs((datetime.now(UTC) - utc(record["time"])).total_seconds()) < 60


def test_the_access_log_can_be_switched_off(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(env={"TRUBRICS_ACCESS_LOG": "false"})
    assert node.post("/publish_events", [EVENT]).status_code == 200
    records = lines(node)
    assert [r for r in records if r["logger"] == ACCESS] == []
    assert any(r["msg"] == "starting" and r["node"]["access_log"] is False for r in records)


def test_no_key_and_no_header_value_is_ever_written(make_node) -> None:  # type: ignore[no-untyped-def]
    """The key test: keys, good or bad, never reach the log or any file in the data dir,
    while the project they stand for does appear in the access lines."""
    node: Node = make_node(project="visible-project", env={"TRUBRICS_LOG_LEVEL": "debug"})
    other = create_key(node.data_dir, "second-project")["key"]
    revoked = create_key(node.data_dir, "second-project")
    node.cli("keys", "revoke", revoked["id"])
    bad_keys = [
        revoked["key"],
        "trb_" + "A" * 43,  # the right shape, unknown
        node.key[:-1] + ("x" if node.key[-1] != "x" else "y"),  # one character off
        node.key + "extra",
        "short",  # not a key at all
    ]
    secrets = [node.key, other, *bad_keys, "idem-secret-31337", "probe-value-4242"]
    probe = {"x-probe": "probe-value-4242", "user-agent": "probe-value-4242"}
    for n in range(3):
        batch = [{**EVENT, "user_id": f"u{n}"}]
        assert node.post("/publish_events", batch, headers=probe).status_code == 200
        assert node.post("/publish_llm_events", [LLM], key=other).status_code == 200
    idempotent = {"idempotency-key": "idem-secret-31337"}
    assert node.post("/publish_events", [EVENT], headers=idempotent).status_code == 200
    assert node.post("/publish_events", [{"event": "bad"}]).status_code == 422
    for bad in bad_keys:
        assert node.post("/publish_events", [EVENT], key=bad, headers=probe).status_code == 401
    assert node.post("/publish_events", [EVENT], key=None).status_code == 401
    node.cli("events", "export")  # read back, so every table the events pass through is used
    assert node.stop(signal.SIGTERM) == 0

    log = node.log()
    for secret in secrets:
        assert secret not in log, f"{secret!r} is in the log"
    files = [path for path in node.data_dir.rglob("*") if path.is_file()]
    assert any(path.name == "trubrics.db" for path in files)
    for path in files:
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, f"{secret!r} is in {path}"

    projects = [r["project"] for r in lines(node) if r["logger"] == ACCESS]
    assert projects.count("visible-project") == 5
    assert projects.count("second-project") == 3
    assert projects.count(None) >= len(bad_keys) + 1
    assert '"project":"visible-project"' in log
