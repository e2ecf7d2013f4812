"""The serving snapshot: what a run leaves in the serving store comes back exactly in a fresh one."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from segments.errors import InputError
from segments.outputs import Transition
from segments.redisstore import RedisStore
from segments.snapshot import load_serving, read_serving, save_serving

USERS = ["ann", "bo b", "c:d", "\u202eevil", "e%41"]


def test_a_saved_store_loads_back_equal_in_an_empty_one(redis_url: str, tmp_path: Path) -> None:
    with RedisStore.open(redis_url, clock=lambda: 5_000) as store:
        store.write_legacy(1_000, [(u, frozenset({"high_value"})) for u in USERS[:3]])
        store.write_legacy(2_000, [(USERS[3], frozenset({"window_shopper"}))])  # clears the first three
        store.write_stream([Transition(u, ("high_value",), 1_500, 2, 1_600, "event") for u in USERS])
        store.client.set("segshadow:rollout:stage", "not saved")
        before = {side: dict(store.scan_side(side)) for side in ("legacy", "stream")}
        metas = {side: store.meta(side) for side in ("legacy", "stream")}
        saved = save_serving(store.client, tmp_path / "serving.jsonl", clock=lambda: 7_000)
        store.client.flushdb()
        snapshot = read_serving(tmp_path / "serving.jsonl")
        assert snapshot.saved_at == 7_000 and saved == len(snapshot.entries)
        load_serving(store.client, snapshot)
        assert {side: dict(store.scan_side(side)) for side in ("legacy", "stream")} == before
        assert {side: store.meta(side) for side in ("legacy", "stream")} == metas
        assert store.client.get("segshadow:rollout:stage") is None
        assert store.client.smembers("segshadow:legacy:nonempty") == {"%E2%80%AEevil"}
    assert snapshot.users_with("stream", "high_value") == sorted(
        ["ann", "bo%20b", "c%3Ad", "%E2%80%AEevil", "e%2541"]
    )


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "not a serving snapshot"),
        ('{"format": "other/1", "saved_at": 1}\n', "not a serving snapshot"),
        ('{"format": "segshadow-serving/1", "saved_at": 1}\n{"key": 3, "hash": {}}\n', "line 2"),
        ('{"format": "segshadow-serving/1", "saved_at": 1}\nnot json\n', "line 2"),
    ],
)
def test_an_unreadable_snapshot_is_refused_with_its_line(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "serving.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=why):
        read_serving(path)


def test_a_missing_snapshot_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_serving(tmp_path / "nothing.jsonl")


def test_a_load_replaces_keys_of_the_same_name(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.hset("segshadow:legacy:u:ann", mapping={"segments": '["high_value"]', "time": "1"})
        save_serving(client, tmp_path / "s.jsonl")
        client.hset("segshadow:legacy:u:ann", mapping={"segments": "[]", "extra": "x"})
        load_serving(client, read_serving(tmp_path / "s.jsonl"))
        assert client.hgetall("segshadow:legacy:u:ann") == {"segments": '["high_value"]', "time": "1"}
    finally:
        client.close()


def test_the_last_busy_as_of_is_the_latest_with_any_segment() -> None:
    from segments.outputs import Assignment
    from segments.snapshot import last_busy_as_of

    rows = [Assignment(1, "a", ("high_value",)), Assignment(2, "a", ("high_value",)), Assignment(2, "b", ("x",))]
    assert last_busy_as_of([*rows, Assignment(3, "c", ())]) == (2, rows[1:])
    assert last_busy_as_of([Assignment(3, "c", ())]) is None and last_busy_as_of([]) is None
