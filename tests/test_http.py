"""HTTP behaviour around the payload: keys, limits, gzip, methods, CORS, health, contract."""

from __future__ import annotations

import gzip
import json
import random
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

from support.node import Node

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


def test_answers_vary_on_origin_with_or_without_one(node: Node) -> None:
    """Requests without ``Origin`` skip the CORS middleware, yet get what it would add."""
    for origin in ({}, {"origin": "https://app.example.com"}):
        cors = [("access-control-allow-origin", "*")] if origin else []
        answers = {
            "/publish_events": (node.post("/publish_events", [EVENT], headers=origin), []),
            "401": (node.post("/publish_events", [EVENT], key=None, headers=origin), []),
            "405": (
                requests.get(node.url + "/publish_events", timeout=5, headers=origin),
                [("allow", "POST")],
            ),
        }
        for name, (response, extra) in answers.items():
            headers = [(k, v) for k, v in response.raw.headers.items() if k != "date"]
            length = str(len(response.content))
            expected = [("content-type", "application/json"), ("content-length", length)]
            assert headers == [*expected, *extra, *cors, ("vary", "Origin")], name


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


def healthz_while(
    node: Node, post: Callable[[], requests.Response]
) -> tuple[requests.Response, float]:
    """``post``'s answer, and the slowest of the ``/healthz`` answers asked meanwhile."""
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post)
        slowest = 0.0
        with requests.Session() as session:
            while not answer.done():
                started = time.perf_counter()
                assert session.get(node.url + "/healthz", timeout=10).status_code == 200
                slowest = max(slowest, time.perf_counter() - started)
                time.sleep(0.005)
        return answer.result(), slowest


GZIP_HEADERS = {"content-encoding": "gzip", "content-type": "application/json"}
EMPTY_MEMBER = gzip.compress(b"")
HEALTHZ_BOUND_S = 0.1


def test_many_empty_gzip_members_are_refused_at_once_and_never_stall_the_node(node: Node) -> None:
    """60,000 empty members (1.2 MB) took 1.3 s of the event loop: each one copied the rest."""
    body = EMPTY_MEMBER * 60_000 + gzip.compress(json.dumps([EVENT]).encode())
    started = time.perf_counter()
    response, slowest = healthz_while(
        node, lambda: node.post("/publish_events", data=body, headers=GZIP_HEADERS)
    )
    assert response.status_code == 400 and "1000" in response.json()["detail"]
    assert time.perf_counter() - started < 1.0
    assert slowest < HEALTHZ_BOUND_S, f"/healthz waited {slowest:.3f} s"


def test_gzip_members_up_to_the_cap_are_read_whole_off_the_loop(node: Node) -> None:
    """A 9 MB batch in 1000 members: read in one pass, in a thread, /healthz answered."""
    rng = random.Random(7)
    batch = [{**EVENT, "properties": {"text": rng.randbytes(45_000).hex()}} for _ in range(100)]
    text = json.dumps(batch).encode()
    step = -(-len(text) // 1000)
    members = [gzip.compress(text[i : i + step], 1) for i in range(0, len(text), step)]
    assert len(members) == 1000
    response, slowest = healthz_while(
        node, lambda: node.post("/publish_events", data=b"".join(members), headers=GZIP_HEADERS)
    )
    assert response.status_code == 200, response.text
    assert slowest < HEALTHZ_BOUND_S, f"/healthz waited {slowest:.3f} s"
    over = EMPTY_MEMBER + b"".join(members)
    response = node.post("/publish_events", data=over, headers=GZIP_HEADERS)
    assert response.status_code == 400 and "more than 1000" in response.json()["detail"]
    assert len(node.export()) == 100


def test_contract_and_server_agree_on_content_encoding(node: Node) -> None:
    """What the served document enumerates is accepted, and only that (schemathesis'
    negative_data_rejection check found an empty value accepted but not documented)."""
    contract = requests.get(node.url + "/openapi.json", timeout=5).json()
    documented = [
        param["schema"]["enum"]
        for operation in ("/publish_events", "/publish_llm_events")
        for param in contract["paths"][operation]["post"]["parameters"]
        if param["name"] == "Content-Encoding"
    ]
    assert documented[0] == documented[1]
    plain = json.dumps([EVENT]).encode()
    for value in ["", "identity", "gzip", "x-gzip", "br", "deflate", "zstd", "gzip, br", "*"]:
        data = gzip.compress(plain) if "gzip" in value else plain
        response = node.post("/publish_events", data=data, headers={"content-encoding": value})
        accepted = response.status_code == 200
        assert accepted == (value in documented[0]), (value, response.status_code, response.text)
        assert accepted or response.status_code == 415
