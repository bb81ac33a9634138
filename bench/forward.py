"""Forwarding rates: events/s the real forwarder ships from a node's backlog into PostgreSQL,
into a 2-shard ClickHouse cluster (a Distributed table), and into both at once.

`make bench` (bench/run.py) runs this after its ingest rounds, on the store the last
node round left behind: the wrk batches that node acknowledged, as it stored them. Every
measurement gets fresh tables (a new database per engine, created before the clock
starts: ON CLUSTER DDL is a one-off, not a rate), moves the forwarder's cursors back to
the newest batches holding ``backlog`` events with ``cursors.reset`` (the product's own
"send again from here") and times the real ``Forwarder`` (after one untimed warm-up round
of every setup), threads per engine as in ``serve --forward-to``, until each engine's
cursor reaches the newest batch. Each engine is then checked to hold exactly the backlog,
each event once: row count, distinct ids, and an MD5 of the sorted ids equal to the
store's (a lost, duplicated or foreign event fails).

CPU per event: the node's, into each engine, is the CPU of that engine's forwarder threads
(its worker, which reads, expands and encodes, and its lanes, which send), read from the
threads' own clocks, so that neither the other engine's threads nor this bench's polling
count; beside it, each engine's own, all its processes (its CPU per row).

Targets: >= 100,000 events/s into each engine, alone and both at once; the node's CPU per
event forwarded <= 4 us into each engine (issue 10). Throwaway engines come from
tests/support/engines.py (installed by scripts/install-engines.sh, as `make bench` does).

Standalone, for working on the forwarder: ``.venv/bin/python bench/forward.py`` fills a
store with a node under wrk (``--load`` seconds), or takes ``--data-dir`` of an
existing node's store, and prints the same figures.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import node

sys.path.insert(0, str(node.ROOT / "tests"))  # for support.engines

from support.engines import ClickHouseCluster, PostgresServer, engines_available
from trubrics_ingestion.forward import Forwarder, open_sink, parse_sink_url
from trubrics_ingestion.forward.clickhouse import encode_json_lines
from trubrics_ingestion.forward.cursors import reset
from trubrics_ingestion.forward.postgres import encode_copy
from trubrics_ingestion.forward.sink import Columns
from trubrics_ingestion.store import batches, read
from trubrics_ingestion.store.sqlite import connect

TARGET = 100_000
CPU_TARGET_US = 4.0  # issue 10: the node's CPU per event forwarded, into each engine
BACKLOG_EVENTS = 400_000
ENGINES = ("postgresql", "clickhouse")
SETUPS = {"postgresql": ("postgresql",), "clickhouse": ("clickhouse",), "both": ENGINES}
LABELS = {
    "postgresql": "postgresql",
    "clickhouse": "clickhouse cluster (2 shards)",
    "both": "both at once (all in both)",
}
POLL_S = 0.02
DELIVER_TIMEOUT_S = 300.0


# --- engines -------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """Fresh, empty tables in one engine: where one measurement forwards to."""

    engine: str  # "postgresql" or "clickhouse"
    database: str
    url: str  # as --forward-to takes it

    @property
    def cursor(self) -> str:
        """The id of this destination's cursor in the node's store."""
        return parse_sink_url(self.url).id


class Engines:
    """The throwaway PostgreSQL server and 2-shard ClickHouse cluster of one bench run."""

    def __init__(self, postgres: PostgresServer, clickhouse: ClickHouseCluster) -> None:
        self.postgres = postgres
        self.clickhouse = clickhouse

    def fresh(self, engine: str) -> Destination:
        """A new database in ``engine`` with the product's tables already created."""
        name = f"bench_{uuid.uuid4().hex[:12]}"
        if engine == "postgresql":
            self.postgres.psql(f"CREATE DATABASE {name}")
            url = self.postgres.url.rsplit("/", 1)[0] + "/" + name
        else:
            port, cluster = self.clickhouse.nodes[0].http_port, self.clickhouse.cluster
            url = f"clickhouse://127.0.0.1:{port}/{name}?cluster={cluster}"
        sink = open_sink(parse_sink_url(url))
        try:
            sink.migrate()
        finally:
            sink.close()
        return Destination(engine, name, url)

    def contents(self, dest: Destination) -> dict[str, Any]:
        """Rows, distinct ids and the MD5 of the sorted ids (one a line) in ``dest``; for
        ClickHouse, ``FINAL`` (each id once) and ``raw_rows`` (before merging: a batch sent
        twice shows there, which the table's design absorbs but a clean run should not do)."""
        if dest.engine == "postgresql":
            out = self.postgres.psql(
                "SELECT count(*), count(DISTINCT id),"
                " md5(string_agg(id::text, E'\\n' ORDER BY id)) FROM events",
                database=dest.database,
            )
            rows, distinct, digest = out.strip().split("|")
            raw = rows
        else:
            table = f"{dest.database}.events"
            out = self.clickhouse.query(
                f"SELECT count(), uniqExact(id),"
                f" lower(hex(MD5(arrayStringConcat(arraySort(groupArray(id)), '\\n'))))"
                f" FROM {table} FINAL"
            )
            rows, distinct, digest = out.strip().split("\t")
            raw = self.clickhouse.query(f"SELECT count() FROM {table}").strip()
        return {"rows": int(rows), "distinct": int(distinct), "raw_rows": int(raw), "md5": digest}

    def check(self, dest: Destination, expected: Backlog) -> dict[str, Any]:
        """``dest``'s contents and the verdict: "exact" when it holds the backlog's events,
        each once, and nothing else."""
        found = self.contents(dest)
        exact = found["rows"] == found["distinct"] == expected.events
        exact = exact and found["md5"] == expected.md5
        found["verdict"] = "exact" if exact else "MISMATCH"
        found["sent_twice"] = found["raw_rows"] - found["rows"]  # ClickHouse: FINAL hides them
        if not exact:
            print(
                f"\n!!! {dest.engine} HOLDS OTHER EVENTS THAN THE STORE: {found},"
                f" expected {expected.events} events, md5 {expected.md5}\n",
                file=sys.stderr,
                flush=True,
            )
        return found

    def cpu_seconds(self, dests: Sequence[Destination]) -> dict[str, float]:
        """CPU used so far by the processes of each engine of ``dests`` (ZooKeeper aside: it
        has no part in inserts into tables that are not replicated)."""
        return {dest.engine: self._engine_cpu_seconds(dest.engine) for dest in dests}

    def _engine_cpu_seconds(self, engine: str) -> float:
        if engine == "postgresql":
            return node.tree_cpu_seconds(_pid(self.postgres.process.pid))
        shards = (shard.process.pid for shard in self.clickhouse.nodes)
        return sum(node.tree_cpu_seconds(_pid(pid)) for pid in shards)

    def drop(self, dest: Destination) -> None:
        """Free the engine of a finished measurement's rows (each shard on its own: no
        distributed DDL queue to wait for)."""
        if dest.engine == "postgresql":
            self.postgres.psql(f"DROP DATABASE {dest.database}")
        else:
            for shard in self.clickhouse.nodes:
                shard.query(f"DROP DATABASE IF EXISTS {dest.database}")


def _pid(pid: int | None) -> int:
    assert pid is not None, "engine not running"
    return pid


@contextmanager
def engines() -> Iterator[Engines]:
    """Start PostgreSQL and the ClickHouse cluster (with its ZooKeeper); stop them after."""
    reason = engines_available()
    if reason is not None:
        raise SystemExit(f"bench: the engines cannot run here: {reason}")
    started = time.monotonic()
    with PostgresServer() as postgres, ClickHouseCluster(shards=2) as clickhouse:
        elapsed = time.monotonic() - started
        print(f"engines: PostgreSQL and a 2-shard ClickHouse cluster up in {elapsed:.1f} s")
        yield Engines(postgres, clickhouse)


# --- the backlog ---------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """The newest batches of a node's store: what one measurement forwards."""

    database: Path
    after: int  # the cursor: every batch with a larger number is in the backlog
    events: int
    md5: str  # of the backlog's ids, sorted, one a line


def backlog_of(database: Path, events: int = 0) -> Backlog:
    """The newest batches that hold at least ``events`` events (0: the whole store), their
    ids as the product's reader expands them."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        after = cursor_before(conn, events or batches.total(conn))
        ids = sorted(row.id for row in read.rows(conn, after=after))
    finally:
        conn.close()
    return Backlog(database, after, len(ids), ids_md5(ids))


def cursor_before(conn: sqlite3.Connection, events: int) -> int:
    """The batch after which the newest batches hold ``events`` events or more (0: all)."""
    held = 0
    for batch, count in conn.execute("SELECT batch, events FROM batches ORDER BY batch DESC"):
        if held >= events:
            return int(batch)
        held += count
    return 0


def ids_md5(ids: Sequence[str]) -> str:
    """What ``Engines.contents`` computes in the engines, here for the store."""
    return hashlib.md5("\n".join(ids).encode()).hexdigest()


# --- forwarding ----------------------------------------------------------------------


class _ErrorCount(logging.Handler):
    """Counts the forwarder's error logs: a failed batch is retried (and would be sent
    twice), so a clean measurement has none."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.first = self.first or record.getMessage()


def deliver(
    engines: Engines,
    backlog: Backlog,
    dests: Sequence[Destination],
    round_index: int,
    setup: str,
    batch_rows: int | None = None,
) -> Run:
    """Forward the backlog to ``dests`` once: seconds until each had confirmed all of it,
    errors the forwarder logged, and CPU per event of the forwarder's threads for each
    engine (``forwarder_threads_cpu``) and of each engine's processes meanwhile."""
    conn = connect(backlog.database)
    try:
        for dest in dests:
            reset(conn, dest.cursor, backlog.after)
    finally:
        conn.close()
    forwarder = Forwarder(backlog.database, [dest.url for dest in dests], batch_rows=batch_rows)
    errors = _ErrorCount()
    logger = logging.getLogger("trubrics_ingestion.forward")
    logger.addHandler(errors)
    stop = threading.Event()
    runner = threading.Thread(target=forwarder.run, args=(stop,), name="forwarder")
    done: dict[str, float] = {}
    cpu_before = {**engines.cpu_seconds(dests), **{node_cpu(d): 0.0 for d in dests}}  # new threads
    started = time.perf_counter()
    runner.start()
    try:
        while len(done) < len(dests):
            time.sleep(POLL_S)
            statuses = forwarder.status()
            elapsed = time.perf_counter() - started
            for dest, status in zip(dests, statuses, strict=True):
                if dest.engine not in done and status.backlog_rows == 0:
                    done[dest.engine] = elapsed
            if elapsed > DELIVER_TIMEOUT_S:
                health = forwarder.health()
                raise RuntimeError(f"backlog not delivered in {elapsed:.0f} s: {health}")
        cpu_after = {**engines.cpu_seconds(dests), **forwarder_threads_cpu(dests)}
    finally:
        stop.set()
        runner.join()
        forwarder.close()
        logger.removeHandler(errors)
    if errors.count:
        print(f"\n!!! FORWARDER ERRORS ({errors.count}): {errors.first}\n", file=sys.stderr)
    cpu = {name: (cpu_after[name] - cpu_before[name]) * 1e6 / backlog.events for name in cpu_before}
    return Run(setup, round_index, backlog.events, done, errors.count, cpu, {})


def node_cpu(dest: Destination) -> str:
    """The name of the node's CPU forwarding into ``dest``'s engine, in ``Run`` figures."""
    return NODE_CPU[dest.engine]


def forwarder_threads_cpu(dests: Sequence[Destination]) -> dict[str, float]:
    """CPU seconds so far of the forwarder's live threads for each destination: its worker
    (``forward ID``) and its lanes (``send ID_n``), as ``forwarder.py`` names them."""
    cpu = {node_cpu(dest): 0.0 for dest in dests}
    for thread in threading.enumerate():
        for dest in dests:
            mine = thread.name == f"forward {dest.cursor}"
            if (mine or thread.name.startswith(f"send {dest.cursor}_")) and thread.ident:
                clock = time.pthread_getcpuclockid(thread.ident)
                cpu[node_cpu(dest)] += time.clock_gettime(clock)
    return cpu


@dataclass
class Run:
    """One setup (one engine, or both) forwarding the backlog once."""

    setup: str  # a key of SETUPS
    round: int
    events: int
    seconds: dict[str, float]  # per engine: until it had confirmed the whole backlog
    forwarder_errors: int
    cpu_us_per_event: dict[str, float]  # the node's into each engine ("node -> E"), each E's
    checks: dict[str, dict[str, Any]]  # per engine: Engines.check

    def events_per_s(self, engine: str | None = None) -> float:
        """Into ``engine``, or (None) until every engine of the setup had everything."""
        seconds = self.seconds[engine] if engine else max(self.seconds.values())
        return self.events / seconds

    @property
    def verified(self) -> bool:
        return all(check["verdict"] == "exact" for check in self.checks.values())


def forward_round(
    engines: Engines, backlog: Backlog, index: int, batch_rows: int | None = None
) -> list[Run]:
    """Each setup once, in an order that rotates with ``index`` (drift hits all alike)."""
    order = list(SETUPS)
    shift = (index - 1) % len(order)
    runs = []
    for setup in order[shift:] + order[:shift]:
        dests = [engines.fresh(engine) for engine in SETUPS[setup]]
        run = deliver(engines, backlog, dests, index, setup, batch_rows)
        run.checks = {dest.engine: engines.check(dest, backlog) for dest in dests}
        for dest in dests:
            engines.drop(dest)
        runs.append(run)
        progress(run)
    return runs


def progress(run: Run) -> None:
    rates = "  ".join(f"{e} {run.events_per_s(e):>9,.0f}/s" for e in SETUPS[run.setup])
    verdicts = " ".join(check["verdict"] for check in run.checks.values())
    cpu = " ".join(f"{name} {us:.1f}" for name, us in run.cpu_us_per_event.items())
    print(
        f"forward {'warm-up' if run.round == 0 else f'round {run.round}'} {run.setup:>10}:"
        f" {run.events_per_s():>9,.0f} events/s"
        f"  ({rates})  CPU us/event: {cpu}  errors {run.forwarder_errors}  [{verdicts}]",
        flush=True,
    )


def measure(
    engines: Engines, backlog: Backlog, rounds: int, batch_rows: int | None = None
) -> list[Run]:
    """``rounds`` rounds of every setup, after a warm-up round (numbered 0: checked, not
    timed): a freshly created server's first writes also create its files (PostgreSQL
    zero-fills each new 16 MB WAL segment; a server in service recycles them), which made
    every first round slower. Production's batch sizes unless told otherwise."""
    sizes = f"{batch_rows:,}" if batch_rows else "the engine's (forwarder.DELIVERY)"
    print(
        f"forwarding a backlog of {backlog.events:,} events in batches of {sizes},"
        f" a warm-up round and {rounds} rounds (load average {os.getloadavg()[0]:.2f})",
        flush=True,
    )
    return [
        run
        for index in range(rounds + 1)
        for run in forward_round(engines, backlog, index, batch_rows)
    ]


# --- where the Python time goes ------------------------------------------------------


def python_costs(backlog: Backlog, batch: int = 5000) -> dict[str, float]:
    """Rows/s of each Python stage of the forwarder alone, on one core: reading the store
    and expanding its batches, encoding for each engine (what the forwarder's threads share
    one GIL for)."""
    conn = connect(backlog.database)
    node = batches.node_id(conn)
    started = time.perf_counter()
    chunks, chunk = [], Columns.empty()
    for stored in batches.read_range(conn, backlog.after, batches.newest(conn)):
        chunk.extend(batches.columns_of(stored, node))
        if chunk.size >= batch:
            chunks.append(chunk)
            chunk = Columns.empty()
    chunks.append(chunk)
    reading = time.perf_counter() - started
    conn.close()
    events = sum(chunk.size for chunk in chunks)
    costs = {"read + expand": events / reading}
    for name, encode in (("COPY encode", encode_copy), ("JSONEachRow encode", encode_json_lines)):
        started = time.perf_counter()
        for chunk in chunks:
            encode(chunk)
        costs[name] = events / (time.perf_counter() - started)
    return costs


# --- summary -------------------------------------------------------------------------


NODE_CPU = {engine: f"node -> {engine}" for engine in ENGINES}  # see node_cpu()
SHORT = {"postgresql": "pg", "clickhouse": "ch"}
CPU_COLUMNS = {  # figure -> its column's head
    **{name: f"node->{SHORT[engine]}" for engine, name in NODE_CPU.items()},
    **{engine: SHORT[engine] for engine in ENGINES},
}


def summarise(runs: list[Run], costs: dict[str, float], target: float) -> dict[str, Any]:
    """Medians per setup (and per engine within "both"), each against ``target``, and the
    median CPU per event of the forwarder and of each engine, per setup."""
    summary: dict[str, Any] = {"target": target, "events": runs[0].events if runs else 0}
    rates: dict[str, list[float]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    for run in (run for run in runs if run.round > 0):  # round 0 warmed up: not timed
        rates.setdefault(run.setup, []).append(run.events_per_s())
        for name, us in run.cpu_us_per_event.items():
            cpu.setdefault(run.setup, {}).setdefault(name, []).append(us)
        if len(SETUPS[run.setup]) > 1:
            for engine in SETUPS[run.setup]:
                rates.setdefault(f"{run.setup}: {engine}", []).append(run.events_per_s(engine))
    summary["rates"] = {
        name: {
            "median": statistics.median(values),
            "rounds": values,
            "pass": statistics.median(values) >= target,
            "cpu_us_per_event": {k: statistics.median(v) for k, v in cpu.get(name, {}).items()},
        }
        for name, values in rates.items()
    }
    summary["drain_events_per_s"] = summary["rates"]["both"]["median"]
    summary["pass"] = all(row["pass"] for row in summary["rates"].values())
    summary["node_cpu_us_per_event"] = {
        engine: summary["rates"][engine]["cpu_us_per_event"][NODE_CPU[engine]] for engine in ENGINES
    }
    summary["verified"] = all(run.verified for run in runs)
    summary["forwarder_errors"] = sum(run.forwarder_errors for run in runs)
    summary["sent_twice"] = sum(c["sent_twice"] for run in runs for c in run.checks.values())
    summary["python_rows_per_s"] = costs
    summary["runs"] = [asdict(run) for run in runs]
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    target = summary["target"]
    rounds = len(summary["rates"]["both"]["rounds"])
    print(
        f"\nforwarding a backlog of {summary['events']:,} events into fresh tables, real"
        f" Forwarder (a thread per engine), medians of {rounds} rounds:\n"
    )
    cpu_head = "".join(f"{head:>10}" for head in CPU_COLUMNS.values())
    print(f"{'':30}{'events/s':>10}{'target':>9}{'':6}  CPU us/event:{cpu_head}   rounds")
    for name, row in summary["rates"].items():
        label = name if name.startswith("both:") else LABELS[name]
        cpu = row["cpu_us_per_event"]
        cells = "".join(f"{cpu[c]:>10.2f}" if c in cpu else f"{'':>10}" for c in CPU_COLUMNS)
        runs = ", ".join(f"{rate:,.0f}" for rate in row["rounds"])
        print(
            f"{label:30}{row['median']:>10,.0f}{target:>9,.0f}  {node.verdict(row['pass'])}"
            f"  {'':13}{cells}   ({runs})"
        )
    print(
        "CPU us/event: node->E, the node's forwarder threads for engine E (reading, expanding,"
        " encoding, sending); E, engine E's own processes, per row it received"
    )
    for engine, us in summary["node_cpu_us_per_event"].items():
        print(
            f"node CPU per event forwarded into {engine} (alone): {us:.2f} us"
            f" (target <= {CPU_TARGET_US:.0f}): {node.verdict(us <= CPU_TARGET_US)}"
        )
    costs = ", ".join(f"{k} {v:,.0f}" for k, v in summary["python_rows_per_s"].items())
    print(f"forwarder's Python work alone, rows/s on one core: {costs}")
    verdict = "exact" if summary["verified"] else "MISMATCH"
    errors, twice = summary["forwarder_errors"], summary["sent_twice"]
    print(
        f"verification: each engine held the backlog's events, each once (count, distinct ids,"
        f" MD5 of the ids = the store's): {verdict}; forwarder errors: {errors};"
        f" rows sent twice: {twice}"
    )


# --- standalone ----------------------------------------------------------------------


def loaded_store(workdir: Path, seconds: int, wrk: node.Wrk) -> Path:
    """A node's store after ``seconds`` of wrk."""
    with node.running("node", workdir) as server:
        load = node.run_wrk(server, seconds, wrk)
    stored = node.stored_events(server.data_dir)
    print(f"store: {load.events_per_s:,.0f} events/s acknowledged, {stored:,} stored")
    return server.database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="a node's data dir (default: fill one)")
    parser.add_argument("--load", type=int, default=5, help="seconds of wrk to fill the store")
    parser.add_argument("--events", type=int, default=BACKLOG_EVENTS, help="0: the whole store")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, help="rows per batch (default: per engine)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        if args.data_dir:
            database = args.data_dir / "trubrics.db"
        else:
            database = loaded_store(Path(tmp), args.load, node.Wrk(connections=64, threads=1))
        backlog = backlog_of(database, args.events)
        costs = python_costs(backlog)
        with engines() as running:
            runs = measure(running, backlog, args.rounds, args.batch)
    summary = summarise(runs, costs, TARGET)
    print_summary(summary)
    return 0 if summary["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
