"""What a live shadow run has done so far, sampled while it runs: for a status line every few seconds.

``LiveWatcher.sample()`` reads, without disturbing the run:

- **sent** and **rate**: lines in the shadow log, and their rate since the last sample. The
  dual-writer's entry ids count lines (``streaming.eventlog``), so this is the sequence part of
  the log's last id (``XINFO STREAM``), however many lines each entry holds;
- **lag**: lines after the stream's consumer group's last-delivered id (``XINFO GROUPS``;
  the live source reads by cursor, so nothing is left pending); None until the group exists;
- **p99 so far**: over the event-caused transitions appended to ``stream.jsonl`` so far,
  ``emitted_at - effective_time``: from the causing event's *event time* to its segment
  change. A late event counts with its lateness (``stream.jsonl`` does not say when it
  arrived), so this is an upper estimate; the run's final freshness (``shadow.live``,
  from ingest times) is the figure that counts.

A sample never raises for a Redis or file problem: the fields it could not read are None.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from compare.latency import LatencySketch
from segments.timeutil import TimestampError, parse_rfc3339_ms
from streaming.eventlog import position


@dataclass(frozen=True)
class LiveSample:
    """One status sample (see the module doc); None for what could not be read."""

    elapsed_s: float
    sent: int | None
    rate: float | None
    lag: int | None
    transitions: int
    p99_ms: float | None

    def line(self) -> str:
        """``live 12 s: 11,950 sent (1,000/s), consumer lag 35, event time to segment p99 so far 41 ms (1,204
        transitions, late events included)``."""
        sent = "—" if self.sent is None else f"{self.sent:,}"
        rate = "" if self.rate is None else f" ({self.rate:,.0f}/s)"
        lag = "—" if self.lag is None else f"{self.lag:,}"
        p99 = "—" if self.p99_ms is None else f"{self.p99_ms:,.0f} ms"
        return (
            f"live {self.elapsed_s:,.0f} s: {sent} sent{rate}, consumer lag {lag}, "
            f"event time to segment p99 so far {p99} ({self.transitions:,} transitions, late events included)"
        )


class LiveWatcher:
    """Samples a live run's shadow log, consumer group and ``stream.jsonl`` (see the module doc)."""

    def __init__(
        self,
        client: redis.Redis,
        stream_key: str,
        group: str,
        transitions: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.stream_key = stream_key
        self.group = group
        self.transitions = transitions
        self.clock = clock
        self.started = clock()
        self._last: tuple[float, int] | None = None
        self._offset = 0
        self._partial = b""
        self._count = 0
        self._sketch = LatencySketch()

    def _read_transitions(self) -> None:
        try:
            with self.transitions.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except OSError:
            return
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        delays = []
        for raw in lines:
            try:
                row = json.loads(raw)
                if row.get("cause") in ("event", "correction"):
                    emitted, effective = parse_rfc3339_ms(row["emitted_at"]), parse_rfc3339_ms(row["effective_time"])
                    delays.append(max(0, emitted - effective))
            except (ValueError, KeyError, TypeError, AttributeError, TimestampError):
                continue
        if delays:
            self._sketch.update(np.asarray(delays, dtype=np.float64))
            self._count += len(delays)

    def sample(self) -> LiveSample:
        now = self.clock()
        sent = lag = None
        try:
            sent = position(self.client.xinfo_stream(self.stream_key)["last-generated-id"])[1]
            for info in self.client.xinfo_groups(self.stream_key):
                name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
                if name == self.group:
                    lag = sent - position(info["last-delivered-id"])[1]
        except (redis.RedisError, OSError):
            pass
        rate = None
        if sent is not None:
            if self._last is not None and now > self._last[0]:
                rate = (sent - self._last[1]) / (now - self._last[0])
            self._last = (now, sent)
        self._read_transitions()
        p99 = self._sketch.summary("so far").p99_ms if self._count else None
        return LiveSample(now - self.started, sent, rate, lag, self._count, p99)
