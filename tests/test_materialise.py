"""Per-event rows are built after the ack, in a child process, exactly once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from conftest import CLI, Node, materialiser_of

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


def wait_for(data_dir: Path, rows: int, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while rows_and_backlog(data_dir) != (rows, 0):
        assert time.monotonic() < deadline, f"store at {rows_and_backlog(data_dir)}, want {rows}"
        time.sleep(0.05)


def test_the_server_materialises_in_the_background(node: Node) -> None:
    assert node.post("/publish_events", [EVENT] * 10).status_code == 200
    wait_for(node.data_dir, 10)


def test_a_killed_materialiser_is_restarted(node: Node) -> None:
    assert node.process is not None
    first = materialiser_of(node.process.pid)
    os.kill(first, signal.SIGKILL)
    assert node.post("/publish_events", [EVENT] * 3).status_code == 200
    wait_for(node.data_dir, 3)
    assert materialiser_of(node.process.pid) != first


def test_the_materialiser_leaves_with_its_server(node: Node) -> None:
    assert node.process is not None
    child = materialiser_of(node.process.pid)
    node.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (
        Path(f"/proc/{child}").exists()
        and b"materialise" in Path(f"/proc/{child}/cmdline").read_bytes()
    ):
        assert time.monotonic() < deadline, "orphaned materialiser still running"
        time.sleep(0.05)


def test_concurrent_materialisers_store_each_event_once(tmp_path: Path) -> None:
    subprocess.run(
        [*CLI, "events", "count", "--data-dir", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    conn = sqlite3.connect(tmp_path / "trubrics.db")
    body = json.dumps([{**EVENT, "user_id": f"u{i}"} for i in range(100)]).encode()
    conn.executemany(
        "INSERT INTO journal (project, source, received_at, body) VALUES (?,?,?,?)",
        [("p", "event", 1_780_000_000_000_000 + n, body) for n in range(300)],
    )
    conn.commit()
    conn.close()
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
