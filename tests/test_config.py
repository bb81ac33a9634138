"""Every setting is declared once in ``Settings``: the CLI, the README, the startup line and
the lower layers' defaults all follow that declaration."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest

from support.node import CLI
from trubrics_ingestion import cli
from trubrics_ingestion.config import DEFAULTS, SETTINGS, Declared, Settings, shown
from trubrics_ingestion.forward import forwarder
from trubrics_ingestion.keys.cache import KeyCache
from trubrics_ingestion.node import logs
from trubrics_ingestion.store.journal import Journal

README = Path(__file__).resolve().parent.parent / "README.md"
TOKEN = "trb_" + "k3Yq9vB2xR7mN4pL8sT1wZ6cF0hJ5dG"  # 128 bits and more, not weak
# Values other than the default for the settings a number or a choice cannot stand for.
SAMPLES: dict[str, str] = {
    "host": "0.0.0.0",
    "data_dir": "elsewhere",
    "cors_origins": "https://a.example,https://b.example",
    "registry": "postgresql://keys@db.internal:5432/registry",
    "init_project": "seeded",
    "init_api_key": TOKEN,
    "forward_to": "postgresql://ingest@db.internal:5432/analytics",
    "metrics_token": TOKEN,
}
EXPECTED: dict[str, Any] = {
    "data_dir": Path("elsewhere"),
    "cors_origins": ("https://a.example", "https://b.example"),
    "forward_to": (SAMPLES["forward_to"],),
}


@pytest.fixture(autouse=True)
def _no_trubrics_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: a TRUBRICS_* variable of the caller's would change defaults."""
    for declared in SETTINGS.values():
        monkeypatch.delenv(declared.env, raising=False)
        monkeypatch.delenv(declared.env + "_FILE", raising=False)


def serve_context(*args: str) -> click.Context:
    """``trubrics-ingestion serve ARGS`` parsed by click, under the group as when run."""
    group = cli.main.make_context("trubrics-ingestion", ["serve", *args])
    return cli.serve.make_context("serve", list(args), parent=group)


def parsed(*args: str) -> Settings:
    """What ``serve`` would run with."""
    with serve_context(*args) as ctx:
        return cli.settings_of(ctx.params)


def sample(declared: Declared) -> tuple[str, Any]:
    """A value other than the default, as text and as the setting then holds it."""
    if declared.name in SAMPLES:
        text = SAMPLES[declared.name]
        return text, EXPECTED.get(declared.name, text)
    option = declared.option
    if option.choices:
        value: Any = next(c for c in option.choices if c != declared.default)
    elif declared.type is bool:
        value = not declared.default
    elif option.low is not None and option.low != declared.default:
        value = declared.type(option.low)
    else:
        value = declared.type((declared.default or 0) + 1)
    return str(value).lower() if isinstance(value, bool) else str(value), value


def options_of(command: click.Command) -> dict[str, click.Option]:
    return {p.opts[0]: p for p in command.params if isinstance(p, click.Option)}


def readme_rows() -> list[str]:
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ")]


def test_without_flags_or_environment_serve_runs_with_the_declared_defaults() -> None:
    assert parsed() == DEFAULTS


@pytest.mark.parametrize("declared", SETTINGS.values(), ids=lambda d: d.name)
def test_every_setting_can_be_given_in_its_environment_variable(
    declared: Declared, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, value = sample(declared)
    assert getattr(DEFAULTS, declared.name) != value
    monkeypatch.setenv(declared.env, text)
    assert getattr(parsed(), declared.name) == value


@pytest.mark.parametrize(
    "declared", [d for d in SETTINGS.values() if d.option.flag], ids=lambda d: d.name
)
def test_every_flag_is_the_setting_name_with_its_env_var_and_declared_default(
    declared: Declared,
) -> None:
    text, value = sample(declared)
    flag = f"--{'no-' if value is False else ''}{declared.flag[2:]}"
    given = [flag] if isinstance(value, bool) else [declared.flag, text]
    assert getattr(parsed(*given), declared.name) == value
    option = options_of(cli.serve)[declared.flag]
    assert option.envvar == declared.env and option.show_envvar
    with serve_context() as ctx:
        record = option.get_help_record(ctx)
    assert record is not None and f"env var: {declared.env}" in record[1]
    if declared.default not in (None, ()):
        default = declared.default
        default = ",".join(default) if isinstance(default, tuple) else default
        if isinstance(default, bool):  # click shows a switch's default as its flag
            default = declared.flag[2:] if default else "no-" + declared.flag[2:]
        assert f"default: {default}" in record[1]


def test_secrets_stay_out_of_argv() -> None:
    flags = options_of(cli.serve)
    for declared in SETTINGS.values():
        if not declared.option.flag:
            assert declared.flag not in flags
            assert declared.option.secret or declared.name.startswith("init_")


def test_every_option_of_serve_is_a_declared_setting_or_its_file() -> None:
    flags = set(options_of(cli.serve)) - {"--help"}
    declared = {d.flag for d in SETTINGS.values() if d.option.flag}
    files = {d.flag + "-file" for d in SETTINGS.values() if d.option.file}
    assert flags == declared | files
    for declared_setting in SETTINGS.values():
        if declared_setting.option.file:
            option = options_of(cli.serve)[declared_setting.flag + "-file"]
            assert option.envvar == declared_setting.env + "_FILE"


def test_every_flag_and_environment_variable_has_a_readme_row() -> None:
    rows = readme_rows()
    missing = []
    for declared in SETTINGS.values():
        names = [declared.env]
        if declared.option.flag:
            names.append(declared.flag)
        if declared.option.file:
            names += [declared.flag + "-file", declared.env + "_FILE"]
        for name in names:  # `--forward-to URL`, `TRUBRICS_FORWARD_TO` (space-separated)
            if not any(re.search(f"`{re.escape(name)}[` ]", row) for row in rows):
                missing.append(name)
    assert missing == []


def test_serve_help_lists_every_documented_flag() -> None:
    help_text = subprocess.run(
        [*CLI, "serve", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    documented = {f for row in readme_rows() for f in re.findall(r"`(--[a-z-]+)", row)}
    assert len(documented) >= len([d for d in SETTINGS.values() if d.option.flag])
    assert sorted(f for f in documented if f not in help_text) == []


def test_the_startup_line_shows_every_setting_but_no_secret() -> None:
    secret = "s3cr3t-in-a-url"
    settings = Settings(
        init_project="p",
        init_api_key=TOKEN,
        metrics_token=TOKEN + "x",
        registry=f"postgresql://keys:{secret}@db:5432/registry",
        forward_to=(f"postgresql://ingest:{secret}@db:5432/analytics",),
    )
    groups = shown(settings)
    logged = json.dumps(groups)
    assert TOKEN not in logged and secret not in logged
    assert TOKEN not in repr(settings) and secret not in repr(settings)
    named = {name for group in groups.values() for name in group}
    assert named == {d.name for d in SETTINGS.values()} - {"init_api_key"}
    assert groups["keys"]["registry"] == "postgresql://keys:***@db:5432/registry"
    assert groups["metrics"]["metrics_token"] == "token"


def test_lower_layers_default_to_the_declared_settings() -> None:
    """Library defaults where tests and tools need one, each equal to Settings'."""

    def default(function: Any, name: str) -> Any:
        return inspect.signature(function).parameters[name].default

    assert default(Journal, "dedup_window_s") == DEFAULTS.dedup_window_s
    assert default(Journal, "dedup_max_entries") == DEFAULTS.dedup_max_entries
    assert default(KeyCache, "refresh_interval_s") == DEFAULTS.key_refresh_interval_s
    assert forwarder.Backoff().max_s == DEFAULTS.forward_max_backoff_s
    for function in (forwarder.Forwarder, forwarder.run_forever):
        assert default(function, "backoff_max_s") == DEFAULTS.forward_max_backoff_s
    assert default(logs.configure, "level") == DEFAULTS.log_level
    forward_options = options_of(cli.forward)
    assert forward_options["--max-backoff-s"].default == DEFAULTS.forward_max_backoff_s
    assert forward_options["--retention-s"].default == DEFAULTS.forward_retention_s
    assert options_of(cli.keys_create)["--data-dir"].default == DEFAULTS.data_dir
