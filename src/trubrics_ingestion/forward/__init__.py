"""Forwarding the node's events to PostgreSQL and ClickHouse (see ``forwarder.py``)."""

from __future__ import annotations

from ..urls import SinkUrl, SinkUrlError, parse_sink_url
from .cursors import SinkStatus, prune
from .forwarder import Forwarder, SinkHealth, forward_status, open_sink, run_forever
from .sink import Row, Sink

__all__ = [
    "Forwarder",
    "Row",
    "Sink",
    "SinkHealth",
    "SinkStatus",
    "SinkUrl",
    "SinkUrlError",
    "forward_status",
    "open_sink",
    "parse_sink_url",
    "prune",
    "run_forever",
]
