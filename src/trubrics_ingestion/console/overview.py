"""What the overview page shows, read when it is asked for (off the event loop).

Events per minute over the last hour, per project and source, come from the engine the
node forwards to when there is one (every node's events, by their own time:
``engines.per_minute``), else they are sums over the narrow rows of the batches this node
received (``store.batches.per_minute``: no body is read);
refusals by reason are the node's counters since it started (``/metrics``' own); the
forwarding backlog is ``/readyz``'s; keys come from the key store (the registry when
nodes share keys), with when this node last accepted each.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ..clock import format_time, now_us
from ..keys import KeyStore
from ..keys.model import KeyStoreUnavailable
from ..store import batches
from ..store.sqlite import connect

WINDOW_MINUTES = 60


class MinutesReader(Protocol):
    """An engine's events per minute (``engines``)."""

    @property
    def display(self) -> str: ...

    def per_minute(self, since: int) -> list[tuple[int, str, str, int]]: ...

    def close(self) -> None: ...


class Overview:
    """Reads the overview; used by one thread at a time (its own store connection, and
    its own reader of ``engine``)."""

    def __init__(
        self,
        database: Path,
        *,
        keys: KeyStore,
        last_used: Callable[[], Mapping[str, float]],
        refusals: Callable[[], Mapping[str, int]],
        status: Callable[[], Mapping[str, Any]],
        engine: MinutesReader | None = None,
    ) -> None:
        self._database = database
        self._engine = engine
        self._keys = keys
        self._last_used = last_used
        self._refusals = refusals
        self._status = status
        self._conn: sqlite3.Connection | None = None

    def read(self) -> dict[str, Any]:
        status = self._status()
        return {
            "now": format_time(now_us()),
            "minutes": self._minutes(),
            "minutes_from": (
                f"every node's events by their own time, from {self._engine.display}"
                if self._engine is not None
                else "received by this node"
            ),
            "refusals": dict(sorted(self._refusals().items())),
            "forwarding": status.get("forwarding", []),
            "warnings": status.get("warnings", []),
            **self._key_list(),
        }

    def close(self) -> None:
        self._keys.close()
        if self._engine is not None:
            self._engine.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _minutes(self) -> list[dict[str, Any]]:
        since = (now_us() // 60_000_000 - WINDOW_MINUTES + 1) * 60_000_000
        if self._engine is not None:
            counted = self._engine.per_minute(since)
        else:
            if self._conn is None:
                self._conn = connect(self._database)
            counted = batches.per_minute(self._conn, since)
        return [
            {"minute": format_time(minute), "project": project, "source": source, "events": n}
            for minute, project, source, n in counted
        ]

    def _key_list(self) -> dict[str, Any]:
        try:
            listed = self._keys.list_keys()
        except KeyStoreUnavailable as exc:
            return {"keys": [], "keys_error": str(exc)}
        used = self._last_used()
        return {
            "keys": [
                {
                    "id": key.id,
                    "project": key.project,
                    "hint": key.hint,
                    "state": "active" if key.revoked_at is None else "revoked",
                    "created_at": format_time(key.created_at),
                    "last_used": _when(used.get(key.id)),
                }
                for key in listed
            ]
        }


def _when(unix_s: float | None) -> str | None:
    return None if unix_s is None else format_time(round(unix_s * 1_000_000))
