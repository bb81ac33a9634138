"""Per-event rows are built after the ack, in a child process, exactly once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from support.node import CLI, Node
from support.processes import is_gone, materialisers_of
from support.waiting import wait_until
from trubrics_ingestion.store import sqlite as store
from trubrics_ingestion.store.materialise import Shard

EVENT = {"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}


def rows_and_backlog(data_dir: Path) -> tuple[int, int]:
    """Read the store without materialising anything (unlike the CLI readers)."""
    conn = sqlite3.connect(f"file:{data_dir / 'trubrics.db'}?mode=ro", uri=True)
    try:
        return (
            conn.execute("SELECT count(*) FROM events").fetchone()[0],
            conn.execute("SELECT count(*) FROM journal").fetchone()[0],
        )
    finally:
        conn.close()


def wait_for(data_dir: Path, rows: int, seconds: float = 15.0, backlog: int = 0) -> None:
    deadline = time.monotonic() + seconds
    while rows_and_backlog(data_dir) != (rows, backlog):
        assert time.monotonic() < deadline, f"store at {rows_and_backlog(data_dir)}, want {rows}"
        time.sleep(0.05)


def test_the_server_materialises_in_the_background(node: Node) -> None:
    assert node.post("/publish_events", [EVENT] * 10).status_code == 200
    wait_for(node.data_dir, 10)


def test_a_killed_materialiser_is_restarted(node: Node) -> None:
    assert node.process is not None
    first, second = materialisers_of(node.process.pid)
    os.kill(first, signal.SIGKILL)
    for batch in range(20):  # both shards' runs, so the new one must do its share
        assert node.post("/publish_events", [{**EVENT, "user_id": f"u{batch}"}]).status_code == 200
    wait_for(node.data_dir, 20)
    children = materialisers_of(node.process.pid)
    assert len(children) == 2 and first not in children and second in children


def test_the_materialisers_leave_with_their_server(node: Node) -> None:
    assert node.process is not None
    children = materialisers_of(node.process.pid)
    assert len(children) == 2
    node.stop(signal.SIGKILL)
    wait_until(lambda: all(is_gone(child) for child in children), 10, "orphaned materialisers")


def test_concurrent_materialisers_store_each_event_once(tmp_path: Path) -> None:
    journal_batches(tmp_path, 300)
    workers = [
        subprocess.Popen([*CLI, "events", "materialise", "--data-dir", str(tmp_path)])
        for _ in range(4)
    ]
    assert [worker.wait(120) for worker in workers] == [0] * 4
    assert rows_and_backlog(tmp_path) == (30_000, 0)
    ids = (
        sqlite3.connect(tmp_path / "trubrics.db")
        .execute("SELECT count(DISTINCT id) FROM events")
        .fetchone()
    )
    assert ids == (30_000,)


def journal_batches(data_dir: Path, count: int) -> None:
    """A new store holding ``count`` journaled batches of 100 events (batch numbers 1 to
    ``count``), as if acknowledged by a server that has not materialised them yet."""
    database = data_dir / "trubrics.db"
    store.connect(database).close()
    bodies = [
        json.dumps([{**EVENT, "user_id": f"b{n}-u{i}"} for i in range(100)]).encode()
        for n in range(count)
    ]
    with sqlite3.connect(database) as conn:
        conn.executemany(
            "INSERT INTO journal (project, source, received_at, body) VALUES (?,?,?,?)",
            [("p", "event", 1_780_000_000_000_000 + n, body) for n, body in enumerate(bodies)],
        )
    conn.close()


def ids_in_seq_order(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / "trubrics.db") as conn:
        ids = [event_id for (event_id,) in conn.execute("SELECT id FROM events ORDER BY seq")]
    conn.close()
    return ids


def _batch_of(event_id: str) -> int:
    """The journal batch an event id was derived from (its low 30 bits; see ids.py)."""
    return (uuid.UUID(event_id).int & ((1 << 62) - 1)) >> 32 & ((1 << 30) - 1)


def test_sharded_materialisers_share_the_work_and_keep_journal_order(tmp_path: Path) -> None:
    """Three ``--shard`` followers, with a CLI catch-up racing them: every event once, and
    rows in journal order (the runs are inserted oldest first, whoever built them)."""
    journal_batches(tmp_path, 250)
    follow = [*CLI, "events", "materialise", "--follow", "--data-dir", str(tmp_path)]
    followers = [
        subprocess.Popen([*follow, "--shard", f"{k}/3", "--parent-pid", str(os.getpid())])
        for k in (1, 2, 3)
    ]
    try:
        catch_up = [*CLI, "events", "materialise", "--data-dir", str(tmp_path)]
        subprocess.run(catch_up, check=True, timeout=120)
        wait_for(tmp_path, 25_000, seconds=60)
    finally:
        for follower in followers:
            follower.terminate()
            follower.wait(10)
    ids = ids_in_seq_order(tmp_path)
    assert len(set(ids)) == 25_000
    batches = [_batch_of(event_id) for event_id in ids]
    assert batches == sorted(batches) and set(batches) == set(range(1, 251))


def test_a_shard_waits_for_the_run_before_its_own(tmp_path: Path) -> None:
    """Shard 1/2 alone does run 0 (batches 1-7) and then waits for run 1 (shard 2/2's)
    instead of inserting run 2 out of order; once 2/2 runs, everything lands in order."""
    journal_batches(tmp_path, 40)
    follow = [*CLI, "events", "materialise", "--follow", "--data-dir", str(tmp_path)]
    follow += ["--parent-pid", str(os.getpid()), "--shard"]
    followers = [subprocess.Popen([*follow, "1/2"])]
    try:
        wait_for(tmp_path, 700, seconds=30, backlog=33)
        time.sleep(1.0)
        assert rows_and_backlog(tmp_path) == (700, 33)
        followers.append(subprocess.Popen([*follow, "2/2"]))
        wait_for(tmp_path, 4_000, seconds=60)
    finally:
        for follower in followers:
            follower.terminate()
            follower.wait(10)
    batches = [_batch_of(event_id) for event_id in ids_in_seq_order(tmp_path)]
    assert batches == sorted(batches) and len(batches) == 4_000


def test_a_shard_is_written_k_of_n(tmp_path: Path) -> None:
    assert Shard.parse("2/3") == Shard(index=1, count=3) and str(Shard(1, 3)) == "2/3"
    for text in ("0/2", "3/2", "1", "a/b", "1/2/3", ""):
        with pytest.raises(ValueError, match="not a shard"):
            Shard.parse(text)
    result = subprocess.run(
        [*CLI, "events", "materialise", "--follow", "--shard", "3/2", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "not a shard: '3/2'" in result.stderr
    catch_up = [*CLI, "events", "materialise", "--shard", "1/2", "--data-dir", str(tmp_path)]
    result = subprocess.run(catch_up, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--shard goes with --follow" in result.stderr


def test_the_server_runs_as_many_materialisers_as_asked(make_node: Any) -> None:
    node = make_node(env={"TRUBRICS_MATERIALISERS": "3"})
    assert node.process is not None
    assert len(materialisers_of(node.process.pid)) == 3
    for batch in range(40):
        assert node.post("/publish_events", [{**EVENT, "user_id": f"u{batch}"}]).status_code == 200
    wait_for(node.data_dir, 40)


def test_a_batch_that_cannot_become_rows_is_quarantined_not_blocking(node: Node) -> None:
    """Validation should make this impossible; if a bug lets one through, it must not stop
    every later batch from becoming rows, and it must stay on disk for an operator."""
    conn = sqlite3.connect(node.data_dir / "trubrics.db")
    conn.execute(
        "INSERT INTO journal (project, source, received_at, body) VALUES (?, ?, ?, ?)",
        (node.project, "event", 1_780_000_000_000_000, b"[not json"),
    )
    conn.commit()
    conn.close()
    assert node.post("/publish_events", [EVENT] * 2).status_code == 200
    wait_for(node.data_dir, 2)
    conn = sqlite3.connect(node.data_dir / "trubrics.db")
    ((body, error),) = conn.execute("SELECT body, error FROM quarantine").fetchall()
    assert body == b"[not json" and "InvalidPayload" in error
