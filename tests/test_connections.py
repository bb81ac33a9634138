"""Connection limits: request head size and count (431), slow clients (408), connection cap
and buffered-body budget (503). Raw sockets, because well-behaved clients never trip them."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import requests

from support.node import Node, scrape, value
from support.processes import server_has_read
from support.waiting import wait_until

EVENT = {"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}


def raw_request(port: int, head: bytes, timeout: float = 10.0) -> tuple[int, dict[str, object]]:
    """Send ``head`` (and whatever body it carries), return the status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.partition(b"\r\n\r\n")[2] or b"{}")


def refused(node: Node, status: int) -> float:
    """How many requests the connection layer answered itself with ``status``."""
    return value(scrape(node), "trubrics_connections_refused_total", status=str(status))


def test_too_many_headers_get_431(node: Node) -> None:
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(150))
    status, body = raw_request(
        node.port, b"POST /publish_events HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n"
    )
    assert status == 431 and "headers" in str(body["detail"])
    assert refused(node, 431) == 1


def test_a_request_the_parser_refuses_gets_400_with_a_detail(node: Node) -> None:
    """uvicorn answers these in plain text; ours, like every refusal, in JSON naming why."""
    twice = b"content-length: 2\r\n" * 2
    cases = {
        b"POST /publish_events HTTP/1.1\r\nhost: x\r\n" + twice + b"\r\n[]": "Content-Length",
        b"GARBAGE\r\n\r\n": "method",
    }
    for head, named in cases.items():
        status, body = raw_request(node.port, head)
        assert status == 400 and named in str(body["detail"]), body
    assert refused(node, 400) == 2
    assert node.post("/publish_events", [EVENT]).status_code == 200, "the node serves on"


def test_oversized_head_gets_431_without_memory_growth(node: Node) -> None:
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(b"POST /publish_events HTTP/1.1\r\nhost: x\r\n")
        try:
            for _ in range(10_000):  # 10 MB of headers, if the server kept listening
                sock.sendall(b"x-junk: " + b"a" * 1000 + b"\r\n")
        except OSError:
            pass  # the server answered and closed: exactly what we want
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 431")
    assert (
        requests.post(
            node.url + "/publish_events", json=[EVENT], timeout=5, headers={"x-api-key": node.key}
        ).status_code
        == 200
    )


def test_a_trickling_client_is_cut_off_while_others_are_served(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(env={"TRUBRICS_REQUEST_TIMEOUT_S": "1.5"})
    slow = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    slow.sendall(
        b"POST /publish_events HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n"
        + f"x-api-key: {node.key}\r\n\r\n[".encode()
    )
    started = time.monotonic()
    served = 0
    while time.monotonic() - started < 1.0:  # meanwhile, others are served normally
        body = [{**EVENT, "user_id": f"other-{served}"}]
        assert node.post("/publish_events", body).status_code == 200
        served += 1
    reply = slow.recv(65536)
    elapsed = time.monotonic() - started
    slow.close()
    assert reply.startswith(b"HTTP/1.1 408") and b"detail" in reply
    assert 1.0 < elapsed < 5.0 and served > 5
    assert refused(node, 408) == 1 and refused(node, 431) == 0
    assert len(node.export()) == served


def test_an_idle_connection_is_closed(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(env={"TRUBRICS_REQUEST_TIMEOUT_S": "1"})
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as idle:
        started = time.monotonic()
        assert idle.recv(100) == b""  # closed by the server, nothing sent
        assert time.monotonic() - started < 5


def test_connections_beyond_the_cap_get_503(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(env={"TRUBRICS_MAX_CONNECTIONS": "4"})
    held = [socket.create_connection(("127.0.0.1", node.port), timeout=10) for _ in range(4)]
    try:
        status, body = raw_request(node.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status == 503 and body["detail"]
    finally:
        for sock in held:
            sock.close()
    # The server frees the slots once it notices the closes; until then it answers 503.
    statuses: list[int] = []

    def healthy() -> bool:
        statuses.append(requests.get(node.url + "/healthz", timeout=5).status_code)
        return statuses[-1] == 200

    wait_until(healthy, 10, "a 200")
    assert set(statuses) <= {200, 503}
    assert refused(node, 503) == 1 + statuses.count(503)


def test_buffered_bodies_are_bounded(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(env={"TRUBRICS_MAX_BUFFERED_BYTES": "65536"})
    hog = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    hog.sendall(
        b"POST /publish_events HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n"
        + f"x-api-key: {node.key}\r\n\r\n".encode()
        + b"["
        + b" " * 60_000
    )
    wait_until(lambda: server_has_read(node.port, hog), 10, "the hog's 60 kB to be buffered")
    response = node.post("/publish_events", [{**EVENT, "properties": {"pad": "x" * 10_000}}])
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["detail"]
    hog.close()  # its hold is released once the server notices: soon, not at once
    wait_until(lambda: node.post("/publish_events", [EVENT]).status_code == 200, 10, "a 200")


def test_memory_stays_bounded_under_many_slow_uploads(make_node) -> None:  # type: ignore[no-untyped-def]
    """200 clients each start a 1 MB upload and stall: without the budget that is 200 MB
    held; with 16 MB of budget, most are refused at once and the process stays small."""
    node: Node = make_node(env={"TRUBRICS_MAX_BUFFERED_BYTES": str(16 * 1024 * 1024)})
    assert node.process is not None
    status = Path(f"/proc/{node.process.pid}/status")
    before = _rss_kib(status)
    socks = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
            sock.sendall(
                b"POST /publish_events HTTP/1.1\r\nhost: x\r\n"
                + f"x-api-key: {node.key}\r\ncontent-length: 1048576\r\n\r\n".encode()
                + b"["
                + b" " * 1_000_000
            )
            socks.append(sock)
        time.sleep(0.5)
        grown_mib = (_rss_kib(status) - before) / 1024
        assert grown_mib < 64, f"RSS grew by {grown_mib:.0f} MiB"
        assert node.post("/publish_events", [EVENT]).status_code in (200, 503)
    finally:
        for sock in socks:
            sock.close()


def _rss_kib(status: Path) -> int:
    line = next(line for line in status.read_text().splitlines() if line.startswith("VmRSS"))
    return int(line.split()[1])
