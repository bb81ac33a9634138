"""Keys in the node's own SQLite store, and the registry's keys as this node last saw them.

A node keeps its keys in its own store (``StoreKeys``) unless many nodes share keys in a
PostgreSQL registry (``registry.Registry``, with the same methods). Every change bumps a
keys version in the same transaction, which is how running servers notice it
(``cache.KeyCache``) without reloading all keys on every request.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ..clock import now_us
from ..store.sqlite import connect, meta, transaction
from .model import ActiveKey, KeyInfo, NewKey, chosen_key, new_key


class StoreKeys:
    """Keys in the node's SQLite store (one node, or nodes that each have their own keys)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def create_key(self, project: str) -> NewKey:
        new = new_key(project)
        self._store(new)
        return new

    def seed_key(self, project: str, key: str) -> bool:
        new = chosen_key(project, key)
        if self._conn.execute("SELECT 1 FROM api_keys WHERE key_hash = ?", (new.hash,)).fetchone():
            return False
        self._store(new)
        return True

    def list_keys(self) -> list[KeyInfo]:
        rows = self._conn.execute(
            "SELECT id, project, hint, created_at, revoked_at FROM api_keys ORDER BY created_at, id"
        )
        return [KeyInfo(*row) for row in rows]

    def revoke_key(self, key_id: str) -> bool:
        with _change(self._conn):
            cursor = self._conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now_us(), key_id),
            )
        return cursor.rowcount == 1

    def load_active_keys(self, known_version: int | None) -> tuple[int, list[ActiveKey] | None]:
        version = meta(self._conn, "keys_version")
        if version == known_version:
            return version, None
        rows = self._conn.execute(
            "SELECT key_hash, id, project FROM api_keys WHERE revoked_at IS NULL"
        )
        return version, [ActiveKey(*row) for row in rows]

    def close(self) -> None:
        self._conn.close()

    def _store(self, new: NewKey) -> None:
        now = now_us()
        with _change(self._conn):
            self._conn.execute("INSERT OR IGNORE INTO projects VALUES (?, ?)", (new.project, now))
            self._conn.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
                (new.id, new.project, new.hash, new.hint, now),
            )


class RegistrySnapshot:
    """The shared registry's active keys as last seen, kept in the node's store (hashes
    only, like everything else there): a node restarted while the registry is unreachable
    still serves the keys it knew. Used from one thread at a time."""

    def __init__(self, database: Path) -> None:
        self._database = database
        self._conn: sqlite3.Connection | None = None

    def load(self) -> list[ActiveKey]:
        rows = self._connection().execute("SELECT key_hash, id, project FROM registry_keys")
        return [ActiveKey(*row) for row in rows]

    def save(self, keys: list[ActiveKey]) -> None:
        """Replace the snapshot with ``keys``, in one transaction."""
        conn = self._connection()
        with transaction(conn):
            conn.execute("DELETE FROM registry_keys")
            conn.executemany(
                "INSERT INTO registry_keys VALUES (?, ?, ?)",
                [(key.key_hash, key.key_id, key.project) for key in keys],
            )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self._database)
        return self._conn


@contextlib.contextmanager
def _change(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that also bumps the keys version, so caches reload."""
    with transaction(conn):
        yield
        conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")
