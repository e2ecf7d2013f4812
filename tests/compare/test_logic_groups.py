"""Logic differences are findable (issue 18, item 5): when legacy ran ``>= 100`` where the stream ran ``> 100``
for high_value, the mismatches timing does not explain stay unexplained, concentrate on high_value at a net
spend of exactly 100.00 in both views, and the report shows that group with the rule arithmetic."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from compare.comparison import run_comparison
from compare.mismatches import describe
from legacy_batch.job import run_legacy
from segments.errors import InputError
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segments.workloads import write_workload
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay

CLICK = load_ruleset("clickstream")
EXACT_USERS = 12


GE100 = Path(__file__).resolve().parents[2] / "examples" / "byo" / "clickstream_ge100.yaml"


def test_the_variant_differs_from_clickstream_only_in_the_threshold() -> None:
    """examples/byo/clickstream_ge100.yaml (a rule-set stand-in for h18a's clickstream_ge100.sql)."""
    shipped = resources.files("segments").joinpath("rulesets", "clickstream.yaml").read_text(encoding="utf-8")
    variant = GE100.read_text(encoding="utf-8")
    changed = [(a, b) for a, b in zip(shipped.splitlines(), variant.splitlines(), strict=True) if a != b]
    assert [b for _, b in changed if "when:" in b] == ['    when: {agg: net_spend, op: ">=", value: 100}']
    assert all(("when:" in b) or b.startswith(("#", "name:", "    description:")) for _, b in changed)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A late clickstream workload plus users who spend exactly 100.00 (60 + 40), legacy on ``>= 100``."""
    d = tmp_path_factory.mktemp("logic")
    events = d / "events.jsonl"
    write_workload("clickstream", events, users=200, minutes=25, seed=3, late_share=0.3)
    with events.open("a", encoding="utf-8") as handle:
        for i in range(EXACT_USERS):
            t = 1_704_067_200_000 + 120_000 + i * 45_000
            for n, (dt, amount) in enumerate(((0, "60.00"), (1_000, "40.00"))):
                handle.write(
                    json.dumps(
                        {"event_id": f"exact{i}-{n}", "user_id": f"exact{i:03d}", "event_time": t + dt,
                         "arrival_time": t + dt, "kind": "purchase", "amount": amount}
                    ) + "\n"
                )  # fmt: skip
    ge100 = load_ruleset(str(GE100))
    with SqlStore.open(f"sqlite:///{d / 'db.sqlite'}") as store:
        run_legacy(events, ge100, 300_000, d / "legacy.jsonl", store)
    run_replay(events, d / "stream.jsonl", StreamConfig(CLICK))
    result = run_comparison(
        events, d / "legacy.jsonl", d / "stream.jsonl", CLICK, out_dir=d / "out", legacy_rules=ge100
    ).to_dict()
    return d, result


def test_a_threshold_difference_is_unexplained_and_grouped_at_exactly_100(run: tuple[Path, dict]) -> None:
    d, result = run
    assert result["provenance"]["shared_ruleset"] is False
    assert result["by_cause"]["unexplained"] >= EXACT_USERS  # each planted user differs at least once
    groups = result["unexplained_groups"]["groups"]
    assert result["unexplained_groups"]["grouped"] == result["by_cause"]["unexplained"]
    top = groups[0]
    assert (top["segment"], top["only_in"]) == ("high_value", "legacy")
    assert top["legacy"] == top["stream"] == {"net_spend": "100.00"} and top["same_view"]
    assert top["rules"] == {"legacy": "net_spend >= 100", "stream": "net_spend > 100"}
    # concentrated: every unexplained mismatch is high_value at exactly 100.00 in both views
    assert sum(g["mismatches"] for g in groups) == result["by_cause"]["unexplained"] == top["mismatches"]
    records = [json.loads(line) for line in (d / "out" / "mismatches.jsonl").read_text().splitlines()]
    unexplained = [r for r in records if r["cause"] == "unexplained"]
    assert {r["aggregates"]["legacy"]["net_spend"] for r in unexplained} == {"100.00"}
    assert all(r["aggregates"]["legacy"] == r["aggregates"]["stream"] for r in unexplained)
    explained = [r for r in records if r["cause"] != "unexplained"]
    assert all("aggregates" in r for r in explained)
    report = (d / "out" / "report.html").read_text()
    assert "Unexplained, by segment and aggregates" in report
    assert "legacy: net_spend &gt;= 100 · stream: net_spend &gt; 100" in report
    assert "the two sides do not share one rule set" in report
    summary = (d / "out" / "summary.md").read_text()
    assert "net\\_spend 100.00" in summary


def test_the_examples_state_the_rule_arithmetic(run: tuple[Path, dict]) -> None:
    """A record's sentences say what the segment needs and what each view gives (issue 15 leftover)."""
    d, _ = run
    records = [json.loads(line) for line in (d / "out" / "mismatches.jsonl").read_text().splitlines()]
    unexplained = next(r for r in records if r["cause"] == "unexplained")
    words = describe(unexplained)
    assert any(
        "high_value needs net_spend > 100; in the 10m before the as-of both views give net_spend 100.00" in line
        for line in words
    ), words
    explained = [r for r in records if r["cause"] != "unexplained"]
    assert explained  # the late workload has timing differences too
    for record in explained:
        assert any(" needs " in line and "legacy's view gives" in line for line in describe(record)), record


def test_shared_rules_are_still_refused_when_a_sidecar_names_another_set(run: tuple[Path, dict]) -> None:
    """Without ``legacy_rules`` the comparator still refuses a legacy output made with another rule set."""
    d, _ = run
    with pytest.raises(InputError, match="made with rule set clickstream-ge100"):
        run_comparison(d / "events.jsonl", d / "legacy.jsonl", d / "stream.jsonl", CLICK)


def test_the_sentences_say_what_each_side_ran_not_that_they_share_rules(run: tuple[Path, dict]) -> None:
    """Issue 18 leftover: with legacy on clickstream-ge100 and the stream on clickstream, no sentence claims
    "both sides apply the same rules"; each names both rule sets and their digests, and a late-arrival one
    says the timing explains it only if both compute what they declare."""
    d, result = run
    provenance = result["provenance"]
    records = [json.loads(line) for line in (d / "out" / "mismatches.jsonl").read_text().splitlines()]
    late = next(r for r in records if r["cause"] == "late_arrival")
    unexplained = next(r for r in records if r["cause"] == "unexplained")
    for record in (late, unexplained):
        words = " ".join(describe(record, provenance))
        assert "same rules" not in words and "Both sides run" not in words
        assert f"rule set clickstream-ge100@v1 (digest {provenance['legacy']['digest'][:12]})" in words
        assert f"rule set {CLICK.ref} (digest {CLICK.digest[:12]})" in words
    assert "only if both compute the rule set they declare" in " ".join(describe(late, provenance))
    assert "where their logic differs is the place to look" in " ".join(describe(unexplained, provenance))
    report = (d / "out" / "report.html").read_text()
    assert "legacy runs rule set clickstream-ge100@v1" in report.lower() and "same rules" not in report


def test_shared_rules_are_named_with_their_digest_and_unknown_ones_are_not_assumed(run: tuple[Path, dict]) -> None:
    d, _ = run
    records = [json.loads(line) for line in (d / "out" / "mismatches.jsonl").read_text().splitlines()]
    late = next(r for r in records if r["cause"] == "late_arrival")
    side = {"source": "sidecar", "ruleset": CLICK.ref, "digest": CLICK.digest, "logic": None}
    shared = {"legacy": side, "stream": side, "shared_ruleset": True}
    assert f"Both sides run rule set {CLICK.ref} (digest {CLICK.digest[:12]}), and" in " ".join(describe(late, shared))
    transform = {**side, "logic": {"kind": "transform", "ref": "m:T", "sha256": "ab" * 32}, "source": "declared"}
    mixed = {"legacy": side, "stream": transform, "shared_ruleset": False}
    assert "the stream the transform m:T (sha256 abababababab, declared, not verified)" in " ".join(
        describe(late, mixed)
    )
    assert "if both apply the same rules (not stated here)" in " ".join(describe(late))
