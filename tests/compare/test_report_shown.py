"""report.html says how many mismatches it shows of how many, where the rest are, and the count per cause."""

from __future__ import annotations

from pathlib import Path

from compare.comparison import run_comparison
from segments.rules import load_ruleset
from tests.compare.builders import MIN, T0, event, write_events, write_legacy, write_stream

CLICK = load_ruleset("clickstream")


def test_the_examples_say_how_many_of_how_many_and_where_all_are(tmp_path: Path) -> None:
    users = [f"u{i:02d}" for i in range(15)]
    events = write_events(tmp_path / "events.jsonl", [event(f"e{u}", u, T0 + 7 * MIN) for u in users])
    legacy = write_legacy(tmp_path / "legacy.jsonl", [(T0 + 10 * MIN, u, ["high_value"]) for u in users], events, CLICK)
    stream = write_stream(tmp_path / "stream.jsonl", [], events, CLICK)
    run_comparison(events, legacy, stream, CLICK, out_dir=tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert html.count('<div class="mm">') == 12
    assert (
        '12 of 15 mismatches shown; all 15 in <span class="mono">mismatches.jsonl</span> '
        "(late arrival 0, dropped too late 0, mixed 0, unexplained 15, approximate 0)."
    ) in html
