"""As-of times (SPEC §3): multiples of --every from the first arrival to the last arrival plus --every."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legacy_batch.schedule import MAX_AS_OFS, MAX_EVERY_MS, MIN_EVERY_MS, as_of_count, as_of_times, schedule
from segments.errors import UsageError
from segments.events import Event

M5 = 300_000


def test_first_arrival_on_a_multiple_is_the_first_as_of() -> None:
    assert as_of_times(10 * M5, 10 * M5 + 1, M5)[0] == 10 * M5


def test_first_arrival_just_after_a_multiple_waits_for_the_next() -> None:
    assert as_of_times(10 * M5 + 1, 10 * M5 + 1, M5)[0] == 11 * M5


def test_last_arrival_on_a_multiple_gets_one_more_as_of() -> None:
    assert as_of_times(10 * M5, 12 * M5, M5) == [10 * M5, 11 * M5, 12 * M5, 13 * M5]


def test_last_arrival_just_before_a_multiple_ends_on_that_multiple() -> None:
    assert as_of_times(10 * M5, 12 * M5 - 1, M5) == [10 * M5, 11 * M5, 12 * M5]


def test_one_arrival_exactly_on_a_multiple_has_two_as_ofs() -> None:
    assert as_of_times(4 * M5, 4 * M5, M5) == [4 * M5, 5 * M5]


@pytest.mark.parametrize("every", [0, -M5, 999, 86_400_001])
def test_every_must_be_within_its_limits(every: int) -> None:
    with pytest.raises(UsageError, match="--every"):
        as_of_times(0, 1, every)


@pytest.mark.parametrize("every", [MIN_EVERY_MS, MAX_EVERY_MS])
def test_every_at_its_limits_is_accepted(every: int) -> None:
    assert as_of_times(0, 1, every) == [0, every]


def test_a_schedule_over_the_limit_is_refused_naming_the_span_and_every() -> None:
    first = 1_704_067_200_000
    last = first + (MAX_AS_OFS - 1) * M5  # MAX_AS_OFS + 1 as-ofs: the last is last + every
    assert as_of_count(first, last - M5, M5) == MAX_AS_OFS == len(as_of_times(first, last - M5, M5))
    with pytest.raises(UsageError) as caught:
        as_of_times(first, last, M5)
    message = str(caught.value)
    assert "--every 5m" in message and "347.2 days" in message and "100,001" in message and "\n" not in message


def test_the_issues_span_from_1970_to_9999_is_refused_without_building_it() -> None:
    with pytest.raises(UsageError, match="as-of times"):
        as_of_times(1, 253_402_300_799_999, M5)


def test_no_events_no_as_ofs() -> None:
    assert schedule([], M5) == []


def test_schedule_reads_arrivals_not_event_times() -> None:
    late = Event("e", "u", 0, "view", 0, 3 * M5 + 7, None, 1)
    assert schedule([late], M5) == [4 * M5]


@given(
    st.integers(0, 10**13),
    st.integers(0, 50),
    st.integers(0, 3_600_000),
    st.sampled_from([1_000, 60_000, M5, 420_000, 3_600_000]),
)
def test_as_ofs_are_exactly_the_multiples_in_range(first: int, steps: int, extra: int, every: int) -> None:
    last = first + steps * every + extra % every
    times = as_of_times(first, last, every)
    assert times, "the range always holds a multiple: it is every_ms long at least"
    assert all(t % every == 0 for t in times)
    assert all(b - a == every for a, b in pairwise(times))
    assert first <= times[0] < first + every
    assert last <= times[-1] <= last + every < times[-1] + every
