"""The gates read the comparator's real parity.json: every key they need is there, for both rule sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from compare.comparison import run_comparison
from legacy_batch.job import run_legacy
from rollout.evidence import load_evidence
from rollout.gates import evaluate
from rollout.plan import load_plan
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segments.timeutil import parse_rfc3339_ms
from segments.workloads import write_workload
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay


@pytest.mark.parametrize(("kind", "plan"), [("clickstream", "default"), ("risk", "risk")])
def test_every_gate_finds_its_numbers_in_real_evidence(tmp_path: Path, kind: str, plan: str) -> None:
    ruleset = load_ruleset(kind)
    events = tmp_path / "events.jsonl"
    write_workload(kind, events, users=150, minutes=25, seed=5, late_share=0.1)
    with SqlStore.open(f"sqlite:///{tmp_path / 'db.sqlite'}") as store:
        run_legacy(events, ruleset, 300_000, tmp_path / "legacy.jsonl", store)
    run_replay(events, tmp_path / "stream.jsonl", StreamConfig(ruleset))
    run_comparison(
        events, tmp_path / "legacy.jsonl", tmp_path / "stream.jsonl", ruleset, out_dir=tmp_path / "ev"
    )

    evidence = load_evidence(tmp_path / "ev")
    the_plan = load_plan(plan)
    now = parse_rfc3339_ms(evidence.data["generated_at"])
    results = {r.name: r for r in evaluate(the_plan, the_plan.steps[0].gates, evidence.data, now, 10**9)}
    expected = {
        "evidence_seal",
        "ruleset",
        "evidence_age",
        "min_pairs",
        "min_as_of_rounds",
        "unexplained",
        "stream_freshness",
        "dead_letter",
        "min_time_in_stage",
    } | ({"false_positive_rate"} if kind == "risk" else set())
    assert set(results) == expected
    assert not [r for r in results.values() if "has no usable" in r.reason], results
    assert results["evidence_seal"].status == "pass", results["evidence_seal"]
    assert results["ruleset"].status == "pass" and results["evidence_age"].status == "pass"
    assert results["min_pairs"].observed == evidence.data["pairs"]
    assert results["unexplained"].status != "fail"  # both segmenters implement the same rules
    dead = evidence.data["dead_letter"]
    legacy_rate = dead["legacy"]["rejected"] / (dead["legacy"]["rejected"] + dead["legacy"]["events"])
    stream_dead = dead["stream"]["rejected"] + dead["stream"]["too_late"]
    stream_rate = stream_dead / (stream_dead + dead["stream"]["events"])
    assert results["dead_letter"].observed == pytest.approx(stream_rate - legacy_rate)
    tolerance = the_plan.steps[0].gates.dead_letter_tolerance
    assert results["dead_letter"].status == ("pass" if stream_rate - legacy_rate <= tolerance else "fail")
    if kind == "risk":
        assert "risk_high" in results["false_positive_rate"].reason
