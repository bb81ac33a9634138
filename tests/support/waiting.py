"""Waiting for a condition, with a deadline that fails the test and says what it waited for."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float = 30.0,
    what: str = "the condition",
    log: str = "",
    *,
    poll_s: float = 0.05,
) -> float:
    """Poll ``condition`` until it holds; the seconds it took. Fails the test, naming
    ``what`` (and the tail of ``log``), if it does not hold within ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}\n{log[-4000:]}")
        time.sleep(poll_s)
    return time.monotonic() - started
