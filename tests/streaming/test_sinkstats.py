"""The Redis sink's per-write latency: the histogram and growth rules (pure), and a real replay's sidecar."""

from __future__ import annotations

import json
from pathlib import Path

from segments.lateness import GateParams
from segments.rules import load_ruleset
from segments.workloads import generate
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay
from streaming.sinkstats import COUNT_AT, SUM_AT, bucket_name, counter_names, summarize


def test_quantiles_are_the_upper_bound_of_the_bucket_holding_the_rank() -> None:
    """90 writes at 80 us, 9 at 1.5 ms, 1 at 3 s: p50 <= 0.1 ms, p90 <= 0.1 ms, p99 <= 2 ms, the last one beyond."""
    counters = {bucket_name(80): 90, bucket_name(1_500): 9, bucket_name(3e6): 1}
    counters |= {f"{SUM_AT}100": 90 * 80 + 9 * 1_500 + 3_000_000, f"{COUNT_AT}100": 100}
    out = summarize(counters, 3_000)
    assert out is not None and out["writes"] == 100
    assert (out["ms_per_write_p50_at_most"], out["ms_per_write_p90_at_most"], out["ms_per_write_p99_at_most"]) == \
        (0.1, 0.1, 2.0)
    assert out["histogram_us"] == {"100": 90, "2000": 9, "inf": 1} and out["grew"] is None
    assert summarize({}) is None and counter_names(bucket_name(5)) and not counter_names("redis_writes")


def test_growth_compares_the_first_and_last_thirds_of_the_seconds_with_writes() -> None:
    """0.1 ms a write for three seconds, then 2 ms for three: grew; steady at 2 ms: not; 0.01 -> 0.04 ms: too small."""
    def run(per_second_us: list[int]) -> dict:
        counters = {bucket_name(us): 10 for us in per_second_us}
        for s, us in enumerate(per_second_us):
            counters[f"{SUM_AT}{1_000 + s}"] = us * 10
            counters[f"{COUNT_AT}{1_000 + s}"] = 10
        out = summarize(counters)
        assert out is not None
        return out

    grew = run([100, 100, 100, 2_000, 2_000, 2_000])
    assert grew["grew"] is True and (grew["ms_per_write_first_third"], grew["ms_per_write_last_third"]) == (0.1, 2.0)
    assert run([2_000] * 6)["grew"] is False
    assert run([10, 10, 10, 40, 40, 40])["grew"] is False


def test_a_replay_records_every_write_in_the_histogram_and_a_slow_sink_shows_in_it(tmp_path: Path, redis_url: str):
    """The histogram counts exactly the writes the sink made; with each bundle held 200 ms, the mean per write is
    at least the delay spread over the writes, and the p99 bound covers it."""
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(generate("clickstream", users=150, minutes=20, seed=5)) + "\n")
    config = StreamConfig(load_ruleset("clickstream"), GateParams(), shards=2)
    run_replay(events, tmp_path / "slow.jsonl", config, redis_url=redis_url, beam_args=["--sink_delay_ms=200"])
    meta = json.loads((tmp_path / "slow.jsonl.meta.json").read_text())
    write, bundles = meta["metrics"]["redis_write"], meta["metrics"]["redis_bundle_ms"]
    assert write["writes"] == meta["counts"]["redis_writes"] > 0
    assert sum(write["histogram_us"].values()) == write["writes"]
    assert not any(counter_names(name) for name in meta["counts"])
    floor_ms = 200 * bundles["count"] / write["writes"]
    assert write["ms_per_write_mean"] >= floor_ms * 0.99
    assert write["ms_per_write_p99_at_most"] == "inf" or write["ms_per_write_p99_at_most"] >= floor_ms
    assert meta["counts"].get("redis_failures", 0) == 0


def test_a_live_sink_keeps_no_per_second_counters_and_a_replay_sink_does(redis_url: str) -> None:
    """Live runs make no counter name per second (nothing reads them back, and every bundle reports every name
    ever made); the histogram's fixed names are kept either way."""
    from segments.outputs import Transition
    from streaming.sinks import RedisTransitionsSink
    from streaming.sinkstats import LE

    names = {}
    for per_second in (True, False):
        t = 1_700_000_000_000
        batch = [Transition(f"u-{per_second}", ("high_value",), t, 1, t, "event")]  # a write that changes a value
        sink = RedisTransitionsSink(redis_url, per_second=per_second, reach=False)
        sink.setup()
        try:
            sink.process(batch)
            sink.finish_bundle()
        finally:
            sink.teardown()
        names[per_second] = set(sink.by_name)
    assert any(name.startswith(SUM_AT) for name in names[True]) and any(n.startswith(COUNT_AT) for n in names[True])
    assert names[False] and all(name.startswith(LE) for name in names[False])
