"""The SQLite store's schema: created current, and upgraded in place from older releases."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.engines import free_port
from support.node import CLI, Node, cli, create_key
from trubrics_ingestion.store import read
from trubrics_ingestion.store import sqlite as store

EVENT = {"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}
ROW = ("0190-id", "demo", "u", "e", 1, "t", "{}", 2, "event")
READ = (*ROW[:6], b"{}", *ROW[7:])  # as readers give it: properties as UTF-8 JSON


def _indexes(conn: sqlite3.Connection, table: str = "events") -> set[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,)
    )
    return {name for (name,) in rows}


def _at_version(database: Path, version: int) -> None:
    """A store as release ``version`` of the schema left it, with one event in it."""
    conn = sqlite3.connect(database, isolation_level=None)
    for script in store.MIGRATIONS[:version]:
        conn.executescript(script)
    conn.execute("INSERT INTO meta VALUES ('node_id', 7)")
    conn.execute(
        "INSERT INTO events (id, project, user_id, event, timestamp, thread_id, properties,"
        " received_at, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ROW,
    )
    conn.execute(f"PRAGMA user_version={version}")
    conn.close()


def test_a_new_store_indexes_its_batches_by_time_only(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "trubrics.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    assert _indexes(conn, "batches") == {"batches_by_time"}
    assert _indexes(conn, "bodies") == set()


def test_a_v4_store_keeps_its_rows(tmp_path: Path) -> None:
    database = tmp_path / "trubrics.db"
    _at_version(database, 4)
    with sqlite3.connect(database) as old:
        assert {"events_by_thread", "events_by_time"} <= _indexes(old)
    conn = store.connect(database)
    assert list(read.rows(conn)) == [READ]
    assert store.meta(conn, "node_id") == 7


def test_a_store_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "trubrics.db"
    store.connect(database).close()
    with sqlite3.connect(database, isolation_level=None) as newer:
        newer.execute(f"PRAGMA user_version={store.SCHEMA_VERSION + 1}")
    with pytest.raises(store.SchemaTooNew):
        store.connect(database)


def _holding_the_write_lock(database: Path, seconds: float) -> tuple[threading.Thread, list[float]]:
    """Another connection that takes the write lock now and keeps it ``seconds``; the list
    receives the moment it let go."""
    taken, released = threading.Event(), []

    def hold() -> None:
        other = sqlite3.connect(database, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        taken.set()
        time.sleep(seconds)
        other.execute("COMMIT")
        released.append(time.monotonic())
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(5)
    return thread, released


def test_a_polling_transaction_gets_the_lock_as_soon_as_it_is_free(tmp_path: Path) -> None:
    """SQLite's own busy handler sleeps longer and longer (1, 2, 5 ... 100 ms): after 0.24 s
    held, its next try comes ~90 ms after the release. Polling takes the lock at once."""
    database = tmp_path / "trubrics.db"
    conn = store.connect(database)
    conn.execute("PRAGMA busy_timeout = 0")
    holder, released = _holding_the_write_lock(database, 0.24)
    with store.transaction(conn, poll_s=0.0002):
        got_it = time.monotonic()
        conn.execute("UPDATE meta SET value = value WHERE name = 'keys_version'")
    holder.join()
    assert got_it - released[0] < 0.04


def test_a_polling_transaction_raises_other_errors_at_once(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "trubrics.db")
    conn.execute("PRAGMA busy_timeout = 0")
    conn.execute("PRAGMA query_only = 1")  # BEGIN IMMEDIATE: SQLITE_READONLY, not BUSY
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.transaction(conn, poll_s=0.001).__enter__()
    assert time.monotonic() - started < 0.5 and not conn.in_transaction


def test_a_polling_transaction_gives_up_after_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "trubrics.db"
    conn = store.connect(database)
    conn.execute("PRAGMA busy_timeout = 0")
    monkeypatch.setattr(store, "BUSY_TIMEOUT_S", 0.1)
    holder, _ = _holding_the_write_lock(database, 0.5)
    started = time.monotonic()
    with (
        pytest.raises(sqlite3.OperationalError, match="locked"),
        store.transaction(conn, poll_s=0.001),
    ):
        pass
    assert 0.1 <= time.monotonic() - started < 0.3
    assert not conn.in_transaction
    holder.join()


def _loosen(*paths: Path) -> None:
    for path in paths:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_loose_data_dir_and_store_are_made_private_at_start(tmp_path: Path) -> None:
    """A dir the operator made beforehand (0755) and a store restored with 0644: the server
    tightens both before it serves, and says so."""
    data = tmp_path / "data"
    key = create_key(data, "demo")["key"]
    _loosen(data, data / "trubrics.db")
    node = Node(data_dir=data, key=key, project="demo").start()
    try:
        assert (_mode(data), _mode(data / "trubrics.db")) == (0o700, 0o600)
        warnings = [json.loads(line) for line in node.log().splitlines() if "private" in line]
        assert {(w["level"], w["msg"]) for w in warnings} == {
            ("warning", f"made {data} private: mode 0700, was 0755"),
            ("warning", f"made {data / 'trubrics.db'} private: mode 0600, was 0644"),
        }
        assert node.post("/publish_events", [EVENT]).status_code == 200
    finally:
        node.stop()


def test_the_cli_tightens_a_loose_empty_dir_too(tmp_path: Path) -> None:
    """Made by hand, or the root of a filesystem mounted for the store (its lost+found)."""
    data = tmp_path / "made-by-hand"
    (data / "lost+found").mkdir(parents=True)
    _loosen(data)
    listed = cli(data, "keys", "list")
    assert _mode(data) == 0o700 and "private" in listed.stderr
    assert _mode(data / "trubrics.db") == 0o600


def test_a_loose_dir_holding_other_files_is_refused_untouched(tmp_path: Path) -> None:
    """--data-dir /var/lib, say: tightening it would lock other services out."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("someone else's")
    _loosen(shared)
    created = cli(shared, "keys", "create", "--project", "demo", check=False)
    assert created.returncode == 1 and created.stdout == ""
    assert "open to other users (mode 0755)" in created.stderr and "notes.txt" in created.stderr
    served = subprocess.run(
        [*CLI, "serve", "--port", str(free_port()), "--data-dir", str(shared)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 1
    (line,) = [json.loads(line) for line in served.stderr.splitlines() if "private" in line]
    assert line["level"] == "critical" and "chmod go=" in line["msg"]
    assert _mode(shared) == 0o755 and sorted(p.name for p in shared.iterdir()) == ["notes.txt"]
