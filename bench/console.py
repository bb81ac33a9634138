"""`make bench`, the console's part: what live viewers cost ingestion.

The node as ``serve`` starts it, loaded by wrk as in the node rounds (bench/node.py), once
with nobody watching the console's live view and once with ``VIEWERS`` live streams open,
each read as fast as it comes by a thread of this process (as a browser would; their CPU
is not the node's). Rounds alternate, the table gives medians: events/s, p50 and p99, and
the node's CPU per acknowledged event, with the ratio "with viewers / without".

The feed expands and encodes at most ``LIVE_EVENTS_PER_S`` events a second for all
viewers together (console/live.py); the rest is counted as skipped, so the cost of
watching stays bounded whatever the load.
"""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from node import CLI, EVENTS_PER_REQUEST, Server, Wrk, run_wrk, running, settle, tree_cpu_seconds

VIEWERS = 5
COLUMNS = ("events_per_s", "p50_ms", "p99_ms", "cpu_us_per_event")


def sign_in(server: Server) -> str:
    """A console session cookie, from a token made by the real CLI."""
    out = subprocess.run(
        [*CLI, "console", "token", "--json", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", f"/console?token={json.loads(out)['token']}")
    cookie = conn.getresponse().getheader("set-cookie") or ""
    conn.close()
    return cookie.split(";", 1)[0]


@contextmanager
def viewing(server: Server, count: int) -> Iterator[list[int]]:
    """``count`` live streams, each read by a thread; yields the bytes each has read."""
    cookie = sign_in(server) if count else ""
    received = [0] * count
    sockets = []
    for index in range(count):
        stream = socket.create_connection(("127.0.0.1", server.port))
        head = f"GET /console/api/live HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n"
        stream.sendall(head.encode())
        sockets.append(stream)
        threading.Thread(target=_read, args=(stream, received, index), daemon=True).start()
    try:
        yield received
    finally:
        for stream in sockets:
            stream.close()


def _read(stream: socket.socket, received: list[int], index: int) -> None:
    try:
        while chunk := stream.recv(1 << 16):
            received[index] += len(chunk)
    except OSError:
        pass


def measure(workdir: Path, viewers: int, index: int, wrk: Wrk, seconds: int) -> dict[str, Any]:
    """One round: a fresh node, warmed up, loaded with ``viewers`` streams open."""
    round_dir = workdir / f"console-{viewers}-{index}"
    round_dir.mkdir()
    with running("node", round_dir) as server:
        run_wrk(server, 2, wrk)
        with viewing(server, viewers) as received:
            settle(server, 60.0)
            before = tree_cpu_seconds(server.process.pid)
            load = run_wrk(server, seconds, wrk)
            settle(server, 60.0)
            cpu = tree_cpu_seconds(server.process.pid) - before
        acknowledged = load.ok * EVENTS_PER_REQUEST
        return {
            "viewers": viewers,
            "events_per_s": load.events_per_s,
            "p50_ms": load.latency_us["p50"] / 1000,
            "p99_ms": load.latency_us["p99"] / 1000,
            "cpu_us_per_event": 1e6 * cpu / acknowledged,
            "streamed_bytes_per_viewer": statistics.median(received) if received else 0,
            "non200": load.non200,
        }


def run(workdir: Path, rounds: int, wrk: Wrk, seconds: int) -> dict[str, Any]:
    """Alternating rounds without and with viewers; medians of each, and the ratios."""
    results = []
    for index in range(rounds):
        for viewers in (0, VIEWERS) if index % 2 == 0 else (VIEWERS, 0):
            results.append(measure(workdir, viewers, index, wrk, seconds))
            row = results[-1]
            print(
                f"console round {index + 1}, {viewers} viewers: {row['events_per_s']:>9,.0f}"
                f" events/s  p99 {row['p99_ms']:6.2f} ms  CPU {row['cpu_us_per_event']:.2f}"
                f" us/event  streamed {row['streamed_bytes_per_viewer']:,.0f} B/viewer",
                flush=True,
            )
    summary: dict[str, Any] = {
        str(n): {c: statistics.median(r[c] for r in results if r["viewers"] == n) for c in COLUMNS}
        for n in (0, VIEWERS)
    }
    summary["ratio"] = {c: summary[str(VIEWERS)][c] / summary["0"][c] for c in COLUMNS}
    summary["non200"] = sum(r["non200"] for r in results)
    summary["rounds"] = results
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\nconsole: ingest with {VIEWERS} live viewers open against none (medians)")
    print(f"{'':14}{'events/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'CPU us/event':>14}")
    for key, label in (
        ("0", "no viewers"),
        (str(VIEWERS), f"{VIEWERS} viewers"),
        ("ratio", "ratio"),
    ):
        row = summary[key]
        numbers = (
            f"{row['events_per_s']:>10.2f}" if key == "ratio" else f"{row['events_per_s']:>10,.0f}"
        )
        print(
            f"{label:14}{numbers}{row['p50_ms']:>8.2f}{row['p99_ms']:>8.2f}"
            f"{row['cpu_us_per_event']:>14.2f}"
        )
