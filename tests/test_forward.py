"""The forwarder ships every stored event to PostgreSQL and to a 2-shard ClickHouse
cluster exactly once: through redelivery, engine outages and a ``kill -9`` mid-forward,
with every field intact (NUL characters become U+FFFD in PostgreSQL only).

Real servers from ``support/engines.py`` (one PostgreSQL and one cluster for the module, a fresh
database per test); events enter the store the real way: journal batches, validated
as the server does.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.engines import ClickHouseCluster, PostgresServer, send_rows
from support.store import journal, poison
from support.waiting import wait_until
from trubrics_ingestion.clock import to_micros
from trubrics_ingestion.forward import (
    Forwarder,
    SinkUrlError,
    cursors,
    forward_status,
    open_sink,
    parse_sink_url,
    prune,
    run_forever,
)
from trubrics_ingestion.forward import postgres as postgres_sink
from trubrics_ingestion.forward.forwarder import Backoff
from trubrics_ingestion.forward.postgres import encode_copy, json_without_nul
from trubrics_ingestion.schema import Source
from trubrics_ingestion.store import read as store_events
from trubrics_ingestion.store.expand import EventColumns, EventRow, Moment, micros
from trubrics_ingestion.store.sqlite import connect

PROJECT = "demo"
BASE_US = 1_781_956_800_000_000  # 2026-06-20T12:00:00Z
FAST_BACKOFF = {"backoff_max_s": 1.0}  # tests wait for recovery, not for 30 s of backoff


# --- the node's store ------------------------------------------------------------------------


def an_event(n: int) -> dict[str, Any]:
    """One event as the API accepts it; every fifth in a thread, all with microseconds."""
    micros = n % 1_000_000
    properties: dict[str, Any] = {"n": n, "country": "US", "text": 'line\n\t"quoted" é ✓'}
    if n % 5 == 0:
        properties["$thread_id"] = f"thread-{n // 5 % 7}"
    return {
        "user_id": f"user_{n % 97}",
        "event": ["Sign up", "Log in", "Purchase"][n % 3],
        "timestamp": f"2026-06-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:07.{micros:06d}Z",
        "properties": properties,
    }


def add_events(conn: sqlite3.Connection, count: int) -> None:
    """``count`` more events (a multiple of 100), in batches of 100."""
    start = stored(conn)
    batches: list[tuple[str, Source, list[dict[str, Any]]]] = [
        (PROJECT, "event", [an_event(start + b + i) for i in range(100)])
        for b in range(0, count, 100)
    ]
    journal(conn, batches)


def stored(conn: sqlite3.Connection) -> int:
    return store_events.count(conn)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(tmp_path / "trubrics.db")
    yield conn
    conn.close()


def database_of(conn: sqlite3.Connection) -> Path:
    return Path(conn.execute("PRAGMA database_list").fetchone()[2])


# --- the engines -----------------------------------------------------------------------------


@dataclass
class Targets:
    """One fresh database in each engine, and how to read them back."""

    postgres: PostgresServer
    clickhouse: ClickHouseCluster
    name: str

    @property
    def pg_url(self) -> str:
        return self.postgres.url.rsplit("/", 1)[0] + "/" + self.name

    @property
    def ch_url(self) -> str:
        port = self.clickhouse.nodes[0].http_port
        return f"clickhouse://127.0.0.1:{port}/{self.name}?cluster={self.clickhouse.cluster}"

    @property
    def urls(self) -> list[str]:
        return [self.pg_url, self.ch_url]

    def pg(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            return conn.execute(sql, args).fetchall()

    def pg_count(self) -> int:
        return int(self.pg("SELECT count(*) FROM events")[0][0])

    def ch(self, sql: str, node: int = 0) -> str:
        return self.clickhouse.query(sql, node=node)

    def ch_count(self) -> int:
        return int(self.ch(f"SELECT count() FROM {self.name}.events FINAL"))

    def ch_rows(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        wanted = ", ".join(f"'{i}'" for i in ids)
        out = self.ch(
            f"SELECT * FROM {self.name}.events FINAL WHERE id IN ({wanted}) FORMAT JSONEachRow"
        )
        rows = [json.loads(line) for line in out.splitlines()]
        return {row["id"]: row for row in rows}

    def pg_rows(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        names = ["id", "project", "user_id", "event", "timestamp", "thread_id", "properties"]
        names += ["received_at", "source"]
        rows = self.pg(f"SELECT {', '.join(names)} FROM events WHERE id = ANY(%s::uuid[])", ids)
        return {str(row[0]): dict(zip(names, row, strict=True)) for row in rows}


@pytest.fixture
def targets(postgres: PostgresServer, clickhouse: ClickHouseCluster) -> Targets:
    name = f"t_{uuid.uuid4().hex[:10]}"
    postgres.psql(f"CREATE DATABASE {name}")
    return Targets(postgres, clickhouse, name)


def forward_all(forwarder: Forwarder, timeout_s: float = 60.0) -> None:
    """Step until every engine's backlog is empty."""
    deadline = time.monotonic() + timeout_s
    while any(status.backlog_rows for status in forwarder.status()):
        assert time.monotonic() < deadline, (forwarder.status(), forwarder.health())
        if not forwarder.step():
            time.sleep(0.05)


def pg_time(moment: datetime) -> str:
    return store_events.format_time(to_micros(moment))


def ch_time(exported: str) -> str:
    """What DateTime keeps of an exported time: whole seconds, as ClickHouse prints them."""
    return exported[:19].replace("T", " ")


def assert_same_as_export(conn: sqlite3.Connection, targets: Targets, *, every: int = 97) -> None:
    """A sample of full rows in both engines equals ``events export`` field by field."""
    records = list(store_events.export(conn))[::every]
    ids = [record["id"] for record in records]
    in_pg, in_ch = targets.pg_rows(ids), targets.ch_rows(ids)
    for record in records:
        pg = in_pg[record["id"]]
        assert {**pg, "id": str(pg["id"])} | {
            "timestamp": pg_time(pg["timestamp"]),
            "received_at": pg_time(pg["received_at"]),
        } == record
        ch = in_ch[record["id"]]
        assert json.loads(ch["properties"]) == record["properties"]
        assert ch == record | {
            "timestamp": ch_time(record["timestamp"]),
            "received_at": ch_time(record["received_at"]),
            "properties": ch["properties"],
        }


# --- delivery, redelivery --------------------------------------------------------------------


def test_every_event_arrives_once_with_every_field(
    store: sqlite3.Connection, targets: Targets
) -> None:
    add_events(store, 3000)
    llm = {"user_id": "u1", "prompt": "Hi?", "generation": "Hello!", "latency": 1.25}
    journal(store, [(PROJECT, "llm", [{**llm, "thread_id": f"conv-{i}"} for i in range(100)])])
    total = stored(store)
    assert total == 3200

    forwarder = Forwarder(database_of(store), targets.urls, batch_rows=1000)
    try:
        forward_all(forwarder)
    finally:
        forwarder.close()

    assert targets.pg_count() == total
    assert targets.ch_count() == total
    per_shard = [
        int(targets.ch(f"SELECT count() FROM {targets.name}.events_local FINAL", node=node))
        for node in range(2)
    ]
    assert sum(per_shard) == total and min(per_shard) > total // 4, per_shard
    assert_same_as_export(store, targets)
    threads = targets.pg("SELECT count(*) FROM events WHERE thread_id IS NOT NULL")[0][0]
    assert threads == sum(1 for row in store_events.rows(store) if row.thread_id is not None)
    # visitParam* reads ClickHouse's properties: they are compact JSON
    latencies = targets.ch(
        f"SELECT sum(visitParamExtractFloat(properties, 'latency(s)')) FROM {targets.name}.events"
        " FINAL WHERE source = 'llm'"
    )
    assert float(latencies) == pytest.approx(125.0)
    statuses = forward_status(database_of(store), targets.urls)
    assert [(s.cursor, s.backlog_rows, s.oldest_undelivered_age_s) for s in statuses] == [
        (31, 0, None)  # 30 batches of events and one of LLM events
    ] * 2


def test_redelivery_from_scratch_changes_nothing(
    store: sqlite3.Connection, targets: Targets
) -> None:
    add_events(store, 2000)
    forwarder = Forwarder(database_of(store), targets.urls, batch_rows=700)
    try:
        forward_all(forwarder)
        for url in targets.urls:
            cursors.reset(store, parse_sink_url(url).id, 0)
        assert [s.backlog_rows for s in forwarder.status()] == [2000, 2000]
        add_events(store, 500)
        forward_all(forwarder)  # old batches collide; the 500 new ones mix into the last
    finally:
        forwarder.close()
    assert targets.pg_count() == 2500
    assert targets.ch_count() == 2500
    assert_same_as_export(store, targets, every=31)


# --- NUL and unicode -------------------------------------------------------------------------

NUL_EVENT = {
    "user_id": "nul\u0000user",
    "event": "e\u0000",
    "timestamp": "2026-06-20T12:00:00.000001Z",
    "properties": {
        "k\u0000ey": "v\u0000",
        "nested": [{"deep": "\u0000"}, "x"],
        "literal": "\\u0000 stays text",
        "$thread_id": "t\u0000",
    },
}
UNICODE_EVENT = {
    "user_id": "ユーザー🙂",
    "event": "عربى ✓ e\u0301 \u2028 \t\n\\",
    "timestamp": "1969-07-20T20:17:40.5Z",  # before 1970: ClickHouse clamps, PG keeps
    "properties": {"emoji": "👩‍💻", "ctl": "\u0001\u001f", "\U0001f600": 1, "half": 1.5},
}
LATE_EVENT = {"user_id": "u", "event": "late", "timestamp": "9999-12-31T23:59:59.999999Z"}


def test_nul_becomes_replacement_in_postgres_and_unicode_survives(
    store: sqlite3.Connection, targets: Targets
) -> None:
    journal(store, [(PROJECT, "event", [NUL_EVENT, UNICODE_EVENT, LATE_EVENT])])
    forwarder = Forwarder(database_of(store), targets.urls)
    try:
        forward_all(forwarder, timeout_s=30)
    finally:
        forwarder.close()
    nul, uni, late = list(store_events.export(store))
    rows = targets.pg_rows([nul["id"], uni["id"], late["id"]])

    pg = rows[nul["id"]]
    assert (pg["user_id"], pg["event"], pg["thread_id"]) == ("nul\ufffduser", "e\ufffd", "t\ufffd")
    assert pg["properties"] == {
        "k\ufffdey": "v\ufffd",
        "nested": [{"deep": "\ufffd"}, "x"],
        "literal": "\\u0000 stays text",
        "$thread_id": "t\ufffd",
    }
    pg = rows[uni["id"]]
    assert (pg["user_id"], pg["event"]) == (UNICODE_EVENT["user_id"], UNICODE_EVENT["event"])
    assert pg["properties"] == uni["properties"]
    assert pg_time(pg["timestamp"]) == "1969-07-20T20:17:40.500000Z"
    assert pg_time(rows[late["id"]]["timestamp"]) == "9999-12-31T23:59:59.999999Z"

    in_ch = targets.ch_rows([nul["id"], uni["id"], late["id"]])
    for record in (nul, uni):  # ClickHouse keeps every byte
        ch = in_ch[record["id"]]
        assert (ch["user_id"], ch["event"], ch["thread_id"]) == (
            record["user_id"],
            record["event"],
            record["thread_id"],
        )
        assert json.loads(ch["properties"]) == record["properties"]
    assert in_ch[uni["id"]]["timestamp"] == "0000-00-00 00:00:00"  # clamped to 0, the zero date
    assert in_ch[late["id"]]["timestamp"] == "2105-12-31 23:59:59"


def test_json_without_nul_only_touches_real_nuls() -> None:
    assert json_without_nul(b'{"a":"\\\\u0000"}') == b'{"a":"\\\\u0000"}'  # escaped backslash
    assert json_without_nul(b'{"a":"x\\u0000"}') == '{"a":"x\ufffd"}'.encode()
    assert json_without_nul(b'{"a": 1}') == b'{"a": 1}'
    clean = EventRow(str(uuid.uuid4()), "p", "u", "e", BASE_US, None, b"{}", BASE_US, "event")
    nul = clean._replace(properties=b'{"a": "x\\u0000"}')
    payload = encode_copy(EventColumns.of([clean, nul]))
    assert payload.startswith(b"\x00\x09\x00\x00\x00\x10")  # 9 fields, then the uuid's 16 bytes
    assert '{"a":"x\ufffd"}'.encode() in payload and b"\\u0000" not in payload


def test_copy_takes_decoded_times_and_microseconds_alike() -> None:
    """A part made of several stored batches may hold decoded times, naive and aware, and
    microseconds (``EventColumns``): PostgreSQL gets the same microseconds either way."""
    aware = datetime(2026, 6, 20, 12, 0, 0, 123_456, tzinfo=timezone(timedelta(hours=5)))
    naive = datetime(2026, 6, 20, 12, 0, 0, 500_000)  # UTC
    moments: list[Moment] = [BASE_US, aware, naive]
    stamps = [BASE_US, BASE_US - 5 * 3600 * 10**6 + 123_456, BASE_US + 500_000]
    assert micros(moments) == stamps
    assert micros([aware, aware]) == stamps[1:2] * 2 and micros([naive]) == stamps[2:]
    assert micros([]) == []
    rows = [
        EventRow(str(uuid.uuid4()), "p", "u", "e", at, None, b"{}", BASE_US, "event")
        for at in stamps
    ]
    columns = EventColumns.of(rows)
    assert encode_copy(columns._replace(timestamp=moments)) == encode_copy(columns)


# --- outages ---------------------------------------------------------------------------------


class Running:
    """``run_forever`` in a thread, as the forwarder child runs it."""

    def __init__(self, database: Path, urls: list[str]) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=run_forever,
            args=(database, urls),
            kwargs={"stop": self.stop, "batch_rows": 1000, **FAST_BACKOFF},
            daemon=True,
        )

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("down", ["clickhouse", "postgres"])
def test_an_engine_outage_loses_and_doubles_nothing(
    store: sqlite3.Connection, targets: Targets, down: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="trubrics_ingestion.forward")
    database = database_of(store)
    engine = targets.clickhouse if down == "clickhouse" else targets.postgres
    which = 1 if down == "clickhouse" else 0  # the position of its status
    add_events(store, 1000)
    with Running(database, targets.urls):
        wait_until(lambda: _backlogs(database, targets) == [0, 0], 60, "the first delivery")
        engine.stop()
        outage_started = time.monotonic()
        backlogs, ages = [], []
        while time.monotonic() - outage_started < 10.5:  # new events keep coming
            add_events(store, 300)
            status = forward_status(database, targets.urls)
            backlogs.append(status[which].backlog_rows)
            ages.append(status[which].oldest_undelivered_age_s or 0.0)
            time.sleep(0.5)
        other = 1 - which
        wait_until(
            lambda: _backlogs(database, targets)[other] == 0, 60, "the other engine to keep up"
        )
        engine.start()
        wait_until(lambda: _backlogs(database, targets) == [0, 0], 60, "delivery after the outage")
    total = stored(store)
    assert total >= 1000 + 300 * 15
    assert backlogs == sorted(backlogs) and backlogs[-1] > backlogs[0] > 0, backlogs
    assert ages == sorted(ages) and ages[-1] > 8, ages
    assert targets.pg_count() == total
    assert targets.ch_count() == total
    failures = [r for r in caplog.records if "forwarding failed" in r.getMessage()]
    assert len(failures) >= 5  # loudly: at every attempt
    assert all(down in r.getMessage() for r in failures)


def _backlogs(database: Path, targets: Targets) -> list[int]:
    return [status.backlog_rows for status in forward_status(database, targets.urls)]


# --- kill -9 ---------------------------------------------------------------------------------

CHILD = """
import os, sys
from pathlib import Path
from trubrics_ingestion.forward import run_forever
run_forever(Path(sys.argv[1]), sys.argv[2:], parent_pid=os.getppid(), batch_rows=500)
"""


def test_kill_9_mid_forward_then_restart(store: sqlite3.Connection, targets: Targets) -> None:
    database = database_of(store)
    add_events(store, 30_000)  # batches 1..300
    for url in targets.urls:  # tables first, so that both engines start forwarding together
        sink = open_sink(parse_sink_url(url))
        sink.migrate()
        sink.close()
    argv = [sys.executable, "-c", CHILD, str(database), *targets.urls]
    child = subprocess.Popen(argv)
    try:
        wait_until(
            lambda: min(s.cursor for s in forward_status(database, targets.urls)) > 20,
            60,
            "some progress",
        )
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        cursors_at_kill = [s.cursor for s in forward_status(database, targets.urls)]
        assert all(c > 0 for c in cursors_at_kill), cursors_at_kill
        assert any(c < 300 for c in cursors_at_kill), cursors_at_kill  # mid-forward (batch 300)
        child = subprocess.Popen(argv)
        wait_until(lambda: _backlogs(database, targets) == [0, 0], 60, "delivery after restart")
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(10)
    assert targets.pg_count() == 30_000
    assert targets.ch_count() == 30_000


def test_a_batch_that_cannot_be_expanded_is_quarantined_not_blocking(
    store: sqlite3.Connection, targets: Targets, caplog: pytest.LogCaptureFixture
) -> None:
    add_events(store, 200)
    bad = poison(database_of(store), PROJECT)
    add_events(store, 100)
    forwarder = Forwarder(database_of(store), targets.urls)
    try:
        with caplog.at_level(logging.ERROR, logger="trubrics_ingestion.forward"):
            forward_all(forwarder)
    finally:
        forwarder.close()
    assert targets.pg_count() == 300
    assert targets.ch_count() == 300
    quarantined = store.execute("SELECT batch, error FROM quarantine").fetchall()
    assert [batch for batch, _ in quarantined] == [bad] and "JSON" in quarantined[0][1]
    assert any(f"batch {bad}" in r.getMessage() for r in caplog.records), caplog.text
    assert stored(store) == 300


# --- pruning, backoff, URLs (no engines) -----------------------------------------------------


def test_prune_deletes_only_what_every_engine_has(store: sqlite3.Connection) -> None:
    add_events(store, 1000)  # batches 1..10
    now = time.time_ns() // 1000
    sinks = ["a", "b"]
    assert prune(store, sinks, None) == 0  # the default: keep everything
    cursors.advance(store, "a", 10)
    assert prune(store, sinks, 0) == 0  # b has nothing yet
    cursors.advance(store, "b", 6)
    assert prune(store, sinks, 3600, at_us=now) == 0  # all too recent
    assert prune(store, sinks, 0, at_us=now + 1) == 600
    assert stored(store) == 400
    cursors.advance(store, "b", 10)
    assert prune(store, sinks, 0, at_us=now + 1) == 400  # the newest batch too...
    add_events(store, 100)  # ...as numbers are never reused: the next is above every cursor
    assert [s.backlog_rows for s in cursors.read_status(database_of(store), sinks)] == [100, 100]
    assert [s.cursor for s in cursors.read_status(database_of(store), sinks)] == [10, 10]


def test_backoff_doubles_from_half_a_second_to_ten() -> None:
    backoff = Backoff()
    delays = [backoff.failed() for _ in range(9)]
    assert delays == [0.5, 1, 2, 4, 8, 10, 10, 10, 10]
    assert backoff.succeeded() == 9 and backoff.failed() == 0.5


def test_urls_are_parsed_redacted_and_keyed_by_destination() -> None:
    url = parse_sink_url("postgresql://ingest:s3cr%40t@db.internal:6543/analytics")
    assert (url.kind, url.host, url.port, url.database) == (
        "postgresql",
        "db.internal",
        6543,
        "analytics",
    )
    assert (url.user, url.password) == ("ingest", "s3cr@t")
    assert "s3cr" not in url.display + url.id + repr(url)
    assert url.display == "postgresql://ingest:***@db.internal:6543/analytics"
    assert url.id == parse_sink_url("postgres://other@db.internal:6543/analytics").id
    ch = parse_sink_url("clickhouse://ch1:8123/db?cluster=main")
    assert (ch.kind, ch.port, ch.database, ch.cluster) == ("clickhouse", 8123, "db", "main")
    assert (
        ch.id == "clickhouse://ch1:8123/db?cluster=main" != parse_sink_url("clickhouse://ch1/db").id
    )
    assert parse_sink_url("clickhouse://ch1").database == "default"
    for bad in (
        "mysql://u@h/db",
        "postgresql://h:5432/db",  # no user
        "clickhouse://h/db;drop",
        "clickhouse://h/db?cluster=a&cluster=b",
        "clickhouse://h/db?clutser=a",
        "postgresql://u:pw@h/db?cluster=x",
    ):
        with pytest.raises(SinkUrlError) as error:
            parse_sink_url(bad)
        assert "pw@" not in str(error.value)


# --- the sinks on their own ------------------------------------------------------------------


def test_postgres_migrations_are_idempotent_and_safe_concurrently(targets: Targets) -> None:
    sinks = [open_sink(parse_sink_url(targets.pg_url)) for _ in range(4)]
    threads = [threading.Thread(target=sink.migrate) for sink in sinks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    sinks[0].migrate()
    for sink in sinks:
        sink.close()
    versions = targets.pg("SELECT component, version FROM trubrics_schema")
    assert versions == [("events", len(postgres_sink.MIGRATIONS))]
    indexes = targets.pg(
        "SELECT c.relname, a.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = 'events'::regclass"
    )
    assert dict(indexes) == {
        "events_pkey": "btree",
        "events_by_time": "brin",
        "events_by_thread": "btree",
    }
    assert _collations(targets) == {"project": "C", "thread_id": "C", "user_id": None}


def test_postgres_upgrades_a_v1_schema_keeping_its_rows(
    store: sqlite3.Connection, targets: Targets
) -> None:
    """A database migrated by the first release: upgraded in place, nothing lost."""
    add_events(store, 10)
    rows = list(store_events.rows(store))
    with psycopg.connect(targets.pg_url, autocommit=True) as conn:
        conn.execute(postgres_sink.MIGRATIONS[0])
        conn.execute("CREATE TABLE trubrics_schema (component text PRIMARY KEY, version integer)")
        conn.execute("INSERT INTO trubrics_schema VALUES ('events', 1)")
    sink = open_sink(parse_sink_url(targets.pg_url))
    try:
        send_rows(sink, rows)
        sink.migrate()
        send_rows(sink, rows)  # the same rows again: still once each
    finally:
        sink.close()
    assert targets.pg_count() == len(rows)
    assert _collations(targets)["project"] == "C"
    (access_method,) = targets.pg(
        "SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam"
        " WHERE c.relname = 'events_by_time'"
    )
    assert access_method == ("brin",)


def _collations(targets: Targets) -> dict[str, str | None]:
    rows = targets.pg(
        "SELECT column_name, collation_name FROM information_schema.columns"
        " WHERE table_name = 'events' AND column_name IN ('project', 'thread_id', 'user_id')"
    )
    return dict(rows)


def test_clickhouse_without_cluster_and_after_an_idle_keepalive(
    store: sqlite3.Connection, targets: Targets
) -> None:
    """Without ``?cluster``, ``events`` is the ReplacingMergeTree itself; a kept-alive
    connection that turns out closed (ClickHouse drops idle ones) is reopened, no failure."""
    add_events(store, 300)
    url = targets.ch_url.split("?")[0]
    sink = open_sink(parse_sink_url(url))
    rows = list(store_events.rows(store))
    try:
        sink.migrate()
        send_rows(sink, rows[:200])
        connection = sink._conn  # type: ignore[attr-defined]
        assert connection.sock is not None  # kept alive after the insert
        connection.sock.shutdown(socket.SHUT_RDWR)  # as when the server drops an idle one
        send_rows(sink, rows)  # 200 again, 100 new
    finally:
        sink.close()
    engine = targets.ch(
        f"SELECT engine FROM system.tables WHERE database = '{targets.name}' AND name = 'events'"
    )
    assert engine.strip() == "ReplacingMergeTree"
    assert targets.ch_count() == 300
