"""The shard's log-structured state: rebuilt from part snapshots and the log, it gives what the in-memory
copy gives; a held copy that another worker has moved past is not reused."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from segments.lateness import GateParams
from segments.outputs import read_transitions
from segments.rules import load_ruleset
from segments.workloads import generate
from streaming.pipeline import SegmentShard, StreamConfig
from streaming.replay import run_replay


class _Forgets(dict):  # type: ignore[type-arg]
    """A held-state map that keeps nothing: every batch finds its shard as a fresh worker would."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


@pytest.mark.parametrize(("epoch_events", "epoch_batches"), [(1, 10**9), (97, 10**9), (10**9, 3), (10**9, 10**9)])
def test_a_shard_rebuilt_from_part_snapshots_and_log_at_every_batch_emits_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epoch_events: int, epoch_batches: int
) -> None:
    """A part snapshotted after every batch (so the ring of log bags turns every batch and the parts stand at
    eight different batches), every ~100 events, every 3 batches, or never; the shard rebuilt at every batch:
    the same transitions as the state held in memory."""
    ruleset = load_ruleset("clickstream")
    lines = list(generate("clickstream", users=50, minutes=30, seed=5, late_share=0.1, dup_share=0.05))
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = StreamConfig(ruleset, GateParams(), shards=3, batch_events=40)
    held = run_replay(events, tmp_path / "held.jsonl", config)
    assert held.counts["shard_rebuilds"] == 3, "one rebuild per shard: its first batch"

    setup = SegmentShard.setup

    def forgetful_setup(self: SegmentShard) -> None:
        setup(self)
        self.held = _Forgets()

    monkeypatch.setattr(SegmentShard, "setup", forgetful_setup)
    monkeypatch.setattr(SegmentShard, "EPOCH_EVENTS", epoch_events)
    monkeypatch.setattr(SegmentShard, "EPOCH_BATCHES", epoch_batches)
    rebuilt = run_replay(events, tmp_path / "rebuilt.jsonl", config)

    batches = rebuilt.counts["shard_rebuilds"]
    assert batches > 3 * len(lines) // 40 // 3, "every batch was rebuilt"
    assert read_transitions(rebuilt.out_path) == read_transitions(held.out_path)
    assert rebuilt.counts["transitions"] == held.counts["transitions"] > 0


class _Bag:
    """A BagState whose writes are committed at once."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def read(self) -> list[bytes]:
        return list(self.items)

    def add(self, item: bytes) -> None:
        self.items.append(item)

    def clear(self) -> None:
        self.items = []


def _batches(lines: list[str], per_batch: int) -> list[Any]:
    from segments.events import Event, arrival_order, parse_line
    from streaming.admission import Admission
    from streaming.pipeline import Flusher

    admission = Admission(GateParams())
    flusher = Flusher(1)
    batches: list[Any] = []
    events = [e for n, line in enumerate(lines) if isinstance(e := parse_line(line, n), Event)]
    for event in arrival_order(events):
        row = admission.admit_row(event)
        if type(row) is tuple:
            flusher.add(row)
            if flusher.buffered >= per_batch:
                batches.extend(b for _, b in flusher.flush(admission.gate.watermark, event.arrival_time))
    return batches


@pytest.mark.parametrize("epoch_batches", [1, 3, 10**9])
def test_a_held_shard_that_another_worker_moved_past_is_rebuilt_not_reused(
    monkeypatch: pytest.MonkeyPatch, epoch_batches: int
) -> None:
    """Two DoFn instances take turns on one key (as two workers or two bundle processors can): each finds
    the other's commits in the log, rebuilds, and together they emit what one instance emits."""
    monkeypatch.setattr(SegmentShard, "EPOCH_BATCHES", epoch_batches)
    ruleset = load_ruleset("clickstream")
    config = StreamConfig(ruleset, GateParams(), shards=1, batch_events=2)
    lines = list(generate("clickstream", users=60, minutes=200, seed=9, late_share=0.1, dup_share=0.05))
    batches = _batches(lines, 2)
    assert len(batches) > 2 * SegmentShard.BAGS * SegmentShard.EPOCHS_PER_BAG, "the ring of bags turns twice"
    assert len(batches) > 3 * SegmentShard.PARTS, "at an epoch a batch, each snapshot bag is cleared and reused"

    def run(turns: list[int]) -> tuple[list[Any], list[SegmentShard]]:
        workers = [SegmentShard(config), SegmentShard(config)]
        for worker in workers:
            worker.setup()
        snapshots, logs = [_Bag() for _ in SegmentShard.SNAPSHOTS], [_Bag() for _ in SegmentShard.LOGS]
        out: list[Any] = []
        for turn, batch in zip(turns, batches):  # noqa: B905
            worker = workers[turn]
            worker.start_bundle()
            for emitted in worker.process((0, batch), *snapshots, *logs):
                out.extend(emitted)
            stored = sum(len(bag.items) for bag in snapshots)
            assert stored <= 2 * SegmentShard.PARTS, "the snapshot bags hold two turns at most"
        return out, workers

    alone, _ = run([0] * len(batches))
    turns = [(i // 3) % 2 for i in range(len(batches))]  # three batches each, in turn
    shared, workers = run(turns)
    assert [t.to_json() for t in shared] == [t.to_json() for t in alone]
    assert len(alone) > 0
    switches = sum(1 for a, b in itertools.pairwise(turns) if a != b)
    assert sum(len(w.held) for w in workers) == 2, "each worker still holds the shard it last had"
    assert switches > 5


def test_the_bag_a_new_epoch_clears_is_older_than_every_part() -> None:
    """The ring's layout leaves a whole bag's worth of epochs between the newest bag and the oldest part."""
    assert (SegmentShard.BAGS - 1) * SegmentShard.EPOCHS_PER_BAG >= SegmentShard.PARTS
    assert len(SegmentShard.LOGS) == SegmentShard.BAGS
    bags = {SegmentShard.bag_of(epoch) for epoch in range(SegmentShard.BAGS * SegmentShard.EPOCHS_PER_BAG)}
    assert bags == set(range(SegmentShard.BAGS)), "every bag of the ring is used in turn"


def test_a_logged_batch_reads_back_as_it_was_and_a_pickled_one_still_reads() -> None:
    """The shard log's format (``logged_batch``): every field back with its type, amounts past 64 bits and ids
    no codec likes included; a batch pickled whole, as the log held batches before, reads back too."""
    import pickle

    from streaming.pipeline import ShardBatch, batch_from_log, logged_batch

    rows = [
        ("u1", 1_700_000_000_000, "purchase", 2**80, None, 1_700_000_000_005, -(2**63)),
        ("zoë\ud800", -1, "refund", -150_000_000, "m\u65e5", 0, 1),
    ]
    for batch in (ShardBatch(7, rows, 1_700_000_000_000, 12, False), ShardBatch(0, [], -(2**63), 0, True)):
        for data in (logged_batch(batch), pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)):
            back = batch_from_log(data)
            assert back == batch and type(back) is ShardBatch and type(back.events) is list
            types = [tuple(map(type, row)) for row in back.events]
            assert types == [tuple(map(type, row)) for row in rows[: len(back.events)]]
