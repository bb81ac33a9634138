"""Schemathesis hooks for ``make fuzz``: drop the failures the document cannot avoid.

Loaded by ``fuzz/run.py`` through ``SCHEMATHESIS_HOOKS``. Everything else schemathesis
finds is kept: these filters are narrow on purpose, so that a real regression in body
validation still fails the run.
"""

from __future__ import annotations

from typing import Any

import schemathesis

# The Content-Encoding values the document enumerates, and the server accepts. It compares
# them as HTTP does (trimmed, case-insensitive: RFC 9110), which an enum cannot say.
ENCODINGS = {"", "identity", "gzip", "x-gzip"}
GZIP = {"gzip", "x-gzip"}
POSITIVE_REJECTED = "ST202"
NEGATIVE_ACCEPTED = "ST201"


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep a failure unless it is one of the two the contract cannot express."""
    encoding = _content_encoding(case)
    if failure.code == POSITIVE_REJECTED and response.status_code == 400 and _is_otlp(case):
        # The document cannot hold OTLP's messages (protobuf, or their JSON mapping): any
        # bytes or object fit its schema, and one that is not an export rightly gets a 400.
        return False
    if failure.code == POSITIVE_REJECTED and response.status_code == 400:
        # OpenAPI cannot say "this body is gzipped": schemathesis sends plain JSON with
        # "Content-Encoding: gzip", and a 400 (not valid gzip) is the right answer.
        return encoding is None or encoding.strip().lower() not in GZIP
    if failure.code == NEGATIVE_ACCEPTED and _only_headers_negative(case):
        # "GZIP" or " gzip" is outside the enum, and rightly accepted; the body was valid.
        # Anything else accepted is a real disagreement (an empty value once was).
        return encoding is None or encoding.strip().lower() not in ENCODINGS
    return True


def _is_otlp(case: Any) -> bool:
    return str(case.path) in ("/v1/traces", "/v1/logs")


def _content_encoding(case: Any) -> str | None:
    for name, value in (case.headers or {}).items():
        if name.lower() == "content-encoding":
            return str(value)
    return None


def _only_headers_negative(case: Any) -> bool:
    """Whether the header is the only part generated to violate the schema."""
    meta = case.meta
    if meta is None:
        return False
    negative = {
        str(location.value) for location, info in meta.components.items() if info.mode.is_negative
    }
    return negative == {"header"}
