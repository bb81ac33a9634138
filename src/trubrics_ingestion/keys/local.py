"""Projects and their keys: what a key store offers, and the node's own SQLite one.

A node keeps its keys in its own store (``StoreKeys``), or, when many nodes share keys,
in a PostgreSQL registry (``registry.Registry``) with the same methods. Every change bumps
a keys version in the same transaction, which is how running servers notice it
(``auth.KeyCache``) without reloading all keys on every request.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..store.sqlite import connect, meta, transaction
from .cache import ActiveKey, generate_key, hash_key


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed to operators: never the secret, only its last four characters."""

    id: str
    project: str
    hint: str
    created_at: int
    revoked_at: int | None


@dataclass(frozen=True)
class NewKey:
    """A key just created: the only moment its secret exists outside the client."""

    id: str
    project: str
    key: str

    @property
    def hint(self) -> str:
        return "…" + self.key[-4:]

    @property
    def hash(self) -> str:
        return hash_key(self.key)


def new_key(project: str) -> NewKey:
    """A fresh random key for ``project`` with a random public id."""
    return chosen_key(project, generate_key())


def chosen_key(project: str, key: str) -> NewKey:
    """``key`` for ``project`` (an operator's ``TRUBRICS_INIT_API_KEY``, or a fresh one)
    with a random public id. Never one derived from the key: ids are listed to operators,
    and a hash prefix would let anyone holding a list test guesses at the key offline.
    Seeding the same key again, from any node, still adds nothing: stores refuse a second
    row with the same key hash (the id that stays is the first one's)."""
    return NewKey("key_" + secrets.token_hex(6), project, key)


class KeyStoreUnavailable(Exception):
    """A remote key store could not be used (unreachable, refused, schema too new); the
    message names it, without secrets."""


class KeyStore(Protocol):
    """Where a node's keys live: its own store, or a registry shared by many nodes."""

    def create_key(self, project: str) -> NewKey:
        """Create ``project`` if needed and a new key for it."""
        ...

    def seed_key(self, project: str, key: str) -> bool:
        """Register an operator-chosen key; False if it already exists."""
        ...

    def list_keys(self) -> list[KeyInfo]: ...

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key by its public id; False if there is no such active key."""
        ...

    def load_active_keys(self, known_version: int | None) -> tuple[int, list[ActiveKey] | None]:
        """The keys version, and the active keys if it differs from ``known_version``."""
        ...

    def close(self) -> None: ...


def open_key_store(registry: str | None, local: Callable[[], sqlite3.Connection]) -> KeyStore:
    """The shared registry at URL ``registry`` if given, else the node's store (``local``
    opens it: only when needed)."""
    if registry:
        from .registry import Registry, parse_registry_url  # psycopg only when used

        return Registry(parse_registry_url(registry))
    return StoreKeys(local())


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


def now_us() -> int:
    return time.time_ns() // 1000
