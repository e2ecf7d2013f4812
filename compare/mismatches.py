"""The mismatching pairs as records: both sets, the cause, the events behind it, a field-level explanation.

One record of ``mismatches.jsonl``::

    {"as_of": "...Z", "user_id": "...", "legacy": [...], "stream": [...], "cause": "late_arrival",
     "events": [{"event_id", "kind", "event_time", "arrival_time",
                 "seen_by_legacy": arrival <= as_of, "stream": "applied" | "dropped_too_late"}],
     "explanation": {"segments": <deepdiff of the two sets>,
                     "stream_only_events": [ids the stream applied that arrived after the as-of],
                     "legacy_only_events": [ids legacy saw that the stream dropped as too late]},
     "aggregates": {"window": "10m", "legacy": {"net_spend": "100", "views": 0, ...}, "stream": {...}},
     "rules": {"high_value": {"needs": "net_spend > 100", "reads": ["net_spend"]}}}

``aggregates`` (when the event log is at hand) are the rule set's aggregates at
the as-of over each side's view of the window: legacy's (the events that had
arrived by the as-of) and the stream's (the events it applied); money as exact
decimal text. ``rules`` states, for each segment the sides disagree on, the
condition it needs. Equal aggregates with different sets mean the two sides do
not apply the same logic (a threshold or a window differs): ``logic_groups``
gathers the unexplained mismatches by segment and by those values.

``events`` are the user's events in the window ``(as_of - span, as_of]`` of the
kinds the rules read, by event time. The segment diff is computed by deepdiff
once per distinct pair of sets (there are few) and kept in the file as field-level
detail. What a person reads is ``describe``: the record in words (which events the
two sides saw differently and why that changes the set), never diff-library text.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from deepdiff import DeepDiff

from compare.causes import CAUSES, UNEXPLAINED, Causes
from compare.frames import EventFrame, SegmentCodec, UserIndex, decoded
from segments.display import visible
from segments.durations import format_duration_ms
from segments.events import format_micros, write_jsonl
from segments.rules import AllOf, Compare, Condition, FactLike, RuleSet
from segments.timeutil import format_ms


@dataclass(frozen=True)
class Mismatches:
    """The mismatching pairs ordered by (as-of, user code), with causes and window events."""

    as_of: np.ndarray
    user: np.ndarray
    legacy: np.ndarray
    stream: np.ndarray
    causes: Causes
    users: UserIndex
    codec: SegmentCodec
    events: EventFrame
    _segment_diffs: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict, repr=False)
    ruleset: RuleSet | None = None  # with ``facts``: each record states the aggregates of both views
    facts: Sequence[FactLike] | None = field(default=None, repr=False)  # the events, in ``events``' order

    def __len__(self) -> int:
        return len(self.as_of)

    def top_unexplained(self, limit: int) -> list[int]:
        """Up to ``limit`` unexplained mismatches, those with the most differing segments first."""
        where = np.flatnonzero(self.causes.code == UNEXPLAINED)
        if len(where) == 0:
            return []
        differing = np.array([int(x).bit_count() for x in (self.legacy[where] ^ self.stream[where]).tolist()])
        order = np.lexsort((where, -differing))
        return [int(i) for i in where[order[:limit]]]

    def records(self, which: list[int] | None = None) -> Iterator[dict[str, Any]]:
        """The records of ``which`` (positions; all by default), in that order."""
        positions = np.arange(len(self)) if which is None else np.array(which, dtype=np.int64)
        if len(positions) == 0:
            return
        windows = self.causes.windows
        counts = windows.count[positions]
        starts = windows.start[positions]
        rows = np.repeat(np.arange(len(positions)), counts)
        offsets = np.zeros(len(positions), dtype=np.int64)
        np.cumsum(counts[:-1], out=offsets[1:])
        flat = (
            windows.events[starts[rows] + (np.arange(int(counts.sum())) - offsets[rows])]
            if len(rows)
            else np.zeros(0, dtype=np.int64)
        )
        take = pa.array(flat, pa.int64())
        ids = decoded(self.events.event_id.take(take)).to_pylist()
        kinds = decoded(self.events.kind.take(take)).to_pylist()
        times = self.events.event_time[flat].tolist()
        arrivals = self.events.arrival_time[flat].tolist()
        dropped = self.events.too_late[flat].tolist()
        names = self.users.names.take(pa.array(self.user[positions], pa.int64())).to_pylist()
        as_ofs = self.as_of[positions].tolist()
        legacy = self.legacy[positions].tolist()
        stream = self.stream[positions].tolist()
        codes = self.causes.code[positions].tolist()
        arithmetic = _Arithmetic(self.ruleset, self.facts, flat.tolist()) if self.ruleset and self.facts else None
        for j in range(len(positions)):
            t = as_ofs[j]
            lo = int(offsets[j])
            behind = []
            stream_only = []
            legacy_only = []
            for k in range(lo, lo + int(counts[j])):
                seen = arrivals[k] <= t
                if dropped[k] and seen:
                    legacy_only.append(ids[k])
                elif not dropped[k] and not seen:
                    stream_only.append(ids[k])
                behind.append(
                    {
                        "event_id": ids[k],
                        "kind": kinds[k],
                        "event_time": format_ms(times[k]),
                        "arrival_time": format_ms(arrivals[k]),
                        "seen_by_legacy": seen,
                        "stream": "dropped_too_late" if dropped[k] else "applied",
                    }
                )
            record = {
                "as_of": format_ms(t),
                "user_id": names[j],
                "legacy": list(self.codec.decode(legacy[j])),
                "stream": list(self.codec.decode(stream[j])),
                "cause": CAUSES[codes[j]],
                "events": behind,
                "explanation": {
                    "segments": self._segment_diff(legacy[j], stream[j]),
                    "stream_only_events": stream_only,
                    "legacy_only_events": legacy_only,
                },
            }
            if arithmetic is not None:
                seen_at = [arrivals[k] <= t for k in range(lo, lo + int(counts[j]))]
                applied = [not dropped[k] for k in range(lo, lo + int(counts[j]))]
                record.update(arithmetic.at(t, lo, seen_at, applied, legacy[j] ^ stream[j], self.codec))
            yield record

    def _segment_diff(self, legacy: int, stream: int) -> dict[str, Any]:
        key = (legacy, stream)
        diff = self._segment_diffs.get(key)
        if diff is None:
            diff = _deepdiff(
                {"segments": set(self.codec.decode(legacy))}, {"segments": set(self.codec.decode(stream))}
            )
            self._segment_diffs[key] = diff
        return diff


class _Arithmetic:
    """The rule set's aggregates over each side's view of one mismatch's window, and the rules it tests."""

    def __init__(self, ruleset: RuleSet, facts: Sequence[FactLike], flat: list[int]) -> None:
        self.ruleset = ruleset
        self.window = format_duration_ms(ruleset.span_ms)
        self.facts = [facts[k] for k in flat]
        self.money = frozenset(a.name for a in ruleset.aggregates if a.is_money)
        self.conditions = {s.name: s.when for s in ruleset.segments}
        self._rules: dict[int, dict[str, Any]] = {}  # by the mask of differing segments (few distinct)

    def values(self, chosen: list[FactLike], t: int) -> dict[str, Any]:
        money = self.money
        return {
            a.name: money_text(v) if a.name in money else v
            for a in self.ruleset.aggregates
            for v in (a.value(chosen, t),)
        }

    def rules(self, differ: int, codec: SegmentCodec) -> dict[str, Any]:
        found = self._rules.get(differ)
        if found is None:
            found = {
                name: {
                    "needs": condition_text(self.conditions[name], self.money),
                    "reads": condition_aggregates(self.conditions[name]),
                }
                for name in codec.decode(differ)
                if name in self.conditions
            }
            self._rules[differ] = found
        return found

    def at(
        self, t: int, lo: int, seen: list[bool], applied: list[bool], differ: int, codec: SegmentCodec
    ) -> dict[str, Any]:
        window = self.facts[lo : lo + len(seen)]
        legacy = self.values([f for f, s in zip(window, seen, strict=True) if s], t)
        stream = legacy if seen == applied else self.values([f for f, a in zip(window, applied, strict=True) if a], t)
        return {
            "aggregates": {"window": self.window, "legacy": legacy, "stream": stream},
            "rules": self.rules(differ, codec),
        }


def money_text(micros: int) -> str:
    """Exact money with at least two decimals: ``100.00``, ``12.50``, ``0.125``."""
    text = format_micros(micros)
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def condition_text(condition: Condition, money: set[str] | frozenset[str] = frozenset()) -> str:
    """A rule's condition as a person writes it: ``net_spend > 100``, ``views >= 3 and purchases == 0``."""
    if isinstance(condition, Compare):
        value = format_micros(condition.value) if condition.agg in money else str(condition.value)
        return f"{condition.agg} {condition.op} {value}"
    joiner = " and " if isinstance(condition, AllOf) else " or "
    parts = [
        f"({condition_text(p, money)})" if not isinstance(p, Compare) and len(p.parts) > 1 else condition_text(p, money)
        for p in condition.parts
    ]
    return joiner.join(parts)


def condition_aggregates(condition: Condition) -> list[str]:
    """The aggregates a condition reads, in the order it reads them."""
    if isinstance(condition, Compare):
        return [condition.agg]
    names: list[str] = []
    for part in condition.parts:
        names.extend(n for n in condition_aggregates(part) if n not in names)
    return names


def logic_groups(
    mismatches: Mismatches, limit: int = 50_000, *, side_rules: Mapping[str, RuleSet] | None = None
) -> dict[str, Any]:
    """The unexplained mismatches grouped by segment, by which side has it, and by the aggregates that segment
    reads in each side's view (``{"grouped", "unexplained", "groups": [...]}``, biggest group first).

    A group whose two views are equal is a difference of logic (a threshold, a window): both sides read the
    same events and still decided differently. Up to ``limit`` mismatches are grouped (``grouped`` says how
    many). Empty without a rule set and the events. With ``side_rules`` (the rule set each side declares),
    each group also states each side's condition for the segment (``rules``), so a changed threshold shows.
    """
    where = np.flatnonzero(mismatches.causes.code == UNEXPLAINED)
    if mismatches.ruleset is None or mismatches.facts is None or len(where) == 0:
        return {"grouped": 0, "unexplained": len(where), "groups": []}
    conditions = {s.name: s.when for s in mismatches.ruleset.segments}
    money = {a.name for a in mismatches.ruleset.aggregates if a.is_money}
    counts: Counter[tuple[Any, ...]] = Counter()
    chosen = where[:limit].tolist()
    for record in mismatches.records(chosen):
        legacy, stream = set(record["legacy"]), set(record["stream"])
        views = record["aggregates"]
        for name in sorted(legacy ^ stream):
            reads = condition_aggregates(conditions[name]) if name in conditions else []
            key = (
                name,
                "legacy" if name in legacy else "stream",
                tuple((a, views["legacy"][a]) for a in reads),
                tuple((a, views["stream"][a]) for a in reads),
            )
            counts[key] += 1
    groups = [
        {
            "segment": name,
            "only_in": side,
            "rule": condition_text(conditions[name], money) if name in conditions else None,
            "legacy": dict(lv),
            "stream": dict(sv),
            "rules": {side: _rule_of(rules, name) for side, rules in (side_rules or {}).items()},
            "same_view": lv == sv,
            "mismatches": n,
        }
        for (name, side, lv, sv), n in sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    ]
    return {"grouped": len(chosen), "unexplained": len(where), "groups": groups}


def _rule_of(ruleset: RuleSet, name: str) -> str | None:
    money = {a.name for a in ruleset.aggregates if a.is_money}
    for segment in ruleset.segments:
        if segment.name == name:
            return condition_text(segment.when, money)
    return None


def _deepdiff(before: Any, after: Any) -> dict[str, Any]:
    return _settled(DeepDiff(before, after, ignore_order=True, verbose_level=2))


_SET_CHANGES = ("set_item_added", "set_item_removed")


def _settled(diff: DeepDiff) -> dict[str, Any]:
    """A diff as JSON data, its set items in sorted order: deepdiff lists them in the sets' iteration order,
    which follows the process's string hash seed, so the same pair would read differently from run to run."""
    result: dict[str, Any] = json.loads(diff.to_json())
    for change in _SET_CHANGES:
        if isinstance(result.get(change), list):
            result[change] = sorted(result[change])
    return result


def views(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What each side saw for one record: its set, and the window's events it used."""

    def event(e: dict[str, Any]) -> dict[str, Any]:
        return {"kind": e["kind"], "event_time": e["event_time"], "arrival_time": e["arrival_time"]}

    legacy = {
        "segments": set(record["legacy"]),
        "events": {e["event_id"]: event(e) for e in record["events"] if e["seen_by_legacy"]},
    }
    stream = {
        "segments": set(record["stream"]),
        "events": {e["event_id"]: event(e) for e in record["events"] if e["stream"] == "applied"},
    }
    return legacy, stream


def explain(
    record: dict[str, Any], provenance: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """deepdiff of one record's two views (legacy -> stream) for field-level detail, and ``describe``'s sentences."""
    legacy, stream = views(record)
    diff = DeepDiff(legacy, stream, ignore_order=True, verbose_level=2)
    return _settled(diff), describe(record, provenance)


def _clock(text: str) -> str:
    return text[11:19] if len(text) >= 19 else text


def _names(names: list[str]) -> str:
    return ", ".join(names)


def made_by(side: Mapping[str, Any]) -> str:
    """What made one side, from its ``provenance`` entry: its own logic (SQL or transform) or a rule set, with the
    digest that identifies it, and whether that was declared rather than read from a sidecar."""
    logic = side.get("logic")
    if logic:
        what = f"{'the SQL' if logic['kind'] == 'sql' else 'the transform'} {logic['ref']}"
        digest = f"sha256 {str(logic.get('sha256') or '?')[:12]}"
    else:
        what, digest = f"rule set {side['ruleset']}", f"digest {str(side.get('digest') or '?')[:12]}"
    declared = ", declared, not verified" if side.get("source") == "declared" else ""
    return f"{what} ({digest}{declared})"


def _logic_sentence(provenance: Mapping[str, Any] | None) -> tuple[bool | None, str]:
    """(whether the sides are known to run one logic, None when the record comes without provenance; the phrase
    that says what each side ran)."""
    if not provenance or "legacy" not in provenance or "stream" not in provenance:
        return None, ""
    legacy, stream = made_by(provenance["legacy"]), made_by(provenance["stream"])
    if provenance.get("shared_ruleset", True):
        return True, f"Both sides run {legacy}"
    return False, f"Legacy runs {legacy} and the stream {stream}"


def describe(record: dict[str, Any], provenance: Mapping[str, Any] | None = None) -> list[str]:
    """One record in words: which events the two sides saw differently, and what that changes in the set.

    The first sentence names the difference in segments; then one sentence per event
    the sides saw differently (the stream applied it but it arrived after the as-of, or
    legacy saw it but the stream dropped it as too late); then why that changes the
    set, or, when no event was seen differently, that timing does not explain it.
    ``provenance`` (the comparison's, ``compare.inputs.side_provenance`` per side and
    ``shared_ruleset``) says what each side ran: the last sentence states that rather
    than assume the sides share their rules; without it, it says that is not known.
    """
    legacy, stream = set(record["legacy"]), set(record["stream"])
    as_of = _clock(record["as_of"])
    gained, lost = sorted(stream - legacy), sorted(legacy - stream)
    parts = []
    if gained:
        parts.append(f"the stream has {_names(gained)}, legacy has not")
    if lost:
        parts.append(f"legacy has {_names(lost)}, the stream has not")
    lines = [f"At the as-of {as_of}: " + "; ".join(parts) + "."]
    late = [e for e in record["events"] if e["stream"] == "applied" and not e["seen_by_legacy"]]
    dropped = [e for e in record["events"] if e["stream"] != "applied" and e["seen_by_legacy"]]
    for e in late:
        lines.append(
            f"The stream applied {visible(e['event_id'])} ({e['kind']} at {_clock(e['event_time'])}, arrived "
            f"{_clock(e['arrival_time'])}, after the as-of {as_of}), which legacy could not see yet."
        )
    for e in dropped:
        lines.append(
            f"Legacy counted {visible(e['event_id'])} ({e['kind']} at {_clock(e['event_time'])}, arrived "
            f"{_clock(e['arrival_time'])}), which the stream dropped as too late."
        )
    shared, ran = _logic_sentence(provenance)
    differing = _names(gained + lost)
    if late or dropped:
        which = "these events are" if len(late) + len(dropped) > 1 else "this event is"
        if shared:
            lines.append(
                f"{ran}, and {which} the only difference in what they read in the window, so the timing "
                f"accounts for the difference in {differing}."
            )
        elif shared is False:
            lines.append(
                f"{ran}, which nothing shows to be one logic: {which} the only difference in what they read in the "
                f"window, so the timing accounts for the difference in {differing} only if both compute the rule "
                "set they declare."
            )
        else:
            lines.append(
                f"{which[0].upper()}{which[1:]} the only difference in what the sides read in the window, so if "
                f"both apply the same rules (not stated here), the timing accounts for the difference in {differing}."
            )
    else:
        count = len(record["events"])
        saw = f"the same {count} event{'s' if count != 1 else ''} of this user in the window"
        if shared is False:
            lines.append(
                f"Both sides saw {saw}, so event timing does not explain the difference: {ran[0].lower()}{ran[1:]}, "
                "and where their logic differs is the place to look."
            )
        else:
            lines.append(
                f"Both sides saw {saw}, so event timing does not explain the difference: it is a defect to "
                "investigate" + (f" ({ran[0].lower()}{ran[1:]})." if shared else ".")
            )
    lines.extend(arithmetic(record))
    return lines


def arithmetic(record: dict[str, Any]) -> list[str]:
    """The rule arithmetic of a record (when it carries ``aggregates``): for each segment the sides disagree
    on, what it needs and what each side's view of the window gives, e.g. "high_value needs net_spend > 100;
    in the 10m before the as-of legacy's view has net_spend 100.00, the stream's 100.00"."""
    views = record.get("aggregates")
    rules = record.get("rules") or {}
    if not views:
        return []
    lines = []
    for name, rule in rules.items():
        reads = rule["reads"]
        legacy = ", ".join(f"{a} {views['legacy'][a]}" for a in reads)
        stream = ", ".join(f"{a} {views['stream'][a]}" for a in reads)
        same = legacy == stream
        lines.append(
            f"{name} needs {rule['needs']}; in the {views['window']} before the as-of "
            + (
                f"both views give {legacy}, so the two sides decide {name} differently on the same values "
                "(their rules differ)."
                if same
                else f"legacy's view gives {legacy}, the stream's {stream}."
            )
        )
    return lines


def write_mismatches(path: str | Path, mismatches: Mismatches) -> int:
    """Write ``mismatches.jsonl`` atomically; returns how many records."""
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    return write_jsonl(path, (dumps(record) for record in mismatches.records()))
