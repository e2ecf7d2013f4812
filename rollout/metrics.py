"""Prometheus metrics of the cutover: parity, freshness, dead letters, the stage and what was served.

A custom collector reads the latest evidence (``EvidenceFile``) and the rollout
position (``StageCache``) at every scrape, so the numbers are never older than the
files and the store; a counter records each answer of the router. Rollout tools
(Argo Rollouts' Prometheus provider, Flagger) can gate on these series:

- ``segshadow_parity_pairs``, ``segshadow_parity_agree``, ``segshadow_parity_agreement_ratio``
- ``segshadow_parity_mismatches{cause}``
- ``segshadow_unexplained_mismatch_rate``, ``segshadow_unexplained_mismatch_rate_wilson95_upper``
- ``segshadow_freshness_milliseconds{side, quantile}`` (0.5, 0.95, 0.99, 1 = max),
  ``segshadow_freshness_samples{side}``
- ``segshadow_dead_letter_events{side, reason}``, ``segshadow_applied_events{side}``
- ``segshadow_evidence_age_seconds``, ``segshadow_evidence_info{ruleset, version, verdict}``
- ``segshadow_rollout_stage{stage}`` (1 for the current stage), ``segshadow_rollout_percent``,
  ``segshadow_rollout_version``
- ``segshadow_gate_passing{gate}`` (with a plan: 1 pass, 0 otherwise, for the current position)
- ``segshadow_served_total{side, fallback}``
- the live stream's health as it last published it (``streaming.health``, read
  from the stage cache's Redis at every scrape): ``segshadow_stream_watermark_lag_seconds``,
  ``segshadow_stream_events_per_second{stage}`` (in, applied),
  ``segshadow_stream_events{outcome}`` (lines, applied, duplicates, too_late,
  rejected, dead_letters: totals since the stream started),
  ``segshadow_stream_consumer_lag_entries``, ``segshadow_stream_pending_entries``,
  ``segshadow_stream_state_users{shard}``,
  ``segshadow_stream_sink_bundle_milliseconds{quantile}`` (0.5, 0.99, 1 = max, over
  the last second), ``segshadow_stream_sink_write_milliseconds{quantile}`` (the same
  per write), ``segshadow_stream_sink_writes``, ``segshadow_stream_sink_retries``,
  ``segshadow_stream_sink_failures``,
  ``segshadow_stream_health_age_seconds{role}`` (source, shard, sink)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from compare.stats import wilson_interval
from rollout.evidence import EvidenceFile
from rollout.gates import PASS, evaluate
from rollout.plan import Plan
from rollout.router import Served, StageCache
from rollout.stages import ORDER
from segments.timeutil import Clock, TimestampError, parse_rfc3339_ms, wall_clock_ms
from streaming.health import HEALTH_KEY, ROLES, parse_fields

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUANTILES = (("0.5", "p50_ms"), ("0.95", "p95_ms"), ("0.99", "p99_ms"), ("1", "max_ms"))


def _num(node: Any, *path: str) -> float | None:
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, int | float) or not math.isfinite(node):
        return None
    return float(node)


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(name, doc, value=value)


class RolloutCollector(Collector):
    """Reads evidence and stage at scrape time; absent data yields no sample rather than a zero."""

    def __init__(
        self,
        evidence: EvidenceFile | None,
        stages: StageCache | None,
        plan: Plan | None = None,
        clock: Clock = wall_clock_ms,
    ) -> None:
        self.evidence = evidence
        self.stages = stages
        self.plan = plan
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        found = self.evidence.current() if self.evidence is not None else None
        data: Mapping[str, Any] = found.data if found is not None else {}
        now = self.clock()
        yield from self._parity(data)
        yield from self._latency(data)
        yield from self._dead_letters(data)
        yield from self._provenance(data, now)
        position = None
        if self.stages is not None:
            view = self.stages.current()
            position = view.position
            if position is not None:
                stage = GaugeMetricFamily(
                    "segshadow_rollout_stage", "1 for the current rollout stage", labels=["stage"]
                )
                for name in ORDER:
                    stage.add_metric([name.value], 1.0 if name is position.stage else 0.0)
                yield stage
                yield GaugeMetricFamily(
                    "segshadow_rollout_percent",
                    "share of users the stream serves (%)",
                    value=position.percent,
                )
                yield from _gauge("segshadow_rollout_version", "rollout state version", view.version)
        yield from self._stream_health(now)
        if self.plan is not None and found is not None and position is not None:
            results = evaluate(self.plan, self.plan.gates_for(position), data, now, time_in_stage=False)
            gate = GaugeMetricFamily("segshadow_gate_passing", "1 when the gate passes now", labels=["gate"])
            for r in results:
                gate.add_metric([r.name], 1.0 if r.status == PASS else 0.0)
            yield gate

    def _stream_health(self, now: int) -> Iterator[Metric]:
        client = self.stages.client if self.stages is not None else None
        if client is None:
            return
        try:
            health = parse_fields(client.hgetall(HEALTH_KEY) or {})
        except Exception:  # Redis down: no samples, as for any absent data
            return
        if not health:
            return
        lag = _num(health, "watermark_lag_ms")
        yield from _gauge("segshadow_stream_watermark_lag_seconds", "wall clock minus the stream's watermark",
                          lag / 1000 if lag is not None else None)
        rates = GaugeMetricFamily("segshadow_stream_events_per_second", "events read and applied per second",
                                  labels=["stage"])
        for stage, key in (("in", "events_in_per_s"), ("applied", "applied_per_s")):
            value = _num(health, key)
            if value is not None:
                rates.add_metric([stage], value)
        yield rates
        events = GaugeMetricFamily("segshadow_stream_events", "the stream's admission totals", labels=["outcome"])
        for outcome in ("lines", "applied", "duplicates", "too_late", "rejected", "dead_letters"):
            value = _num(health, outcome)
            if value is not None:
                events.add_metric([outcome], value)
        yield events
        yield from _gauge("segshadow_stream_consumer_lag_entries", "log entries the stream has not read",
                          _num(health, "consumer_lag"))
        yield from _gauge("segshadow_stream_pending_entries", "entries pending in the consumer group",
                          _num(health, "pending"))
        users = GaugeMetricFamily("segshadow_stream_state_users", "users held in a shard's state", labels=["shard"])
        for key in sorted(health):
            value = _num(health, key) if key.startswith("state_users_shard") else None
            if value is not None:
                users.add_metric([key.removeprefix("state_users_shard")], value)
        yield users
        sink = GaugeMetricFamily("segshadow_stream_sink_bundle_milliseconds",
                                 "time a sink bundle spent in Redis, over the last second", labels=["quantile"])
        for quantile, key in (("0.5", "sink_ms_p50"), ("0.99", "sink_ms_p99"), ("1", "sink_ms_max")):
            value = _num(health, key)
            if value is not None:
                sink.add_metric([quantile], value)
        yield sink
        yield from _gauge("segshadow_stream_sink_writes", "Redis sink writes", _num(health, "sink_writes"))
        yield from _gauge("segshadow_stream_sink_retries", "Redis sink writes retried", _num(health, "sink_retries"))
        yield from _gauge("segshadow_stream_sink_failures", "Redis sink bundles failed after every retry",
                          _num(health, "sink_failures"))
        per_write = GaugeMetricFamily("segshadow_stream_sink_write_milliseconds",
                                      "a bundle's Redis time per write, over the last second", labels=["quantile"])
        for quantile, key in (("0.5", "sink_write_ms_p50"), ("0.99", "sink_write_ms_p99"), ("1", "sink_write_ms_max")):
            value = _num(health, key)
            if value is not None:
                per_write.add_metric([quantile], value)
        yield per_write
        age = GaugeMetricFamily("segshadow_stream_health_age_seconds", "since a stage last published its health",
                                labels=["role"])
        for role in ROLES:
            at = _num(health, f"{role}_at_ms")
            if at is not None:
                age.add_metric([role], (now - at) / 1000)
        yield age

    def _parity(self, data: Mapping[str, Any]) -> Iterator[Metric]:
        pairs, agree = _num(data, "pairs"), _num(data, "agree")
        yield from _gauge("segshadow_parity_pairs", "compared (as-of, user) pairs", pairs)
        yield from _gauge("segshadow_parity_agree", "pairs whose two sets are equal", agree)
        if pairs and agree is not None:
            yield GaugeMetricFamily("segshadow_parity_agreement_ratio", "agree / pairs", value=agree / pairs)
        causes = data.get("by_cause")
        if isinstance(causes, Mapping):
            family = GaugeMetricFamily("segshadow_parity_mismatches", "mismatches by cause", labels=["cause"])
            for cause in sorted(causes):
                value = _num(causes, cause)
                if value is not None:
                    family.add_metric([str(cause)], value)
            yield family
        unexplained = _num(data, "by_cause", "unexplained")
        if pairs and unexplained is not None and unexplained <= pairs:
            yield GaugeMetricFamily(
                "segshadow_unexplained_mismatch_rate",
                "unexplained mismatches / pairs",
                value=unexplained / pairs,
            )
            upper = wilson_interval(int(unexplained), int(pairs))[1]
            yield GaugeMetricFamily(
                "segshadow_unexplained_mismatch_rate_wilson95_upper", "Wilson 95% upper bound", value=upper
            )

    def _latency(self, data: Mapping[str, Any]) -> Iterator[Metric]:
        latency = data.get("latency")
        if not isinstance(latency, Mapping):
            return
        fresh = GaugeMetricFamily(
            "segshadow_freshness_milliseconds",
            "event-to-segment freshness quantiles",
            labels=["side", "quantile"],
        )
        samples = GaugeMetricFamily("segshadow_freshness_samples", "freshness samples", labels=["side"])
        for side in ("legacy", "stream"):
            for quantile, key in QUANTILES:
                value = _num(latency, side, key)
                if value is not None:
                    fresh.add_metric([side, quantile], value)
            count = _num(latency, side, "count")
            if count is not None:
                samples.add_metric([side], count)
        yield fresh
        yield samples

    def _dead_letters(self, data: Mapping[str, Any]) -> Iterator[Metric]:
        dead = data.get("dead_letter")
        if not isinstance(dead, Mapping):
            return
        letters = GaugeMetricFamily(
            "segshadow_dead_letter_events", "dead-lettered events", labels=["side", "reason"]
        )
        applied = GaugeMetricFamily("segshadow_applied_events", "events a side applied", labels=["side"])
        for side, reasons in (("legacy", ("rejected",)), ("stream", ("rejected", "too_late"))):
            for reason in reasons:
                value = _num(dead, side, reason)
                if value is not None:
                    letters.add_metric([side, reason], value)
            events = _num(dead, side, "events")
            if events is not None:
                applied.add_metric([side], events)
        yield letters
        yield applied

    def _provenance(self, data: Mapping[str, Any], now: int) -> Iterator[Metric]:
        generated = data.get("generated_at")
        if isinstance(generated, str):
            try:
                age = (now - parse_rfc3339_ms(generated)) / 1000
            except TimestampError:
                age = None
            yield from _gauge("segshadow_evidence_age_seconds", "age of the latest evidence", age)
        ruleset = data.get("ruleset")
        if isinstance(ruleset, Mapping):
            info = GaugeMetricFamily(
                "segshadow_evidence_info",
                "the latest evidence's rule set and verdict",
                labels=["ruleset", "version", "verdict"],
            )
            info.add_metric(
                [str(ruleset.get("name")), str(ruleset.get("version")), str(data.get("verdict"))], 1.0
            )
            yield info


class RolloutMetrics:
    """A private registry with the collector and the served counter; ``render()`` is the /metrics body."""

    def __init__(
        self,
        evidence: EvidenceFile | None,
        stages: StageCache | None,
        plan: Plan | None = None,
        clock: Clock = wall_clock_ms,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RolloutCollector(evidence, stages, plan, clock))
        self.served = Counter(
            "segshadow_served",
            "router answers by side and whether it fell back",
            ["side", "fallback"],
            registry=self.registry,
        )

    def observe(self, served: Served) -> None:
        self.served.labels(served.side, "true" if served.fallback else "false").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
