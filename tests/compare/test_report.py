"""The written outputs: parity.json's stable keys, a self-contained and escaped report.html, summary.md."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from compare.comparison import run_comparison
from compare.parity import ParityResult
from segments.events import load_event_log, too_late
from segments.lateness import GateParams, too_late_ids
from segments.rules import load_ruleset
from tests.compare.builders import MIN, SEC, T0, event, write_events, write_legacy, write_stream

CLICK = load_ruleset("clickstream")
EVIL = '<img src="https://evil.example/x.png" onerror=alert(1)>'

PARITY_KEYS = {
    "pairs", "agree", "mismatch", "by_cause", "per_segment", "ruleset", "events_sha256", "generated_at",
    "as_of_rounds", "unexplained_rate", "unexplained_rate_wilson95", "agreement_over_time", "latency",
    "dead_letter", "ground_truth", "noise", "params", "inputs", "segment_drift", "verdict", "provenance",
    "unexplained_groups",
}


def _write_case(tmp_path: Path) -> Path:
    """A user with a late purchase; a user with HTML in its id and an unexplained set; one agreeing."""
    lines = [
        event("a1", "bob", T0 + 6 * MIN),
        event("a2", "bob", T0 + 7 * MIN),
        event("a3", "bob", T0 + 8 * MIN),
        event("a4", "bob", T0 + 9 * MIN, "purchase", arrival=T0 + 11 * MIN, amount="5"),
        event("b1", EVIL, T0 + 7 * MIN),
        event("c1", "carol", T0 + 6 * MIN, "purchase", amount="150"),
    ]
    events = write_events(tmp_path / "events.jsonl", lines)
    log = load_event_log(events)
    dropped = too_late_ids(log.events, GateParams())
    legacy = write_legacy(
        tmp_path / "legacy.jsonl",
        [
            (T0 + 10 * MIN, "bob", ["window_shopper"]),
            (T0 + 10 * MIN, EVIL, ["high_value"]),
            (T0 + 10 * MIN, "carol", ["high_value"]),
            (T0 + 15 * MIN, "carol", ["high_value"]),
        ],
        events,
        CLICK,
    )
    stream = write_stream(
        tmp_path / "stream.jsonl",
        [
            ("bob", ["window_shopper"], T0 + 8 * MIN, 1, T0 + 8 * MIN, "event"),
            ("bob", [], T0 + 9 * MIN, 2, T0 + 11 * MIN, "correction"),
            ("carol", ["high_value"], T0 + 6 * MIN, 1, T0 + 6 * MIN + 3, "event"),
            ("carol", [], T0 + 16 * MIN, 1, T0 + 16 * MIN + 5 * SEC, "expiry"),
        ],
        events,
        CLICK,
        dead_letters=[too_late(e, 0, "too late") for e in log.events if e.event_id in dropped],
    )
    out = tmp_path / "out"
    run_comparison(events, legacy, stream, CLICK, out_dir=out)
    return out


def test_parity_json_has_the_stable_keys(tmp_path: Path) -> None:
    """Gates read these keys; counts add up; the verdict names the unexplained mismatch."""
    data = json.loads((_write_case(tmp_path) / "parity.json").read_text())
    assert set(data) == PARITY_KEYS
    assert (data["pairs"], data["agree"], data["mismatch"]) == (4, 2, 2)
    causes = {"late_arrival": 1, "dropped_too_late": 0, "mixed": 0, "unexplained": 1, "approximate": 0}
    assert data["by_cause"] == causes
    assert data["verdict"] == "defects"
    assert data["per_segment"]["high_value"] == {
        "both": 2, "legacy_only": 1, "stream_only": 0, "precision": 1.0, "recall": 2 / 3,
    }
    assert data["ruleset"] == {"name": "clickstream", "version": 1, "digest": CLICK.digest}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["generated_at"])
    assert data["agreement_over_time"] == [
        {"as_of": "2024-01-01T00:10:00.000Z", "pairs": 3, "agree": 1},
        {"as_of": "2024-01-01T00:15:00.000Z", "pairs": 1, "agree": 1},
    ]
    assert data["unexplained_rate"] == 1 / 4
    assert set(data["latency"]["stream"]) >= {"p50_ms", "p95_ms", "p99_ms", "max_ms", "count"}
    # a replay has no processing clock: stream freshness is not measured (no figure, never 0 ms)
    assert data["latency"]["stream"]["count"] == 0 and data["latency"]["stream"]["p99_ms"] is None
    assert data["latency"]["stream"]["transitions_attributed"] == 3  # the event-caused transitions
    assert data["latency"]["stream"]["source"] == "replay"
    assert data["latency"]["stream"]["expiry_count"] == 1
    assert data["latency"]["stream"]["expiry_p99_ms"] == 5_000  # the expiry, 5 s after its effective time
    assert data["dead_letter"]["stream"] == {"rejected": 0, "too_late": 0, "events": 6, "source": "dead_letter"}
    assert data["ground_truth"] is None and data["noise"] is None
    # drift over each as-of's pairs: at 10:00 legacy has bob in window_shopper and two high_value users
    # of 3 pairs, the stream none and one; at 15:00 carol is high_value on both sides
    drift = data["segment_drift"]
    got = {(r["segment"], r["as_of"]): (r["population"], r["legacy_in"], r["stream_in"]) for r in drift["per_as_of"]}
    assert got == {
        ("high_value", T0 + 10 * MIN): (3, 2, 1), ("high_value", T0 + 15 * MIN): (1, 1, 1),
        ("window_shopper", T0 + 10 * MIN): (3, 1, 0), ("window_shopper", T0 + 15 * MIN): (1, 0, 0),
    }
    shopper = (1 / 3 - 1e-4) * math.log((1 / 3) / 1e-4) + (2 / 3 - 1) * math.log(2 / 3)  # an empty bin floored
    assert drift["max_psi"] == round(shopper, 6)
    high = {r["as_of"]: r["psi_sides"] for r in drift["per_as_of"] if r["segment"] == "high_value"}
    assert high == {T0 + 10 * MIN: round(2 / 3 * math.log(2), 6), T0 + 15 * MIN: 0.0}


def test_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    """One file: no script, no external fetch; user-provided HTML is shown as text, never as markup."""
    html = (_write_case(tmp_path) / "report.html").read_text()
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "url(" not in html and "@import" not in html
    assert EVIL not in html
    assert "&lt;img src=&#34;https://evil.example/x.png&#34; onerror=alert(1)&gt;" in html
    assert "Defects" in html and "<svg" in html
    assert "Top unexplained mismatches" in html and "b1" in html


def test_summary_is_short_markdown(tmp_path: Path) -> None:
    """A pull-request comment: the verdict, the causes table, the per-segment table, freshness."""
    summary = (_write_case(tmp_path) / "summary.md").read_text()
    assert summary.startswith("### segshadow parity: **Defects** (clickstream v1)")
    assert "| unexplained | 1 |" in summary
    assert "| high\\_value | 2 | 1 | 0 | 100.00% | 66.67% |" in summary
    assert "Freshness: legacy p50" in summary
    assert len(summary.splitlines()) < 40


def test_mismatches_jsonl_has_every_mismatch(tmp_path: Path) -> None:
    records = [json.loads(line) for line in (_write_case(tmp_path) / "mismatches.jsonl").read_text().splitlines()]
    assert {(r["user_id"], r["cause"]) for r in records} == {("bob", "late_arrival"), (EVIL, "unexplained")}


def test_counts_must_add_up() -> None:
    """A result whose causes do not account for its mismatches cannot be built."""
    try:
        ParityResult({}, "", 0, 0, 2, 1, {"late_arrival": 0, "dropped_too_late": 0, "mixed": 0, "unexplained": 0},
                     {}, (), {}, {})
    except ValueError as exc:
        assert "do not account" in str(exc)
    else:
        raise AssertionError("ParityResult accepted causes that do not add up")
