"""The doctor's section of report.html: the drift chart's geometry, the chi-square table, placement and escaping."""

from __future__ import annotations

from compare.doctor import LayerVerdict, diagnose
from compare.doctor_report import BAR_W, ROW_H, drift_chart, place_section, render_section
from compare.drift import drift_section

T = 1_704_067_200_000
M = 60_000


def _rows() -> list[dict]:
    times = [T + 5 * M, T + 10 * M, T + 15 * M]
    legacy = {t: {"high_value": 10, "odd<b>": 5} for t in times}
    stream = {times[0]: {"high_value": 10, "odd<b>": 5}, times[1]: {"high_value": 20, "odd<b>": 5},
              times[2]: {"high_value": 40, "odd<b>": 5}}
    return drift_section(times, dict.fromkeys(times, 100), legacy, stream)["per_as_of"]


def test_drift_chart_has_two_bars_per_row_scaled_to_the_segments_top_share_and_time_labels() -> None:
    rows = _rows()
    chart = drift_chart(rows)
    assert chart is not None and len(chart["bars"]) == 2 * len(rows)
    high = [b for b in chart["bars"] if b["title"].startswith("high_value")]
    tallest = max(high, key=lambda b: b["h"])
    assert tallest["h"] == ROW_H - 24 and "stream 40.00%" in tallest["title"]  # 40% is the band's top
    assert [b["h"] for b in high[:2]] == [round(0.1 / 0.4 * (ROW_H - 24), 1)] * 2  # equal shares, equal bars
    assert high[1]["x"] - high[0]["x"] == BAR_W
    assert [label["text"] for label in chart["labels"] if ":" in label["text"]] == ["00:05", "00:15"]
    assert chart["worst"].startswith("high_value at 2024-01-01T00:15")
    assert drift_chart([]) is None


def test_the_section_shows_the_chi_square_beside_the_psi_escapes_names_and_replaces_an_earlier_one() -> None:
    layers = [LayerVerdict(name, "ok", f"{name} fine") for name in ("ingest", "logic", "state", "sink")]
    rows = _rows()
    section = render_section(diagnose(layers, rows, drift_source="parity.json"))
    worst = max((r for r in rows if r["segment"] == "high_value"), key=lambda r: r["psi_sides"])
    assert f"<strong>{worst['psi_sides']:.4f}</strong></td><td>{worst['chi2_sides']:.2f}</td>" in section
    assert "odd&lt;b&gt;" in section and "odd<b>" not in section and "Read from parity.json" in section
    page = "<html><body><main>report</main><footer>f</footer></body></html>"
    once = place_section(page, section)
    assert once.index("Doctor: layer by layer") < once.index("<footer")
    assert place_section(once, section).count("Doctor: layer by layer") == 1
