"""Connection-level limits that uvicorn's httptools protocol does not have.

httptools accepts headers of any size and count, and uvicorn waits forever for a request
that trickles in; both let one client hold memory or connections indefinitely. This
subclass adds, per connection: a cap on the request head (URL plus headers, in bytes and
in count: 431), a deadline to receive a whole request (408, then the connection is
closed; other clients are served meanwhile), and a cap on open connections (503). Each
refusal is a JSON body with ``detail``, like every other error of the service, and is
counted (``trubrics_connections_refused`` in ``/metrics``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True, kw_only=True)
class ConnectionLimits:
    """The connection layer's share of ``Settings``, which holds their defaults."""

    max_head_bytes: int
    max_headers: int
    request_timeout_s: float
    max_connections: int
    # Told the status of every request this layer answers itself: the app never sees those,
    # so its metrics and access log cannot count them.
    on_refused: Callable[[int], None] | None = None


LINGER_S = 2.0


class _HeadTooLarge(Exception):
    """Raised inside a parser callback to stop parsing; see ``send_400_response``."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits]  # set by with_limits: no use without them

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type[LimitedHttpToolsProtocol]:
        """The protocol class to hand to ``uvicorn.Config(http=...)``."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_at: float | None = None  # loop time; None: nothing to wait for
        self._head_bytes = 0
        self._receiving = False
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "Too many open connections.", retry=1)
        else:
            self._arm_deadline()  # a connection that never sends a request is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """A graceful stop waits for every answer to end; one still being sent (the
        console's live stream, which only ends when its client goes) never would: cut it
        (its browser reconnects), dropping whatever it had not sent."""
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.transport.abort()
            return
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        if not self._refused:  # after a refusal, the rest of the request is read and dropped
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._receiving = True
        self._arm_deadline()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        if len(self.headers) >= self.limits.max_headers:
            raise _HeadTooLarge()
        super().on_header(name, value)

    def on_message_complete(self) -> None:
        self._receiving = False
        self._disarm_deadline()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to any parser error, ours included: tell ours apart, and answer
        the parser's own (a repeated Content-Length, a bad method...) in JSON with a
        ``detail`` naming it, like every other refusal, not uvicorn's plain text."""
        if isinstance(self._parser_error_cause(), _HeadTooLarge):
            detail = (
                f"Request head too large: at most {self.limits.max_headers} headers and"
                f" {self.limits.max_head_bytes} bytes of URL and headers."
            )
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, detail)
        else:
            error = sys.exc_info()[1]
            named = f": {error}" if error is not None and str(error) else ""
            self._refuse(HTTPStatus.BAD_REQUEST, f"Malformed HTTP request{named}.")

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.limits.max_head_bytes:
            raise _HeadTooLarge()

    def _parser_error_cause(self) -> BaseException | None:
        # httptools wraps a callback's exception; the original is the handled one's context.
        error = sys.exc_info()[1]
        return error.__context__ if error is not None else None

    def _arm_deadline(self) -> None:
        """A whole request must arrive within ``request_timeout_s`` from now. One timer
        per connection, moved only when it fires early: not a new timer and a cancelled
        one per request (measured: about half of what this layer cost per request)."""
        self._deadline_at = self.loop.time() + self.limits.request_timeout_s
        if self._deadline is None:
            self._deadline = self.loop.call_at(self._deadline_at, self._on_deadline)

    def _disarm_deadline(self) -> None:
        self._deadline_at = None  # the timer finds nothing to do when it fires

    def _stop_deadline(self) -> None:
        self._disarm_deadline()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if self._deadline_at is None:
            return
        if self.loop.time() < self._deadline_at:  # re-armed meanwhile (a later request)
            self._deadline = self.loop.call_at(self._deadline_at, self._on_deadline)
            return
        self._too_slow()

    def _too_slow(self) -> None:
        if self.transport.is_closing():
            return
        answered = self.cycle is not None and self.cycle.response_started
        if self._receiving and not answered:
            detail = f"The request was not received within {self.limits.request_timeout_s:g} s."
            self._refuse(HTTPStatus.REQUEST_TIMEOUT, detail)
        else:
            self.transport.close()

    def _refuse(self, status: HTTPStatus, detail: str, retry: int | None = None) -> None:
        if self.limits.on_refused is not None:
            self.limits.on_refused(status.value)
        body = msgspec.json.encode({"detail": detail})
        head = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
            *([f"retry-after: {retry}"] if retry is not None else []),
        ]
        self.transport.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        # Closing now would reset the connection while the client is still sending, and a
        # reset can destroy our answer before the client reads it: half-close, drain, close.
        self._refused = True
        self._stop_deadline()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
