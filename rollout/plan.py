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
    steps:                                     # in order, after shadow
      - {stage: canary, percent: 1}
      - {stage: canary, percent: 5, gates: {min_pairs: 5000}}
      - {stage: live}
      - {stage: rampdown}
      - {stage: complete}

A step's ``gates`` override the plan's for the promotion **into** that step (a key
set to ``null`` switches that gate off). Steps are one or more canary percentages,
strictly growing, then ``live``, ``rampdown`` and ``complete``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rollout.stages import Position, Stage
from segments.durations import parse_duration_ms
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
    )


def _error_key(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _message(text: str) -> str:
    return text.removeprefix("Value error, ")


def compile_plan(raw: Any, source: str = "plan") -> Plan:
    """Validate ``raw`` (parsed YAML) and compile it; ``PlanError`` names the first bad key."""
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
    )


def parse_plan_text(text: str, source: str) -> Plan:
    """Compile YAML plan text; ``PlanError`` for bad syntax or content."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(source, f"not valid YAML: {exc}") from None
    return compile_plan(raw, source)


def shipped_plan_text(name: str) -> str:
    """The text of a plan that ships with segshadow (``default``: clickstream; ``risk``)."""
    filename = SHIPPED[name]
    try:
        return resources.files("rollout").joinpath(filename).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        # Not installed as package data (an editable checkout): read it beside this module.
        return (Path(__file__).resolve().parent / filename).read_text(encoding="utf-8")


def load_plan(ref: str | Path | None = None) -> Plan:
    """Resolve ``ref``: None or ``default`` (clickstream), ``risk``, or a path to a YAML plan."""
    name = "default" if ref is None else str(ref)
    if name in SHIPPED and not Path(name).exists():
        return parse_plan_text(shipped_plan_text(name), f"shipped {name}")
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(name, f"cannot read: {exc.strerror}") from None
    return parse_plan_text(text, name)
