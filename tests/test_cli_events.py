"""``trubrics-ingestion events``: count, export (ndjson, csv, filters) and tail."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import IO, Any

from support.node import CLI, Node
from support.store import poison
from trubrics_ingestion.store.codec import pack

COLUMNS = [
    "id",
    "project",
    "user_id",
    "event",
    "timestamp",
    "thread_id",
    "properties",
    "received_at",
    "source",
]


def publish(node: Node, *stamps: str, user: str = "u") -> None:
    batch = [
        {
            "user_id": user,
            "event": f"e{i}",
            "timestamp": t,
            "properties": {"$thread_id": "t", "i": i},
        }
        for i, t in enumerate(stamps)
    ]
    assert node.post("/publish_events", batch).status_code == 200


def test_ndjson_lines_have_exactly_the_export_columns(node: Node) -> None:
    publish(node, "2026-06-20T12:00:00Z")
    (record,) = node.export()
    assert list(record) == COLUMNS
    assert record["timestamp"].endswith("Z") and record["received_at"].endswith("Z")


def test_since_until_and_project_filters(node: Node, make_node) -> None:  # type: ignore[no-untyped-def]
    publish(node, "2026-06-20T11:59:59.999999Z", "2026-06-20T12:00:00Z", "2026-06-20T13:00:00Z")
    picked = node.export("--since", "2026-06-20T12:00:00", "--until", "2026-06-20T13:00:00Z")
    assert [e["event"] for e in picked] == ["e1"]
    assert [e["event"] for e in node.export("--since", "2026-06-20T14:00:00+02:00")] == ["e1", "e2"]
    assert node.export("--project", "nobody") == []
    bad = node.cli("events", "export", "--since", "last tuesday", check=False)
    assert bad.returncode == 2 and "ISO-8601" in bad.stderr


def test_csv_export(node: Node) -> None:
    publish(node, "2026-06-20T12:00:00Z", "2026-06-20T12:00:01Z")
    rows = list(csv.DictReader(io.StringIO(node.cli("events", "export", "--format", "csv").stdout)))
    assert [list(row) for row in rows] == [COLUMNS, COLUMNS]
    assert json.loads(rows[1]["properties"]) == {"$thread_id": "t", "i": 1}
    assert rows[0]["timestamp"] == "2026-06-20T12:00:00.000000Z"


def test_count(node: Node) -> None:
    assert node.cli("events", "count").stdout.strip() == "0"
    publish(node, "2026-06-20T12:00:00Z", "2026-06-20T12:00:01Z")
    assert node.cli("events", "count").stdout.strip() == "2"
    assert node.cli("events", "count", "--project", node.project).stdout.strip() == "2"
    assert node.cli("events", "count", "--project", "other").stdout.strip() == "0"


def test_tail_follows_new_events(node: Node) -> None:
    publish(node, "2026-06-20T12:00:00Z", user="before")
    with following(node) as (output, _, _):
        publish(node, "2026-06-20T12:00:01Z", "2026-06-20T12:00:02Z", user="after")
        lines = [next(output) for _ in range(2)]
        assert [(e["user_id"], e["event"]) for e in lines] == [("after", "e0"), ("after", "e1")]


Following = tuple[Iterator[dict[str, Any]], "queue.Queue[str]", "subprocess.Popen[str]"]


@contextlib.contextmanager
def following(node: Node) -> Iterator[Following]:
    """``events tail`` running and known to follow (it starts after the newest stored event,
    whenever it gets there): its records past the probes that showed it, its stderr lines,
    and the process, interrupted with Ctrl-C at the end."""
    tail = subprocess.Popen(
        [*CLI, "events", "tail", "--data-dir", str(node.data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_hear_ctrl_c,
    )
    try:
        assert tail.stdout is not None and tail.stderr is not None
        output = lines_of(tail.stdout)
        for attempt in range(40):
            publish(node, "2026-06-20T12:00:00Z", user=f"probe{attempt}")
            with contextlib.suppress(queue.Empty):
                output.get(timeout=0.5)
                break
        records = (json.loads(output.get(timeout=10)) for _ in itertools.count())
        events = (r for r in records if not r["user_id"].startswith("probe"))
        yield events, lines_of(tail.stderr), tail
    finally:
        tail.send_signal(signal.SIGINT)
        tail.wait(10)


def _hear_ctrl_c() -> None:
    """In the child before exec: Ctrl-C's default action back. A test run started in the
    background by a shell without job control inherits SIGINT ignored, and Python then
    never turns it into KeyboardInterrupt: tail would not hear its Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """Lines of a child's output, read by a thread so that waiting for one can time out."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def test_env_var_data_dir(node: Node) -> None:
    publish(node, "2026-06-20T12:00:00Z")
    env = {"TRUBRICS_DATA_DIR": str(node.data_dir), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [*CLI, "events", "count"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "1"


# Batches a hand edit (or a bug, or a damaged disk) left that cannot be exported: (body,
# received_at, compressed bytes if not those of body), written straight into the store.
GOOD = b'[{"user_id":"u","event":"bad","timestamp":"2026-06-20T12:00:00Z"}]'
BAD_BATCHES: dict[str, tuple[bytes, int, bytes | None]] = {
    "time out of range": (
        GOOD.replace(b"2026-06-20T12:00:00Z", b"0001-01-01T00:00:00+01:00"),
        0,
        None,
    ),
    "JSON": (b"[{not json", 0, None),
    "UTF-8": (GOOD.replace(b'"u"', b'"\xff"'), 0, None),
    "received_at": (GOOD, 2**62, None),
    "truncated": (GOOD, 0, pack(GOOD)[:-3]),
    "impossible size": (GOOD, 0, (2**31).to_bytes(4, "little") + pack(GOOD)[4:]),
}


def store_bad_batches(node: Node) -> None:
    for body, received_at, blob in BAD_BATCHES.values():
        poison(node.data_dir / "trubrics.db", node.project, body, received_at, blob=blob)


def test_export_skips_and_names_unreadable_batches_and_writes_the_rest(node: Node) -> None:
    publish(node, "2026-06-20T12:00:00Z")
    store_bad_batches(node)
    publish(node, "2026-06-20T12:00:01Z")
    for fmt in ("ndjson", "csv"):
        done = node.cli("events", "export", "--format", fmt, check=False)
        assert done.returncode == 1, done.stderr
        lines = done.stdout.splitlines()
        events = (
            [json.loads(line)["event"] for line in lines]
            if fmt == "ndjson"
            else [row["event"] for row in csv.DictReader(io.StringIO(done.stdout))]
        )
        assert events == ["e0", "e0"], done.stdout
        skipped = [line for line in done.stderr.splitlines() if line.startswith("skipped")]
        assert [line.split(":")[0] for line in skipped] == [
            f"skipped stored batch {batch}" for batch in range(2, 2 + len(BAD_BATCHES))
        ]
        assert "out of range" in skipped[0] and "Invalid JSON" in skipped[1], skipped
        assert "utf-8" in skipped[2] and "OverflowError" in skipped[3], skipped
        assert all("damaged LZ4 body" in line for line in skipped[4:]), skipped
        assert f"{len(BAD_BATCHES)} stored batch(es) could not be read" in done.stderr
    assert node.cli("events", "count").stdout.strip() == str(2 + len(BAD_BATCHES))


def test_tail_skips_an_unreadable_batch_and_goes_on(node: Node) -> None:
    with following(node) as (output, errors, tail):
        store_bad_batches(node)
        publish(node, "2026-06-20T12:00:01Z", user="after")
        assert next(output)["user_id"] == "after"
        reasons = [errors.get(timeout=10) for _ in BAD_BATCHES]
        assert all(line.startswith("skipped stored batch") for line in reasons), reasons
    assert tail.returncode == 1, "interrupted after skipping batches"


FORMULAS = ["=HYPERLINK(\"http://x.example\",\"y\")", "=cmd|' /C calc'!A0", "+1+1", "-2+3",
            "@SUM(1)", "\t=1", "\r=1"]  # fmt: skip


def test_csv_cells_never_start_a_formula_and_ndjson_stays_exact(node: Node) -> None:
    batch = [
        {"user_id": text, "event": text, "timestamp": "2026-06-20T12:00:00Z",
         "properties": {"$thread_id": text}}
        for text in FORMULAS
    ]  # fmt: skip
    assert node.post("/publish_events", batch).status_code == 200
    args = ["events", "export", "--format", "csv", "--data-dir", str(node.data_dir)]
    out = subprocess.run([*CLI, *args], capture_output=True, timeout=60, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out.decode(), newline="")))  # "\r" kept as sent
    for row, text in zip(rows, FORMULAS, strict=True):
        for column in ("user_id", "event", "thread_id"):
            assert row[column] == "'" + text, (column, row[column])
        assert json.loads(row["properties"]) == {"$thread_id": text}
    assert [(e["user_id"], e["event"], e["thread_id"]) for e in node.export()] == [
        (text, text, text) for text in FORMULAS
    ]
