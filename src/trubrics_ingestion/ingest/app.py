"""The ASGI application: routing, and turning outcomes into responses.

A publish request flows one way: key -> project (``keys``), body within limits
(``body``), decode and validate (``schema``), then the journal makes it
durable, and only then the 200 goes out. This is a plain ASGI class rather than a
framework route: it is the hot path, and it is small.

Every request, CORS preflights included, is counted in ``metrics`` and gets one line in
the access log once answered: the app wraps Starlette's CORS middleware, which wraps the
routing, and what the routing learns (project, events stored, why refused) reaches the
outer layer in an ``Exchange`` kept in the ASGI scope. A request without an ``Origin``
header (not from a browser: SDKs, servers) skips the middleware, which would only add
``Vary: Origin`` to its answer: the routing adds it itself. The exchanges answered in one
iteration of the event loop are accounted together at its end (``account``): measured
under load, that halves what counting and logging cost per request (the code runs warm).
A scrape of ``/metrics`` accounts for everything answered before it first. While someone
watches the console's live view, the same turn's exchanges go to it (``Watchers``); with
nobody watching, that is one check of an empty set per turn. The console itself, under
``/console``, is an ASGI app of its own (same origin only: no CORS).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..clock import now_us
from ..errors import (
    DuplicateHeader,
    IngestionError,
    InvalidIdempotencyKey,
    MethodNotAllowed,
    NotFound,
    ShuttingDown,
)
from ..schema import Item
from . import clients
from .access import OperatorAccess
from .body import BodyBudget, ClientDisconnected, Hold, read_body
from .limits import PayloadLimits
from .ratelimit import RateLimiter

log = logging.getLogger("trubrics_ingestion.app")
T = TypeVar("T")

Headers = Sequence[tuple[bytes, bytes]]
Reply = tuple[int, bytes, Headers]
# What console viewers get of an acknowledged batch (``Exchange.stored``): its source, the
# items ``Watchers.reserve`` kept, its receive time, and the events of those items granted.
Shown = tuple[str, Sequence[Item], int, int]

PREFIX = "/api/ingestion"  # the hosted service's path; both host styles work
ENDPOINTS = (  # every route, as labelled in metrics
    "/publish_events",
    "/publish_llm_events",
    "/v1/traces",
    "/v1/logs",
    *clients.ENDPOINTS,
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/metrics",
    "/console",  # every page, asset and stream of the console
    "other",  # anything else (404s): paths are the client's to choose, labels are not
)
PUBLISH = {"/publish_events": "event", "/publish_llm_events": "llm", **clients.SOURCES}
EXPANSION = {"event": 1, "llm": 2, **clients.EXPANSION}  # stored events per item; 0: it varies
OTLP = {"/v1/traces": "traces", "/v1/logs": "logs"}  # OpenTelemetry's exports, by signal
_BATCHES = frozenset((*PUBLISH, *OTLP))  # where a refusal is a batch refused (in metrics)
CONSOLE = "/console"
CLOSED_BY_CLIENT = 499  # nginx's status for a client gone before its answer: logs only
MAX_LOGGED_PATH = 256  # a 404's path is the client's text: bounded in the access log
_JSON: Headers = ((b"content-type", b"application/json"),)
_VARY_ORIGIN: Headers = ((b"vary", b"Origin"),)  # what CORS adds to an answer without Origin
_TEXT: Headers = ((b"content-type", CONTENT_TYPE_LATEST.encode()),)
_EXCHANGE = "trubrics.exchange"
# Headers read as one value: a second copy is refused, never silently preferred.
SINGLE_VALUED = frozenset(
    (
        b"x-api-key",
        b"authorization",
        b"content-type",
        b"content-encoding",
        b"content-length",
        b"idempotency-key",
    )
)
_KNOWN = frozenset(ENDPOINTS)
_encode = msgspec.json.Encoder().encode


class Keys(Protocol):
    """What the request path asks of a key cache (``keys.cache``)."""

    async def project_for(self, raw: str | None) -> str:
        """The project a key writes to, or an ``IngestionError`` (401, 503) saying why not."""
        ...


class Journal(Protocol):
    """Where accepted batches go (``store.journal``); ``append`` queues a batch, its
    future is done once the batch is durable."""

    def append(
        self,
        project: str,
        source: str,
        body: bytes,
        received_at: int,
        idempotency_key: str | None = None,
        *,
        items: Sequence[Item],
    ) -> Awaitable[bool]:
        """True when stored, False when the batch repeats one already stored."""

    def ready(self) -> bool: ...


class Exports(Protocol):
    """What the OTLP endpoints ask of a receiver (``otlp.receiver``)."""

    def media_type(self, content_type: bytes | None) -> bytes:
        """The export's media type, or an ``IngestionError`` (415)."""
        ...

    def accept(self, signal: str, media: bytes, body: bytes) -> ExportAccepted:
        """The export decoded, or an ``IngestionError`` (400)."""
        ...

    def stored(self) -> None:
        """An export was journaled."""


class ExportAccepted(Protocol):
    """An OTLP export to journal (unless ``body`` is empty), and its answer."""

    @property
    def source(self) -> str: ...
    @property
    def body(self) -> bytes: ...
    @property
    def events(self) -> int: ...
    @property
    def reply(self) -> bytes: ...
    @property
    def content_type(self) -> bytes: ...


class RequestMetrics(Protocol):
    """What the app counts (``node.metrics``), and the scrape it serves."""

    def request(self, endpoint: str, status: int, seconds: float) -> None: ...

    def accepted(self, project: str, events: int) -> None: ...

    def rejected(self, reason: str, project: str | None) -> None: ...

    def dedup_hit(self) -> None: ...

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        ...


class AccessLog(Protocol):
    """Where one line per answered request goes (``node.logs``)."""

    def write(self, lines: Iterable[tuple[dict[str, Any], float]]) -> None:
        """One line per item: its fields, and its time (Unix)."""


class Watchers(Protocol):
    """Who watches requests as they are answered (the console's live view)."""

    @property
    def viewers(self) -> Collection[object]:
        """Empty while nobody watches: then nothing is handed over."""
        ...

    def answered(self, exchanges: Sequence[Exchange]) -> None:
        """One loop turn's answered requests (on the loop's thread; must not block)."""

    def reserve(self, items: Sequence[Item], events: int) -> tuple[Sequence[Item], int]:
        """The first of a queued batch's items that the viewers will be shown, and how
        many events they make (usually none at high rates): all the request keeps."""
        ...


class Exchange:
    """What one request came to: filled in by the routing, read once it is answered."""

    __slots__ = (
        "answered_at",
        "body_bytes",
        "detail",
        "duplicate",
        "endpoint",
        "events",
        "method",
        "path",
        "project",
        "raw_path",
        "reason",
        "seconds",
        "status",
        "stored",
    )

    def __init__(self, method: str, raw_path: str, path: str, endpoint: str) -> None:
        self.method = method
        self.raw_path = raw_path  # as sent (for the log)
        self.path = path  # normalised: no prefix, no doubled or trailing slash
        self.endpoint = endpoint  # a metrics label: a known route, or "other"
        self.status = CLOSED_BY_CLIENT  # until an answer starts
        self.project: str | None = None
        self.events = 0  # stored
        self.duplicate = False  # a repeat of a stored batch, acknowledged
        self.body_bytes: int | None = None
        self.reason: str | None = None  # why a publish request was refused
        self.detail: Any = None  # and what the client was told
        self.stored: Shown | None = None  # the batch acknowledged, for console viewers
        self.seconds = 0.0  # from the head to the end of the answer
        self.answered_at = 0.0  # Unix time


class IngestionApp:
    """Serves the two publish endpoints plus health, readiness, metrics and the OpenAPI
    document, behind CORS so browsers can publish; counts and logs every request."""

    def __init__(
        self,
        *,
        keys: Keys,
        journal: Journal,
        max_body_bytes: int,
        limits: PayloadLimits,
        rate: RateLimiter,
        budget: BodyBudget,
        openapi: bytes,
        metrics: RequestMetrics,
        access_log: AccessLog | None,
        cors_origins: Sequence[str],
        readiness: Callable[[], dict[str, Any]] = dict,
        access: OperatorAccess | None = None,
        exports: Exports | None = None,
        live: Watchers | None = None,
        console: ASGIApp | None = None,
    ) -> None:
        self._keys = keys
        self._exports = exports
        self._live = live
        self._console = console
        self._access = access or OperatorAccess()
        self._readiness_details = readiness
        self._journal = journal
        self._max_body_bytes = max_body_bytes
        self._limits = limits
        self._rate = rate
        self._budget = budget
        self._metrics = metrics
        self._access_log = access_log
        self._answered: list[Exchange] = []  # in this loop iteration, not accounted yet
        # /readyz and /metrics read the store: on a slow disk that must not stall the loop
        # (and every acknowledgement with it). One thread, so reads never overlap.
        self._store_reads = ThreadPoolExecutor(1, thread_name_prefix="status reads")
        self._gets: dict[str, Callable[[Scope], Awaitable[Reply]]] = {
            "/healthz": _constant((200, b'{"status":"ok"}', _JSON)),
            "/readyz": self._readiness,
            "/openapi.json": _constant((200, openapi, _JSON)),
            "/metrics": self._metrics_page,
        }
        self._cors = CORSMiddleware(
            self._handle,
            allow_origins=cors_origins,
            allow_methods=("GET", "POST", "OPTIONS"),
            allow_headers=(
                "content-type",
                "content-encoding",
                "x-api-key",
                "authorization",
                "idempotency-key",
            ),
            max_age=3600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        raw_path: str = scope["path"]
        path = _normalise(raw_path)
        exchange = Exchange(scope["method"], raw_path, path, _endpoint(path))
        scope[_EXCHANGE] = exchange
        if exchange.method == "OPTIONS":  # preflights are answered by the CORS middleware
            send = _watching(send, exchange)
        try:
            if exchange.endpoint == CONSOLE and self._console is not None:
                await self._console(scope, receive, _watching(send, exchange))
            elif _has_origin(scope["headers"]):
                await self._cors(scope, receive, send)
            else:
                await self._serve(scope, receive, send, _VARY_ORIGIN)
        finally:
            exchange.seconds = time.perf_counter() - started
            exchange.answered_at = time.time()
            self._answered.append(exchange)
            if len(self._answered) == 1:
                asyncio.get_running_loop().call_soon(self.account)

    def account(self) -> None:
        """Count and log the requests answered since the last call: never a header value,
        so never a key. The loop calls it once per iteration that answered requests."""
        answered, self._answered = self._answered, []
        metrics = self._metrics
        for exchange in answered:
            metrics.request(exchange.endpoint, exchange.status, exchange.seconds)
            if exchange.reason is not None:
                metrics.rejected(exchange.reason, exchange.project)
            elif exchange.events:
                metrics.accepted(exchange.project or "", exchange.events)
            elif exchange.duplicate:
                metrics.dedup_hit()
        if self._access_log is not None and answered:
            self._access_log.write(map(_access_line, answered))
        if self._live is not None and self._live.viewers:
            self._live.answered(answered)

    def close(self) -> None:
        """Account for what the loop's last iteration answered (at shutdown)."""
        self.account()
        self._store_reads.shutdown(wait=False)

    async def _metrics_page(self, scope: Scope) -> Reply:
        refusal = self._access.refusal(scope)
        if refusal is not None:
            raise refusal
        self.account()  # everything answered before this scrape is in it (on the loop)
        return 200, await self._off_loop(self._metrics.exposition), _TEXT

    def _off_loop(self, read: Callable[[], T]) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._store_reads, read)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app behind the CORS middleware, which adds its own headers."""
        await self._serve(scope, receive, send, ())

    async def _serve(self, scope: Scope, receive: Receive, send: Send, cors: Headers) -> None:
        """Route and answer, ``cors`` ending every answer's headers."""
        exchange: Exchange = scope[_EXCHANGE]
        try:
            status, body, headers = await self._route(scope, receive, exchange)
        except ClientDisconnected:
            exchange.reason = "disconnected"
            return
        except asyncio.CancelledError:  # the graceful-shutdown deadline passed: say so, then go
            await self._refuse(send, exchange, ShuttingDown(), cors)
            raise
        except IngestionError as error:
            await self._refuse(send, exchange, error, cors)
            return
        except Exception:  # a bug of ours: say so without leaking internals
            log.exception("unhandled error on %s %s", scope["method"], exchange.path)
            if exchange.endpoint in _BATCHES:
                exchange.reason = "internal_error"
            exchange.status = 500
            await _respond(send, 500, b'{"detail":"Internal server error."}', _JSON, cors)
            return
        exchange.status = status
        await _respond(send, status, body, headers, cors)

    async def _refuse(
        self, send: Send, exchange: Exchange, error: IngestionError, cors: Headers
    ) -> None:
        if exchange.endpoint in _BATCHES and not isinstance(error, MethodNotAllowed):
            exchange.reason = error.reason
            exchange.detail = error.detail
        exchange.status = error.status
        body = _encode({"detail": error.detail})
        await _respond(send, error.status, body, _JSON, (*error.headers, *cors))

    async def _route(self, scope: Scope, receive: Receive, exchange: Exchange) -> Reply:
        path = exchange.path
        method: str = scope["method"]
        if path in PUBLISH:
            if method != "POST":
                raise MethodNotAllowed("POST")
            return await self._publish(scope, receive, PUBLISH[path], exchange)
        if path in OTLP and self._exports is not None:
            if method != "POST":
                raise MethodNotAllowed("POST")
            return await self._export(scope, receive, OTLP[path], self._exports, exchange)
        if path in self._gets:
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed("GET, HEAD")
            return await self._gets[path](scope)
        raise NotFound()

    async def _publish(
        self, scope: Scope, receive: Receive, source: str, exchange: Exchange
    ) -> Reply:
        received_at = now_us()
        headers = _single_valued(scope["headers"])
        key = _header(headers, b"x-api-key")
        if key is None and source in clients.KEY_IN_QUERY:
            key = clients.query_key(scope)
        project = await self._keys.project_for(key)
        exchange.project = project
        with self._budget.hold() as hold:
            return await self._accept(
                project, source, headers, receive, hold, received_at, exchange
            )

    async def _accept(
        self,
        project: str,
        source: str,
        headers: dict[bytes, bytes],
        receive: Receive,
        hold: Hold,
        received_at: int,
        exchange: Exchange,
    ) -> Reply:
        body = await read_body(receive, headers, self._max_body_bytes, hold)
        exchange.body_bytes = len(body)
        queued = self._queue(project, source, headers, body, received_at)
        if queued is None:
            return 200, b'{"status":"success","events":0}', _JSON
        committed, events, shown = queued
        if not await committed:
            exchange.duplicate = True
            return 200, b'{"status":"success","events":%d,"duplicate":true}' % events, _JSON
        exchange.events = events
        exchange.stored = shown
        return 200, b'{"status":"success","events":%d}' % events, _JSON

    def _queue(
        self, project: str, source: str, headers: dict[bytes, bytes], body: bytes, received_at: int
    ) -> tuple[Awaitable[bool], int, Shown | None] | None:
        """Decode the batch and queue it for the journal's next commit (None: it holds no
        event): its commit, its event count, and, while console viewers watch, what of it
        they will be shown (``Watchers.reserve``), as ``Exchange.stored`` holds it. The rest
        of the items go when this returns, before the commit: dozens of requests holding
        theirs until then would cost every later allocation a cache miss."""
        if source in clients.DECODED:
            items = clients.decode(self._limits, body, source, received_at)
        else:
            items = self._limits.decode(body, source)
        idempotency_key = _idempotency_key(headers)
        if not items:
            return None
        events = len(items) * EXPANSION[source] or clients.events(items)
        self._rate.take(project, events)
        committed = self._journal.append(
            project, source, body, received_at, idempotency_key, items=items
        )
        if self._live is None or not self._live.viewers:
            return committed, events, None
        kept, granted = self._live.reserve(items, events)
        return committed, events, (source, kept, received_at, granted)

    async def _export(
        self, scope: Scope, receive: Receive, signal: str, exports: Exports, exchange: Exchange
    ) -> Reply:
        """An OTLP/HTTP export: journaled as it came (spans become events later, once their
        trace can be resolved), answered in its own media type."""
        received_at = now_us()
        headers = _single_valued(scope["headers"])
        project = await self._keys.project_for(_otlp_key(headers))
        exchange.project = project
        media = exports.media_type(headers.get(b"content-type"))
        with self._budget.hold() as hold:
            body = await read_body(receive, headers, self._max_body_bytes, hold)
            exchange.body_bytes = len(body)
            accepted = exports.accept(signal, media, body)
            if accepted.events:
                self._rate.take(project, accepted.events)
            if accepted.body:
                await self._journal.append(
                    project, accepted.source, accepted.body, received_at, items=()
                )
                exports.stored()
        return 200, accepted.reply, ((b"content-type", accepted.content_type),)

    async def _readiness(self, scope: Scope) -> Reply:
        """Ready while batches can be stored; the details, for operators only, say how the
        neighbours are."""
        if not self._journal.ready():
            return 503, _NOT_READY, _JSON
        if self._access.refusal(scope) is not None:
            return 200, _READY, _JSON
        details = await self._off_loop(self._readiness_details)
        return 200, _encode({"status": "ready", **details}), _JSON


def _access_line(exchange: Exchange) -> tuple[dict[str, Any], float]:
    path = exchange.raw_path
    fields = {
        "method": exchange.method,
        "path": path if len(path) <= MAX_LOGGED_PATH else path[:MAX_LOGGED_PATH],
        "status": exchange.status,
        "project": exchange.project,
        "events": exchange.events,
        "body_bytes": exchange.body_bytes,
        "latency_ms": round(exchange.seconds * 1000, 3),
        "reason": exchange.reason,
    }
    return fields, exchange.answered_at


_READY = b'{"status":"ready"}'
_NOT_READY = _encode(
    {
        "detail": "Events cannot be stored right now: the journal's last commit failed (disk"
        " full or read-only?) or its writer stopped. Publishing gets 503 meanwhile."
    }
)


def _constant(reply: Reply) -> Callable[[Scope], Awaitable[Reply]]:
    async def page(scope: Scope) -> Reply:
        return reply

    return page


def _normalise(path: str) -> str:
    """The route a path names: SDK hosts given with a trailing slash, the hosted prefix."""
    if "//" in path or path.endswith("/"):
        path = "/" + "/".join(part for part in path.split("/") if part)
    if path.startswith(PREFIX + "/"):
        path = path[len(PREFIX) :]
    return path


def _endpoint(path: str) -> str:
    """The metrics label of a normalised path."""
    if path in _KNOWN:
        return path
    return CONSOLE if path.startswith(CONSOLE + "/") else "other"


def _watching(send: Send, exchange: Exchange) -> Send:
    """``send``, noting the status: for answers sent by the CORS middleware itself."""

    async def watched(message: Message) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
        await send(message)

    return watched


def _has_origin(headers: Headers) -> bool:
    """Whether the request names an ``Origin`` (from a browser), as CORS reads it."""
    return any(name == b"origin" for name, _ in headers)


def _single_valued(raw: Headers) -> dict[bytes, bytes]:
    """The request's headers by name. A dict keeps a name's last value, while a proxy in
    front may act on the first (check one key, forward another): a repeat of a header in
    ``SINGLE_VALUED`` is a 400. One pass over the list in the common case, no repeats."""
    headers = dict(raw)
    if len(headers) < len(raw):
        seen: set[bytes] = set()
        for name, _ in raw:
            if name in SINGLE_VALUED:
                if name in seen:
                    raise DuplicateHeader(name.decode())
                seen.add(name)
    return headers


def _otlp_key(headers: dict[bytes, bytes]) -> str | None:
    """The key of an OTLP exporter: ``x-api-key`` (``OTEL_EXPORTER_OTLP_HEADERS``), else
    ``Authorization: Bearer <key>``."""
    key = _header(headers, b"x-api-key")
    if key is not None:
        return key
    scheme, _, credentials = (_header(headers, b"authorization") or "").partition(" ")
    return credentials if scheme.lower() == "bearer" else None


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
    send: Send, status: int, body: bytes, content: Headers, extra: Headers = ()
) -> None:
    headers = [*content, (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
