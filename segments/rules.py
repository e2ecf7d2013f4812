"""Rule sets: a declarative, versioned format, its validation, and the one pure evaluation.

A rule set declares **aggregates** over a user's events in a trailing window
(count, sum of amounts with a weight per kind, count of distinct merchants; each
may use a shorter window than the rule set's) and **segments**, each a condition
over those aggregates. Segments that share a ``group`` are exclusive: the first in
file order whose condition holds is assigned, the others in the group are not
(the risk tiers). Both segmenters read the same definition: the legacy side
computes the aggregates in SQL and the stream in Python, and both call
``RuleSet.classify`` on them.

Limits (bounded work): every window is at least ``MIN_WINDOW_MS`` (1 s) and at most
``MAX_WINDOW_MS`` (31 days); anything else is a ``RuleSetError`` (exit 2), before
any segmenter starts. A rule set may declare the sane range of event times that
both sides enforce (``segments.events.TimeBounds``; omitted keys keep the defaults):

    event_times:
      earliest: "2020-01-01T00:00:00Z"   # inclusive; default 1970-01-01T00:00:00Z
      latest: "2030-01-01T00:00:00Z"     # exclusive; default 2100-01-01T00:00:00Z
      max_skew: 365d                      # arrival at most this long after event_time; default 1096d
      max_ahead: 1h                       # event_time at most this far ahead of arrival; default 1d

It is part of the definition, so of the digest, and both segmenters read it from
the same rule set: their verdicts cannot differ.

**Own kinds and attribute fields** (a team's data, ``docs/byo.md``). A rule set may declare
``kinds: [...]`` (free-form, at most 16 characters: the only kinds its events may have) and
``attributes: {name: number|string}``; a ``sum`` may then read ``of:`` a number attribute
and a ``count_distinct`` any declared attribute. All sums read one field and all distinct
counts one field (the stream keeps one number and one text per event, legacy one column
each): the rule set's ``TimeBounds`` carry the kinds and those two fields, and every reader
puts the fields in the event's amount and merchant slots, so both segmenters evaluate them
alike. ``check_reads`` names a read field that no accepted event carries.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Protocol

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from segments.durations import format_duration_ms, parse_duration_ms
from segments.errors import InputError, RuleSetError
from segments.events import DEFAULT_TIME_BOUNDS, KINDS, MICROS, TimeBounds
from segments.sketches import CmsParams, cms_params
from segments.timeutil import TimestampError, parse_rfc3339_ms

MIN_WINDOW_MS = 1_000
MAX_WINDOW_MS = 31 * 86_400_000

SHIPPED = ("clickstream", "risk")
Op = Literal[">", ">=", "<", "<=", "==", "!="]
_OPS: dict[str, Callable[[int, int], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


class FactLike(Protocol):
    """What a rule reads of an event: its time, kind, exact amount and merchant."""

    @property
    def event_time(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def amount_micros(self) -> int: ...
    @property
    def merchant(self) -> str | None: ...


class Fact(NamedTuple):
    """The part of an event that rules read; what the stream keeps in per-user state."""

    event_time: int
    kind: str
    amount_micros: int
    merchant: str | None


# ---- the file format (validated once, at the edge) -------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AggregateSpec(_Strict):
    op: Literal["count", "sum", "count_distinct"]
    kinds: list[str] | dict[str, int] = Field(min_length=1)
    of: str | None = None
    window: str | None = None
    # Opt-in approximation (``segments.sketches.CmsParams``): a count from a per-shard Count-Min sketch.
    approx: Literal["cms"] | None = None
    width: int | None = None
    depth: int | None = None
    error: float | None = None
    confidence: float | None = None
    bucket: str | None = None



class CompareSpec(_Strict):
    agg: str
    op: Op
    value: int | float | str

    @field_validator("value", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("a threshold is a number, not true/false")
        return value


class AllSpec(_Strict):
    all: list[ConditionSpec] = Field(min_length=1)


class AnySpec(_Strict):
    any: list[ConditionSpec] = Field(min_length=1)


# Tags appear in pydantic's error locations; they are dropped when naming the bad key.
_CONDITION_TAGS = {"(compare)", "(all)", "(any)"}


def _condition_tag(value: Any) -> str:
    """Which condition form a mapping is, by its keys, so that errors name the key inside that form."""
    if isinstance(value, dict):
        keys = value.keys()
    elif isinstance(value, BaseModel):
        keys = type(value).model_fields.keys()
    else:
        return "(compare)"
    if "all" in keys:
        return "(all)"
    if "any" in keys:
        return "(any)"
    return "(compare)"


ConditionSpec = Annotated[
    Annotated[CompareSpec, Tag("(compare)")] | Annotated[AllSpec, Tag("(all)")] | Annotated[AnySpec, Tag("(any)")],
    Discriminator(_condition_tag),
]


class SegmentSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    when: ConditionSpec
    group: str | None = None
    description: str | None = None


class EventTimesSpec(_Strict):
    earliest: str | None = None
    latest: str | None = None
    max_skew: str | None = None
    max_ahead: str | None = None


# A declared kind fits the events table's kind column (16 characters); an attribute is a plain name.
_KindName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,15}$")]
_AttributeName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


class RuleSetSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    version: int = Field(ge=1)
    description: str | None = None
    window: str
    aggregates: dict[str, AggregateSpec] = Field(min_length=1)
    segments: list[SegmentSpec] = Field(min_length=1)
    event_times: EventTimesSpec | None = None
    kinds: list[_KindName] | None = Field(default=None, min_length=1)
    attributes: dict[_AttributeName, Literal["number", "string"]] | None = None


AllSpec.model_rebuild()
AnySpec.model_rebuild()
SegmentSpec.model_rebuild()
RuleSetSpec.model_rebuild()


# ---- the compiled, frozen form -----------------------------------------------------------------


@dataclass(frozen=True)
class Aggregate:
    """One aggregate: ``op`` over the events of ``weights``' kinds in ``(t - window_ms, t]``."""

    name: str
    op: str
    weights: Mapping[str, int]
    window_ms: int
    of: str | None
    approx: CmsParams | None = None  # evaluated from Count-Min sketches in the stream (``streaming.approx``)

    @property
    def is_money(self) -> bool:
        return self.op == "sum"

    def value(self, facts: Sequence[FactLike], t: int) -> int:
        """The aggregate over ``facts`` (any order) for the window ending at ``t``."""
        low = t - self.window_ms
        weights = self.weights
        if self.op == "count":
            return sum(1 for f in facts if f.kind in weights and low < f.event_time <= t)
        if self.op == "sum":
            return sum(
                f.amount_micros * weights[f.kind] for f in facts if f.kind in weights and low < f.event_time <= t
            )
        return len(
            {
                f.merchant
                for f in facts
                if f.kind in weights and f.merchant is not None and low < f.event_time <= t
            }
        )


@dataclass(frozen=True)
class Compare:
    agg: str
    op: str
    value: int  # micro-units for money aggregates, a plain count otherwise


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Condition, ...]


Condition = Compare | AllOf | AnyOf


def holds(condition: Condition, values: Mapping[str, int]) -> bool:
    """Whether ``condition`` holds for the aggregate ``values``."""
    if isinstance(condition, Compare):
        return _OPS[condition.op](values[condition.agg], condition.value)
    if isinstance(condition, AllOf):
        return all(holds(part, values) for part in condition.parts)
    return any(holds(part, values) for part in condition.parts)


@dataclass(frozen=True)
class Segment:
    name: str
    when: Condition
    group: str | None
    description: str | None


@dataclass(frozen=True)
class RuleSet:
    """A validated, immutable rule set. ``digest`` identifies the exact definition."""

    name: str
    version: int
    description: str | None
    window_ms: int
    aggregates: tuple[Aggregate, ...]
    segments: tuple[Segment, ...]
    definition: Mapping[str, Any] = field(repr=False, compare=False)
    digest: str = field(compare=False)
    time_bounds: TimeBounds = DEFAULT_TIME_BOUNDS

    @property
    def ref(self) -> str:
        """``name@vN``: how outputs and stores name this rule set."""
        return f"{self.name}@v{self.version}"

    @property
    def segment_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments)

    @property
    def widths(self) -> tuple[int, ...]:
        """The distinct window widths the rule set reads, longest first."""
        return tuple(sorted({a.window_ms for a in self.aggregates}, reverse=True))

    @property
    def span_ms(self) -> int:
        """The longest window: an event older than ``t - span_ms`` cannot affect the set at ``t``."""
        return max(a.window_ms for a in self.aggregates)

    @property
    def approximate(self) -> tuple[Aggregate, ...]:
        """The aggregates declared ``approx: cms`` (empty for an exact rule set)."""
        return tuple(a for a in self.aggregates if a.approx is not None)

    @property
    def kinds(self) -> frozenset[str]:
        """The event kinds any aggregate reads; other kinds cannot change a user's segments."""
        return frozenset(k for a in self.aggregates for k in a.weights)

    def aggregate(self, facts: Sequence[FactLike], t: int) -> dict[str, int]:
        """Every aggregate for the windows ending at ``t`` (facts in any order)."""
        return {a.name: a.value(facts, t) for a in self.aggregates}

    def classify(self, values: Mapping[str, int]) -> frozenset[str]:
        """The segments that hold for aggregate ``values``; one per group at most."""
        chosen: list[str] = []
        taken: set[str] = set()
        for segment in self.segments:
            if segment.group is not None and segment.group in taken:
                continue
            if holds(segment.when, values):
                chosen.append(segment.name)
                if segment.group is not None:
                    taken.add(segment.group)
        return frozenset(chosen)

    def segments_at(self, facts: Sequence[FactLike], t: int) -> frozenset[str]:
        """A user's segments at ``t`` given the user's applied events (any order): SPEC §2."""
        return self.classify(self.aggregate(facts, t))

    def segments_at_sorted(self, times: Sequence[int], facts: Sequence[FactLike], t: int) -> frozenset[str]:
        """``segments_at`` for facts sorted by time, with ``times`` their event times; reads only the window."""
        hi = bisect_right(times, t)
        lo = bisect_right(times, t - self.span_ms, 0, hi)
        return self.classify(self.aggregate(facts[lo:hi], t))

    def to_canonical_json(self) -> str:
        return canonical_json(self.definition)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _money_value(raw: int | float | str, where: str) -> int:
    try:
        number = Decimal(str(raw))
    except InvalidOperation:
        raise RuleSetError(f"not a number: {raw!r}", where) from None
    micros = number * MICROS
    if not number.is_finite() or micros != micros.to_integral_value():
        raise RuleSetError(f"money thresholds need at most 6 digits after the point: {raw!r}", where)
    return int(micros)


def _count_value(raw: int | float | str, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise RuleSetError(f"a count is compared with a whole number, not {raw!r}", where)
    return raw


def _compile_condition(spec: ConditionSpec, aggregates: Mapping[str, Aggregate], where: str) -> Condition:
    if isinstance(spec, CompareSpec):
        if spec.agg not in aggregates:
            raise RuleSetError(f"unknown aggregate {spec.agg!r} (declared: {', '.join(aggregates)})", where)
        agg = aggregates[spec.agg]
        convert = _money_value if agg.is_money else _count_value
        return Compare(spec.agg, spec.op, convert(spec.value, where))
    if isinstance(spec, AllSpec):
        return AllOf(tuple(_compile_condition(p, aggregates, f"{where}.all.{i}") for i, p in enumerate(spec.all)))
    return AnyOf(tuple(_compile_condition(p, aggregates, f"{where}.any.{i}") for i, p in enumerate(spec.any)))


def compile_ruleset(raw: Any, source: str = "rule set") -> RuleSet:
    """Validate a decoded rule-set document and compile it; ``RuleSetError`` names the bad key."""
    if not isinstance(raw, dict):
        raise RuleSetError(f"{source}: the document must be a mapping")
    try:
        spec = RuleSetSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"] if part not in _CONDITION_TAGS) or "(top)"
        raise RuleSetError(f"{first['msg']} ({source})", key) from None
    window_ms = _duration(spec.window, "window")
    kinds = tuple(spec.kinds) if spec.kinds is not None else KINDS
    attributes = dict(spec.attributes or {})
    aggregates: dict[str, Aggregate] = {}
    for name, agg in spec.aggregates.items():
        where = f"aggregates.{name}"
        for kind in agg.kinds:
            if kind not in kinds:
                declared = "declared kinds" if spec.kinds is not None else "kinds"
                raise RuleSetError(f"unknown kind {kind!r} ({declared} are {', '.join(kinds)})", f"{where}.kinds")
        width = _duration(agg.window, f"{where}.window") if agg.window else window_ms
        if width > window_ms:
            raise RuleSetError(f"longer than the rule set's window {spec.window}", f"{where}.window")
        _check_of(agg, attributes, where)
        weights = dict.fromkeys(agg.kinds, 1) if isinstance(agg.kinds, list) else dict(agg.kinds)
        if agg.op != "sum" and any(w != 1 for w in weights.values()):
            raise RuleSetError("only sum takes weights per kind", f"{where}.kinds")
        aggregates[name] = Aggregate(name, agg.op, weights, width, agg.of, _approx(agg, where))
    seen: set[str] = set()
    segments: list[Segment] = []
    for index, seg in enumerate(spec.segments):
        if seg.name in seen:
            raise RuleSetError(f"duplicate segment name {seg.name!r}", f"segments.{index}.name")
        seen.add(seg.name)
        when = _compile_condition(seg.when, aggregates, f"segments.{index}.when")
        segments.append(Segment(seg.name, when, seg.group, seg.description))
    definition = spec.model_dump(mode="json", exclude_none=True)
    digest = hashlib.sha256(canonical_json(definition).encode()).hexdigest()
    return RuleSet(
        spec.name,
        spec.version,
        spec.description,
        window_ms,
        tuple(aggregates.values()),
        tuple(segments),
        definition,
        digest,
        _time_bounds(spec.event_times, _reads(spec, aggregates, kinds)),
    )


def _check_of(agg: AggregateSpec, attributes: Mapping[str, str], where: str) -> None:
    """``of`` is what the op reads: ``amount`` or a number attribute for sum, ``merchant`` or any
    declared attribute for count_distinct, nothing for count."""
    if agg.op == "count":
        if agg.of is not None:
            raise RuleSetError("count takes no `of`", f"{where}.of")
        return
    own = ", ".join(f"attribute {n}" for n, t in attributes.items() if agg.op == "count_distinct" or t == "number")
    if agg.op == "sum":
        if agg.of == "amount" or attributes.get(agg.of or "") == "number":
            return
        needs = "`of: amount`" + (f" or a number attribute ({own})" if own else "")
        if agg.of in attributes:
            raise RuleSetError(f"sum needs {needs}: {agg.of} is declared a string", f"{where}.of")
        raise RuleSetError(f"sum needs {needs}", f"{where}.of")
    if agg.of == "merchant" or (agg.of or "") in attributes:
        return
    needs = "`of: merchant`" + (f" or a declared attribute ({own})" if own else "")
    raise RuleSetError(f"count_distinct needs {needs}", f"{where}.of")


def _reads(spec: RuleSetSpec, aggregates: Mapping[str, Aggregate], kinds: tuple[str, ...]) -> dict[str, Any]:
    """What a rule set with its own kinds or attributes reads of each event (``TimeBounds``' fields).

    The stream keeps one number and one text per event in its state (SPEC's amount and
    merchant), and legacy one column each: so all sums read one field and all distinct
    counts one field; ``RuleSetError`` names the aggregate that reads a second.
    """
    if spec.kinds is None and not spec.attributes:
        return {}
    fields: dict[str, tuple[str, str]] = {}
    for agg in aggregates.values():
        if agg.op == "count":
            continue
        slot = "sum" if agg.op == "sum" else "count_distinct"
        first = fields.setdefault(slot, (agg.of or "", agg.name))
        if first[0] != agg.of:
            raise RuleSetError(
                f"every {slot} of a rule set reads one field (the stream keeps one per event): "
                f"{first[1]} reads {first[0]}, {agg.name} reads {agg.of}",
                f"aggregates.{agg.name}.of",
            )
    summed = fields.get("sum", ("amount", ""))[0]
    counted = fields.get("count_distinct", ("merchant", ""))[0]
    sum_kinds = frozenset(k for a in aggregates.values() if a.op == "sum" for k in a.weights)
    return {
        "kinds": frozenset(kinds),
        "needs_amount": sum_kinds if spec.kinds is not None or summed != "amount" else None,
        "amount_field": None if summed == "amount" else summed,
        "merchant_field": None if counted == "merchant" else counted,
    }


def _approx(agg: AggregateSpec, where: str) -> CmsParams | None:
    """The Count-Min shape of an ``approx: cms`` aggregate (only ``op: count`` may be approximate)."""
    shape = (agg.width, agg.depth, agg.error, agg.confidence, agg.bucket)
    if agg.approx is None:
        if any(v is not None for v in shape):
            raise RuleSetError("width/depth/error/confidence/bucket need `approx: cms`", f"{where}.approx")
        return None
    if agg.op != "count":
        raise RuleSetError("only `op: count` may be approximate", f"{where}.approx")
    bucket_ms = _duration(agg.bucket, f"{where}.bucket") if agg.bucket else 60_000
    try:
        return cms_params(agg.width, agg.depth, agg.error, agg.confidence, bucket_ms)
    except ValueError as exc:
        raise RuleSetError(str(exc), f"{where}.approx") from None


def _duration(text: str, key: str) -> int:
    """A window's width; ``RuleSetError`` outside [``MIN_WINDOW_MS``, ``MAX_WINDOW_MS``]."""
    try:
        value = parse_duration_ms(text)
    except Exception as exc:
        raise RuleSetError(str(exc), key) from None
    if value <= 0:
        raise RuleSetError("window must be positive", key)
    if not MIN_WINDOW_MS <= value <= MAX_WINDOW_MS:
        low, high = format_duration_ms(MIN_WINDOW_MS), format_duration_ms(MAX_WINDOW_MS)
        raise RuleSetError(f"window {text} is outside {low}..{high}", key)
    return value


def _time_bounds(spec: EventTimesSpec | None, reads: Mapping[str, Any] | None = None) -> TimeBounds:
    """The rule set's ``event_times`` as ``TimeBounds`` (defaults for what it omits), with what it ``reads``."""
    if spec is None and not reads:
        return DEFAULT_TIME_BOUNDS
    if spec is None:
        return TimeBounds(**{**vars(DEFAULT_TIME_BOUNDS), **(reads or {})})
    values: dict[str, Any] = dict(reads or {})
    for key in ("earliest", "latest"):
        text = getattr(spec, key)
        if text is not None:
            try:
                values[f"{key}_ms"] = parse_rfc3339_ms(text)
            except TimestampError as exc:
                raise RuleSetError(str(exc), f"event_times.{key}") from None
    for key in ("max_skew", "max_ahead"):
        text = getattr(spec, key)
        if text is not None:
            try:
                values[f"{key}_ms"] = parse_duration_ms(text)
            except Exception as exc:
                raise RuleSetError(str(exc), f"event_times.{key}") from None
    try:
        return TimeBounds(**{**vars(DEFAULT_TIME_BOUNDS), **values})
    except ValueError as exc:
        raise RuleSetError(str(exc), "event_times") from None


def attribute_reads(ruleset: RuleSet) -> dict[str, list[str]]:
    """The ``attrs`` fields the rule set's aggregates read, each with the aggregates that read it."""
    declared = ruleset.definition.get("attributes") or {}
    reads: dict[str, list[str]] = {}
    for agg in ruleset.aggregates:
        if agg.of is not None and agg.of in declared:
            reads.setdefault(agg.of, []).append(agg.name)
    return reads


def check_reads(ruleset: RuleSet, events: Iterable[Any], rejected: Iterable[str], source: str) -> None:
    """``InputError`` naming the first attribute the rule set reads that no accepted event carries.

    ``events`` are the accepted events (with ``attrs``), ``rejected`` the rejections' details;
    a field the data lacks throughout is a mapping or export mistake, worth one clear
    line before any segmenter runs rather than an empty output.
    """
    reads = attribute_reads(ruleset)
    if not reads:
        return
    missing = set(reads)
    for event in events:
        attrs = event.attrs
        if attrs:
            missing -= {name for name in missing if attrs.get(name) is not None}
            if not missing:
                return
    name = sorted(missing)[0]
    lacking = sum(1 for detail in rejected if f"attrs.{name}" in detail)
    also = f"; {lacking} events were rejected for lacking it" if lacking else ""
    raise InputError(
        f"rule set {ruleset.ref} reads attrs.{name} ({', '.join(reads[name])}), which no accepted event has{also}",
        source,
    )


def parse_ruleset_text(text: str, source: str) -> RuleSet:
    """Compile YAML or JSON rule-set text; ``RuleSetError`` on bad syntax or content."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleSetError(f"{source}: not valid YAML/JSON: {exc}") from None
    except RecursionError:
        raise RuleSetError(f"{source}: nested too deeply to read") from None
    return compile_ruleset(raw, source)


def shipped_ruleset(name: str) -> RuleSet:
    """One of the rule sets that ship with segshadow (``clickstream``, ``risk``)."""
    if name not in SHIPPED:
        raise RuleSetError(f"unknown rule set {name!r}: shipped sets are {', '.join(SHIPPED)}, or give a file")
    text = resources.files("segments").joinpath("rulesets", f"{name}.yaml").read_text(encoding="utf-8")
    return parse_ruleset_text(text, f"shipped {name}")


def load_ruleset(ref: str) -> RuleSet:
    """Resolve ``ref``: a path to a YAML/JSON file, a shipped name, or ``name@vN`` of a shipped set.

    Stored versions other than the shipped one are resolved by the store
    (``segments.sqlstore``); this function needs no database.
    """
    path = Path(ref)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RuleSetError(f"cannot read {ref}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise RuleSetError(f"cannot read {ref}: not UTF-8 text (byte {exc.start})") from None
        return parse_ruleset_text(text, ref)
    name, _, version = ref.partition("@")
    ruleset = shipped_ruleset(name)
    if version and version.lstrip("v") != str(ruleset.version):
        raise RuleSetError(f"{name} ships as version {ruleset.version}; {ref} is not stored here")
    return ruleset
