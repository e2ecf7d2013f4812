"""Pipeline options: standard Beam options passed through, with a local runner named explicitly.

Anything after ``--`` on the command line reaches Beam unchanged
(``--runner=FlinkRunner --flink_master=... --state_backend=rocksdb``,
``--runner=DataflowRunner --project=... --region=... --temp_location=gs://...``).
Without ``--runner`` the local runner is chosen by name, never left to the
default ``DirectRunner`` (which tries to download PrismRunner and, offline,
silently falls back).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from segments.errors import UsageError

REPLAY_RUNNER = "FnApiRunner"  # fastest local runner; the pipeline needs no timer semantics
LIVE_RUNNER = "FnApiRunner"  # runs the Ticks splittable DoFn live
TEST_STREAM_RUNNER = "BundleBasedDirectRunner"  # real watermarks; runs TestStream
IN_PROCESS_RUNNERS = frozenset({"FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "DirectRunner"})
YOUNG_GENERATION = 50_000  # allocations between two young collections (CPython's default is 700)
# Live: smaller young collections, each followed by a middle one, so no collection has much to walk.
LIVE_THRESHOLDS = (10_000, 1, 100)


def pipeline_options(args: Sequence[str], default_runner: str, streaming: bool = False) -> PipelineOptions:
    """Options from Beam-style ``args`` (each ``--name=value`` or ``--flag``); ``UsageError`` otherwise."""
    for arg in args:
        if not arg.startswith("--"):
            raise UsageError(f"pipeline options are --name=value; got {arg!r}")
    options = PipelineOptions(list(args))
    try:
        options.get_all_options()
    except SystemExit:
        raise UsageError(f"bad pipeline options: {' '.join(args)}") from None
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = default_runner
    if streaming:
        standard.streaming = True
    return options


def runner_name(options: PipelineOptions) -> str:
    return str(options.view_as(StandardOptions).runner)


@contextmanager
def collector_tuned(options: PipelineOptions, live: bool = False) -> Iterator[None]:
    """While a local runner runs the pipeline in this process, tune the garbage collector for it.

    Replay (throughput): the shards hold millions of small long-lived objects
    (each user's facts and prefix sums). With CPython's default thresholds the
    collector re-scans them so often that it took about a third of the
    segmentation time in the 1M-event replay (bench/stream_replay.py); cycles
    are still collected, only after every 50,000 allocations instead of 700.

    Live (latency): what costs is a pause. With the replay setting, a middle
    collection came every 20 young ones and walked everything that had
    survived since, such as every user the stream had met meanwhile: 150-250 ms
    in bench/stream_live.py. Here a middle collection follows every young one
    (10,000 allocations), so each walks at most what one young one left, and
    what was alive before the pipeline started (modules, Beam) is frozen out
    of the full collections.

    Workers of a distributed runner are not this process and are left alone.
    The previous thresholds come back afterwards.
    """
    if runner_name(options) not in IN_PROCESS_RUNNERS:
        yield
        return
    before = gc.get_threshold()
    if live:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*LIVE_THRESHOLDS)
    else:
        gc.set_threshold(YOUNG_GENERATION, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if live:
            gc.unfreeze()
