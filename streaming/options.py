"""Pipeline options: standard Beam options passed through, with a local runner named explicitly.

Anything after ``--`` on the command line reaches Beam unchanged
(``--runner=FlinkRunner --flink_master=... --state_backend=rocksdb``,
``--runner=DataflowRunner --project=... --region=... --temp_location=gs://...``).
Without ``--runner`` the local runner is chosen by name, never left to the
default ``DirectRunner`` (which tries to download PrismRunner and, offline,
silently falls back).
"""

from __future__ import annotations

from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from segments.errors import UsageError

REPLAY_RUNNER = "FnApiRunner"  # fastest local runner; the pipeline needs no timer semantics
LIVE_RUNNER = "FnApiRunner"  # runs PeriodicImpulse (a splittable DoFn) live
TEST_STREAM_RUNNER = "BundleBasedDirectRunner"  # real watermarks; runs TestStream


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
