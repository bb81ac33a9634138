"""GET /metrics: Prometheus text whose figures follow the requests a node has answered."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import uvicorn

from support.engines import free_port
from support.node import Node, Samples, create_key, scrape, value
from support.store import poison
from support.waiting import wait_until
from trubrics_ingestion.config import Settings
from trubrics_ingestion.keys.cache import KeyCache
from trubrics_ingestion.keys.local import StoreKeys
from trubrics_ingestion.node.server import build_app, uvicorn_config
from trubrics_ingestion.store import batches
from trubrics_ingestion.store import sqlite as store
from trubrics_ingestion.store.journal import Journal

EVENT = {"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}
LLM = {"user_id": "u", "prompt": "p", "generation": "g"}


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (found, labels) in samples if found == name]


def events(n: int, marker: str) -> list[dict[str, object]]:
    return [{**EVENT, "user_id": f"{marker}-{i}"} for i in range(n)]


def test_the_figures_follow_a_known_sequence_of_requests(make_node) -> None:  # type: ignore[no-untyped-def]
    node: Node = make_node(
        env={
            # 1 event/s with the smallest bucket allowed (one full batch, 200 events)
            "TRUBRICS_RATE_LIMIT_EVENTS_PER_S": "1",
            "TRUBRICS_MAX_BODY_BYTES": "65536",
            "TRUBRICS_MAX_EVENT_BYTES": "2048",
            "TRUBRICS_MAX_DEPTH": "3",
        }
    )
    before = scrape(node)
    assert value(before, "trubrics_events_accepted_total") == 0
    assert value(before, "trubrics_journal_commit_batches_count") == 0

    def post(path: str, payload: object, status: int, **kwargs: object) -> None:
        response = node.post(path, payload, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, response.text

    post("/publish_events", events(3, "a"), 200)  # 3 stored
    post("/publish_llm_events", [LLM, {**LLM, "prompt": "q"}], 200)  # 2 items: 4 stored
    post("/publish_events", events(3, "a"), 200)  # the same body again: a dedup hit
    post("/publish_events", events(1, "b"), 401, key="trb_not-a-key-of-this-node-000")
    post("/publish_events", [{"event": "no user"}], 422)
    post("/publish_events", [{**EVENT, "properties": {"a": {"b": {"c": {"d": 1}}}}}], 422)
    post("/publish_events", [{**EVENT, "properties": {"text": "x" * 3000}}], 422)
    too_big = events(1000, "c")
    assert len(json.dumps(too_big)) > 65536
    post("/publish_events", too_big, 413)
    post("/api/ingestion/publish_events", events(100, "d"), 200)  # 100 stored: ~90 tokens left
    post("/publish_events", events(100, "e"), 429)  # not 100 tokens yet

    after = scrape(node, "/api/ingestion/metrics")
    assert value(after, "trubrics_events_accepted_total") == 3 + 4 + 100
    assert value(after, "trubrics_dedup_hits_total") == 1
    assert value(after, "trubrics_rate_limit_hits_total") == 1
    rejected = {
        labels["reason"]: value(after, "trubrics_batches_rejected_total", **labels)
        for labels in series(after, "trubrics_batches_rejected_total")
    }
    assert {reason: n for reason, n in rejected.items() if n} == {
        "unauthorized": 1,
        "invalid": 1,
        "too_deep": 1,
        "too_large": 1,
        "payload_too_large": 1,
        "rate_limited": 1,
    }
    assert rejected["storage_unavailable"] == 0  # every reason is there from the start

    def requests_of(endpoint: str, status: str) -> float:
        return value(after, "trubrics_http_requests_total", endpoint=endpoint, status=status)

    assert requests_of("/publish_events", "200") == 3  # the prefix counts as the route
    assert requests_of("/publish_llm_events", "200") == 1
    assert requests_of("/publish_events", "401") == 1
    assert requests_of("/publish_events", "422") == 3
    assert requests_of("/publish_events", "413") == 1
    assert requests_of("/publish_events", "429") == 1
    assert requests_of("/metrics", "200") == 1  # the first scrape; this one is not over yet
    latency = "trubrics_http_request_duration_seconds_count"
    assert value(after, latency, endpoint="/publish_events") == 9
    assert value(after, latency, endpoint="/publish_llm_events") == 1

    # Four batches reached the journal (the repeat too); every commit holds at least one.
    commits = value(after, "trubrics_journal_commit_batches_count")
    assert value(after, "trubrics_journal_commit_batches_sum") == 4
    assert 1 <= commits <= 4
    assert value(after, "trubrics_journal_commit_seconds_count") == commits
    assert value(after, "trubrics_journal_commit_seconds_sum") > 0
    post("/publish_llm_events", [LLM], 200)
    again = scrape(node)
    assert value(again, "trubrics_journal_commit_batches_count") == commits + 1
    assert value(again, "trubrics_journal_commit_seconds_count") == commits + 1


def test_unknown_paths_share_one_label(node: Node) -> None:
    for path in ("/a", "/b/c", "/publish_events/x"):
        assert requests.get(node.url + path, timeout=5).status_code == 404
    samples = scrape(node)
    endpoints = {labels["endpoint"] for labels in series(samples, "trubrics_http_requests_total")}
    assert endpoints == {"/healthz", "other"}  # /healthz: the fixture waited for it
    assert value(samples, "trubrics_http_requests_total", endpoint="other", status="404") == 3


def test_quarantine_and_store_size_are_read_from_the_store(node: Node) -> None:
    samples = scrape(node)
    database = node.data_dir / "trubrics.db"
    assert value(samples, "trubrics_quarantined_batches") == 0
    assert value(samples, "trubrics_store_size_bytes") >= database.stat().st_size > 0
    assert node.post("/publish_events", events(50, "b")).status_code == 200
    conn = store.connect(database)
    batches.quarantine(conn, poison(database, node.project), "as a forwarder would")
    conn.close()
    samples = scrape(node)
    assert value(samples, "trubrics_quarantined_batches") == 1
    on_disk = database.stat().st_size + Path(f"{database}-wal").stat().st_size
    assert value(samples, "trubrics_store_size_bytes") == on_disk  # idle: nothing moves


def test_per_project_labels_only_when_enabled(make_node) -> None:  # type: ignore[no-untyped-def]
    def traffic(node: Node) -> Samples:
        other = create_key(node.data_dir, "other-project")["key"]
        assert node.post("/publish_events", events(2, "x")).status_code == 200
        assert node.post("/publish_events", events(5, "y"), key=other).status_code == 200
        assert node.post("/publish_events", [{}], key=other).status_code == 422
        unknown = "trb_unknown-key-000000"
        assert node.post("/publish_events", events(1, "z"), key=unknown).status_code == 401
        return scrape(node)

    plain = traffic(make_node(project="first-project"))
    assert series(plain, "trubrics_events_accepted_total") == [{}]
    assert value(plain, "trubrics_events_accepted_total") == 7
    for labels in series(plain, "trubrics_batches_rejected_total"):
        assert set(labels) == {"reason"}
    assert value(plain, "trubrics_batches_rejected_total", reason="invalid") == 1

    labelled = traffic(
        make_node(project="first-project", env={"TRUBRICS_METRICS_PER_PROJECT": "true"})
    )
    accepted = "trubrics_events_accepted_total"
    assert sorted(series(labelled, accepted), key=str) == [
        {"project": "first-project"},
        {"project": "other-project"},
    ]
    assert value(labelled, accepted, project="first-project") == 2
    assert value(labelled, accepted, project="other-project") == 5
    rejected = "trubrics_batches_rejected_total"
    assert value(labelled, rejected, reason="invalid", project="other-project") == 1
    assert value(labelled, rejected, reason="unauthorized", project="") == 1  # no key, no project
    for labels in series(labelled, rejected):
        assert set(labels) == {"reason", "project"}
    # Only those two: everything else stays per node.
    labelled_names = {name for name, labels in labelled if "project" in dict(labels)}
    assert labelled_names == {accepted, rejected}


# --- helpers -------------------------------------------------------------------------------


def test_every_refusal_of_a_batch_has_a_reason_label() -> None:
    from trubrics_ingestion import errors

    def subclasses(cls: type) -> list[type]:
        return [sub for child in cls.__subclasses__() for sub in (child, *subclasses(child))]

    # No batch was sent: a wrong route, or a node's internals asked for by a stranger.
    not_batches = {
        errors.NotFound,
        errors.MethodNotAllowed,
        errors.MetricsTokenRequired,
        errors.OperatorsOnly,
    }
    for cls in subclasses(errors.IngestionError):
        if cls not in not_batches:
            assert cls.reason in errors.REJECTION_REASONS, cls
    too_deep = errors.InvalidPayload([{"loc": ["body", 0], "msg": "m", "type": "too_deep"}])
    assert (too_deep.reason, errors.InvalidPayload([{"type": "missing"}]).reason) == (
        "too_deep",
        "invalid",
    )


def test_a_slow_store_read_does_not_stall_other_requests(tmp_path: Path) -> None:
    """/readyz and /metrics read the store off the event loop. A slow disk cannot be made
    here, so the app (served by real uvicorn on a real socket, with a real journal) gets a
    readiness reader that blocks until the test lets it go: meanwhile the node keeps
    acknowledging. (The store reads take turns in one thread: a scrape would wait behind it.)"""
    settings = Settings(data_dir=tmp_path, port=free_port(), access_log=False)
    conn = store.connect(settings.database_path)
    key = StoreKeys(conn).create_key("demo").key
    cache = KeyCache(StoreKeys(conn).load_active_keys)
    journal = Journal(settings.database_path)
    journal.start()
    reading, release = threading.Event(), threading.Event()

    def slow_readiness() -> dict[str, str]:
        reading.set()
        release.wait(30)
        return {"store": "slow"}

    app = build_app(settings, keys=cache, journal=journal, readiness=slow_readiness)
    server = uvicorn.Server(uvicorn_config(app, settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        wait_until(lambda: _answers(url + "/healthz"), 10, "the app to serve")
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(requests.get, url + "/readyz", timeout=30)
            assert reading.wait(10), "/readyz never started reading"
            health = requests.get(url + "/healthz", timeout=10)
            published = requests.post(
                url + "/publish_events", json=[EVENT], headers={"x-api-key": key}, timeout=10
            )
            assert not slow.done(), f"/readyz did not wait: {slow.result().text}"
            assert (health.status_code, published.status_code) == (200, 200)
            release.set()
            assert slow.result().json() == {"status": "ready", "store": "slow"}
    finally:
        release.set()
        server.should_exit = True
        thread.join(10)
        app.close()
        journal.close()
        conn.close()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.ConnectionError:
        return False
