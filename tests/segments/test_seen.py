"""SeenIds, the dedup's set of ids as digests: it must answer exactly as a set of the ids would."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from segments.seen import MAX_LOAD, MIN_CAPACITY, TAIL, SeenIds, digest

ids = st.text(min_size=0, max_size=12)  # any text: empty, non-ASCII, lone surrogates


@settings(max_examples=300, deadline=None)
@given(st.lists(ids, max_size=400), st.lists(ids, max_size=50))
def test_answers_as_a_set_of_the_ids_does(added: list[str], asked: list[str]) -> None:
    seen = SeenIds()
    oracle: set[str] = set()
    for event_id in added:
        assert seen.add_if_new(event_id) is (event_id not in oracle)
        oracle.add(event_id)
        assert len(seen) == len(oracle)
    for event_id in added + asked:
        assert (event_id in seen) is (event_id in oracle)


def test_growing_keeps_every_id_and_the_table_within_its_load() -> None:
    seen = SeenIds()
    added = [f"evt-{i}" for i in range(20 * MIN_CAPACITY)]  # several doublings
    sizes = set()
    for event_id in added:
        assert seen.add_if_new(event_id)
        sizes.add(seen.nbytes)
        assert len(seen) <= MAX_LOAD * (seen.nbytes // 12 - TAIL) + 1
    assert len(sizes) >= 4
    assert all(event_id in seen for event_id in added)
    assert not any(seen.add_if_new(event_id) for event_id in added)
    assert f"evt-{len(added)}" not in seen
    assert seen.nbytes / len(seen) < 40  # 12 bytes a slot, filled to 35-70%


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


def test_a_pickled_set_answers_the_same() -> None:
    seen = SeenIds()
    added = [f"u{i}" for i in range(3000)]
    for event_id in added:
        seen.add_if_new(event_id)
    copy = pickle.loads(pickle.dumps(seen))
    assert len(copy) == len(seen)
    assert all(event_id in copy for event_id in added)
    assert "u3000" not in copy
    assert copy.add_if_new("u3000") and not copy.add_if_new("u0")


def test_non_strings_are_not_members() -> None:
    seen = SeenIds()
    seen.add_if_new("1")
    assert 1 not in seen
