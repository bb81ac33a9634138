"""Screenshots of every console page for the README (docs/console-*.png), taken with the real
Chromium (scripts/install-browser.sh) against a real ``serve``.

The store is first given an hour of traffic as the journal writes it (two projects, a
curve per minute), then the node serves and the real Python SDK publishes a conversation
and a few events while the live view watches; a malformed batch shows a refusal.

    .venv/bin/python scripts/console_screenshots.py
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from playwright.sync_api import Page  # noqa: E402
from trubrics import Trubrics  # noqa: E402

from support.browser import launched, signed_in  # noqa: E402
from support.node import Node, create_key  # noqa: E402
from support.store import Batch  # noqa: E402
from trubrics_ingestion.schema import decode_batch  # noqa: E402
from trubrics_ingestion.store.journal import insert  # noqa: E402
from trubrics_ingestion.store.sqlite import connect, transaction  # noqa: E402

DOCS = ROOT / "docs"


def past_hour(database: Path) -> None:
    """An hour of batches received minute by minute, as the journal stores them."""
    conn: sqlite3.Connection = connect(database)
    now = time.time_ns() // 1000
    batches = []
    for minute in range(60, 0, -1):
        at = now - minute * 60_000_000
        for project, source, scale in (("support-bot", "llm", 9), ("web-app", "event", 30)):
            count = round(scale * (1.3 + math.sin(minute / 7)))
            items = [_item(source, n) for n in range(count)]
            body = json.dumps(items).encode()
            batches.append(Batch(project, source, at, body, decode_batch(body, source)))
    with transaction(conn):
        insert(conn, batches)
    conn.close()


def _item(source: str, n: int) -> dict[str, object]:
    stamp = datetime.now(UTC).isoformat()
    if source == "event":
        return {"user_id": f"visitor-{n}", "event": "Page viewed", "timestamp": stamp}
    return {"user_id": f"user-{n}", "prompt": "?", "generation": "!", "timestamp": stamp}


def publish(node: Node) -> None:
    """A conversation, events around it, and a refusal, through the real SDK."""
    client = Trubrics(api_key=node.key, host=node.url)
    start = datetime.now(UTC) - timedelta(minutes=3)
    turns = [
        (
            "How do I export my events to a spreadsheet?",
            "Run `events export --format csv`: "
            "cells a spreadsheet would run as formulas get a leading quote.",
            "gpt-4o",
            1.8,
        ),
        ("And only last week's?", "Add --since 2026-11-25 --until 2026-12-02.", "gpt-4o", 0.9),
    ]
    for n, (prompt, generation, model, latency) in enumerate(turns):
        client.track(
            user_id="ada@example.com",
            event="Opened docs",
            properties={"$thread_id": "thread-7f3a", "page": "/export"},
            timestamp=start + timedelta(seconds=40 * n + 5),
        )
        client.track_llm(
            user_id="ada@example.com",
            prompt=prompt,
            generation=generation,
            assistant_id=model,
            latency=latency,
            thread_id="thread-7f3a",
            timestamp=start + timedelta(seconds=40 * n + 30),
        )
    client.track(user_id="grace", event="Signed up", properties={"plan": "team"})
    client.track(
        user_id="ada@example.com", event="Thumbs up", properties={"$thread_id": "thread-7f3a"}
    )
    client.close()
    node.post("/publish_events", [{"user_id": "grace", "event": "Clicked"}])


def shoot(page: Page, name: str) -> None:
    page.wait_for_timeout(300)
    page.screenshot(path=str(DOCS / f"console-{name}.png"), full_page=True)
    print(f"docs/console-{name}.png")


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        key = create_key(data_dir, "support-bot")["key"]
        past_hour(data_dir / "trubrics.db")
        node = Node(data_dir=data_dir, key=key, project="support-bot").start()
        try:
            with launched() as browser:
                signin = browser.new_context(viewport={"width": 1280, "height": 640}).new_page()
                signin.goto(node.url + "/console")
                shoot(signin, "signin")
                watched = signed_in(browser, node)
                page = watched.page
                publish(node)
                page.wait_for_selector("#rows tr.refused")
                shoot(page, "live")
                page.goto(f"{node.url}/console/overview")
                page.wait_for_selector("#chart svg")
                shoot(page, "overview")
                page.goto(f"{node.url}/console/threads/thread-7f3a?project=support-bot")
                page.wait_for_selector("#conversation .turn")
                shoot(page, "thread")
                page.goto(f"{node.url}/console/users/ada%40example.com?project=support-bot")
                page.wait_for_selector("#rows tr")
                shoot(page, "user")
                watched.assert_clean()
        finally:
            node.stop()


if __name__ == "__main__":
    main()
