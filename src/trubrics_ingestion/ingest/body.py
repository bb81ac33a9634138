"""Reading a request body within a size limit, gzip included, and within a memory budget.

The limit holds for the bytes on the wire and again for the bytes after decompression,
which is decompressed with an output cap: a gzip bomb costs at most ``limit`` bytes of
memory before it gets its 413. Inflating is linear in the body (RFC 1952 allows many
members, and each member's end must not copy the rest of the input), caps the members, and
runs in a worker thread unless the body is tiny: one request never holds the event loop
for more than a millisecond or so. Across all requests, the bodies held in memory at once
stay within a ``BodyBudget``; a request that would exceed it gets a 503 to retry, so
many slow uploads cannot add up to unbounded memory.
"""

from __future__ import annotations

import asyncio
import zlib

from starlette.types import Receive

from ..errors import InvalidGzip, PayloadTooLarge, ServerBusy, UnsupportedEncoding

_IDENTITY = (b"", b"identity")
_GZIP = (b"gzip", b"x-gzip")
MAX_GZIP_MEMBERS = 1000  # real clients send one; each costs a header and a trailer
# Deflate expands at most ~1032 times: inflating this much input takes a millisecond or
# two, cheaper on the loop than a hop to a thread and back. Beyond it, a worker thread.
ON_LOOP_GZIP_BYTES = 1024
_FEED_BYTES = 16 * 1024  # input per inflate call: all a member's end can copy (unused_data)


class ClientDisconnected(Exception):
    """The client went away before sending its whole body: there is nobody to answer."""


class BodyBudget:
    """Bytes of request bodies currently held, across all requests of this process."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def hold(self) -> Hold:
        """A reservation that grows as a body arrives and is released when the request ends
        (the ``with`` block it opens)."""
        return Hold(self)


class Hold:
    """A context manager of its own, not ``contextlib``'s: once per request, this is cheaper."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.size = 0

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._budget.used -= self.size

    def take(self, size: int) -> None:
        if self._budget.used + size > self._budget.max_bytes:
            raise ServerBusy()
        self._budget.used += size
        self.size += size


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int, hold: Hold) -> bytes:
    """The request body, decompressed, at most ``limit`` bytes, all of it held by ``hold``."""
    encoding = headers.get(b"content-encoding", b"").strip().lower()
    if encoding not in _IDENTITY and encoding not in _GZIP:
        raise UnsupportedEncoding()
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    body = await _receive_all(receive, limit, hold)
    if encoding in _GZIP:
        if len(body) <= ON_LOOP_GZIP_BYTES:
            body = gunzip(body, limit)
        else:
            body = await asyncio.to_thread(gunzip, body, limit)
        hold.take(len(body))
    return body


async def _receive_all(receive: Receive, limit: int, hold: Hold) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        hold.take(len(chunk))
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def gunzip(data: bytes, limit: int) -> bytes:
    """Inflate every gzip member (RFC 1952 allows several, here up to ``MAX_GZIP_MEMBERS``),
    never past ``limit`` bytes, in one pass over ``data``."""
    out = bytearray()
    view = memoryview(data)
    start = 0
    for _ in range(MAX_GZIP_MEMBERS):
        start = _inflate_member(view, start, out, limit)
        if start == len(data):
            return bytes(out)
    raise InvalidGzip(f"The gzip body has more than {MAX_GZIP_MEMBERS} members.")


def _inflate_member(data: memoryview, start: int, out: bytearray, limit: int) -> int:
    """Inflate the member at ``start`` onto ``out``; where the next one starts. Input goes
    in slices, so a member's end copies at most one slice, not the rest of the body."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    while not inflater.eof:
        piece = data[start : start + _FEED_BYTES]
        if not piece:
            raise InvalidGzip()  # truncated
        try:
            out += inflater.decompress(piece, limit + 1 - len(out))
        except zlib.error:
            raise InvalidGzip() from None
        if len(out) > limit:
            raise PayloadTooLarge(limit)
        start += len(piece) - len(inflater.unused_data)
    return start
