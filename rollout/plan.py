"""Rollout plans: the steps from shadow to complete and the gates each promotion needs.

A plan is YAML, validated once with pydantic (unknown keys are errors, and every
error names the key path), then compiled to frozen values. The shape::

    name: clickstream-default
    ruleset: {name: clickstream, version: 1}   # evidence must come from this rule set
    evidence_max_age: 1h                       # older evidence is inconclusive
    gates:                                     # defaults for every promotion
      min_pairs: 1000
      min_as_of_rounds: 3
      max_unexplained_rate: 0.001              # its Wilson 95% upper bound must be below this
      max_stream_p99: 50ms                     # stream freshness p99, at most
      dead_letter_tolerance: 0.01              # stream rate <= legacy rate + this
      false_positive_tolerance: 0.0            # risk: stream FPR per tier <= legacy's + this
      min_time_in_stage: 10m
      max_segment_psi: 0.1                     # optional, off by default: segment drift between the sides
    steps:                                     # in order, after shadow
      - {stage: canary, percent: 1}
      - {stage: canary, percent: 5, gates: {min_pairs: 5000}}
      - {stage: live}
      - {stage: rampdown}
      - {stage: complete}

A step's ``gates`` override the plan's for the promotion **into** that step (a key
set to ``null`` switches that gate off). Steps are one or more canary percentages,
strictly growing, then ``live``, ``rampdown`` and ``complete``.

Identity is the digest, never the name: ``Plan.digest`` is the SHA-256 of the plan's
text (for a plan compiled from a mapping, of its canonical JSON). ``default`` and
``risk`` always mean the shipped files (a local file of that name is ``./default``),
and a plan that takes a shipped plan's ``name`` without being that plan byte for
byte is refused (``PlanError`` on ``name``), so a lax copy cannot pass as the
default. ``weakenings`` lists what a plan relaxes against the plan before it (every
gate, the evidence age, a dropped step, an unpinned rule-set digest) and against the
shipped plan of its rule set (unexplained rate, minimum pairs, evidence age); a
non-empty list is what the cutover records as "weakened".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rollout.stages import Position, Stage
from segments.durations import format_duration_ms, parse_duration_ms
from segments.errors import SegshadowError

SHIPPED = {"default": "default_plan.yaml", "risk": "risk_plan.yaml"}


class PlanError(SegshadowError):
    """A rollout plan that cannot be read or does not validate; ``key`` names the offending key path."""

    def __init__(self, source: str, message: str, key: str | None = None) -> None:
        super().__init__(f"plan {source}: {key}: {message}" if key else f"plan {source}: {message}")
        self.key = key


# ---- the file format -----------------------------------------------------------------------------


def _duration(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("a duration is text such as 500ms, 30s, 10m, 1h")
    try:
        parse_duration_ms(value)
    except SegshadowError as exc:
        raise ValueError(str(exc)) from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatesSpec(_Strict):
    min_pairs: int | None = Field(default=1000, ge=0)
    min_as_of_rounds: int | None = Field(default=3, ge=0)
    max_unexplained_rate: float | None = Field(default=0.001, gt=0, le=1)
    max_stream_p99: str | None = "50ms"
    dead_letter_tolerance: float | None = Field(default=0.01, ge=0, le=1)
    false_positive_tolerance: float | None = Field(default=0.0, ge=0, le=1)
    max_approximate_rate: float | None = Field(default=None, gt=0, le=1)  # Count-Min mismatches; off by default
    min_time_in_stage: str | None = "10m"
    max_segment_psi: float | None = Field(default=None, ge=0)

    _durations = field_validator("max_stream_p99", "min_time_in_stage", mode="before")(_duration)


class RuleSetRefSpec(_Strict):
    name: str = Field(min_length=1)
    version: int = Field(ge=1)
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class StepSpec(_Strict):
    stage: Stage
    percent: float | None = None
    gates: GatesSpec | None = None

    @model_validator(mode="after")
    def _percent_fits_stage(self) -> StepSpec:
        if self.stage is Stage.CANARY:
            if self.percent is None or not 0 < self.percent < 100:
                raise ValueError("a canary step needs a percent above 0 and below 100")
        elif self.percent is not None:
            raise ValueError(f"percent is only for canary steps, not {self.stage}")
        return self


class PlanSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str | None = None
    ruleset: RuleSetRefSpec
    evidence_max_age: str = "1h"
    gates: GatesSpec = GatesSpec()
    steps: list[StepSpec] = Field(min_length=1)

    _age = field_validator("evidence_max_age", mode="before")(_duration)

    @field_validator("steps")
    @classmethod
    def _steps_in_order(cls, steps: list[StepSpec]) -> list[StepSpec]:
        stages = [s.stage for s in steps]
        canaries = [s.percent or 0.0 for s in steps if s.stage is Stage.CANARY]
        expected = [Stage.CANARY] * len(canaries) + [Stage.LIVE, Stage.RAMPDOWN, Stage.COMPLETE]
        if not canaries or stages != expected:
            raise ValueError(
                "steps must be one or more canary steps, then live, rampdown and complete, in that order "
                f"(got {', '.join(stages)})"
            )
        if any(b <= a for a, b in pairwise(canaries)):
            raise ValueError(
                f"canary percentages must strictly grow (got {', '.join(f'{p:g}' for p in canaries)})"
            )
        return steps


# ---- the compiled, frozen form -------------------------------------------------------------------


@dataclass(frozen=True)
class Gates:
    """The thresholds one promotion needs; ``None`` switches a gate off. Durations in ms."""

    min_pairs: int | None
    min_as_of_rounds: int | None
    max_unexplained_rate: float | None
    max_stream_p99_ms: int | None
    dead_letter_tolerance: float | None
    false_positive_tolerance: float | None
    min_time_in_stage_ms: int | None
    max_approximate_rate: float | None = None
    max_segment_psi: float | None = None


@dataclass(frozen=True)
class Step:
    """A position the plan walks through, and the gates to enter it."""

    position: Position
    gates: Gates


@dataclass(frozen=True)
class Plan:
    """A validated plan. ``ruleset_digest`` is None when the plan pins name and version only."""

    name: str
    description: str | None
    ruleset_name: str
    ruleset_version: int
    ruleset_digest: str | None
    evidence_max_age_ms: int
    gates: Gates
    steps: tuple[Step, ...]
    source: str
    text: str = field(repr=False, compare=False)
    digest: str

    @property
    def label(self) -> str:
        """The plan as people should see it: name and short digest, and "shipped" only by digest."""
        shipped = shipped_name(self)
        return f"{self.name} sha256:{self.digest[:12]}" + (f" (shipped {shipped})" if shipped else "")

    def next_step(self, current: Position) -> Step | None:
        """The first step after ``current`` (from shadow: the first canary); else None."""
        if current.key < Position.at(Stage.SHADOW).key:
            return None
        for step in self.steps:
            if step.position.key > current.key:
                return step
        return None

    def gates_for(self, target: Position) -> Gates:
        """The gates to enter ``target``: its step's when the plan has that step, else the plan's."""
        for step in self.steps:
            if step.position == target:
                return step.gates
        return self.gates

    def gates_for_move(self, current: Position, target: Position) -> Gates:
        """The gates a move from ``current`` to ``target`` must pass: every step it enters or skips.

        For the plan's next step that is that step's gates. A move that skips steps,
        or lands between two (off plan), must meet the strictest value of each gate
        over every step after ``current`` up to the first step at or beyond ``target``.
        """
        upto: list[Gates] = []
        for step in self.steps:
            if step.position.key <= current.key:
                continue
            upto.append(step.gates)
            if step.position.key >= target.key:
                break
        if not upto:
            return self.gates_for(target)
        merged = upto[0]
        for gates in upto[1:]:
            merged = strictest(merged, gates)
        return merged


def _lower(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _higher(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def strictest(a: Gates, b: Gates) -> Gates:
    """Each gate at its stricter value of ``a`` and ``b`` (a gate on in either stays on)."""
    return Gates(
        _higher(a.min_pairs, b.min_pairs),
        _higher(a.min_as_of_rounds, b.min_as_of_rounds),
        _lower(a.max_unexplained_rate, b.max_unexplained_rate),
        None if a.max_stream_p99_ms is None and b.max_stream_p99_ms is None
        else int(_lower(a.max_stream_p99_ms, b.max_stream_p99_ms) or 0),
        _lower(a.dead_letter_tolerance, b.dead_letter_tolerance),
        _lower(a.false_positive_tolerance, b.false_positive_tolerance),
        _higher(a.min_time_in_stage_ms, b.min_time_in_stage_ms),
        max_approximate_rate=_lower(a.max_approximate_rate, b.max_approximate_rate),
        max_segment_psi=_lower(a.max_segment_psi, b.max_segment_psi),
    )


def _compile_gates(spec: GatesSpec, base: GatesSpec | None = None) -> Gates:
    if base is not None:
        spec = base.model_copy(update={k: getattr(spec, k) for k in spec.model_fields_set})

    def ms(text: str | None) -> int | None:
        return None if text is None else parse_duration_ms(text)

    return Gates(
        spec.min_pairs,
        spec.min_as_of_rounds,
        spec.max_unexplained_rate,
        ms(spec.max_stream_p99),
        spec.dead_letter_tolerance,
        spec.false_positive_tolerance,
        ms(spec.min_time_in_stage),
        max_approximate_rate=spec.max_approximate_rate,
        max_segment_psi=spec.max_segment_psi,
    )


def _error_key(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _message(text: str) -> str:
    return text.removeprefix("Value error, ")


def text_digest(text: str) -> str:
    """The SHA-256 (hex) of a plan's text, as UTF-8: the plan's identity."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def compile_plan(raw: Any, source: str = "plan", text: str | None = None) -> Plan:
    """Validate ``raw`` (parsed YAML) and compile it; ``PlanError`` names the first bad key.

    ``text`` is the text ``raw`` was parsed from (its digest is the plan's identity);
    without it the plan's text is the canonical JSON of ``raw``.
    """
    if not isinstance(raw, dict):
        raise PlanError(source, "not a mapping of plan keys (name, ruleset, gates, steps, ...)")
    try:
        spec = PlanSpec.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first, others = errors[0], [f"{_error_key(e['loc'])}: {_message(e['msg'])}" for e in errors[1:3]]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        message = "; ".join([_message(first["msg"]), *others]) + more
        raise PlanError(source, message, _error_key(first["loc"])) from None
    if text is None:
        text = json.dumps(raw, sort_keys=True, ensure_ascii=False, default=str)
    steps = tuple(
        Step(
            Position.at(s.stage, s.percent),
            _compile_gates(s.gates, spec.gates) if s.gates is not None else _compile_gates(spec.gates),
        )
        for s in spec.steps
    )
    return Plan(
        spec.name,
        spec.description,
        spec.ruleset.name,
        spec.ruleset.version,
        spec.ruleset.digest,
        parse_duration_ms(spec.evidence_max_age),
        _compile_gates(spec.gates),
        steps,
        source,
        text,
        text_digest(text),
    )


def parse_plan_text(text: str, source: str) -> Plan:
    """Compile YAML plan text; ``PlanError`` for bad syntax or content, or a shipped plan's name on another plan."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise PlanError(source, f"not valid YAML{where}: {first}") from None
    except RecursionError:
        raise PlanError(source, "nested too deeply to read") from None
    plan = compile_plan(raw, source, text)
    claimed = _shipped_digests().get(plan.name)
    if claimed is not None and claimed != plan.digest:
        raise PlanError(
            source,
            f"{plan.name!r} is the name of a shipped plan, but this is another plan (sha256:{plan.digest[:12]}): "
            "give your plan a name of its own",
            "name",
        )
    return plan


def shipped_plan_text(name: str) -> str:
    """The text of a plan that ships with segshadow (``default``: clickstream; ``risk``)."""
    filename = SHIPPED[name]
    try:
        return resources.files("rollout").joinpath(filename).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        # Not installed as package data (an editable checkout): read it beside this module.
        return (Path(__file__).resolve().parent / filename).read_text(encoding="utf-8")


@cache
def _shipped() -> tuple[tuple[str, str, str], ...]:
    """Each shipped plan: its key (``default``, ``risk``), the name it declares, the digest of its text."""
    found = []
    for key in SHIPPED:
        text = shipped_plan_text(key)
        found.append((key, str(yaml.safe_load(text)["name"]), text_digest(text)))
    return tuple(found)


def _shipped_digests() -> dict[str, str]:
    return {name: digest for _, name, digest in _shipped()}


def shipped_name(plan: Plan) -> str | None:
    """``default`` or ``risk`` when ``plan`` is that shipped plan byte for byte (by digest), else None."""
    return next((key for key, _, digest in _shipped() if digest == plan.digest), None)


def baseline_for(plan: Plan) -> Plan:
    """The shipped plan a plan is held to: the one for its rule set, else ``default``."""
    for key in SHIPPED:
        shipped = load_plan(key)
        if shipped.ruleset_name == plan.ruleset_name:
            return shipped
    return load_plan("default")


def _describe(value: float | int | None, unit: str = "") -> str:
    if value is None:
        return "off"
    if unit == " ms":
        return format_duration_ms(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


# (field, its key in the plan file, "min" when a lower value is weaker or "max" when a higher one is)
_GATE_DIRECTIONS: tuple[tuple[str, str, str], ...] = (
    ("min_pairs", "min_pairs", "min"),
    ("min_as_of_rounds", "min_as_of_rounds", "min"),
    ("max_unexplained_rate", "max_unexplained_rate", "max"),
    ("max_stream_p99_ms", "max_stream_p99", "max"),
    ("dead_letter_tolerance", "dead_letter_tolerance", "max"),
    ("false_positive_tolerance", "false_positive_tolerance", "max"),
    ("min_time_in_stage_ms", "min_time_in_stage", "min"),
    ("max_segment_psi", "max_segment_psi", "max"),
)
REQUIRED_BY_DEFAULT = ("max_unexplained_rate", "min_pairs")
"""The gates (besides the evidence age) no plan may relax below the shipped plan without saying why."""


def _weaker(direction: str, new: float | int | None, old: float | int | None) -> bool:
    if old is None:
        return False
    if new is None:
        return True
    return new < old if direction == "min" else new > old


def _compare(new: Plan, old: Plan, gates: tuple[str, ...] | None, against: str) -> list[str]:
    found: list[str] = []
    if new.evidence_max_age_ms > old.evidence_max_age_ms:
        found.append(
            f"evidence_max_age {format_duration_ms(new.evidence_max_age_ms)} "
            f"({against} {format_duration_ms(old.evidence_max_age_ms)})"
        )
    positions = sorted({s.position for s in (*new.steps, *old.steps)}, key=lambda p: p.key)
    for field_name, key, direction in _GATE_DIRECTIONS:
        if gates is not None and field_name not in gates:
            continue
        unit = " ms" if field_name.endswith("_ms") else ""
        grouped: dict[tuple[str, str], list[str]] = {}
        for position in positions:
            a, b = getattr(new.gates_for(position), field_name), getattr(old.gates_for(position), field_name)
            if _weaker(direction, a, b):
                grouped.setdefault((_describe(a, unit), _describe(b, unit)), []).append(str(position))
        for (a_text, b_text), where in grouped.items():
            at = "every step" if len(where) == len(positions) else ", ".join(where)
            found.append(f"{key} {a_text} ({against} {b_text}) to enter {at}")
    if gates is None:
        kept = {s.position for s in new.steps}
        found.extend(f"step {s.position} dropped" for s in old.steps if s.position not in kept)
        if old.ruleset_digest is not None and new.ruleset_digest is None:
            found.append("rule-set digest no longer pinned")
    return found


def weakenings(new: Plan, previous: Plan | None) -> tuple[str, ...]:
    """What ``new`` relaxes: against ``previous`` (every gate, the evidence age, steps, the
    rule-set digest) and against the shipped plan of its rule set (unexplained rate, minimum
    pairs, evidence age). Empty when it relaxes nothing."""
    found: list[str] = []
    if previous is not None:
        found += _compare(new, previous, None, "was")
    baseline = baseline_for(new)
    found += _compare(new, baseline, REQUIRED_BY_DEFAULT, f"shipped {shipped_name(baseline)} has")
    return tuple(dict.fromkeys(found))


def load_plan(ref: str | Path | None = None) -> Plan:
    """Resolve ``ref``: None or ``default`` (clickstream), ``risk`` (always the shipped files), or a path."""
    name = "default" if ref is None else str(ref)
    if name in SHIPPED:
        return parse_plan_text(shipped_plan_text(name), f"shipped {name}")
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(name, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise PlanError(name, f"cannot read: not UTF-8 text (byte {exc.start})") from None
    return parse_plan_text(text, name)
