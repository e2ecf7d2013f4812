"""The comparator on real outputs of both segmenters (legacy SQL job, Beam replay) over seeded workloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compare.comparison import compare_inputs, run_comparison
from compare.inputs import load_inputs
from legacy_batch.job import run_legacy
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segments.workloads import write_workload
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay


@pytest.mark.parametrize("kind", ["clickstream", "risk"])
def test_real_outputs_differ_only_for_explained_reasons(tmp_path: Path, database_url: str, kind: str) -> None:
    """Both segmenters implement the same rules: every mismatch is explained by event timing, the counts add
    up, both sides' latencies are measured, and risk data gets its ground-truth section."""
    ruleset = load_ruleset(kind)
    events = tmp_path / "events.jsonl"
    write_workload(kind, events, users=200, minutes=25, seed=3, late_share=0.1)
    with SqlStore.open(database_url) as store:
        run_legacy(events, ruleset, 300_000, tmp_path / "legacy.jsonl", store)
    run_replay(events, tmp_path / "stream.jsonl", StreamConfig(ruleset))
    result = run_comparison(
        events, tmp_path / "legacy.jsonl", tmp_path / "stream.jsonl", ruleset, out_dir=tmp_path / "out"
    )
    assert result.pairs > 50
    assert result.by_cause["unexplained"] == 0, (tmp_path / "out" / "mismatches.jsonl").read_text()[:2000]
    assert result.agree + result.mismatch == result.pairs
    assert result.latency["legacy"].count > 0 and result.latency["stream"].count == 0  # replay: not measured
    assert result.dead_letter["stream"]["source"] == "dead_letter"
    assert (result.ground_truth is not None) == (kind == "risk")
    records = (tmp_path / "out" / "mismatches.jsonl").read_text().splitlines()
    assert len(records) == result.mismatch
    assert all(json.loads(r)["cause"] != "unexplained" for r in records)
    inputs = load_inputs(events, tmp_path / "legacy.jsonl", tmp_path / "stream.jsonl", ruleset)
    serial = compare_inputs(inputs, clock=lambda: result.generated_at, parallel=False).result.to_dict()
    expected = result.to_dict()
    for data in (serial, expected):  # KLL sketches compact at random: quantiles vary by a rank error or so
        data["latency"] = {side: (v["count"], v["max_ms"]) for side, v in data["latency"].items()}
        data.pop("inputs")
    assert serial == expected
