"""The shard's log-structured state: rebuilt from snapshot and log, it gives what the in-memory copy gives."""

from __future__ import annotations

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


@pytest.mark.parametrize(("snapshot_events", "snapshot_batches"), [(1, 10**9), (97, 10**9), (10**9, 5), (10**9, 10**9)])
def test_a_shard_rebuilt_from_snapshot_and_log_at_every_batch_emits_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshot_events: int, snapshot_batches: int
) -> None:
    """Snapshots every batch, every ~100 events, every 5 batches or never; rebuilt at every batch: the same
    transitions as the state held in memory."""
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
    monkeypatch.setattr(SegmentShard, "SNAPSHOT_EVENTS", snapshot_events)
    monkeypatch.setattr(SegmentShard, "SNAPSHOT_BATCHES", snapshot_batches)
    rebuilt = run_replay(events, tmp_path / "rebuilt.jsonl", config)

    batches = rebuilt.counts["shard_rebuilds"]
    assert batches > 3 * len(lines) // 40 // 3, "every batch was rebuilt"
    assert read_transitions(rebuilt.out_path) == read_transitions(held.out_path)
    assert rebuilt.counts["transitions"] == held.counts["transitions"] > 0
