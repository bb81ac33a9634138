"""Every way a request can fail, each with one status and one ``detail``.

Handlers raise these; only ``app.py`` turns them into responses, so a status code is
chosen in exactly one place and an unexpected exception can never leak as a 500 with a
stack trace for something the client did.
"""

from __future__ import annotations

from typing import Any


class IngestionError(Exception):
    """Base class: a client-visible failure with a status code and a JSON ``detail``."""

    status: int = 400
    detail: Any = "Bad request."
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, detail: Any = None) -> None:
        if detail is not None:
            self.detail = detail
        super().__init__(self.detail)


class Unauthorized(IngestionError):
    status = 401
    detail = "Missing or invalid x-api-key."


class NotFound(IngestionError):
    status = 404
    detail = "Not found."


class MethodNotAllowed(IngestionError):
    status = 405
    detail = "Method not allowed."

    def __init__(self, allowed: str) -> None:
        super().__init__()
        self.headers = ((b"allow", allowed.encode()),)


class PayloadTooLarge(IngestionError):
    status = 413
    detail = "Request body is too large."

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"Request body is larger than {limit_bytes} bytes (after decompression).")


class UnsupportedEncoding(IngestionError):
    status = 415
    detail = "Unsupported Content-Encoding: only gzip and identity are accepted."


class InvalidIdempotencyKey(IngestionError):
    status = 400
    detail = "Idempotency-Key must be 1 to 255 printable ASCII characters."


class IdempotencyConflict(IngestionError):
    status = 409
    detail = "This Idempotency-Key was already used with a different body; nothing was stored."


class InvalidGzip(IngestionError):
    status = 400
    detail = "Content-Encoding is gzip but the body is not valid gzip data."


class InvalidPayload(IngestionError):
    """422 in FastAPI's shape: ``detail`` is a list of ``{loc, msg, type}``, one per problem."""

    status = 422


class RateLimited(IngestionError):
    status = 429

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"Rate limit exceeded for this project; retry in {retry_after_s} s.")
        self.headers = ((b"retry-after", str(retry_after_s).encode()),)


class ServerBusy(IngestionError):
    status = 503
    detail = "The server is busy receiving other requests; nothing was stored. Retry shortly."
    headers = ((b"retry-after", b"1"),)


class ShuttingDown(IngestionError):
    status = 503
    detail = "The server is shutting down; this request may not have been stored. Retry."
    headers = ((b"retry-after", b"1"),)


class StorageUnavailable(IngestionError):
    """The batch could not be made durable: the client must retry, nothing was stored."""

    status = 503
    detail = "Events could not be stored right now; nothing was stored. Retry later."
    headers = ((b"retry-after", b"1"),)
