"""API keys: their format, their hash, and the in-memory cache that maps a key to a project.

Only the SHA-256 of a key is ever stored. Looking a request's key up means hashing it and
finding that hash among the active ones, then confirming with ``hmac.compare_digest``:
the time taken depends on the hash, never on how many characters of a secret matched.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import Unauthorized

KEY_PREFIX = "trb_"
MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 256


@dataclass(frozen=True)
class ActiveKey:
    """What the cache knows of a usable key: its hash, its public id and its project."""

    key_hash: str
    key_id: str
    project: str


def generate_key() -> str:
    """A new secret: a recognisable prefix and 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The only form in which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_problem(raw: str | None) -> str | None:
    """Why a header value cannot be a key, or None if it could be one. Pure, for testing."""
    if raw is None:
        return "Missing x-api-key header."
    key = raw.strip()
    if not key:
        return "Empty x-api-key header."
    if not MIN_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH:
        return "Invalid x-api-key."
    if not key.isascii() or not key.isprintable() or " " in key:
        return "Invalid x-api-key."
    return None


# A loader returns the current keys version and, when it changed, the active keys.
KeyLoader = Callable[[int | None], tuple[int, list[ActiveKey] | None]]


class KeyCache:
    """Maps keys to projects from memory, reloading when the store's keys version moves.

    The version is re-read at most every ``refresh_interval_s`` for known keys (so a
    revocation bites within that interval) and on every unknown key (so a key created a
    moment ago works at once; the check is one indexed single-row read).
    """

    def __init__(self, loader: KeyLoader, *, refresh_interval_s: float = 0.5) -> None:
        self._loader = loader
        self._interval = refresh_interval_s
        self._version: int | None = None
        self._keys: dict[str, ActiveKey] = {}
        self._checked_at = 0.0

    def project_for(self, raw: str | None) -> str:
        """The project a key writes to, or ``Unauthorized`` with the reason."""
        problem = key_problem(raw)
        if problem or raw is None:
            raise Unauthorized(problem)
        digest = hash_key(raw.strip())
        if time.monotonic() - self._checked_at > self._interval:
            self.refresh()
        found = self._keys.get(digest)
        if found is None:
            self.refresh()
            found = self._keys.get(digest)
        if found is None or not hmac.compare_digest(found.key_hash, digest):
            raise Unauthorized("Invalid or revoked x-api-key.")
        return found.project

    def refresh(self) -> None:
        """Reload the keys if the store says they changed since the last load."""
        version, keys = self._loader(self._version)
        self._checked_at = time.monotonic()
        if keys is not None:
            self._keys = {key.key_hash: key for key in keys}
            self._version = version
