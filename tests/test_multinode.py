"""Two ingestion nodes in front of one PostgreSQL and one 2-shard ClickHouse cluster, end to
end: real ``trubrics-ingestion serve`` processes (each with its own data dir, sharing one key
registry in the PostgreSQL, where both seed the same key from ``TRUBRICS_INIT_API_KEY``,
both forwarding to both engines), loaded concurrently by client threads sending batches of
100 uniquely marked events to either node.

Whatever happens to an engine or a node, each engine must end with exactly the events the
nodes acknowledged: N rows, N distinct ids, and each id (with its user_id) one that a node
exports. The cases: plain load (and the rows spread over both shards), ClickHouse down for
10 s under load, PostgreSQL down for 10 s under load (the registry with it: the nodes answer
200 throughout with the key they know), and
``kill -9`` of a node's every process while its backlog towards the engines is non-empty.

The engines are module-scoped and shared by the tests, so every test marks its events with
its own ``user_id`` prefix and counts only those; an outage test always restarts its engine.

The nodes keep the forwarder's default backoff (0.5 s doubling up to 10 s), as deployed, and
every wait has a deadline that also allows for a full step on a slow machine.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import requests

from support.engines import ClickHouseCluster, PostgresServer
from support.node import CLI, Node
from support.processes import kill_node
from trubrics_ingestion.forward import forward_status

PROJECT = "multinode"
KEY = "trb_" + secrets.token_urlsafe(32)  # 43 url-safe characters, as the node's own keys
EVENTS_PER_BATCH = 100
WORKERS = 4
REQUEST_TIMEOUT_S = 15.0
OUTAGE_S = 10.5  # an engine stays fully stopped this long (the issue asks for >= 10 s)
CONVERGE_S = 120.0  # room for one 30 s backoff step and a slow 2-core machine
BATCH_SHAPE = {"event": "multinode", "timestamp": "2026-06-20T12:00:00Z"}


# --- nodes ------------------------------------------------------------------------------------


def database_of(node: Node) -> Path:
    return node.data_dir / "trubrics.db"


@pytest.fixture
def nodes(
    tmp_path: Path, postgres: PostgresServer, clickhouse: ClickHouseCluster
) -> Iterator[list[Node]]:
    """Two running nodes, each its own data dir, one registry and seeded key, forwarding to
    both engines."""
    env = {
        "TRUBRICS_REGISTRY": postgres.url,
        "TRUBRICS_INIT_PROJECT": PROJECT,
        "TRUBRICS_INIT_API_KEY": KEY,
        "TRUBRICS_FORWARD_TO": f"{postgres.url} {clickhouse.url}",
    }
    started: list[Node] = []
    try:
        for n in range(2):
            node = Node(data_dir=tmp_path / f"node{n}", key=KEY, project=PROJECT, env=env)
            started.append(node)
            node.start()
        yield started
    finally:
        for node in started:
            if node.process is not None:
                if node.process.poll() is None:
                    kill_node(node)
                else:
                    node.process = None


# --- load -------------------------------------------------------------------------------------


@dataclass
class Batch:
    node: int  # index of the node it was sent to (a resend goes to the same one: its dedup)
    body: bytes
    status: int | None = None  # the latest answer; None: no answer (connection lost)
    text: str = ""
    answered_at: float = 0.0


@dataclass
class Load:
    """``WORKERS`` threads posting uniquely marked batches of 100 events, alternating between
    the nodes that are up, each with ``pause_s`` between its batches (and stopping after
    ``batches`` each, if given). A batch is never resent while the load runs."""

    nodes: list[Node]
    prefix: str
    pause_s: float = 0.0
    batches: int | None = None
    sent: dict[str, Batch] = field(default_factory=dict)
    up: list[bool] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self.up = [True] * len(self.nodes)
        self._threads = [
            threading.Thread(target=self._work, args=(w,), name=f"load-{w}", daemon=True)
            for w in range(WORKERS)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in self._threads), "a load thread hangs"

    def body(self, tag: str) -> bytes:
        events = [
            {**BATCH_SHAPE, "user_id": f"{tag}-{i}", "properties": {"tag": tag, "i": i}}
            for i in range(EVENTS_PER_BATCH)
        ]
        return json.dumps(events).encode()

    def _work(self, worker: int) -> None:
        sessions = [requests.Session() for _ in self.nodes]
        n = 0
        while not self._stop.is_set() and (self.batches is None or n < self.batches):
            candidates = [i for i, up in enumerate(self.up) if up]
            if not candidates:
                time.sleep(0.05)
                continue
            target = candidates[(worker + n) % len(candidates)]
            tag = f"{self.prefix}-w{worker}-b{n}"
            batch = Batch(target, self.body(tag))
            with self.lock:
                self.sent[tag] = batch
            n += 1
            try:
                self.deliver(batch, sessions[target])
            except requests.RequestException:
                sessions[target].close()
                sessions[target] = requests.Session()
            if self.pause_s:
                self._stop.wait(self.pause_s)
        for session in sessions:
            session.close()

    def deliver(self, batch: Batch, session: requests.Session | None = None) -> None:
        """Post ``batch`` to its node and file the answer (None when there is none)."""
        post = (session or requests).post
        try:
            response = post(
                self.nodes[batch.node].url + "/publish_events",
                data=batch.body,
                headers={"x-api-key": KEY, "content-type": "application/json"},
                timeout=REQUEST_TIMEOUT_S,
            )
        except requests.RequestException:
            with self.lock:
                batch.status, batch.text = None, "no answer"
            raise
        with self.lock:
            batch.status, batch.text = response.status_code, response.text
            batch.answered_at = time.monotonic()

    def resend_unanswered(self) -> int:
        """Send the batches that got no answer again, byte for byte, to the node they were
        sent to: it stores each exactly once, whether or not the first attempt was stored."""
        unanswered = [batch for batch in self.sent.values() if batch.status is None]
        for batch in unanswered:
            self.deliver(batch)
        return len(unanswered)

    def statuses(self) -> dict[int | None, int]:
        with self.lock:
            counts: dict[int | None, int] = {}
            for batch in self.sent.values():
                counts[batch.status] = counts.get(batch.status, 0) + 1
            return counts

    def acked_between(self, node: int, start: float, end: float) -> int:
        with self.lock:
            return sum(
                1
                for b in self.sent.values()
                if b.node == node and b.status == 200 and start <= b.answered_at <= end
            )

    def check_all_acknowledged(self) -> int:
        """Every batch answered 200 with the right count; returns the events sent."""
        wrong = [
            (tag, b.status, b.text[:200])
            for tag, b in self.sent.items()
            if b.status != 200
            or {k: v for k, v in json.loads(b.text).items() if k != "duplicate"}
            != {"status": "success", "events": EVENTS_PER_BATCH}
        ]
        assert not wrong, f"{len(wrong)} batches not acknowledged, e.g. {wrong[:5]}"
        return len(self.sent) * EVENTS_PER_BATCH

    def user_ids(self) -> set[str]:
        return {f"{tag}-{i}" for tag in self.sent for i in range(EVENTS_PER_BATCH)}

    def wait_for_acks(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.statuses().get(200, 0) < count:
            assert time.monotonic() < deadline, f"fewer than {count} acks in {timeout_s} s"
            time.sleep(0.05)


# --- checks -----------------------------------------------------------------------------------


def new_prefix(name: str) -> str:
    """A per-test mark for user_ids (no ``_`` or ``%``: it is used in LIKE patterns)."""
    return f"mn-{name}-{uuid.uuid4().hex[:8]}"


def pg_counts(postgres: PostgresServer, prefix: str) -> tuple[int, int]:
    out = postgres.psql(
        f"SELECT count(*), count(DISTINCT id) FROM events WHERE user_id LIKE '{prefix}-%'"
    )
    total, distinct = out.strip().split("|")
    return int(total), int(distinct)


def ch_counts(clickhouse: ClickHouseCluster, prefix: str) -> tuple[int, int]:
    out = clickhouse.query(
        f"SELECT count(), uniqExact(id) FROM events FINAL WHERE user_id LIKE '{prefix}-%'"
    )
    total, distinct = out.split()
    return int(total), int(distinct)


def backlogs(node: Node, urls: list[str]) -> list[int]:
    """Rows of ``node`` not yet confirmed by each engine, read from its store."""
    return [status.backlog_rows for status in forward_status(database_of(node), urls)]


@contextlib.contextmanager
def engines_held(postgres: PostgresServer, clickhouse: ClickHouseCluster) -> Iterator[None]:
    """Neither engine takes rows meanwhile: PostgreSQL's ``events`` is locked by a transaction
    of ours (a COPY into it waits), and the ClickHouse servers are stopped (SIGSTOP: an insert
    hangs). Connections stay open, so nothing fails: deliveries just wait."""
    with psycopg.connect(postgres.url) as conn:
        conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        for node in clickhouse.nodes:
            node.process.send(signal.SIGSTOP)
        try:
            yield
        finally:
            for node in clickhouse.nodes:
                node.process.send(signal.SIGCONT)
            conn.rollback()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> float:
    """Poll ``condition`` (errors count as "not yet"); the seconds it took, or fail."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if condition():
                return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"not within {timeout_s} s: {what()}")
        time.sleep(0.25)


def _pairs(text: str, separator: str) -> dict[str, str]:
    """An engine client's two-column output (id, user_id) as a dict."""
    return dict(line.split(separator) for line in text.split("\n") if line)


def check_engines_hold_exactly_what_was_acknowledged(
    nodes: list[Node],
    load: Load,
    postgres: PostgresServer,
    clickhouse: ClickHouseCluster,
) -> dict[str, float]:
    """Every batch acknowledged; both nodes' backlogs drained; each engine holds exactly the
    N exported events, once each, with their ids; ClickHouse's spread over both shards."""
    expected = load.check_all_acknowledged()
    prefix = load.prefix
    exported: dict[str, str] = {}
    per_node = []
    for node in nodes:
        records = node.export()
        per_node.append(len(records))
        for record in records:
            id_ = record["id"].lower()
            assert id_ not in exported, f"id {id_} exported twice"
            exported[id_] = record["user_id"]
    assert len(exported) == expected, (len(exported), expected)
    assert set(exported.values()) == load.user_ids()
    assert min(per_node) > 0, f"a node stored nothing: {per_node}"

    urls = [postgres.url, clickhouse.url]
    drained_s = wait_until(
        lambda: (
            all(b == 0 for node in nodes for b in backlogs(node, urls))
            and pg_counts(postgres, prefix)[0] == expected
            and ch_counts(clickhouse, prefix)[0] == expected
        ),
        CONVERGE_S,
        lambda: (
            f"expected {expected}; postgres {pg_counts(postgres, prefix)}, clickhouse"
            f" {ch_counts(clickhouse, prefix)}, backlogs {[backlogs(n, urls) for n in nodes]}"
            f"\n{nodes[0].log()[-3000:]}\n{nodes[1].log()[-3000:]}"
        ),
    )
    assert pg_counts(postgres, prefix) == (expected, expected)
    assert ch_counts(clickhouse, prefix) == (expected, expected)

    where = f"WHERE user_id LIKE '{prefix}-%'"
    assert _pairs(postgres.psql(f"SELECT id, user_id FROM events {where}"), "|") == exported
    in_ch = clickhouse.query(f"SELECT id, user_id FROM events FINAL {where}")
    assert _pairs(in_ch, "\t") == exported

    per_shard = [
        int(
            clickhouse.query(
                f"SELECT count() FROM events_local FINAL {where}",
                node=shard,
            )
        )
        for shard in range(len(clickhouse.nodes))
    ]
    assert sum(per_shard) == expected and min(per_shard) > expected // 4, per_shard
    raw = int(clickhouse.query(f"SELECT count() FROM events {where}"))
    return {
        "events": expected,
        "drained_s": round(drained_s, 1),
        "ch_rows_before_final": raw,
        "node0": per_node[0],
        "node1": per_node[1],
        "shard1": per_shard[0],
        "shard2": per_shard[1],
    }


def report(capsys: pytest.CaptureFixture[str], name: str, figures: dict[str, object]) -> None:
    with capsys.disabled():
        print(f"\n[multinode] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# --- tests ------------------------------------------------------------------------------------


def test_two_nodes_forward_every_event_once_to_both_engines(
    nodes: list[Node],
    postgres: PostgresServer,
    clickhouse: ClickHouseCluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    listed = subprocess.run(
        [*CLI, "keys", "list", "--json", "--registry", postgres.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    mine = [key for key in map(json.loads, listed) if key["project"] == PROJECT]
    assert len(mine) == 1, mine  # both nodes seeded the same key: one entry in the registry

    started = time.monotonic()
    with Load(nodes, new_prefix("spread"), batches=15) as load:
        load.join()
    figures = check_engines_hold_exactly_what_was_acknowledged(nodes, load, postgres, clickhouse)
    report(capsys, "two nodes", {**figures, "total_s": round(time.monotonic() - started, 1)})


@pytest.mark.parametrize("engine", ["clickhouse", "postgres"])
def test_an_engine_down_for_10_s_under_load_loses_and_doubles_nothing(
    engine: str,
    nodes: list[Node],
    postgres: PostgresServer,
    clickhouse: ClickHouseCluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target: PostgresServer | ClickHouseCluster = postgres if engine == "postgres" else clickhouse
    url = target.url
    started = time.monotonic()
    with Load(nodes, new_prefix(f"down-{engine}"), pause_s=0.3) as load:
        load.wait_for_acks(20, 30)
        stopping = time.monotonic()
        try:
            target.stop()
            down = time.monotonic()
            time.sleep(OUTAGE_S)
            # The nodes kept acknowledging and the engine's backlog grew on both.
            outage_backlogs = [backlogs(node, [url])[0] for node in nodes]
            up_at = time.monotonic()
        finally:
            target.start()
        restarted = time.monotonic()
        acks_while_down = [load.acked_between(n, down, up_at) for n in range(len(nodes))]
        time.sleep(2)
    assert load.statuses() == {200: len(load.sent)}, load.statuses()
    assert all(acks > 10 for acks in acks_while_down), acks_while_down
    assert all(backlog > 0 for backlog in outage_backlogs), outage_backlogs

    figures = check_engines_hold_exactly_what_was_acknowledged(nodes, load, postgres, clickhouse)
    report(
        capsys,
        f"{engine} down",
        {
            **figures,
            "stop_s": round(down - stopping, 1),
            "down_s": round(up_at - down, 1),
            "restart_s": round(restarted - up_at, 1),
            "batches_acked_while_down": acks_while_down,
            "backlog_at_restart": outage_backlogs,
            "total_s": round(time.monotonic() - started, 1),
        },
    )


def test_kill_9_of_a_node_mid_forward_loses_and_doubles_nothing(
    nodes: list[Node],
    postgres: PostgresServer,
    clickhouse: ClickHouseCluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    urls = [postgres.url, clickhouse.url]
    victim = nodes[0]
    started = time.monotonic()

    def delivered_some() -> bool:
        return all(s.cursor > 0 for s in forward_status(database_of(victim), urls))

    def backlog_towards_both() -> bool:
        return all(backlog > 0 for backlog in backlogs(victim, urls))

    with Load(nodes, new_prefix("kill"), pause_s=0.02) as load:
        load.wait_for_acks(20, 30)
        wait_until(delivered_some, 30, lambda: f"nothing delivered: {backlogs(victim, urls)}")
        # Held engines take no rows, so the backlog can only grow: the kill is certain to find
        # work left towards both, and catches the forwarder in the middle of a send.
        with engines_held(postgres, clickhouse):
            wait_until(backlog_towards_both, 30, lambda: f"no backlog: {backlogs(victim, urls)}")
            load.up[0] = False
            children = kill_node(victim)
            left = backlogs(victim, urls)
        time.sleep(1)
        victim.start()
        load.up[0] = True
        time.sleep(2)
    assert len(children) == 1, f"expected the forwarder: {children}"
    assert min(left) > 0, f"nothing left to forward at the kill: {left}"
    unanswered = load.resend_unanswered()
    figures = check_engines_hold_exactly_what_was_acknowledged(nodes, load, postgres, clickhouse)
    report(
        capsys,
        "kill -9",
        {
            **figures,
            "backlog_at_kill": left,
            "resent": unanswered,
            "total_s": round(time.monotonic() - started, 1),
        },
    )
