"""What a node tells operators about the parts it depends on, read when asked.

Two neighbours can fall behind without the node failing: an engine it forwards to (the
events wait in the node's store, and the backlog grows) and the shared key registry
(known keys keep working, revocations wait). Neither makes the node unready, since it
still accepts and stores every batch, but both are reported: in ``/readyz``'s body, with
plain-language warnings, and as gauges in ``/metrics``. Everything is read at that moment,
from the store (read-only) and from the key cache, so nothing is stale or kept up to date
in between.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from ..forward import SinkStatus, forward_status, parse_sink_url
from ..keys.cache import PolledKeyCache

log = logging.getLogger("trubrics_ingestion.status")

FORWARD_LAG_WARNING_S = 60.0  # an undelivered event older than this is worth a warning


class NodeStatus:
    """Forwarding backlog per engine and key registry health; also a Prometheus collector."""

    def __init__(
        self,
        database: Path,
        forward_to: Sequence[str],
        registry: PolledKeyCache | None = None,
    ) -> None:
        self._database = database
        self._urls = [parse_sink_url(url) for url in forward_to]
        self._registry = registry

    def readiness(self) -> dict[str, Any]:
        """The details ``/readyz`` adds to ``{"status": "ready"}``."""
        details: dict[str, Any] = {}
        warnings: list[str] = []
        if self._urls:
            details["forwarding"], lagging = self._forwarding()
            warnings += lagging
        if self._registry is not None:
            registry = self._registry.status()
            ago = registry.last_loaded_s_ago
            details["key_registry"] = {
                "reachable": registry.reachable,
                "keys": registry.keys,
                "last_loaded_s_ago": None if ago is None else round(ago, 3),
            }
            if not registry.reachable:
                warnings.append("key registry unreachable: serving known keys only")
        if warnings:
            details["warnings"] = warnings
        return details

    def _forwarding(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Per engine its backlog, and warnings for those far behind."""
        statuses = self._forward_status()
        if statuses is None:
            return [], ["the forwarding backlog cannot be read from the store"]
        forwarding, warnings = [], []
        for url, status in zip(self._urls, statuses, strict=True):
            age = status.oldest_undelivered_age_s
            forwarding.append(
                {
                    "engine": url.display,
                    "backlog_events": status.backlog_rows,
                    "oldest_undelivered_age_s": None if age is None else round(age, 3),
                }
            )
            if age is not None and age > FORWARD_LAG_WARNING_S:
                warnings.append(f"forwarding to {url.display} is {age:.0f} s behind")
        return forwarding, warnings

    def describe(self) -> Iterable[Metric]:
        return []  # names are only known once the engines are: nothing to check up front

    def collect(self) -> Iterable[Metric]:
        if self._urls:
            statuses = self._forward_status()
            if statuses is not None:
                yield from _forward_gauges([url.display for url in self._urls], statuses)
        if self._registry is not None:
            registry = self._registry.status()
            yield GaugeMetricFamily(
                "trubrics_key_registry_reachable",
                "1 if the last look at the shared key registry succeeded, else 0.",
                value=int(registry.reachable),
            )
            yield GaugeMetricFamily(
                "trubrics_key_registry_keys",
                "Active keys known from the registry.",
                value=registry.keys,
            )
            if registry.last_loaded_s_ago is not None:
                yield GaugeMetricFamily(
                    "trubrics_key_registry_last_loaded_age_seconds",
                    "Seconds since the key registry was last read successfully.",
                    value=registry.last_loaded_s_ago,
                )

    def _forward_status(self) -> list[SinkStatus] | None:
        try:
            return forward_status(self._database, self._urls)
        except sqlite3.Error as exc:  # absent figures say "unknown"; the answer still goes out
            log.warning("cannot read the forwarding backlog: %s", exc)
            return None


def _forward_gauges(engines: list[str], statuses: list[SinkStatus]) -> Iterable[Metric]:
    backlog = GaugeMetricFamily(
        "trubrics_forward_backlog_events",
        "Events stored on this node and not yet confirmed by the engine.",
        labels=("engine",),
    )
    age = GaugeMetricFamily(
        "trubrics_forward_oldest_undelivered_age_seconds",
        "Age of the oldest event not yet confirmed by the engine (0: none waiting).",
        labels=("engine",),
    )
    for engine, status in zip(engines, statuses, strict=True):
        backlog.add_metric((engine,), status.backlog_rows)
        age.add_metric((engine,), status.oldest_undelivered_age_s or 0.0)
    return [backlog, age]
