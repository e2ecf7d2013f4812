"""The mismatching pairs as records: both sets, the cause, the events behind it, a field-level explanation.

One record of ``mismatches.jsonl``::

    {"as_of": "...Z", "user_id": "...", "legacy": [...], "stream": [...], "cause": "late_arrival",
     "events": [{"event_id", "kind", "event_time", "arrival_time",
                 "seen_by_legacy": arrival <= as_of, "stream": "applied" | "dropped_too_late"}],
     "explanation": {"segments": <deepdiff of the two sets>,
                     "stream_only_events": [ids the stream applied that arrived after the as-of],
                     "legacy_only_events": [ids legacy saw that the stream dropped as too late]}}

``events`` are the user's events in the window ``(as_of - span, as_of]`` of the
kinds the rules read, by event time. The segment diff is computed by deepdiff
once per distinct pair of sets (there are few) and kept in the file as field-level
detail. What a person reads is ``describe``: the record in words (which events the
two sides saw differently and why that changes the set), never diff-library text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from deepdiff import DeepDiff

from compare.causes import CAUSES, UNEXPLAINED, Causes
from compare.frames import EventFrame, SegmentCodec, UserIndex
from segments.display import visible
from segments.events import write_jsonl
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
        ids = self.events.event_id.take(take).to_pylist()
        kinds = self.events.kind.take(take).to_pylist()
        times = self.events.event_time[flat].tolist()
        arrivals = self.events.arrival_time[flat].tolist()
        dropped = self.events.too_late[flat].tolist()
        names = self.users.names.take(pa.array(self.user[positions], pa.int64())).to_pylist()
        as_ofs = self.as_of[positions].tolist()
        legacy = self.legacy[positions].tolist()
        stream = self.stream[positions].tolist()
        codes = self.causes.code[positions].tolist()
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
            yield {
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

    def _segment_diff(self, legacy: int, stream: int) -> dict[str, Any]:
        key = (legacy, stream)
        diff = self._segment_diffs.get(key)
        if diff is None:
            diff = _deepdiff(
                {"segments": set(self.codec.decode(legacy))}, {"segments": set(self.codec.decode(stream))}
            )
            self._segment_diffs[key] = diff
        return diff


def _deepdiff(before: Any, after: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(DeepDiff(before, after, ignore_order=True, verbose_level=2).to_json())
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


def explain(record: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """deepdiff of one record's two views (legacy -> stream) for field-level detail, and ``describe``'s sentences."""
    legacy, stream = views(record)
    diff = DeepDiff(legacy, stream, ignore_order=True, verbose_level=2)
    return json.loads(diff.to_json()), describe(record)


def _clock(text: str) -> str:
    return text[11:19] if len(text) >= 19 else text


def _names(names: list[str]) -> str:
    return ", ".join(names)


def describe(record: dict[str, Any]) -> list[str]:
    """One record in words: which events the two sides saw differently, and what that changes in the set.

    The first sentence names the difference in segments; then one sentence per event
    the sides saw differently (the stream applied it but it arrived after the as-of, or
    legacy saw it but the stream dropped it as too late); then why that changes the
    set, or, when no event was seen differently, that timing does not explain it.
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
    if late or dropped:
        which = "these events are" if len(late) + len(dropped) > 1 else "this event is"
        lines.append(
            f"Both sides apply the same rules and {which} the only difference in what they read in the window, "
            f"so the timing accounts for the difference in {_names(gained + lost)}."
        )
    else:
        count = len(record["events"])
        lines.append(
            f"Both sides saw the same {count} event{'s' if count != 1 else ''} of this user in the window, "
            "so event timing does not explain the difference: it is a defect to investigate."
        )
    return lines


def write_mismatches(path: str | Path, mismatches: Mismatches) -> int:
    """Write ``mismatches.jsonl`` atomically; returns how many records."""
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    return write_jsonl(path, (dumps(record) for record in mismatches.records()))
