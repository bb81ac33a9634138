"""Projects and keys in PostgreSQL: one registry shared by every ingestion node.

``serve --registry URL`` makes a node take its keys from here instead of its own store,
and ``keys create|list|revoke --registry URL`` manage them. It offers what the node's
store offers (``keys.KeyStore``): every change bumps a version in its own transaction,
and nodes poll that one row (``cache.PolledKeyCache``), reloading the keys only when it
moved. Only hashes are stored, as in the node's store.

The tables are prefixed ``trubrics_`` because the registry often shares a database with
the events and with the operator's own tables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from .. import pg
from ..clock import now_us
from ..urls import SinkUrl, SinkUrlError, parse_sink_url
from .model import ActiveKey, KeyInfo, KeyStoreUnavailable, NewKey, chosen_key, new_key

STATEMENT_TIMEOUT_MS = 5_000  # a registry that slow is treated as unreachable
MIGRATIONS = (
    """
    CREATE TABLE trubrics_projects (
        name text PRIMARY KEY,
        created_at bigint NOT NULL
    );
    CREATE TABLE trubrics_api_keys (
        id text PRIMARY KEY,
        project text NOT NULL REFERENCES trubrics_projects (name),
        key_hash text NOT NULL UNIQUE,
        hint text NOT NULL,
        created_at bigint NOT NULL,
        revoked_at bigint
    );
    CREATE TABLE trubrics_keys_version (version bigint NOT NULL);
    INSERT INTO trubrics_keys_version VALUES (1);
    """,
)
T = TypeVar("T")


def parse_registry_url(text: str) -> SinkUrl:
    """A ``postgresql://USER@HOST:PORT/DB`` URL; raises ``SinkUrlError`` otherwise."""
    url = parse_sink_url(text)
    if url.kind != "postgresql":
        raise SinkUrlError(f"the key registry must be PostgreSQL, not {url.display}")
    return url


class Registry:
    """The shared key store. Connects (and migrates) lazily, and after any failure drops
    its connection so that the next call reconnects: callers only see exceptions."""

    def __init__(self, url: SinkUrl) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None

    def create_key(self, project: str) -> NewKey:
        new = new_key(project)
        self._use(lambda conn: self._store(conn, new))
        return new

    def seed_key(self, project: str, key: str) -> bool:
        new = chosen_key(project, key)
        return self._use(lambda conn: self._store(conn, new))

    def list_keys(self) -> list[KeyInfo]:
        rows = self._use(
            lambda conn: conn.execute(
                "SELECT id, project, hint, created_at, revoked_at FROM trubrics_api_keys"
                " ORDER BY created_at, id"
            ).fetchall()
        )
        return [KeyInfo(*row) for row in rows]

    def revoke_key(self, key_id: str) -> bool:
        def revoke(conn: psycopg.Connection[Any]) -> bool:
            with conn.transaction():
                revoked = conn.execute(
                    "UPDATE trubrics_api_keys SET revoked_at = %s"
                    " WHERE id = %s AND revoked_at IS NULL",
                    (now_us(), key_id),
                ).rowcount
                if revoked:
                    _bump(conn)
            return revoked == 1

        return self._use(revoke)

    def load_active_keys(self, known_version: int | None) -> tuple[int, list[ActiveKey] | None]:
        def load(conn: psycopg.Connection[Any]) -> tuple[int, list[ActiveKey] | None]:
            with conn.transaction():  # the version and the keys from one snapshot
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                row = conn.execute("SELECT version FROM trubrics_keys_version").fetchone()
                version = int(row[0]) if row else 0
                if version == known_version:
                    return version, None
                rows = conn.execute(
                    "SELECT key_hash, id, project FROM trubrics_api_keys WHERE revoked_at IS NULL"
                ).fetchall()
            return version, [ActiveKey(*row) for row in rows]

        return self._use(load)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _use(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        try:
            return work(self._connection())
        except (psycopg.Error, RuntimeError) as exc:
            self.close()  # the next call starts from a fresh connection
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise KeyStoreUnavailable(f"key registry {self.url.display}: {first_line}") from exc

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = pg.connect(
                self.url, application="trubrics-registry", statement_timeout_ms=STATEMENT_TIMEOUT_MS
            )
            try:
                pg.migrate(conn, "registry", MIGRATIONS)
            except Exception:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @staticmethod
    def _store(conn: psycopg.Connection[Any], new: NewKey) -> bool:
        """Insert ``new`` (and its project); False if a key with that hash exists."""
        now = now_us()
        with conn.transaction():
            conn.execute(
                "INSERT INTO trubrics_projects VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (new.project, now),
            )
            inserted = conn.execute(
                "INSERT INTO trubrics_api_keys VALUES (%s, %s, %s, %s, %s, NULL)"
                " ON CONFLICT (key_hash) DO NOTHING",
                (new.id, new.project, new.hash, new.hint, now),
            ).rowcount
            if inserted:
                _bump(conn)
        return inserted == 1


def _bump(conn: psycopg.Connection[Any]) -> None:
    """Part of every change's transaction: the version moves, so every node reloads (and
    only then: re-seeding a known key or revoking an unknown id changes nothing)."""
    conn.execute("UPDATE trubrics_keys_version SET version = version + 1")
