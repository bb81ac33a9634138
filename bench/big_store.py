"""Reading a big store: ``events count`` and ``events export --since`` on 30M+ events.

Issue 10: on a store of 30M+ events, ``events count`` answers in under a second and an
``events export --since`` of the last hour costs in proportion to that hour, not to the
store. This builds such a store without HTTP, through the product's own
``journal.insert`` (the function the journal's writer thread commits with), and times the
real CLI on it.

The store: batches of 100 compact events (about 85 bytes each as JSON), their timestamps
spread evenly over ``SPAN_HOURS`` hours in batch order, so that the last hour holds 1% of
them. Batches go in ``GROUP`` at a time, as a loaded server's group commits write them, so
that the narrow rows lie between the bodies in the file as they do on a served node (one
insert of thousands would put them side by side and make cold reads look better than
they are); many groups share a transaction and ``synchronous=OFF``, which only makes the
build quicker. A built store is kept under bench/.cache/, named by the schema version and
its size, so that the next run reads it again instead of building it (a store of an older
schema is not reused: the name changes).

The "last hour" is the store's, not the wall clock's: ``--since`` is its newest event time
less an hour, so a store built yesterday measures the same. For comparison, a small store
holds only that hour's batches, the same events: if exporting the hour costs in proportion
to the hour, the big store's export takes as long as the small one's (ratio ~1).

Each command runs 3 times with a warm page cache (the median is the figure), then once
more after this process asked the kernel to drop the store file's cached pages
(``posix_fadvise(DONTNEED)``, this file only): the cold figure shows what the disk adds.
"""

from __future__ import annotations

import argparse
import bisect
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

import node

sys.path.insert(0, str(node.ROOT / "tests"))  # for support.store

from trubrics_ingestion.schema import decode_batch
from trubrics_ingestion.store.journal import Batch, insert
from trubrics_ingestion.store.sqlite import SCHEMA_VERSION, connect, transaction

EVENTS = 30_000_000
EVENTS_PER_BATCH = 100
SPAN_HOURS = 100
HOUR_US = 3_600_000_000
GROUP = 32  # batches per insert: a group commit of a server loaded by 32 connections
PER_TRANSACTION = 10_000  # batches per build transaction
BYTES_PER_EVENT = 130  # on disk: body, overflow pages, its share of the narrow row
CACHE = node.BENCH / ".cache"
REPEATS = 3
COUNT_TARGET_S = 1.0
RATIO_TARGET = 1.5
DATABASE = "trubrics.db"
_PLACEHOLDER = "@TIMESTAMP@"
_NAMES = ("Page view", "Login", "Search", "Thumbs up", "Copied answer")


@dataclass(frozen=True)
class Layout:
    """Where each batch of a big store lies in time: batch ``i`` (from 0) at ``at(i)``."""

    batches: int
    end_us: int  # the newest event's time

    def at(self, index: int) -> int:
        span = SPAN_HOURS * HOUR_US
        return self.end_us - span + (index + 1) * span // self.batches

    def since_us(self) -> int:
        """The start of the store's last hour."""
        return self.end_us - HOUR_US

    def last_hour(self) -> range:
        """The batches whose events lie in the last hour (the store's, not the clock's)."""
        first = bisect.bisect_left(range(self.batches), self.since_us(), key=self.at)
        return range(first, self.batches)


def body_template() -> bytes:
    """One batch's JSON body, compact events, the timestamp a placeholder."""
    events = [
        {
            "user_id": f"u{k % 40:02d}",
            "event": _NAMES[k % len(_NAMES)],
            "timestamp": _PLACEHOLDER,
            "properties": {"n": k},
        }
        for k in range(EVENTS_PER_BATCH)
    ]
    return msgspec.json.encode(events)


def batch(template: bytes, at_us: int) -> Batch:
    """A batch as the server journals it: the validated body and what it decoded to."""
    stamp = datetime.fromtimestamp(at_us / 1e6, tz=UTC).isoformat(timespec="microseconds")
    body = template.replace(_PLACEHOLDER.encode(), stamp.encode())
    return Batch.of("bench", "event", at_us + 50_000, body, decode_batch(body, "event"))


def build(database: Path, layout: Layout, indices: range) -> float:
    """Store the batches ``indices`` of ``layout``; returns the seconds it took."""
    started = time.monotonic()
    template = body_template()
    conn = connect(database)
    conn.execute("PRAGMA synchronous=OFF")
    try:
        for start in range(indices.start, indices.stop, PER_TRANSACTION):
            stop = min(start + PER_TRANSACTION, indices.stop)
            with transaction(conn):
                for group in range(start, stop, GROUP):
                    at = [layout.at(i) for i in range(group, min(group + GROUP, stop))]
                    insert(conn, [batch(template, moment) for moment in at])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.monotonic() - started


def cached_store(events: int) -> tuple[Path, Layout, float | None]:
    """The big store's data dir (built now if no earlier run left it), its layout, and the
    build time (None: it was cached)."""
    batches = events // EVENTS_PER_BATCH
    data_dir = CACHE / f"store-v{SCHEMA_VERSION}-{events}-events-{SPAN_HOURS}h"
    if not (data_dir / DATABASE).exists():
        return data_dir, *build_big(data_dir, batches)
    conn = connect(data_dir / DATABASE)
    try:
        (end_us,) = conn.execute("SELECT max(last_at) FROM batches").fetchone()
    finally:
        conn.close()
    return data_dir, Layout(batches, int(end_us)), None


def build_big(data_dir: Path, batches: int) -> tuple[Layout, float]:
    """Build into a scratch dir and rename it when complete: an interrupted build is never
    taken for a store."""
    scratch = data_dir.with_name(data_dir.name + ".building")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700, parents=True)
    layout = Layout(batches, time.time_ns() // 1000)
    print(f"big store: building {batches * EVENTS_PER_BATCH:,} events in {data_dir}", flush=True)
    seconds = build(scratch / DATABASE, layout, range(batches))
    scratch.rename(data_dir)
    return layout, seconds


def disk_short(events: int) -> str | None:
    """Why the big store cannot be built here (None: it can)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    needed = 2 * events * BYTES_PER_EVENT  # the store, and its WAL while building
    free = shutil.disk_usage(CACHE).free
    if free < needed:
        return f"{free / 1e9:.1f} GB free under {CACHE}, {needed / 1e9:.1f} GB needed"
    return None


# --- timing the CLI ------------------------------------------------------------------


@dataclass
class Timing:
    """One command on one store: wall seconds of each warm run, and one cold run."""

    warm_s: list[float]
    cold_s: float
    cpu_s: float  # user + system of the warm run with the median wall time

    @property
    def median_s(self) -> float:
        return float(statistics.median(self.warm_s))


def timed(command: Sequence[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``command``, its output thrown away."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True, timeout=600)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def evict(data_dir: Path) -> None:
    """Ask the kernel to drop the store's cached pages (this file only, nothing else)."""
    fd = os.open(data_dir / DATABASE, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_command(command: Sequence[str], data_dir: Path) -> Timing:
    """``REPEATS`` warm runs (after one untimed run that warms the cache), then a cold one."""
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True, timeout=600)
    runs = [timed(command) for _ in range(REPEATS)]
    evict(data_dir)
    cold, _ = timed(command)
    walls = [wall for wall, _ in runs]
    median_cpu = sorted(runs)[len(runs) // 2][1]
    return Timing(walls, cold, median_cpu)


def count_command(data_dir: Path) -> list[str]:
    return [*node.CLI, "events", "count", "--data-dir", str(data_dir)]


def export_command(data_dir: Path, since_us: int) -> list[str]:
    since = datetime.fromtimestamp(since_us / 1e6, tz=UTC).isoformat(timespec="microseconds")
    return [*node.CLI, "events", "export", "--since", since, "--data-dir", str(data_dir)]


def exported(data_dir: Path, since_us: int) -> int:
    """Events the export of the hour writes (one NDJSON line each)."""
    out = subprocess.run(
        export_command(data_dir, since_us), capture_output=True, check=True, timeout=600
    ).stdout
    return out.count(b"\n")


def measure_store(data_dir: Path, since_us: int) -> dict[str, Any]:
    """Count and export timings of one store, and what each answered."""
    return {
        "events": node.stored_events(data_dir),
        "store_bytes": (data_dir / DATABASE).stat().st_size,
        "count": asdict(time_command(count_command(data_dir), data_dir)),
        "export": asdict(time_command(export_command(data_dir, since_us), data_dir)),
        "exported_events": exported(data_dir, since_us),
    }


def measure(events: int, workdir: Path) -> dict[str, Any]:
    """The big store (cached or built) and the small one (built now), timed; the verdicts."""
    short = disk_short(events)
    if short is not None:
        print(f"big store: SKIPPED, not enough disk: {short}", flush=True)
        return {"skipped": short}
    data_dir, layout, build_s = cached_store(events)
    print(
        f"big store: {'built in ' + f'{build_s:.0f} s' if build_s else 'cached'}, timing the"
        f" CLI ({REPEATS} warm runs, 1 cold)",
        flush=True,
    )
    hour = layout.last_hour()
    small_dir = workdir / "small-store"
    small_build_s = build(small_dir / DATABASE, layout, hour)
    result: dict[str, Any] = {
        "data_dir": str(data_dir),
        "build_s": build_s,
        "small_build_s": small_build_s,
        "since_us": layout.since_us(),
        "hour_events": len(hour) * EVENTS_PER_BATCH,
        "big": measure_store(data_dir, layout.since_us()),
        "small": measure_store(small_dir, layout.since_us()),
    }
    return judge(result)


def judge(result: dict[str, Any]) -> dict[str, Any]:
    big, small = result["big"], result["small"]
    count_s = statistics.median(big["count"]["warm_s"])
    ratio = statistics.median(big["export"]["warm_s"]) / statistics.median(
        small["export"]["warm_s"]
    )
    exact = big["exported_events"] == small["exported_events"] == result["hour_events"]
    return {
        **result,
        "count_s": count_s,
        "count_pass": count_s < COUNT_TARGET_S,
        "export_ratio": ratio,
        "export_pass": ratio <= RATIO_TARGET,
        "verified": exact and small["events"] == result["hour_events"],
    }


def print_summary(result: dict[str, Any]) -> None:
    if "skipped" in result:
        print(f"\nbig store: skipped ({result['skipped']})")
        return
    built = result["build_s"]
    build = "cached from an earlier run" if built is None else f"built in {built:.0f} s"
    print(
        f"\nbig store ({build}; {result['data_dir']}): the real CLI, seconds: wall (median of"
        f" {REPEATS} warm runs), cold (the file's cached pages dropped first) and CPU (user +"
        " system, the median run)\n"
    )
    print(
        f"{'':12}{'events':>12}{'GB':>6}   count:{'wall':>6}{'cold':>6}{'CPU':>6}"
        f"   export --since:{'wall':>6}{'cold':>6}{'CPU':>6}{'events':>9}{'CPU us/event':>14}"
    )
    for name in ("big", "small"):
        row = result[name]
        count, export = row["count"], row["export"]
        per_event = 1e6 * export["cpu_s"] / max(row["exported_events"], 1)
        print(
            f"{name + ' store':12}{row['events']:>12,}{row['store_bytes'] / 1e9:>6.2f}{'':9}"
            f"{statistics.median(count['warm_s']):>6.2f}{count['cold_s']:>6.2f}"
            f"{count['cpu_s']:>6.2f}{'':18}{statistics.median(export['warm_s']):>6.2f}"
            f"{export['cold_s']:>6.2f}{export['cpu_s']:>6.2f}{row['exported_events']:>9,}"
            f"{per_event:>14.1f}"
        )
    print(
        f"\nevents count on {result['big']['events']:,} events: {result['count_s']:.2f} s"
        f" (target < {COUNT_TARGET_S:.0f} s): {node.verdict(result['count_pass'])}"
    )
    print(
        f"events export --since of the store's last hour ({result['hour_events']:,} events):"
        f" big store / small store {result['export_ratio']:.2f} (target <= {RATIO_TARGET}):"
        f" {node.verdict(result['export_pass'])}"
    )
    exact = "the hour's events, exactly" if result["verified"] else "MISMATCH"
    print(f"verification: both exports wrote {exact}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=EVENTS, help="in the big store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-big-") as tmp:
        result = measure(args.events, Path(tmp))
    print_summary(result)
    return 0 if result.get("verified", True) else 1


if __name__ == "__main__":
    sys.exit(main())
