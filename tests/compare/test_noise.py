"""The noise floor: one side against a second run of itself."""

from __future__ import annotations

import shutil
from pathlib import Path

from compare.comparison import run_comparison
from segments.outputs import meta_path
from segments.rules import load_ruleset
from tests.compare.builders import MIN, T0, event, write_events, write_legacy, write_stream

CLICK = load_ruleset("clickstream")
WS = ["window_shopper"]


def _case(tmp_path: Path) -> tuple[Path, Path, Path]:
    lines = [event(f"{u}{i}", u, T0 + (6 + i) * MIN) for u in ("a", "b") for i in range(3)]
    events = write_events(tmp_path / "events.jsonl", lines)
    rows = [(T0 + 10 * MIN, "a", WS), (T0 + 10 * MIN, "b", WS)]
    legacy = write_legacy(tmp_path / "legacy.jsonl", rows, events, CLICK)
    stream = write_stream(
        tmp_path / "stream.jsonl",
        [(u, WS, T0 + 8 * MIN, 1, T0 + 8 * MIN, "event") for u in ("a", "b")],
        events,
        CLICK,
    )
    return events, legacy, stream


def test_same_output_twice_has_no_noise(tmp_path: Path) -> None:
    events, legacy, stream = _case(tmp_path)
    for path in (legacy, stream):
        shutil.copy(path, f"{path}.2")
        shutil.copy(meta_path(path), meta_path(f"{path}.2"))
    result = run_comparison(
        events, legacy, stream, CLICK, noise_legacy=f"{legacy}.2", noise_stream=f"{stream}.2"
    )
    assert {n.side: (n.pairs, n.mismatch) for n in result.noise} == {"legacy": (2, 0), "stream": (2, 0)}


def test_second_run_that_differs_is_counted_and_other_events_are_allowed(tmp_path: Path) -> None:
    """A second legacy run over jittered arrivals (another event file) with one set changed and one line at an
    as-of the first run did not have: 1 of 2 pairs differ, 1 line outside the schedule."""
    events, legacy, stream = _case(tmp_path)
    jittered = write_events(tmp_path / "jittered.jsonl", [event("a0", "a", T0 + 6 * MIN, arrival=T0 + 7 * MIN)])
    second = write_legacy(
        tmp_path / "legacy2.jsonl",
        [(T0 + 10 * MIN, "a", WS), (T0 + 10 * MIN, "b", ["high_value"]), (T0 + 20 * MIN, "b", WS)],
        jittered,
        CLICK,
    )
    result = run_comparison(events, legacy, stream, CLICK, noise_legacy=second)
    (noise,) = result.noise
    assert (noise.side, noise.pairs, noise.mismatch, noise.outside_schedule) == ("legacy", 2, 1, 1)
    assert result.to_dict()["noise"]["legacy"]["mismatch_rate"] == 0.5


def test_noise_floor_is_in_the_report_not_only_the_summary(tmp_path: Path) -> None:
    events, legacy, stream = _case(tmp_path)
    shutil.copy(legacy, f"{legacy}.2")
    shutil.copy(meta_path(legacy), meta_path(f"{legacy}.2"))
    out = tmp_path / "out"
    run_comparison(events, legacy, stream, CLICK, noise_legacy=f"{legacy}.2", out_dir=out)
    html = (out / "report.html").read_text()
    assert "Noise floor" in html and "<td>legacy</td><td>2</td><td>0</td>" in html
