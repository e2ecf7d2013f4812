"""Heavy hitters in triage, and the sketch sections of the report."""

from __future__ import annotations

import json
import random
from pathlib import Path

from compare.comparison import run_comparison
from compare.sketches import heavy_hitters
from legacy_batch.job import run_legacy
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segments.workloads import write_workload
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay


def test_heavy_hitters_find_the_planted_contributors_and_no_noise() -> None:
    """Three planted users among 5,000 one-off ones are found, in order, with exact counts beside the
    sketch's; a flat stream lists nobody (no false positives)."""
    rng = random.Random(3)
    items = ["hot"] * 400 + ["warm"] * 250 + ["mild"] * 150 + [f"u{n}" for n in range(5000)]
    rng.shuffle(items)
    rows, total, epsilon = heavy_hitters(items)
    assert [r.item for r in rows] == ["hot", "warm", "mild"]
    assert [r.exact for r in rows] == [400, 250, 150]
    assert all(r.lower <= r.exact <= r.upper for r in rows)
    assert total == len(items) and epsilon > 0
    flat, _, _ = heavy_hitters(f"u{n}" for n in range(5000))
    assert flat == []


def test_report_shows_reach_and_heavy_hitters(tmp_path: Path, database_url: str) -> None:
    """A real comparison writes sketches.json (reach of both sides within the bound, heavy hitters of
    late events) and the report draws the reach chart and the heavy-hitters tables."""
    ruleset = load_ruleset("clickstream")
    events = tmp_path / "events.jsonl"
    write_workload("clickstream", events, users=200, minutes=20, seed=3, late_share=0.1)
    with SqlStore.open(database_url) as store:
        run_legacy(events, ruleset, 300_000, tmp_path / "legacy.jsonl", store)
    run_replay(events, tmp_path / "stream.jsonl", StreamConfig(ruleset))
    run_comparison(events, tmp_path / "legacy.jsonl", tmp_path / "stream.jsonl", ruleset, out_dir=tmp_path / "out")
    data = json.loads((tmp_path / "out" / "sketches.json").read_text())
    sides = {(r["side"], r["segment"]) for r in data["reach"]["series"]}
    assert ("legacy", "window_shopper") in sides and ("stream", "window_shopper") in sides
    assert data["reach"]["summary"]["outside_bound"] == 0
    assert data["heavy_hitters"]["late_events"]["kind"]["top"][0]["item"] == "view"
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="reach"' in html and 'aria-label="reach of window_shopper"' in html
    assert 'id="heavy-hitters"' in html
