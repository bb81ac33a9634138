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


def test_time_range_is_judged_on_the_decoded_value_by_both_paths() -> None:
    """The fast path refuses the escaped year 0001; the slow path (entered here for the
    empty user_id) names the same timestamp, next to the other error."""
    stamp = b'"\\u0030001-01-01T00:00:00+01:00"'
    event = b'{"user_id":"u","event":"e","timestamp":%s}' % stamp
    with pytest.raises(InvalidPayload) as fast:
        decode_batch(b"[%s]" % event, "event")
    empty_user = b'{"user_id":"","event":"e","timestamp":"2026-06-20T12:00:00Z"}'
    with pytest.raises(InvalidPayload) as slow:
        decode_batch(b"[%s,%s]" % (event, empty_user), "event")
    out_of_range = {
        "loc": ["body", 0, "timestamp"],
        "msg": "Timestamp is out of range once converted to UTC (years 1 to 9999).",
        "type": "datetime_out_of_range",
    }
    assert fast.value.detail == [out_of_range]
    assert slow.value.detail[0] == out_of_range
    assert [e["loc"] for e in slow.value.detail] == [
        ["body", 0, "timestamp"],
        ["body", 1, "user_id"],
    ]


@pytest.mark.parametrize(
    ("timestamp", "latency", "storable"),
    [
        ("0001-01-01T00:00:00+01:00", None, False),  # an hour before year 1 in UTC
        ("0001-01-01T01:00:00+01:00", None, True),
        ("0001-01-01T00:30:00Z", 1800, True),  # the prompt exactly at the start of year 1
        ("0001-01-01T00:30:00Z", 1800.000001, False),
        ("9999-12-31T23:59:59-23:59", None, False),  # past year 9999 once in UTC
        ("9999-12-31T23:59:59.999999", None, True),  # naive is UTC
        ("0001-01-08T00:00:00Z", 604800, True),  # the longest latency, from day 8
    ],
)
def test_llm_prompt_time_and_utc_conversion_stay_in_range(
    timestamp: str, latency: float | None, storable: bool
) -> None:
    body = b'[{"user_id":"u","prompt":"p","generation":"g","timestamp":"%s","latency":%s}]' % (
        timestamp.encode(),
        b"null" if latency is None else repr(latency).encode(),
    )
    try:
        decode_batch(body, "llm")
    except InvalidPayload as refused:
        assert not storable and refused.detail[0]["type"] == "datetime_out_of_range"
    else:
        assert storable
