"""One settings object for the server, each setting declared once: its name, type, default,
unit, help, range and group.

The CLI generates its options from these declarations (flag ``--max-depth``, environment
variable ``TRUBRICS_MAX_DEPTH``: both derived from the field's name, never written out),
the startup log line shows them by group, and lower layers take their defaults from
``DEFAULTS``. Everything else receives a ``Settings`` ready-made and never reads the
environment itself.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .urls import parse_sink_url

T = TypeVar("T")
ENV_PREFIX = "TRUBRICS_"
OPTION = "trubrics_ingestion.option"  # the metadata key of a field's Option

# Groups of the startup line (and of --help, where fields are in this order).
NODE = "node"
PAYLOAD_LIMITS = "payload_limits"
HTTP_LIMITS = "http_limits"
RATE_LIMIT = "rate_limit"
DEDUP = "dedup"
KEYS = "keys"
FORWARDING = "forwarding"
METRICS = "metrics"
OTLP = "otlp"


@dataclass(frozen=True, kw_only=True)
class Option:
    """How a setting is given and shown. ``help`` and ``file`` may name ``{flag}`` and
    ``{env}``, filled in from the field's name."""

    group: str
    help: str
    low: float | None = None  # the range, bounds included
    high: float | None = None
    choices: tuple[str, ...] = ()
    none_means: str | None = None  # the default None, in words for --help
    flag: bool = True  # False: from the environment only, never from argv (which ps shows)
    file: str | None = None  # help of a --NAME-file variant, keeping a secret out of argv
    secret: bool = False  # never in a repr, never logged except through ``shown``
    shown: Callable[[Any], object] | None = None  # a secret as the startup line shows it


def setting(default: T, option: Option) -> T:
    """A ``Settings`` field with its ``Option``; secrets are kept out of the repr."""
    field: T = dataclasses.field(default=default, repr=not option.secret, metadata={OPTION: option})
    return field


def _displays(urls: tuple[str, ...]) -> list[str]:
    return [parse_sink_url(url).display for url in urls]


def _display(url: str | None) -> str | None:
    return parse_sink_url(url).display if url else None


def _access(token: str | None) -> str:
    return "token" if token else "this host only"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What one ingestion node needs to know to serve."""

    host: str = setting("127.0.0.1", Option(group=NODE, help="Address to listen on"))
    port: int = setting(8000, Option(group=NODE, help="Port to listen on", low=0, high=65535))
    data_dir: Path = setting(  # noqa: RUF009 (a field; ruff sees a call, Path being immutable)
        Path("data"), Option(group=NODE, help="Where the SQLite store lives")
    )
    cors_origins: tuple[str, ...] = setting(
        ("*",), Option(group=NODE, help="Comma-separated origins allowed to publish from a browser")
    )
    log_level: str = setting(
        "info",
        Option(
            group=NODE,
            help="Least severe line printed",
            choices=("debug", "info", "warning", "error"),
        ),
    )
    access_log: bool = setting(
        True, Option(group=NODE, help="One JSON line per request (at log level info)")
    )
    max_body_bytes: int = setting(
        10 * 1024 * 1024,  # 100 LLM events with long generations fit
        Option(
            group=PAYLOAD_LIMITS,
            help="Largest request body accepted, after decompression (413 beyond)",
            low=1024,
        ),
    )
    max_event_bytes: int = setting(
        1024 * 1024,
        Option(group=PAYLOAD_LIMITS, help="Largest single event accepted (422 beyond)", low=1024),
    )
    max_depth: int = setting(
        32,  # nesting of properties; the properties object is level 1
        Option(
            group=PAYLOAD_LIMITS, help="Deepest nesting of properties accepted (422 beyond)", low=1
        ),
    )
    max_head_bytes: int = setting(
        64 * 1024,
        Option(
            group=HTTP_LIMITS,
            help="Largest request head (URL and headers) accepted (431 beyond)",
            low=1024,
        ),
    )
    max_headers: int = setting(
        100,
        Option(group=HTTP_LIMITS, help="Most headers accepted in one request (431 beyond)", low=1),
    )
    request_timeout_s: float = setting(
        60.0,
        Option(
            group=HTTP_LIMITS,
            help="Time to receive a whole request before a 408 and a closed connection",
            low=0.1,
        ),
    )
    max_connections: int = setting(
        1000, Option(group=HTTP_LIMITS, help="Open connections at once; more get a 503", low=1)
    )
    max_buffered_bytes: int = setting(
        256 * 1024 * 1024,
        Option(
            group=HTTP_LIMITS,
            help="Request bodies held in memory at once, all requests together (503 beyond)",
            low=1024,
        ),
    )
    shutdown_timeout_s: float = setting(
        8.0,
        Option(
            group=HTTP_LIMITS,
            help="After SIGTERM, how long in-flight requests may take before they get a 503",
            low=0,
        ),
    )
    rate_limit_events_per_s: float = setting(
        0.0,
        Option(
            group=RATE_LIMIT,
            help="Events per second per project on this node, 0 for no limit (429 beyond)",
            low=0,
        ),
    )
    rate_limit_burst: float | None = setting(
        None,
        Option(
            group=RATE_LIMIT,
            help="Events a project may send at once before the rate applies",
            low=0,
            none_means="1 s worth",
        ),
    )
    dedup_window_s: float = setting(
        600.0,
        Option(
            group=DEDUP,
            help="A body repeated by the same project within this many seconds is a retry (0: off)",
            low=0,
        ),
    )
    dedup_max_entries: int = setting(
        100_000,
        Option(
            group=DEDUP,
            help="Batches remembered for that at most (~280 bytes each); the oldest go first",
            low=1,
        ),
    )
    otlp_window_s: float = setting(
        30.0,
        Option(
            group=OTLP,
            help="How long a GenAI span of OTLP waits for its trace's root span (which often"
            " names the user) before it is stored without",
            low=0,
            high=3600,
        ),
    )
    registry: str | None = setting(
        None,
        Option(
            group=KEYS,
            help="Keys live in this shared PostgreSQL registry (postgresql://USER@HOST:PORT/DB)"
            " instead of the node's store",
            file="A file holding the {flag} URL (mode 0600 if it has a password)",
            secret=True,  # the URL may hold a password
            shown=_display,
        ),
    )
    key_refresh_interval_s: float = setting(
        0.5,
        Option(
            group=KEYS,
            help="How often the node looks for key changes (the time a revocation takes to bite)",
            low=0.05,
            high=10,
        ),
    )
    init_project: str | None = setting(
        None,
        Option(group=KEYS, help="Project seeded at start (headless deployments)", flag=False),
    )
    init_api_key: str | None = setting(
        None,
        Option(group=KEYS, help="Key seeded at start for that project", flag=False, secret=True),
    )
    forward_to: tuple[str, ...] = setting(
        (),
        Option(
            group=FORWARDING,
            help="Engine to ship stored events to, at least once (repeatable; in the"
            " environment, space-separated): postgresql://USER@HOST:PORT/DB[?sslmode=...] or"
            " clickhouse[s]://HOST:PORT/DB[?cluster=C]",
            file="A file of {flag} URLs, one a line (mode 0600 if one has a password)",
            secret=True,  # the URLs may hold passwords
            shown=_displays,
        ),
    )
    forward_retention_s: float | None = setting(
        None,
        Option(
            group=FORWARDING,
            help="Delete events from this node once every engine has them and they are this old",
            low=0,
            none_means="keep them",
        ),
    )
    forward_max_backoff_s: float = setting(
        10.0,
        Option(
            group=FORWARDING,
            help="Longest wait between attempts at an engine that is down",
            low=0.5,
            high=3600,
        ),
    )
    metrics_per_project: bool = setting(
        False,
        Option(
            group=METRICS,
            help="Label the event counters of /metrics by project (a series per project)",
        ),
    )
    metrics_token: str | None = setting(
        None,
        Option(
            group=METRICS,
            help="The token that /metrics and /readyz's details then require",
            flag=False,  # a token in argv could be read by every local user
            file="File holding the token that /metrics and /readyz's details then require, as"
            " Authorization: Bearer <token> (or the token itself in {env})",
            none_means="none: they are served to clients on this host only",
            secret=True,
            shown=_access,
        ),
    )

    @property
    def database_path(self) -> Path:
        """The SQLite file holding projects, keys, the journal and the events."""
        return self.data_dir / "trubrics.db"


DEFAULTS = Settings()  # lower layers default to these: a default is written once, above


@dataclass(frozen=True)
class Declared:
    """One setting as the CLI and the startup line need it: the field and its Option."""

    name: str
    type: type  # without ``| None``; ``tuple`` for tuples
    default: Any
    option: Option

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def help(self) -> str:
        """The help text, its default in words when the default is None."""
        return self._described(self.option.help)

    @property
    def file_help(self) -> str:
        """The help of the ``--NAME-file`` variant."""
        assert self.option.file is not None
        return self._described(self.option.file)

    def _described(self, text: str) -> str:
        default = f" [default: {self.option.none_means}]" if self.option.none_means else ""
        return text.format(flag=self.flag, env=self.env) + default + "."


def _declared(field: dataclasses.Field[Any], hint: Any) -> Declared:
    if isinstance(hint, types.UnionType):  # X | None: the default None, else an X
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
    kind = typing.get_origin(hint) or hint
    return Declared(field.name, kind, field.default, field.metadata[OPTION])


def declarations() -> Iterator[Declared]:
    """Every setting, in declaration order (grouped)."""
    hints = typing.get_type_hints(Settings)
    for field in dataclasses.fields(Settings):
        yield _declared(field, hints[field.name])


SETTINGS: dict[str, Declared] = {d.name: d for d in declarations()}


def shown(settings: Settings) -> dict[str, dict[str, object]]:
    """The settings by group, as the startup line shows them: a secret only as its
    ``shown`` form (redacted URLs, whether a token is set) or not at all."""
    groups: dict[str, dict[str, object]] = {}
    for declared in SETTINGS.values():
        value = getattr(settings, declared.name)
        option = declared.option
        if option.secret and option.shown is None:
            continue
        groups.setdefault(option.group, {})[declared.name] = _loggable(value, option)
    return groups


def _loggable(value: object, option: Option) -> object:
    if option.shown is not None:
        return option.shown(value)
    if isinstance(value, Path):
        return str(value.resolve())  # where the store really is
    return list(value) if isinstance(value, tuple) else value
