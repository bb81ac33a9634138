"""The ClickHouse schema and the README's example queries on both ClickHouse lines we
support, Debian's 18.16 (a real 2-shard cluster) and current ClickHouse (26.x, in-process
through chdb), and the PostgreSQL versions of the same queries on a real PostgreSQL.

The queries are read from README.md's "Querying the events" section, so the documented
queries are exactly the tested ones. The events enter the node's store the real way
(journaled batches, expanded as the forwarder reads them) and reach each engine in the sink's own
encoding, with redelivered duplicates.

chdb runs ClickHouse inside this process, without a server: it cannot reach the sink's HTTP
path (``ClickHouseSink.migrate()`` and ``send()``). So in chdb the tables are created with
``ddl_statements()``, the DDL ``migrate()`` issues for that server version, and the rows
are inserted as ``encode_json_lines()`` encodes them, with the sink's INSERT settings;
on 18.16 the real sink does both over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from support.engines import ClickHouseCluster, PostgresServer, send_rows
from support.store import journal
from trubrics_ingestion.clock import format_time
from trubrics_ingestion.forward import open_sink, parse_sink_url
from trubrics_ingestion.forward.clickhouse import (
    DATETIME64_SPAN,
    DATETIME_SPAN,
    ClickHouseSink,
    ddl_statements,
    encode_json_lines,
    insert_settings,
    server_version,
    span_of,
    time_type,
)
from trubrics_ingestion.forward.sink import Columns, Row
from trubrics_ingestion.schema import Source
from trubrics_ingestion.store import batches
from trubrics_ingestion.store.codec import LZ4, pack
from trubrics_ingestion.store.read import rows as rows_of
from trubrics_ingestion.store.sqlite import connect

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Querying the events"
QUERIES = (
    "events per day per project",
    "a conversation thread, in order",
    "LLM latency percentiles per model, in seconds",
)
DATABASE = "trubrics"


# --- the README's queries --------------------------------------------------------------------


def readme_queries() -> dict[str, dict[str, str]]:
    """``{"clickhouse": {name: sql}, "postgresql": {name: sql}}`` from the section's two
    ``sql`` blocks (ClickHouse first), each holding the three queries, each query headed by
    a ``-- name`` comment and ended by ``;``."""
    text = README.read_text()
    assert text.count(SECTION) == 1
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "expected one ClickHouse and one PostgreSQL block"
    found = {}
    for engine, block in zip(("clickhouse", "postgresql"), blocks, strict=True):
        statements = [s.strip() for s in block.split(";") if s.strip()]
        names = [s.splitlines()[0].removeprefix("-- ") for s in statements]
        assert names == list(QUERIES), names
        found[engine] = dict(zip(QUERIES, statements, strict=True))
    assert all("FINAL" in sql for sql in found["clickhouse"].values())
    return found


# --- the events ------------------------------------------------------------------------------

# 51 latencies, multiples of 1/4 s: each percentile is then exact in binary floating point
# (p50, p90, p99 fall on values 25, 45 and midway between 49 and 50, counted from 0), where
# otherwise the engines' interpolations, a + f(b - a) or (1 - f)a + fb, differ in the last bit.
GPT_LATENCIES = [((k * 7) % 51 + 1) / 4 for k in range(51)]  # the first two in thread_abc
CLAUDE_LATENCIES = [1.5]
THREAD = "thread_abc"
DEMO_EVENTS = [
    {"user_id": "u1", "event": "Sign up", "timestamp": "2026-06-20T09:15:00.25Z"},
    {"user_id": "u2", "event": "Log in", "timestamp": "2026-06-20T23:59:59.999999Z"},
    {"user_id": "u1", "event": "Log in", "timestamp": "2026-06-21T00:00:00Z"},
    {
        "user_id": "u1",
        "event": "Thumbs up",
        "timestamp": "2026-06-21T10:00:03.5Z",
        "properties": {"$thread_id": THREAD},
    },
    # outside June: not counted per day
    {"user_id": "u3", "event": "Sign up", "timestamp": "2026-05-31T23:59:59.999999Z"},
    {"user_id": "u4", "event": "Sign up", "timestamp": "2026-07-01T00:00:00Z"},
    {"user_id": "u5", "event": "moon landing", "timestamp": "1969-07-20T20:17:40.5Z"},
    {"user_id": "u5", "event": "far future", "timestamp": "9999-12-31T23:59:59.999999Z"},
]
# thread_abc: the first generation 0.25 s after its prompt, both within one second (18.16
# orders them by id), then a thumbs up (above), then a second turn.
DEMO_LLM: list[dict[str, Any]] = [
    {
        "user_id": "u1",
        "prompt": "Hi?",
        "generation": "Hello!",
        "assistant_id": "gpt-4o",
        "latency": GPT_LATENCIES[0],
        "timestamp": "2026-06-21T10:00:01.9Z",
        "thread_id": THREAD,
    },
    {
        "user_id": "u1",
        "prompt": "And?",
        "generation": "That is all.",
        "assistant_id": "gpt-4o",
        "latency": GPT_LATENCIES[1],
        "timestamp": "2026-06-21T10:00:06.25Z",
        "thread_id": THREAD,
    },
    *(
        {
            "user_id": "u2",
            "prompt": f"q{i}",
            "generation": f"a{i}",
            "assistant_id": model,
            "latency": latency,
            "timestamp": f"2026-06-20T14:00:{10 + i:02d}Z",
        }
        for i, (model, latency) in enumerate(
            [("gpt-4o", s) for s in GPT_LATENCIES[2:]] + [("claude-3", s) for s in CLAUDE_LATENCIES]
        )
    ),
    # no latency: not in the percentiles
    {
        "user_id": "u2",
        "prompt": "q",
        "generation": "a",
        "assistant_id": "gpt-4o",
        "timestamp": "2026-06-20T15:00:00Z",
    },
]
OTHER_EVENTS = [{"user_id": "u9", "event": "Sign up", "timestamp": "2026-06-20T12:00:00Z"}]
OTHER_LLM = [
    {
        "user_id": "u9",
        "prompt": "p",
        "generation": "g",
        "assistant_id": "gpt-4o",
        "latency": 9.0,
        "timestamp": "2026-06-20T12:30:00Z",
    },
]

PER_DAY = [  # demo on 06-20: 2 events + 51 LLM events (102 rows); 06-21: 2 + 2 (4 rows)
    ("demo", "2026-06-20", "104"),
    ("demo", "2026-06-21", "6"),
    ("other", "2026-06-20", "3"),
]
THREAD_ROWS = [  # (time to the microsecond, event, user, $text)
    ("2026-06-21 10:00:01.650000", "Prompt", "u1", "Hi?"),
    ("2026-06-21 10:00:01.900000", "Generation", "u1", "Hello!"),
    ("2026-06-21 10:00:03.500000", "Thumbs up", "u1", ""),
    ("2026-06-21 10:00:04.250000", "Prompt", "u1", "And?"),
    ("2026-06-21 10:00:06.250000", "Generation", "u1", "That is all."),
]
PERCENTILES = {"claude-3": (1, [1.5, 1.5, 1.5]), "gpt-4o": (51, [6.5, 11.5, 12.625])}


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> Sequence[Row]:
    """The events above, stored by the node's journal, as the forwarder reads them."""
    conn = connect(tmp_path_factory.mktemp("store") / "trubrics.db")
    batches: list[tuple[str, Source, list[dict[str, Any]]]] = [
        ("demo", "event", DEMO_EVENTS[:4]),
        ("demo", "llm", DEMO_LLM[:1]),
        ("demo", "event", DEMO_EVENTS[4:]),
        ("demo", "llm", DEMO_LLM[1:]),
        ("other", "event", OTHER_EVENTS),
        ("other", "llm", OTHER_LLM),
    ]
    journal(conn, batches)
    found = list(rows_of(conn))
    conn.close()
    assert len(found) == len(DEMO_EVENTS) + 2 * len(DEMO_LLM) + 1 + 2
    return found


def redelivered(rows: Sequence[Row]) -> list[Sequence[Row]]:
    """The batches an engine receives: everything, everything again, then an overlap."""
    return [rows, rows, rows[3:9]]


# --- expected outputs, ClickHouse's TabSeparated --------------------------------------------


def per_day_tsv() -> str:
    return "".join("\t".join(row) + "\n" for row in PER_DAY)


def thread_tsv(whole_seconds: bool) -> str:
    return "".join(
        "\t".join((at[:19] if whole_seconds else at, event, user, text)) + "\n"
        for at, event, user, text in THREAD_ROWS
    )


def assert_percentiles(lines: list[str], brackets: str, separator: str) -> None:
    """``model, count, [p50, p90, p99]`` lines against PERCENTILES, floats exactly."""
    got = {}
    for line in lines:
        model, count, values = line.split(separator)
        assert values[0] + values[-1] == brackets, values
        got[model] = (int(count), [float(v) for v in values[1:-1].split(",")])
    assert got == PERCENTILES


def run_clickhouse_queries(query: Any, whole_seconds: bool) -> None:
    """Run the README's ClickHouse queries with ``query(sql) -> TabSeparated text``."""
    sql = readme_queries()["clickhouse"]
    assert query(sql[QUERIES[0]]) == per_day_tsv()
    assert query(sql[QUERIES[1]]) == thread_tsv(whole_seconds)
    assert_percentiles(query(sql[QUERIES[2]]).splitlines(), "[]", "\t")


# --- current ClickHouse, in-process (chdb) ---------------------------------------------------


@pytest.fixture(scope="module")
def chdb_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One chdb session (one per process at a time) with the date input format of a real
    server's default profile: only the sink's INSERT settings may make its times parse."""
    try:
        from chdb import session
    except ImportError as error:  # a dev dependency: missing means `make install` was skipped
        message = f"NOT TESTED: chdb unavailable ({error}); pip install -e '.[dev]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    sess = session.Session(str(tmp_path_factory.mktemp("chdb")))
    sess.query("SET date_time_input_format = 'basic'")
    try:
        yield sess
    finally:
        sess.close()


def chdb_query(sess: Any, sql: str) -> str:
    return str(sess.query(sql, "TabSeparated"))


@pytest.fixture(scope="module")
def current(chdb_session: Any, rows: Sequence[Row]) -> Any:
    """chdb with the tables ``migrate()`` would create on its version, holding ``rows``
    (with duplicates) in the sink's encoding."""
    version = server_version(chdb_query(chdb_session, "SELECT version()"))
    for statement in ddl_statements(DATABASE, None, version):
        chdb_session.query(statement)
    chdb_session.query(f"SYSTEM STOP MERGES `{DATABASE}`.events")  # duplicates stay until FINAL
    column = chdb_query(
        chdb_session,
        "SELECT type FROM system.columns"
        f" WHERE database = '{DATABASE}' AND table = 'events' AND name = 'timestamp'",
    )
    settings = ", ".join(f"{name} = '{value}'" for name, value in insert_settings(None).items())
    for batch in redelivered(rows):
        payload = encode_json_lines(Columns.of(batch), span_of(column)).decode()
        chdb_session.query(
            f"INSERT INTO `{DATABASE}`.events SETTINGS {settings} FORMAT JSONEachRow\n{payload}"
        )
    chdb_session.query(f"USE `{DATABASE}`")
    return chdb_session


def test_chdb_is_current_clickhouse_with_datetime64(current: Any) -> None:
    version = chdb_query(current, "SELECT version()").strip()
    assert server_version(version) >= (26, 1), version
    types = chdb_query(
        current,
        "SELECT name, type FROM system.columns WHERE database = currentDatabase()"
        " AND table = 'events' AND name IN ('timestamp', 'received_at') ORDER BY name",
    )
    assert types == "received_at\tDateTime64(6, \\'UTC\\')\ntimestamp\tDateTime64(6, \\'UTC\\')\n"


def test_chdb_runs_the_readme_queries(current: Any, rows: Sequence[Row]) -> None:
    assert chdb_query(current, "SELECT count() FROM events") == f"{len(rows) * 2 + 6}\n"
    assert chdb_query(current, "SELECT count() FROM events FINAL") == f"{len(rows)}\n"
    run_clickhouse_queries(lambda sql: chdb_query(current, sql), whole_seconds=False)


def test_chdb_keeps_microseconds_and_clamps_to_1900_2299(current: Any) -> None:
    out = chdb_query(
        current,
        "SELECT event, timestamp FROM events FINAL"
        " WHERE event IN ('moon landing', 'far future', 'Log in') ORDER BY timestamp",
    )
    assert out == (
        "moon landing\t1969-07-20 20:17:40.500000\n"
        "Log in\t2026-06-20 23:59:59.999999\n"
        "Log in\t2026-06-21 00:00:00.000000\n"
        "far future\t2299-12-31 23:59:59.999999\n"
    )


def test_the_cluster_ddl_parses_on_current_clickhouse(chdb_session: Any) -> None:
    """chdb has no cluster to run ``ON CLUSTER`` against; its parser still checks the text."""
    version = server_version(chdb_query(chdb_session, "SELECT version()"))
    statements = ddl_statements("analytics", "main", version)
    assert len(statements) == 3 and "DateTime64(6, 'UTC')" in statements[1]
    for statement in statements:
        literal = statement.replace("\\", "\\\\").replace("'", "\\'")
        assert chdb_query(chdb_session, f"SELECT formatQuery('{literal}')").startswith("CREATE")


# --- Debian's ClickHouse 18.16, a real cluster, through the sink -----------------------------


def test_clickhouse_18_16_runs_the_readme_queries(
    clickhouse: ClickHouseCluster, rows: Sequence[Row]
) -> None:
    name = f"q_{uuid.uuid4().hex[:10]}"
    port = clickhouse.nodes[0].http_port
    url = parse_sink_url(f"clickhouse://127.0.0.1:{port}/{name}?cluster={clickhouse.cluster}")
    sink = ClickHouseSink(url)
    try:
        with pytest.raises(RuntimeError, match="before migrate"):
            sink.encode(Columns.of(rows))  # the span depends on the table: no guessing
        sink.migrate()
        send_rows(sink, rows)
        for batch in redelivered(rows)[1:]:
            send_rows(sink, batch)
        sink._conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
        send_rows(sink, rows)  # a stale keep-alive, reopened: the sink still knows DateTime
        send_rows(sink, rows)
    finally:
        sink.close()
    assert clickhouse.query("SELECT version()").startswith("18.16.")
    column = clickhouse.query(
        f"SELECT type FROM system.columns WHERE database = '{name}' AND table = 'events_local'"
        " AND name = 'timestamp'"
    )
    assert column == "DateTime(\\'UTC\\')\n"

    def query(sql: str) -> str:
        return clickhouse.query(sql, settings={"database": name})

    assert query("SELECT count() FROM events FINAL") == f"{len(rows)}\n"
    run_clickhouse_queries(query, whole_seconds=True)
    out = query(
        "SELECT event, timestamp FROM events FINAL"
        " WHERE event IN ('moon landing', 'far future') ORDER BY timestamp"
    )
    assert out == "moon landing\t0000-00-00 00:00:00\nfar future\t2105-12-31 23:59:59\n"


# --- times as clients write them ------------------------------------------------------------

# A plain batch's times reach ClickHouse as decoded (offset kept, naive without one): each
# must land where the node puts it. Beside them, parts that take the other path: a time
# outside 18.16's DateTime (clamped), and naive and aware batches in one part.
AWARE_TIMES = [
    "2026-06-20T12:00:00.123456+05:30",
    "2026-06-20T23:59:59.999999-08:00",  # the next day in UTC
    "2026-06-20T12:00:00Z",  # no fraction
    "2026-06-21T00:00:01.000001+00:00",
]
NAIVE_TIMES = ["2026-06-20T12:00:00.5", "2026-06-20T23:59:59"]  # UTC to the node
OUT_OF_DATETIME = ["2026-06-20T12:00:00.25Z", "1969-07-20T20:17:40.5Z"]


def plain_columns(times: list[str], batch: int) -> tuple[Columns, list[int]]:
    """The columns the ClickHouse forwarder reads from a stored batch of plain events with
    these times, and the node's own reading of them (microseconds)."""
    items = [{"user_id": "u", "event": f"e{i}", "timestamp": at} for i, at in enumerate(times)]
    body = json.dumps(items).encode()
    stored = batches.Stored(batch, "p", "event", 1_781_956_800_000_000, pack(body), LZ4)
    columns = batches.columns_of(stored, node=3, compact=True)
    return columns, [row.timestamp for row in batches.events_of(stored, node=3)]


def time_parts() -> list[tuple[Columns, list[int]]]:
    """Four parts: aware times, naive times, a time beyond DateTime's span, and a naive
    batch with an aware one. The first two travel as written (checked here)."""
    aware, naive = plain_columns(AWARE_TIMES, 1), plain_columns(NAIVE_TIMES, 2)
    lines = encode_json_lines(aware[0]).decode() + encode_json_lines(naive[0]).decode()
    sent = [json.loads(line)["timestamp"] for line in lines.splitlines()]
    assert sent == [
        "2026-06-20T12:00:00.123456+05:30",
        "2026-06-20T23:59:59.999999-08:00",
        "2026-06-20T12:00:00Z",
        "2026-06-21T00:00:01.000001Z",
        "2026-06-20T12:00:00.500000",
        "2026-06-20T23:59:59",
    ]
    mixed, mixed_at = plain_columns(NAIVE_TIMES, 4)
    also, also_at = plain_columns(AWARE_TIMES, 5)
    mixed.extend(also)
    return [aware, naive, plain_columns(OUT_OF_DATETIME, 3), (mixed, mixed_at + also_at)]


def expected_times(parts: list[tuple[Columns, list[int]]], span: tuple[int, int]) -> str:
    """``id, timestamp`` lines as ClickHouse prints them: the node's time, clamped; whole
    seconds for DateTime."""
    low, high = span
    lines = []
    for columns, stamps in parts:
        for id_, at in zip(columns.id, stamps, strict=True):
            text = format_time(min(max(at, low), high)).replace("T", " ").removesuffix("Z")
            text = text if span == DATETIME64_SPAN else text[:19]
            lines.append(f"{id_}\t{'0000-00-00 00:00:00' if at < 0 == low else text}\n")
    return "".join(sorted(lines))


def test_clients_times_land_where_the_node_puts_them_on_both_lines(
    chdb_session: Any, clickhouse: ClickHouseCluster
) -> None:
    parts = time_parts()
    select = "SELECT id, timestamp FROM {}.events ORDER BY id"
    version = server_version(chdb_query(chdb_session, "SELECT version()"))
    for statement in ddl_statements("times", None, version):
        chdb_session.query(statement)
    settings = ", ".join(f"{name} = '{value}'" for name, value in insert_settings(None).items())
    for columns, _ in parts:
        payload = encode_json_lines(columns, DATETIME64_SPAN).decode()
        insert = f"INSERT INTO times.events SETTINGS {settings} FORMAT JSONEachRow"
        chdb_session.query(f"{insert}\n{payload}")
    in_chdb = chdb_query(chdb_session, select.format("times"))
    assert in_chdb == expected_times(parts, DATETIME64_SPAN)

    name = f"t_{uuid.uuid4().hex[:10]}"
    port = clickhouse.nodes[0].http_port
    sink = ClickHouseSink(
        parse_sink_url(f"clickhouse://127.0.0.1:{port}/{name}?cluster={clickhouse.cluster}")
    )
    try:
        sink.migrate()
        for columns, _ in parts:
            sink.send(sink.encode(columns), columns.size)
    finally:
        sink.close()
    assert clickhouse.query(select.format(name)) == expected_times(parts, DATETIME_SPAN)


# --- PostgreSQL ------------------------------------------------------------------------------


def test_postgresql_runs_the_readme_queries(postgres: PostgresServer, rows: Sequence[Row]) -> None:
    name = f"q_{uuid.uuid4().hex[:10]}"
    postgres.psql(f"CREATE DATABASE {name}")
    postgres.psql(f"ALTER DATABASE {name} SET timezone TO 'UTC'")
    sink = open_sink(parse_sink_url(postgres.url.rsplit("/", 1)[0] + "/" + name))
    try:
        sink.migrate()
        for batch in redelivered(rows):
            send_rows(sink, batch)
    finally:
        sink.close()
    sql = readme_queries()["postgresql"]

    def query(sql: str) -> list[str]:
        return postgres.psql(sql, database=name).splitlines()

    assert query("SELECT count(*) FROM events") == [str(len(rows))]
    assert query(sql[QUERIES[0]]) == ["|".join(row) for row in PER_DAY]
    assert query(sql[QUERIES[1]]) == [
        "|".join((f"{at.rstrip('0').rstrip('.')}+00", event, user, text))
        for at, event, user, text in THREAD_ROWS
    ]
    assert_percentiles(query(sql[QUERIES[2]]), "{}", "|")


# --- the DDL and the encoding, without a server ----------------------------------------------


def test_the_time_type_follows_the_server_version() -> None:
    assert server_version("18.16.1\n") == (18, 16)
    assert server_version("26.9.2.1") == (26, 9)
    assert time_type((18, 16)) == time_type((22, 7)) == "DateTime('UTC')"
    assert time_type((22, 8)) == time_type((26, 9)) == "DateTime64(6, 'UTC')"
    assert span_of("DateTime64(6, \\'UTC\\')") == DATETIME64_SPAN
    assert span_of("DateTime('UTC')") == DATETIME_SPAN
    old, new = ddl_statements("default", None, (18, 16)), ddl_statements("db", "c", (26, 9))
    assert len(old) == 1 and "timestamp DateTime('UTC')" in old[0]
    assert new[0] == "CREATE DATABASE IF NOT EXISTS `db` ON CLUSTER `c`"
    assert "events_local ON CLUSTER `c`" in new[1] and "received_at DateTime64(6, 'UTC')" in new[1]
    assert "Distributed(`c`, `db`, events_local, cityHash64(id))" in new[2]


def test_properties_travel_as_visit_param_reads_them() -> None:
    """Readers keep the properties' JSON text as the client wrote it. ``visitParam*``
    cannot skip whitespace between tokens (the Python SDK's ``json.dumps`` puts a space
    after every ``:`` and ``,``) nor find a name written with escapes (``json.dumps``
    escapes every non-ASCII character): ClickHouse gets the text without either, read as
    its forwarder reads it (``compact_json``); PostgreSQL's jsonb gets it as written."""
    spaced = '{"model" : "gpt-4o",\n "tags": [ 1, 2 ], "text": "a  b, c: d", "n": 1.50}'
    escaped = '{"caf\\u00e9": "cr\\u00e8me", "q": "say \\"hi\\""}'
    event = '{"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z", "properties": '
    body = f"[{event}{spaced}}}, {event}{escaped}}}]".encode()
    stored = batches.Stored(1, "p", "event", 1_781_956_800_000_000, pack(body), LZ4)
    url = parse_sink_url("clickhouse://127.0.0.1:1/db")
    compact = open_sink(url).compact_json
    events = batches.columns_of(stored, node=3, compact=compact)
    lines = encode_json_lines(events).splitlines()
    assert [json.loads(line)["properties"] for line in lines] == [
        '{"model":"gpt-4o","tags":[1,2],"text":"a  b, c: d","n":1.50}',
        '{"café":"crème","q":"say \\"hi\\""}',
    ]
    as_written = list(map(bytes, batches.columns_of(stored, node=3).properties))
    assert as_written == [spaced.encode(), escaped.encode()]
    assert not open_sink(parse_sink_url("postgresql://u@127.0.0.1:1/db")).compact_json


def test_times_travel_as_iso_strings_clamped_to_the_span() -> None:
    def row(at: int) -> Row:
        return Row("id", "p", "u", "e", at, None, b"{}", 1_781_956_800_000_001, "event")

    def times(span: tuple[int, int], *ats: int) -> list[str]:
        lines = encode_json_lines(Columns.of([row(at) for at in ats]), span).splitlines()
        return [json.loads(line)["timestamp"] for line in lines]

    ats = (-14_182_940_000_000, 1_781_956_800_123_456, 1_781_956_800_999_999, 10**17)
    assert times(DATETIME64_SPAN, *ats) == [
        "1969-07-20T20:17:40.000000Z",
        "2026-06-20T12:00:00.123456Z",
        "2026-06-20T12:00:00.999999Z",
        "2299-12-31T23:59:59.999999Z",
    ]
    assert times(DATETIME_SPAN, *ats) == [
        "1970-01-01T00:00:00.000000Z",
        "2026-06-20T12:00:00.123456Z",
        "2026-06-20T12:00:00.999999Z",
        "2105-12-31T23:59:59.999999Z",
    ]
    assert times(DATETIME64_SPAN, -(10**17)) == ["1900-01-01T00:00:00.000000Z"]
    line = json.loads(encode_json_lines(Columns.of([row(0)])))
    assert line["received_at"] == "2026-06-20T12:00:00.000001Z"
