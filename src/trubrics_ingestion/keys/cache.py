"""The in-memory map from a request's key to its project, kept fresh from a key store.

Only the SHA-256 of a key is ever stored. Looking a request's key up means hashing it and
finding that hash among the active ones, then confirming with ``hmac.compare_digest``:
the time taken depends on the hash, never on how many characters of a secret matched.
A header value found once is then found by a dict lookup (``KeyTable``), without hashing.
``KeyCache`` reads the node's own store on the request path (a local, indexed read);
``PolledKeyCache`` polls a shared registry from a thread, so requests never wait on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Protocol

from ..config import DEFAULTS
from ..errors import RegistryUnavailable, Unauthorized
from .model import ActiveKey, hash_key, key_problem

log = logging.getLogger("trubrics_ingestion.auth")


class KeySnapshot(Protocol):
    """Where a polled cache keeps the keys it last loaded, across restarts."""

    def load(self) -> list[ActiveKey]: ...

    def save(self, keys: list[ActiveKey]) -> None: ...

    def close(self) -> None: ...


# A loader returns the current keys version and, when it changed, the active keys.
KeyLoader = Callable[[int | None], tuple[int, list[ActiveKey] | None]]
UNKNOWN_KEY_WAIT_S = 2.0  # how long an unknown key waits for a fresh look at the registry
SLOW_LOOK_S = 5.0  # a look running longer than this (beyond the interval): unreachable
MIN_POLL_GAP_S = 0.05  # unknown keys wake the poller, but no more often than this
COMPLAIN_EVERY_S = 30.0  # while the registry is unreachable, say so this often


class KeyCache:
    """Maps keys to projects from memory, reloading when the store's keys version moves.

    The version is re-read at most every ``refresh_interval_s`` for known keys (so a
    revocation bites within that interval) and on every unknown key (so a key created a
    moment ago works at once; the check is one indexed single-row read of a local file).
    """

    def __init__(
        self, loader: KeyLoader, *, refresh_interval_s: float = DEFAULTS.key_refresh_interval_s
    ) -> None:
        self._loader = loader
        self._interval = refresh_interval_s
        self._version: int | None = None
        self.last_used: dict[str, float] = {}  # key id -> Unix time, on this node
        self._table = KeyTable((), self.last_used)
        self._checked_at = 0.0

    async def project_for(self, raw: str | None) -> str:
        """The project a key writes to, or ``Unauthorized`` with the reason."""
        if time.monotonic() - self._checked_at > self._interval:
            self.refresh()
        found = self._table.find(raw)
        if found is None:
            self.refresh()
            found = self._table.find(raw)
        return _project(found)

    def refresh(self) -> None:
        """Reload the keys if the store says they changed since the last load."""
        version, keys = self._loader(self._version)
        self._checked_at = time.monotonic()
        if keys is not None:
            self._table = KeyTable(keys, self.last_used)
            self._version = version

    def close(self) -> None:
        """Nothing to stop: loads happen on the request path."""


@dataclass(frozen=True)
class RegistryStatus:
    """What a node knows of its key registry, for ``/readyz`` and ``/metrics``."""

    reachable: bool
    keys: int  # active keys known
    last_loaded_s_ago: float | None  # since the last successful look; None: never


class PolledKeyCache:
    """Maps keys to projects from memory, kept fresh by a thread polling a shared registry.

    Known keys never wait on the network: the thread re-reads the registry's version every
    ``refresh_interval_s`` and reloads the keys when it moved, so a revocation made on any
    node bites everywhere within that interval plus a round trip. An unknown key wakes the
    thread and waits (at most ``UNKNOWN_KEY_WAIT_S``) for a look that started after it
    arrived, so a key created a moment ago elsewhere works at once.

    If the registry is unreachable, known keys keep working, an unknown one gets a 503
    (it may be valid: only the registry can tell), and an error is logged at once and
    every ``COMPLAIN_EVERY_S`` until it is back. With a ``snapshot``, the keys last loaded
    are saved, and known from the start: a restart during an outage forgets nothing.
    """

    def __init__(
        self,
        loader: KeyLoader,
        *,
        refresh_interval_s: float,
        snapshot: KeySnapshot | None = None,
        name: str = "key registry",
    ) -> None:
        self._loader = loader
        self._snapshot = snapshot
        self._interval = refresh_interval_s
        self._name = name
        self._version: int | None = None
        self.last_used: dict[str, float] = {}  # key id -> Unix time, on this node
        self._table = KeyTable((), self.last_used)
        self._reachable = False
        self._looking_since: float | None = None  # a look is under way since then
        self._loaded_at: float | None = None
        self._failing_since: float | None = None
        self._complained_at = 0.0
        self._next_look: Future[None] = Future()  # done when a look started later ends
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="key registry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(InvalidStateError):
            self._next_look.set_result(None)  # nobody waits for a look that will not come
        if self._snapshot is not None and not self._thread.is_alive():
            self._snapshot.close()

    async def project_for(self, raw: str | None) -> str:
        """The project a key writes to; ``Unauthorized``, or ``RegistryUnavailable`` for a
        key that only an unreachable registry could confirm."""
        found = self._table.find(raw)
        if found is None:
            look = self._next_look
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(look)), UNKNOWN_KEY_WAIT_S
                )
            found = self._table.find(raw)
            # No fresh answer (a look that hangs) is no answer: only the registry can tell.
            if found is None and not (look.done() and self.reachable()):
                raise RegistryUnavailable()
        return _project(found)

    def reachable(self) -> bool:
        """The last look succeeded, and the current one (if any) is not hanging."""
        started = self._looking_since
        hanging = started is not None and time.monotonic() - started > SLOW_LOOK_S
        return self._reachable and not hanging

    def status(self) -> RegistryStatus:
        loaded = self._loaded_at
        ago = None if loaded is None else time.monotonic() - loaded
        return RegistryStatus(self.reachable(), len(self._table), ago)

    def _poll(self) -> None:
        self._restore()
        while not self._stop.is_set():
            self._wake.clear()  # a wake during the look below makes the next one immediate
            done, self._next_look = self._next_look, Future()
            self._looking_since = time.monotonic()
            loaded = self._look()
            self._looking_since = None
            with contextlib.suppress(InvalidStateError):
                done.set_result(None)
            if loaded is not None:
                self._save(loaded)  # after answering the waiters: the store may be slow
            self._stop.wait(MIN_POLL_GAP_S)
            self._wake.wait(self._interval)

    def _restore(self) -> None:
        """Start from the keys saved by the last run, if any (never fatal: the registry
        itself is the truth, this only bridges an outage)."""
        if self._snapshot is None:
            return
        try:
            self._table = KeyTable(self._snapshot.load(), self.last_used)
        except Exception as exc:
            log.warning("could not read the registry's keys saved in the store: %s", exc)

    def _look(self) -> list[ActiveKey] | None:
        """Ask the registry; the keys when they changed (to be saved), else None."""
        try:
            version, keys = self._loader(self._version)
        except Exception as exc:  # unreachable, timed out, refused: keep the keys we know
            self._failed(exc)
            return None
        if keys is not None:
            self._table = KeyTable(keys, self.last_used)
            self._version = version
        self._loaded_at = time.monotonic()
        self._reachable = True
        if self._failing_since is not None:
            down_s = time.monotonic() - self._failing_since
            log.warning("%s reachable again after %.0f s", self._name, down_s)
            self._failing_since = None
        return keys

    def _save(self, keys: list[ActiveKey]) -> None:
        if self._snapshot is None:
            return
        try:
            self._snapshot.save(keys)
        except Exception as exc:  # the keys in memory are right; only a restart would miss them
            log.warning("could not save the registry's keys in the store: %s", exc)

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self._reachable = False
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._complained_at < COMPLAIN_EVERY_S:
            return
        self._complained_at = now
        log.error(
            "%s unreachable for %.0f s: serving the %d keys known, refusing unknown ones"
            " with 503; revocations wait for it: %s: %s",
            self._name,
            now - self._failing_since,
            len(self._table),
            type(exc).__name__,
            str(exc).strip().splitlines()[0] if str(exc).strip() else "",
        )


class KeyTable:
    """The active keys by hash, and the header values already found to be one of them.

    Hashing is most of a lookup, and a client sends the same key with every request: a
    value found once is found again by a dict lookup, which compares strings only when
    their hashes (Python's, keyed at random per process) match, so its time tells nothing
    of a secret. Only values written exactly as a key (no spaces around) are remembered:
    at most one per active key. A table is replaced, never changed, when the keys are
    reloaded (the caches swap it in one assignment, also from the polling thread): a value
    remembered from the old keys cannot outlive a revocation. When each key was last found
    goes to ``uses`` (the console's "last used"), which the caches keep across tables."""

    def __init__(self, keys: Iterable[ActiveKey], uses: dict[str, float] | None = None) -> None:
        self._by_hash = {key.key_hash: key for key in keys}
        self._by_value: dict[str, ActiveKey] = {}
        self._uses = {} if uses is None else uses

    def __len__(self) -> int:
        return len(self._by_hash)

    def find(self, raw: str | None) -> ActiveKey | None:
        """The active key ``raw`` is; None if none; ``Unauthorized`` if it is no key at all."""
        if raw is not None:
            known = self._by_value.get(raw)
            if known is not None:
                self._uses[known.key_id] = time.time()
                return known
        problem = key_problem(raw)
        if problem or raw is None:
            raise Unauthorized(problem)
        key = raw.strip()
        digest = hash_key(key)
        found = self._by_hash.get(digest)
        if found is None or not hmac.compare_digest(found.key_hash, digest):
            return None
        if key == raw:
            self._by_value[raw] = found
        self._uses[found.key_id] = time.time()
        return found


def _project(found: ActiveKey | None) -> str:
    if found is None:
        raise Unauthorized("Invalid or revoked x-api-key.")
    return found.project
