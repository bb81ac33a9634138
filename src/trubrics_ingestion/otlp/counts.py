"""What the OTLP receiver and resolver count, served in ``/metrics``.

Plain numbers, each written by one thread (the event loop's, or the resolver's), turned
into metric families when scraped, as ``node.metrics`` does for requests.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .wire import LOGS, TRACES, Decoded

KINDS = ("genai", "other", "rejected")
_FAMILIES = {
    TRACES: ("trubrics_otlp_spans", "OTLP spans received: GenAI calls (kept), other spans"
             " (not stored as events: forward them to a tracing backend), rejected."),
    LOGS: ("trubrics_otlp_log_records", "OTLP log records received: GenAI content (kept),"
           " others (not stored), rejected."),
}  # fmt: skip


class OtlpCounts:
    """A Prometheus collector of the OTLP figures."""

    def __init__(self) -> None:
        self.received = {signal: dict.fromkeys(KINDS, 0) for signal in (TRACES, LOGS)}
        self.resolved = {"root": 0, "window": 0}  # calls, by what let them be resolved
        self.unmatched_logs = 0
        self.waiting = 0  # calls waiting for their trace's root, after the resolver's last step

    def count(self, signal: str, decoded: Decoded) -> None:
        counts = self.received[signal]
        counts["genai"] += decoded.calls
        counts["other"] += decoded.other
        counts["rejected"] += decoded.rejected

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        for signal, (name, documentation) in _FAMILIES.items():
            received = CounterMetricFamily(name, documentation, labels=("kind",))
            for kind, count in self.received[signal].items():
                received.add_metric([kind], count)
            yield received
        resolved = CounterMetricFamily(
            "trubrics_otlp_calls_resolved",
            "GenAI spans stored as a Prompt and a Generation event, by what let them be resolved:"
            " their trace's root span arrived, or the window (--otlp-window-s) passed.",
            labels=("by",),
        )
        for by, count in self.resolved.items():
            resolved.add_metric([by], count)
        yield resolved
        yield CounterMetricFamily(
            "trubrics_otlp_log_records_unmatched",
            "GenAI log records dropped after the window without their span (or after it).",
            value=self.unmatched_logs,
        )
        yield GaugeMetricFamily(
            "trubrics_otlp_calls_waiting",
            "GenAI spans held until their trace's root span arrives or the window passes.",
            value=self.waiting,
        )
