"""What a key is: its format and strength, its only stored form (a SHA-256), and the
records and store interface every key store shares.

A leaf of ``keys``: the caches, the node's own store and the shared registry all build on
it, and nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import string
from dataclasses import dataclass
from typing import Protocol

KEY_PREFIX = "trb_"
MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 256
MIN_SECRET_BITS = 128  # out of reach of offline guessing, whatever the hash's speed
FEW_CHARACTERS = 8  # a random secret of 22 or more characters has more distinct ones
MAKE_A_KEY = """python -c 'import secrets; print("trb_" + secrets.token_urlsafe(32))'"""
_HEX = (frozenset(string.hexdigits.lower()), frozenset(string.hexdigits.upper()))
_CLASSES = tuple(
    (frozenset(chars), len(chars))
    for chars in (string.ascii_lowercase, string.ascii_uppercase, string.digits, string.punctuation)
)


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


def estimated_bits(secret: str) -> float:
    """The entropy ``secret`` would have if its characters had been drawn at random: the
    length of its shortest repeating part, times log2 of its alphabet (the classes it uses:
    lower case, upper case, digits, punctuation; 16 for hex; its distinct characters when
    fewer than ``FEW_CHARACTERS``). The key prefix counts for nothing.

    Random keys score what they carry; a made-up phrase scores far more than it is worth.
    So a secret below ``MIN_SECRET_BITS`` is surely guessable, one above it only maybe not:
    only a generated secret is safe (``MAKE_A_KEY``)."""
    body = secret.removeprefix(KEY_PREFIX)
    distinct = frozenset(body)
    if len(distinct) < FEW_CHARACTERS:
        alphabet = len(distinct)
    elif any(distinct <= hex_digits for hex_digits in _HEX):
        alphabet = 16
    else:
        alphabet = sum(size for chars, size in _CLASSES if distinct & chars)
    return _period(body) * math.log2(alphabet) if alphabet > 1 else 0.0


def _period(text: str) -> int:
    """The length of the shortest part that ``text`` repeats at least twice over
    (``abcabcab``: 3), else its length (a random text often ends as it starts: no repeat)."""
    halves = range(1, len(text) // 2 + 1)
    return next((p for p in halves if text[p:] == text[: len(text) - p]), len(text))


def weakness(secret: str) -> str | None:
    """Why ``secret`` is too guessable to be a key or a token, or None."""
    bits = estimated_bits(secret)
    if bits >= MIN_SECRET_BITS:
        return None
    return (
        f"it carries about {bits:.0f} bits of entropy at most, fewer than {MIN_SECRET_BITS},"
        f" and could be guessed. Generate one instead: {MAKE_A_KEY}"
    )


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed to operators: never the secret, only its last four characters."""

    id: str
    project: str
    hint: str
    created_at: int
    revoked_at: int | None


@dataclass(frozen=True)
class NewKey:
    """A key just created: the only moment its secret exists outside the client."""

    id: str
    project: str
    key: str

    @property
    def hint(self) -> str:
        return "…" + self.key[-4:]

    @property
    def hash(self) -> str:
        return hash_key(self.key)


def new_key(project: str) -> NewKey:
    """A fresh random key for ``project`` with a random public id."""
    return chosen_key(project, generate_key())


def chosen_key(project: str, key: str) -> NewKey:
    """``key`` for ``project`` (an operator's ``TRUBRICS_INIT_API_KEY``, or a fresh one)
    with a random public id. Never one derived from the key: ids are listed to operators,
    and a hash prefix would let anyone holding a list test guesses at the key offline.
    Seeding the same key again, from any node, still adds nothing: stores refuse a second
    row with the same key hash (the id that stays is the first one's)."""
    return NewKey("key_" + secrets.token_hex(6), project, key)


class KeyStoreUnavailable(Exception):
    """A remote key store could not be used (unreachable, refused, schema too new); the
    message names it, without secrets."""


class KeyStore(Protocol):
    """Where a node's keys live: its own store, or a registry shared by many nodes."""

    def create_key(self, project: str) -> NewKey:
        """Create ``project`` if needed and a new key for it."""
        ...

    def seed_key(self, project: str, key: str) -> bool:
        """Register an operator-chosen key; False if it already exists."""
        ...

    def list_keys(self) -> list[KeyInfo]: ...

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key by its public id; False if there is no such active key."""
        ...

    def load_active_keys(self, known_version: int | None) -> tuple[int, list[ActiveKey] | None]:
        """The keys version, and the active keys if it differs from ``known_version``."""
        ...

    def close(self) -> None: ...
