"""Gates: pure decisions over a plan, comparison evidence and an injected "now".

Each gate gives ``pass``, ``fail`` or ``inconclusive`` (too little, too old or
unusable data) with the number it observed, its threshold and a one-line reason,
in the spirit of an Argo Rollouts analysis run. ``verdict`` combines them: any
fail is a fail, else any inconclusive is inconclusive, else pass. Nothing here
reads a clock, a file or a database.

The gates, in the order they are reported:

- ``evidence_seal``: the evidence was read through its seal (``rollout.evidence``
  puts the outcome under ``evidence_seal``) and it verified: the manifest, every
  artifact's SHA-256 and every count re-derived from the artifacts agree with
  ``parity.json``. Anything else fails, naming the file and the field; evidence
  with no seal outcome at all (not read by ``load_evidence``) fails too. Always
  evaluated, whatever the plan says.
- ``ruleset``: the evidence's rule set has the plan's name and version (and digest
  when the plan pins one); another rule set fails.
- ``evidence_age``: ``now - generated_at`` is at most the plan's ``evidence_max_age``;
  older (or from the future, beyond a minute of clock skew) is inconclusive.
- ``min_pairs`` / ``min_as_of_rounds``: at least that many compared pairs and as-of
  rounds; fewer is inconclusive.
- ``unexplained``: with ``u`` unexplained mismatches in ``n`` pairs, the rate ``u/n``
  at or above the threshold fails; a Wilson 95% upper bound below it passes; in
  between (the rate is fine but the data cannot yet show it) is inconclusive.
- ``approximate`` (when the plan sets ``max_approximate_rate``): the same rule over the
  mismatches a rule set's Count-Min bound explains (``by_cause.approximate``), under
  its own threshold: the accuracy traded for state, kept apart from defects.
- ``stream_freshness``: the stream's p99 freshness (``compare.latency.summarize``: exact up to its
  bound, else a sketch's upper rank bound, never below the exact p99) is at most the bound;
  replay evidence (``source: replay``) has none: inconclusive, "not measured (replay)".
- ``dead_letter``: the share of what a side received that it dead-lettered: the stream's
  ``(rejected + too_late) / (rejected + too_late + events)`` is at most legacy's
  ``rejected / (rejected + events)`` plus the tolerance (``events``: events the side
  applied; exact arithmetic).
- ``false_positive_rate`` (risk evidence only): for every tier, the stream's rate is at
  most legacy's plus the tolerance.
- ``max_segment_psi`` (optional, off unless the plan sets it): the largest side-to-side
  population stability index over every segment and as-of (``segment_drift.max_psi``,
  ``compare.drift``) is at most the threshold; above fails; evidence without the figure
  (a comparator older than the drift measure) is inconclusive.
- ``min_time_in_stage``: the rollout has been at its current position that long;
  less (or unknown) is inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Literal

from compare.latency import NOT_MEASURED_REPLAY
from compare.stats import wilson_interval
from rollout.plan import Gates, Plan
from segments.durations import format_duration_ms, readable_duration_ms
from segments.timeutil import TimestampError, parse_rfc3339_ms

Status = Literal["pass", "fail", "inconclusive"]
PASS: Status = "pass"
FAIL: Status = "fail"
INCONCLUSIVE: Status = "inconclusive"
EXIT_CODES: Mapping[Status, int] = {PASS: 0, FAIL: 1, INCONCLUSIVE: 3}
CLOCK_SKEW_MS = 60_000
Number = int | float


@dataclass(frozen=True)
class GateResult:
    """One gate's outcome: ``observed`` and ``threshold`` are the numbers compared (None when absent)."""

    name: str
    status: Status
    observed: Number | str | None
    threshold: Number | str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(results: Iterable[GateResult]) -> Status:
    """Any fail → ``fail``; else any inconclusive → ``inconclusive``; else ``pass`` (also for none)."""
    statuses = {r.status for r in results}
    if FAIL in statuses:
        return FAIL
    return INCONCLUSIVE if INCONCLUSIVE in statuses else PASS


# ---- reading the evidence tolerantly -------------------------------------------------------------


def _get(evidence: Mapping[str, Any], *path: str) -> Any:
    node: Any = evidence
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _count(evidence: Mapping[str, Any], *path: str) -> int | None:
    value = _get(evidence, *path)
    return value if type(value) is int and value >= 0 else None


def _real(evidence: Mapping[str, Any], *path: str) -> float | None:
    value = _get(evidence, *path)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _missing(name: str, what: str, threshold: Number | str | None) -> GateResult:
    return GateResult(name, INCONCLUSIVE, None, threshold, f"the evidence has no usable {what}")


# ---- the gates -----------------------------------------------------------------------------------


def ruleset_gate(plan: Plan, evidence: Mapping[str, Any]) -> GateResult:
    want = f"{plan.ruleset_name}@v{plan.ruleset_version}"
    name, version = _get(evidence, "ruleset", "name"), _get(evidence, "ruleset", "version")
    if not isinstance(name, str) or type(version) is not int:
        return _missing("ruleset", "ruleset name and version", want)
    got = f"{name}@v{version}"
    if got != want:
        return GateResult(
            "ruleset", FAIL, got, want, f"evidence comes from rule set {got}; the plan is for {want}"
        )
    digest = _get(evidence, "ruleset", "digest")
    if plan.ruleset_digest is not None and digest != plan.ruleset_digest:
        return GateResult(
            "ruleset",
            FAIL,
            str(digest),
            plan.ruleset_digest,
            f"{got} in the evidence has another digest than the plan's",
        )
    return GateResult("ruleset", PASS, got, want, f"evidence comes from {got}")


def evidence_age_gate(plan: Plan, evidence: Mapping[str, Any], now_ms: int) -> GateResult:
    limit = format_duration_ms(plan.evidence_max_age_ms)
    text = _get(evidence, "generated_at")
    if not isinstance(text, str):
        return _missing("evidence_age", "generated_at", limit)
    try:
        generated = parse_rfc3339_ms(text)
    except TimestampError:
        return GateResult("evidence_age", INCONCLUSIVE, text, limit, f"generated_at {text!r} is not RFC 3339")
    age = now_ms - generated
    if age < -CLOCK_SKEW_MS:
        return GateResult(
            "evidence_age",
            INCONCLUSIVE,
            text,
            limit,
            f"generated_at {text} is in the future: check the clocks",
        )
    observed = readable_duration_ms(max(age, 0))
    if age > plan.evidence_max_age_ms:
        return GateResult(
            "evidence_age", INCONCLUSIVE, observed, limit, f"stale: generated {observed} ago, over {limit}"
        )
    return GateResult("evidence_age", PASS, observed, limit, f"generated {observed} ago (at most {limit})")


def _minimum_gate(name: str, what: str, observed: int | None, minimum: int) -> GateResult:
    if observed is None:
        return _missing(name, what, minimum)
    if observed >= minimum:
        return GateResult(name, PASS, observed, minimum, f"{observed} {what} (at least {minimum})")
    return GateResult(name, INCONCLUSIVE, observed, minimum, f"only {observed} {what}; {minimum} needed")


def unexplained_gate(evidence: Mapping[str, Any], threshold: float) -> GateResult:
    return cause_rate_gate(evidence, "unexplained", threshold)


def approximate_gate(evidence: Mapping[str, Any], threshold: float) -> GateResult:
    return cause_rate_gate(evidence, "approximate", threshold)


def cause_rate_gate(evidence: Mapping[str, Any], cause: str, threshold: float) -> GateResult:
    """The rate of ``by_cause[cause]`` in ``pairs`` against ``threshold`` (Wilson 95% upper bound to pass)."""
    pairs, count = _count(evidence, "pairs"), _count(evidence, "by_cause", cause)
    if pairs is None or count is None or count > pairs:
        return _missing(cause, f"pairs and by_cause.{cause}", threshold)
    if pairs == 0:
        return GateResult(cause, INCONCLUSIVE, None, threshold, "no compared pairs")
    rate = count / pairs
    upper = wilson_interval(count, pairs)[1]
    numbers = f"{count} {cause} in {pairs} pairs (rate {rate:.6g}, Wilson 95% upper {upper:.6g})"
    if rate >= threshold:
        return GateResult(cause, FAIL, upper, threshold, f"{numbers}: rate at or above {threshold:g}")
    if upper < threshold:
        return GateResult(cause, PASS, upper, threshold, f"{numbers}: upper bound below {threshold:g}")
    return GateResult(cause, INCONCLUSIVE, upper, threshold, f"{numbers}: upper bound not yet below {threshold:g}")


def evidence_seal_gate(evidence: Mapping[str, Any]) -> GateResult:
    """Pass only when ``evidence_seal`` says the seal verified; fail for anything else (fail closed)."""
    seal = _get(evidence, "evidence_seal")
    if not isinstance(seal, Mapping):
        return GateResult("evidence_seal", FAIL, None, "sealed", "the evidence was not verified against its manifest")
    verify = seal.get("verify")
    reason = str(seal.get("reason") or "the seal did not verify")
    if seal.get("status") == PASS:
        return GateResult("evidence_seal", PASS, "sealed", "sealed", reason)
    return GateResult("evidence_seal", FAIL, f"not sealed ({verify})", "sealed", reason)


def freshness_gate(evidence: Mapping[str, Any], bound_ms: int) -> GateResult:
    if _get(evidence, "latency", "stream", "source") == "replay":
        # A replay runs on the arrival clock: it has no processing latency to judge.
        return GateResult(
            "stream_freshness",
            INCONCLUSIVE,
            NOT_MEASURED_REPLAY,
            bound_ms,
            f"stream freshness {NOT_MEASURED_REPLAY}: measure it live (shadow run --live)",
        )
    p99, count = (
        _real(evidence, "latency", "stream", "p99_ms"),
        _count(evidence, "latency", "stream", "count"),
    )
    if p99 is None:
        return _missing("stream_freshness", "latency.stream.p99_ms", bound_ms)
    if count == 0:
        return GateResult("stream_freshness", INCONCLUSIVE, None, bound_ms, "no stream latency samples")
    bound = format_duration_ms(bound_ms)
    if p99 <= bound_ms:
        return GateResult(
            "stream_freshness", PASS, p99, bound_ms, f"stream p99 {readable_duration_ms(p99)} (at most {bound})"
        )
    return GateResult(
        "stream_freshness", FAIL, p99, bound_ms, f"stream p99 {readable_duration_ms(p99)} is over {bound}"
    )


def dead_letter_gate(evidence: Mapping[str, Any], tolerance: float) -> GateResult:
    legacy = [_count(evidence, "dead_letter", "legacy", k) for k in ("rejected", "events")]
    stream = [_count(evidence, "dead_letter", "stream", k) for k in ("rejected", "too_late", "events")]
    if None in legacy or None in stream:
        return _missing("dead_letter", "dead_letter counts for both sides", tolerance)
    legacy_dead, legacy_applied = (int(n or 0) for n in legacy)
    stream_rejected, stream_late, stream_applied = (int(n or 0) for n in stream)
    stream_dead = stream_rejected + stream_late
    if legacy_dead + legacy_applied == 0 or stream_dead + stream_applied == 0:
        return GateResult("dead_letter", INCONCLUSIVE, None, tolerance, "a side received no events")
    legacy_rate = Fraction(legacy_dead, legacy_dead + legacy_applied)
    stream_rate = Fraction(stream_dead, stream_dead + stream_applied)
    excess = stream_rate - legacy_rate
    numbers = (
        f"stream {stream_dead} of {stream_dead + stream_applied} ({float(stream_rate):.4%}) "
        f"vs legacy {legacy_dead} of {legacy_dead + legacy_applied} ({float(legacy_rate):.4%})"
    )
    if excess <= Fraction(str(tolerance)):
        return GateResult("dead_letter", PASS, float(excess), tolerance, f"{numbers}, within +{tolerance:g}")
    return GateResult("dead_letter", FAIL, float(excess), tolerance, f"{numbers}: more than +{tolerance:g}")


def false_positive_gate(evidence: Mapping[str, Any], tolerance: float) -> GateResult | None:
    """None when the evidence is not risk evidence (no ground truth and not the risk rule set)."""
    truth = _get(evidence, "ground_truth")
    if truth is None and _get(evidence, "ruleset", "name") != "risk":
        return None
    legacy, stream = _get(evidence, "ground_truth", "legacy"), _get(evidence, "ground_truth", "stream")
    if not isinstance(legacy, Mapping) or not isinstance(stream, Mapping) or not (legacy or stream):
        return _missing("false_positive_rate", "ground_truth for both sides", tolerance)
    worse: list[str] = []
    unknown: list[str] = []
    notes: list[str] = []
    worst: float | None = None
    for tier in sorted(set(legacy) | set(stream)):
        old = _real(legacy, tier, "false_positive_rate")
        new = _real(stream, tier, "false_positive_rate")
        if old is None and new is None:
            continue
        if old is None or new is None:
            unknown.append(tier)
            continue
        excess = new - old
        worst = excess if worst is None else max(worst, excess)
        notes.append(f"{tier} {new:.4g} vs {old:.4g}")
        if excess > tolerance + 1e-12:
            worse.append(tier)
    summary = "; ".join(notes) or "no tier with data"
    if worse:
        return GateResult(
            "false_positive_rate",
            FAIL,
            worst,
            tolerance,
            f"stream flags more good users in {', '.join(worse)}: {summary}",
        )
    if unknown or worst is None:
        missing = ", ".join(unknown) or "every tier"
        return GateResult(
            "false_positive_rate", INCONCLUSIVE, worst, tolerance, f"no rate on one side for {missing}"
        )
    return GateResult(
        "false_positive_rate", PASS, worst, tolerance, f"stream within +{tolerance:g}: {summary}"
    )


def segment_psi_gate(evidence: Mapping[str, Any], threshold: float) -> GateResult:
    """Pass when ``segment_drift.max_psi`` is at most ``threshold``, fail above, inconclusive without it."""
    observed = _real(evidence, "segment_drift", "max_psi")
    if observed is None or observed < 0:
        return _missing("max_segment_psi", "segment_drift.max_psi", threshold)
    figure = f"largest segment PSI {observed:.4f}{_worst_drift(evidence)}"
    if observed <= threshold:
        return GateResult("max_segment_psi", PASS, observed, threshold, f"{figure} (at most {threshold:g})")
    return GateResult("max_segment_psi", FAIL, observed, threshold, f"{figure} is over {threshold:g}")


def _worst_drift(evidence: Mapping[str, Any]) -> str:
    """`` in SEGMENT`` for the row with the largest PSI, when the rows say; else nothing."""
    rows = _get(evidence, "segment_drift", "per_as_of")
    if not isinstance(rows, list):
        return ""
    scored = [r for r in rows if isinstance(r, Mapping) and isinstance(r.get("psi_sides"), int | float)]
    return f" in {max(scored, key=lambda r: r['psi_sides']).get('segment')}" if scored else ""


def time_in_stage_gate(in_stage_ms: int | None, minimum_ms: int) -> GateResult:
    want = format_duration_ms(minimum_ms)
    if in_stage_ms is None:
        return GateResult(
            "min_time_in_stage", INCONCLUSIVE, None, want, "time in the current stage is unknown"
        )
    have = readable_duration_ms(max(in_stage_ms, 0))
    if in_stage_ms >= minimum_ms:
        return GateResult(
            "min_time_in_stage", PASS, have, want, f"{have} in the current stage (at least {want})"
        )
    return GateResult(
        "min_time_in_stage", INCONCLUSIVE, have, want, f"only {have} in the current stage; {want} needed"
    )


def evaluate(
    plan: Plan,
    gates: Gates,
    evidence: Mapping[str, Any],
    now_ms: int,
    in_stage_ms: int | None = None,
    *,
    time_in_stage: bool = True,
) -> tuple[GateResult, ...]:
    """The seal gate, the plan's rule-set and age gates and every gate of ``gates`` over ``evidence`` at ``now_ms``.

    ``in_stage_ms`` is how long the rollout has been at its current position; with
    ``time_in_stage=False`` the time gate is left out (health checks while in a stage).
    """
    results: list[GateResult | None] = [
        evidence_seal_gate(evidence),
        ruleset_gate(plan, evidence),
        evidence_age_gate(plan, evidence, now_ms),
    ]
    if gates.min_pairs is not None:
        results.append(
            _minimum_gate("min_pairs", "compared pairs", _count(evidence, "pairs"), gates.min_pairs)
        )
    if gates.min_as_of_rounds is not None:
        rounds = _count(evidence, "as_of_rounds")
        results.append(_minimum_gate("min_as_of_rounds", "as-of rounds", rounds, gates.min_as_of_rounds))
    if gates.max_unexplained_rate is not None:
        results.append(unexplained_gate(evidence, gates.max_unexplained_rate))
    if gates.max_approximate_rate is not None:
        results.append(approximate_gate(evidence, gates.max_approximate_rate))
    if gates.max_stream_p99_ms is not None:
        results.append(freshness_gate(evidence, gates.max_stream_p99_ms))
    if gates.dead_letter_tolerance is not None:
        results.append(dead_letter_gate(evidence, gates.dead_letter_tolerance))
    if gates.false_positive_tolerance is not None:
        results.append(false_positive_gate(evidence, gates.false_positive_tolerance))
    if gates.max_segment_psi is not None:
        results.append(segment_psi_gate(evidence, gates.max_segment_psi))
    if time_in_stage and gates.min_time_in_stage_ms is not None:
        results.append(time_in_stage_gate(in_stage_ms, gates.min_time_in_stage_ms))
    return tuple(r for r in results if r is not None)


def failing(results: Sequence[GateResult]) -> tuple[GateResult, ...]:
    """The results that did not pass."""
    return tuple(r for r in results if r.status != PASS)
