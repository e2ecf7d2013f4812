"""The comparator's columnar inputs: segment sets as bitmasks, users as integer codes, events as columns.

The bulk comparison never touches a Python object per pair. Each side arrives as
an Arrow table (the schemas below, what the readers in ``compare.inputs`` build);
segment sets become bitmasks (``SegmentCodec``), user ids become small integer
codes shared by every table of one comparison (``UserIndex``), and the event log
becomes numpy columns (``EventFrame``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segments.errors import InputError
from segments.events import EventLog
from segments.outputs import Assignment, Transition
from segments.rules import RuleSet

LEGACY_SCHEMA = pa.schema(
    [("as_of", pa.int64()), ("user_id", pa.string()), ("segments", pa.list_(pa.string()))]
)
"""SPEC §3 lines as columns; ``as_of`` in epoch ms."""

STREAM_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("segments", pa.list_(pa.string())),
        ("effective_time", pa.int64()),
        ("revision", pa.int64()),
        ("emitted_at", pa.int64()),
        ("cause", pa.string()),
    ]
)
"""SPEC §4 lines as columns; times in epoch ms."""

MAX_SEGMENT_NAMES = 64


def legacy_table(assignments: Iterable[Assignment]) -> pa.Table:
    """Assignments (``segments.outputs.read_assignments``) as a ``LEGACY_SCHEMA`` table."""
    rows = list(assignments)
    return pa.table(
        {
            "as_of": pa.array([a.as_of for a in rows], pa.int64()),
            "user_id": pa.array([a.user_id for a in rows], pa.string()),
            "segments": pa.array([list(a.segments) for a in rows], pa.list_(pa.string())),
        },
        schema=LEGACY_SCHEMA,
    )


def stream_table(transitions: Iterable[Transition]) -> pa.Table:
    """Transitions (``segments.outputs.read_transitions``) as a ``STREAM_SCHEMA`` table."""
    rows = list(transitions)
    return pa.table(
        {
            "user_id": pa.array([t.user_id for t in rows], pa.string()),
            "segments": pa.array([list(t.segments) for t in rows], pa.list_(pa.string())),
            "effective_time": pa.array([t.effective_time for t in rows], pa.int64()),
            "revision": pa.array([t.revision for t in rows], pa.int64()),
            "emitted_at": pa.array([t.emitted_at for t in rows], pa.int64()),
            "cause": pa.array([t.cause for t in rows], pa.string()),
        },
        schema=STREAM_SCHEMA,
    )


# ---- segment sets as bitmasks ----------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentCodec:
    """Segment names <-> bits: bit ``i`` is ``names[i]``. The rule set's names come first, in rule order."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.names) > MAX_SEGMENT_NAMES:
            raise InputError(f"more than {MAX_SEGMENT_NAMES} distinct segment names in the outputs")

    @classmethod
    def for_outputs(cls, ruleset: RuleSet, lists: Sequence[pa.ChunkedArray | pa.Array]) -> SegmentCodec:
        """The rule set's names, then any other name found in ``lists`` (sorted), so every set is encodable."""
        known = list(ruleset.segment_names)
        extra: set[str] = set()
        value_set = pa.array(known, pa.string())
        for column in lists:
            flat = _flatten(column)
            if len(flat) == 0:
                continue
            unknown = flat.filter(pc.invert(pc.is_in(flat, value_set=value_set)))
            if len(unknown):
                extra.update(pc.unique(unknown).to_pylist())
        return cls(tuple(known) + tuple(sorted(extra)))

    @property
    def dtype(self) -> np.dtype[Any]:
        """The narrowest unsigned integer that holds every mask."""
        for bits, kind in ((8, np.uint8), (16, np.uint16), (32, np.uint32)):
            if len(self.names) <= bits:
                return np.dtype(kind)
        return np.dtype(np.uint64)

    def bit(self, name: str) -> int:
        return 1 << self.names.index(name)

    def decode(self, mask: int) -> tuple[str, ...]:
        """The sorted names of ``mask``."""
        return tuple(sorted(name for i, name in enumerate(self.names) if mask >> i & 1))

    def encode(self, names: Iterable[str]) -> int:
        mask = 0
        for name in names:
            mask |= self.bit(name)
        return mask

    def masks(self, lists: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """One mask per list (a set: repeated names count once; an empty or null list is 0)."""
        array = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
        rows = len(array)
        flat = pc.list_flatten(array)
        bits = np.zeros(len(flat), dtype=self.dtype)
        for i, name in enumerate(self.names):
            hit = pc.fill_null(pc.equal(flat, name), False).to_numpy(zero_copy_only=False)
            bits[hit] |= self.dtype.type(1 << i)
        if rows == 0:
            return np.zeros(0, dtype=self.dtype)
        sizes = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        starts = np.zeros(rows, dtype=np.int64)
        np.cumsum(sizes[:-1], out=starts[1:])
        padded = np.append(bits, self.dtype.type(0))
        out = np.bitwise_or.reduceat(padded, np.minimum(starts, len(bits)))
        out[sizes == 0] = 0
        return out.astype(self.dtype, copy=False)


def _flatten(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pc.list_flatten(array)


# ---- users as integer codes ------------------------------------------------------------------------


@dataclass(frozen=True)
class UserIndex:
    """The user ids of one comparison; a user's code is its position in ``names``."""

    names: pa.Array

    def __len__(self) -> int:
        return len(self.names)

    def name(self, code: int) -> str:
        return str(self.names[int(code)].as_py())

    @classmethod
    def build(cls, columns: Sequence[pa.ChunkedArray | pa.Array]) -> tuple[UserIndex, list[np.ndarray]]:
        """One index over every column, and each column's codes (int32, one per row)."""
        encoded = []
        for column in columns:
            array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
            if array.null_count:
                raise InputError("a user_id is missing")
            encoded.append(pc.dictionary_encode(array) if len(array) else None)
        dictionaries = [e.dictionary for e in encoded if e is not None]
        names = pc.unique(pa.concat_arrays(dictionaries)) if dictionaries else pa.array([], pa.string())
        codes = []
        for e in encoded:
            if e is None:
                codes.append(np.zeros(0, dtype=np.int32))
                continue
            remap = pc.index_in(e.dictionary, value_set=names).to_numpy(zero_copy_only=False).astype(np.int32)
            codes.append(remap[e.indices.to_numpy(zero_copy_only=False)])
        return cls(names), codes


# ---- the event log as columns ----------------------------------------------------------------------


@dataclass(frozen=True)
class EventFrame:
    """The valid, deduplicated events (arrival order) with what the comparator needs of each.

    ``too_late``: the stream dropped it (SPEC §4); every other event was applied.
    ``relevant``: its kind is read by some aggregate of the rule set (other kinds
    cannot change a segment set, so they never explain a mismatch).
    ``fraud``: ``attrs.fraud`` is a true label; ``labelled`` says whether any
    event carries an ``attrs.fraud`` key at all (the ground-truth section needs it).
    """

    event_id: pa.Array
    user_id: pa.Array
    kind: pa.Array
    event_time: np.ndarray
    arrival_time: np.ndarray
    too_late: np.ndarray
    relevant: np.ndarray
    fraud: np.ndarray
    labelled: bool
    rejected: int = 0
    duplicates: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.event_time)

    @property
    def applied(self) -> np.ndarray:
        return ~self.too_late

    @classmethod
    def from_log(cls, log: EventLog, too_late_ids: set[str], ruleset: RuleSet) -> EventFrame:
        """Columns of ``log.events``; ``too_late_ids`` names the events the stream dropped."""
        events = log.events
        kinds = ruleset.kinds
        labels = [_label(e.attrs) for e in events]
        return cls(
            event_id=pa.array([e.event_id for e in events], pa.string()),
            user_id=pa.array([e.user_id for e in events], pa.string()),
            kind=pa.array([e.kind for e in events], pa.string()),
            event_time=np.fromiter((e.event_time for e in events), np.int64, len(events)),
            arrival_time=np.fromiter((e.arrival_time for e in events), np.int64, len(events)),
            too_late=np.fromiter((e.event_id in too_late_ids for e in events), np.bool_, len(events)),
            relevant=np.fromiter((e.kind in kinds for e in events), np.bool_, len(events)),
            fraud=np.fromiter((label is True for label in labels), np.bool_, len(events)),
            labelled=any(label is not None for label in labels),
            rejected=len(log.rejected),
            duplicates=len(log.duplicates),
        )


def _label(attrs: Mapping[str, Any] | None) -> bool | None:
    """``attrs.fraud`` as a label: None when absent; JSON true, 1 or "true"/"1"/"yes" are fraud."""
    if not attrs or "fraud" not in attrs:
        return None
    value = attrs["fraud"]
    if value is True or (type(value) is int and value == 1):
        return True
    return isinstance(value, str) and value.strip().lower() in ("true", "1", "yes")
