"""The rollout dashboard's content: pure functions from evidence, stage and decisions to display values.

``drift_rows`` is the segment drift panel: each segment's largest side-to-side PSI
from ``parity.json``'s ``segment_drift`` and a small bar chart of it per as-of.
Charts are drawn as SVG from numbers computed here (no script, no inline style), so
the page works under a strict Content-Security-Policy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from compare.axes import TimeTick, agreement_shares, line_runs, thousands, time_ticks
from compare.causes import CAUSES  # with approximate: Count-Min mismatches, shown apart from defects
from compare.drift import PSI_ACT, PSI_LOOK
from compare.latency import NOT_MEASURED_REPLAY
from rollout.gates import GateResult
from rollout.router import StageView
from rollout.stages import ORDER, Position
from rollout.store import Decision
from segments.timeutil import TimestampError, format_ms, parse_rfc3339_ms

CHART_W, CHART_H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 220, 48, 16, 14, 30


@dataclass(frozen=True)
class Chart:
    """A line chart in a ``CHART_W`` x ``CHART_H`` SVG: polyline runs, dots, empty as-ofs and labelled ticks.

    As in the report (``compare.axes``), an as-of with no pairs breaks the line and is
    listed in ``empty`` (marked on the baseline), never drawn at 100%.
    """

    lines: tuple[str, ...]
    dots: tuple[tuple[float, float, str], ...]
    empty: tuple[tuple[float, float, str], ...]
    y_ticks: tuple[tuple[float, str], ...]
    x_ticks: tuple[TimeTick, ...]


def human_ms(ms: float | None) -> str:
    """A latency for people: ``0.8 ms``, ``12 ms``, ``4.2 s``, ``5 min 3 s``; ``—`` when absent."""
    if ms is None:
        return "—"
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"


def _num(node: Any, *path: str) -> float | None:
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def agreement_chart(series: Any) -> Chart | None:
    """Agreement (agree / pairs) per as-of round; None without at least one round with pairs."""
    rounds: list[tuple[str, int, int, int]] = []
    if isinstance(series, Sequence):
        for item in series:
            pairs, agree = _num(item, "pairs"), _num(item, "agree")
            if pairs is None or agree is None or not isinstance(item.get("as_of"), str):
                continue
            try:
                at = parse_rfc3339_ms(item["as_of"])
            except TimestampError:
                continue
            rounds.append((item["as_of"], at, int(pairs), int(agree)))
    ratios = agreement_shares([p for _, _, p, _ in rounds], [a for _, _, _, a in rounds])
    drawn = [r for r in ratios if r is not None]
    if not drawn:
        return None
    low = min(drawn)
    floor = max(0.0, min(0.99, math.floor((low - 0.002) * 100) / 100))  # a whole percent below the lowest
    span_x = CHART_W - PAD_L - PAD_R
    span_y = CHART_H - PAD_T - PAD_B
    n = len(rounds)

    def x(i: int) -> float:
        return round(PAD_L + (span_x * i / (n - 1) if n > 1 else span_x / 2), 1)

    def y(ratio: float) -> float:
        return round(PAD_T + span_y * (1 - (ratio - floor) / (1 - floor)), 1)

    coords = [None if r is None else (x(i), y(r)) for i, r in enumerate(ratios)]
    dots = tuple(
        (c[0], c[1], f"{rounds[i][0]}: {ratios[i] or 0:.2%} of {thousands(rounds[i][2])} pairs")
        for i, c in enumerate(coords)
        if c is not None
    )
    empty = tuple(
        (x(i), float(PAD_T + span_y), f"{text}: no pairs (nothing to compare)")
        for i, (text, _, pairs, _) in enumerate(rounds)
        if not pairs
    )
    steps = 4
    y_ticks = tuple(
        (round(y(floor + (1 - floor) * k / steps), 1), _percent(floor + (1 - floor) * k / steps))
        for k in range(steps + 1)
    )
    x_ticks = time_ticks([at for _, at, _, _ in rounds], [x(i) for i in range(n)], most=4)
    return Chart(line_runs(coords), dots, empty, y_ticks, x_ticks)


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.2f}".rstrip("0").rstrip(".") + "%"


def cause_bars(by_cause: Any) -> list[dict[str, Any]]:
    """One bar per cause (SPEC §5), widths relative to the largest count."""
    counts = {c: int(_num(by_cause, c) or 0) for c in CAUSES}
    top = max(counts.values()) or 1
    return [
        {"cause": c, "label": c.replace("_", " "), "count": n, "width": round(360 * n / top, 1)}
        for c, n in counts.items()
    ]


def freshness_rows(latency: Any) -> list[dict[str, Any]]:
    """Each side's figures as ``parity.json`` holds them; a replay's stream says "not measured (replay)"."""
    rows = []
    for side in ("legacy", "stream"):
        entry = latency.get(side) if isinstance(latency, dict) else None
        replay = isinstance(entry, dict) and entry.get("source") == "replay"
        rows.append(
            {
                "side": side,
                **{
                    k: NOT_MEASURED_REPLAY if replay else human_ms(_num(latency, side, f"{k}_ms"))
                    for k in ("p50", "p95", "p99", "max")
                },
                "count": int(_num(latency, side, "count") or 0),
            }
        )
    return rows


DRIFT_W, DRIFT_H = 240, 40


def drift_rows(section: Any) -> list[dict[str, Any]] | None:
    """``segment_drift`` per segment: its largest side-to-side PSI, where, the shares, chi-square and p there,
    each side's largest PSI and smallest chi-square p against its own baseline (earlier as-ofs), a level
    (``ok`` below ``PSI_LOOK``, ``look`` below ``PSI_ACT``, else ``act``), and one bar per as-of of a
    ``DRIFT_W`` x ``DRIFT_H`` SVG (height by PSI over ``max(PSI_ACT, largest)``, with the two
    thresholds as lines). None when the evidence has no drift figures; malformed rows are left out."""
    rows = section.get("per_as_of") if isinstance(section, Mapping) else None
    if not isinstance(rows, list):
        return None
    by_segment: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        usable = isinstance(row, Mapping) and isinstance(row.get("segment"), str) and _num(row, "psi_sides") is not None
        if usable and type(row.get("as_of")) is int:
            by_segment.setdefault(row["segment"], []).append(row)
    out = []
    for segment, mine in by_segment.items():
        mine.sort(key=lambda r: r["as_of"])
        psis = [float(r["psi_sides"]) for r in mine]
        worst = mine[psis.index(max(psis))]
        top = max(PSI_ACT, max(psis))
        step = DRIFT_W / len(mine)

        def y(value: float, top: float = top) -> float:
            return round(DRIFT_H - DRIFT_H * value / top, 1)

        bars = [
            {
                "x": round(i * step + 0.5, 1),
                "w": round(max(step - 1, 1), 1),
                "y": y(psi),
                "h": round(DRIFT_H - y(psi), 1),
                "level": _psi_level(psi),
                "title": f"{format_ms(int(r['as_of']))[11:16]}: PSI {psi:.4f}, legacy "
                f"{_percent(_num(r, 'legacy_share') or 0.0)} vs stream {_percent(_num(r, 'stream_share') or 0.0)}",
            }
            for i, (r, psi) in enumerate(zip(mine, psis, strict=True))
        ]
        out.append(
            {
                "segment": segment,
                "max_psi": f"{max(psis):.4f}",
                "level": _psi_level(max(psis)),
                "at": format_ms(int(worst["as_of"]))[11:16],
                "legacy_share": _percent(_num(worst, "legacy_share") or 0.0),
                "stream_share": _percent(_num(worst, "stream_share") or 0.0),
                "chi2": _fixed(_num(worst, "chi2_sides"), 2),
                "p": _general(_num(worst, "p_sides")),
                "legacy_baseline": _fixed(_largest(mine, "psi_legacy_baseline"), 4),
                "stream_baseline": _fixed(_largest(mine, "psi_stream_baseline"), 4),
                "legacy_baseline_p": _general(_smallest(mine, "p_legacy_baseline")),
                "stream_baseline_p": _general(_smallest(mine, "p_stream_baseline")),
                "bars": bars,
                "look_y": y(PSI_LOOK),
                "act_y": y(PSI_ACT),
            }
        )
    return sorted(out, key=lambda r: r["segment"])


def _fixed(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _general(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _largest(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [v for v in (_num(r, key) for r in rows) if v is not None]
    return max(values) if values else None


def _smallest(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [v for v in (_num(r, key) for r in rows) if v is not None]
    return min(values) if values else None


def _psi_level(psi: float) -> str:
    return "ok" if psi < PSI_LOOK else "look" if psi < PSI_ACT else "act"


def stage_steps(position: Position | None) -> list[dict[str, str]]:
    """The seven stages with ``done``, ``current`` or ``todo``; the current canary shows its percentage."""
    steps = []
    for stage in ORDER:
        if position is None:
            state = "todo"
        elif stage is position.stage:
            state = "current"
        else:
            state = "done" if ORDER.index(stage) < ORDER.index(position.stage) else "todo"
        label = (
            str(position) if position is not None and state == "current" else stage.value.replace("_", " ")
        )
        steps.append({"stage": stage.value, "label": label, "state": state})
    return steps


def dashboard(
    evidence: Mapping[str, Any] | None,
    evidence_note: str | None,
    view: StageView,
    history: Sequence[Decision],
    gates: Sequence[GateResult] | None,
    now_ms: int,
) -> dict[str, Any]:
    """Everything the dashboard template shows."""
    data = evidence or {}
    pairs, agree = _num(data, "pairs"), _num(data, "agree")
    unexplained = _num(data, "by_cause", "unexplained")
    wilson = data.get("unexplained_rate_wilson95")
    generated = data.get("generated_at")
    age = None
    if isinstance(generated, str):
        try:
            age = human_ms(max(0, now_ms - parse_rfc3339_ms(generated)))
        except TimestampError:
            age = None
    ruleset = data.get("ruleset") if isinstance(data.get("ruleset"), Mapping) else {}
    dead = data.get("dead_letter") if isinstance(data.get("dead_letter"), Mapping) else {}
    return {
        "has_evidence": evidence is not None,
        "evidence_note": evidence_note,
        "position": str(view.position) if view.position is not None else "unknown",
        "stage_source": view.source,
        "stage_trouble": view.trouble,
        "version": view.version,
        "steps": stage_steps(view.position),
        "pairs": int(pairs) if pairs is not None else None,
        "agreement": f"{agree / pairs:.2%}" if pairs and agree is not None else "—",
        "unexplained": int(unexplained) if unexplained is not None else None,
        "unexplained_rate": f"{unexplained / pairs:.3%}" if pairs and unexplained is not None else "—",
        "wilson_upper": f"{wilson[1]:.3%}"
        if isinstance(wilson, Sequence) and len(wilson) == 2 and isinstance(wilson[1], int | float)
        else "—",
        "verdict": str(data.get("verdict", "—")),
        "ruleset": f"{ruleset.get('name')}@v{ruleset.get('version')}" if ruleset else "—",
        "generated_at": generated if isinstance(generated, str) else "—",
        "age": age or "—",
        "rounds": _num(data, "as_of_rounds"),
        "chart": agreement_chart(data.get("agreement_over_time")),
        "causes": cause_bars(data.get("by_cause")),
        "drift": drift_rows(data.get("segment_drift")),
        "drift_max": _num(data, "segment_drift", "max_psi"),
        "freshness": freshness_rows(data.get("latency")),
        "dead_letters": [
            {
                "side": "legacy",
                "rejected": _num(dead, "legacy", "rejected"),
                "too_late": None,
                "events": _num(dead, "legacy", "events"),
            },
            {
                "side": "stream",
                "rejected": _num(dead, "stream", "rejected"),
                "too_late": _num(dead, "stream", "too_late"),
                "events": _num(dead, "stream", "events"),
            },
        ],
        "gates": list(gates) if gates is not None else None,
        "history": [
            {
                "id": d.id,
                "at": format_ms(d.at_ms)[:19].replace("T", " "),
                "actor": d.actor,
                "move": f"plan set at {d.source}" if d.action == "plan" else f"{d.source} → {d.target}",
                "action": d.action,
                "forced": d.forced,
                "weakened": d.weakened,
                "verdict": d.verdict or "",
                "plan": d.plan_digest[:12] if d.plan_digest else "—",
                "evidence": d.evidence_sha256[:12] if d.evidence_sha256 else "—",
                "reason": d.reason or "",
            }
            for d in reversed(history)
        ],
    }
