"""Projects and their keys in the store: create, list, revoke, load, seed.

Every change bumps ``meta.keys_version`` in the same transaction, which is how running
servers notice it (``auth.KeyCache``) without reloading all keys on every request.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from dataclasses import dataclass

from .auth import ActiveKey, generate_key, hash_key
from .store import meta


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


def create_key(conn: sqlite3.Connection, project: str) -> NewKey:
    """Create ``project`` if needed and a new key for it."""
    key = generate_key()
    key_id = "key_" + secrets.token_hex(6)
    _store_key(conn, project, key_id, key)
    return NewKey(key_id, project, key)


def seed_key(conn: sqlite3.Connection, project: str, key: str) -> bool:
    """Register an operator-chosen key (headless deployments); False if it already exists."""
    digest = hash_key(key)
    if conn.execute("SELECT 1 FROM api_keys WHERE key_hash = ?", (digest,)).fetchone():
        return False
    _store_key(conn, project, "key_" + digest[:12], key)
    return True


def list_keys(conn: sqlite3.Connection) -> list[KeyInfo]:
    rows = conn.execute(
        "SELECT id, project, hint, created_at, revoked_at FROM api_keys ORDER BY created_at, id"
    )
    return [KeyInfo(*row) for row in rows]


def revoke_key(conn: sqlite3.Connection, key_id: str) -> bool:
    """Revoke a key by its public id; False if there is no such active key."""
    with _change(conn):
        cursor = conn.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (_now(), key_id),
        )
    return cursor.rowcount == 1


def load_active_keys(
    conn: sqlite3.Connection, known_version: int | None
) -> tuple[int, list[ActiveKey] | None]:
    """The keys version, and the active keys if that version differs from ``known_version``."""
    version = meta(conn, "keys_version")
    if version == known_version:
        return version, None
    rows = conn.execute("SELECT key_hash, id, project FROM api_keys WHERE revoked_at IS NULL")
    return version, [ActiveKey(*row) for row in rows]


def _store_key(conn: sqlite3.Connection, project: str, key_id: str, key: str) -> None:
    now = _now()
    with _change(conn):
        conn.execute("INSERT OR IGNORE INTO projects VALUES (?, ?)", (project, now))
        conn.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
            (key_id, project, hash_key(key), "…" + key[-4:], now),
        )


class _change:
    """A write transaction that also bumps the keys version, so caches reload."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self._conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def _now() -> int:
    return time.time_ns() // 1000
