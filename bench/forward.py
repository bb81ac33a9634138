"""Forwarding throughput: materialised events/s into PostgreSQL and into a 2-shard ClickHouse
cluster, each on its own, then both at once (one thread per engine, as in production).

Not a test (``make test`` does not run it): ``.venv/bin/python bench/forward.py``. It
starts throwaway engines (tests/engines.py, installed by scripts/install-engines.sh),
builds a store of ``--events`` events through the real path (journal batches of 100,
materialised by ``catch_up``), forwards them in ``--batch`` row batches, checks that each
engine holds exactly that many, and prints events/s per engine plus where the Python
time goes (SQLite read, row encoding). Target: >= 100,000 events/s into each engine.
Medians of ``--rounds`` rounds; every round uses fresh tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from engines import ClickHouseCluster, PostgresServer
from trubrics_ingestion.forward import Forwarder, forward_status, open_sink, parse_sink_url
from trubrics_ingestion.forward.clickhouse import encode_json_lines
from trubrics_ingestion.forward.cursors import read_batch
from trubrics_ingestion.forward.postgres import encode_copy
from trubrics_ingestion.materialise import catch_up
from trubrics_ingestion.store import connect

TARGET = 100_000


def build_store(path: Path, events: int) -> None:
    """``events`` realistic events (a quarter in threads, an LLM-sized text in some)."""
    conn = connect(path)
    now = time.time_ns() // 1000
    bodies = []
    for batch in range(events // 100):
        items: list[dict[str, Any]] = []
        for i in range(100):
            n = batch * 100 + i
            properties: dict[str, Any] = {"plan": "pro", "country": "FR", "n": n, "ok": True}
            if n % 4 == 0:
                properties["$thread_id"] = f"thread-{n % 1000}"
            if n % 10 == 0:
                properties["$text"] = "Une réponse assez longue.\n" * 8
            items.append(
                {
                    "user_id": f"user_{n % 5000}",
                    "event": ("Sign up", "Log in", "Purchase", "Generation")[n % 4],
                    "timestamp": f"2026-06-20T12:{n // 60 % 60:02d}:{n % 60:02d}.{n % 10**6:06d}Z",
                    "properties": properties,
                }
            )
        bodies.append(("demo", "event", now, json.dumps(items).encode()))
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO journal (project, source, received_at, body) VALUES (?, ?, ?, ?)", bodies
    )
    conn.execute("COMMIT")
    catch_up(conn)
    conn.close()


def forward(database: Path, urls: list[str], batch: int, threaded: bool) -> float:
    """Seconds to deliver the whole store to ``urls`` (cursors start at 0), once the
    tables exist: creating them (ON CLUSTER DDL takes a while) is a one-off, not a rate."""
    for url in urls:
        sink = open_sink(parse_sink_url(url))
        sink.migrate()
        sink.close()
    forwarder = Forwarder(database, urls, batch_rows=batch)
    try:
        started = time.perf_counter()
        if threaded:
            stop = threading.Event()
            runner = threading.Thread(target=forwarder.run, args=(stop,))
            runner.start()
            while any(s.backlog_rows for s in forward_status(database, urls)):
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
            stop.set()
            runner.join()
        else:
            while forwarder.step():
                pass
            elapsed = time.perf_counter() - started
        assert not any(h.consecutive_failures for h in forwarder.health()), forwarder.health()
    finally:
        forwarder.close()
    return elapsed


def python_costs(database: Path, batch: int) -> dict[str, float]:
    """Rows/s of each Python stage alone: reading from SQLite, encoding for each engine."""
    conn = connect(database)
    started, after, batches = time.perf_counter(), 0, []
    while rows := read_batch(conn, after, batch):
        batches.append(rows)
        after = rows[-1][0]
    read = time.perf_counter() - started
    total = sum(map(len, batches))
    costs = {"sqlite read": total / read}
    for name, encode in (("COPY encode", encode_copy), ("JSONEachRow encode", encode_json_lines)):
        started = time.perf_counter()
        for rows in batches:
            encode(rows)
        costs[name] = total / (time.perf_counter() - started)
    conn.close()
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        PostgresServer() as postgres,
        ClickHouseCluster(shards=2) as clickhouse,
    ):
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        database = Path(tmp) / "trubrics.db"
        started = time.perf_counter()
        build_store(database, args.events)
        elapsed = time.perf_counter() - started
        print(f"store: {args.events:,} events materialised in {elapsed:.1f} s")
        for stage, rate in python_costs(database, args.batch).items():
            print(f"  python {stage:<20} {rate:>12,.0f} rows/s")
        results: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            name = f"b_{uuid.uuid4().hex[:8]}"
            postgres.psql(f"CREATE DATABASE {name}")
            pg = postgres.url.rsplit("/", 1)[0] + "/" + name
            ch_port = clickhouse.nodes[0].http_port
            ch = f"clickhouse://127.0.0.1:{ch_port}/{name}?cluster={clickhouse.cluster}"
            for label, urls, threaded in (
                ("postgresql", [pg], False),
                ("clickhouse cluster", [ch], False),
            ):
                seconds = forward(database, urls, args.batch, threaded)
                results.setdefault(label, []).append(args.events / seconds)
            # both at once, into fresh tables (the cursors are per destination)
            name2 = f"{name}_both"
            postgres.psql(f"CREATE DATABASE {name2}")
            both = [pg.rsplit("/", 1)[0] + "/" + name2, ch.replace(f"/{name}?", f"/{name2}?")]
            seconds = forward(database, both, args.batch, threaded=True)
            results.setdefault("both at once (each)", []).append(args.events / seconds)
            pg_rows = postgres.psql("SELECT count(*) FROM events", database=name).strip()
            ch_rows = clickhouse.query(f"SELECT count() FROM {name}.events FINAL").strip()
            assert pg_rows == ch_rows == str(args.events), (pg_rows, ch_rows)
        print(f"load average after: {os.getloadavg()[0]:.2f} (this run adds about 2)")
        failed = False
        for label, rates in results.items():
            median = statistics.median(rates)
            verdict = "ok" if median >= TARGET else "BELOW TARGET"
            failed |= median < TARGET and not label.startswith("both")
            runs = ", ".join(f"{rate:,.0f}" for rate in rates)
            print(f"{label:<22} {median:>10,.0f} events/s  ({runs})  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
