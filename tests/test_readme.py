"""The README's examples, run as a reader would paste them, against a real server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"


def first_shell_block(section: str) -> str:
    """The first ```sh block after the heading ``## {section}``."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    match = re.search(r"```sh\n(.*?)```", text[start:], re.DOTALL)
    assert match, f"no sh block under {section!r}"
    return match.group(1)


def test_the_first_example_publishes_with_the_key_it_creates(make_node: Any) -> None:
    """Copy-paste works: the block creates its own key and the curl is answered 200."""
    node = make_node(project="other")  # a running server, and a key the block must not need
    script = (
        first_shell_block("Use it")
        .replace(".venv/bin/trubrics-ingestion", f"{sys.executable} -m trubrics_ingestion")
        .replace("./data", str(node.data_dir))
        .replace("http://127.0.0.1:8000", node.url)
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace("curl ", "curl -sS --fail-with-body ")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout) == {"status": "success", "events": 1}
    stored = node.export("--project", "demo")
    assert [(e["user_id"], e["event"]) for e in stored] == [("user_123", "Sign up")]
