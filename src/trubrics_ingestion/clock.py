"""Time as the store keeps it: integer microseconds since the Unix epoch, in UTC.

Events, journal batches, keys and cursors all carry such integers; this module is the one
place that turns them into and out of ``datetime`` and ISO-8601 text.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def now_us() -> int:
    """The current time in microseconds since the epoch."""
    return time.time_ns() // 1000


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch; a naive timestamp is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MICROSECOND


def parse_time(text: str) -> int:
    """An ISO-8601 time (naive means UTC) as microseconds since the epoch."""
    return to_micros(datetime.fromisoformat(text))


def format_time(micros: int) -> str:
    """Microseconds since the epoch as ISO-8601 UTC with a ``Z`` (and always 4-digit years,
    which ``strftime("%Y")`` does not give before year 1000)."""
    t = EPOCH + timedelta(microseconds=micros)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f".{t.microsecond:06d}Z"
    )
