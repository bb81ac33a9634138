"""Fixtures: a running node (``node``, ``make_node``) and module-scoped engines. The helpers
the tests import live in ``support/``."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.engines import ClickHouseCluster, PostgresServer, require_engines
from support.node import Node, create_key


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``make_node(project="p", env={...})`` starts a server with a fresh key."""
    nodes: list[Node] = []

    def make(
        project: str = "test-project",
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
    ) -> Node:
        data_dir = data_dir or tmp_path / f"data{len(nodes)}"
        key = create_key(data_dir, project)["key"]
        node = Node(data_dir=data_dir, key=key, project=project, env=env or {}).start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.process is not None:
            node.stop(signal.SIGKILL)


@pytest.fixture
def node(make_node: Any) -> Node:
    """A running server with one project and key."""
    return make_node()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    require_engines()
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def clickhouse() -> Iterator[ClickHouseCluster]:
    require_engines()
    with ClickHouseCluster(shards=2) as cluster:
        yield cluster
