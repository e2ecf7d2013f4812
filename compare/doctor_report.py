"""The doctor's outputs: ``doctor.json`` and its section of ``report.html`` (chart geometry computed here).

``section_context`` turns a diagnosis into the plain dict the template
``templates/doctor_section.html`` draws; ``render_section`` renders it; and
``place_section`` puts it into an existing report, before its footer, replacing
the section an earlier doctor run placed there (between ``MARK_BEGIN`` and
``MARK_END``), so the report a comparison wrote gains the triage without the
comparison having to know about it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from compare.doctor import Diagnosis
from compare.drift import worst_per_segment
from segments.timeutil import format_ms

MARK_BEGIN = "<!-- segshadow doctor: begin -->"
MARK_END = "<!-- segshadow doctor: end -->"
BAR_W = 7
ROW_H = 70


def drift_chart(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Bars of each segment's share per as-of, legacy beside stream, one band per segment."""
    if not rows:
        return None
    segments = list(dict.fromkeys(r["segment"] for r in rows))
    bars: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    width = 140
    for band, segment in enumerate(segments):
        mine = [r for r in rows if r["segment"] == segment]
        top = max(max(r["legacy_share"], r["stream_share"]) for r in mine) or 1.0
        base = (band + 1) * ROW_H
        labels.append({"x": 4, "y": base - ROW_H + 14, "text": f"{segment} (max {top:.1%})"})
        for i, r in enumerate(mine):
            x = 140 + i * (2 * BAR_W + 4)
            for j, (side, fill) in enumerate((("legacy", "#1f4e79"), ("stream", "#8fb8de"))):
                h = round(r[f"{side}_share"] / top * (ROW_H - 24), 1)
                bars.append({
                    "x": x + j * BAR_W, "y": base - h - 4, "w": BAR_W - 1, "h": h, "fill": fill,
                    "title": f"{segment} at {format_ms(r['as_of'])}: {side} {r[f'{side}_share']:.2%} "
                             f"(PSI {r['psi_sides']:.4f}, chi-square p {r['p_sides']:.3g})",
                })
            width = max(width, x + 2 * BAR_W + 8)
    worst = max(rows, key=lambda r: r["psi_sides"])
    times = sorted({r["as_of"] for r in rows})
    bottom = len(segments) * ROW_H + 16
    every = 2 if len(times) > 1 else 1  # a group is narrower than its HH:MM label
    for i, t in enumerate(times):
        if i % every == 0:
            labels.append({"x": 140 + i * (2 * BAR_W + 4), "y": bottom, "text": format_ms(t)[11:16]})
    return {
        "bars": bars,
        "labels": labels,
        "width": width + 20,
        "height": bottom + 4,
        "max_psi": worst["psi_sides"],
        "worst": f"{worst['segment']} at {format_ms(worst['as_of'])}",
    }


def section_context(diagnosis: Diagnosis) -> dict[str, Any]:
    """What the section template draws: the diagnosis as plain data, the lateness table, the drift chart."""
    data = diagnosis.to_dict()
    state = next(layer for layer in data["layers"] if layer["layer"] == "state")
    return {
        "d": data,
        "lateness": state["figures"].get("lateness_table", []),
        "drift": drift_chart(data["drift"]),
        "drift_table": [r | {"at": format_ms(int(r["as_of"]))} for r in worst_per_segment({"per_as_of": data["drift"]})
                        if isinstance(r["as_of"], int)],
        "drift_source": data["drift_source"],
    }


def render_section(diagnosis: Diagnosis) -> str:
    """The section as HTML (autoescaped), wrapped in the markers ``place_section`` looks for."""
    env = Environment(
        loader=PackageLoader("compare", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    body = env.get_template("doctor_section.html").render(**section_context(diagnosis))
    return f"{MARK_BEGIN}\n{body}\n{MARK_END}\n"


def place_section(page: str, section: str) -> str:
    """``page`` with ``section`` before its ``<footer>`` (or ``</body>``), replacing an earlier doctor section."""
    if MARK_BEGIN in page and MARK_END in page:
        head, rest = page.split(MARK_BEGIN, 1)
        return head + section + rest.split(MARK_END, 1)[1].lstrip("\n")
    for anchor in ("<footer", "</body>"):
        if anchor in page:
            head, tail = page.split(anchor, 1)
            return head + section + anchor + tail
    return page + section


def write_outputs(run: Path, diagnosis: Diagnosis) -> None:
    """Write ``run/doctor.json`` and place the section in ``run/report.html`` when there is one."""
    (run / "doctor.json").write_text(json.dumps(diagnosis.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    report = run / "report.html"
    if report.is_file():
        page = report.read_text(encoding="utf-8")
        report.write_text(place_section(page, render_section(diagnosis)), encoding="utf-8")
