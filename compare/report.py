"""The outputs a person reads: ``report.html`` (one self-contained file) and ``summary.md``.

``report.html`` has inline CSS and inline SVG charts, no script and no fetch: it
opens from a mail attachment or a CI artifact as it is. Every user-provided text
(user ids, segment names, event ids, paths) goes through Jinja2's autoescape.
The chart geometry is computed here; the template only draws it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from compare.axes import TimeTick, agreement_shares, line_runs, thousands, time_ticks
from compare.causes import CAUSES
from compare.comparison import Comparison
from compare.drift import worst_per_segment
from compare.latency import NOT_MEASURED_REPLAY, LatencySummary
from compare.mismatches import explain, write_mismatches
from compare.parity import ParityResult
from compare.reach import reach_charts
from compare.stats import rate
from segments.display import install

TOP_MISMATCHES = 12
CAUSE_LABELS = {
    "late_arrival": "late arrival",
    "dropped_too_late": "dropped too late",
    "mixed": "mixed",
    "unexplained": "unexplained",
    "approximate": "approximate",
}
VERDICT_LABELS = {
    "parity": "Parity",
    "explained_differences": "Explained differences",
    "defects": "Defects",
}
VERDICT_SENTENCES = {
    "parity": "Both sides assigned exactly the same segments at every as-of.",
    "explained_differences": "Every difference is explained by event timing (late arrivals or events dropped "
    "as too late); none is a defect.",
    "defects": "Some differences have no explanation in the event log: these are defects to fix before cutover.",
}


def write_outputs(out_dir: str | Path, comparison: Comparison) -> dict[str, Path]:
    """Write ``parity.json``, ``mismatches.jsonl``, ``report.html`` and ``summary.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "parity": out / "parity.json",
        "mismatches": out / "mismatches.jsonl",
        "report": out / "report.html",
        "summary": out / "summary.md",
    }
    write_mismatches(paths["mismatches"], comparison.mismatches)
    _write_text(paths["parity"], comparison.result.to_json())
    _write_text(paths["report"], render_html(comparison))
    _write_text(paths["summary"], render_summary(comparison.result))
    if comparison.sketches is not None:
        paths["sketches"] = out / "sketches.json"
        _write_text(paths["sketches"], json.dumps(comparison.sketches.to_dict(), indent=1) + "\n")
    return paths


def _write_text(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".partial")
    temp.write_text(text, encoding="utf-8")
    temp.replace(path)


# ---- numbers as people read them ---------------------------------------------------------------------


def percent(part: int, whole: int, digits: int = 2) -> str:
    return f"{100 * rate(part, whole):.{digits}f}%"


def duration(ms: float | None) -> str:
    """``0.4 ms``, ``12 ms``, ``1.5 s``, ``4.2 min``, ``1.1 h``; an em dash for no value."""
    if ms is None:
        return "—"
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:.1f} h"


def share(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


# ---- chart geometry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True)
class AgreementChart:
    width: int
    height: int
    left: int
    top: int
    plot_w: int
    plot_h: int
    lines: tuple[str, ...]
    bars: tuple[tuple[float, float, float, float, str], ...]
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[TimeTick, ...]
    points: tuple[tuple[float, float, str], ...]
    empty: tuple[tuple[float, float, str], ...]


def agreement_chart(result: ParityResult, width: int = 880, height: int = 240) -> AgreementChart | None:
    """Agreement (%) per as-of as a line, pairs per as-of as faint bars underneath.

    An as-of with no pairs breaks the line and is marked on the baseline as empty
    (``compare.axes``); None when no as-of has pairs.
    """
    rows = list(result.agreement_over_time)
    ratios = agreement_shares([r.pairs for r in rows], [r.agree for r in rows])
    drawn = [100 * v for v in ratios if v is not None]
    if not drawn:
        return None
    left, top, right, bottom = 56, 14, 16, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    floor = 100.0 - _nice_span(100.0 - min(drawn))
    n = len(rows)
    step = plot_w / max(n - 1, 1)

    def x(i: int) -> float:
        return left + (i * step if n > 1 else plot_w / 2)

    def y(value: float) -> float:
        return top + plot_h * (100.0 - value) / (100.0 - floor)

    coords = [None if v is None else (x(i), y(100 * v)) for i, v in enumerate(ratios)]
    most = max(r.pairs for r in rows) or 1
    bar_w = max(1.0, min(step * 0.7, 18.0))
    bars = tuple(
        (
            x(i) - bar_w / 2,
            top + plot_h - plot_h * 0.3 * r.pairs / most,
            bar_w,
            plot_h * 0.3 * r.pairs / most,
            f"{r.to_dict()['as_of']}: {thousands(r.pairs)} pairs, {thousands(r.agree)} agree",
        )
        for i, r in enumerate(rows)
    )
    y_ticks = tuple(Tick(y(v), f"{v:g}%") for v in _linear_ticks(floor, 100.0))
    x_ticks = time_ticks([r.as_of for r in rows], [x(i) for i in range(n)])
    points = tuple(
        (c[0], c[1], f"{rows[i].to_dict()['as_of']}: {100 * (ratios[i] or 0):.3f}% of "
         f"{thousands(rows[i].pairs)} pairs agree")
        for i, c in enumerate(coords)
        if c is not None
    ) if n <= 400 else ()
    empty = tuple(
        (x(i), top + plot_h, f"{r.to_dict()['as_of']}: no pairs (nothing to compare)")
        for i, r in enumerate(rows)
        if not r.pairs
    )
    return AgreementChart(
        width, height, left, top, plot_w, plot_h, line_runs(coords), bars, y_ticks, x_ticks, points, empty
    )


def _nice_span(gap: float) -> float:
    """The smallest of 0.1, 0.2, 0.5, 1, 2, 5, 10, ... percentage points that covers ``gap``."""
    for span in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100):
        if gap <= span:
            return float(span)
    return 100.0


def _linear_ticks(low: float, high: float) -> list[float]:
    step = (high - low) / 4
    return [round(low + i * step, 4) for i in range(5)]


@dataclass(frozen=True)
class Bar:
    label: str
    key: str
    count: int
    width: float


def cause_bars(result: ParityResult, width: float = 100.0) -> list[Bar]:
    """One bar per cause; ``width`` is the longest bar's length (percent of the track by default)."""
    most = max(result.by_cause.values()) or 1
    return [
        Bar(CAUSE_LABELS[c], c, int(result.by_cause[c]), width * result.by_cause[c] / most) for c in CAUSES
    ]


@dataclass(frozen=True)
class Curve:
    side: str
    points: str
    summary: LatencySummary


@dataclass(frozen=True)
class LatencyChart:
    width: int
    height: int
    left: int
    top: int
    plot_w: int
    plot_h: int
    curves: tuple[Curve, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]


_DECADE_LABELS = {
    -1: "0.1 ms", 0: "1 ms", 1: "10 ms", 2: "100 ms", 3: "1 s", 4: "10 s", 5: "100 s", 6: "17 min", 7: "2.8 h",
}


def latency_chart(latency: dict[str, LatencySummary], width: int = 880, height: int = 260) -> LatencyChart | None:
    """Both sides' freshness distributions (quantile curves) on one log-scale axis."""
    curves = [(side, s) for side, s in latency.items() if s.count]
    if not curves:
        return None
    left, top, right, bottom = 56, 14, 16, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [ms for _, s in curves for _, ms in s.curve]
    positive = [ms for ms in values if ms > 0]
    lo = math.floor(math.log10(min(positive))) if positive else 0
    hi = math.ceil(math.log10(max(positive))) if positive else 1
    floored = any(ms < 10.0**-1 for ms in values)
    lo = -1 if floored else max(lo, -1)
    hi = max(hi, lo + 1)

    def x(ms: float) -> float:
        value = math.log10(ms) if ms > 0 else lo
        return left + plot_w * (min(max(value, lo), hi) - lo) / (hi - lo)

    def y(rank: float) -> float:
        return top + plot_h * (1 - rank)

    drawn = tuple(
        Curve(side, " ".join(f"{x(ms):.1f},{y(r):.1f}" for r, ms in s.curve), s) for side, s in curves
    )
    x_ticks = tuple(
        Tick(x(10.0**d), ("≤ " if floored and d == lo else "") + _DECADE_LABELS.get(d, f"1e{d} ms"))
        for d in range(lo, hi + 1)
    )
    y_ticks = tuple(Tick(y(r), f"{int(r * 100)}%") for r in (0.0, 0.25, 0.5, 0.75, 1.0))
    return LatencyChart(width, height, left, top, plot_w, plot_h, drawn, x_ticks, y_ticks)


# ---- the page and the summary ------------------------------------------------------------------------


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("compare", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(duration=duration, share=share, thousands=thousands)
    return install(env)


def _examples(comparison: Comparison) -> tuple[str, list[dict[str, Any]]]:
    mismatches = comparison.mismatches
    chosen = mismatches.top_unexplained(TOP_MISMATCHES)
    title = "Top unexplained mismatches"
    if not chosen and len(mismatches):
        chosen = list(range(min(5, len(mismatches))))
        title = "Examples of explained mismatches"
    records = []
    for record in mismatches.records(chosen):
        _, sentences = explain(record, comparison.result.provenance)
        record["sentences"] = sentences
        records.append(record)
    return title, records


def render_html(comparison: Comparison) -> str:
    """The whole report as one HTML document."""
    result = comparison.result
    data = result.to_dict()
    title, examples = _examples(comparison)
    template = _environment().get_template("report.html")
    return template.render(
        r=data,
        result=result,
        verdict_label=VERDICT_LABELS[result.verdict],
        verdict_sentence=VERDICT_SENTENCES[result.verdict],
        agree_share=percent(result.agree, result.pairs),
        agreement=agreement_chart(result),
        causes=cause_bars(result),
        cause_labels=CAUSE_LABELS,
        latency=latency_chart(dict(result.latency)),
        not_measured=NOT_MEASURED_REPLAY,
        examples_title=title,
        examples=examples,
        drift=drift_table(data.get("segment_drift")),
        **_sketch_context(comparison),
    )


def drift_table(section: Any) -> list[dict[str, Any]]:
    """The report's segment drift table: ``compare.drift.worst_per_segment`` of ``parity.json``'s section, with
    the as-of shown as a time."""
    from segments.timeutil import format_ms

    return [r | {"at": format_ms(int(r["as_of"])) if isinstance(r["as_of"], int) else "—"}
            for r in worst_per_segment(section)]


def _sketch_context(comparison: Comparison) -> dict[str, Any]:
    """What the sketch section (``sketches_section.html``) draws; empty without sketch evidence."""
    if comparison.sketches is None:
        return {"sketches": None}
    data = comparison.sketches.to_dict()
    reach = data["reach"]
    return {
        "sketches": data,
        "reach_charts": reach_charts(reach, "minute"),
        "reach_bound": (reach or {}).get("summary", {}).get("hll", {}).get("minute_bound", 0.0),
    }


def render_summary(result: ParityResult) -> str:
    """A few lines of Markdown for a pull-request comment."""
    data = result.to_dict()
    lo, hi = result.unexplained_rate_wilson95
    lines = [
        f"### segshadow parity: **{VERDICT_LABELS[result.verdict]}** "
        f"({data['ruleset']['name']} v{data['ruleset']['version']})",
        "",
        f"{result.agree:,} of {result.pairs:,} (user, as-of) pairs agree ({percent(result.agree, result.pairs)}) "
        f"over {result.as_of_rounds} as-ofs; {result.mismatch:,} differ.",
        "",
        "| cause | mismatches |",
        "|---|---:|",
        *(f"| {CAUSE_LABELS[c]} | {result.by_cause[c]:,} |" for c in CAUSES),
        "",
        f"Unexplained rate: {100 * result.unexplained_rate:.4f}% (95% CI {100 * lo:.4f}% – {100 * hi:.4f}%).",
        "",
        "| segment | both | legacy only | stream only | precision | recall |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {_md(name)} | {c.both:,} | {c.legacy_only:,} | {c.stream_only:,} | {share(c.precision)} | "
            f"{share(c.recall)} |"
            for name, c in result.per_segment.items()
        ),
        "",
        _latency_line(result),
    ]
    lines += _provenance_lines(result)
    lines += _group_lines(result)
    if result.ground_truth is not None:
        lines += ["", _truth_lines(result)]
    for noise in result.noise:
        lines += [
            "",
            f"Noise floor ({noise.side} run twice): {noise.mismatch:,} of {noise.pairs:,} pairs differ "
            f"({percent(noise.mismatch, noise.pairs, 4)}).",
        ]
    return "\n".join(lines) + "\n"


def _provenance_lines(result: ParityResult) -> list[str]:
    """Which side was declared rather than verified, and whether the sides share one rule set."""
    prov = result.provenance
    if not prov:
        return []
    lines = []
    declared = [side for side in ("legacy", "stream") if prov[side]["source"] == "declared"]
    if declared:
        sides = " and ".join(declared)
        lines += ["", f"Provenance of {sides} declared on the command line, not verified (no sidecar)."]
    if not prov.get("shared_ruleset", True):
        made = [
            f"{side}: " + (f"{p['logic']['kind']} {p['logic']['ref']}" if p["logic"] else f"rule set {p['ruleset']}")
            for side, p in ((s, prov[s]) for s in ("legacy", "stream"))
        ]
        lines += ["", f"The sides do not share one rule set ({'; '.join(_md(m) for m in made)})."]
    return lines


def _group_lines(result: ParityResult) -> list[str]:
    """The biggest groups of unexplained mismatches by segment and aggregates (``logic_groups``)."""
    groups = (result.unexplained_groups or {}).get("groups") or []
    if not groups:
        return []
    lines = ["", "| unexplained: segment | only in | rule | legacy's view | stream's view | mismatches |",
             "|---|---|---|---|---|---:|"]
    for g in groups[:5]:
        legacy = ", ".join(f"{k} {v}" for k, v in g["legacy"].items())
        stream = ", ".join(f"{k} {v}" for k, v in g["stream"].items())
        sides = g.get("rules") or {}
        rule = g["rule"] or "—"
        if sides.get("legacy") and sides.get("stream") and sides["legacy"] != sides["stream"]:
            rule = f"legacy: {sides['legacy']}; stream: {sides['stream']}"
        lines.append(
            f"| {_md(g['segment'])} | {g['only_in']} | {_md(rule)} | {_md(legacy)} | {_md(stream)} | "
            f"{g['mismatches']:,} |"
        )
    return lines


def _latency_line(result: ParityResult) -> str:
    parts = []
    for side in ("legacy", "stream"):
        s = result.latency[side]
        if s.source == "replay":
            parts.append(f"{side} {NOT_MEASURED_REPLAY} (measure it with `shadow run --live`)")
        else:
            parts.append(f"{side} p50 {duration(s.p50_ms)}, p99 {duration(s.p99_ms)}")
    return "Freshness: " + "; ".join(parts) + "."


def _truth_lines(result: ParityResult) -> str:
    truth = result.ground_truth
    assert truth is not None
    rows = [
        f"Ground truth over {truth.cells:,} present (user, as-of) cells ({truth.fraudulent:,} fraudulent):",
        "",
        "| tier | legacy FP | stream FP | legacy detection | stream detection |",
        "|---|---:|---:|---:|---:|",
    ]
    for tier, legacy in truth.legacy.items():
        stream = truth.stream[tier]
        rows.append(
            f"| {_md(tier)} | {share(legacy.false_positive_rate)} | {share(stream.false_positive_rate)} | "
            f"{share(legacy.detection_rate)} | {share(stream.detection_rate)} |"
        )
    return "\n".join(rows)


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return "".join("\\" + ch if ch in "|*_`[]<>\\" else ch for ch in text)
