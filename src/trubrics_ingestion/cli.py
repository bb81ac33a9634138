"""The ``trubrics-ingestion`` command: serve, keys, events.

Every option that names a setting can also come from a ``TRUBRICS_*`` environment
variable; commands that touch the store take ``--data-dir`` after their own name.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec

from . import events, keys, logs, materialise, store
from .config import Settings
from .forward.urls import SinkUrlError, parse_sink_url

F = TypeVar("F", bound=Callable[..., Any])
DEFAULTS = Settings()  # every default lives in config.py


def data_dir_option(command: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULTS.data_dir,
        envvar="TRUBRICS_DATA_DIR",
        show_default=True,
        show_envvar=True,
        help="Where the SQLite store lives.",
    )(command)


def registry_option(command: F) -> F:
    return click.option(
        "--registry",
        envvar="TRUBRICS_REGISTRY",
        show_envvar=True,
        callback=lambda _ctx, _param, url: _registry_url(url),
        help="Keys live in this shared PostgreSQL registry (postgresql://USER@HOST:PORT/DB)"
        " instead of the node's store.",
    )(command)


def _open(data_dir: Path) -> sqlite3.Connection:
    return store.connect(Settings(data_dir=data_dir).database_path)


def _key_store(data_dir: Path, registry: str | None) -> keys.KeyStore:
    return keys.open_key_store(registry, lambda: _open(data_dir))


def _registry_url(url: str | None) -> str | None:
    """The URL as given once it parses (``Settings`` keeps strings), or a usage error."""
    if not url:
        return None
    from .registry import parse_registry_url

    try:
        parse_registry_url(url)
    except SinkUrlError as exc:
        raise click.BadParameter(str(exc)) from None
    return url


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _time(_: click.Context, __: click.Parameter, value: str | None) -> int | None:
    try:
        return None if value is None else events.parse_time(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO-8601 time: {value!r}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="trubrics-ingestion")
def main() -> None:
    """Self-hosted Trubrics ingestion: a write-only event API backed by a durable store."""


@main.command()
@click.option("--host", default=DEFAULTS.host, envvar="TRUBRICS_HOST", show_envvar=True)
@click.option(
    "--port",
    default=DEFAULTS.port,
    type=click.IntRange(0, 65535),
    envvar="TRUBRICS_PORT",
    show_envvar=True,
)
@data_dir_option
@click.option(
    "--max-body-bytes",
    default=DEFAULTS.max_body_bytes,
    type=click.IntRange(1024),
    envvar="TRUBRICS_MAX_BODY_BYTES",
    show_envvar=True,
    help="Largest request body accepted, after decompression.",
)
@click.option(
    "--cors-origins",
    default="*",
    envvar="TRUBRICS_CORS_ORIGINS",
    show_envvar=True,
    help="Comma-separated origins allowed to publish from a browser.",
)
@click.option(
    "--max-event-bytes",
    default=DEFAULTS.max_event_bytes,
    type=click.IntRange(1024),
    envvar="TRUBRICS_MAX_EVENT_BYTES",
    show_envvar=True,
    help="Largest single event accepted (422 beyond).",
)
@click.option(
    "--max-depth",
    default=DEFAULTS.max_depth,
    type=click.IntRange(1),
    envvar="TRUBRICS_MAX_DEPTH",
    show_envvar=True,
    help="Deepest nesting of properties accepted (422 beyond).",
)
@click.option(
    "--rate-limit-events-per-s",
    default=DEFAULTS.rate_limit_events_per_s,
    type=click.FloatRange(0),
    envvar="TRUBRICS_RATE_LIMIT_EVENTS_PER_S",
    show_envvar=True,
    help="Events per second per project on this node, 0 for no limit (429 beyond).",
)
@click.option(
    "--rate-limit-burst",
    type=click.FloatRange(0),
    envvar="TRUBRICS_RATE_LIMIT_BURST",
    show_envvar=True,
    help="Events a project may send at once before the rate applies [default: 1 s worth].",
)
@click.option(
    "--dedup-window-s",
    default=DEFAULTS.dedup_window_s,
    type=click.FloatRange(0),
    envvar="TRUBRICS_DEDUP_WINDOW_S",
    show_envvar=True,
    help="A body repeated by the same project within this many seconds is a retry (0: off).",
)
@click.option(
    "--max-head-bytes",
    default=DEFAULTS.max_head_bytes,
    type=click.IntRange(1024),
    envvar="TRUBRICS_MAX_HEAD_BYTES",
    show_envvar=True,
    help="Largest request head (URL and headers) accepted (431 beyond).",
)
@click.option(
    "--max-headers",
    default=DEFAULTS.max_headers,
    type=click.IntRange(1),
    envvar="TRUBRICS_MAX_HEADERS",
    show_envvar=True,
    help="Most headers accepted in one request (431 beyond).",
)
@click.option(
    "--request-timeout-s",
    default=DEFAULTS.request_timeout_s,
    type=click.FloatRange(0.1),
    envvar="TRUBRICS_REQUEST_TIMEOUT_S",
    show_envvar=True,
    help="Time to receive a whole request before a 408 and a closed connection.",
)
@click.option(
    "--max-connections",
    default=DEFAULTS.max_connections,
    type=click.IntRange(1),
    envvar="TRUBRICS_MAX_CONNECTIONS",
    show_envvar=True,
    help="Open connections at once; more get a 503.",
)
@click.option(
    "--shutdown-timeout-s",
    default=DEFAULTS.shutdown_timeout_s,
    type=click.FloatRange(0),
    envvar="TRUBRICS_SHUTDOWN_TIMEOUT_S",
    show_envvar=True,
    help="After SIGTERM, how long in-flight requests may take before they get a 503.",
)
@click.option(
    "--max-buffered-bytes",
    default=DEFAULTS.max_buffered_bytes,
    type=click.IntRange(1024),
    envvar="TRUBRICS_MAX_BUFFERED_BYTES",
    show_envvar=True,
    help="Request bodies held in memory at once, all requests together (503 beyond).",
)
@click.option(
    "--log-level",
    default=DEFAULTS.log_level,
    envvar="TRUBRICS_LOG_LEVEL",
    show_envvar=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--access-log/--no-access-log",
    default=DEFAULTS.access_log,
    envvar="TRUBRICS_ACCESS_LOG",
    show_envvar=True,
    help="One JSON line per request (at log level info).",
)
@click.option(
    "--metrics-per-project",
    is_flag=True,
    default=DEFAULTS.metrics_per_project,
    envvar="TRUBRICS_METRICS_PER_PROJECT",
    show_envvar=True,
    help="Label the event counters of /metrics by project (a series per project).",
)
@click.option(
    "--forward-to",
    multiple=True,
    callback=lambda _ctx, _param, urls: _engine_urls(urls),
    envvar="TRUBRICS_FORWARD_TO",
    show_envvar=True,
    help="Engine to ship stored events to, at least once (repeatable; in the environment,"
    " space-separated): postgresql://USER@HOST:PORT/DB or clickhouse://HOST:PORT/DB[?cluster=C].",
)
@click.option(
    "--materialisers",
    default=DEFAULTS.materialisers,
    type=click.IntRange(1, 8),
    envvar="TRUBRICS_MATERIALISERS",
    show_envvar=True,
    help="Processes turning acknowledged batches into rows (more drain a backlog faster,"
    " on more cores).",
)
@click.option(
    "--forward-retention-s",
    type=click.FloatRange(0),
    envvar="TRUBRICS_FORWARD_RETENTION_S",
    show_envvar=True,
    help="Delete events from this node once every engine has them and they are this old"
    " [default: keep them].",
)
@click.option(
    "--forward-max-backoff-s",
    default=DEFAULTS.forward_max_backoff_s,
    type=click.FloatRange(0.5, 3600),
    envvar="TRUBRICS_FORWARD_MAX_BACKOFF_S",
    show_envvar=True,
    help="Longest wait between attempts at an engine that is down.",
)
@registry_option
@click.option(
    "--key-refresh-interval-s",
    default=DEFAULTS.key_refresh_interval_s,
    type=click.FloatRange(0.05, 10),
    envvar="TRUBRICS_KEY_REFRESH_INTERVAL_S",
    show_envvar=True,
    help="How often the node looks for key changes (the time a revocation takes to bite).",
)
def serve(cors_origins: str, **options: Any) -> None:
    """Serve the ingestion API."""
    from .server import serve as run  # imports uvicorn only for this command

    run(
        Settings(
            cors_origins=tuple(o.strip() for o in cors_origins.split(",") if o.strip()),
            init_project=os.environ.get("TRUBRICS_INIT_PROJECT") or None,
            init_api_key=os.environ.get("TRUBRICS_INIT_API_KEY") or None,
            **options,
        )
    )


@main.command()
@click.argument("url")
def migrate(url: str) -> None:
    """Create or upgrade the events schema on an engine (idempotent; serve does it too)."""
    from .forward import open_sink

    sink = open_sink(parse_sink_url(_engine_urls((url,))[0]))
    try:
        sink.migrate()
    finally:
        sink.close()
    click.echo(f"{parse_sink_url(url).display}: schema up to date.")


@main.command()
@click.option(
    "--to",
    "urls",
    multiple=True,
    required=True,
    envvar="TRUBRICS_FORWARD_TO",
    help="Engine URL (repeatable; in the environment, space-separated).",
)
@click.option(
    "--retention-s",
    type=click.FloatRange(0),
    help="Delete delivered events this old [default: keep them].",
)
@click.option(
    "--max-backoff-s",
    default=DEFAULTS.forward_max_backoff_s,
    type=click.FloatRange(0.5, 3600),
    help="Longest wait between attempts at an engine that is down.",
)
@click.option("--parent-pid", type=int, hidden=True, help="Exit when this process is gone.")
@data_dir_option
def forward(
    urls: tuple[str, ...],
    retention_s: float | None,
    max_backoff_s: float,
    parent_pid: int | None,
    data_dir: Path,
) -> None:
    """Ship stored events to engines, in order, until interrupted (serve runs this itself)."""
    from .forward import run_forever

    logs.configure(DEFAULTS.log_level)
    database = Settings(data_dir=data_dir).database_path
    with contextlib.suppress(KeyboardInterrupt):
        run_forever(
            database,
            _engine_urls(urls),
            parent_pid=parent_pid,
            retention_s=retention_s,
            backoff_max_s=max_backoff_s,
        )


def _engine_urls(urls: tuple[str, ...]) -> tuple[str, ...]:
    """The URLs as given once they parse and name distinct engines, or a usage error."""
    from .forward.forwarder import parse_sink_urls

    try:
        parse_sink_urls(urls)
    except SinkUrlError as exc:
        raise click.BadParameter(str(exc)) from None
    return urls


def _shard(text: str) -> materialise.Shard:
    try:
        return materialise.Shard.parse(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.group(name="keys")
def keys_group() -> None:
    """Create, list and revoke API keys."""


@keys_group.command(name="create")
@click.option("--project", required=True, help="Project the key writes to (created if new).")
@click.option("--json", "as_json", is_flag=True, help="Print {project, key, id} as JSON.")
@data_dir_option
@registry_option
def keys_create(project: str, as_json: bool, data_dir: Path, registry: str | None) -> None:
    """Create a key; its secret is printed this once and never stored."""
    with _keys_of(data_dir, registry) as key_store:
        new = key_store.create_key(project)
    if as_json:
        click.echo(_json({"project": new.project, "key": new.key, "id": new.id}))
    else:
        click.echo(f"Created key {new.id} for project {new.project!r}. Keep it secret:\n{new.key}")


@keys_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key.")
@data_dir_option
@registry_option
def keys_list(as_json: bool, data_dir: Path, registry: str | None) -> None:
    """List keys (ids and hints, never secrets)."""
    with _keys_of(data_dir, registry) as key_store:
        listed = key_store.list_keys()
    for key in listed:
        state = "active" if key.revoked_at is None else "revoked"
        if as_json:
            click.echo(
                _json({"id": key.id, "project": key.project, "hint": key.hint, "state": state})
            )
        else:
            click.echo(f"{key.id}\t{key.project}\t{key.hint}\t{state}")


@keys_group.command(name="revoke")
@click.argument("key_id")
@data_dir_option
@registry_option
def keys_revoke(key_id: str, data_dir: Path, registry: str | None) -> None:
    """Revoke a key by id; servers stop accepting it within a second."""
    with _keys_of(data_dir, registry) as key_store:
        revoked = key_store.revoke_key(key_id)
    if not revoked:
        raise click.ClickException(f"no active key with id {key_id!r}")
    click.echo(f"Revoked {key_id}.")


@contextlib.contextmanager
def _keys_of(data_dir: Path, registry: str | None) -> Iterator[keys.KeyStore]:
    """The key store the command acts on; an unreachable registry is a clear error."""
    key_store = _key_store(data_dir, registry)
    try:
        yield key_store
    except keys.KeyStoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        key_store.close()


@main.group(name="events")
def events_group() -> None:
    """Read stored events."""


@events_group.command(name="count")
@click.option("--project", help="Only this project.")
@data_dir_option
def events_count(project: str | None, data_dir: Path) -> None:
    """Print how many events are stored."""
    click.echo(events.count(_open(data_dir), project))


@events_group.command(name="export")
@click.option("--project", help="Only this project.")
@click.option(
    "--since", callback=_time, help="Event time from (inclusive, ISO-8601, UTC if naive)."
)
@click.option("--until", callback=_time, help="Event time until (exclusive).")
@click.option("--format", "fmt", type=click.Choice(["ndjson", "csv"]), default="ndjson")
@data_dir_option
def events_export(
    project: str | None, since: int | None, until: int | None, fmt: str, data_dir: Path
) -> None:
    """Write events to standard output, oldest stored first (CSV cells that a spreadsheet
    would run as formulas get a leading '). A stored event that cannot be read is skipped
    and named on stderr; the exit status is then 1, once all the others are written."""
    skipped = events.Skipped()
    records = events.export(
        _open(data_dir), project=project, since=since, until=until, on_unreadable=skipped
    )
    if fmt == "csv":
        for chunk in events.to_csv_lines(records):
            click.echo(chunk, nl=False)
    else:
        for record in records:
            click.echo(events.to_ndjson(record))
    _fail_if_skipped(skipped)


@events_group.command(name="materialise")
@click.option("--follow", is_flag=True, help="Keep going: materialise new batches as they come.")
@click.option(
    "--shard",
    default="1/1",
    callback=lambda _ctx, _param, text: _shard(text),
    help="With --follow: take only share K of N of the journal, as the server's K-th of N"
    " materialisers.",
)
@click.option("--parent-pid", type=int, hidden=True, help="Exit when this process is gone.")
@data_dir_option
def events_materialise(
    follow: bool, shard: materialise.Shard, parent_pid: int | None, data_dir: Path
) -> None:
    """Turn journaled batches into per-event rows (the server runs this in the background)."""
    database = Settings(data_dir=data_dir).database_path
    if shard != materialise.ALL and not follow:
        raise click.UsageError("--shard goes with --follow (a catch-up takes every batch)")
    if follow:
        logs.configure()  # the server's child: its lines join the server's, as JSON
        with contextlib.suppress(KeyboardInterrupt):
            materialise.follow(database, parent_pid=parent_pid, shard=shard)
    else:
        materialise.catch_up(store.connect(database))


@events_group.command(name="tail")
@click.option("--project", help="Only this project.")
@data_dir_option
def events_tail(project: str | None, data_dir: Path) -> None:
    """Follow new events as NDJSON until interrupted (an unreadable stored event is skipped
    and named on stderr, as by export)."""
    skipped = events.Skipped()
    try:
        for record in events.tail(_open(data_dir), project=project, on_unreadable=skipped):
            click.echo(events.to_ndjson(record))
    except KeyboardInterrupt:
        pass
    _fail_if_skipped(skipped)


def _fail_if_skipped(skipped: events.Skipped) -> None:
    if skipped.count:
        raise click.ClickException(
            f"{skipped.count} stored event(s) could not be read and were skipped (see above)."
        )
