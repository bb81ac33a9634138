"""The console over plain HTTP against a real ``serve``: tokens, sessions, headers, and what
its live stream costs ingestion (nothing measurable, even when a reader stalls)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from support.browser import console_token
from support.engines import ClickHouseCluster, EngineError
from support.node import Node
from support.waiting import wait_until
from trubrics_ingestion.console.live import Filters, LiveFeed
from trubrics_ingestion.ingest.app import Exchange
from trubrics_ingestion.schema import decode_batch

STALLED_READERS = 3
ROUNDS = 150  # publish requests timed per phase
LATENCY_BOUND = (1.5, 0.002)  # stalled median <= 1.5 x the median without + 2 ms


def sign_in(node: Node, token: str | None = None) -> str:
    """A session cookie's value, from the sign-in link."""
    link = f"{node.url}/console?token={token or console_token(node)}"
    response = requests.get(link, allow_redirects=False, timeout=10)
    assert response.status_code == 303 and response.headers["location"] == "/console"
    return str(response.cookies["trubrics_console"])


def as_cookie(session: str) -> dict[str, str]:
    return {"cookie": f"trubrics_console={session}"}


def test_console_tokens_are_listed_and_revoked_like_keys(node: Node) -> None:
    made = json.loads(node.cli("console", "token", "--json").stdout)
    assert made["token"].startswith("trc_") and made["id"].startswith("ctk_")
    listed = [json.loads(line) for line in node.cli("console", "list", "--json").stdout.split()]
    assert listed == [{"id": made["id"], "hint": "…" + made["token"][-4:], "state": "active"}]
    store = (node.data_dir / "trubrics.db").read_bytes()
    assert made["token"].encode() not in store
    assert node.cli("console", "revoke", made["id"]).returncode == 0
    again = node.cli("console", "revoke", made["id"], check=False)
    assert again.returncode == 1 and "no active console token" in again.stderr
    refused = requests.get(f"{node.url}/console?token={made['token']}", timeout=10)
    assert refused.status_code == 401 and "not a valid console token" in refused.text


def test_serve_logs_the_console_url_and_never_a_token(node: Node) -> None:
    token = console_token(node)
    sign_in(node, token)
    log = node.log()
    assert f'"console":"{node.url}/console"' in log
    assert token not in log


def test_every_console_answer_carries_a_content_security_policy(node: Node) -> None:
    for path in ("/console", "/console/static/live.js", "/console/api/overview"):
        headers = requests.get(node.url + path, timeout=10).headers
        policy = headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"


def test_a_cross_site_sign_in_is_refused(node: Node) -> None:
    token = console_token(node)
    for headers in ({"sec-fetch-site": "cross-site"}, {"origin": "http://evil.example"}):
        response = requests.post(
            node.url + "/console/sign-in", data={"token": token}, headers=headers, timeout=10
        )
        assert response.status_code == 403 and "set-cookie" not in response.headers


def test_a_revoked_token_ends_its_sessions(node: Node) -> None:
    token = json.loads(node.cli("console", "token", "--json").stdout)
    cookie = as_cookie(sign_in(node, token["token"]))
    overview = node.url + "/console/api/overview"
    assert requests.get(overview, headers=cookie, timeout=10).status_code == 200
    node.cli("console", "revoke", token["id"])
    wait_until(
        lambda: requests.get(overview, headers=cookie, timeout=10).status_code == 401,
        timeout_s=10,
        what="the session to end",
    )


def test_a_stop_ends_open_streams_at_once(node: Node) -> None:
    stream = requests.get(
        node.url + "/console/api/live", headers=as_cookie(sign_in(node)), stream=True, timeout=10
    )
    assert stream.status_code == 200
    started = time.monotonic()
    assert node.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 3.0  # not the 8 s of the graceful-shutdown timeout


def publish_timed(node: Node, http: requests.Session, rounds: int, tag: str) -> list[float]:
    """Seconds each acknowledged publish of 100 events took."""
    took = []
    for n in range(rounds):
        batch = [
            {"user_id": f"{tag}-{n}-{i}", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}
            for i in range(100)
        ]
        started = time.perf_counter()
        response = http.post(
            node.url + "/publish_events", json=batch, headers={"x-api-key": node.key}, timeout=30
        )
        took.append(time.perf_counter() - started)
        assert response.status_code == 200
    return took


def open_stalled_reader(node: Node, session: str) -> socket.socket:
    """A stream whose reader never reads (a tiny receive buffer: it fills at once)."""
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(("127.0.0.1", node.port))
    reader.sendall(
        f"GET /console/api/live HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\n"
        f"Cookie: trubrics_console={session}\r\n\r\n".encode()
    )
    return reader


def server_queue_bytes(server_port: int, reader: socket.socket) -> int:
    """Bytes the server has written to ``reader``'s connection that are still in its own
    send queue (``/proc/net/tcp``): > 0 once the reader's buffer is full."""
    client_port = reader.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
        if (local, remote) == (server_port, client_port):
            return int(fields[4].split(":")[0], 16)
    return 0


def read_until_skipped(reader: socket.socket) -> int:
    """Read the stalled stream at last, until a message says events were skipped."""
    reader.settimeout(10)
    buffered = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        buffered += reader.recv(1 << 20)
        for line in buffered.split(b"\n"):
            if line.startswith(b'data: {"skipped":') and not line.startswith(b'data: {"skipped":0'):
                return int(line.split(b":")[2].split(b",")[0])
        buffered = buffered[buffered.rfind(b"\n") + 1 :]
    raise AssertionError("no 'events skipped' marker in the stalled stream")


def test_a_stalled_stream_reader_does_not_change_ingest_latency(node: Node) -> None:
    http = requests.Session()
    publish_timed(node, http, 30, "warm")
    without = publish_timed(node, http, ROUNDS, "without")
    session = sign_in(node)
    readers = [open_stalled_reader(node, session) for _ in range(STALLED_READERS)]
    wait_until(
        lambda: (
            bool(publish_timed(node, http, 5, "fill"))
            and all(server_queue_bytes(node.port, reader) > 0 for reader in readers)
        ),
        timeout_s=30,
        what="the readers' connections to fill up",
    )
    stalled = publish_timed(node, http, ROUNDS, "stalled")
    factor, extra_s = LATENCY_BOUND
    before, during = statistics.median(without), statistics.median(stalled)
    print(
        f"median publish latency: {1000 * before:.2f} ms without viewers, {1000 * during:.2f}"
        f" ms with {STALLED_READERS} stalled readers"
    )
    assert during <= before * factor + extra_s, (before, during)
    assert read_until_skipped(readers[0]) > 0
    for reader in readers:
        reader.close()


def test_the_thread_api_reads_from_clickhouse_when_the_node_forwards_there(
    make_node: Any, clickhouse: ClickHouseCluster
) -> None:
    node: Node = make_node(env={"TRUBRICS_FORWARD_TO": clickhouse.url})
    thread = "it's a \\ thread"  # quoted and escaped in ClickHouse's SQL, not injected
    turn = {"user_id": "ada", "prompt": "Hi?", "generation": "Hello!", "thread_id": thread}
    assert node.post("/publish_llm_events", [turn]).status_code == 200
    query = "SELECT count() FROM events FINAL WHERE user_id = 'ada'"

    def forwarded() -> bool:
        try:
            return clickhouse.query(query).strip() == "2"
        except EngineError:  # no table yet: the forwarder creates it
            return False

    wait_until(forwarded, poll_s=0.2, what="the thread forwarded to ClickHouse")
    cookie = as_cookie(sign_in(node))
    url = f"{node.url}/console/api/threads/{requests.utils.quote(thread, safe='')}"
    found = requests.get(url, params={"project": node.project}, headers=cookie, timeout=10).json()
    assert found["source"].startswith("engine clickhouse://")
    assert [e["event"] for e in found["events"]] == ["Prompt", "Generation"]
    assert found["events"][1]["properties"]["$text"] == "Hello!"


def test_the_chart_sums_the_last_hour_of_received_batches_per_minute(tmp_path: Path) -> None:
    """``per_minute`` finds the hour's first batch by a binary search over batch numbers
    (gaps left by pruning included) and sums the narrow rows from there."""
    from trubrics_ingestion.schema import decode_batch
    from trubrics_ingestion.store import batches
    from trubrics_ingestion.store.journal import Batch, insert
    from trubrics_ingestion.store.sqlite import connect, transaction

    conn = connect(tmp_path / "trubrics.db")
    hour = 3_600_000_000
    now = (time.time_ns() // 1000) // 60_000_000 * 60_000_000
    body = b'[{"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}]'
    received = [now - 2 * hour, now - hour - 1, now - hour, now - hour // 2, now - hour // 2]
    received += [now - 60_000_000 + n for n in range(40)]
    with transaction(conn):
        insert(
            conn, [Batch.of("p", "event", at, body, decode_batch(body, "event")) for at in received]
        )
        batches.delete(conn, [3, 10, 11, 12])  # a pruned stretch
    first = batches.first_received(conn, now - hour)
    kept = conn.execute("SELECT batch, received_at FROM batches").fetchall()
    assert {n for n, at in kept if n >= first} == {n for n, at in kept if at >= now - hour}
    assert batches.per_minute(conn, now - hour) == [
        (now - hour // 2, "p", "event", 2),
        (now - 60_000_000, "p", "event", 40 - 3),
    ]
    assert batches.first_received(conn, now + hour) > batches.newest(conn)


@pytest.mark.parametrize("engine", ["postgres", "clickhouse"])
def test_the_overview_chart_counts_every_nodes_events_from_the_engine(
    make_node: Any, request: pytest.FixtureRequest, engine: str
) -> None:
    """With an engine, the chart reads it: another node's events are counted too, by their
    own time (each node's live view stays its own). The engine may hold other tests'
    events: only these two projects are looked at."""
    server = request.getfixturevalue(engine)
    env = {"TRUBRICS_FORWARD_TO": server.url}
    here: Node = make_node(project="here", env=env)
    there: Node = make_node(project="there", env=env)
    now = datetime.now(UTC).isoformat()
    for node, events in ((here, 3), (there, 2)):
        batch = [{"user_id": f"u{n}", "event": "e", "timestamp": now} for n in range(events)]
        assert node.post("/publish_events", batch).status_code == 200
    ours = "project IN ('here', 'there')"
    if engine == "postgres":
        count = lambda: server.psql(f"SELECT count(*) FROM events WHERE {ours}")  # noqa: E731
    else:
        count = lambda: server.query(f"SELECT count() FROM events FINAL WHERE {ours}")  # noqa: E731

    def forwarded() -> bool:
        try:
            return bool(count().strip() == "5")
        except EngineError:  # no table yet: the forwarder creates it
            return False

    wait_until(forwarded, poll_s=0.2, what="both nodes' events in the engine")
    cookie = as_cookie(sign_in(here))
    overview = requests.get(f"{here.url}/console/api/overview", headers=cookie, timeout=10).json()
    counted = {
        (m["project"], m["source"]): m["events"]
        for m in overview["minutes"]
        if m["project"] in ("here", "there")
    }
    assert counted == {("here", "event"): 3, ("there", "event"): 2}, overview["minutes"]
    assert overview["minutes_from"].startswith("every node's events")


def test_the_live_feed_keeps_of_a_queued_batch_only_what_viewers_will_see() -> None:
    """While a batch's commit is awaited, its request keeps only the items the viewers
    will be shown: whole items for at most the feed's events a second, taken when it is
    queued; the rest of its events are counted as skipped once it is answered."""
    call = {"user_id": "u", "prompt": "p", "generation": "g", "timestamp": "2026-06-20T12:00:00Z"}
    llm = decode_batch(json.dumps([call] * 100).encode(), "llm")  # 200 events
    feed = LiveFeed(events_per_s=150)
    viewer = feed.watch(Filters())
    first, second = feed.reserve(llm, 200), feed.reserve(llm, 200)
    assert (len(first[0]), first[1]) == (75, 150)  # 75 calls: their 150 events
    assert (list(second[0]), second[1]) == ([], 0)  # the budget is spent for this second
    answered = []
    for kept, granted in (first, second):
        exchange = Exchange("POST", "/publish_llm_events", "/publish_llm_events", "publish")
        exchange.status, exchange.project, exchange.events = 200, "p", 200
        exchange.stored = ("llm", kept, 1_781_956_800_000_000, granted)
        answered.append(exchange)
    feed.answered(answered)
    message = asyncio.run(viewer.next(timeout_s=1.0))
    assert message is not None and message.startswith(b"data: ")
    shown = json.loads(message[len(b"data: ") :])
    assert shown["skipped"] == 50 + 200
    assert len(shown["entries"]) == 150
    assert {entry["event"] for entry in shown["entries"]} == {"Prompt", "Generation"}
