"""Engine passwords stay secret: never echoed (even from a URL that does not parse), kept
out of every process's command line when given in the environment or in files, warned
about when given on the command line, found by libpq in .pgpass, and not handed to child
processes that do not need them.

Real CLI runs, a real ``serve`` with its real children (read through ``/proc``), and a
real PostgreSQL that asks for a password (scram-sha-256).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.engines import PostgresServer, require_engines
from support.node import CLI, Node, create_key
from support.processes import children_of
from support.waiting import wait_until

PASSWORD = "Sup3r-s3cret"  # the ingest role's: must appear in no output, argv or child env
BROKEN = "pa/ss#wo?rd"  # unencoded: no parser sees it whole
EVENT = {"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """``postgres`` trusted (for the test's own checks), every other role by password."""
    require_engines()
    hba = [
        "local all all trust",
        "host all postgres 127.0.0.1/32 trust",
        "host all all 127.0.0.1/32 scram-sha-256",
    ]
    with PostgresServer(hba=hba) as server:
        server.psql(f"CREATE ROLE ingest LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
        yield server


def ingest_url(server: PostgresServer, password: str | None = PASSWORD, query: str = "") -> str:
    secret = f":{password}" if password is not None else ""
    return f"postgresql://ingest{secret}@127.0.0.1:{server.port}/postgres{query}"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def secret_file(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    path.chmod(0o600)
    return path


# --- item 4: never echoed --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://user:{BROKEN}@db.internal/analytics",
        f"postgresql://user:{BROKEN}@db.internal:5433/analytics?sslmode=require",
        f"clickhouse://default:{BROKEN}@ch1:8123/default",
        "postgresql://user:pa/ss@host/db",
    ],
)
def test_no_command_echoes_a_password_it_cannot_parse(url: str, tmp_path: Path) -> None:
    runs = [
        run("keys", "list", "--registry", url),
        run("migrate", url),
        run("serve", "--data-dir", str(tmp_path), "--forward-to", url),
        run("forward", "--to", url, "--data-dir", str(tmp_path)),
    ]
    for out in runs:
        shown = out.stdout + out.stderr
        assert out.returncode == 2, shown
        assert "percent-encode" in shown and "://***@" in shown
        for piece in ("pa/ss", "wo?rd", "ss#wo", "pa", "rd@"):
            assert piece not in shown.replace("password", ""), shown


# --- item 5: out of argv, warned about, out of the children's environment ---------------------


def test_a_password_on_the_command_line_is_warned_about_never_shown(
    postgres: PostgresServer,
) -> None:
    out = run("keys", "list", "--registry", ingest_url(postgres))
    assert out.returncode == 0, out.stderr
    assert "--registry" in out.stderr and "TRUBRICS_REGISTRY" in out.stderr
    assert "PGPASSFILE" in out.stderr and PASSWORD not in out.stdout + out.stderr
    quiet = run("keys", "list", env={"TRUBRICS_REGISTRY": ingest_url(postgres)})
    assert quiet.returncode == 0 and quiet.stderr == ""  # from the environment: fine


def test_libpq_finds_the_password_in_a_password_file(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    pgpass = secret_file(tmp_path / "pgpass", f"127.0.0.1:{postgres.port}:*:ingest:{PASSWORD}")
    no_home = {"HOME": str(tmp_path), "PGPASSFILE": str(tmp_path / "absent")}
    refused = run("keys", "list", "--registry", ingest_url(postgres, None), env=no_home)
    assert refused.returncode == 1 and "password" in refused.stderr
    by_env = {**no_home, "PGPASSFILE": str(pgpass)}
    assert run("keys", "list", "--registry", ingest_url(postgres, None), env=by_env).returncode == 0
    by_url = ingest_url(postgres, None, f"?passfile={pgpass}")
    out = run("keys", "create", "--project", "p", "--registry", by_url, env=no_home)
    assert out.returncode == 0 and out.stderr == "", out.stderr  # no password: no warning
    (tmp_path / ".pgpass").write_bytes(pgpass.read_bytes())
    (tmp_path / ".pgpass").chmod(0o600)
    home = {"HOME": str(tmp_path)}
    assert run("keys", "list", "--registry", ingest_url(postgres, None), env=home).returncode == 0


def test_urls_in_files_reach_the_engines_and_no_process_s_arguments(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    registry = secret_file(tmp_path / "registry", ingest_url(postgres))
    engines = secret_file(tmp_path / "engines", "# where events go", ingest_url(postgres))
    made = run("keys", "create", "--project", "files", "--json", "--registry-file", str(registry))
    assert made.returncode == 0 and made.stderr == "", made.stderr
    key = json.loads(made.stdout)["key"]
    migrated = run("migrate", "--url-file", str(registry))
    assert migrated.returncode == 0 and migrated.stderr == "", migrated.stderr
    args = ("--registry-file", str(registry), "--forward-to-file", str(engines))
    node = Node(data_dir=tmp_path / "node", key=key, project="files", args=args).start()
    try:
        batch = [{**EVENT, "user_id": f"from-files-{i}"} for i in range(20)]
        assert node.post("/publish_events", batch).status_code == 200  # key from the registry
        count = "SELECT count(*) FROM events WHERE user_id LIKE 'from-files-%'"
        wait_until(lambda: postgres.psql(count).strip() == "20", what="forwarding", log=node.log())
        assert node.process is not None
        for pid in [node.process.pid, *children_of(node.process.pid)]:
            assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert "password" not in node.log() and PASSWORD not in node.log()
    finally:
        node.stop()


def test_serve_warns_of_argv_passwords_and_children_get_only_what_they_need(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    key = create_key(data_dir, "argv")["key"]
    env = {
        "TRUBRICS_INIT_PROJECT": "seeded",
        "TRUBRICS_INIT_API_KEY": "trb_" + secrets.token_urlsafe(32),
        "TRUBRICS_MAX_DEPTH": "9",
        "PGPASSWORD": "libpq-reads-it",
    }
    args = ("--forward-to", ingest_url(postgres))
    assert run("migrate", "--url-file", str(secret_file(tmp_path / "u", args[1]))).returncode == 0
    node = Node(data_dir=data_dir, key=key, project="argv", env=env, args=args).start()
    try:
        assert node.process is not None
        server = node.process.pid
        wait_until(lambda: len(children_of(server)) == 1, what="the forwarder", log=node.log())
        forwarders = children_of(server, b"\0forward\0")
        assert len(forwarders) == 1
        forwarder_env = environ(forwarders[0])
        assert {name for name in forwarder_env if name.startswith("TRUBRICS_")} == {
            "TRUBRICS_FORWARD_TO"
        }
        assert forwarder_env["PGPASSWORD"] == "libpq-reads-it"  # libpq's, if used
        assert "PATH" in forwarder_env
        assert PASSWORD.encode() not in Path(f"/proc/{forwarders[0]}/cmdline").read_bytes()
        warnings = [
            line
            for line in map(json.loads, node.log().splitlines())
            if line["level"] == "warning" and "--forward-to" in line["msg"]
        ]
        assert len(warnings) == 1 and "--forward-to-file" in warnings[0]["msg"]
        assert PASSWORD not in node.log()
        assert node.post("/publish_events", [EVENT]).status_code == 200
        count = "SELECT count(*) FROM events WHERE user_id = 'u'"
        wait_until(lambda: postgres.psql(count).strip() != "0", what="forwarding", log=node.log())
    finally:
        node.stop()


def environ(pid: int) -> dict[str, str]:
    """A process's environment as it started (``/proc/PID/environ``)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(entry.split("=", 1) for entry in raw.split("\0") if "=" in entry)
