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

from .urls import SinkUrl

CONNECT_TIMEOUT_S = 10
TCP_USER_TIMEOUT_MS = 15_000  # unacknowledged data for this long: the server is gone
_LOCK_KEY = 0x7472_7562  # "trub", with the component's hash: one lock per component
LOCK_TIMEOUT_MS = 10_000


def connect(
    url: SinkUrl, *, application: str, statement_timeout_ms: int
) -> psycopg.Connection[Any]:
    """An autocommit connection with timeouts everywhere: connecting, each statement (on
    the server), and on our side TCP keepalives and a TCP user timeout, so that a server
    that stops answering without closing the connection is noticed instead of waited on
    forever (``statement_timeout`` alone relies on the server being alive).

    The URL's libpq parameters (``sslmode``, ``sslrootcert``, ``passfile``...) go to
    libpq as given and override these defaults; its ``options`` come before our
    statement timeout. Without a password in the URL none is passed, so libpq looks in
    ``PGPASSWORD``, ``passfile``/``PGPASSFILE`` or ``~/.pgpass``, as it does for psql."""
    given = dict(url.libpq)
    options = " ".join(
        filter(None, (given.pop("options", ""), f"-c statement_timeout={statement_timeout_ms}"))
    )
    parameters: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": application,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        **given,
    }
    return psycopg.connect(
        host=url.host,
        port=url.port,
        dbname=url.database,
        user=url.user,
        password=url.password,
        autocommit=True,
        options=options,
        **parameters,
    )


def migrate(conn: psycopg.Connection[Any], component: str, migrations: Sequence[str]) -> None:
    """Apply ``component``'s missing migrations; refuse a schema newer than this release.

    Nothing is locked or created when the schema is current (the common case: every
    reconnect asks). Otherwise one transaction under the component's own advisory lock,
    without a statement timeout (rebuilding an index on a large table takes what it takes)
    but with a lock timeout, so that a migration waiting behind long queries gives up and
    is retried rather than queueing every writer behind it."""
    if _version(conn, component, len(migrations)) == len(migrations):
        return
    with conn.transaction():
        conn.execute("SET LOCAL statement_timeout = 0")
        conn.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_KEY, component))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS trubrics_schema"
            " (component text PRIMARY KEY, version integer NOT NULL)"
        )
        version = _version(conn, component, len(migrations))
        for script in migrations[version:]:
            conn.execute(script)
        conn.execute(
            "INSERT INTO trubrics_schema VALUES (%s, %s)"
            " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            (component, len(migrations)),
        )


def _version(conn: psycopg.Connection[Any], component: str, ours: int) -> int:
    """The applied version (0: none, or no schema table yet); raises if newer than ours."""
    found = conn.execute("SELECT to_regclass('trubrics_schema') IS NOT NULL").fetchone()
    row = None
    if found and found[0]:
        row = conn.execute(
            "SELECT version FROM trubrics_schema WHERE component = %s", (component,)
        ).fetchone()
    version = 0 if row is None else int(row[0])
    if version > ours:
        raise RuntimeError(
            f"the {component} schema is at v{version}, newer than this release's"
            f" v{ours}; refusing to use it"
        )
    return version
