"""The ASGI application: routing, and turning outcomes into responses.

A publish request flows one way: key -> project (``auth``), body within limits
(``body``), decode and validate (``schema``), then the sink (the journal) makes it
durable, and only then the 200 goes out. This is a plain ASGI class rather than a
framework route: it is the hot path, and it is small.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from importlib import resources
from typing import Any, Protocol

import msgspec
from starlette.middleware.cors import CORSMiddleware

from .auth import KeyCache
from .body import BodyBudget, ClientDisconnected, Hold, read_body
from .config import Settings
from .errors import (
    IngestionError,
    InvalidIdempotencyKey,
    MethodNotAllowed,
    NotFound,
    ShuttingDown,
)
from .limits import PayloadLimits
from .ratelimit import RateLimiter
from .schema import Kind, decode_batch

log = logging.getLogger("trubrics_ingestion.app")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/api/ingestion"  # the hosted service's path; both host styles work
PUBLISH: dict[str, Kind] = {"/publish_events": "event", "/publish_llm_events": "llm"}
EXPANSION: dict[Kind, int] = {"event": 1, "llm": 2}  # stored events per item
_JSON = [(b"content-type", b"application/json")]
_encode = msgspec.json.Encoder().encode


class Sink(Protocol):
    """Where accepted batches go; ``append`` returns once the batch is durable."""

    async def append(
        self,
        project: str,
        source: str,
        body: bytes,
        received_at: int,
        idempotency_key: str | None = None,
    ) -> bool:
        """True when stored, False when the batch repeats one already stored."""

    def ready(self) -> bool: ...


class IngestionApp:
    """Serves the two publish endpoints plus health, readiness and the OpenAPI document."""

    def __init__(
        self,
        *,
        keys: KeyCache,
        sink: Sink,
        max_body_bytes: int,
        limits: PayloadLimits,
        rate: RateLimiter,
        budget: BodyBudget,
        openapi: bytes,
    ) -> None:
        self._keys = keys
        self._sink = sink
        self._max_body_bytes = max_body_bytes
        self._limits = limits
        self._rate = rate
        self._budget = budget
        self._gets: dict[str, Callable[[], tuple[int, bytes]]] = {
            "/healthz": lambda: (200, b'{"status":"ok"}'),
            "/readyz": self._readiness,
            "/openapi.json": lambda: (200, openapi),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            status, body = await self._route(scope, receive)
        except ClientDisconnected:
            return
        except asyncio.CancelledError:  # the graceful-shutdown deadline passed: say so, then go
            error = ShuttingDown()
            await _respond(send, error.status, _encode({"detail": error.detail}), error.headers)
            raise
        except IngestionError as error:
            await _respond(send, error.status, _encode({"detail": error.detail}), error.headers)
            return
        except Exception:  # a bug of ours: say so without leaking internals
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            await _respond(send, 500, b'{"detail":"Internal server error."}')
            return
        await _respond(send, status, body)

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        path: str = scope["path"]
        if "//" in path or path.endswith("/"):  # SDK hosts given with a trailing slash
            path = "/" + "/".join(part for part in path.split("/") if part)
        if path.startswith(PREFIX + "/"):
            path = path[len(PREFIX) :]
        method: str = scope["method"]
        if path in PUBLISH:
            if method != "POST":
                raise MethodNotAllowed("POST")
            return await self._publish(scope, receive, PUBLISH[path])
        if path in self._gets:
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed("GET, HEAD")
            return self._gets[path]()
        raise NotFound()

    async def _publish(self, scope: Scope, receive: Receive, kind: Kind) -> tuple[int, bytes]:
        received_at = time.time_ns() // 1000
        headers = dict(scope["headers"])
        project = self._keys.project_for(_header(headers, b"x-api-key"))
        with self._budget.hold() as hold:
            return await self._accept(project, kind, headers, receive, hold, received_at)

    async def _accept(
        self,
        project: str,
        kind: Kind,
        headers: dict[bytes, bytes],
        receive: Receive,
        hold: Hold,
        received_at: int,
    ) -> tuple[int, bytes]:
        body = await read_body(receive, headers, self._max_body_bytes, hold)
        items = decode_batch(body, kind)
        self._limits.check(body, items)
        idempotency_key = _idempotency_key(headers)
        if not items:
            return 200, b'{"status":"success","events":0}'
        events = len(items) * EXPANSION[kind]
        self._rate.take(project, events)
        stored = await self._sink.append(project, kind, body, received_at, idempotency_key)
        if stored:
            return 200, b'{"status":"success","events":%d}' % events
        return 200, b'{"status":"success","events":%d,"duplicate":true}' % events

    def _readiness(self) -> tuple[int, bytes]:
        if self._sink.ready():
            return 200, b'{"status":"ready"}'
        return 503, b'{"detail":"The journal writer is not running."}'


def build_app(settings: Settings, *, keys: KeyCache, sink: Sink) -> CORSMiddleware:
    """The ingestion app, configured by ``settings``, behind CORS so browsers can publish."""
    app = IngestionApp(
        keys=keys,
        sink=sink,
        max_body_bytes=settings.max_body_bytes,
        limits=PayloadLimits(
            max_event_bytes=settings.max_event_bytes, max_depth=settings.max_depth
        ),
        rate=RateLimiter(
            events_per_s=settings.rate_limit_events_per_s, burst=settings.rate_limit_burst
        ),
        budget=BodyBudget(settings.max_buffered_bytes),
        openapi=resources.files(__package__).joinpath("openapi.json").read_bytes(),
    )
    return CORSMiddleware(
        app,
        allow_origins=settings.cors_origins,
        allow_methods=("GET", "POST", "OPTIONS"),
        allow_headers=("content-type", "content-encoding", "x-api-key", "idempotency-key"),
        max_age=3600,
    )


def _idempotency_key(headers: dict[bytes, bytes]) -> str | None:
    value = _header(headers, b"idempotency-key")
    if value is None:
        return None
    if not 0 < len(value) <= 255 or not value.isascii() or not value.isprintable():
        raise InvalidIdempotencyKey()
    return value


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


async def _respond(
    send: Send, status: int, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    headers = [*_JSON, (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
