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
        if self.plan is not None and found is not None and position is not None:
            results = evaluate(self.plan, self.plan.gates_for(position), data, now, time_in_stage=False)
            gate = GaugeMetricFamily("segshadow_gate_passing", "1 when the gate passes now", labels=["gate"])
            for r in results:
                gate.add_metric([r.name], 1.0 if r.status == PASS else 0.0)
            yield gate

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
