"""report.html shows a user id with bidirectional controls isolated, its controls visible."""

from __future__ import annotations

from pathlib import Path

from compare.comparison import run_comparison
from segments.rules import load_ruleset
from tests.compare.builders import MIN, T0, event, write_events, write_legacy, write_stream

CLICK = load_ruleset("clickstream")
RLO_USER = "\u202eevil"


def test_a_mismatch_of_a_user_with_a_right_to_left_override_reads_as_typed(tmp_path: Path) -> None:
    events = write_events(tmp_path / "events.jsonl", [event("\u202ee1", RLO_USER, T0 + 7 * MIN)])
    legacy = write_legacy(tmp_path / "legacy.jsonl", [(T0 + 10 * MIN, RLO_USER, ["high_value"])], events, CLICK)
    stream = write_stream(tmp_path / "stream.jsonl", [], events, CLICK)
    run_comparison(events, legacy, stream, CLICK, out_dir=tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "\u202e" not in html
    assert "<bdi>[U+202E]evil</bdi>" in html and "<bdi>[U+202E]e1</bdi>" in html
