"""Console sign-in tokens: created, listed and revoked like keys, and like keys kept only as
their SHA-256 (``keys.model.hash_key``), in the node's store or in the shared registry.

A token opens the console and nothing else; a project key never opens it (keys are
write-only). Tokens live in a table of their own, beside the keys: in the node's SQLite
store (``console_tokens``, schema v9) or, when nodes share keys, in the registry's
PostgreSQL (``trubrics_console_tokens``, migrated as its own component), so a token made
once signs in on every node. Checking one reuses the keys' lookup (``KeyTable``: hash,
then a constant-time comparison).
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..clock import now_us
from ..errors import Unauthorized
from ..keys.cache import KeyTable
from ..keys.model import ActiveKey, KeyStoreUnavailable, hash_key

TOKEN_PREFIX = "trc_"
CONSOLE = "console"  # what a token "writes to", as the keys' lookup sees it
PG_MIGRATIONS = (
    """
    CREATE TABLE trubrics_console_tokens (
        id text PRIMARY KEY,
        token_hash text NOT NULL UNIQUE,
        hint text NOT NULL,
        created_at bigint NOT NULL,
        revoked_at bigint
    );
    """,
)


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never the secret, only its last four characters."""

    id: str
    hint: str
    created_at: int
    revoked_at: int | None


@dataclass(frozen=True)
class NewToken:
    """A token just created: the only moment its secret exists."""

    id: str
    token: str


class Connection(Protocol):
    """What both ``sqlite3`` and ``psycopg`` connections offer (both in autocommit)."""

    def execute(self, sql: Any, params: Any = ...) -> Any: ...

    def close(self) -> None: ...


class ConsoleTokens:
    """Tokens in one SQL table; ``connect`` opens the connection when first needed (and
    again after a failure), ``mark`` is the driver's placeholder (``?`` or ``%s``)."""

    def __init__(self, connect: Callable[[], Connection], *, table: str, mark: str) -> None:
        self._connect = connect
        self._conn: Connection | None = None
        self._table = table
        self._mark = mark

    def create(self) -> NewToken:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        new = NewToken("ctk_" + secrets.token_hex(6), token)
        self._run(
            "INSERT INTO {table} VALUES ({m}, {m}, {m}, {m}, NULL)",
            (new.id, hash_key(token), "…" + token[-4:], now_us()),
        )
        return new

    def list(self) -> list[TokenInfo]:
        rows = self._run(
            "SELECT id, hint, created_at, revoked_at FROM {table} ORDER BY created_at, id"
        ).fetchall()
        return [TokenInfo(*row) for row in rows]

    def revoke(self, token_id: str) -> bool:
        """Revoke by id; False if there is no such active token."""
        cursor = self._run(
            "UPDATE {table} SET revoked_at = {m} WHERE id = {m} AND revoked_at IS NULL",
            (now_us(), token_id),
        )
        return bool(cursor.rowcount == 1)

    def find(self, raw: str) -> str | None:
        """The id of the active token ``raw`` is, or None (also for what is no token)."""
        rows = self._run("SELECT token_hash, id FROM {table} WHERE revoked_at IS NULL")
        table = KeyTable(ActiveKey(digest, token_id, CONSOLE) for digest, token_id in rows)
        try:
            found = table.find(raw)
        except Unauthorized:  # not even shaped like a token
            return None
        return None if found is None else found.key_id

    def active(self, token_id: str) -> bool:
        """Whether the token is still active (a session ends with its token)."""
        row = self._run(
            "SELECT 1 FROM {table} WHERE id = {m} AND revoked_at IS NULL", (token_id,)
        ).fetchone()
        return row is not None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _run(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        """Execute; a failure drops the connection (the next call reconnects) and is a
        ``KeyStoreUnavailable`` naming it: tokens live where keys do."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            return self._conn.execute(sql.format(table=self._table, m=self._mark), params)
        except Exception as exc:
            self.close()
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise KeyStoreUnavailable(f"console tokens: {first_line}") from exc


def open_tokens(registry: str | None, local: Callable[[], sqlite3.Connection]) -> ConsoleTokens:
    """The tokens beside the keys: in the registry at URL ``registry`` if given, else in
    the node's store (``local`` opens it)."""
    if not registry:
        return ConsoleTokens(local, table="console_tokens", mark="?")
    return ConsoleTokens(lambda: _registry(registry), table="trubrics_console_tokens", mark="%s")


def _registry(url: str) -> Connection:
    from .. import pg  # psycopg only when used
    from ..keys.registry import STATEMENT_TIMEOUT_MS, parse_registry_url

    conn = pg.connect(
        parse_registry_url(url),
        application="trubrics-console",
        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
    )
    try:
        pg.migrate(conn, "console", PG_MIGRATIONS)
    except Exception:
        conn.close()
        raise
    return conn
