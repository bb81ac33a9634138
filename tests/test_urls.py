"""Engine URLs on their own: redaction of text that may not parse, libpq's parameters,
ClickHouse over HTTPS, cursor ids that stay put, and files of URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from trubrics_ingestion.urls import SinkUrlError, parse_sink_url, read_url_file, redact

# A password with every character a URL parser splits on, unencoded.
UNENCODED = [
    ("postgresql://user:pa/ss@host/db", "postgresql://***@host/db"),
    ("postgresql://user:pa#ss@host:5433/db", "postgresql://***@host:5433/db"),
    ("postgresql://user:pa?ss@host/db", "postgresql://***@host/db"),
    ("postgres://user:p@a/s#s?x@host/db", "postgres://***@host/db"),
    ("clickhouse://default:123#pass@ch1/db", "clickhouse://***@ch1/db"),
    ("clickhouse://default:12/34@ch1:8123/db", "clickhouse://***@ch1:8123/db"),
]


@pytest.mark.parametrize(("text", "masked"), UNENCODED)
def test_redact_masks_everything_between_the_scheme_and_the_last_at(text: str, masked: str) -> None:
    assert redact(text) == masked


def test_redact_masks_without_a_scheme_and_password_parameters() -> None:
    assert redact("  user:pa/ss@host/db ") == "***@host/db"
    assert redact("postgresql://u@h/db?sslpassword=k3y&sslmode=require&password=pw") == (
        "postgresql://***@h/db?sslpassword=***&sslmode=require&password=***"
    )
    assert redact("clickhouse://ch1:8123/db") == "clickhouse://ch1:8123/db"


@pytest.mark.parametrize(("text", "masked"), UNENCODED)
def test_an_unencoded_password_is_refused_without_being_echoed(text: str, masked: str) -> None:
    with pytest.raises(SinkUrlError) as error:
        parse_sink_url(text)
    message = str(error.value)
    assert masked in message and "percent-encode" in message
    for piece in ("pa", "ss", "123", "pass", "12/34"):
        assert piece not in message.replace(masked, "").replace("password", "")


def test_a_bad_port_is_not_quoted_it_may_be_a_password() -> None:
    for text in ("postgresql://user:hunter2", "clickhouse://u:pw@host:hunter2/db"):
        with pytest.raises(SinkUrlError) as error:
            parse_sink_url(text)
        assert "bad port" in str(error.value) and "hunter2" not in str(error.value)


def test_postgres_urls_pass_libpq_parameters_and_keep_their_cursor() -> None:
    text = (
        "postgresql://ingest:pw@db:6543/analytics?sslmode=verify-full&sslrootcert=/etc/ca.pem"
        "&connect_timeout=3&application_name=node-1&target_session_attrs=read-write"
        "&options=-c%20work_mem%3D8MB&passfile=/run/pgpass"
    )
    url = parse_sink_url(text)
    assert dict(url.libpq) == {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ca.pem",
        "connect_timeout": "3",
        "application_name": "node-1",
        "target_session_attrs": "read-write",
        "options": "-c work_mem=8MB",
        "passfile": "/run/pgpass",
    }
    assert url.id == "postgresql://db:6543/analytics"  # as without the parameters
    assert url.display == "postgresql://ingest:***@db:6543/analytics"
    assert url.carries_secret and not parse_sink_url("postgresql://u@h/d").carries_secret
    assert parse_sink_url("postgresql://u@h/d?sslpassword=k").carries_secret


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("sslmdoe=require", "unknown parameter(s) ['sslmdoe']"),
        ("host=elsewhere", "['host']"),
        ("dbname=other", "['dbname']"),
        ("service=prod", "['service']"),
        ("password=hunter2", "PGPASSWORD"),
        ("sslmode=require&sslmode=disable", "given twice"),
        ("cluster=c", "unknown parameter(s) ['cluster']"),
    ],
)
def test_postgres_refuses_typos_and_parameters_naming_another_destination(
    query: str, said: str
) -> None:
    with pytest.raises(SinkUrlError) as error:
        parse_sink_url(f"postgresql://u@h/db?{query}")
    assert said in str(error.value) and "hunter2" not in str(error.value)


def test_clickhouse_over_https_by_scheme_or_parameter() -> None:
    by_scheme = parse_sink_url("clickhouses://u:pw@ch1/db?cluster=main&ca_cert=/etc/ca.pem")
    assert (by_scheme.secure, by_scheme.port, by_scheme.ca_cert) == (True, 8443, "/etc/ca.pem")
    assert by_scheme.display == "clickhouses://u:***@ch1:8443/db?cluster=main"
    assert by_scheme.id == "clickhouse://ch1:8443/db?cluster=main"
    by_parameter = parse_sink_url("clickhouse://ch1:9443/db?secure=1")
    assert (by_parameter.secure, by_parameter.port, by_parameter.ca_cert) == (True, 9443, None)
    plain = parse_sink_url("clickhouse://ch1/db?secure=false")
    assert (plain.secure, plain.port) == (False, 8123)
    for bad in (
        "clickhouses://ch1/db?secure=0",
        "clickhouse://ch1/db?secure=maybe",
        "clickhouse://ch1/db?ca_cert=/etc/ca.pem",  # a CA for plain HTTP: a mistake
        "clickhouse://ch1/db?sslmode=require",
    ):
        with pytest.raises(SinkUrlError):
            parse_sink_url(bad)


def test_cursor_ids_of_existing_urls_do_not_change() -> None:
    """Forwarding cursors are keyed by these: a change would redeliver everything."""
    assert parse_sink_url("postgresql://u:p@db/analytics").id == "postgresql://db:5432/analytics"
    assert parse_sink_url("postgres://u@[::1]:6000/x").id == "postgresql://[::1]:6000/x"
    assert parse_sink_url("clickhouse://ch1").id == "clickhouse://ch1:8123/default"
    assert (
        parse_sink_url("clickhouse://u:p@ch1:8124/db?cluster=c").id
        == "clickhouse://ch1:8124/db?cluster=c"
    )


def test_url_files_hold_urls_one_a_line(tmp_path: Path) -> None:
    path = tmp_path / "urls"
    path.write_text("# engines\n\npostgresql://u:pw@db/a\n  clickhouses://ch1/db  \n")
    path.chmod(0o600)
    assert read_url_file(path) == ["postgresql://u:pw@db/a", "clickhouses://ch1/db"]


def test_a_url_file_with_a_password_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "urls"
    path.write_text("clickhouse://ch1/db\npostgresql://u:hunter2@db/a\n")
    path.chmod(0o640)
    with pytest.raises(SinkUrlError) as error:
        read_url_file(path)
    assert "chmod 600" in str(error.value) and "hunter2" not in str(error.value)
    path.write_text("postgresql://u@db/a\n")  # no password: nothing to hide
    assert read_url_file(path) == ["postgresql://u@db/a"]


def test_a_missing_or_empty_url_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SinkUrlError, match=r"cannot read URLs from .*No such file"):
        read_url_file(tmp_path / "absent")
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(SinkUrlError, match="no URL in"):
        read_url_file(tmp_path / "empty")
