"""Bronze planning rules on plain values: admission cap, task split, data-loss detection, offsets JSON."""

from __future__ import annotations

import pytest

from lakehouse.bronze.planning import (
    OFFSETS_RESET,
    RETENTION_GAP,
    TOPIC_RECREATED,
    Incarnation,
    OffsetRange,
    OffsetsFormatError,
    Watermarks,
    allocate_fair,
    decode_offsets,
    detect_losses,
    encode_offsets,
    group_tasks,
    plan_run,
    split_tasks,
)

TOPIC = "crypto.trades.binance"


def plan(committed: dict[int, int], marks: dict[int, tuple[int, int]], cap: int = 1_000_000, per_task: int = 1000,
         accept: bool = False, recreated: bool = False):  # type: ignore[no-untyped-def]
    return plan_run(TOPIC, committed, {p: Watermarks(*m) for p, m in marks.items()}, max_records=cap,
                    records_per_task=per_task, accept_loss=accept, recreated=recreated)


# --- admission control ----------------------------------------------------------------------------

def test_allocate_gives_everything_under_the_cap() -> None:
    assert allocate_fair({0: 10, 1: 0, 2: 5}, 100) == {0: 10, 1: 0, 2: 5}


def test_allocate_is_max_min_fair_over_the_cap() -> None:
    alloc = allocate_fair({0: 1000, 1: 10, 2: 500}, 310)
    # The small partition gets all it has; the two large ones split the rest equally.
    assert alloc == {0: 150, 1: 10, 2: 150}
    assert sum(alloc.values()) == 310


def test_allocate_spreads_the_remainder_without_exceeding_the_cap() -> None:
    alloc = allocate_fair({0: 100, 1: 100, 2: 100}, 10)
    assert sum(alloc.values()) == 10
    assert max(alloc.values()) - min(alloc.values()) <= 1


def test_allocate_never_gives_more_than_available() -> None:
    available = {0: 7, 1: 3, 2: 1000, 3: 0}
    for cap in range(0, 60):
        alloc = allocate_fair(available, cap)
        assert sum(alloc.values()) == min(cap, sum(available.values()))
        assert all(0 <= alloc[p] <= available[p] for p in available)


def test_split_tasks_covers_each_range_exactly_once() -> None:
    tasks = split_tasks([OffsetRange(TOPIC, 0, 5, 30), OffsetRange(TOPIC, 1, 0, 10)], 10)
    assert [(t.partition, t.start, t.end) for t in tasks] == [(0, 5, 15), (0, 15, 25), (0, 25, 30), (1, 0, 10)]


def test_split_tasks_rejects_a_zero_task_size() -> None:
    with pytest.raises(ValueError):
        split_tasks([OffsetRange(TOPIC, 0, 0, 10)], 0)


def test_group_tasks_puts_at_most_one_piece_per_partition_in_a_task() -> None:
    pieces = split_tasks([OffsetRange(TOPIC, 0, 0, 500), OffsetRange(TOPIC, 1, 0, 250),
                          OffsetRange(TOPIC, 2, 0, 250)], 250)
    groups = group_tasks(pieces, slots=2)
    assert all(len({r.partition for r in g}) == len(g) for g in groups)
    assert sorted((r.partition, r.start) for g in groups for r in g) == sorted((r.partition, r.start) for r in pieces)
    # Two slots, 1000 records: two tasks of 500 (one consumer each, reading several partitions).
    assert sorted(sum(r.count for r in g) for g in groups) == [500, 500]


def test_group_tasks_spreads_over_the_slots_and_splits_long_partitions() -> None:
    assert len(group_tasks([OffsetRange(TOPIC, p, 0, 10) for p in range(6)], slots=3)) == 3
    pieces = split_tasks([OffsetRange(TOPIC, 0, 0, 100)], 10)
    assert len(group_tasks(pieces, slots=2)) == 10  # pieces of one partition never share a consumer
    assert group_tasks([], slots=4) == []
    assert len(group_tasks([OffsetRange(TOPIC, 0, 0, 10)], slots=8)) == 1


# --- plans --------------------------------------------------------------------------------------

def test_plan_reads_from_committed_to_end_and_keeps_every_partition() -> None:
    p = plan({0: 10, 1: 4}, {0: (0, 25), 1: (0, 4), 2: (0, 0)}, per_task=10)
    assert [(r.partition, r.start, r.end) for r in p.ranges] == [(0, 10, 25)]
    assert [(t.start, t.end) for t in p.tasks] == [(10, 20), (20, 25)]
    assert p.next_offsets == {0: 25, 1: 4, 2: 0}
    assert p.records == 15 and p.changes_offsets and not p.losses


def test_plan_with_nothing_new_changes_nothing() -> None:
    p = plan({0: 25, 1: 4}, {0: (0, 25), 1: (0, 4)})
    assert not p.ranges and not p.changes_offsets
    assert p.next_offsets == {0: 25, 1: 4}


def test_plan_caps_records_and_resumes_where_it_stopped() -> None:
    first = plan({}, {0: (0, 100), 1: (0, 20)}, cap=50)
    assert first.records == 50 and first.next_offsets == {0: 30, 1: 20}
    second = plan(first.next_offsets, {0: (0, 100), 1: (0, 20)}, cap=50)
    assert [(r.partition, r.start, r.end) for r in second.ranges] == [(0, 30, 80)]


def test_committed_beyond_reported_watermark_is_not_a_loss_when_within_true_end() -> None:
    # The caller passes the true end; committed == end is the normal caught-up state.
    assert detect_losses(TOPIC, {0: 40}, {0: Watermarks(0, 40)}) == []


# --- data loss ----------------------------------------------------------------------------------

def test_retention_gap_is_detected_with_its_missing_range() -> None:
    [loss] = detect_losses(TOPIC, {0: 10, 1: 5}, {0: Watermarks(30, 50), 1: Watermarks(0, 9)})
    assert (loss.partition, loss.kind, loss.missing, loss.records) == (0, RETENTION_GAP, (10, 30), 20)
    assert "partition 0" in loss.describe() and "[10, 30)" in loss.describe()


def test_never_read_partition_whose_start_expired_is_a_gap() -> None:
    [loss] = detect_losses(TOPIC, {}, {0: Watermarks(0, 5), 1: Watermarks(8, 12)})
    assert (loss.partition, loss.missing) == (1, (0, 8))


def test_recreated_topic_is_an_offsets_reset() -> None:
    [loss] = detect_losses(TOPIC, {0: 10}, {0: Watermarks(0, 3)})
    assert (loss.kind, loss.missing, loss.records) == (OFFSETS_RESET, (3, 10), 7)
    assert "partition 0" in loss.describe() and "recreated" in loss.describe()


def test_recreated_topic_past_the_old_offsets_is_a_loss_only_its_id_reveals() -> None:
    """Offsets alone cannot tell: the new topic already holds more records than Bronze had read."""
    assert not plan({0: 10, 1: 4}, {0: (0, 25), 1: (0, 9)}).losses
    p = plan({0: 10, 1: 4}, {0: (0, 25), 1: (0, 9)}, recreated=True)
    assert [(loss.partition, loss.kind, loss.missing, loss.records) for loss in p.losses] == [
        (0, TOPIC_RECREATED, (10, None), 0), (1, TOPIC_RECREATED, (4, None), 0)]
    assert not p.ranges and "topic was recreated" in p.losses[0].describe()
    accepted = plan({0: 10, 1: 4}, {0: (0, 25), 1: (0, 9)}, recreated=True, accept=True)
    assert [(r.partition, r.start, r.end) for r in accepted.ranges] == [(0, 0, 25), (1, 0, 9)]


def test_an_incarnation_counts_what_the_old_topic_held_beyond_the_committed_offsets() -> None:
    inc = Incarnation(TOPIC, "old", "new", {0: 10, 1: 4}, {0: 12, 1: 4, 2: 3})
    assert inc.unread == 5 and "5 records of the old topic never reached Bronze" in inc.describe()
    unknown = Incarnation(TOPIC, "old", "new", {0: 10}, None)
    assert unknown.unread is None and "an unknown number of records" in unknown.describe()
    assert unknown.as_dict()["ends_at_stop"] is None


def test_partition_that_disappeared_is_a_reset() -> None:
    [loss] = detect_losses(TOPIC, {0: 3, 1: 7}, {0: Watermarks(0, 3)})
    assert (loss.partition, loss.kind, loss.end) == (1, OFFSETS_RESET, 0)


def test_unaccepted_loss_plans_no_reads_for_that_partition() -> None:
    p = plan({0: 10, 1: 0}, {0: (30, 50), 1: (0, 5)})
    assert [loss.partition for loss in p.losses] == [0]
    assert [r.partition for r in p.ranges] == [1]


def test_accepted_loss_restarts_at_the_low_watermark() -> None:
    gap = plan({0: 10}, {0: (30, 50)}, accept=True)
    assert [(r.start, r.end) for r in gap.ranges] == [(30, 50)] and gap.next_offsets == {0: 50}
    reset = plan({0: 10, 1: 4}, {0: (0, 3)}, accept=True)
    assert [(r.partition, r.start, r.end) for r in reset.ranges] == [(0, 0, 3)]
    # The vanished partition is dropped from the committed offsets.
    assert reset.next_offsets == {0: 3} and reset.changes_offsets


def test_accepted_loss_on_an_empty_topic_still_commits_new_offsets() -> None:
    p = plan({0: 10}, {0: (0, 0)}, accept=True)
    assert not p.ranges and p.changes_offsets and p.next_offsets == {0: 0}


# --- the snapshot property ------------------------------------------------------------------------

def test_offsets_round_trip_through_the_snapshot_property() -> None:
    raw = encode_offsets(TOPIC, {2: 7, 0: 12, 1: 0})
    assert decode_offsets(raw, TOPIC) == {0: 12, 1: 0, 2: 7}
    assert decode_offsets(raw, "other.topic") == {}


@pytest.mark.parametrize("raw", ["not json", '{"crypto.trades.binance": {"0": "x"}}', "[1, 2]"])
def test_unreadable_offsets_property_fails_loudly(raw: str) -> None:
    with pytest.raises(OffsetsFormatError):
        decode_offsets(raw, TOPIC)
