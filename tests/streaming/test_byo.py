"""Your own Beam transform (issue 18, item 3): the harness runs a team's PTransform as the stream, and the
example written with sliding windows and a combiner reproduces clickstream on in-order data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compare.comparison import run_comparison
from legacy_batch.job import run_legacy
from segments.errors import UsageError
from segments.outputs import read_transitions
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segments.workloads import write_workload
from segshadow.cli import main
from streaming.byo import CAUSE, load_transform, timeline
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay

CLICK = load_ruleset("clickstream")
EXAMPLE = "examples.byo.clickstream_windows:ClickstreamWindows"
PARITY_KEYS = ("pairs", "agree", "mismatch", "by_cause", "per_segment", "agreement_over_time")
MINUTE = 60_000


# ---- loading ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("examples.byo.clickstream_windows", "takes package.module:name"),
        ("examples.byo.no_such_module:X", "cannot import examples.byo.no_such_module"),
        ("examples.byo.clickstream_windows:Missing", "has no 'Missing'"),
        ("examples.byo.clickstream_windows:segments_of", "is a function, not a Beam PTransform"),
    ],
)
def test_a_bad_transform_is_a_usage_error(ref: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        load_transform(ref)


def test_a_bad_transform_on_the_command_line_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    write_workload("clickstream", events, users=5, minutes=2, seed=1)
    for command in (
        ["stream", "replay", "--events", str(events), "--rules", "clickstream", "--out", str(tmp_path / "s.jsonl"),
         "--no-sql", "--transform", "examples.byo.clickstream_windows:segments_of"],
        ["shadow", "run", "--events", str(events), "--out", str(tmp_path / "run"),
         "--transform", "examples.byo.nope:Nothing"],
    ):  # fmt: skip
        with pytest.raises(SystemExit) as done:
            main(command)
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("segshadow: error: --transform"), err


def test_the_example_loads_with_its_source_digest() -> None:
    import hashlib

    import examples.byo.clickstream_windows as module

    loaded = load_transform(EXAMPLE)
    assert loaded.sha256 == hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()
    assert loaded.logic() == {"kind": "transform", "ref": EXAMPLE, "sha256": loaded.sha256}


# ---- the harness's revisions (pure) --------------------------------------------------------------------


def test_timeline_orders_drops_repeats_and_numbers_revisions() -> None:
    changes = [(300, ("b",)), (100, ("a",)), (200, ("a",)), (300, ("a", "b")), (400, ()), (50, ())]
    got = [(t.effective_time, t.segments, t.revision, t.cause) for t in timeline("u", changes)]
    assert got == [
        (100, ("a",), 1, CAUSE),  # the leading empty set repeats the empty start: dropped
        (300, ("a", "b"), 1, CAUSE),  # 200 repeats "a": dropped; two sets at 300: both, the last wins
        (300, ("b",), 2, CAUSE),
        (400, (), 1, CAUSE),
    ]


# ---- the example against segshadow's own stream --------------------------------------------------------


def _value_at(transitions: list, t: int) -> tuple[str, ...]:
    best: dict[int, tuple[int, tuple[str, ...]]] = {}
    for tr in transitions:
        if tr.effective_time <= t and tr.revision >= best.get(tr.effective_time, (0, ()))[0]:
            best[tr.effective_time] = (tr.revision, tr.segments)
    return best[max(best)][1] if best else ()


def _by_user(path: Path) -> dict[str, list]:
    users: dict[str, list] = {}
    for tr in read_transitions(path):
        users.setdefault(tr.user_id, []).append(tr)
    return users


START = 1_704_067_200_000  # the workloads' first minute (2024-01-01T00:00Z)
LATE_USERS = 6


def _plant_late(events: Path) -> None:
    """Users whose purchase of 150 happens just before the 00:10 as-of but arrives after it (late, applied),
    and users whose purchase from 00:06 arrives at 00:14 (too late for the stream, seen by legacy at 00:15)."""
    with events.open("a", encoding="utf-8") as handle:
        for i in range(LATE_USERS):
            for name, event_time, arrival in (
                ("late", START + 10 * MINUTE - 10_000 - i * 1000, START + 10 * MINUTE + 20_000 + i * 1000),
                ("gone", START + 6 * MINUTE + i * 1000, START + 14 * MINUTE + i * 1000),
            ):
                line = {"event_id": f"{name}{i}", "user_id": f"{name}{i:03d}", "event_time": event_time,
                        "arrival_time": arrival, "kind": "purchase", "amount": "150.00"}  # fmt: skip
                handle.write(json.dumps(line) + "\n")


def _runs(directory: Path, late_share: float, seed: int) -> dict:
    events = directory / "events.jsonl"
    write_workload("clickstream", events, users=120, minutes=20, seed=seed, late_share=late_share)
    if late_share:
        _plant_late(events)
    with SqlStore.open(f"sqlite:///{directory / 'db.sqlite'}") as store:
        run_legacy(events, CLICK, 300_000, directory / "legacy.jsonl", store)
    run_replay(events, directory / "ours.jsonl", StreamConfig(CLICK))
    run_replay(events, directory / "theirs.jsonl", StreamConfig(CLICK), transform=load_transform(EXAMPLE))
    results = {
        name: run_comparison(
            events, directory / "legacy.jsonl", directory / f"{name}.jsonl", CLICK, out_dir=directory / name
        ).to_dict()
        for name in ("ours", "theirs")
    }
    return results


def test_the_example_reproduces_clickstream_on_in_order_data(tmp_path: Path) -> None:
    """In-order clickstream: the transform's parity against legacy equals segshadow's stream's, and its
    timeline equals the stream's at every whole minute."""
    results = _runs(tmp_path, late_share=0.0, seed=5)
    ours, theirs = results["ours"], results["theirs"]
    assert ours["pairs"] > 50
    assert {k: theirs[k] for k in PARITY_KEYS} == {k: ours[k] for k in PARITY_KEYS}
    assert theirs["provenance"]["stream"]["logic"]["ref"] == EXAMPLE
    meta = json.loads((tmp_path / "theirs.jsonl.meta.json").read_text())
    assert meta["ruleset"]["logic"]["kind"] == "transform" and meta["ruleset"]["digest"] != CLICK.digest
    mine, example = _by_user(tmp_path / "ours.jsonl"), _by_user(tmp_path / "theirs.jsonl")
    assert set(example) <= set(mine)
    times = [tr.effective_time for trs in mine.values() for tr in trs]
    grid = range(min(times) // MINUTE * MINUTE, max(times) + 11 * MINUTE, MINUTE)
    checked = 0
    for user, transitions in mine.items():
        for t in grid:
            assert _value_at(example.get(user, []), t) == _value_at(transitions, t), (user, t)
            checked += 1
    assert checked > 1000


def test_the_comparator_explains_the_example_on_late_data(tmp_path: Path) -> None:
    """Late clickstream: the transform applies late events in event time, as segshadow's stream does, so
    against legacy it differs only where legacy could not see the late arrivals; the comparator explains
    every one of those mismatches, exactly as for segshadow's own stream."""
    results = _runs(tmp_path, late_share=0.3, seed=11)
    ours, theirs = results["ours"], results["theirs"]
    assert theirs["by_cause"]["late_arrival"] >= LATE_USERS and theirs["by_cause"]["dropped_too_late"] >= LATE_USERS
    assert theirs["by_cause"]["unexplained"] == 0
    assert {k: theirs[k] for k in PARITY_KEYS} == {k: ours[k] for k in PARITY_KEYS}
    records = [json.loads(line) for line in (tmp_path / "theirs" / "mismatches.jsonl").read_text().splitlines()]
    late = {r["user_id"]: r for r in records if r["user_id"].startswith("late")}
    assert len(late) == LATE_USERS and {r["cause"] for r in late.values()} == {"late_arrival"}
    assert all(r["explanation"]["stream_only_events"] == [f"late{u[-1]}"] for u, r in late.items())
    gone = {r["user_id"] for r in records if r["user_id"].startswith("gone") and r["cause"] == "dropped_too_late"}
    assert len(gone) == LATE_USERS
