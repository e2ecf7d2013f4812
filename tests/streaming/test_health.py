"""``stream live`` publishes its health to the serving store (``streaming.health``), read back as the doctor does."""

from __future__ import annotations

import threading
import time

import apache_beam as beam
import redis

from segments.lateness import GateParams
from segments.rules import load_ruleset
from segments.workloads import generate
from streaming.health import HEALTH_KEY, HISTORY_KEY, read_health
from streaming.live import EVENTS_STREAM, FIELD, LiveSource, build_live
from streaming.options import LIVE_RUNNER, pipeline_options
from streaming.pipeline import StreamConfig


def _produce_over(url: str, lines: list[str], slices: int, every_s: float) -> None:
    client = redis.Redis.from_url(url)
    step = max(1, len(lines) // slices)
    for start in range(0, len(lines), step):
        pipe = client.pipeline()
        for line in lines[start : start + step]:
            pipe.xadd(EVENTS_STREAM, {FIELD: line})
        pipe.execute()
        time.sleep(every_s)
    client.close()


def test_a_short_live_run_publishes_every_stage_health_and_its_history(redis_url: str):
    """Source, shards and sink each publish their fields with a timestamp; the history keeps each publish."""
    ruleset = load_ruleset("clickstream")
    config = StreamConfig(ruleset, GateParams(), shards=2, live=True)
    lines = list(generate("clickstream", users=30, minutes=10, seed=5, late_share=0.05, dup_share=0.05))
    client = redis.Redis.from_url(redis_url)
    client.delete(HEALTH_KEY, HISTORY_KEY)
    producer = threading.Thread(target=_produce_over, args=(redis_url, lines, 10, 0.2))
    producer.start()
    started_ms = int(time.time() * 1000)
    pipeline = beam.Pipeline(options=pipeline_options([], LIVE_RUNNER, streaming=True))
    build_live(pipeline, config, LiveSource(redis_url, poll_ms=5, health_ms=200), 4.0, None)
    pipeline.run().wait_until_finish()
    producer.join()

    current, history = read_health(client, started_ms)
    client.close()
    for role in ("source", "shard", "sink"):
        assert int(current[f"{role}_at_ms"]) >= started_ms, role
        assert any(entry["role"] == role for entry in history), role
    assert current["lines"] == len(lines)
    assert current["applied"] + current["duplicates"] + current["too_late"] + current["rejected"] == len(lines)
    assert current["dead_letters"] == current["too_late"] + current["rejected"]
    assert current["consumer_lag"] == 0 and current["pending"] == 0
    assert current["watermark_lag_ms"] > 0 and current["watermark_ms"] > 0
    assert {"state_users_shard0", "state_users_shard1"} <= current.keys()
    assert 0 < current["state_users_shard0"] + current["state_users_shard1"] <= 30
    assert current["sink_writes"] > 0 and current["sink_retries"] == 0
    assert current["sink_ms_max"] >= current["sink_ms_p99"] >= current["sink_ms_p50"] >= 0
    in_rates = [e["events_in_per_s"] for e in history if e["role"] == "source"]
    assert max(in_rates) > 0
