"""The request path's cost alone: CPU per event of the raw floor and of the app floor.

A quick loop for work on the request path (issue 10), lighter than ``make bench``: both
floors (and optionally the app floor of another checkout, to compare before and after in
one run) are started once, pinned like ``make bench`` pins them, then loaded in
alternating rounds; each round reads the server's own CPU (utime + stime from /proc)
before and after the wrk run. It prints the medians of CPU per acknowledged event and
the app floor's ratio to the raw floor measured in the same run. The floors have no
children and nothing to drain, so no settling is needed between rounds.

Usage: ``python bench/profile_floor.py [--rounds 7] [--seconds 5] [--baseline-src DIR]``,
``DIR`` being another checkout's ``src`` (e.g. ``git worktree add`` of main, or
``git archive main src | tar -x -C /tmp/base``), served by this checkout's bench/floor.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from node import EVENTS_PER_REQUEST, Server, Wrk, cpu_seconds, run_wrk, running

WARMUP_S = 2


@contextlib.contextmanager
def pythonpath(src: Path | None) -> Iterator[None]:
    """Servers started meanwhile import the package from ``src`` (None: this checkout)."""
    before = os.environ.get("PYTHONPATH")
    if src is not None:
        os.environ["PYTHONPATH"] = str(src)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def us_per_event(server: Server, seconds: int, wrk: Wrk) -> tuple[float, float]:
    """One loaded run: the server's CPU microseconds per acknowledged event, events/s."""
    before = cpu_seconds(server.process.pid)
    load = run_wrk(server, seconds, wrk)
    cpu = cpu_seconds(server.process.pid) - before
    if load.non200:
        print(f"!!! {server.kind}: {load.non200} non-200: {load.statuses}", file=sys.stderr)
    events = load.ok * EVENTS_PER_REQUEST
    return cpu * 1e6 / events, load.events_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=5, help="of load per round and server")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src, to compare")
    args = parser.parse_args()
    wrk = Wrk(connections=args.connections, threads=1)
    kinds = {"raw": None, "floor": None} | (
        {"baseline": args.baseline_src} if args.baseline_src else {}
    )
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        servers = {}
        for name, src in kinds.items():
            with pythonpath(src):
                workdir = Path(tmp) / name
                workdir.mkdir()
                kind = "raw" if name == "raw" else "floor"
                servers[name] = stack.enter_context(running(kind, workdir))
        for server in servers.values():
            run_wrk(server, WARMUP_S, wrk)
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
        for index in range(args.rounds):
            for name, server in servers.items():
                figures[name].append(us_per_event(server, args.seconds, wrk))
            line = "  ".join(f"{name} {figures[name][-1][0]:.3f}" for name in servers)
            print(f"round {index + 1}: us/event  {line}", file=sys.stderr)
    report(figures)


def report(figures: dict[str, list[tuple[float, float]]]) -> None:
    raw = statistics.median(cpu for cpu, _ in figures["raw"])
    for name, runs in figures.items():
        cpu = statistics.median(each for each, _ in runs)
        rate = statistics.median(each for _, each in runs)
        print(
            f"{name:>8}: {cpu:.3f} us/event (x{cpu / raw:.2f} raw, +{cpu - raw:.3f} us),"
            f" {rate:,.0f} events/s"
        )


if __name__ == "__main__":
    main()
