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
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from segments.errors import UsageError

REPLAY_RUNNER = "FnApiRunner"  # fastest local runner; the pipeline needs no timer semantics
LIVE_RUNNER = "FnApiRunner"  # runs the Ticks splittable DoFn live
TEST_STREAM_RUNNER = "BundleBasedDirectRunner"  # real watermarks; runs TestStream
IN_PROCESS_RUNNERS = frozenset({"FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "DirectRunner"})
YOUNG_GENERATION = 50_000  # allocations between two young collections (CPython's default is 700)
# Live: smaller young collections, each followed by a middle one, so no collection has much to walk; and no
# automatic full collection (its count threshold is never reached), see ``collector_tuned``.
LIVE_THRESHOLDS = (10_000, 1, 2**30)
# A live run's Beam state samplers: how often each wakes, in ms (Beam's 200, ramping up from 2), see
# ``live_state_samplers_quick``.
LIVE_SAMPLING_PERIOD_MS = 1
# The in-process SDK harness's state cache (Beam's FnApiRunner gives its embedded worker 100 MB), see
# ``state_cache_capped``.
IN_PROCESS_STATE_CACHE_MB = 16


class SinkOptions(PipelineOptions):
    """segshadow's own pipeline option, given after ``--`` like Beam's: a planted sink fault."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument(
            "--sink_delay_ms",
            type=int,
            default=0,
            help="fault injection: hold every Redis sink bundle this many ms before its writes complete "
            "(segshadow workload --fault slow-sink; read by segshadow doctor's sink layer)",
        )


def sink_delay_ms(options: PipelineOptions) -> int:
    """The ``--sink_delay_ms`` option (0 without it); ``UsageError`` when negative."""
    delay = int(options.view_as(SinkOptions).sink_delay_ms or 0)
    if delay < 0:
        raise UsageError("--sink_delay_ms must not be negative")
    return delay


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
    of the full collections. Full collections do not run by themselves: one
    walks every object that has survived two collections, which in a live
    stream is the whole window state (every user's facts), and with three
    minutes of history in the log (1.8M events, 50K users) one took 1.4 s,
    the worst stall of bench/stream_live.py --history-minutes 3. The state is
    acyclic and freed by reference counting as facts leave the window; what is
    not reclaimed is cyclic garbage old enough to reach the oldest generation,
    until the process restarts (the benchmark reports the process's RSS).

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


_BYTES_ONLY = {bytes}


def _weigh_without_module_scan(*objs: Any) -> int:
    """Beam's state-cache weight of ``objs``, without objsize's walk over every loaded module's globals.

    A list of bytes (what a bag of ``BytesCoder`` entries is, so every log bag
    of ``SegmentShard``) is weighed in C: the list plus each distinct entry,
    which is what objsize's walk adds up one object at a time.
    """
    if len(objs) == 1 and type(objs[0]) is list and set(map(type, objs[0])) <= _BYTES_ONLY:
        entries = objs[0]
        distinct = {id(entry): entry for entry in entries}.values()
        return sys.getsizeof(entries) + sum(map(sys.getsizeof, distinct))
    import objsize
    from apache_beam.runners.worker import statecache

    return int(
        objsize.get_deep_size(
            *objs,
            get_size_func=statecache._size_func,
            get_referents_func=statecache._get_referents_func,
            filter_func=statecache._filter_func,
            exclude_modules_globals=False,
        )
    )


@contextmanager
def state_cache_weighed_cheaply(options: PipelineOptions) -> Iterator[None]:
    """While a local runner runs the pipeline in this process, weigh its state-cache entries without a module scan.

    Beam's SDK harness re-weighs a state with objsize every time it puts it in
    its state cache, which is at every commit of a bag it holds. objsize
    starts each weighing by collecting the ids of every loaded module's
    globals (about 1,500 modules here), only to exclude them: about 1 ms a
    call, 8% of ``stream live``'s main thread and ~5 ms of every live bundle
    with four shards. Beam's own filter already skips modules, types and
    functions, the only ways into module globals, so the weights come out the
    same without that scan; and a bag of bytes is then summed in C instead of
    walked (~1 us an entry, up to 500 entries a log bag). Workers of a
    distributed runner are other processes and are left alone; Beam's function
    comes back afterwards.
    """
    from apache_beam.runners.worker import statecache

    with _swapped(options, statecache, "get_deep_size", _weigh_without_module_scan):
        yield


@contextmanager
def _swapped(options: PipelineOptions, module: Any, name: str, value: Any, when: bool = True) -> Iterator[None]:
    """``module.name`` is ``value`` while the block runs, if a local runner runs it in this process (and
    ``when``); Beam's own comes back afterwards."""
    if not when or runner_name(options) not in IN_PROCESS_RUNNERS:
        yield
        return
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


@contextmanager
def state_cache_capped(options: PipelineOptions) -> Iterator[None]:
    """While a local runner runs the pipeline in this process, its SDK harness caches at most
    ``IN_PROCESS_STATE_CACHE_MB`` of state instead of Beam's 100 MB.

    In this process the runner already holds every state in memory (its state
    servicer keeps each bag's encoded entries), so the harness's cache is a
    second copy of the same bytes. ``SegmentShard`` reads back only the bag it
    is logging to (the token check at a shard's first batch in a bundle) and
    everything once when it rebuilds; the rest of what the cache held were bags
    it only appends to or clears: the log bags it has moved past and the part
    snapshots, which Beam's cache keeps and extends after a clear. With ten
    minutes of history in ``bench/stream_live.py`` (6M events) the cache was
    full, 94-100 MB, nearly all of it such bags. The cache is an LRU on the
    bags' weight, so what a shard touches at every batch stays in it; what is
    evicted is read again from the runner if ever needed (a join of the bag's
    entries), the same values. Workers of a distributed runner are other
    processes with their own cache setting, left alone; Beam's size comes back
    afterwards.
    """
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    with _swapped(options, worker_handlers, "STATE_CACHE_SIZE_MB", IN_PROCESS_STATE_CACHE_MB):
        yield


def _no_totals(_metrics: Any, _key: Any = None) -> tuple[()]:
    """In place of FnApiRunner's per-bundle merge of a stage's metric totals: keeps none (see
    ``live_metric_totals_dropped``)."""
    return ()


@contextmanager
def live_metric_totals_dropped(options: PipelineOptions, live: bool) -> Iterator[None]:
    """While FnApiRunner runs a live pipeline in this process, it keeps no running totals of the bundles'
    Beam metrics.

    After each bundle the runner sets a stage's totals to
    ``consolidate(chain(this bundle's monitoring infos, the totals so far))``,
    and Beam's ``consolidate`` is a generator: nothing is merged until the
    pipeline's result is read, so every bundle's infos stay alive in a chain of
    unfinished generators, one more per bundle. A live run has dozens of
    bundles a second, and each bundle of the Redis sink's stage reports every
    counter it has ever had (``streaming.sinkstats`` named two per second; a
    live sink no longer makes those, ``RedisTransitionsSink(per_second=False)``), plus
    every gauge (never merged): what is kept grows with the square of the run's
    age. In ``bench/stream_live.py`` the pipeline grew by ~3.4 MB a second
    about 100 s after it started and ~8 MB a second at 300 s (10K events/s;
    hundreds of MB before the measured run with ten minutes of history).
    Merging at every bundle instead cost ~44% of a core by 100 s (the gauges'
    infos are kept one per bundle, and the sink's counters grow), so a live run
    keeps none: nothing reads a live run's Beam result (``stream live`` stops by
    its duration or a signal), and its health fields (``streaming.health``) are
    published as it runs, not taken from these totals. A replay (bounded, a few
    bundles, whose result's counters are read) keeps Beam's merge, and other
    runners are left alone; Beam's function comes back afterwards.
    """
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    with _swapped(options, fn_runner, "consolidate_monitoring_infos", _no_totals, when=live):
        yield


@contextmanager
def live_state_samplers_quick(options: PipelineOptions, live: bool) -> Iterator[None]:
    """While FnApiRunner runs a live pipeline in this process, each bundle's state sampler wakes every
    ``LIVE_SAMPLING_PERIOD_MS`` instead of Beam's 200 ms.

    A bundle processor starts a sampler thread (Beam's compiled one) at each
    bundle's start, which sleeps 2 ms, then 20% longer each time up to 200 ms,
    and joins it at the bundle's end: the join waits for its current sleep to
    end (Beam's own comment: "may have to wait up to sampling_period_ms").
    In ``bench/stream_live.py --rate 20000 --history-minutes 10`` the main
    thread spent 12% of its wall time in that join, every stage's every bundle
    waiting a few ms with nothing to do while events queued (11-12% at 5,000
    events/s without history too; 4% with a 2 ms period, whose sleeps ramp
    from 1 to 2 ms). At 1 ms every sleep is 1 ms, so a bundle's end waits at
    most that; the thread's wake-ups (a lock and a clock read, without the
    GIL) cost no CPU that the benchmark's busy time shows. The samplers only time the
    steps (Beam's execution-time metrics, which a live run does not read), so
    nothing else changes. A replay (a few long bundles) and other runners are
    left alone; Beam's class comes back afterwards.
    """
    from apache_beam.runners.worker import statesampler

    class QuickStateSampler(statesampler.StateSampler):
        def __init__(self, prefix: str, counter_factory: Any, sampling_period_ms: int = LIVE_SAMPLING_PERIOD_MS):
            super().__init__(prefix, counter_factory, sampling_period_ms=LIVE_SAMPLING_PERIOD_MS)

    with _swapped(options, statesampler, "StateSampler", QuickStateSampler, when=live):
        yield


@contextmanager
def in_process_tuned(options: PipelineOptions, live: bool = False) -> Iterator[None]:
    """``collector_tuned``, ``state_cache_weighed_cheaply``, ``state_cache_capped`` and (live)
    ``live_metric_totals_dropped`` and ``live_state_samplers_quick`` together: what a local run needs."""
    with ExitStack() as stack:
        stack.enter_context(collector_tuned(options, live))
        stack.enter_context(state_cache_weighed_cheaply(options))
        stack.enter_context(state_cache_capped(options))
        stack.enter_context(live_metric_totals_dropped(options, live))
        stack.enter_context(live_state_samplers_quick(options, live))
        yield
