"""Keys: which project a request's ``x-api-key`` writes to, and where keys are managed.

``model`` says what a key is; ``local`` keeps keys in the node's own store and
``registry`` in a PostgreSQL shared by many nodes, both as a ``KeyStore``; ``cache`` maps
a request's key to its project from memory. The two factories below are the only place
that chooses between one node's keys and the shared ones.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from .cache import KeyCache, PolledKeyCache
from .local import RegistrySnapshot, StoreKeys
from .model import KeyInfo, KeyStore, KeyStoreUnavailable, NewKey

__all__ = [
    "KeyCache",
    "KeyInfo",
    "KeyStore",
    "KeyStoreUnavailable",
    "NewKey",
    "PolledKeyCache",
    "open_key_cache",
    "open_key_store",
]


def open_key_store(registry: str | None, local: Callable[[], sqlite3.Connection]) -> KeyStore:
    """The shared registry at URL ``registry`` if given, else the node's store (``local``
    opens it: only when needed)."""
    if registry:
        from .registry import Registry, parse_registry_url  # psycopg only when used

        return Registry(parse_registry_url(registry))
    return StoreKeys(local())


def open_key_cache(
    key_store: KeyStore, *, shared: bool, database: Path, refresh_interval_s: float
) -> KeyCache | PolledKeyCache:
    """The cache for ``key_store``. A ``shared`` registry is polled by a thread (requests
    never wait on the network), its keys saved in the node's store at ``database`` for a
    restart during an outage; the local store is cheap enough to check on the request path."""
    if not shared:
        return KeyCache(key_store.load_active_keys, refresh_interval_s=refresh_interval_s)
    cache = PolledKeyCache(
        key_store.load_active_keys,
        refresh_interval_s=refresh_interval_s,
        snapshot=RegistrySnapshot(database),
    )
    cache.start()
    return cache
