"""A node under load, for the benchmarks: start a server, load it with wrk, check its store.

Shared by bench/run.py (floor and durable rounds), bench/forward.py (a backlog to forward)
and bench/end_to_end.py (a node forwarding to real engines while loaded). A server runs
on a free loopback port with its own data dir and a real key made by the real CLI; wrk
sends bench/publish.lua's 100-event batches on keep-alive connections and reports exact
counts, so that what the store holds can be checked against what was acknowledged.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SCRIPT = BENCH / "publish.lua"
EVENTS_PER_REQUEST = 100  # the batch publish.lua sends
CLI = [sys.executable, "-m", "trubrics_ingestion"]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0
RESULT_PREFIX = "BENCH_RESULT "
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Load:
    """What one wrk run reported (counts are exact; see publish.lua's done())."""

    duration_us: int
    requests: int
    started: int
    ok: int
    non200: int
    statuses: dict[str, int]
    body_bytes: int
    socket_errors: dict[str, int]
    latency_us: dict[str, float]

    @property
    def unanswered(self) -> int:
        """At most this many requests were cut off by wrk's deadline: maybe stored, unanswered.

        An upper bound: wrk asks the script for one request per thread more than it sends.
        """
        return self.started - self.ok - self.non200

    @property
    def requests_per_s(self) -> float:
        return self.ok / (self.duration_us / 1e6)

    @property
    def events_per_s(self) -> float:
        return self.requests_per_s * EVENTS_PER_REQUEST


@dataclass(frozen=True)
class Wrk:
    """How wrk loads a server."""

    connections: int
    threads: int


@dataclass
class Server:
    """A running server subprocess and where its files live."""

    kind: str
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    key: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return self.data_dir / "trubrics.db"


# --- servers -------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody holds right now (the OS picks it: bind to port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_key(data_dir: Path) -> str:
    """A real key made by the real CLI, so every server authenticates the same way."""
    out = subprocess.run(
        [*CLI, "keys", "create", "--project", "bench", "--json", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return str(json.loads(out)["key"])


def server_command(kind: str, port: int, data_dir: Path, serve_args: Sequence[str]) -> list[str]:
    """The floor is bench/floor.py; any other kind is the product's own ``serve``."""
    common = ["--port", str(port), "--data-dir", str(data_dir)]
    if kind == "floor":
        return [sys.executable, str(BENCH / "floor.py"), *common]
    return [*CLI, "serve", *common, *serve_args]


@contextmanager
def running(kind: str, workdir: Path, serve_args: Sequence[str] = ()) -> Iterator[Server]:
    """Start a server (data in ``workdir/KIND-data``) and always stop it."""
    data_dir = workdir / f"{kind}-data"
    key = create_key(data_dir)
    port = free_port()
    log_path = workdir / f"{kind}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            server_command(kind, port, data_dir, serve_args), stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(kind, process, port, data_dir, key)
    try:
        wait_healthy(server, log_path)
        yield server
    finally:
        stop(process)


def wait_healthy(server: Server, log: Path) -> None:
    """Poll /healthz: the server is only loaded once it answers."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.kind} server exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    raise RuntimeError(f"{server.kind} server did not start in {START_TIMEOUT_S}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the durable server commits what is queued), SIGKILL if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- load ----------------------------------------------------------------------------


def run_wrk(server: Server, seconds: int, wrk: Wrk) -> Load:
    """One bounded wrk run against loopback; fails loudly if the script did not report."""
    command = [
        "wrk",
        f"-t{wrk.threads}",
        f"-c{wrk.connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(SCRIPT),
        server.url,
    ]
    env = {**os.environ, "BENCH_API_KEY": server.key, "BENCH_RUN": secrets.token_hex(4)}
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            sys.stderr.write(done.stderr)  # publish.lua shouts about non-200s there
            return Load(**json.loads(line[len(RESULT_PREFIX) :]))
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def memory_mb(pid: int) -> tuple[float, float]:
    """Resident set now and its high-water mark, in MiB, from /proc/PID/status."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process (all its threads) has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat.rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """``cpu_seconds`` of the process and of its live descendants (e.g. a PostgreSQL
    server's backends); a process that exits meanwhile is skipped."""
    total = 0.0
    try:
        total += cpu_seconds(pid)
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_cpu_seconds(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


# --- the store -----------------------------------------------------------------------


def journal_backlog(database: Path) -> int:
    """Batches acknowledged but not yet materialised, read through a read-only connection.

    Not the ``events count`` CLI: that materialises the backlog itself, which would make
    the server's own catch-up look faster than it is.
    """
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM journal").fetchone()[0])
    finally:
        conn.close()


def drain(database: Path, timeout_s: float) -> dict[str, Any]:
    """How long the materialiser takes to turn what is journaled into rows (bounded wait)."""
    start = time.monotonic()
    backlog = journal_backlog(database)
    remaining = backlog
    while remaining and time.monotonic() - start < timeout_s:
        time.sleep(0.05)
        remaining = journal_backlog(database)
    elapsed = time.monotonic() - start
    return {"backlog_batches": backlog, "remaining_batches": remaining, "drain_s": elapsed}


def stored_events(data_dir: Path) -> int:
    """The product's own answer to "how many events are stored"."""
    out = subprocess.run(
        [*CLI, "events", "count", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return int(out.strip())


def verify(stored: int, loads: list[Load]) -> dict[str, Any]:
    """Every 200 must be stored; requests wrk cut off unanswered may or may not be.

    wrk stops at its deadline with requests in flight: the server may have committed
    them (their 200 was never read), so the store can hold up to ``unanswered`` batches
    more than the 200s. Anything outside that window is a real loss or duplication.
    """
    acknowledged = sum(load.ok for load in loads) * EVENTS_PER_REQUEST
    slack = sum(load.unanswered for load in loads) * EVENTS_PER_REQUEST
    extra = stored - acknowledged
    if extra == 0:
        verdict = "exact"
    elif 0 < extra <= slack and extra % EVENTS_PER_REQUEST == 0:
        verdict = "ok"
    else:
        verdict = "MISMATCH"
    return {
        "stored_events": stored,
        "acknowledged_events": acknowledged,
        "unanswered_events_max": slack,
        "verdict": verdict,
    }
