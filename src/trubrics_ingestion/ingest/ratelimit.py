"""A token bucket per project: one noisy project cannot starve the others.

Events (as stored: an LLM event counts twice) take tokens; tokens refill at
``events_per_s`` up to ``burst``. The bucket is per node: with N nodes behind a load
balancer a project gets up to N times the rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ..errors import RateLimited

MAX_BATCH_EVENTS = 200  # 100 LLM events; a bucket must hold at least one full batch


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


class RateLimiter:
    """``take(project, n)`` or ``RateLimited`` with how long to wait."""

    def __init__(self, *, events_per_s: float, burst: float | None = None) -> None:
        self._rate = events_per_s
        self._burst = max(burst or events_per_s, MAX_BATCH_EVENTS)
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def take(self, project: str, events: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        bucket = self._buckets.setdefault(project, _Bucket(self._burst, now))
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < events:
            wait_s = math.ceil((events - bucket.tokens) / self._rate)
            raise RateLimited(wait_s)
        bucket.tokens -= events
