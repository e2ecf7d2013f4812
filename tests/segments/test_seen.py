"""SeenIds, the dedup's set of ids as digests: it must answer exactly as a set of the ids would."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

import segments.seen as seen_module
from segments.seen import MAX_LOAD, MIN_CAPACITY, MOVE_SLOTS, TAIL, SeenIds, digest

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
    mask = MIN_CAPACITY - 1
    crowd = [f"c{i}" for i in range(200_000) if digest(f"c{i}")[0] & mask >= mask - 2][: TAIL + 8]
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
            event_id = next(e for e in candidates if digest(e)[0] & seen._mask >= seen._mask - 1)
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
