"""The shared key registry: keys managed in PostgreSQL, used by several nodes at once.

Real PostgreSQL (the module's own server: one test stops it), real ``serve --registry``
nodes over real sockets, keys managed with the real CLI.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from support.engines import PostgresServer, free_port
from support.node import CLI, Node
from support.waiting import wait_until
from trubrics_ingestion.keys.model import hash_key

EVENT = {"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}
REVOCATION_LIMIT_S = 10.0  # what the issue asks of every node
_SENT = itertools.count()


def registry_cli(url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "keys", *args, "--registry", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def create(url: str, project: str) -> dict[str, str]:
    return json.loads(registry_cli(url, "create", "--project", project, "--json").stdout)


@pytest.fixture
def registry_nodes(postgres: PostgresServer, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Factory of nodes that take their keys from the module's PostgreSQL."""
    nodes: list[Node] = []

    def start(key: str = "", **env: str) -> Node:
        data_dir = tmp_path / f"node{len(nodes)}"
        env = {"TRUBRICS_REGISTRY": postgres.url, **env}
        node = Node(data_dir=data_dir, key=key, project="", env=env).start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        if node.process is not None:
            node.stop()


def publish(node: Node, key: str) -> int:
    """One event, distinct from every other (an identical body would be taken as a retry)."""
    event = {**EVENT, "user_id": f"u{next(_SENT)}"}
    return node.post("/publish_events", [event], key=key).status_code


def test_keys_are_created_listed_and_revoked_in_the_registry(postgres: PostgresServer) -> None:
    new = create(postgres.url, "shared")
    assert new["key"].startswith("trb_") and new["project"] == "shared"
    listed = [
        json.loads(line)
        for line in registry_cli(postgres.url, "list", "--json").stdout.split("\n")
        if line
    ]
    mine = [key for key in listed if key["id"] == new["id"]]
    assert mine == [
        {"id": new["id"], "project": "shared", "hint": "…" + new["key"][-4:], "state": "active"}
    ]
    # Only the hash is stored.
    dump = postgres.psql("SELECT id, project, key_hash, hint FROM trubrics_api_keys")
    assert hash_key(new["key"]) in dump and new["key"] not in dump
    assert "Revoked" in registry_cli(postgres.url, "revoke", new["id"]).stdout
    again = registry_cli(postgres.url, "revoke", new["id"], check=False)
    assert again.returncode == 1 and "no active key" in again.stderr


def test_a_bad_or_unreachable_registry_is_a_clear_error(tmp_path: Path) -> None:
    wrong = registry_cli("clickhouse://127.0.0.1:1/default", "list", check=False)
    assert wrong.returncode == 2 and "must be PostgreSQL" in wrong.stderr
    down = registry_cli("postgresql://postgres@127.0.0.1:1/postgres", "list", check=False)
    assert down.returncode == 1 and "key registry" in down.stderr and "Traceback" not in down.stderr
    serve = subprocess.run(
        [*CLI, "serve", "--data-dir", str(tmp_path), "--registry", "mysql://x/y"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert serve.returncode == 2 and "mysql" in serve.stderr


def test_two_nodes_share_keys_and_a_revocation_reaches_both_within_seconds(
    postgres: PostgresServer, registry_nodes: Callable[..., Node]
) -> None:
    first, second = registry_nodes(), registry_nodes()
    new = create(postgres.url, "two-nodes")
    # A key created a moment ago works on both at once: an unknown key waits for a fresh look.
    assert publish(first, new["key"]) == 200
    assert publish(second, new["key"]) == 200
    assert publish(first, "trb_" + "x" * 43) == 401
    other = create(postgres.url, "two-nodes")  # a second key of the project keeps working
    registry_cli(postgres.url, "revoke", new["id"])
    took = [
        wait_until(lambda node=node: publish(node, new["key"]) == 401, REVOCATION_LIMIT_S)
        for node in (first, second)
    ]
    assert max(took) < REVOCATION_LIMIT_S
    assert publish(first, other["key"]) == 200 and publish(second, other["key"]) == 200
    print(f"revocation took {took[0]:.2f} s and {took[1]:.2f} s more")
    for node in (first, second):
        assert {event["project"] for event in node.export()} == {"two-nodes"}


def test_nodes_seed_the_same_init_key_once(
    postgres: PostgresServer, registry_nodes: Callable[..., Node]
) -> None:
    key = "trb_" + secrets.token_urlsafe(32)
    env = {"TRUBRICS_INIT_PROJECT": "seeded", "TRUBRICS_INIT_API_KEY": key}
    nodes = [registry_nodes(**env), registry_nodes(**env)]
    assert [publish(node, key) for node in nodes] == [200, 200]
    rows = postgres.psql(f"SELECT id FROM trubrics_api_keys WHERE key_hash = '{hash_key(key)}'")
    (key_id,) = rows.split()  # one row, with a random id (not the hash's first digits)
    assert key_id.startswith("key_") and key_id != "key_" + hash_key(key)[:12]


def test_an_unreachable_registry_keeps_known_keys_and_says_so(
    postgres: PostgresServer, registry_nodes: Callable[..., Node]
) -> None:
    known = create(postgres.url, "outage")
    unknown = "trb_" + "u" * 43  # only the registry could say whether it is valid
    node = registry_nodes(TRUBRICS_KEY_REFRESH_INTERVAL_S="0.2")
    assert publish(node, known["key"]) == 200
    ready = _readyz(node)
    assert ready["key_registry"]["reachable"] is True and "warnings" not in ready
    postgres.stop()
    try:
        wait_until(lambda: not _readyz(node)["key_registry"]["reachable"], 15)
        assert publish(node, known["key"]) == 200  # known keys keep working
        refused = node.post("/publish_events", [EVENT], key=unknown)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert "registry" in refused.json()["detail"]
        ready = _readyz(node)  # still ready: the node stores what it accepts
        assert ready["status"] == "ready" and ready["key_registry"]["keys"] >= 1
        assert ready["warnings"] == ["key registry unreachable: serving known keys only"]
        metrics = requests.get(node.url + "/metrics", timeout=5).text
        assert "trubrics_key_registry_reachable 0.0" in metrics
        assert "key registry unreachable" in node.log()
    finally:
        postgres.start()
    wait_until(lambda: _readyz(node)["key_registry"]["reachable"], 15)
    assert publish(node, unknown) == 401
    assert publish(node, create(postgres.url, "outage")["key"]) == 200
    assert "reachable again" in node.log()
    assert len(node.export()) == 3
    assert known["key"] not in node.log()


def test_a_node_restarted_while_the_registry_is_down_still_knows_its_keys(
    postgres: PostgresServer, registry_nodes: Callable[..., Node]
) -> None:
    known = create(postgres.url, "restart")
    node = registry_nodes()
    assert publish(node, known["key"]) == 200
    assert node.stop() == 0
    postgres.stop()
    try:
        node.start()  # same data dir: the keys it last saw are in its store (hashes only)
        assert publish(node, known["key"]) == 200
        assert node.post("/publish_events", [EVENT], key="trb_" + "r" * 43).status_code == 503
        assert _readyz(node)["key_registry"]["reachable"] is False
    finally:
        postgres.start()
    files = [node.data_dir / "trubrics.db", node.data_dir / "trubrics.db-wal"]
    dump = b"".join(path.read_bytes() for path in files if path.exists())
    assert hash_key(known["key"]).encode() in dump and known["key"].encode() not in dump
    assert len(node.export()) == 2


class FreezingProxy:
    """A TCP relay to the registry that can stop relaying while keeping every connection
    open: a server that hangs instead of refusing (stopped process, frozen storage)."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, postgres: PostgresServer) -> str:
        return postgres.url.replace(f":{postgres.port}/", f":{self.port}/")

    def close(self) -> None:
        self.closed.set()
        for sock in [self.listener, *self.sockets]:
            sock.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            server = socket.create_connection(self.target, timeout=5)
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.1)
        while not self.closed.is_set():
            if self.frozen.is_set():
                time.sleep(0.05)
                continue
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            with contextlib.suppress(OSError):
                sink.sendall(data)


def test_a_registry_that_hangs_counts_as_unreachable(
    postgres: PostgresServer, registry_nodes: Callable[..., Node]
) -> None:
    """Not refused, just silent: known keys keep working, an unknown key gets 503 (not a
    401 that an SDK would take as final), and /readyz says so within seconds."""
    known = create(postgres.url, "hang")
    proxy = FreezingProxy(postgres.port)
    try:
        node = registry_nodes(TRUBRICS_REGISTRY=proxy.url(postgres))
        assert publish(node, known["key"]) == 200
        proxy.frozen.set()
        wait_until(lambda: not _readyz(node)["key_registry"]["reachable"], 15)
        assert publish(node, known["key"]) == 200
        started = time.monotonic()
        refused = node.post("/publish_events", [EVENT], key="trb_" + "h" * 43)
        assert refused.status_code == 503 and time.monotonic() - started < 5
        proxy.frozen.clear()
        wait_until(lambda: _readyz(node)["key_registry"]["reachable"], 30)
        assert publish(node, create(postgres.url, "hang")["key"]) == 200
    finally:
        proxy.close()


def test_readyz_and_metrics_show_the_forwarding_backlog(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    nowhere = "clickhouse://127.0.0.1:1/default"  # nothing listens: the backlog can only grow
    node = make_node(env={"TRUBRICS_FORWARD_TO": nowhere})
    assert node.post("/publish_events", [EVENT] * 30).status_code == 200

    def backlog() -> Any:
        return _readyz(node)["forwarding"][0]

    wait_until(lambda: backlog()["backlog_events"] == 30, 15)
    status = backlog()
    assert status["engine"] == "clickhouse://127.0.0.1:1/default"
    assert status["oldest_undelivered_age_s"] > 0
    metrics = requests.get(node.url + "/metrics", timeout=5).text
    assert (
        'trubrics_forward_backlog_events{engine="clickhouse://127.0.0.1:1/default"} 30.0' in metrics
    )
    assert "trubrics_forward_oldest_undelivered_age_seconds{" in metrics


def _readyz(node: Node) -> Any:
    answer = requests.get(node.url + "/readyz", timeout=5)
    assert answer.status_code == 200
    return answer.json()
