"""The Count-Min segmenter's savings change no answer: cached estimates and bytes, exits held apart until due."""

from __future__ import annotations

import json
import zlib

import pytest
from hypothesis import given, settings

from segments.events import arrival_order
from segments.lateness import GateParams
from streaming.admission import admit_all
from streaming.approx import ApproxShardSegmenter
from streaming.segmenter import Row
from tests.compare.test_approximate import approx_ruleset
from tests.streaming.oracle import BASE, MINUTE, event_lines, parse_all

PARAMS = GateParams(5_000, 60_000)
WIDE = approx_ruleset(1 << 16)
NARROW = approx_ruleset(4)  # collisions are common: one user's updates change another's estimates
KINDS = ("view", "cart", "purchase", "refund")


class ExitsQueuedAtOnce(ApproxShardSegmenter):
    """The reference: each marked bucket's exit goes into the shard's queue when the mark is made (the heap when
    out of order), as every other change point does, instead of being held by point until due."""

    def _exit_at(self, point: int, user_id: str) -> None:
        self._push_point((point, user_id))


def _rows(lines: list[str]) -> tuple[list[Row], int]:
    events = arrival_order(parse_all(lines))
    applied, _, _ = admit_all(events, PARAMS)
    return [tuple(a) for a in applied], max((e.arrival_time for e in events), default=0)  # type: ignore[misc]


def _assert_caches_are_the_sketches(shard: ApproxShardSegmenter) -> None:
    for _, _, ring in shard._rings:
        assert ring.estimates.keys() == ring.buckets.keys()
        for start, cached in ring.estimates.items():
            for user_id, value in cached.items():
                assert value == ring.buckets[start].get_estimate(user_id), (start, user_id)
        for start, data in ring.plain.items():
            assert zlib.decompress(data) == ring.buckets[start].serialize(), start


@settings(max_examples=60, deadline=None)
@given(lines=event_lines(KINDS))
def test_every_cached_estimate_and_serialized_bucket_is_what_the_sketch_gives_now(lines):  # type: ignore[no-untyped-def]
    """After every event (in order, late, through the batch path or not) and after the end, each estimate the
    rings hold equals the sketch's ``get_estimate`` and each bucket's held bytes decompress to its ``serialize``:
    a bucket's update drops what was derived from it, so a read never sees an older count."""
    rows, final = _rows(lines)
    for ruleset in (WIDE, NARROW):
        shard = ApproxShardSegmenter(ruleset, PARAMS, parts=2)
        for index, row in enumerate(rows):
            if index % 2:
                shard.apply_batch([row])
            else:
                shard.apply(row, row[5])
            if index % 3 == 0:
                shard.snapshot_part(index % 2, 2)  # fills the held bytes
            _assert_caches_are_the_sketches(shard)
        shard.finish(final)
        _assert_caches_are_the_sketches(shard)


@settings(max_examples=60, deadline=None)
@given(lines=event_lines(KINDS))
def test_exits_held_until_due_give_the_transitions_of_exits_queued_at_once(lines):  # type: ignore[no-untyped-def]
    """Held apart by point and merged into the queue when the watermark reaches them, the exits come out in the
    same (point, user) order: the same transitions, in the same order, stamped alike, per event or in batches."""
    rows, final = _rows(lines)
    for ruleset in (WIDE, NARROW):
        reference = ExitsQueuedAtOnce(ruleset, PARAMS)
        expected = [t for row in rows for t in reference.apply(row, row[5])] + reference.finish(final)
        single = ApproxShardSegmenter(ruleset, PARAMS)
        checked = ExitsQueuedAtOnce(ruleset, PARAMS)
        out: list = []
        for row in rows:
            out += single.apply(row, row[5])
            checked.apply(row, row[5])
            assert single.pending_edges == checked.pending_edges  # the health field counts held exits too
        assert out + single.finish(final) == expected
        for size in (1, 3, max(len(rows), 1)):
            batched = ApproxShardSegmenter(ruleset, PARAMS)
            got = [t for i in range(0, len(rows), size) for t in batched.apply_batch(rows[i : i + size])]
            assert got + batched.finish(final) == expected, size


@pytest.mark.parametrize("with_edge", [False, True])
def test_an_exit_due_exactly_at_the_watermark_pops_then_in_point_and_user_order(with_edge: bool) -> None:
    """Three views of ``a`` in one minute bucket put it in window_shopper; the bucket's exit is due when the
    watermark reaches bucket + 1m + 10m. ``b``'s views step the watermark to a second before it, then exactly
    onto it (event time minus the 5 s out-of-orderness, and no sweep due in between), so the expiry comes with
    the next event, ``c``'s, stamped with its arrival (not with ``d``'s, nor left to the end). With ``0``'s
    purchase at the bucket's end, its window edge is the same instant and, its id sorting first, comes out
    first."""
    bucket = BASE - BASE % MINUTE + 2 * MINUTE
    exit_at = bucket + MINUTE + 10 * MINUTE
    lines = [
        _line("v1", "a", bucket + 1_000, "view"),
        _line("v2", "a", bucket + 2_000, "view"),
        _line("v3", "a", bucket + 3_000, "view"),
        *([_line("p1", "0", bucket + MINUTE, "purchase", "150")] if with_edge else []),
        _line("v4", "b", exit_at + 4_000, "view"),
        _line("v5", "b", exit_at + 5_000, "view"),
        _line("v6", "c", exit_at + 6_000, "view"),
        _line("v7", "d", exit_at + 20 * MINUTE, "view"),
    ]
    rows, final = _rows(lines)
    assert rows[-2][6] == exit_at  # the watermark b's view brought, which c's view carries
    reference = ExitsQueuedAtOnce(WIDE, PARAMS)
    expected = reference.apply_batch(rows) + reference.finish(final)
    shard = ApproxShardSegmenter(WIDE, PARAMS)
    out = shard.apply_batch(rows) + shard.finish(final)
    assert out == expected
    expiries = [(t.user_id, t.segments, t.effective_time, t.emitted_at) for t in out if t.cause == "expiry"]
    first = [("0", (), exit_at, exit_at + 6_000)] if with_edge else []
    assert expiries == [*first, ("a", (), exit_at, exit_at + 6_000)]


def _line(event_id: str, user_id: str, event_time: int, kind: str, amount: str | None = None) -> str:
    row: dict[str, object] = {
        "event_id": event_id,
        "user_id": user_id,
        "event_time": event_time,
        "arrival_time": event_time,
        "kind": kind,
        "attrs": {"merchant": "m1"},
    }
    if amount is not None:
        row["amount"] = amount
    return json.dumps(row)
