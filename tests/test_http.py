"""HTTP behaviour around the payload: keys, limits, gzip, methods, CORS, health, contract."""

from __future__ import annotations

import gzip
import json
import socket
from pathlib import Path

import requests
import yaml

from conftest import Node

EVENT = {"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}
SEED_SPEC = Path(__file__).parents[1] / "spec" / "trubrics-openapi.yml"  # the upstream contract


def test_missing_unknown_and_malformed_keys_get_401(node: Node) -> None:
    for key in (
        None,
        "",
        "trb_unknown_but_well_formed_key_123456",
        "short",
        "bad key with spaces",
    ):
        response = node.post("/publish_events", [EVENT], key=key)
        assert response.status_code == 401, key
        assert isinstance(response.json()["detail"], str) and response.json()["detail"]
    assert node.export() == []


def test_body_over_the_limit_gets_413(make_node) -> None:  # type: ignore[no-untyped-def]
    node = make_node(env={"TRUBRICS_MAX_BODY_BYTES": "4096"})
    big = [{**EVENT, "properties": {"text": "x" * 5000}}]
    response = node.post("/publish_events", big)
    assert response.status_code == 413 and "4096" in response.json()["detail"]
    chunked = node.post("/publish_events", data=iter([json.dumps(big).encode()]))  # no length
    assert chunked.status_code == 413
    assert node.export() == []


def test_gzip_body_is_accepted(node: Node) -> None:
    body = gzip.compress(json.dumps([EVENT] * 3).encode())
    response = node.post("/publish_events", data=body, headers={"content-encoding": "gzip"})
    assert response.status_code == 200 and response.json()["events"] == 3
    assert len(node.export()) == 3


def test_gzip_bomb_gets_413_not_memory(node: Node) -> None:
    bomb = gzip.compress(b"[" + b" " * (200 * 1024 * 1024) + b"]", compresslevel=9)
    assert len(bomb) < 1024 * 1024
    response = node.post("/publish_events", data=bomb, headers={"content-encoding": "gzip"})
    assert response.status_code == 413
    rss_kib = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{node.process.pid}/status").read_text().splitlines()
            if line.startswith("VmHWM")
        )
    )
    assert rss_kib < 150 * 1024, f"peak RSS {rss_kib} KiB"


def test_broken_gzip_and_unknown_encodings(node: Node) -> None:
    response = node.post("/publish_events", data=b"not gzip", headers={"content-encoding": "gzip"})
    assert response.status_code == 400 and response.json()["detail"]
    response = node.post("/publish_events", data=b"[]", headers={"content-encoding": "br"})
    assert response.status_code == 415 and response.json()["detail"]


def test_wrong_method_and_unknown_path(node: Node) -> None:
    response = requests.get(node.url + "/publish_events", timeout=5)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["detail"]
    response = node.post("/publish_everything", [EVENT])
    assert response.status_code == 404 and response.json()["detail"]
    assert node.post("/healthz", [EVENT]).status_code == 405


def test_cors_preflight_allows_api_key_header(node: Node) -> None:
    response = requests.options(
        node.url + "/publish_events",
        timeout=5,
        headers={
            "origin": "https://app.example.com",
            "access-control-request-method": "POST",
            "access-control-request-headers": "x-api-key, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "x-api-key" in allowed and "content-type" in allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    posted = node.post("/publish_events", [EVENT], headers={"origin": "https://app.example.com"})
    assert posted.status_code == 200 and posted.headers["access-control-allow-origin"] == "*"


def test_cors_origins_are_configurable(make_node) -> None:  # type: ignore[no-untyped-def]
    node = make_node(env={"TRUBRICS_CORS_ORIGINS": "https://good.example"})
    headers = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "x-api-key",
    }
    good = requests.options(
        node.url + "/publish_events",
        timeout=5,
        headers={"origin": "https://good.example", **headers},
    )
    assert good.headers["access-control-allow-origin"] == "https://good.example"
    bad = requests.options(
        node.url + "/publish_events",
        timeout=5,
        headers={"origin": "https://evil.example", **headers},
    )
    assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers


def test_health_readiness_and_contract(node: Node) -> None:
    assert requests.get(node.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(node.url + "/readyz", timeout=5).json() == {"status": "ready"}
    served = requests.get(node.url + "/openapi.json", timeout=5).json()
    seed = yaml.safe_load(SEED_SPEC.read_text())
    for path, operations in seed["paths"].items():
        for method, operation in operations.items():
            assert served["paths"][path][method]["operationId"] == operation["operationId"]
            assert {"200", "401", "413", "422"} <= set(served["paths"][path][method]["responses"])
    for name, schema in seed["components"]["schemas"].items():
        assert set(schema.get("properties", {})) <= set(
            served["components"]["schemas"][name]["properties"]
        )


def test_a_client_that_disconnects_mid_body_does_not_hurt(node: Node) -> None:
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
        sock.sendall(
            b"POST /publish_events HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n"
            + f"x-api-key: {node.key}\r\n\r\n[".encode()
        )
    assert node.post("/publish_events", [EVENT]).status_code == 200
    assert len(node.export()) == 1


def test_trailing_and_doubled_slashes_from_sdk_hosts_are_tolerated(node: Node) -> None:
    for path in ("//publish_events", "/api/ingestion//publish_events", "/publish_events/"):
        assert node.post(path, [{**EVENT, "user_id": path}]).status_code == 200, path
    assert len(node.export()) == 3


def raw_post(node: Node, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes, bytes]:
    """POST /publish_events with exactly these header lines (repeats included): status,
    head and body of the answer."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    request = f"POST /publish_events HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{head}\r\n"
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(request.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    head_bytes, _, content = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), head_bytes, content


def test_a_repeated_single_value_header_gets_400_naming_it(node: Node) -> None:
    """A proxy in front may read the first copy, we would read the last: refused, even
    when both copies agree, and nothing is stored."""
    body = json.dumps([EVENT]).encode()
    plain = [("content-type", "application/json"), ("content-length", str(len(body)))]
    gzipped = gzip.compress(body)
    repeats = {
        "x-api-key": [*plain, ("x-api-key", node.key), ("x-api-key", node.key)],
        "idempotency-key": [
            *plain,
            ("x-api-key", node.key),
            ("idempotency-key", "a"),
            ("idempotency-key", "b"),
        ],
        "content-encoding": [
            ("content-length", str(len(gzipped))),
            ("x-api-key", node.key),
            ("content-encoding", "gzip"),
            ("content-encoding", "gzip"),
        ],
    }
    for name, headers in repeats.items():
        sent = gzipped if name == "content-encoding" else body
        status, head, content = raw_post(node, headers, sent)
        assert status == 400, (name, content)
        assert b"application/json" in head
        detail = json.loads(content)["detail"]
        assert detail == f"The {name} header was sent more than once; send it once."
    # content-length twice: httptools refuses it at the parser, with a 400 (not a 500).
    length = ("content-length", str(len(body)))
    status, _, content = raw_post(node, [length, length, ("x-api-key", node.key)], body)
    assert status == 400, content
    # Other headers may repeat.
    status, _, content = raw_post(
        node, [*plain, ("x-api-key", node.key), ("x-a", "1"), ("x-a", "2")], body
    )
    assert status == 200, content
    assert len(node.export()) == 1
