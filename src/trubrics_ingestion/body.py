"""Reading a request body within a size limit, gzip included.

The limit holds for the bytes on the wire and again for the bytes after decompression,
which is decompressed with an output cap: a gzip bomb costs at most ``limit`` bytes of
memory before it gets its 413.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .errors import InvalidGzip, PayloadTooLarge, UnsupportedEncoding

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_IDENTITY = (b"", b"identity")
_GZIP = (b"gzip", b"x-gzip")


class ClientDisconnected(Exception):
    """The client went away before sending its whole body: there is nobody to answer."""


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The request body, decompressed, at most ``limit`` bytes."""
    encoding = headers.get(b"content-encoding", b"").strip().lower()
    if encoding not in _IDENTITY and encoding not in _GZIP:
        raise UnsupportedEncoding()
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    body = await _receive_all(receive, limit)
    return _gunzip(body, limit) if encoding in _GZIP else body


async def _receive_all(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _gunzip(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise InvalidGzip() from None
    if len(out) > limit:
        raise PayloadTooLarge(limit)
    if not inflater.eof:
        raise InvalidGzip()
    return out
