"""``doctor --live``: the published health of ``stream live`` judged in the state and sink layers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import apache_beam as beam
import pytest
import redis

from compare.doctor import LayerVerdict, LiveHealth, grows, live_sink, live_state
from segments.lateness import GateParams
from segments.rules import load_ruleset
from segments.workloads import generate
from segshadow.cli import main
from streaming.live import EVENTS_STREAM, FIELD, LiveSource, build_live
from streaming.options import LIVE_RUNNER, pipeline_options
from streaming.pipeline import StreamConfig

NOW = 1_800_000_000_000
THIN_STATE = LayerVerdict("state", "thin", "no event log")
THIN_SINK = LayerVerdict("sink", "thin", "no sink timing")


def _health(lags: list[int], p99: float, retries: list[int] | None = None, age_ms: int = 500) -> LiveHealth:
    history: list[dict] = []
    for i, lag in enumerate(lags):
        at = NOW - (len(lags) - i) * 1000
        history.append({"role": "source", "at_ms": at, "consumer_lag": lag, "watermark_lag_ms": 4000 + lag})
        history.append({"role": "sink", "at_ms": at, "sink_ms_p99": p99, "sink_retries": (retries or [0])[
            min(i, len(retries or [0]) - 1)]})
    current = {**history[-2], **history[-1], "source_at_ms": NOW - age_ms, "pending": 0,
               "state_users_shard0": 10, "state_users_shard1": 12}
    return LiveHealth(current, history, NOW, 60_000)


def test_growth_needs_the_last_third_well_over_the_first_and_the_latest_over_the_threshold():
    assert grows([0, 0, 10, 500, 2000, 4000], 1000)
    assert not grows([3000, 3100, 2900, 3000, 3050, 3000], 1000)  # a steady backlog
    assert not grows([0, 10, 40, 80, 120, 200], 1000)  # growing, still small
    assert not grows([5000, 6000], 1000)  # too few points


def test_a_growing_consumer_lag_behind_a_slow_sink_fails_the_sink_not_the_state():
    health = _health([0, 200, 900, 2500, 5000, 9000], p99=320.0)
    sink, state = live_sink(THIN_SINK, health), live_state(THIN_STATE, health)
    assert sink.verdict == "failing" and "consumer lag grew from 0 to 9000" in sink.summary
    assert any("slow sink" in f for f in sink.findings) and "check Redis" in sink.next_step
    assert state.verdict == "ok" and state.figures["live"]["state_users"] == 22


def test_a_healthy_live_pipeline_is_ok_and_retries_or_silence_are_not():
    healthy = _health([3, 0, 5, 2, 0, 4], p99=2.5)
    assert live_sink(THIN_SINK, healthy).verdict == "ok" and live_state(THIN_STATE, healthy).verdict == "ok"
    retried = _health([3, 0, 5, 2, 0, 4], p99=2.5, retries=[0, 0, 0, 2, 2, 5])
    assert live_sink(THIN_SINK, retried).summary == "live: 5 Redis writes retried in the period"
    slower = _health([3, 0, 5, 2, 0, 4], p99=2.5)
    for i, entry in enumerate(e for e in slower.history if e["role"] == "sink"):
        entry["sink_write_ms_p99"] = [0.1, 0.1, 0.2, 1.5, 2.0, 3.0][i]
    grown = live_sink(THIN_SINK, slower)
    assert grown.verdict == "failing" and "time per write grew from 0.100 ms to 3.000 ms" in grown.summary
    silent = _health([3, 0, 5], p99=2.5, age_ms=45_000)
    assert live_state(THIN_STATE, silent).verdict == "failing"
    assert "has not published for 45s" in live_state(THIN_STATE, silent).summary


def _produce_over(url: str, lines: list[str], seconds: float) -> None:
    """In eight slices (few round trips: the thread shares the interpreter with the pipeline)."""
    client = redis.Redis.from_url(url)
    step = max(1, len(lines) // 8)
    for start in range(0, len(lines), step):
        pipe = client.pipeline()
        for line in lines[start : start + step]:
            pipe.xadd(EVENTS_STREAM, {FIELD: line})
        pipe.execute()
        time.sleep(seconds / 8)
    client.close()


@pytest.mark.slow
def test_doctor_live_names_the_sink_of_a_live_run_behind_a_slow_redis(redis_url: str, tmp_path: Path):
    """The sink-lag case: a live run whose Redis sink takes 300 ms a bundle falls behind its log; doctor --live
    reads the published health and names the sink first (exit 1); doctor.json carries the live figures."""
    lines = list(generate("clickstream", users=4000, minutes=30, seed=3))[:12_000]
    config = StreamConfig(load_ruleset("clickstream"), GateParams(), shards=2, live=True)
    producer = threading.Thread(target=_produce_over, args=(redis_url, lines, 4.0))
    producer.start()
    pipeline = beam.Pipeline(options=pipeline_options([], LIVE_RUNNER, streaming=True))
    source = LiveSource(redis_url, poll_ms=5, read_count=40, health_ms=250)
    build_live(pipeline, config, source, 5.0, None, sink_delay_ms=300)
    pipeline.run().wait_until_finish()
    producer.join()

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(SystemExit) as done:
        main(["doctor", "--evidence", str(run), "--live", "--since", "1m", "--redis-url", redis_url])
    assert done.value.code == 1
    doctor = json.loads((run / "doctor.json").read_text())
    assert doctor["first_failing"] == "sink"
    sink = next(layer for layer in doctor["layers"] if layer["layer"] == "sink")
    live = sink["figures"]["live"]
    assert live["consumer_lag_over_period"]["last"] > 1000 and live["sink_ms_p99_max_over_period"] >= 300
    assert live["sink_write_ms_p99"] > 0 and live["sink_failures"] == 0  # per write, and no failed bundle
    state = next(layer for layer in doctor["layers"] if layer["layer"] == "state")
    assert state["verdict"] != "failing" and state["figures"]["live"]["state_users"] > 0


def test_doctor_live_refuses_an_embedded_store_and_answers_nothing_published_as_a_failing_state(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("SEGSHADOW_REDIS_URL", raising=False)
    with pytest.raises(SystemExit) as refused:
        main(["doctor", "--evidence", str(tmp_path), "--live"])
    assert refused.value.code == 2
    with pytest.raises(SystemExit) as done:
        main(["doctor", "--evidence", str(tmp_path), "--live", "--redis-url", redis_url])
    assert done.value.code == 1
    doctor = json.loads((tmp_path / "doctor.json").read_text())
    assert doctor["first_failing"] == "state" and "publishes no health" in doctor["headline"]
