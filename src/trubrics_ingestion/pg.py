"""PostgreSQL connections and versioned schemas, shared by the events sink and the key registry.

Both keep their tables in a database the operator already runs, possibly the same one,
possibly from many nodes starting at once. Each is a *component* with a list of
migrations; ``trubrics_schema`` records how many of each are applied, and applying them
happens in one transaction under an advisory lock, so that nodes starting together
neither race on ``CREATE TABLE`` nor apply a migration twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from .forward.urls import SinkUrl

CONNECT_TIMEOUT_S = 10
_LOCK_KEY = 0x7472_7562_7269_6373 % (1 << 63)  # "trubrics": serialises concurrent migrations


def connect(
    url: SinkUrl, *, application: str, statement_timeout_ms: int
) -> psycopg.Connection[Any]:
    """An autocommit connection with timeouts everywhere: connecting, each statement, and
    TCP keepalives, so that a vanished server is noticed instead of waited on forever."""
    return psycopg.connect(
        host=url.host,
        port=url.port,
        dbname=url.database,
        user=url.user,
        password=url.password,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name=application,
        options=f"-c statement_timeout={statement_timeout_ms}",
        keepalives=1,
        keepalives_idle=30,
        keepalives_interval=10,
        keepalives_count=3,
    )


def migrate(conn: psycopg.Connection[Any], component: str, migrations: Sequence[str]) -> None:
    """Apply ``component``'s missing migrations; refuse a schema newer than this release."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS trubrics_schema"
            " (component text PRIMARY KEY, version integer NOT NULL)"
        )
        row = conn.execute(
            "SELECT version FROM trubrics_schema WHERE component = %s", (component,)
        ).fetchone()
        version = 0 if row is None else int(row[0])
        if version > len(migrations):
            raise RuntimeError(
                f"the {component} schema is at v{version}, newer than this release's"
                f" v{len(migrations)}; refusing to use it"
            )
        for script in migrations[version:]:
            conn.execute(script)
        conn.execute(
            "INSERT INTO trubrics_schema VALUES (%s, %s)"
            " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            (component, len(migrations)),
        )
