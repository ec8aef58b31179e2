"""The news offsets committed as metadata (`tradepulse.bus.rebuild.encode_pending`): what the rebuild
re-reads of a news partition, so the list must survive the round trip and fit Kafka's metadata limit."""

from __future__ import annotations

from tradepulse.bus.rebuild import MAX_PENDING_METADATA, decode_pending, encode_pending


def test_pending_offsets_round_trip_through_the_commit_metadata() -> None:
    for offsets in ([], [0], [7, 8, 9], [35, 36, 1_296, 10**12, 10**12 + 1]):
        metadata = encode_pending(offsets)
        assert metadata is not None and len(metadata) <= MAX_PENDING_METADATA
        assert decode_pending(metadata) == frozenset(offsets)


def test_no_or_foreign_metadata_means_no_list_and_an_empty_list_means_nothing_pending() -> None:
    assert decode_pending(None) is None
    assert decode_pending("") is None  # committed by a runner that did not write the list
    assert decode_pending("something else") is None
    assert decode_pending(encode_pending([])) == frozenset()


def test_a_list_too_long_for_kafka_is_not_committed() -> None:
    # Offsets far apart: several base-36 digits each, well beyond 4 KB in all.
    assert encode_pending([i * 10**9 for i in range(1, 2_000)]) is None
