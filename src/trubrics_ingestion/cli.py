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
from typing import Any, Protocol, TypeVar, cast

import click
import msgspec
from click.core import ParameterSource

from . import keys
from .clock import parse_time
from .config import DEFAULTS, SETTINGS, Declared, Settings
from .keys.model import weakness
from .node import logs
from .store import read as events
from .store import sqlite as store
from .urls import SinkUrl, SinkUrlError, parse_sink_url, read_url_file

F = TypeVar("F", bound=Callable[..., Any])


class Closing(Protocol):
    """What a store the commands open must offer: closing it."""

    def close(self) -> None: ...


FROM_FILES = ("forward_to", "registry")  # URLs, which may hold a password
URL_FILE = click.Path(dir_okay=False, path_type=Path)
# Where a URL with a password can go instead of the command line, by parameter name.
_INSTEAD = {
    **{name: f"{SETTINGS[name].env} or {SETTINGS[name].flag}-file PATH" for name in FROM_FILES},
    "urls": SETTINGS["forward_to"].env,
    "url": "--url-file PATH",
}
ARGV_WARNINGS = "trubrics_ingestion.argv_warnings"  # in ctx.meta: for serve to log as JSON


def setting_option(name: str, *decls: str, env: bool = True, **parsing: Any) -> Callable[[F], F]:
    """The option of setting ``name``, its flag, environment variable, type, range, default
    and help all from its declaration in ``Settings``; ``decls`` (another flag, a parameter
    name) and ``parsing`` (click arguments) are for the few options parsed their own way."""
    declared = SETTINGS[name]
    flag = declared.flag
    if declared.type is bool:
        flag = f"{flag}/--no-{flag[2:]}"
    arguments: dict[str, Any] = {
        "type": _click_type(declared),
        "default": declared.default,
        "help": declared.help,
        "envvar": declared.env if env else None,
        "show_envvar": env,
    }
    return click.option(*(decls or (flag,)), **arguments | parsing)


def _click_type(declared: Declared) -> Any:
    """The click type of a setting, which checks its range or choices as it is given."""
    option = declared.option
    bounded = option.low is not None or option.high is not None
    if option.choices:
        return click.Choice(option.choices)
    if declared.type is int:
        low, high = (None if end is None else int(end) for end in (option.low, option.high))
        return click.IntRange(low, high) if bounded else int
    if declared.type is float:
        return click.FloatRange(option.low, option.high) if bounded else float
    if declared.type is Path:
        return click.Path(file_okay=False, path_type=Path)
    return declared.type if declared.type is bool else str


def _file_option(name: str, **parsing: Any) -> Callable[[F], F]:
    """``--NAME-file PATH`` (or ``TRUBRICS_NAME_FILE``): the setting from a file, out of argv."""
    declared = SETTINGS[name]
    return click.option(
        declared.flag + "-file",
        envvar=declared.env + "_FILE",
        show_envvar=True,
        help=declared.file_help,
        **parsing,
    )


data_dir_option = setting_option("data_dir")


def registry_option(command: F) -> F:
    """``--registry URL`` or ``--registry-file PATH``, given to ``command`` as ``registry``."""

    @functools.wraps(command)
    def with_registry(
        *args: Any, registry: str | None, registry_file: str | None, **kw: Any
    ) -> Any:
        return command(*args, registry=_one_registry(registry, registry_file), **kw)

    file_option = _file_option("registry", **_FILE_PARSING["registry"])
    url_option = setting_option("registry", **_PARSING["registry"])
    return url_option(file_option(cast(F, with_registry)))


def _one_registry(registry: str | None, registry_file: str | None) -> str | None:
    if registry and registry_file:
        raise click.UsageError("give --registry or --registry-file, not both")
    return registry or registry_file


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


def _comma_list(_ctx: click.Context, _param: click.Parameter, text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


# The options parsed their own way, by setting; declared (flag, help...) as all others.
_PARSING: dict[str, dict[str, Any]] = {
    "cors_origins": {
        "type": str,
        "default": ",".join(DEFAULTS.cors_origins),
        "callback": _comma_list,
    },
    "forward_to": {
        "multiple": True,
        "callback": lambda ctx, param, urls: _engine_urls(urls, ctx, param),
    },
    "registry": {"callback": _registry_url},
}
_FILE_PARSING: dict[str, dict[str, Any]] = {
    "forward_to": {
        "type": URL_FILE,
        "callback": lambda _ctx, _param, path: (
            () if path is None else _engine_urls(tuple(_urls_in(path)))
        ),
    },
    "registry": {"type": URL_FILE, "callback": lambda _ctx, _param, path: _registry_url_in(path)},
    "metrics_token": {"type": click.Path(exists=True, dir_okay=False, path_type=Path)},
}


def settings_options(command: F) -> F:
    """Every setting as an option of ``command``, in declaration order: a flag for each
    that argv may carry, a ``--NAME-file`` for each that may come from a file."""
    for declared in reversed(SETTINGS.values()):
        name = declared.name
        if declared.option.file:
            command = _file_option(name, **_FILE_PARSING[name])(command)
        if declared.option.flag:
            command = setting_option(name, **_PARSING.get(name, {}))(command)
    return command


@main.command()
@settings_options
def serve(**params: Any) -> None:
    """Serve the ingestion API."""
    from .node.server import serve as run  # imports uvicorn only for this command

    run(settings_of(params), warnings=click.get_current_context().meta.get(ARGV_WARNINGS, ()))


def settings_of(params: dict[str, Any]) -> Settings:
    """The settings ``serve``'s parsed options give, each ``--NAME-file`` joined to its
    flag's value, with those only the environment may hold (secrets kept out of argv)."""
    options = dict(params)
    from_env: dict[str, Any] = {
        d.name: os.environ.get(d.env) or None for d in SETTINGS.values() if not d.option.flag
    }
    token_file = options.pop("metrics_token_file")
    from_env["metrics_token"] = _metrics_token(token_file, from_env["metrics_token"])
    urls = _engine_urls((*options.pop("forward_to"), *options.pop("forward_to_file")))
    registry = _one_registry(options.pop("registry"), options.pop("registry_file"))
    return Settings(forward_to=urls, registry=registry, **from_env, **options)


def _metrics_token(path: Path | None, from_env: str | None) -> str | None:
    """The token from its file or ``TRUBRICS_METRICS_TOKEN``; never from the command line,
    which every user of the host can read (``ps``). A usage error if it is unfit."""
    if path is not None and from_env is not None:
        env = SETTINGS["metrics_token"].env
        raise click.UsageError(f"give --metrics-token-file or {env}, not both")
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
    envvar=SETTINGS["forward_to"].env,
    callback=lambda ctx, param, urls: _engine_urls(urls, ctx, param),
    help="Engine URL (repeatable; in the environment, space-separated).",
)
@setting_option("forward_retention_s", "--retention-s", env=False)
@setting_option("forward_max_backoff_s", "--max-backoff-s", env=False)
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
    _echo_listed(
        [
            {"id": k.id, "project": k.project, "hint": k.hint, **_state(k.revoked_at)}
            for k in listed
        ],
        as_json,
    )


def _state(revoked_at: int | None) -> dict[str, str]:
    return {"state": "active" if revoked_at is None else "revoked"}


def _echo_listed(records: list[dict[str, str]], as_json: bool) -> None:
    """One line per key or token: JSON, or its values separated by tabs."""
    for record in records:
        click.echo(_json(record) if as_json else "\t".join(record.values()))


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


def _keys_of(data_dir: Path, registry: str | None) -> contextlib.AbstractContextManager[Any]:
    """The key store the command acts on; an unreachable registry is a clear error."""
    return _used(_key_store(data_dir, registry))


@contextlib.contextmanager
def _used(store: Closing) -> Iterator[Any]:
    """``store`` (keys or console tokens), closed after use; an unreachable registry is
    a clear error."""
    try:
        yield store
    except keys.KeyStoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


@main.group(name="console")
def console_group() -> None:
    """Sign-in tokens of the console that serve offers at /console."""


def _tokens_of(data_dir: Path, registry: str | None) -> contextlib.AbstractContextManager[Any]:
    from .console.tokens import open_tokens

    return _used(open_tokens(registry, lambda: _open(data_dir)))


@console_group.command(name="token")
@click.option("--json", "as_json", is_flag=True, help='Print {"token": ..., "id": ...} as JSON.')
@data_dir_option
@registry_option
def console_token(as_json: bool, data_dir: Path, registry: str | None) -> None:
    """Create a console sign-in token; it is printed this once and only its SHA-256 is
    stored. Sign in at http://HOST:PORT/console with it."""
    with _tokens_of(data_dir, registry) as tokens:
        new = tokens.create()
    if as_json:
        click.echo(_json({"token": new.token, "id": new.id}))
    else:
        click.echo(f"Created console token {new.id}. Keep it secret:\n{new.token}")


@console_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per token.")
@data_dir_option
@registry_option
def console_list(as_json: bool, data_dir: Path, registry: str | None) -> None:
    """List console tokens (ids and hints, never secrets)."""
    with _tokens_of(data_dir, registry) as tokens:
        listed = tokens.list()
    _echo_listed([{"id": t.id, "hint": t.hint, **_state(t.revoked_at)} for t in listed], as_json)


@console_group.command(name="revoke")
@click.argument("token_id")
@data_dir_option
@registry_option
def console_revoke(token_id: str, data_dir: Path, registry: str | None) -> None:
    """Revoke a console token by id; its sessions end within seconds."""
    with _tokens_of(data_dir, registry) as tokens:
        revoked = tokens.revoke(token_id)
    if not revoked:
        raise click.ClickException(f"no active console token with id {token_id!r}")
    click.echo(f"Revoked {token_id}.")


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
    found = events.export_batches(
        _open(data_dir), project=project, since=since, until=until, on_unreadable=skipped
    )
    chunks = events.to_csv_chunks(found) if fmt == "csv" else map(events.to_ndjson_lines, found)
    for chunk in chunks:  # a stored batch's events a write, flushed
        click.echo(chunk, nl=False)
    _fail_if_skipped(skipped)


@events_group.command(name="tail")
@click.option("--project", help="Only this project.")
@data_dir_option
def events_tail(project: str | None, data_dir: Path) -> None:
    """Follow new events as NDJSON until interrupted (an unreadable stored event is skipped
    and named on stderr, as by export)."""
    skipped = events.Skipped()
    try:
        for records in events.tail(_open(data_dir), project=project, on_unreadable=skipped):
            click.echo(events.to_ndjson_lines(records), nl=False)
    except KeyboardInterrupt:
        pass
    _fail_if_skipped(skipped)


def _fail_if_skipped(skipped: events.Skipped) -> None:
    if skipped.count:
        raise click.ClickException(
            f"{skipped.count} stored batch(es) could not be read and were skipped (see above)."
        )
