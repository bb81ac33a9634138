"""Real servers over real sockets: every test talks HTTP to a ``trubrics-ingestion serve``
subprocess on a free loopback port, with its own data dir, and reads the store back
through the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from engines import ClickHouseCluster, PostgresServer, free_port, require_engines
from trubrics_ingestion.forward import Row, Sink

CLI = [sys.executable, "-m", "trubrics_ingestion"]
START_TIMEOUT_S = 20.0


def cli(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a store-touching CLI command (``--data-dir`` goes after the command's name)."""
    return subprocess.run(
        [*CLI, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def create_key(data_dir: Path, project: str) -> dict[str, str]:
    return json.loads(cli(data_dir, "keys", "create", "--project", project, "--json").stdout)


@dataclass
class Node:
    """One running ingestion server and the store behind it."""

    data_dir: Path
    key: str
    project: str
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()  # more ``serve`` arguments
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Node:
        self.port = free_port()
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        env = {**os.environ, **self.env}
        port, data_dir = str(self.port), str(self.data_dir)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*CLI, "serve", "--port", port, "--data-dir", data_dir, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start in {START_TIMEOUT_S}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def post(
        self,
        path: str,
        payload: Any = None,
        *,
        data: bytes | None = None,
        key: str | None = "default",
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """POST JSON (or raw ``data``) with this node's key unless told otherwise."""
        sent = dict(headers or {})
        if key is not None:
            sent["x-api-key"] = self.key if key == "default" else key
        if data is None:
            data = json.dumps(payload).encode()
            sent.setdefault("content-type", "application/json")
        return requests.post(self.url + path, data=data, headers=sent, timeout=30)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return cli(self.data_dir, *args, check=check)

    def export(self, *args: str) -> list[dict[str, Any]]:
        out = self.cli("events", "export", *args).stdout
        return [json.loads(line) for line in out.split("\n") if line]


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(node: Node, path: str = "/metrics", headers: dict[str, str] | None = None) -> Samples:
    """Every sample of the node's ``/metrics``, by name and labels."""
    response = requests.get(node.url + path, headers=headers, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series not created yet (as Prometheus reads it)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float = 30.0,
    what: str = "the condition",
    log: str = "",
    *,
    poll_s: float = 0.05,
) -> float:
    """Poll ``condition`` until it holds; the seconds it took. Fails the test, naming
    ``what`` (and the tail of ``log``), if it does not hold within ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}\n{log[-4000:]}")
        time.sleep(poll_s)
    return time.monotonic() - started


def send_rows(sink: Sink, rows: Sequence[Row]) -> None:
    """Encode and send ``rows`` through ``sink``, as the forwarder does with a batch."""
    sink.send(sink.encode(rows), len(rows))


def server_has_read(server_port: int, client: socket.socket) -> bool:
    """Whether the server accepted ``client``'s connection and read all it was sent: its
    end of the connection is in ``/proc/net/tcp`` with nothing left in the receive queue.
    Tests wait for this instead of sleeping when a request must have begun."""
    client_port = client.getsockname()[1]
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.rsplit(":", 1)[1], 16) != server_port:
                continue
            if int(remote.rsplit(":", 1)[1], 16) == client_port:
                return int(queues.split(":")[1], 16) == 0
    return False


def _proc(pid: int) -> tuple[int, str, bytes] | None:
    """(ppid, state, cmdline) of a process, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0], cmdline


def is_gone(pid: int) -> bool:
    """Exited (a zombie waiting for a reaper counts: it holds no locks and runs no code)."""
    info = _proc(pid)
    return info is None or info[1] in ("Z", "X")


def children_of(server_pid: int, command: bytes = b"") -> list[int]:
    """The live processes a server started whose command line contains ``command``: its
    children (of any of its threads: not /proc/children), or processes given its
    ``--parent-pid``, which also finds one re-parented after the server died."""
    marker = b"\0--parent-pid\0" + str(server_pid).encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != server_pid:
            info = _proc(int(entry.name))
            if info is None or info[1] in ("Z", "X") or command not in info[2]:
                continue
            if info[0] == server_pid or marker in info[2]:
                found.append(int(entry.name))
    return found


def materialisers_of(pid: int) -> list[int]:
    """The server's materialiser children (``serve --materialisers``, 2 by default)."""
    return children_of(pid, b"materialise")


def kill_node(node: Node) -> list[int]:
    """SIGKILL the server and every child it started, as a power cut would; returns the
    children's pids. Leaves ``node`` stopped, ready for ``start()`` on the same data dir."""
    assert node.process is not None
    server = node.process.pid
    children = children_of(server)
    for pid in [server, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.process.wait(10)
    node.process = None
    late = [pid for pid in children_of(server) if pid not in children]
    for pid in late:  # a child the server's watcher restarted between the scan and the kill
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    victims = children + late
    deadline = time.monotonic() + 10
    while not all(is_gone(pid) for pid in victims):
        assert time.monotonic() < deadline, f"killed children still running: {victims}"
        time.sleep(0.02)
    return victims


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
