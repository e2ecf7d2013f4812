"""/metrics exposes the live stream's published health (``streaming.health``) from the serving store's Redis."""

from __future__ import annotations

import redis

from rollout.metrics import RolloutMetrics
from rollout.router import StageCache
from streaming.health import HealthPublisher

NOW = 1_800_000_000_000


def test_the_published_health_of_each_stage_is_a_prometheus_gauge(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    HealthPublisher("source").publish(client, {
        "watermark_ms": 1_799_999_998_000, "watermark_lag_ms": 2500, "lines": 1200, "applied": 1100,
        "duplicates": 60, "too_late": 30, "rejected": 10, "dead_letters": 40, "events_in_per_s": 400.5,
        "applied_per_s": 380, "consumer_lag": 17, "pending": 0,
    })
    HealthPublisher("shard").publish(client, {"state_users_shard0": 310, "state_users_shard1": 295})
    HealthPublisher("sink").publish(client, {"sink_writes": 900, "sink_retries": 2, "sink_bundles": 40,
                                             "sink_ms_p50": 1.5, "sink_ms_p99": 7.25, "sink_ms_max": 9})
    metrics = RolloutMetrics(None, StageCache(None, client), clock=lambda: NOW)
    text = metrics.render().decode()
    client.close()
    for line in (
        "segshadow_stream_watermark_lag_seconds 2.5",
        'segshadow_stream_events_per_second{stage="in"} 400.5',
        'segshadow_stream_events{outcome="too_late"} 30.0',
        'segshadow_stream_events{outcome="dead_letters"} 40.0',
        "segshadow_stream_consumer_lag_entries 17.0",
        "segshadow_stream_pending_entries 0.0",
        'segshadow_stream_state_users{shard="1"} 295.0',
        'segshadow_stream_sink_bundle_milliseconds{quantile="0.99"} 7.25',
        "segshadow_stream_sink_retries 2.0",
    ):
        assert line in text, line
    assert 'segshadow_stream_health_age_seconds{role="sink"}' in text


def test_no_published_health_means_no_stream_samples(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    text = RolloutMetrics(None, StageCache(None, client), clock=lambda: NOW).render().decode()
    client.close()
    assert "segshadow_stream_" not in text
