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

Then, in the same run, forwarding into real engines (PostgreSQL, and ClickHouse as a
Distributed table over 2 shards; scripts/install-engines.sh installs them): the events/s
the real forwarder ships from the last durable round's store into each engine and into
both at once (bench/forward.py); those drain rates, and the materialisers' from the
durable rounds (a backlog goes through both), against the durable ingest rate (> 1: a
backlog drains faster than the node ingests); and one end-to-end figure, a node serving with
``--forward-to`` both engines under wrk (bench/end_to_end.py). Every engine is checked to
hold exactly the events it was sent, each once.

Exit status 1 means a correctness problem (non-200s, stored != acknowledged, an engine
holding other events than the store), not a missed target: that is printed as FAIL, and
the figures are in bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import end_to_end
import forward
from node import (
    BENCH,
    EVENTS_PER_REQUEST,
    ROOT,
    Load,
    Server,
    Wrk,
    cpu_seconds,
    drain,
    memory_mb,
    run_wrk,
    running,
    stored_events,
    verify,
)

KINDS = ("floor", "durable")


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
    forward_rounds: int
    forward_events: int
    forward_target: float
    end_to_end_s: int
    output: Path

    @property
    def wrk(self) -> Wrk:
        return Wrk(connections=self.connections, threads=self.threads)


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


# --- one round -----------------------------------------------------------------------


def measure(kind: str, index: int, opts: Options, workdir: Path) -> Round:
    """Start, warm up, load, read the figures, stop: one server, one round, its files in
    ``workdir``."""
    with running(kind, workdir) as server:
        warmup = run_wrk(server, opts.warmup_s, opts.wrk)
        cpu_before = cpu_seconds(server.process.pid)
        load = run_wrk(server, opts.duration_s, opts.wrk)
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
        events_per_s=load.events_per_s,
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
    materialised = [d["drain_events_per_s"] for d in durable if d["drain_events_per_s"]]
    summary["durable"]["drain_events_per_s"] = (
        statistics.median(materialised) if materialised else None
    )
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


def drain_vs_ingest(summary: dict[str, Any]) -> dict[str, Any]:
    """How fast a node's backlog drains against how fast the node ingests, for each of the
    steps a backlog goes through: journal -> rows (the materialisers, measured by the
    durable rounds once their load stops) and rows -> engines (the forwarder: into each
    engine, and into both at once)."""
    ingest = summary["durable"]["events_per_s"]
    rates = summary["forward"]["rates"]
    steps = {
        "materialising (journal -> rows)": summary["durable"]["drain_events_per_s"],
        "forwarding into postgresql": rates["postgresql"]["median"],
        "forwarding into clickhouse": rates["clickhouse"]["median"],
        "forwarding into both at once": summary["forward"]["drain_events_per_s"],
    }
    return {
        "durable_events_per_s": ingest,
        "steps": {
            step: {"drain_events_per_s": rate, "ratio": rate / ingest, "pass": rate > ingest}
            for step, rate in steps.items()
            if rate is not None
        },
    }


def print_drain_vs_ingest(row: dict[str, Any]) -> None:
    ingest = row["durable_events_per_s"]
    print(f"\nbacklog drain / durable ingest ({ingest:,.0f} events/s; > 1: drains faster):")
    for step, figures in row["steps"].items():
        verdict = "PASS" if figures["pass"] else "FAIL"
        print(
            f"  {step:32} {figures['drain_events_per_s']:>9,.0f} events/s"
            f"  ratio {figures['ratio']:.2f}  {verdict}"
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
    # 64: of 16/32/64, the count that gave the durable server its best throughput (2 cores).
    parser.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="seconds")
    parser.add_argument("--target", type=float, default=0.30, help="durable/floor to pass")
    parser.add_argument("--forward-rounds", type=int, default=3, help="0: no engines at all")
    parser.add_argument(
        "--forward-events", type=int, default=forward.BACKLOG_EVENTS, help="backlog; 0: all"
    )
    parser.add_argument("--forward-target", type=float, default=forward.TARGET, help="events/s")
    parser.add_argument("--end-to-end", type=int, default=10, help="seconds of load; 0: skip")
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
        forward_rounds=args.forward_rounds,
        forward_events=args.forward_events,
        forward_target=args.forward_target,
        end_to_end_s=args.end_to_end,
        output=args.output,
    )


def schedule(rounds: int) -> Iterator[tuple[int, str]]:
    """Alternate which server goes first, so neither always runs on a warmer machine."""
    for index in range(1, rounds + 1):
        order = KINDS if index % 2 else tuple(reversed(KINDS))
        for kind in order:
            yield index, kind


def ingest_rounds(opts: Options, workdir: Path) -> tuple[list[Round], Path]:
    """The floor and durable rounds; also the database the last durable round left (the
    others are deleted as soon as they are done: each holds about a million events)."""
    rounds: list[Round] = []
    kept: Path | None = None
    for index, kind in schedule(opts.rounds):
        round_dir = workdir / f"{kind}-{index}"
        round_dir.mkdir()
        rounds.append(measure(kind, index, opts, round_dir))
        progress(rounds[-1])
        if kind == "durable":
            if kept is not None:
                shutil.rmtree(kept)
            kept = round_dir
        else:
            shutil.rmtree(round_dir)
    assert kept is not None, "no durable round"
    return rounds, kept / "durable-data" / "trubrics.db"


def engine_stages(opts: Options, workdir: Path, store: Path) -> dict[str, Any]:
    """Forwarding rates from the durable store's backlog, then the end-to-end node."""
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
        if opts.forward_rounds:
            summary.update(engine_stages(opts, Path(tmp), store))
    print_table(summary, opts)
    ok = summary["verified"] and summary["non200"] == 0
    if "forward" in summary:
        forward.print_summary(summary["forward"])
        summary["drain_vs_ingest"] = drain_vs_ingest(summary)
        print_drain_vs_ingest(summary["drain_vs_ingest"])
        ok = ok and summary["forward"]["verified"]
    if "end_to_end" in summary:
        e2e = summary["end_to_end"]
        end_to_end.print_summary(e2e, summary["durable"]["events_per_s"])
        ok = ok and e2e["verified"] and e2e["non200"] == 0
    write_json(rounds, summary, opts)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
