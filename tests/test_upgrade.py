"""A store written by the release before batches became the store (schema v5) keeps every
event, under the same id, and each engine's cursor keeps its place.

``data/store-v5.db`` was made by that release (``data/make_store_v5.py``, run at commit
cbafe6f): 30 journaled batches of both endpoints, the first 20 materialised into rows
(5 of those rows then pruned, as retention does), and two forward cursors: ``a`` in the
middle of a run of rows, ``b`` after the last row. ``data/store-v5.ndjson`` is what that
release's ``events export`` printed for it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from support.node import cli
from support.store import journal
from trubrics_ingestion.forward import cursors
from trubrics_ingestion.store import batches
from trubrics_ingestion.store.sqlite import SCHEMA_VERSION, connect

DATA = Path(__file__).parent / "data"
ROWS = 102  # materialised rows left after the prune (seq 6..107)
RUN_OF_SEQ_37 = 27  # cursor a (seq 37) lies in the run of seq 33..38, rows 27..32
EVENT = {"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}


def _old_store(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    shutil.copy(DATA / "store-v5.db", data_dir / "trubrics.db")
    return data_dir


def _expected() -> list[dict[str, object]]:
    return [json.loads(line) for line in (DATA / "store-v5.ndjson").read_text().splitlines()]


def test_every_event_of_an_old_store_is_exported_as_before(tmp_path: Path) -> None:
    data_dir = _old_store(tmp_path)
    assert sqlite3.connect(data_dir / "trubrics.db").execute("PRAGMA user_version").fetchone() == (
        5,
    )
    exported = cli(data_dir, "events", "export").stdout.splitlines()
    assert [json.loads(line) for line in exported] == _expected()
    assert cli(data_dir, "events", "count").stdout.strip() == str(len(_expected()))
    beta = sum(1 for record in _expected() if record["project"] == "beta")
    assert cli(data_dir, "events", "count", "--project", "beta").stdout.strip() == str(beta)
    conn = sqlite3.connect(data_dir / "trubrics.db")
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert not {"events", "journal"} & tables


def test_forward_cursors_keep_their_place(tmp_path: Path) -> None:
    """After the upgrade, what lies beyond each cursor is what the engine has not confirmed
    (and, for ``a``, the part of its run it already had, which engines absorb by id)."""
    conn = connect(_old_store(tmp_path) / "trubrics.db")
    node = batches.node_id(conn)
    ids = [record["id"] for record in _expected()]

    def beyond(sink: str) -> list[str]:
        found = batches.matching(conn, after=cursors.cursor(conn, sink))
        stored = [batches.read(conn, number) for number in found]
        return [e.id for s in stored if s is not None for e in batches.events_of(s, node)]

    assert beyond("b") == ids[ROWS:]  # the batches that were still only journaled
    assert beyond("a") == ids[RUN_OF_SEQ_37:]
    assert beyond("never-seen") == ids


def test_new_batches_are_numbered_after_every_old_one(tmp_path: Path) -> None:
    """Batch numbers are part of event ids: a number the old journal used is never reused."""
    data_dir = _old_store(tmp_path)
    cli(data_dir, "events", "count")
    conn = sqlite3.connect(data_dir / "trubrics.db")
    assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'batches'").fetchone() == (
        30,
    )


def test_an_unreadable_old_row_is_set_aside_and_the_rest_kept(tmp_path: Path) -> None:
    data_dir = _old_store(tmp_path)
    with sqlite3.connect(data_dir / "trubrics.db") as old:
        old.execute("UPDATE events SET properties = '{not json' WHERE seq = 40")
    old.close()
    exported = [json.loads(line) for line in cli(data_dir, "events", "export").stdout.splitlines()]
    expected = _expected()
    assert exported == expected[: 40 - 6] + expected[40 - 6 + 1 :]  # seq 6 is the first row
    conn = sqlite3.connect(data_dir / "trubrics.db")
    ((batch, error),) = conn.execute("SELECT batch, error FROM quarantine").fetchall()
    assert batch == -40 and "JSON" in error


def test_old_bodies_stay_as_they_came_and_new_ones_are_compressed(tmp_path: Path) -> None:
    """Schema v7 compresses the bodies it stores (``codec.py``) without rewriting older
    ones: a store holds both, and every reader reads both."""
    data_dir = _old_store(tmp_path)
    conn = connect(data_dir / "trubrics.db")
    events = [EVENT | {"properties": {"$text": "the same words " * 20}}] * 50
    journal(conn, [("beta", "event", events)])
    codecs = conn.execute("SELECT codec, count(*) FROM bodies GROUP BY codec").fetchall()
    assert codecs == [("identity", 30), ("lz4", 1)]
    ((blob,),) = conn.execute("SELECT body FROM bodies WHERE codec = 'lz4'").fetchall()
    stored = batches.read(conn, batches.newest(conn))
    assert stored is not None and json.loads(stored.body) == events
    assert len(blob) < len(stored.body) / 10
    exported = cli(data_dir, "events", "export").stdout.splitlines()
    assert len(exported) == len(_expected()) + len(events)
    assert [json.loads(line) for line in exported[: len(_expected())]] == _expected()
