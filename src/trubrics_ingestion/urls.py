"""Engine URLs: what the operator configures, what logs show, and what a cursor is keyed by.

The forms accepted::

    postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?PARAM=VALUE&...]     (also postgres://)
    clickhouse://[USER[:PASSWORD]@]HOST[:PORT]/DB[?cluster=NAME]      HTTP, port 8123
    clickhouses://[USER[:PASSWORD]@]HOST[:PORT]/DB[?cluster=NAME&ca_cert=PATH]   HTTPS, 8443

PostgreSQL takes libpq's own parameters (``sslmode``, ``sslrootcert``, ``passfile``,
``connect_timeout``, ``application_name``...), except those naming the destination, which
the URL's host, port and path already say. ``clickhouse://...?secure=1`` is HTTPS too;
certificates are verified against the system's CAs, or only ``ca_cert`` when given.

The password never leaves this module except towards the engine itself: ``display`` is
for logs and status, ``redact`` for echoing text that may not even parse, and the cursor
``id`` names only the destination (host, port, database, cluster), so that rotating a
password or a user, or turning TLS on, keeps the cursor, while pointing the URL at another
server or database starts a new one (a full, idempotent redelivery).
"""

from __future__ import annotations

import os
import re
import stat
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Engine = Literal["postgresql", "clickhouse"]
_SCHEMES: dict[str, tuple[Engine, bool]] = {  # scheme -> (kind, over TLS)
    "postgresql": ("postgresql", False),
    "postgres": ("postgresql", False),
    "clickhouse": ("clickhouse", False),
    "clickhouses": ("clickhouse", True),
}
_DEFAULT_PORTS: dict[tuple[Engine, bool], int] = {
    ("postgresql", False): 5432,
    ("clickhouse", False): 8123,
    ("clickhouse", True): 8443,
}
# Database and cluster names end up inside SQL statements: plain identifiers only.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# libpq parameters the URL itself states (a ``?host=`` would send the events elsewhere
# under the same cursor), or that would put the password where ``display`` shows it.
_LIBPQ_REFUSED = frozenset({"host", "hostaddr", "port", "dbname", "user", "service", "replication"})
_LIBPQ_SECRETS = frozenset(
    {"sslpassword", "scram_client_key", "scram_server_key", "oauth_client_secret"}
)
_CLICKHOUSE_PARAMETERS = frozenset({"cluster", "secure", "ca_cert"})
_BOOLEANS = {"1": True, "true": True, "0": False, "false": False}
_SECRET_VALUE = re.compile(rf"(?i)([?&](?:password|{'|'.join(sorted(_LIBPQ_SECRETS))})=)[^&#]*")
ENCODING_HINT = (
    "percent-encode '/', '?', '#' and '@' in a user name or password (%2F, %3F, %23, %40)"
)


class SinkUrlError(ValueError):
    """A configured engine URL that cannot be used (the message says why, without secrets)."""


@dataclass(frozen=True)
class SinkUrl:
    """A parsed engine URL."""

    kind: Engine
    host: str
    port: int
    database: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    cluster: str | None = None  # ClickHouse only: shard over this cluster
    secure: bool = False  # ClickHouse only: HTTPS (PostgreSQL says so in ``libpq``)
    ca_cert: str | None = None  # ClickHouse only: trust this CA file instead of the system's
    libpq: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # PostgreSQL only

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
        scheme = "clickhouses" if self.secure else self.kind
        return f"{scheme}://{user}{_host(self.host)}:{self.port}/{self.database}{cluster}"

    @property
    def carries_secret(self) -> bool:
        """Whether the URL itself holds a password (or another secret libpq takes)."""
        return self.password is not None or any(name in _LIBPQ_SECRETS for name, _ in self.libpq)

    def __str__(self) -> str:
        return self.display


def redact(text: str) -> str:
    """``text`` fit for an error message or a log: everything between ``://`` and the last
    ``@`` masked, and any password parameter's value. Textual, not parsed: a password
    holding an unencoded ``/``, ``?`` or ``#`` makes a URL parser take its tail for the
    path, query or fragment, and its head for the host or port."""
    head, sep, rest = text.strip().partition("://")
    if not sep:
        head, rest = "", head
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return head + sep + _SECRET_VALUE.sub(r"\1***", rest)


def parse_sink_url(text: str) -> SinkUrl:
    """Parse and check one engine URL; raises ``SinkUrlError`` naming the problem."""
    text = text.strip()
    parts = urllib.parse.urlsplit(text)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise SinkUrlError(f"unsupported engine URL scheme {parts.scheme!r}: {redact(text)}")
    if "#" in text or "@" in parts.path + parts.query:
        raise SinkUrlError(f"ambiguous engine URL {redact(text)}: {ENCODING_HINT}")
    if not parts.hostname:
        raise SinkUrlError(f"engine URL without a host: {redact(text)}")
    kind, secure = scheme
    params = _parameters(parts.query, text)
    if kind == "clickhouse":
        secure = _secure(secure, params.get("secure"), text)
        _check_names(set(params), _CLICKHOUSE_PARAMETERS, text)
        libpq: tuple[tuple[str, str], ...] = ()
    else:
        libpq = _libpq(params, text)
    try:
        port = parts.port or _DEFAULT_PORTS[kind, secure]
    except ValueError:  # the "port" may be a password: "postgresql://user:secret" (no host)
        raise SinkUrlError(
            f"bad port in the {kind} URL for host {parts.hostname}: a number up to 65535"
        ) from None
    database = _identifier(parts.path.lstrip("/") or _default_database(kind), "database", text)
    cluster = params.get("cluster")
    if cluster is not None:
        cluster = _identifier(cluster, "cluster", text)
    ca_cert = params.get("ca_cert")
    if ca_cert is not None and not secure:
        raise SinkUrlError(f"ca_cert without HTTPS (clickhouses:// or secure=1) in {redact(text)}")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password else None
    if kind == "postgresql" and user is None:
        raise SinkUrlError(f"PostgreSQL URL without a user: {redact(text)}")
    return SinkUrl(
        kind, parts.hostname, port, database, user, password, cluster, secure, ca_cert, libpq
    )


def read_url_file(path: Path) -> list[str]:
    """The URLs in ``path``, one a line (blank lines and ``#`` comments skipped): a way to
    keep passwords out of the command line, which every local user can read. Like libpq
    with ``.pgpass``, a file holding a password is refused when others may read it."""
    try:
        with open(path, encoding="utf-8") as file:
            mode = os.fstat(file.fileno()).st_mode
            lines = [line.strip() for line in file]
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else exc
        raise SinkUrlError(f"cannot read URLs from {path}: {detail}") from None
    urls = [line for line in lines if line and not line.startswith("#")]
    if not urls:
        raise SinkUrlError(f"no URL in {path}")
    if mode & 0o077 and any(parse_sink_url(url).carries_secret for url in urls):
        raise SinkUrlError(
            f"{path} holds a password and others may read it (mode {stat.filemode(mode)}):"
            f" chmod 600 {path}"
        )
    return urls


def _parameters(query: str, text: str) -> dict[str, str]:
    """The query's parameters; one value each (a second one is a mistake to report)."""
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    params = dict(pairs)
    if len(params) < len(pairs):
        raise SinkUrlError(f"a parameter given twice in {redact(text)}")
    return params


def _check_names(names: set[str], known: frozenset[str], text: str) -> None:
    """Unknown parameters are typos that would otherwise be silently ignored."""
    unknown = names - known
    if unknown:
        raise SinkUrlError(f"unknown parameter(s) {sorted(unknown)} in {redact(text)}")


def _libpq(params: dict[str, str], text: str) -> tuple[tuple[str, str], ...]:
    """The parameters for libpq: those the linked libpq knows (asked, so that a newer one's
    additions work), but not those the URL itself states."""
    if "password" in params:
        raise SinkUrlError(
            f"password as a parameter in {redact(text)}: give it as USER:PASSWORD@, in"
            " PGPASSWORD, or in a password file (passfile=, PGPASSFILE, ~/.pgpass)"
        )
    refused = set(params) & _LIBPQ_REFUSED
    if refused:
        raise SinkUrlError(
            f"parameter(s) {sorted(refused)} in {redact(text)}: say it in the URL itself"
        )
    if params:
        from psycopg.pq import Conninfo  # psycopg only for PostgreSQL URLs with parameters

        known = {option.keyword.decode() for option in Conninfo.get_defaults()}
        _check_names(set(params), frozenset(known), text)
    return tuple(params.items())


def _secure(by_scheme: bool, value: str | None, text: str) -> bool:
    if value is None:
        return by_scheme
    secure = _BOOLEANS.get(value.lower())
    if secure is None or (by_scheme and not secure):
        raise SinkUrlError(f"secure must be 1 or 0 (not 0 with clickhouses://) in {redact(text)}")
    return secure


def _default_database(kind: Engine) -> str:
    return "postgres" if kind == "postgresql" else "default"


def _identifier(value: str, what: str, text: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise SinkUrlError(f"{what} name {value!r} is not a plain identifier in {redact(text)}")
    return value


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
