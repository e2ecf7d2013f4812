"""The pipeline on Beam's streaming runner with TestStream: expiry and corrections as elements arrive over time."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that

from segments.lateness import GateParams
from segments.rules import load_ruleset
from streaming.options import TEST_STREAM_RUNNER
from streaming.pipeline import DEAD, AdmitLines, StreamConfig, transitions_from

BASE = 1_704_067_200_000
MIN = 60_000


def _line(event_id: str, user: str, t: int, kind: str, amount: str | None = None, arrival: int | None = None) -> str:
    row: dict[str, object] = {"event_id": event_id, "user_id": user, "event_time": t, "kind": kind}
    if amount is not None:
        row["amount"] = amount
    if arrival is not None:
        row["arrival_time"] = arrival
    return json.dumps(row)


def _run(stream: BeamTestStream, config: StreamConfig, check) -> None:
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(runner=TEST_STREAM_RUNNER, options=options) as p:
        admitted = (
            p
            | stream
            | beam.WithKeys(0)
            | beam.ParDo(AdmitLines(config)).with_outputs(DEAD, main="batches")
        )
        flat = transitions_from(admitted.batches, config) | beam.FlatMap(lambda batch: batch)
        assert_that(flat | beam.Map(lambda t: (t.user_id, t.segments, t.effective_time, t.revision, t.cause)), check)


def test_expiry_fires_when_the_watermark_passes_and_a_late_event_corrects_the_past():
    """high_value starts at the purchase, ends 10 min later once other traffic moves the watermark past it;
    a late refund (within allowed lateness) then lowers the past and is emitted as a correction."""
    config = StreamConfig(load_ruleset("clickstream"), GateParams(5_000, 15 * MIN), shards=2)
    stream = (
        BeamTestStream()
        .advance_watermark_to(0)
        .add_elements([_line("p1", "alice", BASE, "purchase", "150")])
        .advance_processing_time(1)
        .add_elements([_line("v1", "bob", BASE + 9 * MIN, "view")])
        .advance_processing_time(1)
        # bob's view at +10m10s moves the watermark to +10m05s: alice's purchase leaves her window at +10m.
        .add_elements([_line("v2", "bob", BASE + 10 * MIN + 10_000, "view")])
        .advance_processing_time(1)
        # a refund of alice's, 3 minutes late: arrives after her expiry, still within allowed lateness.
        .add_elements([_line("r1", "alice", BASE + 60_000, "refund", "60", arrival=BASE + 11 * MIN)])
        .advance_watermark_to_infinity()
    )

    def check(actual):
        got = sorted(actual)
        assert ("alice", ("high_value",), BASE, 1, "event") in got
        assert ("alice", (), BASE + 10 * MIN, 2, "expiry") in got
        # 150 - 60 = 90 from the refund's instant on: the past changes, with a higher revision.
        assert ("alice", (), BASE + 60_000, 3, "correction") in got
        assert not [row for row in got if row[0] == "bob" and row[1]], "bob never qualifies"

    _run(stream, config, check)
