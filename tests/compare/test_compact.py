"""Dictionary-encoded inputs (``compare.frames.compact``): the same values, and the same comparison, as plain ones."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pyarrow as pa
import pytest

from compare.alignment import AsOfOutsideSchedule, legacy_cells
from compare.comparison import compare_inputs
from compare.frames import EventFrame, SegmentCodec, UserIndex, compact, decoded, dictionary_parts
from compare.inputs import ComparisonInputs, DeadLetters, Schedule
from compare.reach import build_reach
from segments.lateness import GateParams
from segments.rules import load_ruleset

T0 = 1_704_067_200_000
MIN = 60_000
CLICK = load_ruleset("clickstream")
LISTS = pa.list_(pa.string())


def _lists(rng: random.Random, rows: int, names: list[str]) -> pa.Array:
    return pa.array(
        [None if rng.random() < 0.1 else [rng.choice(names) for _ in range(rng.randint(0, 3))] for _ in range(rows)],
        LISTS,
    )


def _plain(table: pa.Table) -> pa.Table:
    return pa.table({name: decoded(table.column(name)) for name in table.column_names})


@pytest.mark.parametrize("seed", range(40))
def test_compact_keeps_every_value_and_encodes_each_distinct_once(seed: int) -> None:
    """Lists that differ only in order, repeats or null-versus-empty stay apart; each distinct list is stored once."""
    rng = random.Random(seed)
    lists = _lists(rng, rng.randint(0, 40), ["a", "b", "c"]).slice(rng.randint(0, 3))
    ids = pa.array([rng.choice("xyz") for _ in range(len(lists))], pa.string())
    table = pa.table({"user_id": ids, "segments": lists, "other": pa.array(range(len(lists)))})
    small = compact(table)
    assert small.to_pylist() == table.to_pylist()
    assert _plain(small).equals(table)
    for name in ("user_id", "segments"):
        assert pa.types.is_dictionary(small.column(name).type)
        values = small.column(name).chunk(0).dictionary.to_pylist()
        assert len({repr(v) for v in values}) == len(values)
    assert compact(small).equals(small)  # already compact: unchanged
    apart = pa.table({"segments": pa.array([["a", "b"], ["b", "a"], ["a", "a"], ["a"], [], None], LISTS)})
    assert compact(apart).column("segments").chunk(0).indices.to_pylist() == [0, 1, 2, 3, 4, None]


@pytest.mark.parametrize("seed", range(40))
def test_user_codes_and_masks_are_those_of_the_decoded_columns(seed: int) -> None:
    """``UserIndex`` (codes in first-seen order across columns) and ``SegmentCodec`` (names outside the rule set,
    but only those some row lists) give the same from dictionary columns as from their values."""
    rng = random.Random(seed)
    ids = [f"u{i}" for i in range(8)]
    users = [pa.array([rng.choice(ids) for _ in range(rng.randint(0, 20))], pa.string()) for _ in range(3)]
    coded = [u.dictionary_encode() if rng.random() < 0.7 else u for u in users]
    if rng.random() < 0.5:  # a dictionary in an order of its own, with values no row uses
        codes = pa.array([ids[::-1].index(v) for v in users[0].to_pylist()], pa.int32())
        coded[0] = pa.DictionaryArray.from_arrays(codes, pa.array(ids[::-1]))
    plain_index, plain_codes = UserIndex.build(users)
    index, codes_ = UserIndex.build(coded)
    assert index.names.to_pylist() == plain_index.names.to_pylist()
    assert [c.tolist() for c in codes_] == [c.tolist() for c in plain_codes]

    names = [*CLICK.segment_names, "extra"]
    lists = [_lists(rng, rng.randint(0, 15), names) for _ in range(2)]
    small = [compact(pa.table({"segments": s})).column("segments") for s in lists]
    unused_list = pa.array([["high_value"], ["unlisted"]], LISTS)  # the second list no row uses
    unused = pa.DictionaryArray.from_arrays(pa.array([0, 0], pa.int8()), unused_list)
    plain_codec, plain_masks = SegmentCodec.encode_all(CLICK, [*lists, unused.dictionary_decode()])
    codec, masks = SegmentCodec.encode_all(CLICK, [*small, unused])
    assert codec == plain_codec and "unlisted" not in codec.names
    assert [m.tolist() for m in masks] == [m.tolist() for m in plain_masks]


def test_dictionary_as_ofs_outside_the_schedule_name_the_first_such_line() -> None:
    schedule = np.array([T0 + 5 * MIN, T0 + 10 * MIN], dtype=np.int64)
    as_of = np.array([T0 + 5 * MIN, T0 + 7 * MIN, T0 + 10 * MIN, T0 + 9 * MIN], dtype=np.int64)
    user = np.arange(4, dtype=np.int32)
    mask = np.ones(4, dtype=np.uint8)
    parts = dictionary_parts(pa.array(as_of).dictionary_encode())
    assert parts is not None
    values = (parts[0], parts[1].to_numpy())
    with pytest.raises(AsOfOutsideSchedule) as caught:
        legacy_cells(schedule, values, user, mask)
    assert caught.value.as_of == T0 + 7 * MIN
    kept = legacy_cells(schedule, values, user, mask, drop_outside=True)
    plain = legacy_cells(schedule, as_of, user, mask, drop_outside=True)
    assert kept.key.tolist() == plain.key.tolist() == [0, 5] and kept.outside == plain.outside == 2


def _inputs(seed: int) -> ComparisonInputs:
    """A small seeded comparison: a stream of transitions (some revised), legacy as-ofs sampled from it with
    some lines altered, and events behind them (some dropped as too late)."""
    rng = np.random.default_rng(seed)
    users, as_ofs = 30, 12
    names = pa.array([f"u{i}" for i in range(users)])
    sets = pa.array([[], ["high_value"], ["window_shopper"], ["high_value", "window_shopper"]], LISTS)
    schedule = T0 + 5 * MIN * np.arange(1, as_ofs + 1, dtype=np.int64)
    n = 200
    tu = rng.integers(0, users, n)
    eff = T0 + MIN * rng.integers(0, as_ofs * 5, n)  # whole minutes: some rows share (user, time), revisions decide
    stream = pa.table({
        "user_id": names.take(pa.array(tu)),
        "segments": sets.take(pa.array(rng.integers(0, 4, n))),
        "effective_time": pa.array(eff),
        "revision": pa.array(rng.integers(1, 3, n)),
        "emitted_at": pa.array(eff + rng.integers(1, 20, n)),
        "cause": pa.array(rng.choice(["event", "expiry", "correction"], n).tolist()),
    })
    cells = rng.random((users, as_ofs)) < 0.6
    lu, lk = np.nonzero(cells)
    legacy = pa.table({
        "as_of": pa.array(schedule[lk]),
        "user_id": names.take(pa.array(lu)),
        "segments": sets.take(pa.array(rng.integers(1, 4, len(lu)))),
    })
    m = 400
    times = T0 + rng.integers(-10 * MIN, as_ofs * 5 * MIN, m)
    frame = EventFrame(
        event_id=pa.array([f"e{i}" for i in range(m)]),
        user_id=names.take(pa.array(rng.integers(0, users, m))),
        kind=pa.array(rng.choice(["view", "purchase", "other"], m).tolist()),
        event_time=times,
        arrival_time=times + rng.integers(0, 8 * MIN, m),
        too_late=rng.random(m) < 0.2,
        relevant=rng.random(m) < 0.9,
        fraud=np.zeros(m, dtype=np.bool_),
        labelled=False,
    )
    return ComparisonInputs(
        ruleset=CLICK,
        events_sha256="0" * 64,
        events=frame,
        schedule=Schedule(schedule, np.zeros(as_ofs), 5 * MIN, False),
        params=GateParams(),
        legacy=legacy,
        stream=stream,
        dead_letters=DeadLetters(frozenset(), 0, "test"),
    )


@pytest.mark.parametrize("seed", range(6))
def test_a_comparison_of_compact_inputs_is_the_comparison_of_plain_ones(seed: int) -> None:
    """Every figure, every mismatch record and the sketch evidence (reach by minute and hour, HLLs byte for byte)."""
    plain = _inputs(seed)
    frame = plain.events
    small = dataclasses.replace(
        plain,
        legacy=compact(plain.legacy),
        stream=compact(plain.stream),
        events=dataclasses.replace(
            frame, user_id=frame.user_id.dictionary_encode(), kind=frame.kind.dictionary_encode()
        ),
    )
    assert pa.types.is_dictionary(small.legacy.column("as_of").type)
    assert pa.types.is_dictionary(small.stream.column("revision").type)
    results = []
    for inputs in (plain, small):
        comparison = compare_inputs(inputs, clock=lambda: T0, parallel=bool(seed % 2))
        data = comparison.result.to_dict()
        data["latency"] = {side: (v["count"], v["max_ms"]) for side, v in data["latency"].items()}
        assert comparison.sketches is not None
        results.append((data, list(comparison.mismatches.records()), comparison.sketches.to_dict()))
    assert results[0][0]["mismatch"] > 0
    assert results[1] == results[0]
    horizon = int(plain.schedule.times[-1])
    assert build_reach(small.legacy, small.stream, horizon).to_dict() == build_reach(
        plain.legacy, plain.stream, horizon
    ).to_dict()


def test_reach_feeds_a_dictionary_sides_users_in_the_order_they_first_appear() -> None:
    """A minute's HLL depends on the order its members are fed (first-seen order in the side's rows); a
    dictionary listing the ids in another order must not change it (thousands of users: past list mode)."""
    rng = np.random.default_rng(5)
    users = 6000
    order = rng.permutation(users)
    ids = pa.array([f"user-{i}" for i in range(users)])
    sets = pa.array([["high_value"], ["high_value", "window_shopper"]], LISTS)
    picks = rng.integers(0, 2, users)
    plain = pa.table({
        "as_of": pa.array(np.full(users, T0 + 5 * MIN, dtype=np.int64)),
        "user_id": ids.take(pa.array(order)),
        "segments": sets.take(pa.array(picks)),
    })
    coded = plain.set_column(1, "user_id", pa.DictionaryArray.from_arrays(pa.array(order.astype(np.int32)), ids))
    coded = coded.set_column(2, "segments", pa.DictionaryArray.from_arrays(pa.array(picks.astype(np.int8)), sets))
    stream = pa.table({
        "user_id": ids.take(pa.array(order)),
        "segments": sets.take(pa.array(picks)),
        "effective_time": pa.array(np.full(users, T0 + 30_000, dtype=np.int64)),
        "revision": pa.array(np.ones(users, dtype=np.int64)),
    })
    coded_stream = stream.set_column(0, "user_id", coded.column("user_id"))
    coded_stream = coded_stream.set_column(1, "segments", coded.column("segments"))
    expected = build_reach(plain, stream, T0 + 5 * MIN).to_dict()
    assert build_reach(coded, coded_stream, T0 + 5 * MIN).to_dict() == expected
    assert max(row["exact"] for row in expected["series"]) > 2 * 2048
