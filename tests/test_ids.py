"""Event ids: UUIDv7, time-ordered, unique per node, derived rather than random."""

from __future__ import annotations

import uuid

from trubrics_ingestion.store.ids import event_id, id_factory


def test_ids_are_uuid7_with_the_receive_time() -> None:
    parsed = uuid.UUID(event_id(1_781_956_800_123, batch=7, index=3, node=0xABCDEF))
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == 1_781_956_800_123


def test_ids_sort_by_time_then_batch_then_position() -> None:
    ids = [
        event_id(ms, batch, index, node=5)
        for ms in (1, 2)
        for batch in (1, 2)
        for index in (0, 1, 255)
    ]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_nodes_never_share_ids_and_ids_are_reproducible() -> None:
    assert event_id(1, 1, 1, node=1) != event_id(1, 1, 1, node=2)
    make = id_factory(1_000, batch=9, node=3)
    assert [make(), make()] == [event_id(1_000, 9, 0, 3), event_id(1_000, 9, 1, 3)]


def test_a_factory_hands_out_the_canonical_text_of_every_id_of_a_batch() -> None:
    received_ms, batch, node = 1_781_956_800_123, (1 << 42) - 3, 0xFFFFFF
    make = id_factory(received_ms, batch, node)
    for index in range(256):
        made = make()
        assert made == event_id(received_ms, batch, index, node)
        assert made == str(uuid.UUID(made))  # lower-case 8-4-4-4-12
        assert (uuid.UUID(made).int >> 24) & 0xFF == index
