"""The live run's status line: events sent and their rate, the consumer group's lag, the stream's p99 so far."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from shadow.status import LiveSample, LiveWatcher


def _transition(effective: str, emitted: str, cause: str = "event") -> str:
    row = {"user_id": "u", "segments": [], "effective_time": effective, "revision": 1, "emitted_at": emitted}
    return json.dumps({**row, "cause": cause})


def test_a_sample_counts_sent_lag_and_the_p99_of_event_caused_transitions(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    clock = iter([0.0, 2.0, 4.0])
    transitions = tmp_path / "stream.jsonl"
    watcher = LiveWatcher(client, "log", "group", transitions, clock=lambda: next(clock))
    try:
        # As the dual-writer writes: a batch an entry, ids counting lines (streaming.eventlog).
        client.xadd("log", {"b": "0\n1\n2\n3"}, id="100-4")
        client.xadd("log", {"b": "4\n5\n6\n7\n8\n9"}, id="105-10")
        client.xgroup_create("log", "group", id="100-4")  # the first entry read: 6 lines of lag
        late = _transition("2024-01-01T00:00:01.000Z", "2024-01-01T00:00:01.500Z")
        transitions.write_text(
            _transition("2024-01-01T00:00:00.000Z", "2024-01-01T00:00:00.020Z") + "\n"
            + _transition("2024-01-01T00:00:00.000Z", "2024-01-01T00:09:00.000Z", "expiry") + "\n"
            + late[:40],  # a line still being written
            encoding="utf-8",
        )
        first = watcher.sample()
        assert (first.sent, first.rate, first.lag, first.transitions) == (10, None, 6, 1)
        assert first.p99_ms == 20
        client.xadd("log", {"b": "\n".join(map(str, range(10)))}, id="110-20")
        with transitions.open("a", encoding="utf-8") as handle:
            handle.write(late[40:] + "\n")  # the rest of that line: 500 ms
        second = watcher.sample()
        assert (second.sent, second.rate, second.lag, second.transitions) == (20, 5.0, 16, 2)
        assert second.p99_ms == 500
    finally:
        client.close()


def test_the_line_reads_well_and_says_what_it_could_not_read() -> None:
    line = LiveSample(12.4, 11_950, 1_000.2, 35, 1_204, 41.3).line()
    assert line == (
        "live 12 s: 11,950 sent (1,000/s), consumer lag 35, event time to segment p99 so far 41 ms "
        "(1,204 transitions, late events included)"
    )
    assert LiveSample(1, None, None, None, 0, None).line().startswith(
        "live 1 s: — sent, consumer lag —, event time to segment p99 so far — (0 transitions"
    )


def test_a_sample_survives_a_server_that_is_gone(tmp_path: Path) -> None:
    from tests.rollout.helpers import closed_port

    client = redis.Redis(port=closed_port(), socket_connect_timeout=0.2)
    sample = LiveWatcher(client, "log", "group", tmp_path / "absent.jsonl").sample()
    assert (sample.sent, sample.lag, sample.p99_ms) == (None, None, None)
