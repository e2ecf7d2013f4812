"""``stream replay``: the pipeline over a recorded file, with its outputs and their provenance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from segments.errors import InputError
from segments.outputs import file_sha256, write_meta
from segments.sqlstore import SqlStore
from segments.timeutil import wall_clock_ms
from streaming.byo import TransformRef, transform_transitions
from streaming.options import REPLAY_RUNNER, in_process_tuned, pipeline_options, runner_name, sink_delay_ms
from streaming.pipeline import (
    DEAD,
    METRICS_NAMESPACE,
    ReadAndAdmitFile,
    ReadAndAdmitRedisLog,
    StreamConfig,
    rejection_json,
    transitions_from,
    transitions_json,
)
from streaming.sinks import sink_all
from streaming.sinkstats import counter_names, summarize


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did: counts from the pipeline's metrics, and how long it took."""

    counts: dict[str, int]
    seconds: float
    out_path: Path
    dead_letter_path: Path


def dead_letter_path(out_path: str | Path) -> Path:
    return Path(f"{out_path}.deadletter.jsonl")


def _write_text(pcoll: Any, path: Path, label: str) -> None:
    _ = pcoll | label >> beam.io.WriteToText(str(path), shard_name_template="", num_shards=1)


def _counters(result: Any) -> dict[str, int]:
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    counts: dict[str, int] = dict.fromkeys(("lines", "applied", "duplicates", "too_late", "rejected", "transitions"), 0)
    for counter in query["counters"]:
        if counter_names(counter.key.metric.name):
            continue  # the sink's latency counters: the sidecar's metrics.redis_write
        value = counter.committed if counter.committed is not None else counter.attempted
        counts[counter.key.metric.name] = counts.get(counter.key.metric.name, 0) + int(value or 0)
    return counts


def _measured(result: Any) -> dict[str, Any]:
    """The pipeline's distributions (count, sum, min, max, mean) and gauges, for the sidecar's ``metrics``, and
    the Redis sink's per-write latency (``redis_write``: ``streaming.sinkstats.summarize``)."""
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    out: dict[str, Any] = {}
    for dist in query["distributions"]:
        value = dist.committed if dist.committed is not None else dist.attempted
        if value is not None and value.count:
            out[dist.key.metric.name] = {
                "count": value.count, "sum": value.sum, "min": value.min, "max": value.max,
                "mean": round(value.sum / value.count, 3),
            }
    for gauge in query["gauges"]:
        value = gauge.committed if gauge.committed is not None else gauge.attempted
        if value is not None and value.value is not None:
            name = gauge.key.metric.name
            out[name] = out.get(name, 0) + int(value.value)
    latency: dict[str, int] = {}
    for counter in query["counters"]:
        name = counter.key.metric.name
        if counter_names(name):
            value = counter.committed if counter.committed is not None else counter.attempted
            latency[name] = latency.get(name, 0) + int(value or 0)
    bundle = out.get("redis_bundle_ms")
    write = summarize(latency, bundle["max"] if isinstance(bundle, dict) else None)
    if write is not None:
        out["redis_write"] = write
    return out


@dataclass(frozen=True)
class RedisLog:
    """Replay from a Redis Stream (the dual-write log) instead of the file; the file stays the provenance."""

    redis_url: str
    stream_key: str


def build_replay(
    pipeline: beam.Pipeline,
    events: Path,
    out: Path,
    dead_path: Path,
    config: StreamConfig,
    redis_url: str | None = None,
    database_url: str | None = None,
    source: RedisLog | None = None,
    sink_delay: int = 0,
    run_id: str | None = None,
    transform: TransformRef | None = None,
) -> None:
    """Attach the replay source, segmentation and every sink to ``pipeline`` (runner-agnostic); SQL
    transitions are staged under ``run_id`` when given. With ``transform`` the team's ``PTransform``
    segments the admitted events instead of segshadow's segmenter (``streaming.byo``)."""
    reader: beam.DoFn = (
        ReadAndAdmitFile(config)
        if source is None
        else ReadAndAdmitRedisLog(config, source.redis_url, source.stream_key)
    )
    admitted = (
        pipeline
        | "Source" >> beam.Create([str(events)])
        | "ReadAndAdmit" >> beam.ParDo(reader).with_outputs(DEAD, main="batches")
    )
    transitions = (
        transitions_from(admitted.batches, config)
        if transform is None
        else transform_transitions(admitted.batches, transform.transform)
    )
    _write_text(transitions | "TransitionsJSON" >> beam.Map(transitions_json), out, "WriteTransitions")
    dead = admitted[DEAD]
    _write_text(dead | "DeadJSON" >> beam.Map(rejection_json), dead_path, "WriteDeadLetters")
    sink_all(transitions, dead, redis_url, database_url, config.ruleset.ref, run_id=run_id, sink_delay_ms=sink_delay)


def run_replay(
    events_path: str | Path,
    out_path: str | Path,
    config: StreamConfig,
    redis_url: str | None = None,
    database_url: str | None = None,
    beam_args: Sequence[str] = (),
    source: RedisLog | None = None,
    transform: TransformRef | None = None,
) -> ReplayResult:
    """Run the stream over a recorded file; write transitions to ``out_path`` and dead letters beside it.

    With ``source``, the events are read from that Redis Stream (what dual-write
    wrote) and ``events_path`` is the same log as a file, for provenance. The
    sidecar ``out_path.meta.json`` is written last, after the pipeline has
    finished, so an interrupted run never looks complete. With ``database_url`` the
    transitions are staged in SQL and published at once after the pipeline has
    finished (``streaming.sinks``): a failed replay leaves the rule set's previous
    transitions published. With ``transform`` (``streaming.byo``) the team's transform
    segments, and the sidecar's ``ruleset`` names it (``logic``) with its source digest.
    Raises ``InputError`` when the events file cannot be read.
    """
    events = Path(events_path)
    if not events.is_file():
        raise InputError("no such events file", str(events))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    dead_path = dead_letter_path(out)
    for stale in (out, dead_path, Path(f"{out}.meta.json")):
        stale.unlink(missing_ok=True)
    options = pipeline_options(beam_args, REPLAY_RUNNER)
    started = wall_clock_ms()
    pipeline = beam.Pipeline(options=options)
    staging = SqlStore.open(database_url) if database_url else None
    try:
        run_id = staging.begin_transitions(config.ruleset.ref) if staging is not None else None
        build_replay(
            pipeline,
            events,
            out,
            dead_path,
            config,
            redis_url,
            database_url,
            source,
            sink_delay_ms(options),
            run_id,
            transform=transform,
        )
        with in_process_tuned(options):
            result = pipeline.run()
            result.wait_until_finish()
        if staging is not None and run_id is not None:
            staging.publish_transitions(run_id, config.ruleset.ref)
    finally:
        if staging is not None:
            staging.close()
    seconds = (wall_clock_ms() - started) / 1000
    counts = _counters(result)
    write_meta(
        out,
        {
            "side": "stream",
            "ruleset": {
                "name": config.ruleset.name,
                "version": config.ruleset.version,
                "digest": config.ruleset.digest,
                "definition": dict(config.ruleset.definition),
            }
            if transform is None
            else transform.sidecar_ruleset(config.ruleset),
            "events_path": str(events),
            "source": "file" if source is None else f"redis-stream:{source.stream_key}",
            "events_sha256": file_sha256(events),
            "max_out_of_orderness_ms": config.params.max_out_of_orderness_ms,
            "allowed_lateness_ms": config.params.allowed_lateness_ms,
            "shards": config.shards,
            "runner": runner_name(options),
            "counts": counts,
            "metrics": _measured(result),
            "seconds": seconds,
            "dead_letter_path": dead_path.name,
        },
    )
    return ReplayResult(counts, seconds, out, dead_path)
