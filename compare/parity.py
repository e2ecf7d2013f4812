"""The parity result and ``parity.json``, whose keys the rollout gates read. Keep them stable.

``parity.json`` (``ParityResult.to_dict``), every key always present:

- ``pairs``, ``agree``, ``mismatch``: ints (SPEC §5); ``agree + mismatch == pairs``.
- ``by_cause``: ``{late_arrival, dropped_too_late, mixed, unexplained}`` -> int; the four sum to ``mismatch``.
- ``per_segment``: ``{NAME: {both, legacy_only, stream_only, precision, recall}}`` over all pairs;
  ``precision = both / (both + stream_only)`` and ``recall = both / (both + legacy_only)`` (the stream
  judged against legacy), ``null`` when the denominator is 0. Every segment of the rule set is
  listed, then any other name found in the outputs.
- ``ruleset``: ``{name, version, digest}``; ``events_sha256``: the event file's SHA-256;
  ``generated_at``: RFC 3339 UTC (``...Z``); ``as_of_rounds``: how many legacy as-ofs.
- ``unexplained_rate``: ``unexplained / pairs`` (0.0 when there are no pairs);
  ``unexplained_rate_wilson95``: ``[lo, hi]``, the Wilson 95% interval (``[0.0, 1.0]`` with no pairs).
- ``agreement_over_time``: ``[{as_of (RFC 3339), pairs, agree}]``, one per as-of, in time order.
- ``latency``: ``{legacy: L, stream: L}`` with ``L = {p50_ms, p95_ms, p99_ms, max_ms, count, source, ...}``
  (quantiles ``null`` when ``count`` is 0; legacy adds ``never_visible``, stream ``unattributed``);
  see ``compare.latency`` for the definitions.
- ``dead_letter``: ``{legacy: {rejected, events}, stream: {rejected, too_late, events, source}}``:
  lines rejected by validation, events each side applied, events the stream dropped as too late,
  and whether those came from the stream's dead-letter file or were recomputed.
- ``ground_truth``: ``null``, or for labelled data ``{definition, cells, fraudulent, legitimate,
  legacy: {TIER: rates}, stream: {TIER: rates}}`` (``compare.groundtruth``).
- ``noise``: ``null``, or ``{SIDE: {pairs, agree, mismatch, mismatch_rate, mismatch_rate_wilson95,
  output, events_sha256, outside_schedule}}`` for each side run twice.
- ``params``: ``{every_ms, max_out_of_orderness_ms, allowed_lateness_ms, span_ms}``.
- ``inputs``: ``{events, legacy, stream}`` paths as given.
- ``segment_drift``: ``null`` (a result built without it), or ``{population: "pairs", max_psi,
  per_as_of: [row]}`` with one row per segment either side put anyone in (by name) and as-of
  (``compare.drift.DriftRow.to_dict``: ``as_of`` in epoch ms, ``population`` the as-of's pairs, each
  side's count and share, ``psi_sides``, the chi-square and its p, each side's PSI, chi-square and p
  against its own earlier as-ofs); ``max_psi`` is the largest ``psi_sides``, what the ``max_segment_psi`` gate reads.
- ``verdict``: ``"parity"`` (no mismatch), ``"explained_differences"`` (mismatches, none unexplained)
  or ``"defects"`` (at least one unexplained mismatch).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from compare.causes import CAUSES
from compare.groundtruth import GroundTruth
from compare.latency import LatencySummary
from compare.stats import precision, rate, recall, wilson_interval
from segments.timeutil import format_ms

VERDICTS = ("parity", "explained_differences", "defects")
FAIL_ON = ("defects", "mismatch", "never")


def fails(verdict: str, fail_on: str) -> bool:
    """Whether a run with ``verdict`` exits 1 under ``--fail-on``: ``defects`` (the default) on
    unexplained mismatches, ``mismatch`` on any mismatch, ``never`` not at all."""
    if fail_on not in FAIL_ON:
        raise ValueError(f"fail_on must be one of {FAIL_ON}, not {fail_on!r}")
    return (fail_on == "mismatch" and verdict != "parity") or (fail_on == "defects" and verdict == "defects")


@dataclass(frozen=True)
class SegmentCounts:
    both: int
    legacy_only: int
    stream_only: int

    @property
    def precision(self) -> float | None:
        return precision(self.both, self.stream_only)

    @property
    def recall(self) -> float | None:
        return recall(self.both, self.legacy_only)

    def to_dict(self) -> dict[str, Any]:
        return {
            "both": self.both,
            "legacy_only": self.legacy_only,
            "stream_only": self.stream_only,
            "precision": self.precision,
            "recall": self.recall,
        }


@dataclass(frozen=True)
class AsOfAgreement:
    as_of: int
    pairs: int
    agree: int

    def to_dict(self) -> dict[str, Any]:
        return {"as_of": format_ms(self.as_of), "pairs": self.pairs, "agree": self.agree}


@dataclass(frozen=True)
class NoiseFloor:
    """Two outputs of the same side compared with each other: the mismatch rate no change can explain."""

    side: str
    pairs: int
    agree: int
    output: str
    events_sha256: str | None
    outside_schedule: int

    @property
    def mismatch(self) -> int:
        return self.pairs - self.agree

    @property
    def mismatch_rate(self) -> float:
        return rate(self.mismatch, self.pairs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "agree": self.agree,
            "mismatch": self.mismatch,
            "mismatch_rate": self.mismatch_rate,
            "mismatch_rate_wilson95": list(wilson_interval(self.mismatch, self.pairs)),
            "output": self.output,
            "events_sha256": self.events_sha256,
            "outside_schedule": self.outside_schedule,
        }


@dataclass(frozen=True)
class ParityResult:
    """What one comparison found. ``to_dict`` is ``parity.json``."""

    ruleset: Mapping[str, Any]
    events_sha256: str
    generated_at: int
    as_of_rounds: int
    pairs: int
    agree: int
    by_cause: Mapping[str, int]
    per_segment: Mapping[str, SegmentCounts]
    agreement_over_time: tuple[AsOfAgreement, ...]
    latency: Mapping[str, LatencySummary]
    dead_letter: Mapping[str, Mapping[str, Any]]
    ground_truth: GroundTruth | None = None
    noise: tuple[NoiseFloor, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)
    drift: Mapping[str, Any] | None = None
    provenance: Mapping[str, Any] | None = None  # each side: sidecar or declared, its rule set or own logic
    unexplained_groups: Mapping[str, Any] | None = None  # ``compare.mismatches.logic_groups``

    def __post_init__(self) -> None:
        if sum(self.by_cause.values()) != self.mismatch or set(self.by_cause) != set(CAUSES):
            raise ValueError(f"causes {dict(self.by_cause)} do not account for {self.mismatch} mismatches")

    @property
    def mismatch(self) -> int:
        return self.pairs - self.agree

    @property
    def unexplained(self) -> int:
        return int(self.by_cause["unexplained"])

    @property
    def unexplained_rate(self) -> float:
        return rate(self.unexplained, self.pairs)

    @property
    def unexplained_rate_wilson95(self) -> tuple[float, float]:
        return wilson_interval(self.unexplained, self.pairs)

    @property
    def verdict(self) -> str:
        if self.mismatch == 0:
            return "parity"
        return "defects" if self.unexplained else "explained_differences"

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "agree": self.agree,
            "mismatch": self.mismatch,
            "by_cause": {cause: int(self.by_cause[cause]) for cause in CAUSES},
            "per_segment": {name: counts.to_dict() for name, counts in self.per_segment.items()},
            "ruleset": dict(self.ruleset),
            "events_sha256": self.events_sha256,
            "generated_at": format_ms(self.generated_at),
            "as_of_rounds": self.as_of_rounds,
            "unexplained_rate": self.unexplained_rate,
            "unexplained_rate_wilson95": list(self.unexplained_rate_wilson95),
            "agreement_over_time": [row.to_dict() for row in self.agreement_over_time],
            "latency": {side: summary.to_dict() for side, summary in self.latency.items()},
            "dead_letter": {side: dict(counts) for side, counts in self.dead_letter.items()},
            "ground_truth": self.ground_truth.to_dict() if self.ground_truth is not None else None,
            "noise": {n.side: n.to_dict() for n in self.noise} or None,
            "params": dict(self.params),
            "inputs": dict(self.inputs),
            "segment_drift": dict(self.drift) if self.drift is not None else None,
            "provenance": dict(self.provenance) if self.provenance is not None else None,
            "unexplained_groups": dict(self.unexplained_groups) if self.unexplained_groups is not None else None,
            "verdict": self.verdict,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def summary_line(self) -> str:
        """One line for the terminal."""
        causes = ", ".join(f"{cause} {self.by_cause[cause]}" for cause in CAUSES)
        share = f"{100 * rate(self.agree, self.pairs):.2f}%"
        return (
            f"{self.verdict}: {self.pairs} pairs over {self.as_of_rounds} as-ofs, {self.agree} agree ({share}), "
            f"{self.mismatch} differ ({causes})"
        )
