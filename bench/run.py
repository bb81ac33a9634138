"""`make bench`: durable throughput against the validation-only floor, on this machine.

Each round starts a fresh server on a free loopback port with its own temp data dir,
warms it up, loads it with wrk (bench/publish.lua: 100-event batches on keep-alive
connections) and records throughput, latency and memory. Rounds alternate floor and
durable so that drift (thermal, noisy neighbours) hits both alike; the table reports
medians. For the durable server it also times how long materialisation takes to catch
up, and checks that every acknowledged event was stored.

The target is a ratio, not an absolute figure: durable events/s >= 0.30 x floor events/s.
Absolute numbers depend on the machine, and wrk shares it with the server. Acknowledging
can outrun materialising (the backlog then drains after the run), so the durable rate
is also reported "sustained": the run's events over the time until all were rows.

Exit status 1 means a correctness problem (non-200s, stored != acknowledged), not a
missed target: that is printed as FAIL, and the figures are in bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SCRIPT = BENCH / "publish.lua"
EVENTS_PER_REQUEST = 100  # the batch publish.lua sends
CLI = [sys.executable, "-m", "trubrics_ingestion"]
KINDS = ("floor", "durable")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0
RESULT_PREFIX = "BENCH_RESULT "
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Options:
    """Everything a run needs from the command line."""

    rounds: int
    duration_s: int
    warmup_s: int
    connections: int
    threads: int
    drain_timeout_s: float
    target: float
    output: Path


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


@dataclass
class Round:
    """The figures of one server in one round."""

    kind: str
    round: int
    requests_per_s: float
    events_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    rss_mb: float
    hwm_mb: float
    server_cpu_pct: float
    load: dict[str, Any]
    warmup: dict[str, Any]
    durable: dict[str, Any] = field(default_factory=dict)


# --- servers -------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody holds right now (the OS picks it: bind to port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_key(data_dir: Path) -> str:
    """A real key made by the real CLI, so both servers authenticate the same way."""
    out = subprocess.run(
        [*CLI, "keys", "create", "--project", "bench", "--json", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return str(json.loads(out)["key"])


def server_command(kind: str, port: int, data_dir: Path) -> list[str]:
    """The durable server is the product's own ``serve``; the floor is bench/floor.py."""
    common = ["--port", str(port), "--data-dir", str(data_dir)]
    if kind == "durable":
        return [*CLI, "serve", *common]
    return [sys.executable, str(BENCH / "floor.py"), *common]


@contextmanager
def running(kind: str, workdir: Path) -> Iterator[Server]:
    """Start a server and always stop it, whatever happens in between."""
    data_dir = workdir / f"{kind}-data"
    key = create_key(data_dir)
    port = free_port()
    with open(workdir / f"{kind}.log", "wb") as log:
        process = subprocess.Popen(
            server_command(kind, port, data_dir), stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(kind, process, port, data_dir, key)
    try:
        wait_healthy(server, workdir / f"{kind}.log")
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


# --- measuring -----------------------------------------------------------------------


def run_wrk(server: Server, seconds: int, opts: Options) -> Load:
    """One bounded wrk run against loopback; fails loudly if the script did not report."""
    command = [
        "wrk",
        f"-t{opts.threads}",
        f"-c{opts.connections}",
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
    """How long the writer thread takes to materialise what is journaled (bounded wait)."""
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


# --- one round -----------------------------------------------------------------------


def measure(kind: str, index: int, opts: Options) -> Round:
    """Start, warm up, load, read the figures, stop: one server, one round."""
    with (
        tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp,
        running(kind, Path(tmp)) as server,
    ):
        warmup = run_wrk(server, opts.warmup_s, opts)
        cpu_before = cpu_seconds(server.process.pid)
        load = run_wrk(server, opts.duration_s, opts)
        cpu = cpu_seconds(server.process.pid) - cpu_before
        rss, hwm = memory_mb(server.process.pid)
        result = to_round(kind, index, load, warmup, rss, hwm, cpu)
        if kind == "durable":
            result.durable = check_durable(server, warmup, load, opts)
        return result


def check_durable(server: Server, warmup: Load, load: Load, opts: Options) -> dict[str, Any]:
    """Drain time, memory after catching up, and the stored-vs-acknowledged check."""
    drained = drain(server.database, opts.drain_timeout_s)
    if drained["remaining_batches"]:
        print(f"\n!!! BACKLOG NOT DRAINED IN {opts.drain_timeout_s}s: {drained}\n", file=sys.stderr)
    drained.update(drain_rates(drained, load))
    drained["hwm_after_drain_mb"] = memory_mb(server.process.pid)[1]
    check = verify(stored_events(server.data_dir), [warmup, load])
    if check["verdict"] == "MISMATCH":
        print(f"\n!!! STORED EVENT COUNT MISMATCH: {check}\n", file=sys.stderr, flush=True)
    return {**drained, **check}


def drain_rates(drained: dict[str, Any], load: Load) -> dict[str, float | None]:
    """Acknowledging can outrun materialising; these say what the node sustains.

    ``sustained``: the run's events over the time until all of them were rows (run +
    drain). ``drain``: how fast the idle node materialises (None if nothing was left).
    """
    seconds = load.duration_us / 1e6 + drained["drain_s"]
    batches, drain_s = drained["backlog_batches"], drained["drain_s"]
    return {
        "sustained_events_per_s": load.ok * EVENTS_PER_REQUEST / seconds,
        "drain_events_per_s": batches * EVENTS_PER_REQUEST / drain_s if batches else None,
    }


def to_round(
    kind: str, index: int, load: Load, warmup: Load, rss: float, hwm: float, cpu: float
) -> Round:
    latency = load.latency_us
    return Round(
        kind=kind,
        round=index,
        requests_per_s=load.requests_per_s,
        events_per_s=load.requests_per_s * EVENTS_PER_REQUEST,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        rss_mb=rss,
        hwm_mb=hwm,
        server_cpu_pct=100 * cpu / (load.duration_us / 1e6),
        load=asdict(load),
        warmup=asdict(warmup),
    )


def progress(result: Round) -> None:
    """One line per server run, so a long bench shows signs of life."""
    extra = ""
    if result.durable:
        d = result.durable
        extra = (
            f"  drain {d['drain_s']:.1f}s ({d['backlog_batches']} batches)"
            f"  stored {d['stored_events']} [{d['verdict']}]"
        )
    errors = result.load["non200"] + result.warmup["non200"]
    print(
        f"round {result.round} {result.kind:>7}: {result.events_per_s:>9,.0f} events/s"
        f"  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
        f"  RSS {result.rss_mb:5.1f} MiB  CPU {result.server_cpu_pct:3.0f}%"
        f"  non-200 {errors}{extra}",
        flush=True,
    )


# --- summary -------------------------------------------------------------------------


def median(rounds: list[Round], kind: str, name: str) -> float:
    """Medians, not means: one disturbed round on a shared 2-core box should not decide."""
    return float(statistics.median(getattr(r, name) for r in rounds if r.kind == kind))


def summarise(rounds: list[Round], opts: Options) -> dict[str, Any]:
    """Medians per server, the ratio, and whether everything acknowledged was stored."""
    names = ("events_per_s", "p50_ms", "p99_ms", "rss_mb", "hwm_mb", "server_cpu_pct")
    summary: dict[str, Any] = {k: {n: median(rounds, k, n) for n in names} for k in KINDS}
    durable = [r.durable for r in rounds if r.kind == "durable"]
    for name in ("drain_s", "backlog_batches", "sustained_events_per_s"):
        summary["durable"][name] = statistics.median(d[name] for d in durable)
    ratio = summary["durable"]["events_per_s"] / summary["floor"]["events_per_s"]
    summary["ratio"] = ratio
    summary["target"] = opts.target
    summary["pass"] = ratio >= opts.target
    summary["verified"] = all(d["verdict"] != "MISMATCH" for d in durable)
    summary["non200"] = sum(r.load["non200"] + r.warmup["non200"] for r in rounds)
    return summary


def print_table(summary: dict[str, Any], opts: Options) -> None:
    floor, durable = summary["floor"], summary["durable"]
    print(
        f"\nmedians over {opts.rounds} rounds, wrk -t{opts.threads} -c{opts.connections}"
        f" -d{opts.duration_s}s, {EVENTS_PER_REQUEST} events/request,"
        f" {os.cpu_count()} CPUs shared by wrk and the server\n"
    )
    print(f"{'':9}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'RSS MiB':>9}{'HWM MiB':>9}")
    for kind, row in (("floor", floor), ("durable", durable)):
        print(
            f"{kind:9}{row['events_per_s']:>11,.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            f"{row['rss_mb']:>9.1f}{row['hwm_mb']:>9.1f}"
        )
    verdict = "PASS" if summary["pass"] else "FAIL"
    print(
        f"\ndurable/floor events/s: {summary['ratio']:.2f}"
        f" (target >= {summary['target']:.2f}): {verdict}"
    )
    sustained = durable["sustained_events_per_s"]
    print(
        f"materialisation backlog at the end of a run: {durable['backlog_batches']:.0f} batches,"
        f" drained in {durable['drain_s']:.1f} s (medians)"
    )
    print(
        f"durable sustained (run + drain, every event a row): {sustained:,.0f} events/s,"
        f" {sustained / floor['events_per_s']:.2f} of the floor"
    )
    stored = "every acknowledged event stored" if summary["verified"] else "STORED COUNT MISMATCH"
    print(f"verification: {stored}; non-200 responses: {summary['non200']}")


def write_json(rounds: list[Round], summary: dict[str, Any], opts: Options) -> None:
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "options": {**asdict(opts), "output": str(opts.output)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "commit": git_commit(),
        "summary": summary,
        "rounds": [asdict(r) for r in rounds],
    }
    opts.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {opts.output}")


def git_commit() -> str | None:
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or None


# --- main ----------------------------------------------------------------------------


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each run")
    # 64: of 16/32/64, the count that gave the durable server its best throughput (2 cores).
    parser.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="seconds")
    parser.add_argument("--target", type=float, default=0.30, help="durable/floor to pass")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "latest.json")
    args = parser.parse_args(argv)
    return Options(
        rounds=args.rounds,
        duration_s=args.duration,
        warmup_s=args.warmup,
        connections=args.connections,
        threads=args.threads,
        drain_timeout_s=args.drain_timeout,
        target=args.target,
        output=args.output,
    )


def schedule(rounds: int) -> Iterator[tuple[int, str]]:
    """Alternate which server goes first, so neither always runs on a warmer machine."""
    for index in range(1, rounds + 1):
        order = KINDS if index % 2 else tuple(reversed(KINDS))
        for kind in order:
            yield index, kind


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    rounds: list[Round] = []
    for index, kind in schedule(opts.rounds):
        rounds.append(measure(kind, index, opts))
        progress(rounds[-1])
    summary = summarise(rounds, opts)
    print_table(summary, opts)
    write_json(rounds, summary, opts)
    return 0 if summary["verified"] and summary["non200"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
