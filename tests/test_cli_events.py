"""``trubrics-ingestion events``: count, export (ndjson, csv, filters) and tail."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import queue
import subprocess
import threading
from typing import IO

from conftest import CLI, Node

TAIL_ATTEMPTS = 60  # batches published, 0.5 s apart, before tail is deemed silent

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
    """Tail starts after what is stored and prints what comes next, in order. When it has
    started is not observable, so batches are published until one comes out: the first
    line printed must be from one of them, never the event stored before."""
    publish(node, "2026-06-20T12:00:00Z", user="before")
    tail = subprocess.Popen(
        [*CLI, "events", "tail", "--data-dir", str(node.data_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert tail.stdout is not None
        output = lines_of(tail.stdout)
        first = None
        for attempt in range(TAIL_ATTEMPTS):
            publish(node, "2026-06-20T12:00:01Z", "2026-06-20T12:00:02Z", user=f"after{attempt}")
            with contextlib.suppress(queue.Empty):
                first = json.loads(output.get(timeout=0.5))
                break
        assert first is not None, f"tail printed nothing in {TAIL_ATTEMPTS} batches"
        second = json.loads(output.get(timeout=10))
        user = first["user_id"]
        assert user.startswith("after")
        assert [(e["user_id"], e["event"]) for e in (first, second)] == [(user, "e0"), (user, "e1")]
    finally:
        tail.terminate()
        tail.wait(10)


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
