"""Segment drift: per segment and per as-of, the share of users in the segment on each side, compared.

For a segment at as-of ``t`` each side splits the population (the users legacy
could see at ``t``: an accepted event arrived by ``t``) into *in* and *out*.
Two measures compare two such splits:

- the **population stability index** over the two bins,
  ``PSI = sum((a - b) * ln(a / b))`` with the shares floored at ``EPSILON`` so an
  empty bin stays finite (0 means identical; 0.1 is the usual "look", 0.25 "act");
- **Pearson's chi-square** on the 2x2 table of counts (one degree of freedom, no
  continuity correction) and its p-value, exactly ``erfc(sqrt(x / 2))``, which is
  the chi-square survival function for one degree of freedom (no library needed).

Each side is compared with the other at the same as-of, and with its own
**baseline**: the pooled counts of its earlier as-ofs (none for the first), by
PSI and by the chi-square of its in/out split against the baseline's. (The
pooled as-ofs count a user once per as-of, so the baseline's p-value treats
repeated observations of a user as independent: read it as a ranking of how
unusual an as-of is, not as an exact probability.)
Pure: plain counts in, frozen rows out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EPSILON = 1e-4
PSI_LOOK = 0.1
PSI_ACT = 0.25


def psi(a_in: int, a_total: int, b_in: int, b_total: int) -> float:
    """PSI between two in/out splits (counts); 0.0 when either population is empty."""
    if a_total <= 0 or b_total <= 0:
        return 0.0
    out = 0.0
    for a, b in ((a_in / a_total, b_in / b_total), (1 - a_in / a_total, 1 - b_in / b_total)):
        a, b = max(a, EPSILON), max(b, EPSILON)
        out += (a - b) * math.log(a / b)
    return out


def chi_square(a_in: int, a_total: int, b_in: int, b_total: int) -> tuple[float, float]:
    """Pearson's chi-square of the 2x2 table (in/out by side) and its p-value (1 dof).

    A table with an empty row or column carries no evidence: ``(0.0, 1.0)``.
    """
    table = ((a_in, a_total - a_in), (b_in, b_total - b_in))
    if min(a_in, b_in, a_total - a_in, b_total - b_in) < 0:
        raise ValueError("a segment cannot hold more users than the population")
    rows = [sum(r) for r in table]
    cols = [table[0][j] + table[1][j] for j in range(2)]
    n = sum(rows)
    if n == 0 or 0 in rows or 0 in cols:
        return 0.0, 1.0
    x = sum(
        (table[i][j] - rows[i] * cols[j] / n) ** 2 / (rows[i] * cols[j] / n) for i in range(2) for j in range(2)
    )
    return x, math.erfc(math.sqrt(x / 2))


@dataclass(frozen=True)
class DriftRow:
    """One segment at one as-of: both sides' counts and shares, and the three comparisons."""

    segment: str
    as_of: int
    population: int
    legacy_in: int
    stream_in: int
    psi_sides: float
    chi2_sides: float
    p_sides: float
    psi_legacy_baseline: float | None
    psi_stream_baseline: float | None
    chi2_legacy_baseline: float | None = None
    p_legacy_baseline: float | None = None
    chi2_stream_baseline: float | None = None
    p_stream_baseline: float | None = None

    @property
    def legacy_share(self) -> float:
        return self.legacy_in / self.population if self.population else 0.0

    @property
    def stream_share(self) -> float:
        return self.stream_in / self.population if self.population else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "as_of": self.as_of,
            "population": self.population,
            "legacy_in": self.legacy_in,
            "stream_in": self.stream_in,
            "legacy_share": round(self.legacy_share, 6),
            "stream_share": round(self.stream_share, 6),
            "psi_sides": round(self.psi_sides, 6),
            "chi2_sides": round(self.chi2_sides, 4),
            "p_sides": self.p_sides,
            "psi_legacy_baseline": None if self.psi_legacy_baseline is None else round(self.psi_legacy_baseline, 6),
            "psi_stream_baseline": None if self.psi_stream_baseline is None else round(self.psi_stream_baseline, 6),
            "chi2_legacy_baseline": None if self.chi2_legacy_baseline is None else round(self.chi2_legacy_baseline, 4),
            "p_legacy_baseline": self.p_legacy_baseline,
            "chi2_stream_baseline": None if self.chi2_stream_baseline is None else round(self.chi2_stream_baseline, 4),
            "p_stream_baseline": self.p_stream_baseline,
        }


def segment_drift(
    as_ofs: Sequence[int],
    population: Mapping[int, int],
    legacy_counts: Mapping[int, Mapping[str, int]],
    stream_counts: Mapping[int, Mapping[str, int]],
    segments: Sequence[str],
) -> list[DriftRow]:
    """The drift rows for every segment and as-of (as-ofs in time order).

    ``population[t]`` is the number of users at ``t``; ``*_counts[t][segment]``
    the users a side put in the segment at ``t``. ``ValueError`` when a count
    exceeds its population.
    """
    rows: list[DriftRow] = []
    for segment in segments:
        pooled = {"legacy": [0, 0], "stream": [0, 0]}
        for t in as_ofs:
            n = population.get(t, 0)
            a = legacy_counts.get(t, {}).get(segment, 0)
            b = stream_counts.get(t, {}).get(segment, 0)
            if a > n or b > n:
                raise ValueError(f"{segment} at {t}: more users in the segment than in the population")
            x, p = chi_square(a, n, b, n)
            baselines: dict[str, float | None] = {}
            tests: dict[str, tuple[float, float] | tuple[None, None]] = {}
            for side, count in (("legacy", a), ("stream", b)):
                base_in, base_total = pooled[side]
                baselines[side] = psi(count, n, base_in, base_total) if base_total else None
                tests[side] = chi_square(count, n, base_in, base_total) if base_total else (None, None)
                pooled[side][0] += count
                pooled[side][1] += n
            rows.append(
                DriftRow(segment, t, n, a, b, psi(a, n, b, n), x, p, baselines["legacy"], baselines["stream"],
                         *tests["legacy"], *tests["stream"])
            )
    return rows


def max_psi(rows: Sequence[DriftRow]) -> float:
    """The largest side-to-side PSI over all rows (0.0 for none): what a ``max_segment_psi`` gate would read."""
    return max((r.psi_sides for r in rows), default=0.0)


def drift_section(
    as_ofs: Sequence[int],
    pairs_at: Mapping[int, int],
    legacy_counts: Mapping[int, Mapping[str, int]],
    stream_counts: Mapping[int, Mapping[str, int]],
) -> dict[str, Any]:
    """``parity.json``'s ``segment_drift``: the population at each as-of is its **pairs** (users either side
    put in some segment), the segments are every one either side put anyone in (by name), and
    ``max_psi`` is ``max_psi`` of the rows, rounded as the rows are. Both the comparator (from the
    alignment) and the evidence seal (from the legacy output and the mismatches) build it here."""
    names = {n for side in (legacy_counts, stream_counts) for tally in side.values() for n, c in tally.items() if c}
    rows = segment_drift(as_ofs, pairs_at, legacy_counts, stream_counts, sorted(names))
    return {"population": "pairs", "max_psi": round(max_psi(rows), 6), "per_as_of": [r.to_dict() for r in rows]}


def drift_from_sides(
    sides: Mapping[int, tuple[Mapping[str, frozenset[str]], Mapping[str, frozenset[str]]]],
) -> dict[str, Any]:
    """``drift_section`` from each side's non-empty sets by user per as-of (``compare.doctor.sides_at``).

    The same definition as the comparator's: the population at ``t`` is the pairs
    (users either side put in some segment at ``t``), a side's count the users it
    put in the segment. The doctor uses it when the run has no ``parity.json`` of
    these outputs; on a run that has one it gives that file's figures (a test holds
    them equal)."""
    as_ofs = sorted(sides)
    pairs: dict[int, int] = {}
    counts: tuple[dict[int, dict[str, int]], dict[int, dict[str, int]]] = ({}, {})
    for t in as_ofs:
        legacy, stream = sides[t]
        pairs[t] = len(legacy.keys() | stream.keys())
        for side, sets in zip(counts, (legacy, stream), strict=True):
            tally: dict[str, int] = {}
            for value in sets.values():
                for name in value:
                    tally[name] = tally.get(name, 0) + 1
            side[t] = tally
    return drift_section(as_ofs, pairs, counts[0], counts[1])


def _number(row: Mapping[str, Any], key: str) -> float | None:
    value = row.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def worst_per_segment(section: Any) -> list[dict[str, Any]]:
    """Per segment (by name), from a ``segment_drift`` section: the as-of with the largest side-to-side PSI and
    its shares, PSI, chi-square and p; the smallest p of any as-of; and each side's largest PSI and smallest
    chi-square p against its own baseline. What the report and the dashboard show beside each other; malformed
    rows are left out."""
    rows = section.get("per_as_of") if isinstance(section, Mapping) else None
    if not isinstance(rows, list):
        return []
    by_segment: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if isinstance(row, Mapping) and isinstance(row.get("segment"), str) and _number(row, "psi_sides") is not None:
            by_segment.setdefault(row["segment"], []).append(row)
    out = []
    for segment in sorted(by_segment):
        mine = by_segment[segment]
        worst = max(mine, key=lambda r: _number(r, "psi_sides") or 0.0)
        ps = [p for p in (_number(r, "p_sides") for r in mine) if p is not None]
        base: dict[str, float | None] = {}
        for side in ("legacy", "stream"):
            values = [v for v in (_number(r, f"psi_{side}_baseline") for r in mine) if v is not None]
            base[side] = max(values) if values else None
            ps_base = [v for v in (_number(r, f"p_{side}_baseline") for r in mine) if v is not None]
            base[f"p_{side}"] = min(ps_base) if ps_base else None
        out.append({
            "segment": segment,
            "as_of": worst.get("as_of"),
            "legacy_share": _number(worst, "legacy_share"),
            "stream_share": _number(worst, "stream_share"),
            "psi_sides": _number(worst, "psi_sides"),
            "chi2_sides": _number(worst, "chi2_sides"),
            "p_sides": _number(worst, "p_sides"),
            "min_p_sides": min(ps) if ps else None,
            "max_psi_legacy_baseline": base["legacy"],
            "max_psi_stream_baseline": base["stream"],
            "min_p_legacy_baseline": base["p_legacy"],
            "min_p_stream_baseline": base["p_stream"],
        })
    return out
