"""Processes of a running node, read from ``/proc``: its children, whether one is gone, what a
connection's server side has read; and ``kill -9`` of a node and everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

from support.node import Node


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
