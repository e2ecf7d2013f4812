"""Layer-by-layer triage of a shadow run: ingest, logic, state, sink, in that order.

Each layer is a pure function over plain values read from the run's evidence
(``compare.doctor_evidence`` reads them) and returns a ``LayerVerdict``: ``ok``,
``suspect``, ``failing``, or ``thin`` (the evidence cannot say: fail closed,
never ok). ``diagnose`` walks the layers in order and names the **first failing
layer**; the command's exit code is 1 when a layer fails, else 3 when a layer is
thin, else 0 (suspect layers are shown, not fatal).

Rules, each with the figure behind it:

- **ingest** (the data coming in), against a profile learned from the rule set's
  needs (``event_id``, ``user_id``, ``event_time``, ``kind`` for every line;
  ``amount`` for the kinds a ``sum`` reads; ``attrs.merchant`` for the kinds a
  ``count_distinct`` reads): failing when a read field is missing, null or
  retyped in more than ``FIELD_FAILING`` of the lines of a kind that needs it (in
  either half of the arrivals); when more than ``DEAD_FAILING`` of all lines, or
  ``DEAD_BUCKET_FAILING`` of a tenth of them, are dead letters; when the
  duplicate rate passes ``DUP_FAILING``; or when an arrival gap of at least
  ``GAP_MIN_MS`` is one a Poisson stream at the observed rate would show with an
  expected count below ``GAP_EXPECTED`` (between the 1st and 99th percentile of
  the arrivals: the sparse tails are not the steady rate). New top-level fields, a duplicate rate
  over ``DUP_SUSPECT`` and a lateness shift between the halves are suspect.
  Kinds no rule reads are listed (they cannot change a segment).
- **logic**: the two sides' rule sets (name, version, digest, from the output
  sidecars) and, when the run has a store (its ``segshadow.db`` or
  ``--database-url``), their history over the compared period: the rule set each
  legacy as-of run used, the rule sets the stream's transitions were written under
  (effective times in the period), and versions the store registered while the
  legacy runs ran. A change within the period fails first, with the diff of each
  change and the share of the mismatched pairs it accounts for (re-evaluated with
  the legacy definition in force at their as-of, only where the two sides' then
  differed). Different sidecar digests fail, with a readable diff of the definitions and
  the share of the mismatched pairs the change accounts for (each re-evaluated
  with the legacy definition over the events the stream applied: accounted for
  when that gives the legacy set). Same digests: failing when the comparison found
  unexplained mismatches. Thin when a definition or the comparison is missing.
- **state**: the stream's admission replayed over the event log (the watermark
  is the largest event time applied so far minus the max out-of-orderness, so an
  event's distance behind it does not depend on the allowed lateness): watermark
  lag and too-late share over time; failing when more than ``TOO_LATE_FAILING``
  of the accepted events were dropped as too late, or when the stream's own
  too-late count differs from the replayed one; suspect over
  ``TOO_LATE_SUSPECT``. The **premature window closure** table: for candidate
  allowed lateness values, how many events would be dropped (exact, for the same
  log) and the extra state (facts held: the applied event rate times the extra
  lateness, as the state keeps ``span + allowed lateness`` of event time).
- **sink**: the Redis sink's time per bundle and per write (quantiles from the
  replay's histogram, ``streaming.sinkstats``: a bundle's Redis time shared over
  its pipelined writes), its retries and failures, and the dual-write journal:
  failing when a bundle spent more than ``SINK_BUNDLE_FAILING_MS`` in Redis and a
  write more than ``SINK_WRITE_FAILING_MS`` on average, when any write was
  retried or any bundle failed, when the time per write grew from the run's
  first third to its last past ``SINK_WRITE_FAILING_MS``, or when the journal
  still holds events; thin when the run
  recorded no sink timing (consumer lag is not measured by a replay run).

**Live** (``--live``: ``LiveHealth``, what ``stream live`` publishes once a second,
``streaming.health``) is merged into the state and sink layers by ``live_state``
and ``live_sink``; the worse verdict wins (a live verdict replaces ``thin``), and
the layer's figures gain ``live``. A series *grows* over the period when the
median of its last third exceeds that of its first third by half, and its
latest value is over the threshold:

- state: failing when the source has not published for ``LIVE_STALE_MS`` (the
  pipeline is down or stalled), or when the watermark lag grew past
  ``WATERMARK_LAG_FAILING_MS`` while the consumer lag did not (the events' own
  times stall; with a growing backlog the lag is the sink's, below); suspect when
  the watermark lag is over it; state size per shard is shown;
- sink: failing when the consumer lag grew past ``CONSUMER_LAG_FAILING`` entries
  (the stream falls behind its log), when the sink's bundle time p99 passed
  ``SINK_BUNDLE_FAILING_MS`` in the period, when its retries or failures grew,
  or when its time per write (p99 of each second) grew past
  ``SINK_WRITE_FAILING_MS``; suspect when entries are pending.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, NamedTuple

from segments.durations import format_duration_ms
from segments.events import Event
from segments.lateness import GateParams
from segments.outputs import Assignment, Timeline, Transition
from segments.rules import RuleSet
from segments.timeutil import format_ms

LAYERS = ("ingest", "logic", "state", "sink")
VERDICTS = ("ok", "suspect", "failing", "thin")
FIELD_FAILING = 0.02
DEAD_FAILING = 0.02
DEAD_BUCKET_FAILING = 0.10
DUP_SUSPECT = 0.05
DUP_FAILING = 0.20
NEW_FIELD_SUSPECT = 0.01
GAP_MIN_MS = 60_000
GAP_EXPECTED = 0.001
TOO_LATE_SUSPECT = 0.0075
TOO_LATE_FAILING = 0.015
SINK_BUNDLE_FAILING_MS = 250
SINK_WRITE_FAILING_MS = 1.0
BUCKETS = 10
LIVE_STALE_MS = 10_000
WATERMARK_LAG_FAILING_MS = 60_000
CONSUMER_LAG_FAILING = 1_000
SPEC_FIELDS = frozenset({"event_id", "user_id", "event_time", "kind", "amount", "arrival_time", "attrs"})
CANDIDATE_LATENESS_MS = (5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000)
SUGGEST_SHARES = (0.005, 0.001)  # the dropped shares the two suggested values bring the run under


@dataclass(frozen=True)
class LayerVerdict:
    """One layer's verdict, the figures behind it, what shows it, and what to do next."""

    layer: str
    verdict: str
    summary: str
    figures: Mapping[str, Any] = field(default_factory=dict)
    findings: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    next_step: str = ""

    def __post_init__(self) -> None:
        if self.layer not in LAYERS or self.verdict not in VERDICTS:
            raise ValueError(f"bad layer verdict {self.layer}/{self.verdict}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "verdict": self.verdict,
            "summary": self.summary,
            "figures": dict(self.figures),
            "findings": list(self.findings),
            "examples": list(self.examples),
            "next_step": self.next_step,
        }


@dataclass(frozen=True)
class Diagnosis:
    """The four layers in order, the first failing one, and the exit code the command ends with."""

    layers: tuple[LayerVerdict, ...]
    drift: tuple[Mapping[str, Any], ...] = ()
    drift_source: str = ""

    @property
    def first_failing(self) -> str | None:
        return next((v.layer for v in self.layers if v.verdict == "failing"), None)

    @property
    def exit_code(self) -> int:
        if self.first_failing is not None:
            return 1
        return 3 if any(v.verdict == "thin" for v in self.layers) else 0

    @property
    def headline(self) -> str:
        first = self.first_failing
        if first is not None:
            layer = next(v for v in self.layers if v.layer == first)
            return f"doctor: the {first} layer fails: {layer.summary}; next: {layer.next_step}"
        thin = [v.layer for v in self.layers if v.verdict == "thin"]
        if thin:
            return f"doctor: inconclusive, too little evidence for {', '.join(thin)}"
        suspect = [v.layer for v in self.layers if v.verdict == "suspect"]
        return "doctor: every layer ok" + (f" (suspect: {', '.join(suspect)})" if suspect else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "first_failing": self.first_failing,
            "exit_code": self.exit_code,
            "headline": self.headline,
            "layers": [v.to_dict() for v in self.layers],
            "drift": [dict(r) for r in self.drift],
            "drift_max_psi": max((float(r["psi_sides"]) for r in self.drift), default=0.0),
            "drift_source": self.drift_source,
        }


def diagnose(
    layers: Sequence[LayerVerdict], drift: Sequence[Mapping[str, Any]] = (), *, drift_source: str = ""
) -> Diagnosis:
    """The diagnosis of the four layers (``ValueError`` unless given in ``LAYERS`` order); ``drift`` is
    ``segment_drift.per_as_of`` (``compare.drift``), ``drift_source`` where it was read."""
    if tuple(v.layer for v in layers) != LAYERS:
        raise ValueError(f"layers must be {', '.join(LAYERS)} in that order")
    return Diagnosis(tuple(layers), tuple(drift), drift_source)


def _quantile(sorted_values: Sequence[int], q: float) -> int | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def _buckets(positions: Iterable[float]) -> list[int]:
    counts = [0] * BUCKETS
    for p in positions:
        counts[min(BUCKETS - 1, max(0, int(p * BUCKETS)))] += 1
    return counts


# ---- ingest --------------------------------------------------------------------------------------


class LineObs(NamedTuple):
    """One input line as ingest saw it: where it came (0..1 of the arrivals), its object, its rejection."""

    position: float
    obj: Mapping[str, Any] | None
    reason: str | None
    text: str


def read_fields(ruleset: RuleSet) -> dict[str, frozenset[str] | None]:
    """The profile learned from the rule set: each field read, and the kinds that need it (None: every kind)."""
    money = frozenset(k for a in ruleset.aggregates if a.op == "sum" for k in a.weights)
    merchant = frozenset(k for a in ruleset.aggregates if a.op == "count_distinct" for k in a.weights)
    profile: dict[str, frozenset[str] | None] = dict.fromkeys(("event_id", "user_id", "event_time", "kind"))
    if money:
        profile["amount"] = money
    if merchant:
        profile["attrs.merchant"] = merchant
    return profile


_TYPES: dict[str, tuple[type, ...]] = {
    "event_id": (str,),
    "user_id": (str,),
    "event_time": (int, str),
    "kind": (str,),
    "amount": (int, float, str),
    "attrs.merchant": (str,),
}


def _field(obj: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    if name == "attrs.merchant":
        attrs = obj.get("attrs")
        if not isinstance(attrs, Mapping) or "merchant" not in attrs:
            return False, None
        return True, attrs["merchant"]
    return (name in obj), obj.get(name)


def schema_drift(lines: Sequence[LineObs], ruleset: RuleSet) -> tuple[list[dict[str, Any]], dict[str, int], list[str]]:
    """Per read field and half of the arrivals: lines needing it, missing, null, retyped; new fields; examples."""
    profile = read_fields(ruleset)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    new_fields: dict[str, int] = {}
    examples: list[str] = []
    for line in lines:
        obj = line.obj
        if obj is None:
            continue
        half = 0 if line.position < 0.5 else 1
        kind = obj.get("kind")
        for name in obj:
            if name not in SPEC_FIELDS:
                new_fields[name] = new_fields.get(name, 0) + 1
        for name, kinds in profile.items():
            if kinds is not None and kind not in kinds:
                continue
            row = rows.setdefault((name, half), {"field": name, "half": half + 1, "lines": 0, "missing": 0,
                                                  "null": 0, "retyped": 0})
            row["lines"] += 1
            present, value = _field(obj, name)
            bad = None
            if not present:
                bad = "missing"
            elif value is None:
                bad = "null"
            elif isinstance(value, bool) or not isinstance(value, _TYPES[name]):
                bad = "retyped"
            if bad is not None:
                row[bad] += 1
                if len(examples) < 3:
                    examples.append(f"{bad} {name}: {line.text[:160]}")
    out = []
    for row in sorted(rows.values(), key=lambda r: (r["field"], r["half"])):
        row["bad_share"] = round((row["missing"] + row["null"] + row["retyped"]) / row["lines"], 6)
        out.append(row)
    return out, new_fields, examples


def ingest_layer(lines: Sequence[LineObs], events: Sequence[Event], duplicates: int, ruleset: RuleSet) -> LayerVerdict:
    """The ingest verdict (see the module doc). ``events``: accepted first arrivals in arrival order."""
    if not lines or not events:
        return LayerVerdict("ingest", "thin", "no input lines or no accepted events in the evidence",
                            next_step="run the shadow run again; its events.jsonl is missing or empty")
    failing: list[str] = []
    suspect: list[str] = []
    fields, new_fields, examples = schema_drift(lines, ruleset)
    for row in fields:
        if row["bad_share"] > FIELD_FAILING and row["lines"] >= 20:
            failing.append(
                f"schema drift: {row['field']} missing/null/retyped in {row['bad_share']:.1%} of the lines "
                f"that need it (half {row['half']}: {row['missing']} missing, {row['null']} null, "
                f"{row['retyped']} retyped of {row['lines']})"
            )
    total = len(lines)
    for name, count in sorted(new_fields.items()):
        if count / total > NEW_FIELD_SUSPECT:
            suspect.append(f"new field {name!r} on {count} lines ({count / total:.1%}): no rule reads it")
    kinds_seen: dict[str, int] = {}
    for e in events:
        kinds_seen[e.kind] = kinds_seen.get(e.kind, 0) + 1
    unread = {k: n for k, n in sorted(kinds_seen.items()) if k not in ruleset.kinds}

    rejected = [line for line in lines if line.reason is not None]
    by_reason: dict[str, list[int]] = {}
    for line in rejected:
        by_reason.setdefault(line.reason or "", [0] * BUCKETS)
        by_reason[line.reason or ""][min(BUCKETS - 1, int(line.position * BUCKETS))] += 1
    per_bucket = _buckets(line.position for line in lines)
    dead_share = len(rejected) / total
    if dead_share > DEAD_FAILING:
        failing.append(f"dead letters: {len(rejected)} of {total} lines ({dead_share:.1%}) rejected")
    for b in range(BUCKETS):
        in_bucket = sum(counts[b] for counts in by_reason.values())
        if per_bucket[b] >= 20 and in_bucket / per_bucket[b] > DEAD_BUCKET_FAILING:
            failing.append(
                f"dead letters: {in_bucket} of {per_bucket[b]} lines ({in_bucket / per_bucket[b]:.0%}) "
                f"rejected in tenth {b + 1} of the arrivals"
            )
            break
    examples += [f"rejected {line.reason}: {line.text[:160]}" for line in rejected[:2]]

    dup_rate = duplicates / (len(events) + duplicates)
    if dup_rate > DUP_FAILING:
        failing.append(f"duplicates: {dup_rate:.1%} of deliveries")
    elif dup_rate > DUP_SUSPECT:
        suspect.append(f"duplicates: {dup_rate:.1%} of deliveries")

    # The sparse tails (a run's first arrivals, the stragglers after its end) are not its steady rate.
    ordered = sorted(e.arrival_time for e in events)
    arrivals = ordered[len(ordered) // 100 : len(ordered) - len(ordered) // 100] or ordered
    span = arrivals[-1] - arrivals[0]
    gaps = [(b - a, a) for a, b in pairwise(arrivals)]
    gap, gap_at = max(gaps, default=(0, arrivals[0]))
    rate = (len(arrivals) - 1) / span if span > 0 else 0.0
    expected = len(gaps) * math.exp(-rate * gap) if gaps else 1.0
    if gap >= GAP_MIN_MS and expected < GAP_EXPECTED:
        failing.append(
            f"arrival gap: nothing arrived for {format_duration_ms(gap)} from {format_ms(gap_at)} "
            f"(at {rate * 1000:.2f} events/s a gap that long is expected {expected:.1e} times: a delivery failure)"
        )

    lateness = [(e.arrival_time - e.event_time, i / len(events)) for i, e in enumerate(events)]
    halves = [sorted(late for late, pos in lateness if (pos >= 0.5) == bool(h)) for h in (0, 1)]
    late_share = [sum(1 for v in h if v > 0) / len(h) if h else 0.0 for h in halves]
    p99 = [_quantile(h, 0.99) or 0 for h in halves]
    if min(late_share) >= 0 and max(late_share) > 0.02 and max(late_share) > 2 * max(min(late_share), 1e-9):
        suspect.append(f"lateness shifted: late share {late_share[0]:.1%} then {late_share[1]:.1%}")
    all_late = sorted(late for late, _ in lateness)
    figures = {
        "lines": total,
        "accepted": len(events),
        "dead_letters": len(rejected),
        "dead_letter_share": round(dead_share, 6),
        "dead_letters_by_reason_per_tenth": {k: v for k, v in sorted(by_reason.items())},
        "lines_per_tenth": per_bucket,
        "schema": fields,
        "new_fields": dict(sorted(new_fields.items())),
        "kinds_no_rule_reads": unread,
        "duplicate_rate": round(dup_rate, 6),
        "largest_arrival_gap_ms": gap,
        "largest_gap_at": format_ms(gap_at),
        "gap_expected_count": expected,
        "arrival_rate_per_s": round(rate * 1000, 3),
        "lateness_ms": {q: _quantile(all_late, v) for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
        | {"max": all_late[-1]},
        "late_share_by_half": [round(s, 6) for s in late_share],
        "lateness_p99_ms_by_half": p99,
    }
    if failing:
        return LayerVerdict("ingest", "failing", failing[0], figures, tuple(failing + suspect), tuple(examples),
                            "fix the producer or the delivery before looking further: the sides saw bad or missing "
                            "data (see the examples); re-run once the feed is repaired")
    if suspect:
        return LayerVerdict("ingest", "suspect", suspect[0], figures, tuple(suspect), tuple(examples),
                            "check with the producer whether the change is intended")
    return LayerVerdict("ingest", "ok", "schema, dead letters, duplicates, arrivals and lateness as expected",
                        figures, (), (), "")


# ---- logic ---------------------------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A definition as ``path: value``; lists of named items are keyed by name (``segments[high_value]``)."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            name = item.get("name") if isinstance(item, Mapping) else None
            out.update(_flatten(item, f"{prefix}[{name if name is not None else index}]"))
    else:
        out[prefix] = value
    return out


def definition_diff(
    legacy: Mapping[str, Any], stream: Mapping[str, Any], *, labels: tuple[str, str] = ("legacy", "stream")
) -> list[str]:
    """A readable diff of two rule-set definitions: one line per changed, added or removed setting
    (``labels`` name the two sides: the legacy and stream sides, or a rule set before and after a change)."""
    a, b = _flatten(legacy), _flatten(stream)
    la, lb = labels
    lines = []
    for path in sorted(a.keys() | b.keys()):
        if path not in b:
            lines.append(f"{path}: {a[path]!r} ({la}) -> absent ({lb})")
        elif path not in a:
            lines.append(f"{path}: absent ({la}) -> {b[path]!r} ({lb})")
        elif a[path] != b[path]:
            lines.append(f"{path}: {a[path]!r} ({la}) -> {b[path]!r} ({lb})")
    return lines


def sides_at(
    as_ofs: Sequence[int], assignments: Iterable[Assignment], transitions: Iterable[Transition]
) -> dict[int, tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]]:
    """Per as-of, each side's non-empty sets by user (legacy from its lines, stream from settled timelines)."""
    legacy: dict[int, dict[str, frozenset[str]]] = {t: {} for t in as_ofs}
    for a in assignments:
        if a.as_of in legacy and a.segments:
            legacy[a.as_of][a.user_id] = frozenset(a.segments)
    by_user: dict[str, list[Transition]] = {}
    for tr in transitions:
        by_user.setdefault(tr.user_id, []).append(tr)
    stream: dict[int, dict[str, frozenset[str]]] = {t: {} for t in as_ofs}
    for user, trs in by_user.items():
        line = Timeline(trs)
        for t in as_ofs:
            value = line.at(t)
            if value:
                stream[t][user] = value
    return {t: (legacy[t], stream[t]) for t in as_ofs}


def rule_change_share(
    sides: Mapping[int, tuple[Mapping[str, frozenset[str]], Mapping[str, frozenset[str]]]],
    legacy_rules: RuleSet,
    applied: Sequence[Event],
    *,
    legacy_at: Mapping[int, RuleSet] | None = None,
    stream_digest_at: Mapping[int, str] | None = None,
) -> tuple[int, int, list[str]]:
    """(mismatched pairs, pairs the rule change accounts for, examples).

    A mismatch at as-of ``t`` is accounted for when the legacy definition in force
    at ``t`` (``legacy_at[t]``, else ``legacy_rules``), evaluated over the events the
    stream applied (``applied``), gives exactly the legacy set. With
    ``stream_digest_at`` (the stream's rule-set digest per as-of), a pair at an
    as-of where both sides ran the same definition is never accounted for: the
    change cannot explain it.
    """
    by_user: dict[str, list[Event]] = {}
    for e in sorted(applied, key=lambda e: e.event_time):
        by_user.setdefault(e.user_id, []).append(e)
    times = {u: [e.event_time for e in es] for u, es in by_user.items()}
    mismatched = accounted = 0
    examples: list[str] = []
    for t, (legacy, stream) in sides.items():
        for user in legacy.keys() | stream.keys():
            lset, sset = legacy.get(user, frozenset()), stream.get(user, frozenset())
            if lset == sset:
                continue
            mismatched += 1
            rules = (legacy_at or {}).get(t, legacy_rules)
            if stream_digest_at is not None and stream_digest_at.get(t) == rules.digest:
                continue
            facts = by_user.get(user, [])
            again = rules.segments_at_sorted(times.get(user, []), facts, t)
            if again == lset:
                accounted += 1
                if len(examples) < 3:
                    examples.append(
                        f"{user} at {format_ms(t)}: legacy {sorted(lset)}, stream {sorted(sset)}; "
                        f"the legacy rules ({rules.ref}) over the stream's events give {sorted(again)}"
                    )
    return mismatched, accounted, examples


class RuleSetUse(NamedTuple):
    """A rule set in use: ``legacy`` ran it at as-of ``at``; the ``stream`` wrote transitions under it effective at
    ``at``; or the ``store`` registered it at ``at`` (wall clock)."""

    side: str
    ref: str
    digest: str
    at: int


@dataclass(frozen=True)
class RuleSetChange:
    """A side switched rule set within the compared period (or the store registered a newer version in it)."""

    side: str
    before: str
    after: str
    at: int

    def text(self) -> str:
        if self.side == "store":
            return f"the store registered {self.after} at {format_ms(self.at)} (after {self.before}), within the period"
        return f"{self.side} switched from {self.before} to {self.after} at {format_ms(self.at)}"


def changes_in_period(
    uses: Iterable[RuleSetUse], first: int, last: int, *, wall: tuple[int, int] | None = None
) -> list[RuleSetChange]:
    """The rule-set changes within the compared period: per side (``legacy``, ``stream``), each switch of digest
    between consecutive uses with ``first <= at <= last`` (as-of or effective time), the first of them against
    the side's latest use before ``first`` (the rule set in force when the period began: a side that ran two
    rule sets from before the period on, as two full replays into one store do, did not switch in it); for the
    ``store``, each version registered strictly inside ``wall`` (the period's wall clock: first legacy run's
    start, last one's end) when an earlier version of that name was already stored (a first registration
    changes nothing)."""
    mine = list(uses)
    out: list[RuleSetChange] = []
    for side in ("legacy", "stream"):
        before = [u for u in mine if u.side == side and u.at < first]
        start = [max(before, key=lambda u: (u.at, u.ref))] if before else []
        seq = start + sorted((u for u in mine if u.side == side and first <= u.at <= last), key=lambda u: (u.at, u.ref))
        for a, b in pairwise(seq):
            if a.digest != b.digest:
                out.append(RuleSetChange(side, a.ref, b.ref, b.at))
    if wall is not None:
        stored = sorted((u for u in mine if u.side == "store"), key=lambda u: (u.at, u.ref))
        for a, b in pairwise(stored):
            if wall[0] < b.at < wall[1] and a.digest != b.digest:
                out.append(RuleSetChange("store", a.ref, b.ref, b.at))
    return out


def in_force(uses: Iterable[RuleSetUse], side: str, times: Sequence[int]) -> dict[int, str]:
    """The ref a side had in force at each of ``times``: its latest use at or before it (none before its first)."""
    seq = sorted((u.at, u.ref) for u in uses if u.side == side)
    stamps = [at for at, _ in seq]
    out: dict[int, str] = {}
    for t in times:
        i = bisect_right(stamps, t)
        if i:
            out[t] = seq[i - 1][1]
    return out


@dataclass(frozen=True)
class LogicInputs:
    """What the logic layer reads: both sides' rule sets (and definitions when known), the comparison."""

    legacy_ref: Mapping[str, Any]
    stream_ref: Mapping[str, Any]
    legacy_rules: RuleSet | None
    stream_rules: RuleSet | None
    parity: Mapping[str, Any] | None
    sides: Mapping[int, tuple[Mapping[str, frozenset[str]], Mapping[str, frozenset[str]]]] | None = None
    applied: Sequence[Event] = ()
    changes: Sequence[RuleSetChange] = ()
    definitions: Mapping[str, RuleSet] = field(default_factory=dict)  # by ref, from the store
    legacy_at: Mapping[int, str] = field(default_factory=dict)  # ref in force per as-of
    stream_at: Mapping[int, str] = field(default_factory=dict)
    history: str = "not checked: no store with the run"


def _ref(ref: Mapping[str, Any]) -> str:
    return f"{ref.get('name')}@v{ref.get('version')} ({str(ref.get('digest'))[:12]})"


def logic_layer(inputs: LogicInputs) -> LayerVerdict:
    """The logic verdict (see the module doc)."""
    lref, sref = inputs.legacy_ref, inputs.stream_ref
    figures: dict[str, Any] = {"legacy_ruleset": dict(lref), "stream_ruleset": dict(sref),
                               "ruleset_history": inputs.history}
    if not lref.get("digest") or not sref.get("digest"):
        return LayerVerdict("logic", "thin", "a side's output names no rule-set digest", figures,
                            next_step="re-run the side whose sidecar is missing or old")
    if inputs.changes:
        return _changed_in_period(inputs, figures)
    if lref["digest"] != sref["digest"]:
        if inputs.legacy_rules is None or inputs.stream_rules is None or inputs.sides is None:
            return LayerVerdict(
                "logic", "failing", f"the sides ran different rule sets: legacy {_ref(lref)}, stream {_ref(sref)}",
                figures, ("a definition is not in the evidence: no diff or re-evaluation possible",), (),
                "deploy the same rule set on both sides (or keep both definitions with the run to see the diff)",
            )
        diff = definition_diff(inputs.legacy_rules.definition, inputs.stream_rules.definition)
        mismatched, accounted, examples = rule_change_share(inputs.sides, inputs.legacy_rules, inputs.applied)
        share = accounted / mismatched if mismatched else 0.0
        figures |= {"diff": diff, "mismatched_pairs": mismatched, "accounted_by_change": accounted,
                    "accounted_share": round(share, 6)}
        return LayerVerdict(
            "logic", "failing",
            f"the sides ran different rule sets (legacy {_ref(lref)}, stream {_ref(sref)}); the change accounts "
            f"for {accounted} of {mismatched} mismatched pairs ({share:.0%})",
            figures, tuple(diff), tuple(examples),
            "roll the stream back to the legacy rule set, or roll the change out to both sides together",
        )
    parity = inputs.parity
    if parity is None:
        return LayerVerdict("logic", "thin", "same rule set on both sides, but no comparison of this run",
                            figures, next_step="run segshadow compare on the run's outputs")
    unexplained = int(parity.get("by_cause", {}).get("unexplained", 0))
    figures |= {"pairs": parity.get("pairs"), "mismatch": parity.get("mismatch"), "unexplained": unexplained,
                "by_cause": dict(parity.get("by_cause", {}))}
    if unexplained:
        return LayerVerdict("logic", "failing",
                            f"same rule set {_ref(lref)}, yet {unexplained} unexplained mismatches",
                            figures, (), (), "read mismatches.jsonl (cause unexplained): a side evaluates the "
                            "rules differently; reproduce one pair with segshadow rules show and the events listed")
    return LayerVerdict("logic", "ok", f"both sides ran {_ref(lref)}; no unexplained mismatch", figures)


def _changed_in_period(inputs: LogicInputs, figures: dict[str, Any]) -> LayerVerdict:
    """The logic verdict when the rule set changed during the compared period (module doc)."""
    changes = inputs.changes
    defs = inputs.definitions
    diff: list[str] = []
    for change in changes:
        before, after = defs.get(change.before), defs.get(change.after)
        if before is not None and after is not None:
            diff += [f"{change.before} -> {change.after}: {line}" for line in
                     definition_diff(before.definition, after.definition, labels=(change.before, change.after))]
        else:
            diff.append(f"{change.before} -> {change.after}: a definition is not in the store, no diff")
    figures |= {"changes": [c.text() for c in changes], "diff": diff}
    mismatched = accounted = 0
    examples: list[str] = []
    base = inputs.legacy_rules or inputs.stream_rules
    if inputs.sides is not None and base is not None:
        legacy_at = {t: defs[r] for t, r in inputs.legacy_at.items() if r in defs}
        stream_default = (inputs.stream_rules or base).digest
        stream_digest = {t: defs[r].digest if r in defs else stream_default
                         for t in inputs.sides for r in [inputs.stream_at.get(t, "")]}
        mismatched, accounted, examples = rule_change_share(
            inputs.sides, base, inputs.applied, legacy_at=legacy_at, stream_digest_at=stream_digest
        )
        figures |= {"mismatched_pairs": mismatched, "accounted_by_change": accounted,
                    "accounted_share": round(accounted / mismatched, 6) if mismatched else 0.0}
    share = f"; the change accounts for {accounted} of {mismatched} mismatched pairs " \
        f"({accounted / mismatched:.0%})" if mismatched else ""
    return LayerVerdict(
        "logic", "failing", f"the rule set changed during the compared period: {changes[0].text()}{share}",
        figures, tuple(c.text() for c in changes) + tuple(diff), tuple(examples),
        "compare only periods with one rule set on each side (split the run at the change), or roll the change "
        "out to both sides together",
    )


# ---- state ---------------------------------------------------------------------------------------


def behind_frontier(events: Sequence[Event]) -> list[int]:
    """For each event (first arrivals, arrival order): how far its event time is behind the largest
    event time of the events that arrived before it (0 for a new largest).

    The stream's watermark is that largest time minus the max out-of-orderness,
    and a too-late event never raises it, so an event is too late exactly when
    this exceeds ``max_out_of_orderness + allowed_lateness``, whatever the lateness.
    """
    out: list[int] = []
    frontier: int | None = None
    for e in events:
        if frontier is None or e.event_time > frontier:
            frontier = e.event_time
            out.append(0)
        else:
            out.append(frontier - e.event_time)
    return out


@dataclass(frozen=True)
class LatenessRow:
    """One candidate allowed lateness: events it drops, how many more it keeps, the extra state it costs."""

    allowed_lateness_ms: int
    dropped: int
    dropped_share: float
    kept_vs_current: int
    extra_state_facts: int
    extra_state_share: float
    suggested: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed_lateness": format_duration_ms(self.allowed_lateness_ms),
            "allowed_lateness_ms": self.allowed_lateness_ms,
            "dropped": self.dropped,
            "dropped_share": round(self.dropped_share, 6),
            "kept_vs_current": self.kept_vs_current,
            "extra_state_facts": self.extra_state_facts,
            "extra_state_share": round(self.extra_state_share, 4),
            "suggested": self.suggested,
        }


def lateness_table(events: Sequence[Event], params: GateParams, span_ms: int) -> list[LatenessRow]:
    """The premature window closure table: the current allowed lateness and larger candidates."""
    behind = sorted(behind_frontier(events))
    n = len(behind)
    if n == 0:
        return []
    ooo, current = params.max_out_of_orderness_ms, params.allowed_lateness_ms
    event_span = max(e.event_time for e in events) - min(e.event_time for e in events)
    rate = n / event_span if event_span > 0 else 0.0  # events per ms of event time

    def dropped(allowed: int) -> int:
        return n - bisect_right(behind, ooo + allowed)

    most = behind[-1] - ooo
    candidates = sorted({current} | {c for c in CANDIDATE_LATENESS_MS if current < c} )
    keep: list[int] = []
    for c in candidates:
        keep.append(c)
        if c >= most:
            break
    now = dropped(current)
    rows = []
    marks: dict[int, str] = {}
    for share, label in zip(SUGGEST_SHARES, ("suggested", "conservative"), strict=True):
        fit = next((c for c in keep if c > current and dropped(c) / n <= share), None)
        if fit is not None and fit not in marks:
            marks[fit] = label
    for c in keep:
        d = dropped(c)
        extra = max(0, c - current)
        rows.append(
            LatenessRow(c, d, d / n, now - d, round(rate * extra), extra / (span_ms + current), marks.get(c))
        )
    return rows


@dataclass(frozen=True)
class StateInputs:
    """What the state layer reads: the event log, the stream's parameters and what it reported."""

    events: Sequence[Event]
    params: GateParams | None
    span_ms: int
    stream_too_late: int | None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    rebuilds: int | None = None  # the stream's shard state rebuilds (its counts)


def state_layer(inputs: StateInputs) -> LayerVerdict:
    """The state verdict (see the module doc)."""
    events, params = inputs.events, inputs.params
    if not events or params is None:
        return LayerVerdict("state", "thin", "no event log or no stream parameters in the evidence",
                            next_step="re-run the stream side; its sidecar is missing")
    behind = behind_frontier(events)
    limit = params.max_out_of_orderness_ms + params.allowed_lateness_ms
    n = len(events)
    too_late = [b > limit for b in behind]
    dropped = sum(too_late)
    share = dropped / n
    per_tenth = [0] * BUCKETS
    lines_tenth = [0] * BUCKETS
    lag: list[list[int]] = [[] for _ in range(BUCKETS)]
    frontier: int | None = None
    for i, e in enumerate(events):
        b = min(BUCKETS - 1, i * BUCKETS // n)
        lines_tenth[b] += 1
        per_tenth[b] += too_late[i]
        if frontier is not None:
            lag[b].append(e.arrival_time - (frontier - params.max_out_of_orderness_ms))
        if not too_late[i] and (frontier is None or e.event_time > frontier):
            frontier = e.event_time
    table = lateness_table(events, params, inputs.span_ms)
    figures: dict[str, Any] = {
        "max_out_of_orderness_ms": params.max_out_of_orderness_ms,
        "allowed_lateness_ms": params.allowed_lateness_ms,
        "too_late": dropped,
        "too_late_share": round(share, 6),
        "stream_reported_too_late": inputs.stream_too_late,
        "too_late_share_per_tenth": [round(d / c, 6) if c else 0.0 for d, c in zip(per_tenth, lines_tenth,
                                                                                   strict=True)],
        "watermark_lag_ms_p50_per_tenth": [_quantile(sorted(v), 0.5) for v in lag],
        "users_in_state": inputs.metrics.get("users_in_state", "not measured"),
        "users_in_state_per_shard": {k.removeprefix("users_in_state_shard"): v for k, v in
                                     sorted(inputs.metrics.items()) if k.startswith("users_in_state_shard")}
        or "not measured (replay: the total only)",
        "shard_rebuilds": "not measured" if inputs.rebuilds is None else inputs.rebuilds,
        "snapshot_and_rebuild_times": "not measured (the segmenter records no timing)",
        "lateness_table": [r.to_dict() for r in table],
    }
    examples = tuple(
        f"{e.event_id} ({e.user_id}): event time {format_ms(e.event_time)}, {format_duration_ms(b)} behind the "
        f"newest event, over the {format_duration_ms(limit)} the stream allows"
        for e, b, late in zip(events, behind, too_late, strict=True) if late
    )[:3]
    suggested = [r for r in table if r.suggested]
    advice = (
        "raise --allowed-lateness to " + " or ".join(
            f"{format_duration_ms(r.allowed_lateness_ms)} ({r.suggested}: drops {r.dropped}, about "
            f"{r.extra_state_share:.0%} more state)" for r in suggested
        )
        if suggested else "raise --allowed-lateness (see the table)"
    )
    if inputs.stream_too_late is not None and inputs.stream_too_late != dropped:
        return LayerVerdict("state", "failing",
                            f"the stream dropped {inputs.stream_too_late} events as too late where its contract "
                            f"drops {dropped}", figures, (), examples,
                            "the stream's admission state is inconsistent: check restores and rebuilds")
    if share > TOO_LATE_FAILING:
        return LayerVerdict("state", "failing",
                            f"premature window closure: {dropped} of {n} events ({share:.1%}) dropped as too late "
                            f"with allowed lateness {format_duration_ms(params.allowed_lateness_ms)}",
                            figures, (), examples, advice)
    if share > TOO_LATE_SUSPECT:
        return LayerVerdict("state", "suspect", f"{share:.1%} of events dropped as too late", figures, (), examples,
                            advice)
    return LayerVerdict("state", "ok", f"{dropped} of {n} events ({share:.2%}) too late; watermark keeps up",
                        figures)


# ---- sink ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkInputs:
    """What the sink layer reads: the stream's sink metrics and counts, and the dual-write counters."""

    metrics: Mapping[str, Any] | None
    counts: Mapping[str, Any]
    ingest: Mapping[str, Any] | None


def sink_layer(inputs: SinkInputs) -> LayerVerdict:
    """The sink verdict (see the module doc)."""
    ingest = inputs.ingest or {}
    figures: dict[str, Any] = {
        "consumer_lag": "not measured (replay)",
        "pending_entries": "not measured (replay)",
        "journaled": ingest.get("journaled", "not measured"),
        "journal_pending": ingest.get("journal_pending", "not measured"),
        "shadow_failures": ingest.get("shadow_failures", "not measured"),
    }
    failing: list[str] = []
    if int(ingest.get("journal_pending") or 0):
        failing.append(f"dual-write journal still holds {ingest['journal_pending']} events")
    bundle = (inputs.metrics or {}).get("redis_bundle_ms")
    writes = int(inputs.counts.get("redis_writes") or 0)
    retries = int((inputs.counts.get("redis_retries")) or 0)
    if bundle is None:
        if failing:
            return LayerVerdict("sink", "failing", failing[0], figures, tuple(failing), (),
                                "replay the journal (shadow run again) once Redis is healthy")
        return LayerVerdict("sink", "thin", "the run recorded no Redis sink timing", figures, (),
                            (), "re-run with this version: the stream's sidecar then records the sink's timing")
    per_write = bundle["sum"] / writes if writes else 0.0
    failures = int(inputs.counts.get("redis_failures") or 0)
    write = (inputs.metrics or {}).get("redis_write")
    figures |= {
        "redis_bundles": bundle["count"],
        "redis_bundle_ms_mean": bundle["mean"],
        "redis_bundle_ms_max": bundle["max"],
        "redis_writes": writes,
        "redis_ms_per_write": round(per_write, 4),
        "redis_retries": retries,
        "redis_failures": failures,
        "redis_write_latency": dict(write) if isinstance(write, Mapping) else
        "not measured (a sidecar from before per-write latency was recorded)",
    }
    if retries:
        failing.append(f"{retries} Redis writes were retried")
    if failures:
        failing.append(f"{failures} Redis sink bundles failed after every retry")
    if isinstance(write, Mapping) and write.get("grew") and \
            float(write.get("ms_per_write_last_third") or 0) > SINK_WRITE_FAILING_MS:
        failing.append(
            f"Redis latency grew during the run: {write['ms_per_write_first_third']} ms a write in its first third, "
            f"{write['ms_per_write_last_third']} ms in its last"
        )
    if bundle["max"] > SINK_BUNDLE_FAILING_MS and per_write > SINK_WRITE_FAILING_MS:
        failing.append(
            f"slow sink: a bundle spent {bundle['max']} ms in Redis, {per_write:.2f} ms a write "
            f"(backpressure on the pipeline)"
        )
    if failing:
        return LayerVerdict("sink", "failing", failing[0], figures, tuple(failing), (),
                            "check Redis (latency, slowlog, memory, network) before the pipeline: the stream waits "
                            "on its writes")
    if int(ingest.get("journaled") or 0) or bundle["max"] > SINK_BUNDLE_FAILING_MS:
        return LayerVerdict("sink", "suspect", "Redis was slow or the shadow side failed at times", figures)
    p99 = f" (p99 at most {write['ms_per_write_p99_at_most']} ms)" if isinstance(write, Mapping) else ""
    return LayerVerdict("sink", "ok", f"Redis {per_write:.2f} ms a write{p99}, no retries, journal empty", figures)


# ---- live (stream live's published health) -------------------------------------------------------


@dataclass(frozen=True)
class LiveHealth:
    """The published health (``streaming.health``): the current hash, the history since ``since_ms``, the time."""

    current: Mapping[str, Any]
    history: Sequence[Mapping[str, Any]]
    now_ms: int
    since_ms: int


def _series(health: LiveHealth, role: str, name: str) -> list[float]:
    return [float(e[name]) for e in health.history if e.get("role") == role and isinstance(e.get(name), int | float)]


def grows(series: Sequence[float], threshold: float) -> bool:
    """The module doc's growth rule: last third's median over 1.5x the first third's, latest over ``threshold``."""
    if len(series) < 3 or series[-1] <= threshold:
        return False
    third = max(1, len(series) // 3)
    first, last = sorted(series[:third]), sorted(series[-third:])
    return last[len(last) // 2] > 1.5 * first[len(first) // 2] + 1


def _trend(series: Sequence[float]) -> dict[str, Any]:
    if not series:
        return {"points": 0}
    return {"points": len(series), "first": series[0], "last": series[-1], "max": max(series)}


def _merge(layer: LayerVerdict, verdict: str, summary: str, figures: dict[str, Any], findings: list[str],
           next_step: str) -> LayerVerdict:
    rank = {"thin": -1, "ok": 0, "suspect": 1, "failing": 2}
    merged = {**layer.figures, "live": figures}
    found = tuple(findings) + layer.findings
    if rank[verdict] > rank[layer.verdict] or layer.verdict == "thin":
        return LayerVerdict(layer.layer, verdict, summary, merged, found, layer.examples, next_step)
    return LayerVerdict(layer.layer, layer.verdict, layer.summary, merged, found, layer.examples, layer.next_step)


def live_state(layer: LayerVerdict, health: LiveHealth) -> LayerVerdict:
    """The state layer with the live watermark lag, staleness and state size (module doc)."""
    current = health.current
    shards = {k.removeprefix("state_users_shard"): v for k, v in current.items() if k.startswith("state_users_shard")}
    at = current.get("source_at_ms")
    age = health.now_ms - int(at) if isinstance(at, int | float) else None
    lag = _series(health, "source", "watermark_lag_ms")
    backlog = _series(health, "source", "consumer_lag")
    figures: dict[str, Any] = {
        "source_published_ms_ago": age,
        "watermark_ms": current.get("watermark_ms"),
        "watermark_lag_ms": current.get("watermark_lag_ms"),
        "watermark_lag_ms_over_period": _trend(lag),
        "too_late": current.get("too_late"),
        "dead_letters": current.get("dead_letters"),
        "events_in_per_s": current.get("events_in_per_s"),
        "applied_per_s": current.get("applied_per_s"),
        "state_users_per_shard": dict(sorted(shards.items())),
        "state_users": sum(v for v in shards.values() if isinstance(v, int | float)),
    }
    if age is None:
        return _merge(layer, "failing", "live: the stream publishes no health", figures, [],
                      "start `segshadow stream live` (this version publishes its health) or check its Redis URL")
    if age > LIVE_STALE_MS:
        return _merge(layer, "failing", f"live: the source has not published for {format_duration_ms(age)}: the "
                      "pipeline is down or stalled", figures, [],
                      "check the stream live process (its log, CPU, the runner) before anything else")
    if grows(lag, WATERMARK_LAG_FAILING_MS) and not grows(backlog, CONSUMER_LAG_FAILING):
        text = (f"live: the watermark lag grew from {format_duration_ms(int(lag[0]))} to "
                f"{format_duration_ms(int(lag[-1]))} while the log is read as it comes")
        return _merge(layer, "failing", text, figures, [text],
                      "the events' own times stall (a source delivering old events, or a clock): check ingest")
    now = current.get("watermark_lag_ms")
    if isinstance(now, int | float) and now > WATERMARK_LAG_FAILING_MS:
        text = f"live: the watermark is {format_duration_ms(int(now))} behind the wall clock"
        return _merge(layer, "suspect", text, figures, [text], "see the sink layer's consumer lag")
    return _merge(layer, "ok", f"live: watermark lag {format_duration_ms(int(now or 0))}, "
                  f"{figures['state_users']} users in state", figures, [], "")


def live_sink(layer: LayerVerdict, health: LiveHealth) -> LayerVerdict:
    """The sink layer with the live consumer lag, pending entries, sink latency and retries (module doc)."""
    current = health.current
    backlog = _series(health, "source", "consumer_lag")
    p99 = _series(health, "sink", "sink_ms_p99")
    retries = _series(health, "sink", "sink_retries")
    failures = _series(health, "sink", "sink_failures")
    per_write = _series(health, "sink", "sink_write_ms_p99")
    figures: dict[str, Any] = {
        "consumer_lag": current.get("consumer_lag"),
        "consumer_lag_over_period": _trend(backlog),
        "pending_entries": current.get("pending"),
        "sink_ms_p50": current.get("sink_ms_p50"),
        "sink_ms_p99": current.get("sink_ms_p99"),
        "sink_ms_max": current.get("sink_ms_max"),
        "sink_ms_p99_max_over_period": max(p99) if p99 else None,
        "sink_writes": current.get("sink_writes"),
        "sink_retries": current.get("sink_retries"),
        "sink_retries_over_period": (retries[-1] - retries[0]) if retries else None,
        "sink_failures": current.get("sink_failures"),
        "sink_failures_over_period": (failures[-1] - failures[0]) if failures else None,
        "sink_write_ms_p50": current.get("sink_write_ms_p50"),
        "sink_write_ms_p99": current.get("sink_write_ms_p99"),
        "sink_write_ms_p99_over_period": _trend(per_write),
        "sink_write_ms_p99_grew": grows(per_write, SINK_WRITE_FAILING_MS),
    }
    failing: list[str] = []
    if grows(backlog, CONSUMER_LAG_FAILING):
        failing.append(f"live: the consumer lag grew from {int(backlog[0])} to {int(backlog[-1])} entries: the "
                       "stream falls behind its log")
    if p99 and max(p99) > SINK_BUNDLE_FAILING_MS:
        failing.append(f"live: slow sink, bundles spent up to {max(p99):.0f} ms in Redis (p99 of a second)")
    if len(retries) >= 2 and retries[-1] > retries[0]:
        failing.append(f"live: {int(retries[-1] - retries[0])} Redis writes retried in the period")
    if len(failures) >= 2 and failures[-1] > failures[0]:
        failing.append(f"live: {int(failures[-1] - failures[0])} sink bundles failed after every retry in the period")
    if figures["sink_write_ms_p99_grew"]:
        failing.append(f"live: the Redis time per write grew from {per_write[0]:.3f} ms to {per_write[-1]:.3f} ms "
                       "(p99 of a second)")
    if failing:
        slow = len(failing) > 1 or not failing[0].startswith("live: the consumer lag")
        step = ("check Redis (latency, slowlog, memory, network): the stream waits on its writes" if slow else
                "the stream cannot keep up: add shards or workers, or find what slows the segmenter")
        return _merge(layer, "failing", failing[0], figures, failing, step)
    if int(current.get("pending") or 0):
        text = f"live: {int(current['pending'])} entries pending in the consumer group"
        return _merge(layer, "suspect", text, figures, [text], "a consumer other than the stream reads the group")
    if not p99 and not backlog:
        return _merge(layer, "thin", "live: the sink and source published no timing in the period", figures, [],
                      "widen --since, or check that stream live runs")
    return _merge(layer, "ok", f"live: consumer lag {current.get('consumer_lag')}, sink p99 "
                  f"{current.get('sink_ms_p99')} ms", figures, [], "")
