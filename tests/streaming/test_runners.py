"""The pipeline is runner-agnostic: it builds and serialises to a portable job with Flink/Dataflow options."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import pytest

from segments.errors import UsageError
from segments.lateness import GateParams
from segments.rules import load_ruleset
from streaming.live import LiveSource, build_live
from streaming.options import pipeline_options, runner_name
from streaming.pipeline import StreamConfig
from streaming.replay import build_replay

FLINK = [
    "--runner=PortableRunner",
    "--job_endpoint=localhost:8099",
    "--environment_type=LOOPBACK",
    "--streaming",
]
DATAFLOW = [
    "--runner=DataflowRunner",
    "--project=example",
    "--region=europe-west1",
    "--temp_location=gs://example/tmp",
    "--enable_streaming_engine",
]


@pytest.mark.parametrize("args", [FLINK, DATAFLOW], ids=["portable-flink", "dataflow"])
def test_live_and_replay_pipelines_build_to_a_portable_proto_with_distributed_options(args, tmp_path: Path):
    """Both pipelines translate to the Runner API with a distributed runner's options, without running."""
    options = pipeline_options(args, "FnApiRunner")
    assert runner_name(options) == args[0].split("=", 1)[1]
    config = StreamConfig(load_ruleset("risk"), GateParams(), shards=16, live=True)

    live = beam.Pipeline(options=options)
    build_live(live, config, LiveSource("redis://redis.example:6379/0"), None, "postgresql://db.example/segshadow")
    proto = live.to_runner_api()
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert any("PollAndAdmit" in n for n in names) and any("Segment" in n for n in names)

    replay = beam.Pipeline(options=options)
    events = tmp_path / "e.jsonl"
    build_replay(replay, events, tmp_path / "o.jsonl", tmp_path / "d.jsonl", config, "redis://r:6379/0", None)
    stateful = [
        t for t in replay.to_runner_api().components.transforms.values() if t.spec.urn == "beam:transform:pardo:v1"
    ]
    assert stateful, "the segmentation ParDo is in the portable graph"


def test_local_runner_is_named_when_none_is_given():
    """Without --runner the local runner is chosen by name (never the Prism-downloading default)."""
    assert runner_name(pipeline_options([], "FnApiRunner")) == "FnApiRunner"


def test_pipeline_options_reject_a_positional_argument():
    """A stray word after -- is a usage error, not silently ignored."""
    with pytest.raises(UsageError):
        pipeline_options(["FlinkRunner"], "FnApiRunner")


def test_in_process_tuning_weighs_state_as_beam_does_and_restores_beam_after():
    import gc
    import pickle

    from apache_beam.runners.worker import statecache

    from streaming.options import in_process_tuned

    entry = b"y" * 50
    values = [
        [b"x" * 100] * 10,  # one object ten times: counted once
        [pickle.dumps(list(range(100))), entry, entry, b"", bytes(1000)],
        [],
        [b"a", "b"],  # not all bytes: the general walk
        [pickle.dumps(i) for i in range(600)],
        {"a": [1, 2, (3, "four")]},
    ]
    beams_own = statecache.get_deep_size
    expected = [beams_own(v) for v in values]
    thresholds = gc.get_threshold()
    with in_process_tuned(pipeline_options([], "FnApiRunner"), live=True):
        assert statecache.get_deep_size is not beams_own
        assert [statecache.get_deep_size(v) for v in values] == expected
        assert gc.get_threshold() != thresholds
    assert statecache.get_deep_size is beams_own
    assert gc.get_threshold() == thresholds


def test_in_process_tuning_leaves_a_distributed_runner_alone():
    import gc

    from apache_beam.runners.worker import statecache

    from streaming.options import in_process_tuned

    beams_own, thresholds = statecache.get_deep_size, gc.get_threshold()
    with in_process_tuned(pipeline_options(["--runner=FlinkRunner"], "FnApiRunner")):
        assert statecache.get_deep_size is beams_own
        assert gc.get_threshold() == thresholds


def test_in_process_state_cache_is_capped_while_the_pipeline_runs(monkeypatch):
    """The embedded SDK harness's state cache (a second copy of the runner's in-memory state) is built with
    ``IN_PROCESS_STATE_CACHE_MB``, not Beam's 100 MB, for a stateful pipeline run under ``in_process_tuned``;
    Beam's size comes back afterwards and a distributed runner is left alone."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import worker_handlers
    from apache_beam.runners.worker import statecache
    from apache_beam.transforms.userstate import BagStateSpec

    from streaming.options import IN_PROCESS_STATE_CACHE_MB, in_process_tuned

    built: list[int] = []
    original_init = statecache.StateCache.__init__

    def recording_init(self, max_weight):  # type: ignore[no-untyped-def]
        built.append(max_weight)
        original_init(self, max_weight)

    monkeypatch.setattr(statecache.StateCache, "__init__", recording_init)

    class Count(beam.DoFn):
        SEEN = BagStateSpec("seen", beam.coders.BytesCoder())

        def process(self, element, seen=beam.DoFn.StateParam(SEEN)):  # type: ignore[no-untyped-def]
            seen.add(b"x")
            yield element[0], len(list(seen.read()))

    beams_own = worker_handlers.STATE_CACHE_SIZE_MB
    assert beams_own > IN_PROCESS_STATE_CACHE_MB
    options = pipeline_options([], "FnApiRunner")
    with in_process_tuned(options), beam.Pipeline(options=options) as pipeline:
        _ = pipeline | beam.Create([(1, "a"), (1, "b"), (2, "c")]) | beam.ParDo(Count())
    assert built and set(built) == {IN_PROCESS_STATE_CACHE_MB << 20}
    assert beams_own == worker_handlers.STATE_CACHE_SIZE_MB
    with in_process_tuned(pipeline_options(["--runner=FlinkRunner"], "FnApiRunner")):
        assert beams_own == worker_handlers.STATE_CACHE_SIZE_MB


def test_a_live_in_process_run_keeps_no_per_bundle_metric_totals():
    """FnApiRunner's per-bundle merge of a stage's metric totals is a lazy generator that keeps every bundle's
    infos alive (a live run grew with the square of its age); under ``in_process_tuned(live=True)`` the merge
    keeps nothing, while a replay keeps Beam's merge and Beam's function comes back afterwards."""
    import itertools

    from apache_beam.metrics.monitoring_infos import int64_counter
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from streaming.options import in_process_tuned

    beams_own = fn_runner.consolidate_monitoring_infos
    bundle = [int64_counter("urn:test", 2)]
    options = pipeline_options([], "FnApiRunner")
    with in_process_tuned(options, live=True):
        totals = fn_runner.consolidate_monitoring_infos(itertools.chain(bundle, bundle))
        assert list(totals) == []
        assert list(fn_runner.consolidate_monitoring_infos(itertools.chain(bundle, totals))) == []
    assert fn_runner.consolidate_monitoring_infos is beams_own
    with in_process_tuned(options):  # a replay: Beam's merge, two bundles' counters summed
        assert fn_runner.consolidate_monitoring_infos is beams_own
    merged = list(beams_own(itertools.chain(bundle, bundle)))
    assert merged == [int64_counter("urn:test", 4)]


def test_a_live_local_run_ends_its_bundles_without_waiting_out_the_state_samplers_sleep():
    """Beam's sampler thread sleeps up to 200 ms and a bundle's end joins it: in a live local run a sampler
    stopped after 300 ms returns within a few ms; a replay keeps Beam's class, and it comes back afterwards."""
    import time

    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    from streaming.options import in_process_tuned

    def waited_ms() -> float:
        sampler = statesampler.StateSampler("stage", CounterFactory())
        sampler.start()
        time.sleep(0.3)
        started = time.perf_counter()
        sampler.stop()
        return (time.perf_counter() - started) * 1000

    beams_own = statesampler.StateSampler
    assert min(waited_ms() for _ in range(3)) > 5, "Beam's sampler sleeps ~10 ms or more by then"
    with in_process_tuned(pipeline_options([], "FnApiRunner"), live=False):
        assert statesampler.StateSampler is beams_own
    with in_process_tuned(pipeline_options([], "FnApiRunner"), live=True):
        assert min(waited_ms() for _ in range(3)) < 5
    assert statesampler.StateSampler is beams_own
