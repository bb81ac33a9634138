"""The validation-only floor: the real HTTP stack with storage switched off.

Same ``build_app``, same ``uvicorn_config`` (uvloop + httptools), same JSON logging (the
access log included), same ``KeyCache`` over a real key in a real store; only the sink
differs: ``append`` returns at once. What this
serves per second is the ceiling for the durable server on the same machine, so
durable/floor isolates what durability costs. Bench-only: the product has no way to
turn storage off, on purpose.

Usage: ``python bench/floor.py --port N --data-dir D``. If the store has no active key,
one is created and printed as ``{"key": ...}`` on stdout.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from trubrics_ingestion.config import Settings
from trubrics_ingestion.keys import local as keys
from trubrics_ingestion.keys.cache import KeyCache
from trubrics_ingestion.node import logs
from trubrics_ingestion.node.server import build_app, uvicorn_config
from trubrics_ingestion.schema import Item
from trubrics_ingestion.store import sqlite as store


class NullJournal:
    """Accepts every batch and keeps nothing: the floor measures HTTP + auth + validation."""

    async def append(
        self,
        project: str,
        source: str,
        body: bytes,
        received_at: int,
        idempotency_key: str | None = None,
        *,
        items: Sequence[Item],
    ) -> bool:
        """Return at once, without even yielding to the loop: nothing to wait for."""
        return True

    def ready(self) -> bool:
        """Always ready, so ``/readyz`` answers like a healthy node."""
        return True


def ensure_key(key_store: keys.StoreKeys, project: str = "bench") -> None:
    """Create a key only if none is active, so callers may bring their own."""
    if any(key.revoked_at is None for key in key_store.list_keys()):
        return
    new = key_store.create_key(project)
    print(json.dumps({"project": new.project, "key": new.key, "id": new.id}), flush=True)


def serve(settings: Settings) -> None:
    """Serve the floor until SIGTERM/SIGINT, with the product's own uvicorn settings."""
    logs.configure(settings.log_level)  # as ``server.serve`` does: records cost the same
    conn = store.connect(settings.database_path)
    key_store = keys.StoreKeys(conn)
    ensure_key(key_store)
    cache = KeyCache(key_store.load_active_keys, refresh_interval_s=settings.key_refresh_interval_s)
    app = build_app(settings, keys=cache, journal=NullJournal())
    try:
        uvicorn.Server(uvicorn_config(app, settings)).run()
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    serve(
        Settings(host=args.host, port=args.port, data_dir=args.data_dir, log_level=args.log_level)
    )


if __name__ == "__main__":
    main()
