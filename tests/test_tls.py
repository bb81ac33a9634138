"""TLS to the engines, verified: PostgreSQL through libpq's URL parameters (``sslmode``,
``sslrootcert``...), ClickHouse over HTTPS (``clickhouses://``, ``ca_cert``).

A CA made by the test signs the servers' certificates for 127.0.0.1; the PostgreSQL
server accepts TCP connections over TLS only, ClickHouse 18.16 serves HTTPS next to HTTP.
A client without that CA must refuse to talk: verification is on by default.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.engines import (
    ClickHouseCluster,
    EngineError,
    PostgresServer,
    TlsFiles,
    make_tls_files,
    require_engines,
)
from support.node import CLI, Node
from support.waiting import wait_until
from trubrics_ingestion import pg
from trubrics_ingestion.forward import parse_sink_url

EVENT = {"event": "e", "timestamp": "2026-06-20T12:00:00Z"}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign the servers' certificates."""
    return make_tls_files(tmp_path_factory.mktemp("other"), name="someone else").ca


@pytest.fixture(scope="module")
def postgres_tls(tls: TlsFiles) -> Iterator[PostgresServer]:
    require_engines()
    with PostgresServer(tls=tls) as server:
        yield server


@pytest.fixture(scope="module")
def clickhouse_tls(tls: TlsFiles) -> Iterator[ClickHouseCluster]:
    require_engines()
    with ClickHouseCluster(shards=1, tls=tls) as cluster:
        yield cluster


def pg_url(server: PostgresServer, query: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{server.port}/postgres?{query}"


def migrate(url: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``migrate URL`` with an empty HOME: no ~/.postgresql/root.crt to fall back on."""
    return subprocess.run(
        [*CLI, "migrate", url],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
    )


def test_postgres_verify_full_with_the_url_s_root_certificate(
    postgres_tls: PostgresServer, tls: TlsFiles, other_ca: Path, tmp_path: Path
) -> None:
    good = migrate(pg_url(postgres_tls, f"sslmode=verify-full&sslrootcert={tls.ca}"), tmp_path)
    assert good.returncode == 0 and "schema up to date" in good.stdout, good.stderr
    wrong_ca = migrate(
        pg_url(postgres_tls, f"sslmode=verify-full&sslrootcert={other_ca}"), tmp_path
    )
    assert wrong_ca.returncode == 1 and "certificate verify failed" in wrong_ca.stderr
    no_ca = migrate(pg_url(postgres_tls, "sslmode=verify-full"), tmp_path)
    assert no_ca.returncode == 1 and "root certificate file" in no_ca.stderr
    plain = migrate(pg_url(postgres_tls, "sslmode=disable"), tmp_path)
    assert plain.returncode == 1 and "no encryption" in plain.stderr  # hostssl only


def test_postgres_parameters_override_our_defaults_and_keep_our_timeout(
    postgres_tls: PostgresServer, tls: TlsFiles
) -> None:
    query = (
        f"sslmode=verify-full&sslrootcert={tls.ca}&application_name=node-7&connect_timeout=3"
        "&options=-c%20work_mem%3D5MB"
    )
    url = parse_sink_url(pg_url(postgres_tls, query))
    with pg.connect(url, application="trubrics-test", statement_timeout_ms=4321) as conn:
        row = conn.execute(
            "SELECT current_setting('application_name'), current_setting('work_mem'),"
            " current_setting('statement_timeout'), ssl FROM pg_stat_ssl"
            " WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row == ("node-7", "5MB", "4321ms", True)


def test_clickhouse_https_verified_against_the_url_s_ca(
    clickhouse_tls: ClickHouseCluster, tls: TlsFiles, other_ca: Path, tmp_path: Path
) -> None:
    url = clickhouse_tls.https_url
    good = migrate(f"{url}&ca_cert={tls.ca}", tmp_path)
    assert good.returncode == 0 and "clickhouses://" in good.stdout, good.stderr
    port = clickhouse_tls.nodes[0].https_port
    by_parameter = f"clickhouse://127.0.0.1:{port}/default?secure=1&ca_cert={tls.ca}"
    assert migrate(by_parameter, tmp_path).returncode == 0
    for refused in (url, f"{url}&ca_cert={other_ca}"):  # the system's CAs; another CA
        out = migrate(refused, tmp_path)
        assert out.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in out.stderr, out.stderr
    missing = migrate(f"{url}&ca_cert={tmp_path / 'absent.pem'}", tmp_path)
    assert missing.returncode == 1 and "FileNotFoundError" in missing.stderr


def test_serve_forwards_to_both_engines_over_verified_tls(
    make_node,  # type: ignore[no-untyped-def]
    postgres_tls: PostgresServer,
    clickhouse_tls: ClickHouseCluster,
    tls: TlsFiles,
) -> None:
    pg_tls = pg_url(postgres_tls, f"sslmode=verify-full&sslrootcert={tls.ca}")
    ch_tls = f"{clickhouse_tls.https_url}&ca_cert={tls.ca}"
    node: Node = make_node(env={"TRUBRICS_FORWARD_TO": f"{pg_tls} {ch_tls}"})
    batch = [{**EVENT, "user_id": f"tls-{i}"} for i in range(50)]
    assert node.post("/publish_events", batch).status_code == 200
    pg_count = "SELECT count(*) FROM events WHERE user_id LIKE 'tls-%'"
    ch_count = "SELECT count() FROM events FINAL WHERE user_id LIKE 'tls-%'"

    wait_until(lambda: _count(postgres_tls.psql, pg_count) == "50", log=node.log(), poll_s=0.2)
    wait_until(lambda: _count(clickhouse_tls.query, ch_count) == "50", log=node.log(), poll_s=0.2)
    assert "CERTIFICATE_VERIFY_FAILED" not in node.log()


def _count(query: Callable[[str], str], sql: str) -> str:
    """The count, or "" while the forwarder has not created the table yet."""
    try:
        return query(sql).strip()
    except EngineError:
        return ""
