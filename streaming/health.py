"""The live stream's health, published to the serving store once a second and read back by the doctor and /metrics.

Each stage of ``stream live`` publishes its own fields (``HealthPublisher``), so the
figures are right on a distributed runner too, where the stages run on other workers:

- **source** (``PollAndAdmit``): ``watermark_ms``, ``watermark_lag_ms`` (wall clock
  minus watermark), the running totals ``lines``, ``applied``, ``duplicates``,
  ``too_late``, ``rejected`` and ``dead_letters`` (too late + rejected), the rates
  ``events_in_per_s`` and ``applied_per_s`` over the last interval,
  ``consumer_lag`` (log entries after the source's cursor, read in the same
  ``MULTI`` as the entries) and ``pending`` (the group's pending entries, 0 by
  design), ``regroups``;
- **shard** (``SegmentShard``): ``state_users_shard<N>``, the users held in shard N's
  state, and ``state_edges_shard<N>``, its pending window edges;
- **sink** (``RedisTransitionsSink``): ``sink_writes``, ``sink_retries`` and
  ``sink_failures`` (totals), ``sink_bundles`` and ``sink_ms_p50`` / ``sink_ms_p99`` /
  ``sink_ms_max``: the time each bundle spent in Redis over the last interval, and
  ``sink_write_ms_p50`` / ``_p99`` / ``_max``: the same per write (a bundle's time
  over its writes, ``streaming.sinkstats``).

Keys: ``HEALTH_KEY``, a hash holding the latest value of every field and each
role's ``<role>_at_ms`` (wall clock of its last publish); ``HISTORY_KEY``, a Redis
Stream of every publish (its fields and ``role``), capped near ``HISTORY_MAX``
entries (an hour of the three roles at one a second), whose entry ids carry the
time, so a period is one ``XRANGE``.

Cost: a stage checks a monotonic clock per element or bundle and publishes at
most once per ``every_s``, in one round trip; nothing is done per event.
Publishing is best effort: a failure is logged once per outage and never fails
or delays the pipeline's work. Reading (``read_health``, ``parse_fields``) needs
no Beam.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

HEALTH_KEY = "segshadow:stream:health"
HISTORY_KEY = "segshadow:stream:health:history"
HISTORY_MAX = 3 * 3600 + 600
ROLES = ("source", "shard", "sink")

log = logging.getLogger("segshadow.stream")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_fields(raw: Mapping[Any, Any]) -> dict[str, float | str]:
    """A hash or history entry as text keys and numbers (a value that is not a number stays text)."""
    out: dict[str, float | str] = {}
    for key, value in raw.items():
        text = _text(value)
        try:
            number = float(text)
        except ValueError:
            out[_text(key)] = text
            continue
        out[_text(key)] = int(number) if number.is_integer() else number
    return out


def quantiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max of ``values`` (nearest rank); empty when there are none."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, int(q * n + 0.999999) - 1))]

    return {"p50": rank(0.5), "p99": rank(0.99), "max": ordered[-1]}


class HealthPublisher:
    """Publishes one role's fields at most once per ``every_s`` (module doc); ``due()`` is the cheap check."""

    def __init__(self, role: str, every_s: float = 1.0) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown health role {role!r}")
        self.role = role
        self.every_s = every_s
        self.last = time.monotonic()  # the first publish comes after one interval
        self.failing = False

    def due(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) - self.last >= self.every_s

    def publish(self, client: Any, fields: Mapping[str, float | int | str]) -> bool:
        """HSET the fields and ``<role>_at_ms`` and XADD them to the history, in one round trip; False if it failed."""
        self.last = time.monotonic()
        at_ms = int(time.time() * 1000)
        values = {key: str(value) for key, value in fields.items()}
        try:
            pipe = client.pipeline(transaction=False)
            pipe.hset(HEALTH_KEY, mapping={**values, f"{self.role}_at_ms": str(at_ms)})
            pipe.xadd(HISTORY_KEY, {"role": self.role, **values}, maxlen=HISTORY_MAX, approximate=True)
            pipe.execute()
        except Exception as exc:  # health is best effort: the pipeline's own work goes on
            if not self.failing:
                log.warning("could not publish the stream's %s health (retried every %.0f s): %s", self.role,
                            self.every_s, exc)
            self.failing = True
            return False
        self.failing = False
        return True


def read_health(client: Any, since_ms: int) -> tuple[dict[str, float | str], list[dict[str, float | str]]]:
    """The current hash and the history entries from ``since_ms`` on (each with ``at_ms`` from its id)."""
    current = parse_fields(client.hgetall(HEALTH_KEY) or {})
    history: list[dict[str, float | str]] = []
    for entry_id, fields in client.xrange(HISTORY_KEY, min=str(max(0, since_ms)), max="+"):
        entry = parse_fields(fields)
        entry["at_ms"] = int(_text(entry_id).split("-")[0])
        history.append(entry)
    return current, history
