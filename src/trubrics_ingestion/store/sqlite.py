"""The SQLite file: how it is opened, and its versioned schema.

One file under the data dir holds projects, keys, and the acknowledged batches, which are
the node's store of events (``batches.py``). WAL mode lets readers (the CLI, the key cache)
run while the server writes; ``synchronous=FULL`` makes every commit durable before the
server acknowledges a batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .ids import new_node_id
from .upgrade import upgrade_to_batches

log = logging.getLogger("trubrics_ingestion.store")

# Each entry upgrades the schema by one version: SQL, and maybe then a function for what
# SQL alone cannot do; PRAGMA user_version counts them.
Migration = str | tuple[str, Callable[[sqlite3.Connection], None]]
MIGRATIONS: tuple[Migration, ...] = (
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
    CREATE TABLE projects (name TEXT PRIMARY KEY, created_at INTEGER NOT NULL);
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL REFERENCES projects(name),
        key_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    -- Acknowledged batches, one row each, as the validated request body. AUTOINCREMENT:
    -- batch numbers are part of event ids and must never be reused after a prune.
    CREATE TABLE journal (
        batch INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL,
        source TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        project TEXT NOT NULL,
        user_id TEXT NOT NULL,
        event TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        thread_id TEXT,
        properties TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        source TEXT NOT NULL
    );
    CREATE INDEX events_by_thread ON events (project, thread_id) WHERE thread_id IS NOT NULL;
    CREATE INDEX events_by_time ON events (project, timestamp);
    INSERT INTO meta VALUES ('keys_version', 0);
    """,
    """
    -- Digests of recently journaled batches, to recognise retries (dedup.py), appended in
    -- the batch's own transaction and pruned from the front once expired.
    CREATE TABLE dedup (
        seq INTEGER PRIMARY KEY,
        digest BLOB NOT NULL,
        body_digest BLOB NOT NULL,
        expires_at REAL NOT NULL
    );
    """,
    """
    -- Journal batches that could not be turned into events, kept with the error for an
    -- operator, so that one bad batch never blocks the ones after it.
    CREATE TABLE quarantine (
        batch INTEGER PRIMARY KEY,
        project TEXT NOT NULL,
        source TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        body BLOB NOT NULL,
        error TEXT NOT NULL,
        quarantined_at INTEGER NOT NULL
    );
    """,
    """
    -- The shared key registry's active keys as this node last saw them (registry.py), so
    -- that a node restarted while the registry is unreachable still serves them.
    CREATE TABLE registry_keys (
        key_hash TEXT PRIMARY KEY,
        id TEXT NOT NULL,
        project TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    """
    -- No secondary indexes on events: every row paid for two more B-trees (materialising
    -- took ~33 µs per event with them, ~15 without, measured) so that the store, a durable
    -- buffer and an export source, could answer queries by thread or time that belong to
    -- an analytics engine. Exports read in seq order, filtering as they go.
    DROP INDEX IF EXISTS events_by_thread;
    DROP INDEX IF EXISTS events_by_time;
    """,
    (
        """
    -- The journal becomes the store (batches.py): a narrow row per batch, read to count and
    -- to pick a time range, and the body beside it, read only to expand the batch.
    -- AUTOINCREMENT: batch numbers are part of event ids and forward cursors.
    CREATE TABLE batches (
        batch INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL,
        source TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        events INTEGER NOT NULL,
        first_at INTEGER NOT NULL,
        last_at INTEGER NOT NULL
    );
    CREATE TABLE bodies (batch INTEGER PRIMARY KEY, body BLOB NOT NULL);
    CREATE INDEX batches_by_time ON batches (last_at);
    -- Retries are recognised by a fingerprint naming the stored batch (dedup.py), no
    -- longer by a digest of the body: the digests of v5 cannot be carried over.
    DROP TABLE dedup;
    CREATE TABLE dedup (
        seq INTEGER PRIMARY KEY,
        digest BLOB NOT NULL,
        batch INTEGER NOT NULL,
        expires_at REAL NOT NULL
    );
        """,
        upgrade_to_batches,  # then events and journal -> batches and bodies (upgrade.py)
    ),
    """
    -- Bodies are stored compressed from now on (codec.py), those stored before stay as
    -- they came. A quarantined batch keeps its body as it was stored.
    ALTER TABLE bodies ADD COLUMN codec TEXT NOT NULL DEFAULT 'identity';
    ALTER TABLE quarantine ADD COLUMN codec TEXT NOT NULL DEFAULT 'identity';
    -- The fingerprint that recognises a retry (dedup.py) is kept in its batch's row, not
    -- in a table of its own that cost a row per batch and a prune every second.
    ALTER TABLE batches ADD COLUMN digest BLOB;
    UPDATE batches SET digest = (SELECT digest FROM dedup WHERE dedup.batch = batches.batch)
        WHERE batch IN (SELECT batch FROM dedup);
    DROP TABLE dedup;
    """,
    """
    -- What the OTLP resolver holds until a trace's root span arrives (otlp/resolver.py):
    -- every span of a trace (its place, its user and thread, and for a GenAI call the call
    -- itself), and GenAI log records waiting for their span.
    CREATE TABLE otlp_spans (
        project TEXT NOT NULL,
        trace TEXT NOT NULL,
        span TEXT NOT NULL,
        parent TEXT,
        root INTEGER NOT NULL,
        user TEXT,
        thread TEXT,
        call BLOB,
        held_at INTEGER NOT NULL,
        PRIMARY KEY (project, trace, span)
    ) WITHOUT ROWID;
    CREATE INDEX otlp_spans_waiting ON otlp_spans (held_at) WHERE call IS NOT NULL;
    CREATE INDEX otlp_spans_by_time ON otlp_spans (held_at);
    CREATE TABLE otlp_logs (
        project TEXT NOT NULL,
        trace TEXT NOT NULL,
        span TEXT NOT NULL,
        batch INTEGER NOT NULL,
        item INTEGER NOT NULL,
        record BLOB NOT NULL,
        held_at INTEGER NOT NULL,
        PRIMARY KEY (project, trace, span, batch, item)
    ) WITHOUT ROWID;
    CREATE INDEX otlp_logs_by_time ON otlp_logs (held_at);
    """,
    """
    -- Console sign-in tokens (console/tokens.py): only their SHA-256 is kept, like keys'.
    -- Apart from api_keys, so that no token can ever publish and no key open the console.
    CREATE TABLE console_tokens (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
BUSY_TIMEOUT_S = 10.0  # how long a writer waits for another's lock before giving up


class SchemaTooNew(RuntimeError):
    """The file was written by a newer release; refusing to touch it is the safe answer."""


class NotPrivate(RuntimeError):
    """The data dir or the store's files are open to other users and cannot be made private
    here; the message says which and what to do."""


def connect(database: Path) -> sqlite3.Connection:
    """Open (creating if needed) the store, in autocommit mode, migrated to the current schema."""
    _create_private(database)
    conn = sqlite3.connect(
        database, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
    )
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    migrate(conn)
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, poll_s: float | None = None) -> Iterator[None]:
    """A write transaction, committed if the block ends normally (and the commit works),
    rolled back otherwise. ``BEGIN IMMEDIATE`` takes the write lock up front: a reader
    upgraded to a writer midway could fail with SQLITE_BUSY after doing the work.

    While another connection writes, SQLite's busy handler waits for the lock in ever
    longer sleeps (up to 100 ms a try): fine for background work, not for the journal,
    which acknowledges requests and would lose every race with the forwarder's writes. With
    ``poll_s`` the lock is asked for again every ``poll_s`` instead (for at most
    ``BUSY_TIMEOUT_S``); this needs a connection whose own busy timeout is 0."""
    if poll_s is None:
        conn.execute("BEGIN IMMEDIATE")
    else:
        _begin_polling(conn, poll_s)
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _begin_polling(conn: sqlite3.Connection, poll_s: float) -> None:
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # or an extended BUSY_*
            if not busy or time.monotonic() > deadline:
                raise
        time.sleep(poll_s)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the missing migrations in one transaction, so concurrent openers agree."""
    with transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"store schema v{version} is newer than this release's v{SCHEMA_VERSION}"
            )
        for step in MIGRATIONS[version:]:
            script, then = step if isinstance(step, tuple) else (step, None)
            for statement in script.split(";"):  # so: no semicolons inside the SQL comments
                if statement.strip():
                    conn.execute(statement)
            if then is not None:
                then(conn)
        if version == 0:
            conn.execute("INSERT INTO meta VALUES ('node_id', ?)", (new_node_id(),))
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def meta(conn: sqlite3.Connection, name: str) -> int:
    """An integer setting from the ``meta`` table (node id, keys version)."""
    return int(conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0])


def _create_private(database: Path) -> None:
    """Data dir ``0700`` and database ``0600``: events and key hashes are nobody else's business.

    A dir made by the operator beforehand (often ``0755``, like the root of a filesystem
    mounted for the store), or files restored from a backup, are tightened to that, with a
    warning. Not a dir that holds anything but the store (and a filesystem's
    ``lost+found``), though: ``--data-dir /var/lib`` would lock other services out; nor one
    of somebody else's: those stop the command with ``NotPrivate``.

    The file is only ever opened here when it does not exist yet (``chmod`` opens nothing).
    Closing any descriptor of an open SQLite file drops this process's POSIX locks on it,
    after which another process may believe itself the last user, checkpoint and delete the
    WAL under our feet.
    """
    directory = database.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = [database.with_name(database.name + suffix) for suffix in ("", "-wal", "-shm")]
    if _loose(directory):
        ours = {*files, directory / "lost+found"}
        strangers = sorted(p.name for p in directory.iterdir() if p not in ours)
        if strangers:
            raise NotPrivate(
                f"the data dir {directory} is open to other users (mode"
                f" {_mode(directory):04o}) and holds more than the store ({strangers[0]}...):"
                " give the store a directory of its own (it is created private), or run"
                f" chmod go= {directory}"
            )
        _tighten(directory)
    for path in files:
        if _loose(path):
            _tighten(path)
    if database.exists():
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _loose(path: Path) -> bool:
    """Readable, writable or searchable by group or others."""
    try:
        return bool(_mode(path) & 0o077)
    except FileNotFoundError:
        return False


def _tighten(path: Path) -> None:
    """Take the group's and others' permissions off ``path``, saying so."""
    mode = _mode(path)
    try:
        os.chmod(path, mode & 0o700)
    except PermissionError:
        raise NotPrivate(
            f"{path} is open to other users (mode {mode:04o}) and cannot be made private by"
            f" this user (uid {os.geteuid()}, owner uid {path.stat().st_uid}): have its owner"
            f" run chmod go= {path}, or choose another --data-dir"
        ) from None
    log.warning("made %s private: mode %04o, was %04o", path, mode & 0o700, mode)
