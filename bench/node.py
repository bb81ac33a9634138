"""A node under load, for the benchmarks: start a server, load it with wrk, check its store.

Shared by bench/run.py (raw floor, app floor and node rounds), bench/forward.py (a backlog
to forward) and bench/end_to_end.py (a node forwarding to real engines while loaded). A
server runs on a free loopback port with its own data dir and a real key made by the real
CLI; wrk sends bench/publish.lua's 100-event batches on keep-alive connections and reports
exact counts, so that what the store holds can be checked against what was acknowledged.

With two cores or more (and util-linux's ``taskset``), every server and all its children
run on one core and wrk on another, as issue 10 measures: the node cannot borrow wrk's
core, and its CPU per event is the node's alone. A server's CPU and memory are those of
its whole process tree (the server and, with ``--forward-to``, its forwarder child), read
from /proc.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
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
QUIET_WINDOW_S = 0.5
QUIET_CPU_S = 0.02  # a node using under 4% of a core over QUIET_WINDOW_S is idle


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


@dataclass(frozen=True)
class Pinning:
    """The ``taskset`` prefixes for servers and for wrk (empty: not pinned), and why."""

    server: tuple[str, ...]
    wrk: tuple[str, ...]
    note: str


def pinning() -> Pinning:
    """Server tree on the first core this process may use, wrk on the second."""
    cores = sorted(os.sched_getaffinity(0))
    taskset = shutil.which("taskset")
    if len(cores) < 2:
        return Pinning((), (), f"NOT PINNED: only {len(cores)} core available")
    if taskset is None:
        return Pinning((), (), "NOT PINNED: taskset (util-linux) is missing")
    server, wrk = (str(core) for core in cores[:2])
    note = f"server and its children pinned to core {server}, wrk to core {wrk}"
    return Pinning((taskset, "-c", server), (taskset, "-c", wrk), note)


PINNING = pinning()


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
    """The floors are bench/raw_floor.py and bench/floor.py; any other kind is the
    product's own ``serve``. Pinned (``PINNING``): children inherit the core."""
    common = ["--port", str(port), "--data-dir", str(data_dir)]
    floors = {"raw": "raw_floor.py", "floor": "floor.py"}
    if kind in floors:
        return [*PINNING.server, sys.executable, str(BENCH / floors[kind]), *common]
    return [*PINNING.server, *CLI, "serve", *common, *serve_args]


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


def run_wrk(server: Server, seconds: int, wrk: Wrk, delay_ms: int | None = None) -> Load:
    """One bounded wrk run against loopback; fails loudly if the script did not report.
    ``delay_ms``: each connection waits that long after a response before its next request
    (publish.lua's ``delay()``), to load the server below its saturating rate."""
    command = [
        *PINNING.wrk,
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
    if delay_ms is not None:
        env["BENCH_DELAY_MS"] = str(delay_ms)
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            sys.stderr.write(done.stderr)  # publish.lua shouts about non-200s there
            return Load(**json.loads(line[len(RESULT_PREFIX) :]))
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}{done.stderr}")


@contextmanager
def fsync_probe(directory: Path, every_s: float = 0.01) -> Iterator[list[float]]:
    """The disk's own fsync latency while the block runs: a thread rewrites 4 KB of a file
    in ``directory`` and fsyncs it every ``every_s``; yields the list its latencies
    (seconds) are added to. A request that a journal acknowledges after its fsync cannot
    return sooner than the disk allows, so a latency tail with a matching stall here is the
    disk's (on this VM's ext4, for one, deleting a large store stalls fsyncs for 0.1-0.4 s)."""
    latencies: list[float] = []
    stop = threading.Event()
    path = directory / "fsync-probe"

    def probe() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while not stop.wait(every_s):
                started = time.perf_counter()
                os.pwrite(fd, b"\0" * 4096, 0)
                os.fsync(fd)
                latencies.append(time.perf_counter() - started)
        finally:
            os.close(fd)
            path.unlink()

    thread = threading.Thread(target=probe, name="fsync-probe")
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join()


def tree_pids(pid: int) -> list[int]:
    """The process and its live descendants (a process that exits meanwhile is skipped)."""
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                pids.extend(tree_pids(int(child)))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return pids


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """Resident sets now and their high-water marks, each summed over the process tree, in
    MiB (/proc/PID/status). Pages the processes share count once per process: an upper
    bound, as an operator's ``ps`` would add it up."""
    rss = hwm = 0.0
    for each in tree_pids(pid):
        try:
            lines = Path(f"/proc/{each}/status").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in lines:
            name, _, value = line.partition(":")
            if name == "VmRSS":
                rss += int(value.split()[0]) / 1024
            elif name == "VmHWM":
                hwm += int(value.split()[0]) / 1024
    return rss, hwm


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU of the process (all threads) so far; ``reaped``: plus that of the
    children it waited for. 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    after_name = stat.rsplit(")", 1)[1].split()
    fields = after_name[11:15] if reaped else after_name[11:13]  # utime stime cutime cstime
    return sum(int(ticks) for ticks in fields) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU of the process and its live descendants (a node's forwarder, a PostgreSQL
    server's backends), with what the children each of them waited for used: a child
    restarted or exited meanwhile is still counted."""
    return sum(cpu_seconds(each, reaped=True) for each in tree_pids(pid))


def settle(server: Server, timeout_s: float) -> float:
    """Wait until the server is idle again: its process tree's CPU quiet. Returns how long
    that took (bounded by ``timeout_s``), the time a load's CPU keeps being counted after
    wrk stops. A batch is stored once it is acknowledged; nothing is left to do after."""
    start = time.monotonic()
    before = tree_cpu_seconds(server.process.pid)
    while time.monotonic() - start < timeout_s:
        time.sleep(QUIET_WINDOW_S)
        after = tree_cpu_seconds(server.process.pid)
        if after - before <= QUIET_CPU_S:
            break
        before = after
    else:
        print(f"\n!!! {server.kind} NOT IDLE AFTER {timeout_s:.0f} s\n", file=sys.stderr)
    return time.monotonic() - start


# --- the store -----------------------------------------------------------------------


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


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
