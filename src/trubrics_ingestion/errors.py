"""Every way a request can fail, each with one status and one ``detail``.

Handlers raise these; only ``ingest.app`` turns them into responses, so a status code is
chosen in exactly one place and an unexpected exception can never leak as a 500 with a
stack trace for something the client did. Each also has a ``reason``: a short fixed label
for metrics and the access log (``REJECTION_REASONS`` lists every one).
"""

from __future__ import annotations

from typing import Any


class IngestionError(Exception):
    """Base class: a client-visible failure with a status code and a JSON ``detail``."""

    status: int = 400
    detail: Any = "Bad request."
    headers: tuple[tuple[bytes, bytes], ...] = ()
    reason: str = "bad_request"

    def __init__(self, detail: Any = None) -> None:
        if detail is not None:
            self.detail = detail
        super().__init__(self.detail)


class Unauthorized(IngestionError):
    status = 401
    reason = "unauthorized"
    detail = "Missing or invalid x-api-key."


class NotFound(IngestionError):
    status = 404
    reason = "not_found"
    detail = "Not found."


class MethodNotAllowed(IngestionError):
    status = 405
    reason = "method_not_allowed"
    detail = "Method not allowed."

    def __init__(self, allowed: str) -> None:
        super().__init__()
        self.headers = ((b"allow", allowed.encode()),)


class MetricsTokenRequired(IngestionError):
    """A node's internals asked for without its metrics token (see ``ingest.access``)."""

    status = 401
    reason = "metrics_token_required"  # not a batch's: never counted as one
    detail = "This needs the node's metrics token, sent as Authorization: Bearer <token>."
    headers = ((b"www-authenticate", b'Bearer realm="trubrics-ingestion"'),)


class OperatorsOnly(IngestionError):
    """A node's internals asked for from elsewhere, while it has no metrics token."""

    status = 403
    reason = "operators_only"  # not a batch's: never counted as one
    detail = (
        "Served to clients on this host only. To read it from elsewhere, give the node a"
        " metrics token (--metrics-token-file or TRUBRICS_METRICS_TOKEN) and send it as"
        " Authorization: Bearer <token>."
    )


class PayloadTooLarge(IngestionError):
    status = 413
    reason = "payload_too_large"
    detail = "Request body is too large."

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"Request body is larger than {limit_bytes} bytes (after decompression).")


class UnsupportedEncoding(IngestionError):
    status = 415
    reason = "unsupported_encoding"
    detail = "Unsupported Content-Encoding: only gzip and identity are accepted."


class UnsupportedContentType(IngestionError):
    status = 415
    reason = "unsupported_content_type"
    detail = "Unsupported Content-Type: OTLP/HTTP is application/x-protobuf or application/json."


class InvalidOtlp(IngestionError):
    """An OTLP/HTTP body that is not an export of the endpoint's signal."""

    status = 400
    reason = "invalid_otlp"


class InvalidIdempotencyKey(IngestionError):
    status = 400
    reason = "invalid_idempotency_key"
    detail = "Idempotency-Key must be 1 to 255 printable ASCII characters."


class DuplicateHeader(IngestionError):
    """A header that decides how the request is read came twice: we would read one copy,
    a proxy in front may have read (and checked) the other."""

    status = 400
    reason = "duplicate_header"

    def __init__(self, name: str) -> None:
        super().__init__(f"The {name} header was sent more than once; send it once.")


class IdempotencyConflict(IngestionError):
    status = 409
    reason = "idempotency_conflict"
    detail = "This Idempotency-Key was already used with a different body; nothing was stored."


class InvalidGzip(IngestionError):
    status = 400
    reason = "invalid_gzip"
    detail = "Content-Encoding is gzip but the body is not valid gzip data."


class InvalidPayload(IngestionError):
    """422 in FastAPI's shape: ``detail`` is a list of ``{loc, msg, type}``, one per problem.

    Its reason collapses the error types: ``too_large`` or ``too_deep`` if an event broke
    that limit, ``invalid`` for everything else.
    """

    status = 422
    reason = "invalid"

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        kinds = {error.get("type") for error in detail}
        for limit in ("too_large", "too_deep"):
            if limit in kinds:
                self.reason = limit
                break


class RateLimited(IngestionError):
    status = 429
    reason = "rate_limited"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"Rate limit exceeded for this project; retry in {retry_after_s} s.")
        self.headers = ((b"retry-after", str(retry_after_s).encode()),)


class ServerBusy(IngestionError):
    status = 503
    reason = "server_busy"
    detail = "The server is busy receiving other requests; nothing was stored. Retry shortly."
    headers = ((b"retry-after", b"1"),)


class ShuttingDown(IngestionError):
    status = 503
    reason = "shutting_down"
    detail = "The server is shutting down; this request may not have been stored. Retry."
    headers = ((b"retry-after", b"1"),)


class RegistryUnavailable(IngestionError):
    """An unknown key while the shared key registry cannot be reached: it may be valid."""

    status = 503
    reason = "registry_unavailable"
    detail = (
        "This key cannot be checked right now (the key registry is unreachable);"
        " nothing was stored. Retry later."
    )
    headers = ((b"retry-after", b"5"),)


class StorageUnavailable(IngestionError):
    """The batch could not be made durable: the client must retry, nothing was stored."""

    status = 503
    reason = "storage_unavailable"
    detail = "Events could not be stored right now; nothing was stored. Retry later."
    headers = ((b"retry-after", b"1"),)


# Every ``reason`` a publish request can be refused for: the errors above, and two outcomes
# that are not errors of the client's: it went away before its answer, or a bug of ours.
REJECTION_REASONS = (
    "unauthorized",
    "invalid",
    "too_large",
    "too_deep",
    "payload_too_large",
    "unsupported_encoding",
    "unsupported_content_type",
    "invalid_otlp",
    "invalid_gzip",
    "invalid_idempotency_key",
    "duplicate_header",
    "idempotency_conflict",
    "rate_limited",
    "server_busy",
    "storage_unavailable",
    "registry_unavailable",
    "shutting_down",
    "bad_request",
    "disconnected",
    "internal_error",
)
