"""The real engines in ``support/engines.py`` work as the forwarders' tests will need them.

PostgreSQL takes connections and keeps committed data across a clean stop and a crash;
a 2-shard ClickHouse cluster runs ON CLUSTER DDL, spreads a Distributed table's rows over
both shards by a deterministic key, collapses duplicates with FINAL (also with replicated
tables), and keeps its data across a restart; and every process is gone afterwards.

Without the engines these tests skip loudly, except under CI (``CI=true``), where they fail:
``scripts/install-engines.sh`` installs them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import engines
from support.engines import (
    ClickHouseCluster,
    ClickHouseError,
    EngineError,
    PostgresServer,
    ZooKeeperServer,
    require_engines,
)

ROWS = 200
DUPLICATES = 60  # the first ids again, with a newer version
TS = "2026-06-20 12:00:00"


@pytest.fixture(scope="module")
def zookeeper() -> Iterator[ZooKeeperServer]:
    """One ZooKeeper for the module: each cluster keeps to its own root in it."""
    require_engines()
    with ZooKeeperServer() as server:
        yield server


@pytest.fixture
def cluster(zookeeper: ZooKeeperServer) -> Iterator[ClickHouseCluster]:
    with ClickHouseCluster(shards=2, zookeeper=zookeeper) as started:
        yield started


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    require_engines()
    with PostgresServer() as server:
        yield server


def live_processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process that is not a zombie."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,ppid=,stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    table = {}
    for line in out.splitlines():
        pid, ppid, stat, args = [*line.split(None, 3), ""][:4]
        if not stat.startswith("Z"):
            table[int(pid)] = (int(ppid), args)
    return table


def process_tree(pid: int) -> set[int]:
    """``pid`` and its live descendants (PostgreSQL's workers do not show its data dir)."""
    table, tree = live_processes(), set()
    frontier = {pid} & table.keys()
    while frontier:
        tree |= frontier
        frontier = {child for child, (parent, _) in table.items() if parent in frontier} - tree
    return tree


def processes_using(path: Path) -> list[str]:
    """Live processes whose command line mentions ``path``."""
    return [args for _, args in live_processes().values() if str(path) in args]


# --- PostgreSQL ------------------------------------------------------------------------------


def test_postgres_accepts_a_connection_and_queries(postgres: PostgresServer) -> None:
    assert postgres.url == f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres"
    postgres.psql("CREATE TABLE events (id text PRIMARY KEY, body jsonb NOT NULL)")
    postgres.psql(
        "INSERT INTO events VALUES ('a', '{\"n\": 1}'), ('b', '{\"n\": 2}') ON CONFLICT DO NOTHING"
    )
    assert postgres.psql("SELECT sum((body->>'n')::int) FROM events").strip() == "3"
    with pytest.raises(EngineError, match="syntax error"):
        postgres.psql("SELEKT 1")


def test_postgres_keeps_data_across_stop_start_and_a_crash(postgres: PostgresServer) -> None:
    postgres.psql("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 1000)")
    url = postgres.url

    postgres.stop()
    with pytest.raises(EngineError, match="Connection refused"):
        postgres.psql("SELECT 1")
    postgres.start()
    assert postgres.url == url  # a forwarder configured with it reconnects to the same server
    assert postgres.psql("SELECT count(*) FROM t").strip() == "1000"

    postgres.psql("INSERT INTO t VALUES (1001)")
    postgres.kill()  # immediate shutdown: the next start recovers from the WAL
    postgres.start()
    assert postgres.psql("SELECT count(*), max(n) FROM t").strip() == "1001|1001"


def test_postgres_leaves_no_process_or_data_behind() -> None:
    require_engines()
    with PostgresServer() as server:
        assert server.process.pid is not None
        tree = process_tree(server.process.pid)
        assert len(tree) > 3, tree  # the postmaster and its workers
    assert not tree & live_processes().keys()
    assert not server.root.exists()


# --- ClickHouse ------------------------------------------------------------------------------

PLAIN = "ReplacingMergeTree(version)"
REPLICATED = (
    "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{name}', '{replica}', version)"
)


def create_tables(cluster: ClickHouseCluster, name: str, engine: str) -> None:
    """``{name}_local`` on every shard and the Distributed ``{name}`` over them, ON CLUSTER."""
    engine = engine.replace("{name}", name)
    cluster.query(
        f"CREATE TABLE {name}_local ON CLUSTER trubrics "
        "(id String, version UInt32, body String, ts DateTime) "
        f"ENGINE = {engine} PARTITION BY toYYYYMM(ts) ORDER BY id"
    )
    cluster.query(
        f"CREATE TABLE {name} ON CLUSTER trubrics AS {name}_local "
        f"ENGINE = Distributed(trubrics, default, {name}_local, cityHash64(id))"
    )


def insert_rows_with_duplicates(cluster: ClickHouseCluster, table: str) -> None:
    """ROWS distinct ids, then DUPLICATES of them again with version 2, in two inserts."""
    rows = [{"id": f"e{i}", "version": 1, "body": "old", "ts": TS} for i in range(ROWS)]
    sync = {"insert_distributed_sync": 1}  # on the shards when the INSERT returns
    cluster.insert_json(table, rows, settings=sync)
    newer = [{**row, "version": 2, "body": "new"} for row in rows[:DUPLICATES]]
    cluster.insert_json(table, newer, settings=sync)


@pytest.mark.parametrize("engine", [PLAIN, REPLICATED], ids=["replacing", "replicated"])
def test_cluster_spreads_rows_over_shards_and_final_collapses_duplicates(
    cluster: ClickHouseCluster, engine: str
) -> None:
    assert (
        cluster.url
        == f"clickhouse://127.0.0.1:{cluster.nodes[0].http_port}/default?cluster=trubrics"
    )
    assert len(cluster.http_urls) == 2
    create_tables(cluster, "events", engine)
    insert_rows_with_duplicates(cluster, "events")

    assert int(cluster.query("SELECT count() FROM events")) >= ROWS  # duplicates until merged
    assert cluster.query("SELECT count() FROM events FINAL").strip() == str(ROWS)
    bodies = cluster.query("SELECT body, count() FROM events FINAL GROUP BY body ORDER BY body")
    assert bodies == f"new\t{DUPLICATES}\nold\t{ROWS - DUPLICATES}\n"  # the newest version won

    per_shard = [
        int(cluster.query("SELECT count() FROM events_local FINAL", node=node))
        for node in range(len(cluster.nodes))
    ]
    assert all(count > ROWS // 4 for count in per_shard), per_shard  # cityHash64 spreads them
    assert sum(per_shard) == ROWS  # and never puts one id on two shards


def test_cluster_keeps_data_across_stop_and_start(cluster: ClickHouseCluster) -> None:
    create_tables(cluster, "kept", REPLICATED)
    insert_rows_with_duplicates(cluster, "kept")
    urls = cluster.http_urls

    cluster.stop()
    with pytest.raises(OSError):  # refused: what a forwarder sees during an outage
        cluster.query("SELECT 1")
    cluster.start()
    assert cluster.http_urls == urls
    assert cluster.query("SELECT count() FROM kept FINAL").strip() == str(ROWS)
    cluster.insert_json("kept_local", [{"id": "after", "version": 1, "body": "x", "ts": TS}])
    assert cluster.query("SELECT count() FROM kept FINAL").strip() == str(ROWS + 1)


def test_query_errors_carry_the_server_message(cluster: ClickHouseCluster) -> None:
    with pytest.raises(ClickHouseError, match=r"Table default\.missing doesn.t exist"):
        cluster.query("SELECT * FROM missing")


def test_clusters_sharing_a_zookeeper_stay_apart(zookeeper: ZooKeeperServer) -> None:
    """Each keeps its DDL queue and replica paths under its own root, so the same
    replicated table name in two clusters does not collide."""
    with (
        ClickHouseCluster(zookeeper=zookeeper) as first,
        ClickHouseCluster(zookeeper=zookeeper) as second,
    ):
        for cluster in (first, second):
            create_tables(cluster, "same", REPLICATED)
        first.insert_json("same", [{"id": "x", "version": 1, "body": "", "ts": TS}])
        assert second.query("SELECT count() FROM same").strip() == "0"
    assert not processes_using(first.root) and not processes_using(second.root)


# --- availability ----------------------------------------------------------------------------


def test_missing_engines_skip_locally_and_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "engines_available", lambda: "missing /usr/sbin/x")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"NOT TESTED: .*missing /usr/sbin/x"):
        require_engines()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"NOT TESTED: .*missing /usr/sbin/x"):
        require_engines()
