"""One settings object for the server, with every default and unit in one place.

The CLI fills it from flags and ``TRUBRICS_*`` environment variables (see ``cli.py``);
everything else receives it ready-made and never reads the environment itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_DATA_DIR = Path("data")
# 100 LLM events with long generations fit comfortably; larger bodies get a 413.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What one ingestion node needs to know to serve."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_event_bytes: int = 1024 * 1024
    max_depth: int = 32  # nesting of properties; the properties object is level 1
    rate_limit_events_per_s: float = 0.0  # per project and node; 0 means no limit
    rate_limit_burst: float | None = None  # defaults to one second's worth
    cors_origins: tuple[str, ...] = ("*",)
    init_project: str | None = None
    init_api_key: str | None = field(default=None, repr=False)
    key_refresh_interval_s: float = 0.5
    dedup_window_s: float = 600.0  # a repeated body within this window is a retry
    log_level: str = "info"

    @property
    def database_path(self) -> Path:
        """The SQLite file holding projects, keys, the journal and the events."""
        return self.data_dir / "trubrics.db"
