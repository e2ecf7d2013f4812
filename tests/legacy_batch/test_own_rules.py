"""The legacy SQL job on a rule set with its own kinds and attribute fields, against an oracle that reads
the attributes (``tests.segments.own_rules``), on SQLite, PostgreSQL and the cockroachdb dialect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legacy_batch.job import run_legacy
from segments.errors import InputError
from segments.events import Event, parse_line
from segments.outputs import read_assignments
from segments.sqlstore import SqlStore
from tests.legacy_batch.brute import brute_as_ofs, first_arrivals
from tests.legacy_batch.crdb import DIALECTS, with_dialect
from tests.segments.own_rules import OWN, oracle_segments, oracle_valid, own_lines

BASE = 1_704_067_200_000
M5 = 300_000


@pytest.fixture(params=DIALECTS)
def store(database_url: str, request: pytest.FixtureRequest) -> Iterator[SqlStore]:
    with SqlStore.open(with_dialect(database_url, request.param)) as opened:
        yield opened


def _oracle(lines: list[str], every: int) -> list[tuple[int, str, tuple[str, ...]]]:
    valid = []
    for number, line in enumerate(lines, start=1):
        if oracle_valid(line):
            event = parse_line(line, number, OWN.time_bounds)
            assert isinstance(event, Event), event  # the oracle and the reader agree on what is valid
            valid.append(event)
    events = first_arrivals(valid)
    out = []
    for t in brute_as_ofs(events, every):
        for user in sorted({e.user_id for e in events}):
            seen = [e for e in events if e.user_id == user and e.arrival_time <= t]
            segments = oracle_segments(seen, t) if seen else frozenset()
            if segments:
                out.append((t, user, tuple(sorted(segments))))
    return out


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=own_lines(BASE), every=st.sampled_from([60_000, M5]))
def test_legacy_on_own_kinds_and_attributes_equals_the_oracle(
    store: SqlStore, tmp_path: Path, lines: list[str], every: int
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    parsed = [parse_line(line, n, OWN.time_bounds) for n, line in enumerate(lines, start=1) if oracle_valid(line)]
    accepted = [e.attrs or {} for e in first_arrivals([e for e in parsed if isinstance(e, Event)])]
    lacking = [name for name in ("price", "shop") if not any(name in attrs for attrs in accepted)]
    if lacking:  # a field the rule set reads and no accepted event has: one error naming it
        with pytest.raises(InputError, match=rf"reads attrs\.{lacking[0]} "):
            run_legacy(path, OWN, every, tmp_path / "out.jsonl", store)
        return
    run_legacy(path, OWN, every, tmp_path / "out.jsonl", store)
    got = [(a.as_of, a.user_id, a.segments) for a in read_assignments(tmp_path / "out.jsonl")]
    assert got == _oracle(lines, every)
