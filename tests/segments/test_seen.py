"""SeenIds, the dedup's set of ids as digests: it must answer exactly as a set of the ids would."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

import segments.seen as seen_module
from segments.seen import MAX_LOAD, MIN_CAPACITY, MOVE_SLOTS, RESERVED_LOAD, TAIL, SeenIds, digest, home

ids = st.text(min_size=0, max_size=12)  # any text: empty, non-ASCII, lone surrogates


@contextmanager
def tiny_tables() -> Iterator[None]:
    """Tables of 4 slots, a tail of 2, one slot moved an add: a few dozen ids grow the table many times, runs
    often reach the end, and a move lasts several adds."""
    with (
        mock.patch.object(seen_module, "MIN_CAPACITY", 4),
        mock.patch.object(seen_module, "TAIL", 2),
        mock.patch.object(seen_module, "MOVE_SLOTS", 1),
    ):
        yield


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(ids, st.sampled_from(["add", "add", "add", "ask", "pickle"])), max_size=300))
def test_answers_as_a_set_of_the_ids_does_while_growing(steps: list[tuple[str, str]]) -> None:
    """Adds, questions and pickle round trips, on tables small enough to grow (and move) all the time."""
    with tiny_tables():
        seen = SeenIds()
        oracle: set[str] = set()
        for event_id, action in steps:
            if action == "add":
                assert seen.add_if_new(event_id) is (event_id not in oracle)
                oracle.add(event_id)
            elif action == "ask":
                assert (event_id in seen) is (event_id in oracle)
            else:
                seen = pickle.loads(pickle.dumps(seen))
            assert len(seen) == len(oracle)
        assert all(event_id in seen for event_id in oracle)
        assert not any(seen.add_if_new(event_id) for event_id in oracle)


def test_growing_moves_the_old_table_a_few_slots_an_add_and_loses_nothing() -> None:
    seen = SeenIds()
    added = [f"evt-{i}" for i in range(int(MIN_CAPACITY * MAX_LOAD))]
    for event_id in added:
        assert seen.add_if_new(event_id)
    assert seen._old is None
    assert seen.add_if_new("one more")  # past 70%: a table twice the size takes the new ids
    assert seen._old is not None and seen._cursor == 0
    moves = 0
    while seen._old is not None:
        cursor = seen._cursor
        assert seen.add_if_new(f"later-{moves}")
        assert seen._old is None or seen._cursor == cursor + MOVE_SLOTS, "each add moves MOVE_SLOTS slots"
        moves += 1
        assert all(event_id in seen for event_id in added[::50])  # asked of both tables meanwhile
    assert moves == -(-(MIN_CAPACITY + TAIL) // MOVE_SLOTS)
    everything = [*added, "one more", *(f"later-{k}" for k in range(moves))]
    assert all(event_id in seen for event_id in everything)
    assert not any(seen.add_if_new(event_id) for event_id in everything)
    assert "never added" not in seen


def test_a_set_pickled_while_it_moves_keeps_the_ids_not_moved_yet() -> None:
    seen = SeenIds()
    added = [f"p{i}" for i in range(int(MIN_CAPACITY * MAX_LOAD) + 1)]
    for event_id in added:
        seen.add_if_new(event_id)
    assert seen._old is not None and seen._cursor == 0, "the move has just begun"
    copy = pickle.loads(pickle.dumps(seen))
    assert len(copy) == len(added)
    assert all(event_id in copy for event_id in added)
    assert not any(copy.add_if_new(event_id) for event_id in added)
    assert all(event_id in seen for event_id in added), "pickling the original changed nothing it answers"


def test_a_large_set_stays_within_its_load_and_its_bytes() -> None:
    seen = SeenIds()
    added = [f"evt-{i}" for i in range(40 * MIN_CAPACITY)]  # five doublings
    for event_id in added:
        assert seen.add_if_new(event_id)
    assert all(event_id in seen for event_id in added)
    assert f"evt-{len(added)}" not in seen
    settled = pickle.loads(pickle.dumps(seen))  # a pickle finishes any move under way
    assert settled._old is None
    slots = settled.nbytes // 12
    assert MAX_LOAD * (slots - TAIL) / 2 <= len(settled) <= MAX_LOAD * (slots - TAIL)
    assert settled.nbytes / len(settled) < 35  # 12 bytes a slot, filled to 35-70%


def test_a_run_reaching_the_end_of_the_table_grows_it_and_loses_nothing() -> None:
    # ids whose digests all want the last home slots of the smallest table: their run must spill into the
    # tail and, before it reaches the end, make the table grow
    last = MIN_CAPACITY - 1
    crowd = [f"c{i}" for i in range(200_000) if home(digest(f"c{i}")[0], MIN_CAPACITY) >= last - 2][: TAIL + 8]
    assert len(crowd) == TAIL + 8
    seen = SeenIds()
    for event_id in crowd:
        assert seen.add_if_new(event_id)
    assert seen.nbytes > 12 * (MIN_CAPACITY + TAIL)
    assert all(event_id in seen for event_id in crowd)
    assert not any(seen.add_if_new(event_id) for event_id in crowd)


def test_a_run_reaching_the_end_while_moving_rebuilds_both_tables_at_once() -> None:
    """The rare path: the new table's run reaches its end before the old one is moved; nothing is lost."""
    rebuilds = 0
    rebuild = SeenIds._rebuild

    def counted(self: SeenIds) -> None:
        nonlocal rebuilds
        rebuilds += 1
        rebuild(self)

    with tiny_tables(), mock.patch.object(SeenIds, "_rebuild", counted):
        seen = SeenIds()
        added: list[str] = []
        candidates = (f"r{i}" for i in range(10**7))
        while rebuilds == 0:  # every id wants the last two home slots of the table of the moment
            assert len(added) < 40, "the crowd never made a move reach the end"
            event_id = next(e for e in candidates if home(digest(e)[0], seen._size) >= seen._size - 2)
            assert seen.add_if_new(event_id)
            added.append(event_id)
        for event_id in (f"after-{i}" for i in range(200)):
            assert seen.add_if_new(event_id)
            added.append(event_id)
        assert all(event_id in seen for event_id in added)
        assert not any(seen.add_if_new(event_id) for event_id in added)


def test_non_strings_are_not_members() -> None:
    seen = SeenIds()
    seen.add_if_new("1")
    assert 1 not in seen


def test_a_reserved_set_takes_that_many_ids_without_growing() -> None:
    seen = SeenIds()
    seen.reserve(50_000)
    size = seen.nbytes
    added = [f"v{i}" for i in range(50_000)]
    for event_id in added:
        assert seen.add_if_new(event_id)
    assert seen.nbytes == size and seen._old is None, "no growth"
    assert all(event_id in seen for event_id in added)
    seen.reserve(10**6)  # not empty any more: nothing changes
    assert seen.nbytes == size and all(event_id in seen for event_id in added[::100])


def test_a_reserved_table_is_the_size_its_count_needs_not_the_next_power_of_two() -> None:
    """12M ids at half load need 24M slots: 2^25 (403 MB) when tables were powers of two, 24M (288 MB) now."""
    for count in (50_000, 1_000_000, 12_000_000):
        seen = SeenIds()
        seen.reserve(count)
        slots = seen.nbytes // 12 - TAIL
        assert count / slots <= RESERVED_LOAD < (count + 1) / slots, f"{count}: {slots} slots"


def test_homes_follow_the_digests_order_and_cover_the_table() -> None:
    size = 1_000_003  # not a power of two
    highs = sorted(digest(f"h{i}")[0] for i in range(20_000))
    homes = [home(high, size) for high in highs]
    assert homes == sorted(homes) and homes[0] >= 0 and homes[-1] < size
    assert homes[0] < size // 100 and homes[-1] > size - size // 100  # spread over the whole table
    assert home(2**64 - 1, size) == size - 1 and home(1, size) == 0


def test_a_pickle_from_before_tables_of_any_size_loads_and_answers_the_same() -> None:
    """Version 1 pickled (mask, count, highs, lows) of a power-of-two table whose homes were ``high & mask``
    (the high parts signed): such a pickle is placed afresh into the new layout."""
    added = [f"old-{i}" for i in range(3_000)]
    size = 8192
    table, lows = [0] * (size + TAIL), [0] * (size + TAIL)
    for event_id in added:  # the old layout, built here as version 1 built it (linear probing from high & mask)
        high, low = digest(event_id)
        slot = high & (size - 1)
        while table[slot]:
            slot += 1
        table[slot], lows[slot] = high, low
    signed = struct.pack(f"<{size + TAIL}q", *(high - 2**64 if high >= 2**63 else high for high in table))
    state = (size - 1, len(added), signed, struct.pack(f"<{size + TAIL}i", *lows))
    seen = SeenIds.__new__(SeenIds)
    seen.__setstate__(state)
    assert len(seen) == len(added)
    assert all(event_id in seen for event_id in added)
    assert not any(f"new-{i}" in seen for i in range(3_000))
    assert not any(seen.add_if_new(event_id) for event_id in added)
    assert seen.add_if_new("new-0") and "new-0" in seen
