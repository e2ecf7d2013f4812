"""The report and the dashboard tell the whole truth: empty as-ofs shown as empty, examples in words, readable axes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from compare.axes import thousands, time_ticks
from compare.comparison import Comparison, compare_inputs
from compare.inputs import load_inputs
from compare.manifest import MANIFEST
from compare.mismatches import describe
from compare.parity import AsOfAgreement, ParityResult
from compare.report import agreement_chart, render_html
from homepage.dashboard import agreement_chart as dashboard_chart
from tests.compare.builders import MIN, SEC, T0
from tests.compare.test_report import CLICK, _write_case


def _with_empty_as_of(result: ParityResult) -> ParityResult:
    rounds = (AsOfAgreement(T0, 5, 5), AsOfAgreement(T0 + 5 * MIN, 0, 0), AsOfAgreement(T0 + 10 * MIN, 4, 3))
    return replace(result, agreement_over_time=rounds, as_of_rounds=3)


def _comparison(tmp_path: Path) -> Comparison:
    _write_case(tmp_path)
    inputs = load_inputs(tmp_path / "events.jsonl", tmp_path / "legacy.jsonl", tmp_path / "stream.jsonl", CLICK)
    return compare_inputs(inputs)


def test_an_as_of_without_pairs_is_empty_in_the_report_and_the_dashboard(tmp_path: Path) -> None:
    result = _with_empty_as_of(_comparison(tmp_path).result)
    report = agreement_chart(result)
    dash = dashboard_chart(result.to_dict()["agreement_over_time"])
    assert report is not None and dash is not None
    for chart in (report, dash):
        assert len(chart.empty) == 1 and "no pairs" in chart.empty[0][2]
        assert len(chart.lines) == 2  # the line is broken at the empty as-of, not drawn at 100%
    assert len(report.points) == 2 and len(dash.dots) == 2
    assert not any("of 0 pairs" in title for *_, title in report.points + dash.dots)


def test_report_html_never_says_of_0_pairs_agree(tmp_path: Path) -> None:
    comparison = _comparison(tmp_path)
    html = render_html(replace(comparison, result=_with_empty_as_of(comparison.result)))
    assert "of 0 pairs agree" not in html
    assert "1 of 3 as-ofs had no pairs" in html


def test_examples_are_explained_in_words_not_diff_text(tmp_path: Path) -> None:
    out = _write_case(tmp_path)
    html = (out / "report.html").read_text()
    assert "root[" not in html and "dictionary" not in html
    assert "legacy has high_value, the stream has not" in html
    assert "event timing does not explain the difference" in html
    late = next(json.loads(line) for line in (out / "mismatches.jsonl").read_text().splitlines() if "a4" in line)
    words = " ".join(describe(late))
    assert "The stream applied a4 (purchase at 00:09:00, arrived 00:11:00, after the as-of 00:10:00)" in words
    assert "which legacy could not see yet" in words and "accounts for the difference in window_shopper" in words


def test_time_labels_at_five_seconds_show_seconds_and_the_last_is_not_cut_off() -> None:
    times = [T0 + i * 5 * SEC for i in range(25)]
    ticks = time_ticks(times, [float(i) for i in range(25)])
    labels = [t.label for t in ticks]
    assert len(set(labels)) == len(labels) and all(label.count(":") == 2 for label in labels)
    assert ticks[0].anchor == "start" and ticks[-1].anchor == "end" and ticks[-1].at == 24.0
    assert len(ticks) <= 7


def test_time_labels_over_two_days_carry_the_date() -> None:
    ticks = time_ticks([T0, T0 + 30 * 60 * MIN], [0.0, 1.0])
    assert ticks[0].label[2] == "-" and ticks[0].label != ticks[1].label


def test_thousands_is_one_format() -> None:
    assert thousands(1234567) == "1,234,567" and thousands(None) == "—" and thousands(12.0) == "12"


def test_lines_rejected_at_ingest_are_counted_in_the_inputs_block_and_sealed(tmp_path: Path) -> None:
    lines = "".join(f'{{"line": {n}, "reason": "bad_json"}}\n' for n in range(4))
    (tmp_path / "ingest.deadletter.jsonl").write_text(lines)
    out = _write_case(tmp_path)
    html = (out / "report.html").read_text()
    assert "(4 lines rejected: 4 at ingest" in html
    parity = json.loads((out / "parity.json").read_text())
    assert parity["dead_letter"]["ingest"] == {"rejected": 4, "source": "ingest.deadletter.jsonl"}
    assert "ingest.deadletter.jsonl" in (out / MANIFEST).read_text()
