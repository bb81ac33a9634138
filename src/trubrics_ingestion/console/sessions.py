"""Console sessions: a token, checked once, becomes a cookie for a while.

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page
sends it) and scoped to ``/console``; the node keeps only its SHA-256, in memory: sessions
are this node's, and end when it restarts. Each session has its own CSRF token, which
every state-changing request must carry besides the cookie. A session ends after
``SESSION_TTL_S``, when signed out, or within ``RECHECK_S`` of its token's revocation.
Token lookups run on one thread of their own: the store (or the registry) is never read
on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from ..keys.model import KeyStoreUnavailable, hash_key
from .tokens import ConsoleTokens

COOKIE = "trubrics_console"
SESSION_TTL_S = 12 * 3600.0
RECHECK_S = 5.0  # a revoked token's sessions end within this (plus a page or stream)
MAX_SESSIONS = 1_000  # the oldest go first
T = TypeVar("T")


@dataclass
class Session:
    """One signed-in browser."""

    token_id: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    started_at: float = field(default_factory=time.monotonic)
    checked_at: float = field(default_factory=time.monotonic)

    def csrf_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf.encode())


class Sessions:
    """The signed-in browsers of this node, by the hash of their cookie."""

    def __init__(self, tokens: ConsoleTokens) -> None:
        self._tokens = tokens
        self._by_hash: dict[str, Session] = {}
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="console tokens")

    async def sign_in(self, token: str) -> str | None:
        """A new session's cookie value, if ``token`` is an active console token."""
        token_id = await self._off_loop(lambda: self._tokens.find(token.strip()))
        if token_id is None:
            return None
        cookie = secrets.token_urlsafe(32)
        if len(self._by_hash) >= MAX_SESSIONS:
            del self._by_hash[next(iter(self._by_hash))]
        self._by_hash[hash_key(cookie)] = Session(token_id)
        return cookie

    async def current(self, cookie: str | None) -> Session | None:
        """The session of this cookie, if it still holds."""
        if not cookie:
            return None
        digest = hash_key(cookie)
        session = self._by_hash.get(digest)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.started_at > SESSION_TTL_S:
            self._by_hash.pop(digest, None)
            return None
        if now - session.checked_at > RECHECK_S:
            token_id = session.token_id
            # Unknown (the registry is down) keeps the session; only a revocation ends it.
            if await self._off_loop(lambda: self._tokens.active(token_id)) is False:
                self._by_hash.pop(digest, None)
                return None
            session.checked_at = now
        return session

    def end(self, cookie: str) -> None:
        self._by_hash.pop(hash_key(cookie), None)

    def close(self) -> None:
        self._reads.shutdown(wait=True)
        self._tokens.close()

    async def _off_loop(self, read: Callable[[], T]) -> T | None:
        """``read()`` on the tokens' thread; None if the tokens cannot be read (the
        registry is down: nobody signs in until it is back)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._reads, read)
        except KeyStoreUnavailable:
            return None
