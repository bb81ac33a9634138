"""Prometheus metrics of one node, in a registry of its own, served at ``GET /metrics``.

One ``Metrics`` object is made by ``server.py`` and handed to the app (requests, events,
rejections) and to the journal (group commits); tests and the benchmark's floor make
their own. What every request counts (requests, latency, events accepted) is kept as
plain numbers, turned into metric families when scraped (``RequestCounts``): a counter's
increment takes a lock, a histogram's observation a loop in Python, and the app counts
on the event loop's thread only. Rarer counts increment children made once (``.labels``
is looked up at most once per label set). What lives on disk is read when scraped: the
store's size from ``stat``, the quarantine from a read-only connection.

Per-project labels on the event counters are off by default (``metrics_per_project``):
each project would add series to every scrape. The project only ever comes from a
known key, so even then the label cannot be filled by an anonymous client.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from ..errors import REJECTION_REASONS
from ..ingest.app import ENDPOINTS

log = logging.getLogger("trubrics_ingestion.metrics")
disable_created_metrics()  # type: ignore[no-untyped-call]  # a "_created" series per series doubles a scrape for nothing

# Seconds: from a few ms (the floor) to the request deadline.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCHES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # journal.py commits at most 256 at once
NO_PROJECT = ""  # rejected before the key said which project (401)


class Metrics:
    """Every metric of a node; the methods are what the request path and the journal call."""

    def __init__(self, *, database: Path | None = None, per_project: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.per_project = per_project
        registry = self.registry
        project = ("project",) if per_project else ()
        self._counts = RequestCounts(per_project)
        registry.register(self._counts)
        self._rejected = Counter(
            "trubrics_batches_rejected",
            "Publish requests refused, nothing of them stored, by reason.",
            ("reason", *project),
            registry=registry,
        )
        self._dedup_hits = Counter(
            "trubrics_dedup_hits",
            "Batches acknowledged as repeats of one already stored, and not stored again.",
            registry=registry,
        )
        self._dedup_evictions = Counter(
            "trubrics_dedup_evictions",
            "Batches forgotten by the dedup memory before their window ended, to stay within"
            " its bound (--dedup-max-entries): a retry of one is stored again.",
            registry=registry,
        )
        self._rate_limit_hits = Counter(
            "trubrics_rate_limit_hits",
            "Publish requests refused with a 429 by the per-project rate limit.",
            registry=registry,
        )
        self._refused = Counter(
            "trubrics_connections_refused",
            "Requests answered before reaching the app, by status: 400 malformed, 431 head"
            " too large, 408 not received in time, 503 too many open connections.",
            ("status",),
            registry=registry,
        )
        self._commit_batches = Histogram(
            "trubrics_journal_commit_batches",
            "Batches made durable by one group commit of the journal.",
            buckets=BATCHES_BUCKETS,
            registry=registry,
        )
        self._commit_seconds = Histogram(
            "trubrics_journal_commit_seconds",
            "Time of one group commit, fsync included.",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self._commit_failures = Counter(
            "trubrics_journal_commit_failures",
            "Group commits that failed (every batch in them got a 503).",
            registry=registry,
        )
        ProcessCollector(registry=registry)  # CPU, memory, file descriptors of this process
        self._store = StoreCollector(database) if database is not None else None
        if self._store is not None:
            registry.register(self._store)
        # Children made once: the rare paths do a dict lookup and an increment.
        self._rejected_children: dict[tuple[str, str], Counter] = {}
        self._refusals: dict[str, int] = {}  # by reason, all projects: the console's overview
        if not per_project:
            for reason in REJECTION_REASONS:
                self._rejected_children[reason, NO_PROJECT] = self._rejected.labels(reason)

    # --- the request path (event loop thread) ---------------------------------------------

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        counts = self._counts
        key = (endpoint, status)
        counts.requests[key] = counts.requests.get(key, 0) + 1
        counts.latency[endpoint][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        counts.latency_sums[endpoint] += seconds

    def accepted(self, project: str, events: int) -> None:
        accepted = self._counts.accepted
        key = project if self.per_project else NO_PROJECT
        accepted[key] = accepted.get(key, 0) + events

    def rejected(self, reason: str, project: str | None) -> None:
        """``reason``: one of ``errors.REJECTION_REASONS``."""
        key = (reason, (project or NO_PROJECT) if self.per_project else NO_PROJECT)
        child = self._rejected_children.get(key)
        if child is None:
            labels = key if self.per_project else (reason,)
            child = self._rejected_children[key] = self._rejected.labels(*labels)
        child.inc()
        self._refusals[reason] = self._refusals.get(reason, 0) + 1
        if reason == "rate_limited":
            self._rate_limit_hits.inc()

    def dedup_hit(self) -> None:
        self._dedup_hits.inc()

    def refusals(self) -> dict[str, int]:
        """Publish requests refused since the start, by reason (from any thread)."""
        return self._refusals.copy()

    def refused(self, status: int) -> None:
        """A request the connection layer (``ingest.connection``) answered itself."""
        self._refused.labels(str(status)).inc()

    # --- the journal's writer thread ----------------------------------------------------

    def commit(self, batches: int, seconds: float) -> None:
        self._commit_batches.observe(batches)
        self._commit_seconds.observe(seconds)

    def commit_failed(self) -> None:
        self._commit_failures.inc()

    def dedup_evicted(self) -> None:
        self._dedup_evictions.inc()

    # --- scraping -----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class RequestCounts:
    """What every request counts, as plain numbers, written by the event loop's thread
    only and read by a scrape (another thread): dicts are copied before being read, and
    an observation is one bucket and one sum, like prometheus_client's own histograms."""

    def __init__(self, per_project: bool) -> None:
        self.per_project = per_project
        self.requests: dict[tuple[str, int], int] = {}
        # Per endpoint, observations by bucket (the last: over every bound), and their sum.
        self.latency = {name: [0] * (len(LATENCY_BUCKETS) + 1) for name in ENDPOINTS}
        self.latency_sums = dict.fromkeys(ENDPOINTS, 0.0)
        self.accepted: dict[str, int] = {} if per_project else {NO_PROJECT: 0}

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        requests, latency, accepted = self._families()
        for (endpoint, status), count in self.requests.copy().items():
            requests.add_metric([endpoint, str(status)], count)
        bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
        for endpoint, counts in self.latency.items():
            cumulative = itertools.accumulate(counts)
            latency.add_metric(
                [endpoint], list(zip(bounds, cumulative, strict=True)), self.latency_sums[endpoint]
            )
        for project, events in self.accepted.copy().items():
            accepted.add_metric([project] if self.per_project else [], events)
        return [requests, latency, accepted]

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                "trubrics_http_requests",
                "HTTP requests answered (or cut off: 499), by endpoint and status.",
                labels=("endpoint", "status"),
            ),
            HistogramMetricFamily(
                "trubrics_http_request_duration_seconds",
                "Time from the request's head to the end of its answer, by endpoint.",
                labels=("endpoint",),
            ),
            CounterMetricFamily(
                "trubrics_events_accepted",
                "Events stored (an LLM event is stored as two); repeats of a stored batch are not.",
                labels=("project",) if self.per_project else (),
            ),
        )


_STORE_GAUGES = {
    "size": (
        "trubrics_store_size_bytes",
        "Bytes of the SQLite store on disk: the database file and its write-ahead log.",
    ),
    "quarantined": (
        "trubrics_quarantined_batches",
        "Stored batches that could not be expanded into events, kept for an operator.",
    ),
}


class StoreCollector:
    """Gauges read from the store at scrape time: size on disk, quarantine."""

    def __init__(self, database: Path) -> None:
        self._database = database
        self._conn: sqlite3.Connection | None = None

    def describe(self) -> Iterable[Metric]:
        """The names, without reading anything (the registry asks when registering)."""
        return [GaugeMetricFamily(*_STORE_GAUGES[name]) for name in _STORE_GAUGES]

    def collect(self) -> Iterable[Metric]:
        size = sum(_size(path) for path in (self._database, _wal(self._database)))
        yield GaugeMetricFamily(*_STORE_GAUGES["size"], value=size)
        try:
            quarantined = self._quarantined()
        except sqlite3.Error as exc:  # absent gauges say "unknown"; the scrape still works
            log.warning("cannot read the store for /metrics: %s", exc)
            self.close()
            return
        yield GaugeMetricFamily(*_STORE_GAUGES["quarantined"], value=quarantined)

    def _quarantined(self) -> int:
        if self._conn is None:
            uri = self._database.resolve().as_uri() + "?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, timeout=1, check_same_thread=False)
        (quarantined,) = self._conn.execute("SELECT count(*) FROM quarantine").fetchone()
        return int(quarantined)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _wal(database: Path) -> Path:
    return database.with_name(database.name + "-wal")


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
