"""Your own Beam transform, live (issue 18, item 3): ``stream live --transform`` feeds a team's PTransform the
events admitted from the Redis Stream and writes its changes, with revisions, to the file, SQL and Redis."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import apache_beam as beam
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from segments.lateness import GateParams
from segments.outputs import Transition, read_transitions
from segments.redisstore import RedisStore
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segments.workloads import generate
from segshadow.cli import main
from streaming.byo import CAUSE, LiveRevisions, load_transform, timeline
from streaming.live import EVENTS_STREAM, FIELD, LiveSource, build_live
from streaming.options import LIVE_RUNNER, pipeline_options
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay

CLICK = load_ruleset("clickstream")
EXAMPLE = "examples.byo.clickstream_windows:ClickstreamWindows"
MINUTE = 60_000
NAMES = st.sampled_from([(), ("a",), ("b",), ("a", "b")])


# ---- the harness's live revisions (pure) ---------------------------------------------------------------


def _said(transitions: list[tuple[int, int, tuple[str, ...]]], t: int) -> tuple[str, ...]:
    """What transitions (effective, revision, set) say at ``t``: the highest revision at the latest time <= t."""
    at = [x for x in transitions if x[0] <= t]
    return max(at)[2] if at else ()


@given(st.lists(st.tuples(st.integers(0, 40), NAMES), max_size=30))
def test_live_revisions_say_the_last_change_received_for_every_time(changes: list) -> None:
    """In any arrival order, after each change the emitted transitions say, at every instant, the set of the
    latest effective time received at or before it (the last one received for that time)."""
    revisions = LiveRevisions()
    emitted: list[tuple[int, int, tuple[str, ...]]] = []
    received: dict[int, tuple[str, ...]] = {}
    for effective, names in changes:
        emitted += revisions.take(effective, names)
        received[effective] = names
        for t in range(-1, 42):
            before = [time for time in received if time <= t]
            assert _said(emitted, t) == (received[max(before)] if before else ()), (changes, t)
    assert len({(e, r) for e, r, _ in emitted}) == len(emitted), "a revision was numbered twice"


@given(st.dictionaries(st.integers(0, 10_000), NAMES, max_size=30))
def test_live_revisions_equal_replay_timeline_on_in_order_changes(values: dict) -> None:
    """Changes that arrive in effective-time order, one per time, get exactly replay's transitions."""
    revisions = LiveRevisions()
    live = [x for t in sorted(values) for x in revisions.take(t, values[t])]
    replay = [(t.effective_time, t.revision, t.segments) for t in timeline("u", values.items())]
    assert live == replay


def test_a_change_before_a_dropped_repeat_brings_the_repeat_back() -> None:
    revisions = LiveRevisions()
    assert revisions.take(100, ("a",)) == [(100, 1, ("a",))]
    assert revisions.take(300, ("a",)) == []  # repeats the set in force: dropped
    # b from 200 on: then at 300 the set is a again, which must now be said
    assert revisions.take(200, ("b",)) == [(200, 1, ("b",)), (300, 1, ("a",))]
    assert revisions.take(200, ("a",)) == [(200, 2, ("a",))]  # a later change for 200: the next revision


# ---- stream live --transform against a real Redis -------------------------------------------------------


def _produce(url: str, lines: list[str]) -> None:
    client = redis.Redis.from_url(url)
    pipe = client.pipeline()
    for line in lines:
        pipe.xadd(EVENTS_STREAM, {FIELD: line})
    pipe.execute()
    client.close()


def _produce_later(url: str, lines: list[str], after_s: float) -> None:
    time.sleep(after_s)
    for start in range(0, len(lines), max(1, len(lines) // 5)):
        _produce(url, lines[start : start + max(1, len(lines) // 5)])
        time.sleep(0.2)


def _value_at(transitions: list[Transition], t: int) -> tuple[str, ...]:
    return _said([(x.effective_time, x.revision, x.segments) for x in transitions], t)


def _by_user(transitions: list[Transition]) -> dict[str, list[Transition]]:
    users: dict[str, list[Transition]] = {}
    for tr in transitions:
        users.setdefault(tr.user_id, []).append(tr)
    return users


def test_stream_live_with_the_example_transform_equals_the_replays(redis_url: str, tmp_path: Path) -> None:
    """In-order clickstream through the Redis Stream: the live transform writes exactly the transitions the
    transform writes in replay (same times, revisions, sets; JSONL and SQL alike), Redis serves each user's
    latest set, and at every whole minute each user's set equals segshadow's own stream's."""
    lines = list(generate("clickstream", users=60, minutes=15, seed=7, late_share=0.0, dup_share=0.02))
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n", encoding="utf-8")
    own = load_transform(EXAMPLE)
    database_url = f"sqlite:///{tmp_path / 'live.db'}"
    out = tmp_path / "live.jsonl"

    half = len(lines) // 2
    _produce(redis_url, lines[:half])  # read at start
    producer = threading.Thread(target=_produce_later, args=(redis_url, lines[half:], 1.5))  # read while running
    producer.start()
    config = StreamConfig(CLICK, GateParams(), shards=2, live=True)
    pipeline = beam.Pipeline(options=pipeline_options([], LIVE_RUNNER, streaming=True))
    build_live(pipeline, config, LiveSource(redis_url, poll_ms=5), 5.0, database_url, str(out), transform=own)
    pipeline.run().wait_until_finish()
    producer.join()

    live = read_transitions(out)
    key = lambda t: (t.user_id, t.effective_time, t.revision, t.segments)  # noqa: E731
    assert len(live) > 100 and {t.cause for t in live} == {CAUSE}
    with SqlStore.open(database_url) as store:
        assert sorted(map(key, store.read_transitions(CLICK.ref))) == sorted(map(key, live))

    # Live takes the changes in the runner's order (revisions may differ from replay's), so the timelines are
    # compared as what they say at each instant: every effective time either side has, and every minute.
    replayed = read_transitions(
        run_replay(events, tmp_path / "theirs.jsonl", StreamConfig(CLICK, GateParams()), transform=own).out_path
    )
    mine = _by_user(read_transitions(run_replay(events, tmp_path / "ours.jsonl", StreamConfig(CLICK)).out_path))
    theirs, replay_theirs = _by_user(live), _by_user(replayed)
    assert set(theirs) == set(replay_theirs)
    times = [t.effective_time for trs in mine.values() for t in trs]
    grid = range(min(times) // MINUTE * MINUTE, max(times) + 11 * MINUTE, MINUTE)
    checked = 0
    for user in set(mine) | set(theirs):
        said = {t.effective_time for t in theirs.get(user, []) + replay_theirs.get(user, [])}
        for t in sorted(said):
            assert _value_at(theirs[user], t) == _value_at(replay_theirs[user], t), (user, t)
        for t in grid:
            assert _value_at(theirs.get(user, []), t) == _value_at(mine.get(user, []), t), (user, t)
            checked += 1
    assert checked > 500

    with RedisStore.open(redis_url) as serving:
        for user, transitions in theirs.items():
            stored = serving.get("stream", user)
            latest = max(transitions, key=lambda t: (t.effective_time, t.revision))
            assert stored is not None and tuple(sorted(stored.segments)) == latest.segments, user


def test_stream_live_takes_a_transform_on_the_command_line(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``segshadow stream live --transform`` runs (it was refused with exit 2) and says which transform."""
    lines = list(generate("clickstream", users=10, minutes=12, seed=3, late_share=0.0, dup_share=0.0))
    _produce(redis_url, lines)
    out = tmp_path / "live.jsonl"
    with pytest.raises(SystemExit) as done:
        main(["stream", "live", "--rules", "clickstream", "--transform", EXAMPLE, "--duration", "3s",
              "--out", str(out), "--no-sql", "--redis-url", redis_url])  # fmt: skip
    assert done.value.code == 0
    assert f"(transform {EXAMPLE}): stopped" in capsys.readouterr().out
    assert read_transitions(out) and {t.cause for t in read_transitions(out)} == {CAUSE}
