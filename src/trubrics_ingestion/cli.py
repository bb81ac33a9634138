"""The ``trubrics-ingestion`` command: serve, keys, events.

Every option that names a setting can also come from a ``TRUBRICS_*`` environment
variable; commands that touch the store take ``--data-dir`` after their own name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import click
import msgspec
from click.core import ParameterSource

from . import keys
from .clock import parse_time
from .config import Settings
from .keys.model import weakness
from .node import logs
from .store import materialise
from .store import read as events
from .store import sqlite as store
from .urls import SinkUrl, SinkUrlError, parse_sink_url, read_url_file

F = TypeVar("F", bound=Callable[..., Any])
DEFAULTS = Settings()  # every default lives in config.py
URL_FILE = click.Path(dir_okay=False, path_type=Path)
# Where a URL with a password can go instead of the command line, by parameter name.
_INSTEAD = {
    "forward_to": "TRUBRICS_FORWARD_TO or --forward-to-file PATH",
    "registry": "TRUBRICS_REGISTRY or --registry-file PATH",
    "urls": "TRUBRICS_FORWARD_TO",
    "url": "--url-file PATH",
}
ARGV_WARNINGS = "trubrics_ingestion.argv_warnings"  # in ctx.meta: for serve to log as JSON


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
    """``--registry URL`` or ``--registry-file PATH``, given to ``command`` as ``registry``."""

    @functools.wraps(command)
    def with_registry(
        *args: Any, registry: str | None, registry_file: str | None, **kw: Any
    ) -> Any:
        if registry and registry_file:
            raise click.UsageError("give --registry or --registry-file, not both")
        return command(*args, registry=registry or registry_file, **kw)

    file_option = click.option(
        "--registry-file",
        type=URL_FILE,
        envvar="TRUBRICS_REGISTRY_FILE",
        show_envvar=True,
        callback=lambda _ctx, _param, path: _registry_url_in(path),
        help="A file holding the --registry URL (mode 0600 if it has a password).",
    )
    return cast(
        F,
        click.option(
            "--registry",
            envvar="TRUBRICS_REGISTRY",
            show_envvar=True,
            callback=_registry_url,
            help="Keys live in this shared PostgreSQL registry (postgresql://USER@HOST:PORT/DB)"
            " instead of the node's store.",
        )(file_option(with_registry)),
    )


def _open(data_dir: Path) -> sqlite3.Connection:
    try:
        return store.connect(Settings(data_dir=data_dir).database_path)
    except store.NotPrivate as exc:
        raise click.ClickException(str(exc)) from None


def _key_store(data_dir: Path, registry: str | None) -> keys.KeyStore:
    return keys.open_key_store(registry, lambda: _open(data_dir))


def _registry_url(ctx: click.Context, param: click.Parameter, url: str | None) -> str | None:
    """The URL as given once it parses (``Settings`` keeps strings), or a usage error."""
    if not url:
        return None
    _warn_if_password_in_argv(ctx, param, [_checked_registry(url)])
    return url


def _registry_url_in(path: Path | None) -> str | None:
    """The one URL of a ``--registry-file``, checked."""
    if path is None:
        return None
    url = _one_url_in(path)
    _checked_registry(url)
    return url


def _checked_registry(url: str) -> SinkUrl:
    from .keys.registry import parse_registry_url

    try:
        return parse_registry_url(url)
    except SinkUrlError as exc:
        raise click.BadParameter(str(exc)) from None


def _urls_in(path: Path) -> list[str]:
    try:
        return read_url_file(path)
    except SinkUrlError as exc:
        raise click.BadParameter(str(exc)) from None


def _one_url_in(path: Path) -> str:
    urls = _urls_in(path)
    if len(urls) != 1:
        raise click.BadParameter(f"{path} holds {len(urls)} URLs, not one")
    return urls[0]


def _warn_if_password_in_argv(
    ctx: click.Context, param: click.Parameter, urls: Sequence[SinkUrl]
) -> None:
    """Warn, never showing it, of a password in a URL given on the command line: every
    local user can read a process's arguments. ``serve`` logs it once logging is set up."""
    source = ctx.get_parameter_source(param.name) if param.name else None
    if source is not ParameterSource.COMMANDLINE or not any(u.carries_secret for u in urls):
        return
    assert param.name is not None
    is_option = isinstance(param, click.Option)
    flag = param.opts[0] if is_option else f"{ctx.command.name}'s {param.human_readable_name}"
    message = (
        f"a password in {flag} on the command line can be read by every local user (ps,"
        f" /proc/PID/cmdline): use {_INSTEAD[param.name]} (a file: mode 0600), or leave a"
        " PostgreSQL password out of the URL for libpq to find in PGPASSWORD, PGPASSFILE or"
        " ~/.pgpass"
    )
    if ctx.command.name == "serve":
        ctx.meta.setdefault(ARGV_WARNINGS, []).append(message)
    else:
        click.echo(f"Warning: {message}", err=True)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _time(_: click.Context, __: click.Parameter, value: str | None) -> int | None:
    try:
        return None if value is None else parse_time(value)
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
    "--dedup-max-entries",
    default=DEFAULTS.dedup_max_entries,
    type=click.IntRange(1),
    envvar="TRUBRICS_DEDUP_MAX_ENTRIES",
    show_envvar=True,
    help="Batches remembered for that at most (~280 bytes each); the oldest go first.",
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
    "--metrics-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="TRUBRICS_METRICS_TOKEN_FILE",
    show_envvar=True,
    help="File holding the token that /metrics and /readyz's details then require, as"
    " Authorization: Bearer <token> (or the token itself in TRUBRICS_METRICS_TOKEN)"
    " [default: none: they are served to clients on this host only].",
)
@click.option(
    "--forward-to",
    multiple=True,
    callback=lambda ctx, param, urls: _engine_urls(urls, ctx, param),
    envvar="TRUBRICS_FORWARD_TO",
    show_envvar=True,
    help="Engine to ship stored events to, at least once (repeatable; in the environment,"
    " space-separated): postgresql://USER@HOST:PORT/DB[?sslmode=...] or"
    " clickhouse[s]://HOST:PORT/DB[?cluster=C].",
)
@click.option(
    "--forward-to-file",
    type=URL_FILE,
    envvar="TRUBRICS_FORWARD_TO_FILE",
    show_envvar=True,
    callback=lambda _ctx, _param, path: () if path is None else _engine_urls(tuple(_urls_in(path))),
    help="A file of --forward-to URLs, one a line (mode 0600 if one has a password).",
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
def serve(
    cors_origins: str,
    metrics_token_file: Path | None,
    forward_to: tuple[str, ...],
    forward_to_file: tuple[str, ...],
    **options: Any,
) -> None:
    """Serve the ingestion API."""
    from .node.server import serve as run  # imports uvicorn only for this command

    run(
        Settings(
            cors_origins=tuple(o.strip() for o in cors_origins.split(",") if o.strip()),
            metrics_token=_metrics_token(metrics_token_file),
            init_project=os.environ.get("TRUBRICS_INIT_PROJECT") or None,
            init_api_key=os.environ.get("TRUBRICS_INIT_API_KEY") or None,
            forward_to=_engine_urls((*forward_to, *forward_to_file)),
            **options,
        ),
        warnings=click.get_current_context().meta.get(ARGV_WARNINGS, ()),
    )


def _metrics_token(path: Path | None) -> str | None:
    """The token from its file or ``TRUBRICS_METRICS_TOKEN``; never from the command line,
    which every user of the host can read (``ps``). A usage error if it is unfit."""
    from_env = os.environ.get("TRUBRICS_METRICS_TOKEN") or None
    if path is not None and from_env is not None:
        raise click.UsageError("give --metrics-token-file or TRUBRICS_METRICS_TOKEN, not both")
    token = path.read_text(errors="replace").strip() if path is not None else from_env
    if token is None:
        return None
    if not (token.isascii() and token.isprintable()) or " " in token:
        problem: str | None = "it must be printable ASCII without spaces"
    else:
        problem = weakness(token)
    if problem:
        raise click.UsageError(f"the metrics token is not usable: {problem}")
    return token


@main.command()
@click.argument(
    "url",
    required=False,
    callback=lambda ctx, param, url: url and _engine_urls((url,), ctx, param)[0],
)
@click.option(
    "--url-file",
    type=URL_FILE,
    callback=lambda _ctx, _param, path: path and _engine_urls((_one_url_in(path),))[0],
    help="A file holding the URL instead (mode 0600 if it has a password).",
)
def migrate(url: str | None, url_file: str | None) -> None:
    """Create or upgrade the events schema on an engine (idempotent; serve does it too)."""
    import psycopg

    from .forward import open_sink

    text = url or url_file
    if text is None or (url and url_file):
        raise click.UsageError("give the engine's URL, or --url-file PATH: one of them")
    target = parse_sink_url(text)
    sink = open_sink(target)
    try:
        sink.migrate()
    except (OSError, RuntimeError, psycopg.Error) as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise click.ClickException(
            f"{target.display}: {type(exc).__name__}: {first_line}"
        ) from None
    finally:
        sink.close()
    click.echo(f"{target.display}: schema up to date.")


@main.command()
@click.option(
    "--to",
    "urls",
    multiple=True,
    required=True,
    envvar="TRUBRICS_FORWARD_TO",
    callback=lambda ctx, param, urls: _engine_urls(urls, ctx, param),
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
            urls,
            parent_pid=parent_pid,
            retention_s=retention_s,
            backoff_max_s=max_backoff_s,
        )


def _engine_urls(
    urls: tuple[str, ...],
    ctx: click.Context | None = None,
    param: click.Parameter | None = None,
) -> tuple[str, ...]:
    """The URLs as given once they parse and name distinct engines, or a usage error;
    with the parameter that brought them, a warning if that put a password in argv."""
    from .forward.forwarder import parse_sink_urls

    try:
        parsed = parse_sink_urls(urls)
    except SinkUrlError as exc:
        raise click.BadParameter(str(exc)) from None
    if ctx is not None and param is not None:
        _warn_if_password_in_argv(ctx, param, parsed)
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


@events_group.command(name="materialise", hidden=True)  # the server's own worker
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
