"""Our own server as the tests run it: a ``trubrics-ingestion serve`` subprocess on a free
loopback port with its own data dir, the CLI against that store, and its ``/metrics``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from support.engines import free_port

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
