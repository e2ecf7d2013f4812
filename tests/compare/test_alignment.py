"""Alignment against an oracle built on ``segments.outputs.Timeline``: pairs, agreement, settled timelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compare.alignment import (
    DuplicateCell,
    align,
    as_of_index,
    first_at_or_after,
    legacy_cells,
    settle,
    stream_cells,
)
from compare.comparison import run_comparison
from compare.frames import SegmentCodec, UserIndex, legacy_table, stream_table
from compare.keys import KeySpace, SortedRows
from segments.outputs import Assignment, Transition, timelines
from segments.rules import load_ruleset
from tests.compare.builders import MIN, T0, event, write_events, write_legacy, write_stream

CLICK = load_ruleset("clickstream")
NAMES = ["high_value", "window_shopper", "not_in_the_rule_set"]
SCHEDULE = [T0 + k * 5 * MIN for k in range(1, 5)]

_segments = st.frozensets(st.sampled_from(NAMES))
_legacy = st.dictionaries(
    st.tuples(st.sampled_from(SCHEDULE), st.sampled_from(["a", "b", "c", "ü"])),
    _segments.filter(bool),
    max_size=12,
)
_stream = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        _segments,
        st.integers(T0, T0 + 25 * MIN),
        st.integers(1, 3),
    ),
    max_size=20,
)


def _engine(
    assignments: list[Assignment],
    transitions: list[Transition],
    dense_bytes: int,
    packed: bool = True,
    as_spans: bool = True,
) -> set[tuple[int, str, frozenset[str], frozenset[str]]]:
    legacy, stream = legacy_table(assignments), stream_table(transitions)
    users, (lu, su) = UserIndex.build([legacy.column("user_id"), stream.column("user_id")])
    codec = SegmentCodec.for_outputs(CLICK, [legacy.column("segments"), stream.column("segments")])
    schedule = np.array(SCHEDULE, dtype=np.int64)
    left = legacy_cells(schedule, legacy.column("as_of").to_numpy(), lu, codec.masks(legacy.column("segments")))
    effective = stream.column("effective_time").to_numpy()
    space = KeySpace.of(len(users), [effective]) if packed else None
    spans = settle(
        SortedRows.of(su, effective, space),
        stream.column("revision").to_numpy(),
        codec.masks(stream.column("segments")),
    )
    right = spans if as_spans else stream_cells(schedule, spans)
    pairing = align(schedule, left, right, len(users), codec.dtype, dense_bytes)
    user, as_idx, left_masks, right_masks = pairing.all_pairs()
    got = {
        (SCHEDULE[a], users.name(u), frozenset(codec.decode(lm)), frozenset(codec.decode(rm)))
        for u, a, lm, rm in zip(user.tolist(), as_idx.tolist(), left_masks.tolist(), right_masks.tolist(), strict=True)
    }
    assert len(got) == pairing.pairs
    return got


def _oracle(
    assignments: list[Assignment], transitions: list[Transition]
) -> set[tuple[int, str, frozenset[str], frozenset[str]]]:
    lines = {(a.as_of, a.user_id): frozenset(a.segments) for a in assignments}
    settled = timelines(transitions)
    out = set()
    for t in SCHEDULE:
        for user in {u for (_, u) in lines} | set(settled):
            left = lines.get((t, user), frozenset())
            right = settled[user].at(t) if user in settled else frozenset()
            if left or right:
                out.add((t, user, left, right))
    return out


def _transitions(rows: list[tuple[str, frozenset[str], int, int]]) -> list[Transition]:
    return [Transition(u, tuple(sorted(s)), e, r, e, "event") for u, s, e, r in rows]


@pytest.mark.parametrize(
    ("dense_bytes", "packed", "as_spans"),
    [(1 << 30, True, True), (1 << 30, True, False), (0, True, True), (1 << 30, False, True)],
    ids=["dense-timelines", "dense-cells", "sorted", "lexsort"],
)
@settings(max_examples=120, deadline=None)
@given(legacy=_legacy, stream=_stream)
def test_pairs_equal_the_timeline_oracle(
    dense_bytes: int, packed: bool, as_spans: bool, legacy: dict, stream: list
) -> None:
    """Pairs are the users non-empty on either side at each as-of, the stream read from its settled timeline;
    agree + mismatch = pairs."""
    assignments = [Assignment(t, u, tuple(sorted(s))) for (t, u), s in legacy.items()]
    transitions = _transitions(stream)
    got = _engine(assignments, transitions, dense_bytes, packed, as_spans)
    assert got == _oracle(assignments, transitions)
    agree = sum(1 for _, _, left, right in got if left == right)
    assert agree + sum(1 for _, _, left, right in got if left != right) == len(got)


@settings(max_examples=80, deadline=None)
@given(legacy=_legacy, offsets=st.lists(st.integers(0, 5 * MIN - 1), min_size=64, max_size=64))
def test_identical_inputs_give_no_mismatch(legacy: dict, offsets: list[int]) -> None:
    """A stream whose timeline holds legacy's set at every as-of (set some time in the 5 minutes before it,
    emptied when legacy has none) agrees on every pair."""
    assignments = [Assignment(t, u, tuple(sorted(s))) for (t, u), s in legacy.items()]
    users = sorted({u for _, u in legacy})
    rows = []
    for i, user in enumerate(users):
        for k, t in enumerate(SCHEDULE):
            value = legacy.get((t, user), frozenset())
            rows.append((user, value, t - offsets[(i * len(SCHEDULE) + k) % len(offsets)], 1))
    got = _engine(assignments, _transitions(rows), 1 << 30)
    assert len(got) == len(assignments)
    assert all(left == right for _, _, left, right in got)


def test_highest_revision_wins_whatever_the_order() -> None:
    """Per (user, effective time) the highest revision wins, even when it comes first in the file."""
    user = np.array([0, 0, 0, 0], dtype=np.int32)
    times = np.array([5, 5, 5, 5])
    for space in (KeySpace.of(1, [times]), None):
        rows = SortedRows.of(user, times, space)
        spans = settle(rows, np.array([2, 3, 1, 3]), np.array([4, 1, 2, 8], dtype=np.uint8))
        assert spans.mask.tolist() == [1]  # revision 3 twice: the first in the input wins


def test_two_lines_for_one_pair_are_refused() -> None:
    """A legacy output with two lines for one user at one as-of is not a snapshot."""
    schedule = np.array(SCHEDULE, dtype=np.int64)
    left = legacy_cells(schedule, np.array([SCHEDULE[0]] * 2), np.array([0, 0]), np.array([1, 2], dtype=np.uint8))
    right = legacy_cells(schedule, np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.zeros(0, np.uint8))
    for dense_bytes in (1 << 30, 0):
        with pytest.raises(DuplicateCell):
            align(schedule, left, right, 1, np.dtype(np.uint8), dense_bytes)


def test_unknown_segment_names_are_compared_not_dropped() -> None:
    """A name the rule set does not define still counts (it is a difference, not noise)."""
    codec = SegmentCodec.for_outputs(CLICK, [pa.chunked_array([[["zeta", "high_value"], ["alpha"]]])])
    assert codec.names == ("high_value", "window_shopper", "alpha", "zeta")
    assert codec.masks(pa.array([["zeta", "zeta"], [], None], pa.list_(pa.string()))).tolist() == [8, 0, 0]


def test_identical_outputs_give_parity(tmp_path: Path) -> None:
    """The same sets on both sides: verdict parity, every pair agrees."""
    events = write_events(
        tmp_path / "events.jsonl", [event(f"v{i}", "u", T0 + (6 + i) * 60_000) for i in range(3)]
    )
    ws = ["window_shopper"]
    legacy = write_legacy(tmp_path / "legacy.jsonl", [(T0 + 10 * MIN, "u", ws)], events, CLICK)
    stream = write_stream(
        tmp_path / "stream.jsonl",
        [("u", ws, T0 + 8 * MIN, 1, T0 + 8 * MIN, "event"), ("u", [], T0 + 16 * MIN, 1, T0 + 16 * MIN, "expiry")],
        events,
        CLICK,
    )
    result = run_comparison(events, legacy, stream, CLICK)
    assert (result.pairs, result.agree, result.mismatch, result.verdict) == (1, 1, 0, "parity")


@settings(max_examples=200, deadline=None)
@given(
    first=st.integers(0, 10**13),
    step=st.integers(1, 10**7),
    n=st.integers(1, 30),
    offsets=st.lists(st.integers(-(10**8), 10**9), max_size=30),
    extremes=st.booleans(),
)
def test_schedule_lookup_by_arithmetic_equals_searchsorted(
    first: int, step: int, n: int, offsets: list[int], extremes: bool
) -> None:
    """For an evenly spaced schedule the arithmetic lookup is exactly ``searchsorted``, up to int64 max."""
    schedule = first + step * np.arange(n, dtype=np.int64)
    times = np.array([first + o for o in offsets] + ([0, np.iinfo(np.int64).max] if extremes else []), np.int64)
    assert first_at_or_after(schedule, times).tolist() == np.searchsorted(schedule, times).tolist()
    _, found = as_of_index(schedule, times)
    assert found.tolist() == [bool(t in set(schedule.tolist())) for t in times.tolist()]
