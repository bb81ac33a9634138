"""Node.js for the tests that run real JavaScript clients, from ``tests/node``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def node_with(package: str) -> str:
    """The ``node`` executable, once ``package`` is installed in ``tests/node`` at the
    version its ``package.json`` pins."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not installed")
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"][package]
    installed = NODE_DIR / "node_modules" / package / "package.json"
    version = json.loads(installed.read_text())["version"] if installed.is_file() else None
    if version != pinned:
        _unavailable(f"{package}@{pinned} is not installed in {NODE_DIR} (found {version})")
    return node


def _unavailable(reason: str) -> NoReturn:
    """CI must run these tests, so there a missing runtime fails; locally it skips."""
    message = f"{reason}; run tests/setup-node.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
