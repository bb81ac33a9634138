"""A 200 is a promise: acknowledged events survive restarts, SIGTERM and SIGKILL."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import requests

from support.node import Node

EVENT = {"event": "e", "timestamp": "2026-06-20T12:00:00Z"}


def batch(tag: str, size: int = 20) -> list[dict[str, object]]:
    return [{**EVENT, "user_id": f"{tag}-{i}"} for i in range(size)]


def test_events_survive_a_graceful_restart(node: Node) -> None:
    assert node.post("/publish_events", batch("a")).status_code == 200
    assert node.stop(signal.SIGTERM) == 0
    node.start()
    assert node.post("/publish_events", batch("b")).status_code == 200
    assert [e["user_id"] for e in node.export()] == [f"a-{i}" for i in range(20)] + [
        f"b-{i}" for i in range(20)
    ]


def test_every_acknowledged_event_survives_sigkill_under_load(node: Node) -> None:
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def publish(worker: int) -> None:
        session = requests.Session()
        for n in range(10_000):
            if stop.is_set():
                return
            tag = f"w{worker}-b{n}"
            try:
                response = session.post(
                    node.url + "/publish_events",
                    json=batch(tag, 10),
                    headers={"x-api-key": node.key},
                    timeout=5,
                )
            except requests.RequestException:
                return
            if response.status_code == 200:
                with lock:
                    acked.append(tag)

    with ThreadPoolExecutor(8) as pool:
        for worker in range(8):
            pool.submit(publish, worker)
        while len(acked) < 200:
            threading.Event().wait(0.01)
        node.stop(signal.SIGKILL)
        stop.set()
    node.start()
    stored = [e["user_id"] for e in node.export()]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    missing = {f"{tag}-{i}" for tag in acked for i in range(10)} - set(stored)
    assert not missing, f"{len(missing)} acknowledged events lost"
