"""End to end: ``serve --forward-to`` ships what the API acknowledged to real engines, and
``migrate`` prepares an engine idempotently."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from support.engines import ClickHouseCluster, EngineError, PostgresServer
from support.node import CLI, Node
from support.waiting import wait_until

EVENT = {"event": "e", "timestamp": "2026-06-20T12:00:00Z"}


def test_migrate_is_idempotent(postgres: PostgresServer, clickhouse: ClickHouseCluster) -> None:
    for url in (postgres.url, clickhouse.url, postgres.url, clickhouse.url):
        out = subprocess.run(
            [*CLI, "migrate", url], capture_output=True, text=True, timeout=60, check=True
        )
        assert "schema up to date" in out.stdout
    assert "events" in postgres.psql("SELECT tablename FROM pg_tables")
    assert "events" in clickhouse.query("SHOW TABLES")


def test_a_bad_engine_url_is_refused_at_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run(
        [*CLI, "serve", "--data-dir", str(tmp_path), "--forward-to", "mysql://x/y"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "mysql" in out.stderr


def test_serve_forwards_acknowledged_events_to_both_engines(
    make_node,
    postgres: PostgresServer,
    clickhouse: ClickHouseCluster,  # type: ignore[no-untyped-def]
) -> None:
    env = {"TRUBRICS_FORWARD_TO": f"{postgres.url} {clickhouse.url}"}
    node: Node = make_node(env=env)
    for n in range(10):
        batch = [{**EVENT, "user_id": f"fwd-{n}-{i}"} for i in range(100)]
        assert node.post("/publish_events", batch).status_code == 200
    pg = "SELECT count(*) FROM events WHERE user_id LIKE 'fwd-%'"
    ch = "SELECT count() FROM events FINAL WHERE user_id LIKE 'fwd-%'"
    wait_until(lambda: answer(postgres.psql, pg) == "1000", poll_s=0.2)
    wait_until(lambda: answer(clickhouse.query, ch) == "1000", poll_s=0.2)
    ids = {e["id"] for e in node.export()}
    some = postgres.psql("SELECT id FROM events WHERE user_id = 'fwd-3-7'").strip()
    assert some in ids


def test_delivered_events_are_pruned_after_the_retention(
    make_node,  # type: ignore[no-untyped-def]
    postgres: PostgresServer,
) -> None:
    env = {"TRUBRICS_FORWARD_TO": postgres.url, "TRUBRICS_FORWARD_RETENTION_S": "0"}
    node: Node = make_node(env=env)
    for n in range(3):
        batch = [{**EVENT, "user_id": f"pruned-{n}-{i}"} for i in range(100)]
        assert node.post("/publish_events", batch).status_code == 200
    pg = "SELECT count(*) FROM events WHERE user_id LIKE 'pruned-%'"
    wait_until(lambda: answer(postgres.psql, pg) == "300", poll_s=0.2)
    # Delivered everywhere and older than 0 s: gone from the node, every batch of them (batch
    # numbers are never handed out again, so the newest can go too).
    wait_until(lambda: node.cli("events", "count").stdout.strip() == "0", poll_s=0.2)
    assert postgres.psql(pg).strip() == "300"


def answer(query: Callable[[str], str], sql: str) -> str | None:
    """The engine's answer; None until the node's forwarder has created the table (a test
    run alone queries before that)."""
    try:
        return query(sql).strip()
    except EngineError:
        return None
