"""Bloom filters of segment members at the edge: no false negatives, the target FPR, rebuilt on change."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from fastapi.testclient import TestClient

from homepage.bloom import BloomCache, build_blooms, measure, members_by_segment, write_files
from segments.outputs import Transition
from segments.sketches import bloom_hash, load_bloom
from segments.timeutil import wall_clock_ms
from tests.homepage.conftest import Site


def test_no_false_negatives_and_observed_fpr_matches_the_target() -> None:
    """200K members at 1% and at 5%: every member is found; over 200K non-member probes the target rate
    lies in the observed rate's Wilson 99.7% interval (z = 3: the filter instance varies too)."""
    rng = random.Random(17)
    members = {f"member-{rng.getrandbits(64):x}" for _ in range(200_000)}
    probes = [f"probe-{n}" for n in range(200_000)]
    for target in (0.01, 0.05):
        exported = build_blooms({"x": members}, "stream", ["x"], target)["x"]
        check = measure(exported, members, probes)
        assert check.false_negatives == 0
        assert check.target_in_interval(3.0), check.to_dict()
        assert 0.5 * target < check.observed_fpr < 1.5 * target


def test_bytes_and_parameters_are_enough_to_answer_membership(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A reader with only the exported file and its documented hash answers 'is u in X'."""
    exported = build_blooms({"high_value": {"alice", "bob"}}, "stream", ["high_value", "empty"])
    write_files(tmp_path, exported)
    params = json.loads((tmp_path / "high_value.bloom.json").read_text())
    assert params["hash"] == "sha256-128-be-signed" and params["target_fpr"] == 0.01 and params["members"] == 2
    reader = load_bloom((tmp_path / "high_value.bloom").read_bytes())
    assert "alice" in reader and "bob" in reader
    assert reader.hash_func is bloom_hash
    assert "alice" not in load_bloom((tmp_path / "empty.bloom").read_bytes())


def test_cache_rebuilds_after_a_published_change_batch(site: Site) -> None:
    """The filter follows the serving store: a user who joins a segment is in the next filter once the
    side has written (its heartbeat moved), without waiting for the schedule."""
    now = [1_000_000]
    site.stream("alice", "high_value")
    cache = BloomCache(site.redis, ("high_value",), every_ms=3_600_000, check_ms=0, clock=lambda: now[0])
    first = load_bloom(cache.current()["high_value"].data)
    assert "alice" in first and "carol" not in first
    assert cache.builds == 1
    now[0] += 10
    cache.current()
    assert cache.builds == 1  # nothing published: no rebuild
    site.stream("carol", "high_value")
    now[0] += 10
    assert "carol" in load_bloom(cache.current()["high_value"].data)
    assert cache.builds == 2
    assert members_by_segment(site.redis, "stream") == {"high_value": {"alice", "carol"}}


def test_site_serves_the_filter_bytes_with_parameters(site: Site, make_app: Callable[..., object]) -> None:
    site.stream("alice", "high_value")
    client = TestClient(make_app())  # type: ignore[arg-type]
    response = client.get("/segments/high_value/bloom")
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-bloom-target-fpr"] == "0.01" and response.headers["x-bloom-members"] == "1"
    assert "alice" in load_bloom(response.content)
    assert client.get("/segments/high_value/bloom.json").json()["members"] == 1
    assert client.get("/segments/nobody_here/bloom").status_code == 404
    assert client.get("/segments/..%2Fetc/bloom").status_code == 404


def test_site_can_serve_membership_from_the_filter_with_its_observed_rate(
    site: Site, make_app: Callable[..., object]
) -> None:
    """With ``serve_from_bloom`` the answer comes from the filter: every member says yes, and the rate at
    which the side's other users say yes is the one measured against the exact set and shown."""
    members = [f"m{n}" for n in range(200)]
    others = [f"o{n}" for n in range(1500)]
    now = wall_clock_ms()
    site.redis.write_stream([Transition(u, ("high_value",), now, 1, now, "event") for u in members])
    site.redis.write_stream([Transition(u, ("window_shopper",), now, 1, now, "event") for u in others])
    client = TestClient(make_app(serve_from_bloom=True))  # type: ignore[arg-type]

    def says(user: str) -> bool:
        return bool(client.get("/api/member", params={"user": user, "segment": "high_value"}).json()["member"])

    said_yes = [u for u in others if says(u)]
    assert all(says(u) for u in members)
    check = client.get("/segments/high_value/bloom.json").json()["check"]
    assert check["false_negatives"] == 0 and check["probes"] == len(others)
    assert check["false_positives"] == len(said_yes)  # the shown rate is exactly what the site answered
    assert check["false_positives"] <= 45  # 1% of 1,500 is 15 (the ids and hash are fixed: no flake)
    body = client.get("/api/member", params={"user": "o1", "segment": "high_value"}).json()
    assert body["source"] == "bloom" and body["target_fpr"] == 0.01
    site.legacy("m1", "high_value")  # the exact route answers from the side the rollout serves (legacy here)
    exact = TestClient(make_app()).get("/api/member", params={"user": "m1", "segment": "high_value"}).json()  # type: ignore[arg-type]
    assert exact["member"] is True and exact["source"] == "legacy"


def test_each_rebuild_carries_the_current_members_into_the_minute_reach(site: Site) -> None:
    from segments.reachstore import ReachStore

    site.stream("alice", "high_value")
    site.stream("bob", "high_value", "window_shopper")
    reach = ReachStore(site.redis.client, prefix="carry-test")
    cache = BloomCache(site.redis, (), clock=lambda: 3_600_000 * 500 + 5, reach=reach)
    cache.current()
    assert reach.series("stream", "high_value", "minute", 3_600_000 * 500, 3_600_000 * 500) == [(3_600_000 * 500, 2)]
    assert reach.series("stream", "window_shopper", "hour", 3_600_000 * 500, 3_600_000 * 500) == [(3_600_000 * 500, 1)]


def test_dashboard_shows_reach_read_from_the_serving_store(site: Site, make_app: Callable[..., object]) -> None:
    """What the sinks PFADD as each side publishes is what the dashboard's live reach table counts."""
    from segments.reachstore import ReachStore

    now = wall_clock_ms()
    reach = ReachStore(site.redis.client, prefix=site.redis.prefix)
    reach.record("stream", [(f"s{n}", ("high_value",), now) for n in range(37)])
    reach.record("legacy", [(f"s{n}", ("high_value",), now) for n in range(29)])
    page = TestClient(make_app()).get("/dashboard").text  # type: ignore[arg-type]
    assert "Reach in the serving store" in page
    table = page[page.index('id="live-reach"') :]
    assert ">37</td>" in table and ">29</td>" in table


def test_the_live_reach_table_puts_both_sides_of_each_segment_together(
    site: Site, make_app: Callable[..., object]
) -> None:
    """A legacy and a stream row per segment, even where one side has no reach for it yet (0, not missing)."""
    import re

    from segments.reachstore import ReachStore

    now = wall_clock_ms()
    reach = ReachStore(site.redis.client, prefix=site.redis.prefix)
    reach.record("stream", [(f"s{n}", ("high_value", "window_shopper"), now) for n in range(41)])
    reach.record("legacy", [(f"s{n}", ("high_value",), now) for n in range(23)])
    page = TestClient(make_app()).get("/dashboard").text  # type: ignore[arg-type]
    table = page[page.index('id="live-reach"') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r'<tr><td class="reach-(\w+)">\w+</td><td>(\w+)</td>(.*?)</tr>', table)
    assert [(side, segment) for side, segment, _ in rows] == [
        ("legacy", "high_value"),
        ("stream", "high_value"),
        ("legacy", "window_shopper"),
        ("stream", "window_shopper"),
    ]
    last = [re.findall(r"<td>([\d,]+)</td>", cells)[-1] for _, _, cells in rows]
    assert last == ["23", "41", "0", "41"]


class _Scans:
    """The serving store, noting which thread scans it (a rebuild's scan)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.threads: list[str] = []

    def scan_side(self, side: str, batch: int = 1000):  # type: ignore[no-untyped-def]
        import threading

        self.threads.append(threading.current_thread().name)
        return self.inner.scan_side(side, batch)  # type: ignore[attr-defined]

    def meta(self, side: str):  # type: ignore[no-untyped-def]
        return self.inner.meta(side)  # type: ignore[attr-defined]


def test_started_rebuilds_run_in_the_background_after_a_published_change(site: Site) -> None:
    """After ``start`` a reader never scans the serving store: the background thread rebuilds on the change
    batch and the reader sees the new member once it has."""
    import threading
    import time

    site.stream("alice", "high_value")
    source = _Scans(site.redis)
    cache = BloomCache(source, ("high_value",), every_ms=3_600_000, check_ms=20)  # type: ignore[arg-type]
    assert cache.member("high_value", "alice") is True  # the first build, by the first reader
    assert source.threads == [threading.current_thread().name]
    cache.start()
    try:
        site.stream("zed", "high_value")  # a published change batch moves the side's heartbeat
        deadline = time.monotonic() + 10
        while cache.builds < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cache.builds == 2
        for _ in range(20):
            cache.current()
        assert cache.member("high_value", "zed") is True
        assert source.threads[1:] == ["segshadow-bloom"]  # the reader built nothing more
    finally:
        cache.stop()
