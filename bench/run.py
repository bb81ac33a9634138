"""`make bench`: what the node costs per event against two floors, on this machine.

Three servers, each round in alternating order so that drift (thermal, noisy neighbours)
hits all alike; the table reports medians:

- raw floor (bench/raw_floor.py): uvicorn + uvloop + httptools and one msgspec decode of
  the batch into the project's ``Event`` structs. No app, no storage.
- app floor (bench/floor.py): this app (auth, limits, validation, access log) with
  storage switched off.
- node: ``trubrics-ingestion serve`` with its default settings: one process whose
  journal commits each acknowledged batch to the store, where it stays as it came (readers
  and forwarders expand batches into events as they read them).

Each round starts a fresh server on a free loopback port with its own temp data dir,
warms it up, waits until it is idle, loads it with wrk (bench/publish.lua: unique 100-event
batches on keep-alive connections), and waits until it is idle again: the CPU of its
whole process tree quiet. The figure is the CPU of that process tree from the first
request until idle, per acknowledged event; the target (issue 10) is raw floor CPU/event /
node CPU/event >= 0.5. Servers are pinned to one core and wrk to another (bench/node.py,
``PINNING``). Every acknowledged event must then be counted by the real ``events count``.

After the saturating rounds, one paced round loads the node at half its median events/s
(publish.lua's ``delay()``: independent connections, as clients are) for p50/p99 while
not saturated (target p99 <= 20 ms), with the disk's own fsync latency beside it
(``node.fsync_probe``); and the node's memory (all processes, their peaks summed) is held
against 150 MiB.

Then, in the same run, forwarding into real engines (PostgreSQL, and ClickHouse as a
Distributed table over 2 shards; scripts/install-engines.sh installs them): the events/s
the real forwarder ships from the last node round's store into each engine and into
both at once, with the node's CPU per event forwarded into each engine beside the
engine's own (bench/forward.py; target <= 4 us per event into each); those drain rates
against the node's ingest rate (> 1: a backlog drains faster than the node ingests); and
one end-to-end figure, a node serving with ``--forward-to`` both engines under wrk
(bench/end_to_end.py). Every engine is checked to hold exactly the events it was sent,
each once.

Then OTLP against ``/publish_llm_events`` (bench/otlp.py): the same LLM calls, 100 a
request, as protobuf exports of GenAI spans or as LLM events, each to a fresh node: events
stored per second until the resolver has stored them all, and the node's CPU per call
(``--no-otlp`` skips it; it takes about a minute).

The console (bench/console.py): the node loaded with 5 live viewers of its console open
against none, for events/s, p99 and CPU per event (``--console-rounds 0`` skips it).

Last, reading a big store (bench/big_store.py): ``events count`` and ``events export
--since`` of the last hour on a store of 30M events, built once and kept in bench/.cache/
(``--no-big-store`` skips it). ``--quick``: the ingest part only, short.

Exit status 1 means a correctness problem (non-200s, stored != acknowledged, an engine
holding other events than the store), not a missed target: that is printed as FAIL, and
the figures are in bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import big_store
import console
import end_to_end
import forward
import otlp
from node import (
    BENCH,
    EVENTS_PER_REQUEST,
    PINNING,
    ROOT,
    Load,
    Server,
    Wrk,
    fsync_probe,
    run_wrk,
    running,
    settle,
    stored_events,
    tree_cpu_seconds,
    tree_memory_mb,
    verdict,
    verify,
)

KINDS = ("raw", "floor", "node")
LABELS = {"raw": "raw floor", "floor": "app floor", "node": "node", "paced": "node @50%"}
P99_TARGET_MS = 20.0  # issue 10: at half the saturating rate, 32 connections
RSS_TARGET_MB = 150.0  # issue 10: the node, all its processes


@dataclass(frozen=True)
class Options:
    """Everything a run needs from the command line."""

    rounds: int
    duration_s: int
    warmup_s: int
    connections: int
    threads: int
    idle_timeout_s: float
    target: float
    forward_rounds: int
    forward_events: int
    forward_target: float
    end_to_end_s: int
    console_rounds: int
    big_store_events: int
    otlp: bool
    output: Path

    @property
    def wrk(self) -> Wrk:
        return Wrk(connections=self.connections, threads=self.threads)


@dataclass
class Round:
    """The figures of one server in one round (``kind`` "paced": the node at half rate)."""

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
    cpu_s: float
    cpu_us_per_event: float
    cpu_pct: float
    idle_s: float
    load: dict[str, Any]
    warmup: dict[str, Any]
    target_events_per_s: float | None = None
    store: dict[str, Any] = field(default_factory=dict)
    disk_fsync_max_ms: float | None = None  # the paced round's probe (node.fsync_probe)


# --- one round -----------------------------------------------------------------------


def measure(
    kind: str, index: int, opts: Options, workdir: Path, pace: float | None = None
) -> Round:
    """Start, warm up, settle, load, settle, read the figures, stop: one server, one round,
    its files in ``workdir``. ``pace``: the events/s to load the node at (None: as fast as
    it answers). CPU counts from idle before the first request to idle after the last."""
    server_kind = "node" if pace else kind
    period_ms = opts.connections * 1000 * EVENTS_PER_REQUEST / pace if pace else None
    delay_ms = round(period_ms) if period_ms else None
    with running(server_kind, workdir) as server:
        warmup = run_wrk(server, opts.warmup_s, opts.wrk, delay_ms)
        if period_ms:
            delay_ms = paced_delay_ms(period_ms, warmup)
        settle(server, opts.idle_timeout_s)
        pid = server.process.pid
        cpu_before = tree_cpu_seconds(pid)
        with fsync_probe(workdir) if pace else nullcontext([]) as fsyncs:
            load = run_wrk(server, opts.duration_s, opts.wrk, delay_ms)
        rss, hwm = tree_memory_mb(pid)
        idle_s = settle(server, opts.idle_timeout_s)
        cpu = tree_cpu_seconds(pid) - cpu_before
        hwm = max(hwm, tree_memory_mb(pid)[1])
        result = to_round(kind, index, load, warmup, (rss, hwm), cpu, idle_s)
        result.target_events_per_s = pace
        result.disk_fsync_max_ms = 1000 * max(fsyncs) if fsyncs else None
        if server_kind == "node":
            result.store = check_store(server, warmup, load)
        return result


def paced_delay_ms(period_ms: float, warmup: Load) -> int:
    """wrk waits ``delay()`` after each response, so a connection's period is the delay
    plus the response time: take the warm-up's mean response time off the period."""
    return max(0, round(period_ms - warmup.latency_us["mean"] / 1000))


def check_store(server: Server, warmup: Load, load: Load) -> dict[str, Any]:
    """The stored-vs-acknowledged check, with the real ``events count``; and the store's
    files on disk (the database and its write-ahead log) per stored event."""
    check = verify(stored_events(server.data_dir), [warmup, load])
    if check["verdict"] == "MISMATCH":
        print(f"\n!!! STORED EVENT COUNT MISMATCH: {check}\n", file=sys.stderr, flush=True)
    files = server.data_dir.glob(server.database.name + "*")
    check["bytes_per_event"] = sum(f.stat().st_size for f in files) / check["stored_events"]
    return check


def to_round(
    kind: str,
    index: int,
    load: Load,
    warmup: Load,
    memory: tuple[float, float],
    cpu: float,
    idle_s: float,
) -> Round:
    latency = load.latency_us
    acknowledged = load.ok * EVENTS_PER_REQUEST
    return Round(
        kind=kind,
        round=index,
        requests_per_s=load.requests_per_s,
        events_per_s=load.events_per_s,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        rss_mb=memory[0],
        hwm_mb=memory[1],
        cpu_s=cpu,
        cpu_us_per_event=1e6 * cpu / acknowledged if acknowledged else float("inf"),
        cpu_pct=100 * cpu / (load.duration_us / 1e6 + idle_s),
        idle_s=idle_s,
        load=asdict(load),
        warmup=asdict(warmup),
    )


def progress(result: Round) -> None:
    """One line per server run, so a long bench shows signs of life."""
    extra = ""
    if result.store:
        extra = (
            f"  stored {result.store['stored_events']} [{result.store['verdict']}]"
            f" {result.store['bytes_per_event']:.0f} B/event on disk"
        )
    errors = result.load["non200"] + result.warmup["non200"]
    print(
        f"round {result.round} {LABELS[result.kind]:>9}: {result.events_per_s:>9,.0f} events/s"
        f"  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
        f"  RSS {result.rss_mb:5.1f} MiB  CPU {result.cpu_us_per_event:5.2f} us/event"
        f" ({result.cpu_pct:3.0f}% of a core"
        f" until idle {result.idle_s:.1f}s after)"
        f"  non-200 {errors}{extra}",
        flush=True,
    )


# --- summary -------------------------------------------------------------------------

COLUMNS = (
    "events_per_s",
    "p50_ms",
    "p99_ms",
    "rss_mb",
    "hwm_mb",
    "cpu_us_per_event",
    "cpu_pct",
)


def median(rounds: list[Round], kind: str, name: str) -> float:
    """Medians, not means: one disturbed round on a shared 2-core box should not decide."""
    return float(statistics.median(getattr(r, name) for r in rounds if r.kind == kind))


def summarise(rounds: list[Round], opts: Options) -> dict[str, Any]:
    """Medians per server, the CPU ratios, the paced round against its targets, and whether
    everything acknowledged was stored."""
    kinds = [kind for kind in (*KINDS, "paced") if any(r.kind == kind for r in rounds)]
    summary: dict[str, Any] = {k: {n: median(rounds, k, n) for n in COLUMNS} for k in kinds}
    cpu = summary["node"]["cpu_us_per_event"]
    summary["cpu_ratio"] = {
        "raw_floor": summary["raw"]["cpu_us_per_event"] / cpu,
        "app_floor": summary["floor"]["cpu_us_per_event"] / cpu,
    }
    summary["target"] = opts.target
    summary["pass"] = summary["cpu_ratio"]["raw_floor"] >= opts.target
    node_hwm = max(r.hwm_mb for r in rounds if r.kind in ("node", "paced"))
    summary["node_hwm_mb"] = node_hwm
    summary["rss_pass"] = node_hwm <= RSS_TARGET_MB
    if "paced" in summary:
        paced = next(r for r in rounds if r.kind == "paced")
        summary["paced"]["target_events_per_s"] = paced.target_events_per_s
        summary["paced"]["disk_fsync_max_ms"] = paced.disk_fsync_max_ms
        summary["p99_pass"] = paced.p99_ms <= P99_TARGET_MS
    summary["verified"] = all(r.store["verdict"] != "MISMATCH" for r in rounds if r.store)
    summary["store_bytes_per_event"] = statistics.median(
        r.store["bytes_per_event"] for r in rounds if r.store
    )
    summary["non200"] = sum(r.load["non200"] + r.warmup["non200"] for r in rounds)
    summary["pinning"] = PINNING.note
    return summary


def print_table(summary: dict[str, Any], opts: Options) -> None:
    print(
        f"\nmedians over {opts.rounds} rounds, wrk -t{opts.threads} -c{opts.connections}"
        f" -d{opts.duration_s}s, {EVENTS_PER_REQUEST} events/request; {PINNING.note}"
        f" ({os.cpu_count()} CPUs, shared with whatever else runs here)\n"
    )
    print(
        f"{'':10}{'events/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'RSS MiB':>9}{'HWM MiB':>9}"
        f"{'CPU us/event':>14}{'CPU %':>7}"
    )
    for kind in (*KINDS, "paced"):
        row = summary.get(kind)
        if row is None:
            continue
        print(
            f"{LABELS[kind]:10}{row['events_per_s']:>10,.0f}{row['p50_ms']:>8.2f}"
            f"{row['p99_ms']:>8.2f}{row['rss_mb']:>9.1f}{row['hwm_mb']:>9.1f}"
            f"{row['cpu_us_per_event']:>14.2f}{row['cpu_pct']:>7.0f}"
        )
    print(
        "\nCPU: user + system of the server and all its children, from idle before the"
        " first request until idle again (CPU quiet), per acknowledged event;"
        " CPU %: of one core over that time"
    )
    ratio = summary["cpu_ratio"]
    print(
        f"raw floor / node CPU per event: {ratio['raw_floor']:.2f}"
        f" (target >= {summary['target']:.2f}): {verdict(summary['pass'])}"
    )
    print(f"app floor / node CPU per event: {ratio['app_floor']:.2f}")
    if "paced" in summary:
        paced = summary["paced"]
        print(
            f"node at half its rate ({paced['events_per_s']:,.0f} events/s achieved of"
            f" {paced['target_events_per_s']:,.0f} asked): p50 {paced['p50_ms']:.2f} ms,"
            f" p99 {paced['p99_ms']:.2f} ms (target <= {P99_TARGET_MS:.0f}):"
            f" {verdict(summary['p99_pass'])}; the disk's own slowest fsync meanwhile"
            f" {paced['disk_fsync_max_ms']:.1f} ms (a probe beside the node)"
        )
    print(
        f"node memory, all processes, peaks summed: {summary['node_hwm_mb']:.0f} MiB"
        f" (target <= {RSS_TARGET_MB:.0f}): {verdict(summary['rss_pass'])}"
    )
    print(
        f"node store on disk: {summary['store_bytes_per_event']:.0f} bytes per event (the"
        f" database and its write-ahead log; the benchmark's events are ~380 bytes of JSON)"
    )
    stored = "every acknowledged event stored" if summary["verified"] else "STORED COUNT MISMATCH"
    print(f"verification (events count): {stored}; non-200 responses: {summary['non200']}")


def drain_vs_ingest(summary: dict[str, Any]) -> dict[str, Any]:
    """How fast the forwarder drains a node's backlog (into each engine, and into both at
    once) against how fast the node ingests."""
    ingest = summary["node"]["events_per_s"]
    rates = summary["forward"]["rates"]
    steps = {
        "forwarding into postgresql": rates["postgresql"]["median"],
        "forwarding into clickhouse": rates["clickhouse"]["median"],
        "forwarding into both at once": summary["forward"]["drain_events_per_s"],
    }
    return {
        "node_events_per_s": ingest,
        "steps": {
            step: {"drain_events_per_s": rate, "ratio": rate / ingest, "pass": rate > ingest}
            for step, rate in steps.items()
        },
    }


def print_drain_vs_ingest(row: dict[str, Any]) -> None:
    ingest = row["node_events_per_s"]
    print(f"\nbacklog drain / node ingest ({ingest:,.0f} events/s; > 1: drains faster):")
    for step, figures in row["steps"].items():
        print(
            f"  {step:32} {figures['drain_events_per_s']:>9,.0f} events/s"
            f"  ratio {figures['ratio']:.2f}  {verdict(figures['pass'])}"
        )


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
    parser.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--idle-timeout", type=float, default=60.0, help="seconds to wait for a quiet node"
    )
    parser.add_argument("--target", type=float, default=0.5, help="raw/node CPU per event")
    parser.add_argument("--forward-rounds", type=int, default=3, help="0: no engines at all")
    parser.add_argument(
        "--forward-events", type=int, default=forward.BACKLOG_EVENTS, help="backlog; 0: all"
    )
    parser.add_argument("--forward-target", type=float, default=forward.TARGET, help="events/s")
    parser.add_argument("--end-to-end", type=int, default=10, help="seconds of load; 0: skip")
    parser.add_argument(
        "--console-rounds", type=int, default=2, help="with and without live viewers; 0: skip"
    )
    parser.add_argument(
        "--big-store-events", type=int, default=big_store.EVENTS, help="in the big store"
    )
    parser.add_argument(
        "--no-big-store", action="store_true", help="skip reading a big store (bench/big_store.py)"
    )
    parser.add_argument(
        "--no-otlp", action="store_true", help="skip OTLP against /publish_llm_events"
    )
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "latest.json")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="ingest only, about 2 minutes: --rounds 2 --duration 8 --forward-rounds 0"
        " --end-to-end 0 --no-big-store (these win over the options)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.forward_rounds, args.end_to_end = 2, 8, 0, 0
        args.no_big_store = True
    return Options(
        rounds=args.rounds,
        duration_s=args.duration,
        warmup_s=args.warmup,
        connections=args.connections,
        threads=args.threads,
        idle_timeout_s=args.idle_timeout,
        target=args.target,
        forward_rounds=args.forward_rounds,
        forward_events=args.forward_events,
        forward_target=args.forward_target,
        end_to_end_s=args.end_to_end,
        console_rounds=args.console_rounds,
        big_store_events=0 if args.no_big_store else args.big_store_events,
        otlp=not args.no_otlp,
        output=args.output,
    )


def schedule(rounds: int) -> Iterator[tuple[int, str]]:
    """Rotate which server goes first, so none always runs on a warmer machine."""
    for index in range(1, rounds + 1):
        shift = (index - 1) % len(KINDS)
        yield from ((index, kind) for kind in (*KINDS[shift:], *KINDS[:shift]))


def ingest_rounds(opts: Options, workdir: Path) -> tuple[list[Round], Path]:
    """The saturating rounds of all servers, then the node's paced round; also the database
    the last saturating node round left. The node rounds' stores (a few hundred MB each)
    stay until the run ends: deleting one stalled this disk's fsyncs for up to 0.4 s
    (ext4 with online discard on a VM, seen by ``fsync_probe``), which the next round's
    requests, acknowledged after an fsync, would wait out."""
    rounds: list[Round] = []
    kept: Path | None = None
    for index, kind in schedule(opts.rounds):
        round_dir = workdir / f"{kind}-{index}"
        round_dir.mkdir()
        rounds.append(measure(kind, index, opts, round_dir))
        progress(rounds[-1])
        if kind == "node":
            kept = round_dir
    assert kept is not None, "no node round"
    paced_dir = workdir / "paced"
    paced_dir.mkdir()
    half = median(rounds, "node", "events_per_s") / 2
    rounds.append(measure("paced", 0, opts, paced_dir, pace=half))
    progress(rounds[-1])
    return rounds, kept / "node-data" / "trubrics.db"


def engine_stages(opts: Options, workdir: Path, store: Path) -> dict[str, Any]:
    """Forwarding rates from the node's store backlog, then the end-to-end node."""
    backlog = forward.backlog_of(store, opts.forward_events)
    costs = forward.python_costs(backlog)
    results: dict[str, Any] = {}
    with forward.engines() as engines:
        runs = forward.measure(engines, backlog, opts.forward_rounds)
        results["forward"] = forward.summarise(runs, costs, opts.forward_target)
        if opts.end_to_end_s:
            print(f"end to end: a node forwarding to both engines, wrk {opts.end_to_end_s} s")
            e2e_dir = workdir / "end-to-end"
            e2e_dir.mkdir()
            results["end_to_end"] = end_to_end.measure(
                engines, e2e_dir, opts.end_to_end_s, opts.wrk, timeout_s=600.0
            )
    return results


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        rounds, store = ingest_rounds(opts, Path(tmp))
        summary = summarise(rounds, opts)
        if opts.console_rounds:
            summary["console"] = console.run(
                Path(tmp), opts.console_rounds, opts.wrk, opts.duration_s
            )
        if opts.forward_rounds:
            summary.update(engine_stages(opts, Path(tmp), store))
        if opts.otlp:
            summary["otlp"] = otlp.measure(Path(tmp))
        if opts.big_store_events:
            summary["big_store"] = big_store.measure(opts.big_store_events, Path(tmp))
    print_table(summary, opts)
    ok = summary["verified"] and summary["non200"] == 0
    if "console" in summary:
        console.print_summary(summary["console"])
        ok = ok and summary["console"]["non200"] == 0
    if "forward" in summary:
        forward.print_summary(summary["forward"])
        summary["drain_vs_ingest"] = drain_vs_ingest(summary)
        print_drain_vs_ingest(summary["drain_vs_ingest"])
        ok = ok and summary["forward"]["verified"]
    if "end_to_end" in summary:
        e2e = summary["end_to_end"]
        end_to_end.print_summary(e2e, summary["node"]["events_per_s"])
        ok = ok and e2e["verified"] and e2e["non200"] == 0
    if "otlp" in summary:
        otlp.print_summary(summary["otlp"])
        ok = ok and summary["otlp"]["verified"]
    if "big_store" in summary:
        big_store.print_summary(summary["big_store"])
        ok = ok and summary["big_store"].get("verified", True)
    write_json(rounds, summary, opts)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
