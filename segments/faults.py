"""Planted faults: workloads (and run options) that reproduce one failure of one layer each.

``segshadow workload ... --fault NAME`` writes the seeded workload changed as
below, and a description ``OUT.fault.json`` naming the layer the fault belongs to
and what the run must add to reproduce it (``run_args`` for ``shadow run``;
``stream_rules`` for the stream side). The triage (``compare.doctor``) is proved
against these: each must be named at its layer, and nothing on a clean run.

- ``schema-drift`` (ingest): from the middle of the arrivals on, the producer's
  "version 2" renames ``amount`` to ``price`` (money events are then rejected:
  ``missing_field``), ``attrs.merchant`` to ``attrs.merchant_id`` (a number), and
  adds a top-level ``schema_version``;
- ``delivery-gap`` (ingest): the events that would arrive during
  ``GAP_MINUTES`` from 40% of the span are never delivered (an upstream outage);
- ``rule-change`` (logic): the events are clean; ``OUT.stream-rules.yaml`` is the
  shipped rule set with one threshold changed (same name, next version), which
  the stream side runs (``stream replay --rules``) while legacy keeps the shipped one;
- ``tight-watermark`` (state): clean events; the run uses an allowed lateness of
  ``TIGHT_LATENESS`` (``--allowed-lateness 2s``), far below the data's lateness;
- ``slow-sink`` (sink): clean events; the run delays every Redis sink bundle by
  ``SLOW_SINK_MS`` (the Beam option ``--sink_delay_ms``, passed after ``--``).

Everything is a pure function of the workload's lines (arrival order) and the seed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from segments.events import write_jsonl
from segments.rules import RuleSet, compile_ruleset
from segments.workloads import WorkloadParams, build

FAULTS = ("schema-drift", "rule-change", "tight-watermark", "slow-sink", "delivery-gap")
LAYER_OF = {
    "schema-drift": "ingest",
    "delivery-gap": "ingest",
    "rule-change": "logic",
    "tight-watermark": "state",
    "slow-sink": "sink",
}
GAP_MINUTES = 5
TIGHT_LATENESS = "2s"
SLOW_SINK_MS = 400
MINUTE = 60_000


@dataclass(frozen=True)
class PlantedFault:
    """A fault applied to a workload: the changed lines and what the run must do."""

    name: str
    lines: list[str]
    run_args: tuple[str, ...] = ()
    stream_rules: Mapping[str, Any] | None = None

    def description(self, out: Path) -> dict[str, Any]:
        """``OUT.fault.json``: the fault, its layer, and how to reproduce it with ``shadow run``."""
        doc: dict[str, Any] = {"fault": self.name, "layer": LAYER_OF[self.name], "run_args": list(self.run_args)}
        if self.stream_rules is not None:
            doc["stream_rules"] = str(stream_rules_path(out))
            doc["then"] = (
                f"segshadow stream replay --events RUN/events.jsonl --rules {stream_rules_path(out)} "
                "--out RUN/stream.jsonl (the stream side runs the changed rule set)"
            )
        return doc


def fault_path(out: Path) -> Path:
    return out.with_name(out.name + ".fault.json")


def stream_rules_path(out: Path) -> Path:
    return out.with_name(out.name + ".stream-rules.yaml")


def plant(name: str, lines: Sequence[str], ruleset: RuleSet) -> PlantedFault:
    """Apply fault ``name`` to the workload ``lines`` (arrival order); ``ValueError`` for an unknown name."""
    if name == "schema-drift":
        return PlantedFault(name, _schema_drift(lines))
    if name == "delivery-gap":
        return PlantedFault(name, _delivery_gap(lines))
    if name == "rule-change":
        return PlantedFault(name, list(lines), stream_rules=changed_rules(ruleset))
    if name == "tight-watermark":
        return PlantedFault(name, list(lines), ("--allowed-lateness", TIGHT_LATENESS))
    if name == "slow-sink":
        return PlantedFault(name, list(lines), ("--", f"--sink_delay_ms={SLOW_SINK_MS}"))
    raise ValueError(f"unknown fault {name!r}: choose one of {', '.join(FAULTS)}")


def _arrival(obj: Mapping[str, Any]) -> int | None:
    value = obj.get("arrival_time", obj.get("event_time"))
    return value if type(value) is int else None


def _schema_drift(lines: Sequence[str]) -> list[str]:
    out: list[str] = []
    half = len(lines) // 2
    for index, text in enumerate(lines):
        if index < half:
            out.append(text)
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            out.append(text)
            continue
        if not isinstance(obj, dict):
            out.append(text)
            continue
        if "amount" in obj:
            obj["price"] = obj.pop("amount")
        attrs = obj.get("attrs")
        if isinstance(attrs, dict) and "merchant" in attrs:
            merchant = str(attrs.pop("merchant"))
            attrs["merchant_id"] = int("".join(ch for ch in merchant if ch.isdigit()) or 0)
        obj["schema_version"] = 2
        out.append(json.dumps(obj, separators=(",", ":")))
    return out


def _delivery_gap(lines: Sequence[str]) -> list[str]:
    arrivals = [_arrival(json.loads(t)) if t.startswith("{") and t.endswith("}") else None for t in lines]
    known = [a for a in arrivals if a is not None]
    if not known:
        return list(lines)
    first, last = min(known), max(known)
    start = first + (last - first) * 2 // 5
    end = start + GAP_MINUTES * MINUTE
    return [t for t, a in zip(lines, arrivals, strict=True) if a is None or not start <= a < end]


def changed_rules(ruleset: RuleSet) -> dict[str, Any]:
    """The rule set's definition, next version, with the first segment's first threshold lowered by half.

    (clickstream: ``high_value`` from net spend > 100 to > 50; risk: ``risk_high``'s
    one-minute count from >= 5 to >= 2.)
    """
    definition = json.loads(json.dumps(dict(ruleset.definition)))
    definition["version"] = ruleset.version + 1
    condition = definition["segments"][0]["when"]
    while "value" not in condition:
        condition = (condition.get("all") or condition.get("any"))[0]
    value = condition["value"]
    condition["value"] = type(value)(max(1, int(float(value)) // 2)) if not isinstance(value, str) else str(
        max(1, int(float(value)) // 2)
    )
    compile_ruleset(definition, "changed rule set")  # the change must still be a valid rule set
    return definition


def write_fault_files(fault: PlantedFault, out: Path) -> None:
    """Write ``OUT.fault.json`` (and ``OUT.stream-rules.yaml`` for ``rule-change``) beside the workload."""
    if fault.stream_rules is not None:
        stream_rules_path(out).write_text(
            yaml.safe_dump(dict(fault.stream_rules), sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
    fault_path(out).write_text(json.dumps(fault.description(out), indent=2) + "\n", encoding="utf-8")


def write_faulty_workload(
    fault: str, kind: str, path: str | Path, users: int, minutes: int, seed: int, **knobs: float | int | str
) -> dict[str, int]:
    """``write_workload`` with fault ``fault`` planted; writes the fault files too. Counts as ``write_workload``'s,
    plus ``fault_lines_dropped``; ``ValueError`` for a bad knob or fault."""
    from segments.rules import shipped_ruleset

    params = WorkloadParams(kind, users, minutes, seed, **knobs)  # type: ignore[arg-type]
    lines, counts = build(params)
    fault_made = plant(fault, lines, shipped_ruleset(kind))
    out = Path(path)
    write_jsonl(out, fault_made.lines)
    write_fault_files(fault_made, out)
    return {**counts.as_dict(), "fault_lines_dropped": len(lines) - len(fault_made.lines)}
