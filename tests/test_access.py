"""Who sees a node's internals: /metrics and /readyz's details (engines, registry, keys)
for operators only, /healthz and /readyz's status for everybody."""

from __future__ import annotations

import http.client
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import requests

from support.engines import free_port
from support.node import CLI, Node, scrape, value

# An engine that is never up: the node still serves, and /readyz's details name it.
ENGINE = "postgresql://leaky_user@127.0.0.1:{port}/secret_db"
TOKEN = secrets.token_urlsafe(32)


def _node(make_node: Any, **env: str) -> Node:
    node: Node = make_node(env={"TRUBRICS_FORWARD_TO": ENGINE.format(port=free_port()), **env})
    return node


def _get(url: str, **headers: str) -> requests.Response:
    return requests.get(url, headers=headers, timeout=10)


def _sees_nothing(base: str, status: int, **headers: str) -> None:
    """From ``base``, with ``headers``: /metrics refused with ``status``, bare /readyz."""
    metrics = _get(base + "/metrics", **headers)
    assert metrics.status_code == status and metrics.json()["detail"]
    assert "leaky_user" not in metrics.text
    ready = _get(base + "/readyz", **headers)
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert _get(base + "/healthz", **headers).json() == {"status": "ok"}


def _sees_everything(base: str, **headers: str) -> None:
    metrics = _get(base + "/metrics", **headers)
    assert metrics.status_code == 200 and "trubrics_forward_backlog_events" in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain; version=")
    ready = _get(base + "/readyz", **headers).json()
    assert ready["status"] == "ready" and "leaky_user" in ready["forwarding"][0]["engine"]


def test_without_a_token_this_host_sees_the_internals_and_relayed_clients_do_not(
    make_node: Any,
) -> None:
    """A reverse proxy on the same host connects from loopback for everybody: what it
    relays is not local. (From 127.0.0.1, uvicorn takes the client from X-Forwarded-For.)"""
    node = _node(make_node)
    _sees_everything(node.url)
    _sees_nothing(node.url, 403, **{"x-forwarded-for": "203.0.113.7"})
    _sees_nothing(node.url, 403, **{"x-real-ip": "203.0.113.7"})
    _sees_nothing(node.url, 403, forwarded="for=203.0.113.7")
    refused = _get(node.url + "/metrics", **{"x-real-ip": "203.0.113.7"}).json()["detail"]
    assert "TRUBRICS_METRICS_TOKEN" in refused


def test_without_a_token_another_host_sees_only_the_status(make_node: Any) -> None:
    """A real connection from a non-loopback address of this machine (bound on 0.0.0.0)."""
    addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout
    address = next((a for a in addresses.split() if "." in a), None)
    assert address is not None, f"no non-loopback IPv4 address here: {addresses!r}"
    node = _node(make_node, TRUBRICS_HOST="0.0.0.0")
    _sees_nothing(f"http://{address}:{node.port}", 403)
    _sees_everything(node.url)  # the same node, from loopback


def test_with_a_token_every_scrape_needs_it(make_node: Any, tmp_path: Path) -> None:
    """Prometheus sends ``Authorization: Bearer`` from its credentials_file; so does the
    node's own host, once a token is set."""
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    node = _node(make_node, TRUBRICS_METRICS_TOKEN_FILE=str(token_file))
    refused = _get(node.url + "/metrics")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    _sees_nothing(node.url, 401)
    for wrong in ("Bearer " + TOKEN[:-1], "Bearer " + TOKEN + "x", "Basic " + TOKEN, TOKEN):
        _sees_nothing(node.url, 401, authorization=wrong)
    _sees_everything(node.url, authorization="Bearer " + TOKEN)
    _sees_everything(node.url, authorization="bearer " + TOKEN)
    assert _status_with_two_authorizations(node, "Bearer " + TOKEN) == 401
    samples = scrape(node, headers={"authorization": "Bearer " + TOKEN})
    assert value(samples, "trubrics_http_requests_total", endpoint="/metrics", status="401") > 0
    assert TOKEN not in node.log()


def _status_with_two_authorizations(node: Node, value: str) -> int:
    """Which of two would count is up to whoever reads them: neither does."""
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        conn.putrequest("GET", "/metrics")
        conn.putheader("authorization", value)
        conn.putheader("authorization", value)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_token_can_come_from_the_environment(make_node: Any) -> None:
    node = _node(make_node, TRUBRICS_METRICS_TOKEN=TOKEN)
    _sees_nothing(node.url, 401)
    _sees_everything(node.url, authorization="Bearer " + TOKEN)


def test_a_weak_or_doubly_given_token_stops_the_start(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    for env in (
        {"TRUBRICS_METRICS_TOKEN": "metrics-metrics-metrics"},
        {"TRUBRICS_METRICS_TOKEN": TOKEN, "TRUBRICS_METRICS_TOKEN_FILE": str(token_file)},
    ):
        started = subprocess.run(
            [*CLI, "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d")],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert started.returncode == 2, started.stderr
        assert "metrics" in started.stderr and TOKEN not in started.stderr
        assert "metrics-metrics" not in started.stderr
