"""End to end: a real node, ``serve --forward-to PG --forward-to CH``, loaded by wrk for some
seconds, then the time until both engines hold every acknowledged event.

Everything is the product's own: the server acknowledges and stores batches (journal),
its forwarder child expands them and ships the events to fresh tables in PostgreSQL and
the 2-shard ClickHouse cluster, while wrk keeps the node busy. Once the load stops, the
store is polled (read-only) until both cursors reach the newest batch; that state must
still hold a second later (a batch committed late would undo it). Then the node is
stopped and checked: store against acknowledged (as for the node rounds), and each engine
against the store: count, distinct ids and the MD5 of the ids.

The figures: acknowledged events over (load + catch-up) seconds, the rate at which events
reach both engines when a node is loaded this hard for this long; and the node's CPU per
event over that time, the server's and its forwarder child's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import forward
import node
from trubrics_ingestion.forward import forward_status

POLL_S = 0.1
CONFIRM_S = 1.0


def measure(
    engines: forward.Engines, workdir: Path, seconds: int, wrk: node.Wrk, timeout_s: float
) -> dict[str, Any]:
    """One node, loaded for ``seconds``; the figures and checks as a dict."""
    dests = [engines.fresh(engine) for engine in forward.ENGINES]
    serve_args = [arg for dest in dests for arg in ("--forward-to", dest.url)]
    with node.running("forwarding", workdir, serve_args) as server:
        pid = server.process.pid
        cpu_before = node.cpu_seconds(pid), node.tree_cpu_seconds(pid)
        load = node.run_wrk(server, seconds, wrk)
        at_end = behind(server.database, dests)
        caught_up = wait_delivered(server.database, dests, timeout_s)
        cpu_after = node.cpu_seconds(pid), node.tree_cpu_seconds(pid)
    check = node.verify(node.stored_events(server.data_dir), [load])
    everything = forward.backlog_of(server.database)
    checks = {dest.engine: engines.check(dest, everything) for dest in dests}
    for dest in dests:
        engines.drop(dest)
    load_s = load.duration_us / 1e6
    result: dict[str, Any] = {
        "load_s": load_s,
        "acknowledged_events_per_s": load.events_per_s,
        "non200": load.non200,
        "p99_ms": load.latency_us["p99"] / 1000,
        "behind_at_load_end": at_end,
        "caught_up_s": caught_up,
        **cpu_per_event(cpu_before, cpu_after, check["stored_events"]),
        **check,
        "engines": checks,
    }
    if None not in caught_up.values():
        result["events_per_s"] = check["stored_events"] / (load_s + max(caught_up.values()))
    result["verified"] = check["verdict"] != "MISMATCH" and all(
        c["verdict"] == "exact" for c in checks.values()
    )
    return result


def cpu_per_event(
    before: tuple[float, float], after: tuple[float, float], events: int
) -> dict[str, float]:
    """The node's CPU per stored event from the first request until both engines had
    everything: the server process's (ingest) and its children's (the forwarder)."""
    own = after[0] - before[0]
    children = (after[1] - before[1]) - own
    return {
        "server_cpu_us_per_event": 1e6 * own / events if events else 0.0,
        "forwarder_cpu_us_per_event": 1e6 * children / events if events else 0.0,
    }


def behind(database: Path, dests: list[forward.Destination]) -> dict[str, int]:
    """Per engine, stored events not yet delivered."""
    statuses = forward_status(database, [dest.url for dest in dests])
    return {dest.engine: s.backlog_rows for dest, s in zip(dests, statuses, strict=True)}


def wait_delivered(
    database: Path, dests: list[forward.Destination], timeout_s: float
) -> dict[str, float | None]:
    """Seconds until each engine had every stored event (None: not within ``timeout_s``)."""
    started = time.monotonic()
    done: dict[str, float | None] = {}
    while time.monotonic() - started < timeout_s:
        state = behind(database, dests)
        elapsed = time.monotonic() - started
        for dest in dests:
            if state[dest.engine] == 0:
                done.setdefault(dest.engine, elapsed)
        if len(done) == len(dests):
            time.sleep(CONFIRM_S)
            if not any(behind(database, dests).values()):
                return done
            done.clear()  # something arrived late: not caught up after all
        time.sleep(POLL_S)
    print(f"\n!!! NOT DELIVERED IN {timeout_s:.0f} s: {behind(database, dests)}\n", file=sys.stderr)
    return {**{dest.engine: None for dest in dests}, **done}


def print_summary(result: dict[str, Any], node_events_per_s: float | None) -> None:
    end = result["behind_at_load_end"]
    caught = result["caught_up_s"]

    def after(name: str) -> str:
        return "never" if caught.get(name) is None else f"{caught[name]:.1f} s"

    print(
        f"\nend to end: serve --forward-to postgresql --forward-to clickhouse, wrk"
        f" {result['load_s']:.0f} s: {result['acknowledged_events']:,} events acknowledged"
        f" ({result['acknowledged_events_per_s']:,.0f} events/s, p99 {result['p99_ms']:.0f} ms,"
        f" non-200 {result['non200']})"
    )
    print(
        f"  at the end of the load, events not yet delivered: postgresql {end['postgresql']:,},"
        f" clickhouse {end['clickhouse']:,}"
    )
    print(
        f"  after the load: all events in postgresql {after('postgresql')}, in clickhouse"
        f" {after('clickhouse')}"
    )
    print(
        f"  node CPU per event, from the first request until both engines had everything:"
        f" server {result['server_cpu_us_per_event']:.2f} us, forwarder (both engines)"
        f" {result['forwarder_cpu_us_per_event']:.2f} us"
    )
    rate = result.get("events_per_s")
    if rate is not None:
        ratio = ""
        if node_events_per_s:
            ratio = f" = {rate / node_events_per_s:.2f} x the node's ingest"
        print(
            f"  end-to-end rate (events into both engines / (load + catch-up)): {rate:,.0f}"
            f" events/s{ratio}"
        )
    engines = ", ".join(
        f"{name} {c['rows']:,} [{c['verdict']}, sent twice {c['sent_twice']}]"
        for name, c in result["engines"].items()
    )
    print(
        f"  verification: stored {result['stored_events']:,} of {result['acknowledged_events']:,}"
        f" acknowledged [{result['verdict']}]; engines: {engines}"
    )
