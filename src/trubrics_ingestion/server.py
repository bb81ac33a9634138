"""Running one ingestion node: open the store, start the journal, serve HTTP, shut down cleanly.

uvicorn (uvloop + httptools) serves the app. On SIGTERM or Ctrl-C it stops accepting,
lets in-flight requests finish (their batches still commit), and only then is the
journal closed, committing anything still queued.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import sys
from functools import partial
from importlib.metadata import version

import uvicorn
from starlette.types import ASGIApp

from . import keys, store
from .app import build_app
from .auth import KeyCache, key_problem
from .config import Settings
from .journal import Journal
from .materialise import Materialiser
from .protocol import ConnectionLimits, LimitedHttpToolsProtocol

log = logging.getLogger("trubrics_ingestion")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def serve(settings: Settings) -> None:
    """Serve until stopped."""
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    conn = store.connect(settings.database_path)
    _seed_key(conn, settings)
    journal = Journal(settings.database_path, dedup_window_s=settings.dedup_window_s)
    journal.start()
    materialiser = Materialiser(settings.data_dir)
    materialiser.start()
    cache = KeyCache(
        partial(keys.load_active_keys, conn), refresh_interval_s=settings.key_refresh_interval_s
    )
    app = build_app(settings, keys=cache, sink=journal)
    log.info(
        "trubrics-ingestion %s: data in %s, max body %d bytes, listening on http://%s:%d",
        version("trubrics-ingestion"),
        settings.data_dir.resolve(),
        settings.max_body_bytes,
        settings.host,
        settings.port,
    )
    _hint_if_keyless(conn, settings)
    config = uvicorn_config(app, settings)
    _exit_zero_on_stop_signals()
    try:
        uvicorn.Server(config).run()
    finally:
        journal.close()
        materialiser.stop()
        conn.close()


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """The HTTP server settings, shared with the benchmark's validation-only floor."""
    limits = ConnectionLimits(
        max_head_bytes=settings.max_head_bytes,
        max_headers=settings.max_headers,
        request_timeout_s=settings.request_timeout_s,
        max_connections=settings.max_connections,
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=LimitedHttpToolsProtocol.with_limits(limits),
        lifespan="off",
        access_log=False,
        server_header=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=round(settings.shutdown_timeout_s),
    )


def _exit_zero_on_stop_signals() -> None:
    """Make SIGTERM/SIGINT a clean exit (status 0) once the journal is closed.

    uvicorn handles both during serving and re-raises the signal after its graceful
    shutdown; this handler turns that into ``SystemExit(0)``, so the ``finally`` that
    closes the journal still runs and supervisors see a clean stop.
    """

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def _seed_key(conn: sqlite3.Connection, settings: Settings) -> None:
    """Register ``TRUBRICS_INIT_API_KEY`` for ``TRUBRICS_INIT_PROJECT`` (headless deployments)."""
    if not (settings.init_project and settings.init_api_key):
        return
    problem = key_problem(settings.init_api_key)
    if problem:
        raise SystemExit(f"TRUBRICS_INIT_API_KEY is not usable as a key: {problem}")
    if keys.seed_key(conn, settings.init_project, settings.init_api_key.strip()):
        log.info("seeded a key for project %r from TRUBRICS_INIT_API_KEY", settings.init_project)


def _hint_if_keyless(conn: sqlite3.Connection, settings: Settings) -> None:
    if not any(key.revoked_at is None for key in keys.list_keys(conn)):
        log.warning(
            "No API keys yet. Create one with:\n    %s keys create --project default --data-dir %s",
            _this_command(),
            settings.data_dir,
        )


def _this_command() -> str:
    """How the operator ran us (``.venv/bin/trubrics-ingestion`` under ``make serve``)."""
    argv0 = sys.argv[0]
    return argv0 if argv0.endswith("trubrics-ingestion") else "trubrics-ingestion"
