"""Count-Min aggregates as an explicit trade: mismatches the bound explains are ``approximate``, defects are not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compare.approximate import ApproxBounds
from compare.comparison import run_comparison
from legacy_batch.job import run_legacy
from segments.errors import RuleSetError
from segments.outputs import meta_path
from segments.rules import RuleSet, parse_ruleset_text
from segments.sqlstore import SqlStore
from segments.workloads import write_workload
from streaming.approx import ApproxShardSegmenter, segmenter_class
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay
from streaming.segmenter import ShardSegmenter

APPROX_CLICKSTREAM = """
name: clickstream
version: 1
window: 10m
aggregates:
  net_spend: {op: sum, of: amount, kinds: {purchase: 1, refund: -1}}
  views: {op: count, kinds: [view], approx: cms, width: %d, depth: 3}
  purchases: {op: count, kinds: [purchase]}
segments:
  - name: high_value
    when: {agg: net_spend, op: ">", value: 100}
  - name: window_shopper
    when:
      all:
        - {agg: views, op: ">=", value: 3}
        - {agg: purchases, op: "==", value: 0}
"""


def approx_ruleset(width: int) -> RuleSet:
    return parse_ruleset_text(APPROX_CLICKSTREAM % width, "test")


def test_only_count_may_be_approximate_and_shape_is_checked() -> None:
    """`approx: cms` compiles width/depth or an error target; anything else is refused naming the key."""
    assert approx_ruleset(64).approximate[0].approx.width == 64  # type: ignore[union-attr]
    with pytest.raises(RuleSetError, match=r"aggregates\.net_spend\.approx"):
        parse_ruleset_text(
            APPROX_CLICKSTREAM.replace("amount, kinds: {purchase", "amount, approx: cms, kinds: {purchase") % 64, "t"
        )
    with pytest.raises(RuleSetError, match="either width/depth or error"):
        parse_ruleset_text(APPROX_CLICKSTREAM.replace("depth: 3", "depth: 3, error: 0.01") % 64, "t")
    by_error = parse_ruleset_text(APPROX_CLICKSTREAM.replace("width: %d, depth: 3", "error: 0.01"), "t")
    assert by_error.approximate[0].approx.relative_error <= 0.01  # type: ignore[union-attr]
    assert segmenter_class(by_error) is ApproxShardSegmenter


def _run(tmp_path: Path, database_url: str, ruleset: RuleSet, events: Path) -> None:
    with SqlStore.open(database_url) as store:
        run_legacy(events, ruleset, 300_000, tmp_path / "legacy.jsonl", store)
    run_replay(events, tmp_path / "stream.jsonl", StreamConfig(ruleset, shards=2))


def test_cms_aggregate_gives_only_approximate_mismatches_within_bound_and_a_defect_stays_unexplained(
    tmp_path: Path, database_url: str
) -> None:
    """A narrow Count-Min (width 8) over-counts views: every mismatch against the exact legacy is
    `approximate` and inside the declared range; a planted defect on top is still `unexplained`."""
    ruleset = approx_ruleset(8)
    events = tmp_path / "events.jsonl"
    write_workload("clickstream", events, users=300, minutes=25, seed=5, late_share=0.0)
    _run(tmp_path, database_url, ruleset, events)
    result = run_comparison(
        events, tmp_path / "legacy.jsonl", tmp_path / "stream.jsonl", ruleset, out_dir=tmp_path / "a"
    )
    records = [json.loads(r) for r in (tmp_path / "a" / "mismatches.jsonl").read_text().splitlines()]
    assert result.by_cause["approximate"] > 10, result.by_cause  # the trade is visible, not vanishingly small
    assert result.by_cause["unexplained"] == 0, [r for r in records if r["cause"] == "unexplained"][:3]
    assert {r["cause"] for r in records} <= {"approximate", "late_arrival", "dropped_too_late", "mixed"}
    # within the bound: the stream's views value is never below the exact count (one-sided)
    from segments.events import load_event_log

    bounds = ApproxBounds(ruleset, load_event_log(events).events, ())
    from segments.timeutil import parse_rfc3339_ms

    for r in records:
        if r["cause"] != "approximate":
            continue
        t = parse_rfc3339_ms(r["as_of"])
        _, (views,) = bounds.ranges(r["user_id"], t)
        assert views.low <= views.high
        # the CMS only over-counts: a stream that drops window_shopper was never the direction
        assert "window_shopper" in r["stream"] or views.low >= 3, r

    # plant a defect: one user's stream transitions lose high_value (an exact aggregate the bound cannot explain)
    lines = [json.loads(line) for line in (tmp_path / "stream.jsonl").read_text().splitlines()]
    victim = next(t["user_id"] for t in lines if "high_value" in t["segments"])
    for t in lines:
        if t["user_id"] == victim:
            t["segments"] = [s for s in t["segments"] if s != "high_value"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(json.dumps(t) + "\n" for t in lines))
    shutil.copy(meta_path(tmp_path / "stream.jsonl"), meta_path(broken))
    planted = run_comparison(events, tmp_path / "legacy.jsonl", broken, ruleset, out_dir=tmp_path / "b")
    bad = [json.loads(r) for r in (tmp_path / "b" / "mismatches.jsonl").read_text().splitlines()]
    assert planted.by_cause["unexplained"] > 0
    assert all(r["user_id"] == victim for r in bad if r["cause"] == "unexplained")
    assert planted.verdict == "defects"


def test_exact_rule_set_keeps_the_exact_segmenter() -> None:
    """The approximate path is opt-in: a rule set without `approx` runs the exact ShardSegmenter."""
    from segments.rules import load_ruleset

    assert segmenter_class(load_ruleset("clickstream")) is ShardSegmenter
