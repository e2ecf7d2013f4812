"""The comparator's columnar inputs: segment sets as bitmasks, users as integer codes, events as columns.

The bulk comparison never touches a Python object per pair. Each side arrives as
an Arrow table (the schemas below, what the readers in ``compare.inputs`` build);
segment sets become bitmasks (``SegmentCodec``), user ids become small integer
codes shared by every table of one comparison (``UserIndex``), and the event log
becomes numpy columns (``EventFrame``).

The readers hand ``as_of``, ``user_id``, ``segments``, ``revision`` and ``cause``
over dictionary-encoded (``compact``): the same values, held as integer codes into
the distinct ones (a side repeats a few hundred as-ofs, a few hundred thousand ids,
a handful of sets and of revisions over millions of lines). Everything here takes
a column either way and gives the same result; with dictionaries the work is over
the codes and the few distinct values.
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
COMPACT_COLUMNS = ("as_of", "user_id", "segments", "revision", "cause")
"""The columns ``compact`` dictionary-encodes (those that exist in a table)."""


def compact(table: pa.Table) -> pa.Table:
    """``table`` with its ``COMPACT_COLUMNS`` dictionary-encoded: the same values (``to_pylist``, ``equals``
    of two compacted tables), each distinct value held once. A list column is encoded by its lists' exact
    contents (order, repeats, null or empty all kept apart)."""
    for name in COMPACT_COLUMNS:
        if name not in table.column_names:
            continue
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            continue
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        encoded = _encode_lists(array) if pa.types.is_list(array.type) else _narrow(pc.dictionary_encode(array))
        if encoded is not None:
            table = table.set_column(table.column_names.index(name), name, encoded)
    return table


def _narrow(encoded: pa.DictionaryArray) -> pa.DictionaryArray:
    """``encoded`` with the narrowest signed index type that holds its codes (a few as-ofs: one byte a row)."""
    size = len(encoded.dictionary)
    index_type = pa.int8() if size <= 127 else pa.int16() if size <= 32767 else pa.int32()
    if index_type == encoded.indices.type:
        return encoded
    return pa.DictionaryArray.from_arrays(encoded.indices.cast(index_type), encoded.dictionary)


def _encode_lists(lists: pa.Array) -> pa.Array | None:
    """A list<string> array as a dictionary of its distinct lists (first-seen order); None when a name is
    null or the lists are too long to key in one int64 (then it stays as it is)."""
    n = len(lists)
    offsets = np.asarray(lists.offsets)
    flat = lists.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])) if n else lists.flatten()
    if flat.null_count:
        return None
    names = pc.dictionary_encode(flat)
    radix = len(names.dictionary) + 1
    lengths = np.diff(offsets)
    longest = int(lengths.max(initial=0))
    if radix**longest >= 1 << 62:
        return None
    # key: the list's name codes + 1 as the digits of a base-``radix`` number (digits 1..radix-1, so lists
    # of different contents, order or length never share a key; an empty list is 0)
    digits = names.indices.to_numpy(zero_copy_only=False).astype(np.int64) + 1
    place = np.arange(len(digits), dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], lengths)
    digits *= np.int64(radix) ** place
    key = np.add.reduceat(np.append(digits, 0), offsets[:-1] - offsets[0]) if n else np.zeros(0, np.int64)
    key[lengths == 0] = 0
    null = np.asarray(lists.is_null()) if lists.null_count else None
    indices = pc.dictionary_encode(pa.array(key, mask=null)).indices
    codes = pc.fill_null(indices, -1).to_numpy(zero_copy_only=False) if null is not None else indices.to_numpy()
    top = np.maximum.accumulate(codes)
    first = np.flatnonzero(np.diff(top, prepend=-1) > 0)  # a code's first row: where the running maximum rises
    small = next(t for t in (np.int8, np.int16, np.int32, np.int64) if len(first) <= np.iinfo(t).max)
    distinct = lists.take(pa.array(first, pa.int64()))
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(small), mask=null), distinct)


def dictionary_parts(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array] | None:
    """(codes, distinct values) of a dictionary column with one dictionary whose values are distinct (a
    null row's code is -1; codes are signed, of the column's index width); None for any other column
    (callers then read its values)."""
    if not pa.types.is_dictionary(column.type):
        return None
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks != 1:
            return None
        column = column.chunk(0)
    assert isinstance(column, pa.DictionaryArray)
    dictionary = column.dictionary
    if not pa.types.is_list(dictionary.type) and (
        dictionary.null_count or len(pc.unique(dictionary)) != len(dictionary)
    ):
        return None
    indices = column.indices
    if indices.null_count:
        indices = pc.fill_null(indices, -1)
    codes = indices.to_numpy(zero_copy_only=False)  # as narrow as they came (a few as-ofs: one byte a row)
    return (codes if codes.dtype.kind == "i" else codes.astype(np.int64)), dictionary


def decoded(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """``column``'s values as a plain column (a dictionary column decoded; any other as it is)."""
    if not pa.types.is_dictionary(column.type):
        return column
    if isinstance(column, pa.ChunkedArray):
        return pa.chunked_array([c.dictionary_decode() for c in column.chunks], column.type.value_type)
    assert isinstance(column, pa.DictionaryArray)
    return column.dictionary_decode()


def legacy_table(assignments: Iterable[Assignment]) -> pa.Table:
    """Assignments (``segments.outputs.read_assignments``) as a ``LEGACY_SCHEMA`` table, ``compact``."""
    rows = list(assignments)
    return compact(
        pa.table(
            {
                "as_of": pa.array([a.as_of for a in rows], pa.int64()),
                "user_id": pa.array([a.user_id for a in rows], pa.string()),
                "segments": pa.array([list(a.segments) for a in rows], pa.list_(pa.string())),
            },
            schema=LEGACY_SCHEMA,
        )
    )


def stream_table(transitions: Iterable[Transition]) -> pa.Table:
    """Transitions (``segments.outputs.read_transitions``) as a ``STREAM_SCHEMA`` table, ``compact``."""
    rows = list(transitions)
    return compact(
        pa.table(
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
        return cls.encode_all(ruleset, lists)[0]

    @classmethod
    def encode_all(
        cls, ruleset: RuleSet, lists: Sequence[pa.ChunkedArray | pa.Array]
    ) -> tuple[SegmentCodec, list[np.ndarray]]:
        """``for_outputs`` and every column's masks, in one pass over the names when all are the rule set's."""
        codec = cls(ruleset.segment_names)
        results = [codec._masks(column) for column in lists]
        if all(complete for _, complete in results):
            return codec, [masks for masks, _ in results]
        known = pa.array(codec.names, pa.string())
        extra: set[str] = set()
        for column in lists:
            flat = _listed(column)
            unknown = flat.filter(pc.invert(pc.fill_null(pc.is_in(flat, value_set=known), True)))
            extra.update(v for v in pc.unique(unknown).to_pylist() if v is not None)
        codec = cls(codec.names + tuple(sorted(extra)))
        return codec, [codec._masks(column)[0] for column in lists]

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
        """One mask per list (a set: repeated names count once; an empty or null list is 0).

        Names that are not in the codec are ignored here; ``encode_all`` finds them first.
        """
        return self._masks(lists)[0]

    def _masks(self, lists: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, bool]:
        """(masks, whether every name in ``lists`` is one of the codec's)."""
        chunks = lists.chunks if isinstance(lists, pa.ChunkedArray) else [lists]
        parts = [self._chunk_masks(chunk) for chunk in chunks]
        masks = np.concatenate([m for m, _ in parts]) if parts else np.zeros(0, dtype=self.dtype)
        return masks, all(complete for _, complete in parts)

    def _chunk_masks(self, array: pa.Array) -> tuple[np.ndarray, bool]:
        if isinstance(array, pa.DictionaryArray):
            # the masks of the distinct lists the rows use, taken by the rows' codes
            codes, used, where = _used(array)
            masks, complete = self._chunk_masks(array.dictionary.take(pa.array(used)))
            return np.append(masks, self.dtype.type(0)).take(where.take(codes)), complete
        rows = len(array)
        offsets = np.asarray(array.offsets)
        # the values the offsets point at (``flatten`` would leave out those under null lists)
        flat = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])) if rows else array.flatten()
        bits = np.zeros(len(flat), dtype=self.dtype)
        for i, name in enumerate(self.names):
            equal = pc.equal(flat, name)
            if equal.null_count:
                equal = pc.fill_null(equal, False)
            hit = equal.to_numpy(zero_copy_only=False)
            np.bitwise_or(bits, hit.astype(self.dtype) << self.dtype.type(i), out=bits)
        complete = bool(np.all(bits != 0))
        if rows == 0:
            return np.zeros(0, dtype=self.dtype), complete
        starts = offsets[:-1] - offsets[0]
        empty = offsets[1:] == offsets[:-1]
        if array.null_count:
            empty |= np.asarray(array.is_null())
        padded = np.append(bits, self.dtype.type(0))
        out = np.bitwise_or.reduceat(padded, np.minimum(starts, len(bits)))
        out[empty] = 0
        return out.astype(self.dtype, copy=False), complete


def _used(array: pa.DictionaryArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(each row's code, -1 for null; the dictionary positions some row uses, ascending; each dictionary
    position's place among those, and at the end, for a null row, their count)."""
    indices = array.indices
    codes = (pc.fill_null(indices, -1) if indices.null_count else indices).to_numpy(zero_copy_only=False)
    seen = np.zeros(len(array.dictionary) + 1, dtype=np.bool_)
    seen[codes] = True  # a null row marks the extra last slot
    used = np.flatnonzero(seen[:-1])
    where = np.zeros(len(seen), dtype=np.int64)
    where[used] = np.arange(len(used))
    where[-1] = len(used)  # a null row (code -1): one past the used lists
    return codes, used, where


def _listed(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Every name the rows of a list column list (of a dictionary column: those of the lists some row uses)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if not chunks or not any(isinstance(c, pa.DictionaryArray) for c in chunks):
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        return pc.list_flatten(array)
    parts = [
        pc.list_flatten(c.dictionary.take(pa.array(_used(c)[1])) if isinstance(c, pa.DictionaryArray) else c)
        for c in chunks
    ]
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


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
        """One index over every column, and each column's codes (int32, one per row).

        The first column is dictionary-encoded; the others are looked up in the
        ids found so far (a hash probe, cheaper than encoding), new ids appended.
        """
        names = pa.array([], pa.string())
        codes = []
        for column in columns:
            parts = dictionary_parts(column)
            array = column if parts is not None and parts[1].type == names.type else decoded(column)
            if array.null_count:
                raise InputError("a user_id is missing")
            if array is column and parts is not None:
                names, found = _index_codes(names, *parts)
                codes.append(found)
                continue
            if len(names) == 0 and len(array):
                whole = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
                encoded = pc.dictionary_encode(whole)
                names = encoded.dictionary
                codes.append(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False))
                continue
            found = pc.index_in(array, value_set=names)
            if found.null_count:
                unseen = pc.unique(array.filter(pc.is_null(found)))
                names = pa.concat_arrays([names, unseen])
                found = pc.index_in(array, value_set=names)
            codes.append(found.to_numpy().astype(np.int32, copy=False))
        return cls(names), codes


def _index_codes(names: pa.Array, codes: np.ndarray, values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """``UserIndex.build``'s step for a dictionary column (``codes`` into distinct ``values``): the same
    names and codes as for its decoded values, from a lookup of the values alone and a gather per row."""
    if len(names) == 0 and len(codes):
        encoded = pc.dictionary_encode(pa.array(codes))  # the values in first-seen order, as the plain path
        found = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        return values.take(encoded.dictionary), found
    lookup = pc.index_in(values, value_set=names)
    if lookup.null_count:
        position = pc.fill_null(lookup, -1).to_numpy(zero_copy_only=False)
        per_row = position.take(codes)
        unseen = pc.unique(pa.array(codes[per_row < 0]))  # their first-seen order, as the plain path
        if len(unseen):
            names = pa.concat_arrays([names, values.take(unseen)])
            lookup = pc.index_in(values, value_set=names)
        else:
            return names, per_row.astype(np.int32, copy=False)
    position = lookup.to_numpy(zero_copy_only=False) if not lookup.null_count else pc.fill_null(lookup, -1).to_numpy()
    return names, position.astype(np.int32).take(codes)


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
            user_id=pa.array([e.user_id for e in events], pa.string()).dictionary_encode(),
            kind=pa.array([e.kind for e in events], pa.string()).dictionary_encode(),
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
