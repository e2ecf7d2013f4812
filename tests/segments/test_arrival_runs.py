"""Arrival order through spilled runs: exactly ``arrival_order``'s, whatever the run size and the input's order."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import segments.arrival_runs as arrival_runs
from segments.arrival_runs import ArrivalRuns
from segments.events import Event, arrival_order, write_jsonl
from segments.lateness import GateParams
from segments.rules import load_ruleset
from segments.workloads import write_workload
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay

T0 = 1_704_067_200_000


def _event(seq: int, arrival: int, attrs: dict[str, object] | None = None) -> Event:
    return Event(f"e{seq}", f"u{seq % 7}", arrival - seq % 5, "view", seq, arrival, None, seq, False, attrs, None)


def _through(events: list[Event], run_events: int, tmp_path: Path) -> tuple[list[Event], ArrivalRuns]:
    runs = ArrivalRuns(run_events, str(tmp_path))
    for event in events:
        runs.append(event)
    return list(runs.ordered()), runs


@settings(max_examples=60, deadline=None)
@given(
    arrivals=st.lists(st.integers(0, 40), max_size=60),
    run_events=st.integers(1, 9),
    shape=st.sampled_from(["as drawn", "sorted", "reversed"]),
)
def test_runs_yield_arrival_order(arrivals: list[int], run_events: int, shape: str) -> None:
    """Ties on arrival (kept in seq order), input already in order (runs chained), reversed (runs merged)."""
    import tempfile

    keys = {"sorted": sorted(arrivals), "reversed": sorted(arrivals, reverse=True)}.get(shape, arrivals)
    events = [_event(seq, T0 + a) for seq, a in enumerate(keys, start=1)]
    with tempfile.TemporaryDirectory() as directory:
        got, runs = _through(events, run_events, Path(directory))
        assert list(Path(directory).iterdir()) == []  # unlinked on creation, closed at the end
    assert got == arrival_order(events)
    assert all(type(e) is Event for e in got)
    assert runs.last_arrival == (got[-1].arrival_time if got else 0)
    assert len(runs) == len(events) and runs.runs == []


def test_every_field_survives_a_spill(tmp_path: Path) -> None:
    """attrs and extra (nested JSON values), None, big integers and lone surrogates come back equal."""
    odd = "bad\udcff"
    events = [
        _event(3, T0 + 9, {"merchant": "m1", "nested": [1, 2.5, {"x": None, "y": True}]}),
        Event(odd, "u", T0, "purchase", 10**30, T0 + 1, "m", 2, True, None, {"extra": [odd]}),
        _event(1, T0 + 5),
    ]
    got, _ = _through(events, 1, tmp_path)
    assert got == arrival_order(events)


def test_a_disk_that_refuses_a_run_is_one_operational_error(tmp_path: Path) -> None:
    from segments.errors import RunFailed

    runs = ArrivalRuns(1, str(tmp_path / "missing"))
    with pytest.raises(RunFailed, match="cannot spill the replay's input"):
        runs.append(_event(1, T0))


def test_replay_is_the_same_whatever_the_run_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``stream replay`` of a disordered file (late arrivals, duplicates, bad lines) with runs of 50 events
    (spilled and merged) writes the same transitions and dead letters as with every event held."""
    source = tmp_path / "workload.jsonl"
    write_workload("clickstream", source, users=200, minutes=30, seed=3)
    lines = source.read_text().splitlines()
    random.Random(5).shuffle(lines)  # out of arrival order: the runs overlap and are merged
    events = tmp_path / "events.jsonl"
    write_jsonl(events, lines)
    config = StreamConfig(load_ruleset("clickstream"), GateParams(), shards=2)
    outputs = []
    for run_events in (10**9, 50):
        monkeypatch.setattr(arrival_runs, "RUN_EVENTS", run_events)
        out = tmp_path / f"out_{run_events}.jsonl"
        result = run_replay(events, out, config)
        outputs.append((out.read_text(), result.dead_letter_path.read_text(), result.counts))
    assert len(lines) > 500 and outputs[0][0].count("\n") > 50
    assert outputs[0] == outputs[1]
