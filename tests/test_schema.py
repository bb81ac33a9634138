"""The decoder in-process: fast path, and the slow path's error report."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trubrics_ingestion.errors import InvalidPayload
from trubrics_ingestion.schema import Event, LLMEvent, decode_batch


def test_valid_batch_decodes_into_structs() -> None:
    (event,) = decode_batch(
        b'[{"user_id":"u","event":"e","timestamp":"2026-06-20T12:00:00Z"}]', "event"
    )
    assert event == Event("u", "e", datetime(2026, 6, 20, 12, tzinfo=UTC))
    (llm,) = decode_batch(b'[{"user_id":"u","prompt":"p","generation":"g","latency":2}]', "llm")
    assert isinstance(llm, LLMEvent) and llm.latency == 2.0 and llm.timestamp is None


def test_error_paths_inside_properties_become_loc_parts() -> None:
    body = b'[{"user_id":"u","event":"e","timestamp":"2026-06-20T12:00:00Z","properties":5}]'
    with pytest.raises(InvalidPayload) as caught:
        decode_batch(body, "event")
    assert caught.value.detail == [
        {
            "loc": ["body", 0, "properties"],
            "msg": "Expected `object | null`, got `int`.",
            "type": "dict_type",
        }
    ]


@pytest.mark.parametrize("body", [b"[", b"\xff", b"null", b"{}", b'"x"', b"1", b"[1e999]"])
def test_garbage_always_gives_a_detail_list(body: bytes) -> None:
    with pytest.raises(InvalidPayload) as caught:
        decode_batch(body, "llm")
    assert caught.value.detail and all(e["loc"][0] == "body" for e in caught.value.detail)
