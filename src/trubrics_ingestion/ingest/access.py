"""Who may see a node's internals: ``/metrics`` and the details of ``/readyz``.

Those name the engines a node forwards to (hosts, ports, databases, users), its key
registry and how many keys it holds: nothing for whoever can reach the publish port.
``/healthz`` and ``/readyz``'s status stay public (load balancers need them); the rest is
for operators, told apart in one of two ways:

- With a metrics token (``--metrics-token-file``, or ``TRUBRICS_METRICS_TOKEN``): requests
  that carry ``Authorization: Bearer <token>``, from anywhere, and no others. That is how
  Prometheus authenticates a scrape (``authorization: {credentials_file: ...}``); a second
  listener for operators would need a port of its own to bind, open and supervise.
- Without one (the default): clients on this host, so that a fresh node shows nothing of
  itself beyond its host and ``curl localhost:8000/metrics`` still works. A client is on
  this host when it connects from a loopback address and no proxy relayed it: a reverse
  proxy on the same host connects from loopback for everybody, so a request carrying
  ``Forwarded``, ``X-Forwarded-For`` or ``X-Real-IP`` is not local (uvicorn also takes the
  client from ``X-Forwarded-For`` when the proxy is 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from starlette.types import Scope

from ..errors import IngestionError, MetricsTokenRequired, OperatorsOnly

_RELAYED = frozenset((b"forwarded", b"x-forwarded-for", b"x-real-ip"))


class OperatorAccess:
    """Decides, per request, whether it may see the node's internals."""

    def __init__(self, token: str | None = None) -> None:
        # Digests compared, not tokens: the time taken says nothing of the token's length.
        self._token = None if token is None else _sha256(token.encode())

    def refusal(self, scope: Scope) -> IngestionError | None:
        """None if this request may see the internals, else what to answer instead."""
        if self._token is None:
            return None if _on_this_host(scope) else OperatorsOnly()
        presented = _bearer(scope["headers"])
        if presented is not None and hmac.compare_digest(_sha256(presented), self._token):
            return None
        return MetricsTokenRequired()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _bearer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of the one ``Authorization: Bearer`` header (the scheme in any case)."""
    values = [value for name, value in headers if name == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip() or None


def _on_this_host(scope: Scope) -> bool:
    client = scope.get("client")
    if client is None:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # 127.0.0.1 on a dual-stack socket
    return address.is_loopback and not any(name in _RELAYED for name, _ in scope["headers"])
