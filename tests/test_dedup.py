"""Retries without duplicates: a repeated body or Idempotency-Key is acknowledged, not stored."""

from __future__ import annotations

import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trubrics import Trubrics

from support.engines import free_port
from support.node import Node, create_key, scrape, value

BATCH = [{"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}]
DATA = Path(__file__).parent / "data"


def test_a_repeated_body_is_acknowledged_but_stored_once(node: Node) -> None:
    first = node.post("/publish_events", BATCH)
    again = node.post("/publish_events", BATCH)
    assert first.json() == {"status": "success", "events": 1}
    assert again.status_code == 200
    assert again.json() == {"status": "success", "events": 1, "duplicate": True}
    assert len(node.export()) == 1


def test_retries_are_recognised_after_a_crash(node: Node) -> None:
    assert node.post("/publish_llm_events", [{"user_id": "u", "prompt": "p", "generation": "g"}]).ok
    node.stop(signal.SIGKILL)
    node.start()
    again = node.post("/publish_llm_events", [{"user_id": "u", "prompt": "p", "generation": "g"}])
    assert again.json()["duplicate"] is True
    assert len(node.export()) == 2


def test_the_same_body_from_another_project_is_distinct(node: Node) -> None:
    other = create_key(node.data_dir, "other")["key"]
    assert node.post("/publish_events", BATCH).ok
    assert "duplicate" not in node.post("/publish_events", BATCH, key=other).json()
    assert sorted(e["project"] for e in node.export()) == ["other", node.project]


def test_concurrent_copies_are_stored_once(node: Node) -> None:
    body = [{**BATCH[0], "user_id": "concurrent"}]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: node.post("/publish_events", body), range(32)))
    assert {r.status_code for r in responses} == {200}
    assert sum("duplicate" not in r.json() for r in responses) == 1
    assert len(node.export()) == 1


def test_idempotency_keys(node: Node) -> None:
    def post(key: str, user: str) -> Any:
        body = [{**BATCH[0], "user_id": user}]
        return node.post("/publish_events", body, headers={"idempotency-key": key})

    assert "duplicate" not in post("k1", "a").json()
    assert post("k1", "a").json()["duplicate"] is True
    conflict = post("k1", "b")
    assert conflict.status_code == 409 and "different body" in conflict.json()["detail"]
    assert "duplicate" not in post("k2", "a").json(), "same body, another key: distinct batch"
    invalid = post("x" * 300, "c")
    assert invalid.status_code == 400 and invalid.json()["detail"]
    assert [e["user_id"] for e in node.export()] == ["a", "a"]


def test_the_window_is_configurable(make_node) -> None:  # type: ignore[no-untyped-def]
    node = make_node(env={"TRUBRICS_DEDUP_WINDOW_S": "1"})
    assert node.post("/publish_events", BATCH).ok
    assert node.post("/publish_events", BATCH).json()["duplicate"] is True
    time.sleep(1.2)
    assert "duplicate" not in node.post("/publish_events", BATCH).json()
    off = make_node(env={"TRUBRICS_DEDUP_WINDOW_S": "0"})
    assert off.post("/publish_events", BATCH).ok and off.post("/publish_events", BATCH).ok
    assert len(node.export()) == 2 and len(off.export()) == 2


def test_the_memory_holds_the_last_max_entries_batches(make_node) -> None:  # type: ignore[no-untyped-def]
    """Beyond the bound the oldest batch is forgotten at once, and counted: a retry of it
    is stored again (as documented), a retry of a recent one is still recognised, and so
    after a restart."""
    node = make_node(env={"TRUBRICS_DEDUP_MAX_ENTRIES": "5"})

    def post(n: int) -> Any:
        return node.post("/publish_events", [{**BATCH[0], "user_id": f"u{n}"}]).json()

    for n in range(8):
        assert "duplicate" not in post(n)
    assert value(scrape(node), "trubrics_dedup_evictions_total") == 3
    assert post(7)["duplicate"] is True  # recent: remembered
    assert post(3)["duplicate"] is True  # the oldest still remembered (3 to 7)
    assert "duplicate" not in post(2)  # forgotten: stored again, and it evicts u3
    assert value(scrape(node), "trubrics_dedup_evictions_total") == 4
    node.stop()
    node.start()  # the table on disk holds all nine: the newest five are loaded
    assert post(4)["duplicate"] is True and "duplicate" not in post(3)
    assert [e["user_id"] for e in node.export()] == [*(f"u{n}" for n in range(8)), "u2", "u3"]


class ResponseDroppingProxy:
    """Forwards HTTP to the server but, for the first request, hangs up instead of answering:
    the events are stored yet the client sees a failure, exactly a lost response."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.paths: list[str] = []
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(30)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self._upstream), timeout=30) as up:
            client.settimeout(30)
            request = _read_message(client)
            self.paths.append(request.split(b" ")[1].decode())
            up.sendall(request)
            response = _read_message(up)
            if len(self.paths) > 1:
                client.sendall(response)

    def close(self) -> None:
        self._listener.close()


def _read_message(sock: socket.socket) -> bytes:
    """One whole HTTP message (head and Content-Length body) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_the_python_sdk_retry_after_a_lost_response_is_not_stored_twice(node: Node) -> None:
    proxy = ResponseDroppingProxy(node.port)
    try:
        client = Trubrics(api_key=node.key, host=f"http://127.0.0.1:{proxy.port}")
        client.track(user_id="u", event="lost response")
        client.close()  # first POST "fails", the SDK sleeps 5 s and sends the same body again
    finally:
        proxy.close()
    # The SDK also posts its (empty) LLM batch; then it retries the events batch.
    assert proxy.paths == ["/publish_events", "/publish_llm_events", "/publish_events"]
    assert [e["event"] for e in node.export()] == ["lost response"]


def test_a_store_from_before_v7_still_recognises_retries(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Schema v7 keeps each fingerprint in its batch's row instead of a table of its own.
    ``data/store-v6.db`` was made by the v6 release's own server (``data/make_store_v6.py``)
    from these three batches: retries of them are still recognised once upgraded. The
    window is wide because the file was made long before the test runs."""
    made_by_v6 = [
        ("/publish_events", BATCH, {}),
        ("/publish_llm_events", [{"user_id": "u", "prompt": "p", "generation": "g"}], {}),
        ("/publish_events", [{**BATCH[0], "user_id": "k"}], {"idempotency-key": "k1"}),
    ]
    data_dir = tmp_path / "v6"
    data_dir.mkdir(mode=0o700)
    shutil.copy(DATA / "store-v6.db", data_dir / "trubrics.db")
    ten_years = str(10 * 365 * 86_400)
    node = make_node(project="v6", env={"TRUBRICS_DEDUP_WINDOW_S": ten_years}, data_dir=data_dir)
    for path, items, headers in made_by_v6:
        assert node.post(path, items, headers=headers).json()["duplicate"] is True, path
    assert "duplicate" not in node.post("/publish_events", [{**BATCH[0], "user_id": "new"}]).json()
    assert [e["user_id"] for e in node.export()] == ["u", "u", "u", "k", "new"]
