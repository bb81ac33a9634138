"""One settings object for the server, with every default and unit in one place.

The CLI fills it from flags and ``TRUBRICS_*`` environment variables (see ``cli.py``);
everything else receives it ready-made and never reads the environment itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What one ingestion node needs to know to serve."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("data")
    max_body_bytes: int = 10 * 1024 * 1024  # 100 LLM events with long generations fit
    max_event_bytes: int = 1024 * 1024
    max_depth: int = 32  # nesting of properties; the properties object is level 1
    rate_limit_events_per_s: float = 0.0  # per project and node; 0 means no limit
    rate_limit_burst: float | None = None  # defaults to one second's worth
    cors_origins: tuple[str, ...] = ("*",)
    init_project: str | None = None
    init_api_key: str | None = field(default=None, repr=False)
    key_refresh_interval_s: float = 0.5
    dedup_window_s: float = 600.0  # a repeated body within this window is a retry
    dedup_max_entries: int = 100_000  # batches remembered for that, ~280 B of memory each
    max_head_bytes: int = 64 * 1024  # URL plus headers
    max_headers: int = 100
    request_timeout_s: float = 60.0  # to receive a whole request, head and body
    max_connections: int = 1000
    shutdown_timeout_s: float = 8.0  # for in-flight requests after SIGTERM
    max_buffered_bytes: int = 256 * 1024 * 1024  # request bodies held in memory at once
    log_level: str = "info"
    materialisers: int = 2  # processes building rows from the journal, taking turns to insert
    forward_to: tuple[str, ...] = field(default=(), repr=False)  # engine URLs (may hold passwords)
    forward_retention_s: float | None = None  # delete delivered events after; None keeps them
    forward_max_backoff_s: float = 10.0  # longest wait between attempts at a failing engine
    registry: str | None = field(default=None, repr=False)  # postgresql://... shared keys
    access_log: bool = True  # one JSON line per request
    metrics_per_project: bool = False  # a project label on the event counters
    metrics_token: str | None = field(default=None, repr=False)  # else: this host only

    @property
    def database_path(self) -> Path:
        """The SQLite file holding projects, keys, the journal and the events."""
        return self.data_dir / "trubrics.db"
