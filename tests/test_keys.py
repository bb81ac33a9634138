"""Projects and keys: the CLI, hashing, revocation, isolation, headless seeding."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from support.engines import free_port
from support.node import CLI, Node, cli, create_key
from trubrics_ingestion.errors import Unauthorized
from trubrics_ingestion.keys.cache import KeyTable
from trubrics_ingestion.keys.model import (
    KEY_PREFIX,
    ActiveKey,
    generate_key,
    hash_key,
    key_problem,
    weakness,
)

EVENT = {"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}


def test_key_format_is_prefixed_and_carries_256_random_bits() -> None:
    keys = {generate_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in keys:
        assert key.startswith(KEY_PREFIX) and re.fullmatch(r"trb_[A-Za-z0-9_-]{43}", key)
        assert key_problem(key) is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "Missing"),
        ("", "Empty"),
        ("   ", "Empty"),
        ("short", "Invalid"),
        ("x" * 257, "Invalid"),
        ("trb_has a space in it_0000", "Invalid"),
        ("trb_nul\x00character_000000", "Invalid"),
        ("trb_non_ascii_é_0000000000", "Invalid"),
    ],
)
def test_key_problem_names_the_reason(raw: str | None, reason: str) -> None:
    problem = key_problem(raw)
    assert problem is not None and problem.startswith(reason)


def test_only_the_hash_is_stored(tmp_path: Path) -> None:
    created = create_key(tmp_path, "demo")
    assert set(created) == {"project", "key", "id"} and created["project"] == "demo"
    raw = (tmp_path / "trubrics.db").read_bytes()
    assert created["key"].encode() not in raw
    digest = hashlib.sha256(created["key"].encode()).hexdigest()
    conn = sqlite3.connect(tmp_path / "trubrics.db")
    assert conn.execute("SELECT key_hash FROM api_keys").fetchall() == [(digest,)]
    listed = cli(tmp_path, "keys", "list").stdout
    assert created["id"] in listed and created["key"] not in listed


def test_store_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "private"
    create_key(data, "demo")
    assert data.stat().st_mode & 0o777 == 0o700
    assert (data / "trubrics.db").stat().st_mode & 0o777 == 0o600


def test_list_and_revoke(tmp_path: Path) -> None:
    first, second = create_key(tmp_path, "a"), create_key(tmp_path, "b")
    assert cli(tmp_path, "keys", "revoke", first["id"]).returncode == 0
    listed = [json.loads(line) for line in cli(tmp_path, "keys", "list", "--json").stdout.split()]
    assert [(k["id"], k["project"], k["state"]) for k in listed] == [
        (first["id"], "a", "revoked"),
        (second["id"], "b", "active"),
    ]
    again = cli(tmp_path, "keys", "revoke", first["id"], check=False)
    assert again.returncode != 0 and "no active key" in again.stderr


def test_revoked_key_stops_working_within_a_second(node: Node) -> None:
    assert node.post("/publish_events", [EVENT]).status_code == 200
    key_id = json.loads(node.cli("keys", "list", "--json").stdout)["id"]
    node.cli("keys", "revoke", key_id)
    deadline = time.monotonic() + 1.0
    while node.post("/publish_events", [EVENT]).status_code == 200:
        assert time.monotonic() < deadline, "revoked key still accepted after 1 s"
        time.sleep(0.05)
    assert node.post("/publish_events", [EVENT]).status_code == 401


def test_new_key_works_at_once_and_events_land_in_its_project(node: Node) -> None:
    other = create_key(node.data_dir, "other-project")
    assert node.post("/publish_events", [EVENT], key=other["key"]).status_code == 200
    assert node.post("/publish_events", [EVENT]).status_code == 200
    assert [e["project"] for e in node.export()] == ["other-project", node.project]
    assert len(node.export("--project", "other-project")) == 1


def test_init_env_seeds_a_project_and_key(make_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seeded = "trb_" + secrets.token_urlsafe(32)
    env = {"TRUBRICS_INIT_PROJECT": "headless", "TRUBRICS_INIT_API_KEY": seeded}
    node = make_node(env=env)
    assert node.post("/publish_events", [EVENT], key=seeded).status_code == 200
    assert node.export()[0]["project"] == "headless"
    node.stop()
    node.start()  # a second start with the same env must not duplicate the key
    listed = [json.loads(line) for line in node.cli("keys", "list", "--json").stdout.split()]
    (seeded_id,) = [key["id"] for key in listed if key["project"] == "headless"]
    assert len(listed) == 2 and seeded not in node.log()
    # A random id: one made of the key's hash would let a reader of the list test guesses.
    assert re.fullmatch(r"key_[0-9a-f]{12}", seeded_id)
    assert seeded_id != "key_" + hashlib.sha256(seeded.encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    "weak",
    [
        "aaaaaaaaaaaaaaaa",  # accepted by the old code
        "trb_seeded_" + "s" * 32,  # long, but four different characters
        "0123456789abcdef" * 2,  # 16 hex digits, twice
        "password-" * 4,
        "trb_" + secrets.token_hex(8),  # 64 random bits
    ],
)
def test_a_guessable_secret_is_refused_and_told_why(weak: str) -> None:
    problem = weakness(weak)
    assert problem is not None and "fewer than 128" in problem
    assert "could be guessed" in problem and "secrets.token_urlsafe(32)" in problem


def test_generated_secrets_are_strong_enough() -> None:
    """Every way of making one that the docs suggest, many times over: never refused."""
    for _ in range(2000):
        assert weakness(generate_key()) is None
        assert weakness("trb_" + secrets.token_urlsafe(32)) is None
        assert weakness(secrets.token_hex(16)) is None  # exactly 128 bits


def test_a_weak_init_key_stops_the_server_at_start(tmp_path: Path) -> None:
    weak = "aaaaaaaaaaaaaaaa"
    env = {**os.environ, "TRUBRICS_INIT_PROJECT": "p", "TRUBRICS_INIT_API_KEY": weak}
    port = str(free_port())
    started = subprocess.run(
        [*CLI, "serve", "--port", port, "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert started.returncode == 1, started.stderr
    (line,) = [json.loads(line) for line in started.stderr.splitlines() if "INIT" in line]
    assert line["level"] == "critical"
    assert "too weak" in line["msg"] and "offline" in line["msg"]
    assert "fewer than 128" in line["msg"] and "secrets.token_urlsafe" in line["msg"]
    assert weak not in started.stderr + started.stdout
    assert cli(tmp_path / "data", "keys", "list").stdout == ""  # nothing seeded


def test_rotation_without_downtime(node: Node) -> None:
    """Two live keys for a project, clients move to the new one, then the old one is revoked."""
    old_id = json.loads(node.cli("keys", "list", "--json").stdout)["id"]
    new = create_key(node.data_dir, node.project)
    for n, key in enumerate((node.key, new["key"])):
        assert node.post("/publish_events", [{**EVENT, "user_id": f"both-{n}"}], key=key).ok
    node.cli("keys", "revoke", old_id)
    deadline = time.monotonic() + 2
    while node.post("/publish_events", [{**EVENT, "user_id": "old"}]).status_code != 401:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert node.post("/publish_events", [{**EVENT, "user_id": "new"}], key=new["key"]).ok
    stored = node.export()
    assert {e["project"] for e in stored} == {node.project}
    assert [e["user_id"] for e in stored if e["user_id"] != "old"] == ["both-0", "both-1", "new"]


def test_wal_and_shm_files_are_private_too(node: Node) -> None:
    assert node.post("/publish_events", [EVENT]).ok
    for name in ("trubrics.db", "trubrics.db-wal", "trubrics.db-shm"):
        assert (node.data_dir / name).stat().st_mode & 0o777 == 0o600, name


def test_a_remembered_key_value_does_not_outlive_its_revocation() -> None:
    """The key cache's table remembers values found once (no hashing); a reload replaces it."""
    key = generate_key()
    active = ActiveKey(hash_key(key), "k1", "p")
    table = KeyTable([active])
    assert table.find(key) == active and table.find(key) == active  # hashed, then remembered
    assert table.find(f" {key} ") == active  # found (not remembered: one value per key)
    assert KeyTable([]).find(key) is None  # as after a reload without it
    with pytest.raises(Unauthorized):
        table.find("not a key")
