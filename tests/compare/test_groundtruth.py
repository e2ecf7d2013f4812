"""Each side's false-positive and detection rates per risk tier, against attrs.fraud labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compare.comparison import run_comparison
from segments.rules import load_ruleset
from tests.compare.builders import MIN, SEC, T0, event, write_events, write_legacy, write_stream

RISK = load_ruleset("risk")


def _txn(eid: str, user: str, t: int, fraud: bool, merchant: str = "m1") -> str:
    return event(eid, user, t, "txn", amount="20", attrs={"merchant": merchant, "fraud": fraud})


def test_rates_per_tier_for_each_side(tmp_path: Path) -> None:
    """A fraudster with 5 txns in a minute and a legitimate customer with one txn, at one as-of:
    legacy gets both right; the stream under-rates the fraudster and over-rates the customer."""
    lines = [_txn(f"f{i}", "fraudster", T0 + 6 * MIN + i * 10 * SEC, fraud=True) for i in range(5)]
    lines.append(_txn("l1", "customer", T0 + 6 * MIN + 30 * SEC, fraud=False))
    lines.append(event("v1", "browser", T0 + 7 * MIN))  # not a txn: not present for the risk rules
    events = write_events(tmp_path / "events.jsonl", lines)
    t = T0 + 10 * MIN
    legacy = write_legacy(
        tmp_path / "legacy.jsonl", [(t, "fraudster", ["risk_high"]), (t, "customer", ["risk_low"])], events, RISK
    )
    stream = write_stream(
        tmp_path / "stream.jsonl",
        [
            ("fraudster", ["risk_medium"], T0 + 6 * MIN, 1, T0 + 6 * MIN, "event"),
            ("customer", ["risk_medium"], T0 + 6 * MIN + 30 * SEC, 1, T0 + 6 * MIN + 30 * SEC, "event"),
        ],
        events,
        RISK,
    )
    run_comparison(events, legacy, stream, RISK, out_dir=tmp_path / "out")
    truth = json.loads((tmp_path / "out" / "parity.json").read_text())["ground_truth"]
    assert (truth["cells"], truth["fraudulent"], truth["legitimate"]) == (2, 1, 1)
    legacy_rates = {tier: (r["false_positive_rate"], r["detection_rate"]) for tier, r in truth["legacy"].items()}
    stream_rates = {tier: (r["false_positive_rate"], r["detection_rate"]) for tier, r in truth["stream"].items()}
    assert legacy_rates == {"risk_high": (0.0, 1.0), "risk_medium": (0.0, 1.0), "risk_low": (1.0, 1.0)}
    assert stream_rates == {"risk_high": (0.0, 0.0), "risk_medium": (1.0, 1.0), "risk_low": (0.0, 1.0)}
    assert truth["stream"]["risk_medium"]["false_positive_rate_at_or_above"] == 1.0
    assert truth["legacy"]["risk_medium"]["false_positive_rate_at_or_above"] == 0.0
    assert "attrs.fraud" in truth["definition"]


@pytest.mark.parametrize("rules", ["clickstream", "risk"])
def test_no_ground_truth_without_labels_or_tiers(tmp_path: Path, rules: str) -> None:
    """Unlabelled events, or a rule set without tiers: ground_truth is null."""
    ruleset = load_ruleset(rules)
    kind = "txn" if rules == "risk" else "view"
    events = write_events(tmp_path / "events.jsonl", [event("e1", "u", T0 + 6 * MIN, kind, amount="1")])
    legacy = write_legacy(tmp_path / "legacy.jsonl", [], events, ruleset)
    stream = write_stream(tmp_path / "stream.jsonl", [], events, ruleset)
    assert run_comparison(events, legacy, stream, ruleset).ground_truth is None
