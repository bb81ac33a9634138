"""Nothing acknowledged is lost: not to kill -9 of the server and its children, repeatedly,
under load, and not to a SIGTERM with requests in flight.

Every event carries a unique mark (``w{worker}-b{batch}-{i}``) and no batch is resent while
the failures happen, so the export can be checked event by event against what each client
was told: a 200 must be stored exactly once, a 503 ("nothing was stored") never, and a
request that died with the connection may go either way but never twice and never half.
Afterwards the unanswered batches are resent byte for byte, as the SDKs retry: the server
must recognise those it had stored and store the others, each exactly once.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests

from support.node import Node
from support.processes import children_of, is_gone, kill_node, server_has_read
from support.waiting import wait_until

WORKERS = 8
EVENTS_PER_BATCH = 10
KILLS = 10
ACKS_BEFORE_KILL = (20, 250)  # batches acknowledged since the (re)start before each kill
LOAD_DEADLINE_S = 40.0  # the whole kill loop; the test fails rather than hang past it
SIGTERM_EXIT_BOUND_S = 10.0
REQUEST_TIMEOUT_S = 10.0


# --- what clients were told ------------------------------------------------------------------


def batch_body(tag: str, size: int = EVENTS_PER_BATCH) -> bytes:
    """A batch whose events are marked ``{tag}-{i}``: the mark says which request sent it."""
    return json.dumps(
        [
            {
                "user_id": f"{tag}-{i}",
                "event": "crash-test",
                "timestamp": "2026-06-20T12:00:00Z",
                "properties": {"tag": tag, "i": i},
            }
            for i in range(size)
        ]
    ).encode()


def tag_of(user_id: str) -> str:
    """The batch an exported event came from (``w3-b17-4`` -> ``w3-b17``)."""
    return user_id.rsplit("-", 1)[0]


@dataclass
class Ledger:
    """Each batch sent, filed under the latest answer its client got. Thread-safe.

    200: must be stored exactly once; 503: must not be stored; None (no answer: refused
    connection, reset, timeout): stored whole or not at all. A resent batch (identical
    body, as the SDKs retry) is filed again under its new answer.
    """

    answers: dict[str, int | None] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    unexpected: list[tuple[str, int, str]] = field(default_factory=list)  # any other answer
    repeats: int = 0  # 200s that said "duplicate": the batch had been stored before
    lock: threading.Lock = field(default_factory=threading.Lock)
    _acked: int = 0

    def record(self, tag: str, size: int, status: int | None, text: str = "") -> None:
        """File a batch under its answer (``status`` None: the request got no answer)."""
        with self.lock:
            if status not in (200, 503, None):
                self.unexpected.append((tag, status, text[:300]))
                return
            if status == 200:
                answer = json.loads(text)
                fresh = {"status": "success", "events": size}
                if answer not in (fresh, {**fresh, "duplicate": True}):
                    self.unexpected.append((tag, 200, text))
                self.repeats += bool(answer.get("duplicate"))
            self._acked += (status == 200) - (self.answers.get(tag, 0) == 200)
            self.answers[tag] = status
            self.sizes[tag] = size

    def acked_count(self) -> int:
        with self.lock:
            return self._acked

    def tags(self, status: int | None) -> list[str]:
        """The batches whose latest answer was ``status``."""
        with self.lock:
            return [tag for tag, answer in self.answers.items() if answer == status]

    @property
    def acked(self) -> list[str]:
        return self.tags(200)

    @property
    def refused(self) -> list[str]:
        return self.tags(503)

    @property
    def unknown(self) -> list[str]:
        return self.tags(None)


@dataclass(frozen=True)
class Figures:
    """What a check found, for the test's printed report."""

    acked_batches: int
    acked_events: int
    stored_events: int
    unknown_batches: int
    unknown_stored: int
    lost: int
    duplicates: int


def check_nothing_acknowledged_is_lost(
    ledger: Ledger, stored_user_ids: Iterable[str], log: str = ""
) -> Figures:
    """The promise, event by event: acked -> once; refused -> never; unknown -> all or none."""
    counts = Counter(stored_user_ids)
    duplicates = {user: n for user, n in counts.items() if n > 1}
    stored_by_tag = Counter(tag_of(user) for user in counts)
    lost = [
        f"{tag}-{i}"
        for tag in ledger.acked
        for i in range(ledger.sizes[tag])
        if f"{tag}-{i}" not in counts
    ]
    refused_but_stored = [tag for tag in ledger.refused if stored_by_tag[tag]]
    half_stored = [
        tag for tag in ledger.unknown if stored_by_tag[tag] not in (0, ledger.sizes[tag])
    ]
    phantoms = set(stored_by_tag) - set(ledger.sizes)
    tail = log[-4000:]
    assert not ledger.unexpected, f"statuses other than 200/503: {ledger.unexpected[:5]}\n{tail}"
    assert not duplicates, f"{len(duplicates)} events stored twice, e.g. {list(duplicates)[:5]}"
    assert not lost, f"{len(lost)} acknowledged events lost, e.g. {lost[:5]}\n{tail}"
    assert not refused_but_stored, f"503 but stored: {refused_but_stored[:5]}"
    assert not half_stored, f"batches stored in part: {half_stored[:5]}"
    assert not phantoms, f"stored events nobody sent: {sorted(phantoms)[:5]}"
    return Figures(
        acked_batches=len(ledger.acked),
        acked_events=sum(ledger.sizes[tag] for tag in ledger.acked),
        stored_events=sum(counts.values()),
        unknown_batches=len(ledger.unknown),
        unknown_stored=sum(1 for tag in ledger.unknown if stored_by_tag[tag]),
        lost=len(lost),
        duplicates=len(duplicates),
    )


# --- load ------------------------------------------------------------------------------------


class Load:
    """``WORKERS`` threads posting uniquely marked batches as fast as they can.

    They read the server's URL before every request because a restarted node listens on a
    new port, and they never resend a batch: a resend after a lost answer would make a
    duplicate that is the client's doing, hiding the ones that are the server's.
    """

    def __init__(self, url: Callable[[], str], key: str, ledger: Ledger, prefix: str = "w"):
        self._url = url
        self._key = key
        self._ledger = ledger
        self._prefix = prefix
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, args=(w,), name=f"load-{w}", daemon=True)
            for w in range(WORKERS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in self._threads), "a load thread hangs"

    def _work(self, worker: int) -> None:
        session = requests.Session()
        headers = {"x-api-key": self._key, "content-type": "application/json"}
        for n in range(1_000_000):
            if self._stop.is_set():
                break
            tag = f"{self._prefix}{worker}-b{n}"
            try:
                response = session.post(
                    self._url() + "/publish_events",
                    data=batch_body(tag),
                    headers=headers,
                    timeout=REQUEST_TIMEOUT_S,
                )
            except requests.RequestException:
                self._ledger.record(tag, EVENTS_PER_BATCH, None)
                session.close()
                session = requests.Session()
                time.sleep(0.02)  # the server is down or restarting
                continue
            self._ledger.record(tag, EVENTS_PER_BATCH, response.status_code, response.text)
        session.close()


def resend(url: str, key: str, ledger: Ledger, tags: Iterable[str]) -> None:
    """Send these batches again, byte for byte, as the SDKs retry a batch that failed; each
    is filed again under its new answer. A batch stored by its first attempt must now be
    answered as a duplicate and not stored again; one that was not, stored now."""

    def one(tag: str) -> None:
        size = ledger.sizes[tag]
        try:
            response = requests.post(
                url + "/publish_events",
                data=batch_body(tag, size),
                headers={"x-api-key": key, "content-type": "application/json"},
                timeout=REQUEST_TIMEOUT_S,
            )
        except requests.RequestException:
            ledger.record(tag, size, None)
            return
        ledger.record(tag, size, response.status_code, response.text)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, list(tags)))


def wait_for_acks(ledger: Ledger, more: int, timeout_s: float, log: str = "") -> None:
    """Let the load run until ``more`` further batches have been acknowledged."""
    target = ledger.acked_count() + more
    wait_until(lambda: ledger.acked_count() >= target, timeout_s, f"{target} acks", log)


# --- processes -------------------------------------------------------------------------------


def stop_everything(node: Node) -> None:
    """Best-effort cleanup on any outcome: no server or child outlives its test."""
    if node.process is not None:
        if node.process.poll() is None:
            kill_node(node)
        else:
            node.process = None


def finish(request: http.client.HTTPConnection, rest: bytes) -> tuple[int | None, str]:
    """Send the rest of a half-sent request; its status and body (None: no answer)."""
    try:
        request.send(rest)
        response = request.getresponse()
        return response.status, response.read().decode()
    except (OSError, http.client.HTTPException) as error:
        return None, repr(error)
    finally:
        request.close()


def refuses_connections(port: int) -> bool:
    """True once nothing accepts on ``port`` (the server stopped listening)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


# --- tests -----------------------------------------------------------------------------------


def test_every_acknowledged_event_survives_repeated_kill_9_of_the_server(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    """A power cut, again and again, at random points of a loaded server's life: in a group
    commit, between commit and answer, in a WAL checkpoint. Each restart
    recovers the store from whatever the kill left, and the export at the end must hold
    every acknowledged event exactly once."""
    rng = random.Random(os.environ.get("CRASH_SEED", "trubrics"))
    ledger = Ledger()
    logs: list[str] = []
    kills = 0
    deadline = time.monotonic() + LOAD_DEADLINE_S
    try:
        with Load(lambda: node.url, node.key, ledger):
            while kills < KILLS:
                wait_for_acks(
                    ledger,
                    rng.randint(*ACKS_BEFORE_KILL),
                    max(1.0, deadline - time.monotonic()),
                    node.log(),
                )
                time.sleep(rng.uniform(0, 0.2))  # land anywhere in a commit
                logs.append(node.log())
                kill_node(node)
                kills += 1
                node.start()
            wait_for_acks(ledger, ACKS_BEFORE_KILL[0], 20, node.log())  # serves after the last
        cut_off = ledger.unknown
        resend(node.url, node.key, ledger, cut_off)
        stored = [event["user_id"] for event in node.export()]
    finally:
        stop_everything(node)
    logs.append(node.log())
    figures = check_nothing_acknowledged_is_lost(ledger, stored, "\n".join(logs))
    with capsys.disabled():
        print(
            f"\n[crash] kill -9 x{kills}:"
            f" {figures.acked_batches} batches / {figures.acked_events} events acknowledged"
            f" and {figures.stored_events} stored, lost={figures.lost}"
            f" duplicates={figures.duplicates}; {len(cut_off)} requests cut off by the kills,"
            f" resent after: {ledger.repeats} answered as already stored, the rest stored now"
        )
    assert not set(cut_off) - set(ledger.acked), "a resent batch was not acknowledged"
    assert kills >= 5


def test_sigterm_under_load_finishes_in_flight_batches_and_exits_0(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a supervisor's stop must look like: stop accepting at once, let requests that
    have begun (one is held half-sent to be sure of it) finish and commit, answer them,
    then exit 0 well before a supervisor would escalate to SIGKILL."""
    ledger = Ledger()
    assert node.process is not None
    server, port = node.process, node.port
    try:
        with Load(lambda: node.url, node.key, ledger) as load:
            wait_for_acks(ledger, 100, 20, node.log())
            # A request provably in flight when the signal lands: its body is half sent.
            slow_body = batch_body("slow-b0", 100)
            slow = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
            slow.putrequest("POST", "/publish_events")
            for name, value in (
                ("x-api-key", node.key),
                ("content-type", "application/json"),
                ("content-length", str(len(slow_body))),
            ):
                slow.putheader(name, value)
            slow.endheaders(message_body=slow_body[: len(slow_body) // 2])
            # The server has read the headers and half the body: the request has begun.
            assert slow.sock is not None
            wait_until(lambda: server_has_read(port, slow.sock), 10, "the half-sent request")

            signalled = time.monotonic()
            server.send_signal(signal.SIGTERM)
            wait_until(lambda: refuses_connections(port), 3, "the listener to close", node.log())
            refused_while_draining = server.poll() is None
            time.sleep(max(0.0, signalled + 1.0 - time.monotonic()))
            slow_status, slow_text = finish(slow, slow_body[len(slow_body) // 2 :])
            try:
                code = server.wait(max(0.1, signalled + SIGTERM_EXIT_BOUND_S - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {SIGTERM_EXIT_BOUND_S}s after SIGTERM\n{node.log()}")
            took = time.monotonic() - signalled
            node.process = None
            load.stop()
        leftovers = children_of(server.pid)
        wait_until(lambda: all(is_gone(p) for p in leftovers), 5, "the children to exit")
        ledger.record("slow-b0", 100, slow_status, slow_text)
        stored = [event["user_id"] for event in node.export()]
    finally:
        stop_everything(node)
    log = node.log()
    assert slow_status == 200, f"the in-flight request got {slow_status} {slow_text}\n{log}"
    assert refused_while_draining, "the server exited before the in-flight request finished"
    assert code == 0, f"exit status {code} after SIGTERM\n{log[-4000:]}"
    assert took < SIGTERM_EXIT_BOUND_S
    figures = check_nothing_acknowledged_is_lost(ledger, stored, log)
    with capsys.disabled():
        print(
            f"\n[sigterm] exit {code} after {took:.2f}s; new connections refused while an"
            f" in-flight upload finished (200); {figures.acked_batches} batches /"
            f" {figures.acked_events} events acknowledged, {figures.unknown_batches} cut off,"
            f" lost={figures.lost} duplicates={figures.duplicates}"
        )


def test_a_client_stalled_mid_body_does_not_hold_sigterm_past_the_bound(node: Node) -> None:
    """A supervisor sends SIGKILL when its grace runs out (docker stop: 10 s), so a stalled
    or malicious client must not be able to hold the shutdown longer than that; and it
    should be told "retry" (503) or be cut off, not get a 500."""
    assert node.process is not None
    stalled = http.client.HTTPConnection("127.0.0.1", node.port, timeout=REQUEST_TIMEOUT_S)
    stalled.putrequest("POST", "/publish_events")
    stalled.putheader("x-api-key", node.key)
    stalled.putheader("content-length", "1000")
    stalled.endheaders(message_body=b"[")  # and nothing more, ever
    assert stalled.sock is not None
    wait_until(lambda: server_has_read(node.port, stalled.sock), 10, "the stalled request")
    signalled = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    try:
        code = node.process.wait(SIGTERM_EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        stop_everything(node)
        stalled.close()
        pytest.fail(f"still running {SIGTERM_EXIT_BOUND_S}s after SIGTERM")
    took = time.monotonic() - signalled
    node.process = None
    status, text = finish(stalled, b"")
    assert code == 0 and took < SIGTERM_EXIT_BOUND_S
    assert status != 500, f"the stalled client got {status} {text}"
