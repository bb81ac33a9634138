"""Engine URLs: what the operator configures, what logs show, and what a cursor is keyed by.

Two forms are accepted::

    postgresql://USER[:PASSWORD]@HOST[:PORT]/DB        (also postgres://)
    clickhouse://[USER[:PASSWORD]@]HOST[:HTTP_PORT]/DB[?cluster=NAME]

The password never leaves this module except towards the engine itself: ``display`` is
for logs and status, and the cursor ``id`` names only the destination (host, port,
database, cluster), so that rotating a password or a user keeps the cursor, while
pointing the URL at another server or database starts a new one (a full, idempotent
redelivery).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["postgresql", "clickhouse"]
_SCHEMES: dict[str, Kind] = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "clickhouse": "clickhouse",
}
_DEFAULT_PORTS: dict[Kind, int] = {"postgresql": 5432, "clickhouse": 8123}
# Database and cluster names end up inside SQL statements: plain identifiers only.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SinkUrlError(ValueError):
    """A configured engine URL that cannot be used (the message says why, without secrets)."""


@dataclass(frozen=True)
class SinkUrl:
    """A parsed engine URL."""

    kind: Kind
    host: str
    port: int
    database: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    cluster: str | None = None  # ClickHouse only: shard over this cluster

    @property
    def id(self) -> str:
        """The cursor key: the destination, without credentials."""
        cluster = f"?cluster={self.cluster}" if self.cluster else ""
        return f"{self.kind}://{_host(self.host)}:{self.port}/{self.database}{cluster}"

    @property
    def display(self) -> str:
        """For logs and status: the URL with the password masked."""
        user = ""
        if self.user is not None:
            user = urllib.parse.quote(self.user, safe="") + (":***" if self.password else "") + "@"
        cluster = f"?cluster={self.cluster}" if self.cluster else ""
        return f"{self.kind}://{user}{_host(self.host)}:{self.port}/{self.database}{cluster}"

    def __str__(self) -> str:
        return self.display


def parse_sink_url(text: str) -> SinkUrl:
    """Parse and check one engine URL; raises ``SinkUrlError`` naming the problem."""
    parts = urllib.parse.urlsplit(text.strip())
    kind = _SCHEMES.get(parts.scheme.lower())
    if kind is None:
        raise SinkUrlError(f"unsupported engine URL scheme {parts.scheme!r}: {_redact(text)}")
    if not parts.hostname:
        raise SinkUrlError(f"engine URL without a host: {_redact(text)}")
    try:
        port = parts.port or _DEFAULT_PORTS[kind]
    except ValueError as exc:
        raise SinkUrlError(f"bad port in engine URL {_redact(text)}: {exc}") from None
    database = _identifier(parts.path.lstrip("/") or _default_database(kind), "database", text)
    cluster = _cluster(kind, parts.query, text)
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password else None
    if kind == "postgresql" and user is None:
        raise SinkUrlError(f"PostgreSQL URL without a user: {_redact(text)}")
    return SinkUrl(kind, parts.hostname, port, database, user, password, cluster)


def _default_database(kind: Kind) -> str:
    return "postgres" if kind == "postgresql" else "default"


def _cluster(kind: Kind, query: str, text: str) -> str | None:
    """The only query parameter understood is ClickHouse's ``cluster``; anything else is a
    typo that would otherwise be silently ignored."""
    params = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = set(params) - ({"cluster"} if kind == "clickhouse" else set())
    if unknown:
        raise SinkUrlError(f"unknown parameter(s) {sorted(unknown)} in {_redact(text)}")
    values = params.get("cluster")
    if not values:
        return None
    if len(values) > 1:
        raise SinkUrlError(f"more than one cluster in {_redact(text)}")
    return _identifier(values[0], "cluster", text)


def _identifier(value: str, what: str, text: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise SinkUrlError(f"{what} name {value!r} is not a plain identifier in {_redact(text)}")
    return value


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _redact(text: str) -> str:
    """The raw URL for an error message, with any password masked."""
    parts = urllib.parse.urlsplit(text.strip())
    if parts.password is None:
        return text.strip()
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
