"""The dashboard's segment drift panel (``homepage.dashboard.drift_rows``): pure, from ``segment_drift``."""

from __future__ import annotations

from homepage.dashboard import DRIFT_H, drift_rows

T = 1_704_067_200_000
MIN = 60_000


def row(segment: str, minute: int, psi: float, legacy: float = 0.5, stream: float = 0.5) -> dict:
    return {"segment": segment, "as_of": T + minute * MIN, "psi_sides": psi, "legacy_share": legacy,
            "stream_share": stream}


def test_each_segment_shows_its_largest_psi_where_and_one_bar_per_as_of() -> None:
    rows = drift_rows({"max_psi": 0.5, "per_as_of": [
        row("window_shopper", 10, 0.05), row("window_shopper", 5, 0.5, 0.8, 0.4), row("high_value", 5, 0.0),
        row("high_value", 10, 0.12), {"segment": "broken"}, "junk", row("odd", 5, 0.1) | {"as_of": "soon"},
    ]})
    assert rows is not None and [r["segment"] for r in rows] == ["high_value", "window_shopper"]
    high, shopper = rows
    assert (high["max_psi"], high["level"], high["at"]) == ("0.1200", "look", "00:10")
    assert (shopper["max_psi"], shopper["level"], shopper["at"]) == ("0.5000", "act", "00:05")
    assert (shopper["legacy_share"], shopper["stream_share"]) == ("80%", "40%")
    # bars in time order, the tallest the largest PSI; scale max(0.25, largest)
    assert [b["h"] for b in shopper["bars"]] == [DRIFT_H, round(DRIFT_H * 0.05 / 0.5, 1)]
    assert [b["level"] for b in shopper["bars"]] == ["act", "ok"]
    assert [b["h"] for b in high["bars"]] == [0.0, round(DRIFT_H * 0.12 / 0.25, 1)]
    assert high["act_y"] == 0.0 and high["look_y"] == round(DRIFT_H - DRIFT_H * 0.1 / 0.25, 1)
    assert "PSI 0.5000, legacy 80% vs stream 40%" in shopper["bars"][0]["title"]


def test_no_drift_figures_means_no_panel() -> None:
    assert drift_rows(None) is None and drift_rows({"max_psi": 0.1}) is None
    assert drift_rows({"max_psi": 0.0, "per_as_of": []}) == []


def test_each_segment_shows_the_chi_square_beside_the_psi_and_each_sides_baseline_psi() -> None:
    """At the worst as-of: the chi-square and p of the sides; over all as-ofs: each side's largest baseline PSI."""
    first = row("a", 5, 0.01) | {"chi2_sides": 0.5, "p_sides": 0.48, "psi_legacy_baseline": None,
                                 "psi_stream_baseline": None}
    worst = row("a", 10, 0.3, 0.2, 0.6) | {"chi2_sides": 66.666, "p_sides": 3.3e-16, "psi_legacy_baseline": 0.002,
                                           "psi_stream_baseline": 0.41, "p_legacy_baseline": 0.71,
                                           "p_stream_baseline": 1.2e-9}
    rows = drift_rows({"max_psi": 0.3, "per_as_of": [first, worst]})
    assert rows is not None
    (a,) = rows
    assert (a["chi2"], a["p"]) == ("66.67", "3.3e-16")
    assert (a["legacy_baseline"], a["stream_baseline"]) == ("0.0020", "0.4100")
    assert (a["legacy_baseline_p"], a["stream_baseline_p"]) == ("0.71", "1.2e-09")
    bare = drift_rows({"max_psi": 0.1, "per_as_of": [row("b", 5, 0.1)]})
    assert bare is not None and (bare[0]["chi2"], bare[0]["legacy_baseline"]) == ("—", "—")
