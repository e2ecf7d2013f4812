"""One comparison end to end: ``compare_inputs`` (pure, columnar) and ``run_comparison`` (files in, files out).

``compare_inputs`` is what the shadow run and the benchmark call with inputs
already in memory; ``run_comparison`` reads and checks the files
(``compare.inputs``), compares, and writes ``parity.json``, ``mismatches.jsonl``,
``report.html`` and ``summary.md`` (``compare.report``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compare.alignment import Alignment, Cells, DuplicateCell, align, legacy_cells, settle, stream_cells
from compare.causes import classify
from compare.frames import SegmentCodec, UserIndex
from compare.groundtruth import GroundTruth, evaluate, present_cells, tiers
from compare.inputs import ComparisonInputs, GateFlags, NoiseInput, load_inputs
from compare.latency import LatencySketch, LatencySummary, legacy_freshness, read_measurements, stream_freshness
from compare.mismatches import Mismatches
from compare.parity import AsOfAgreement, NoiseFloor, ParityResult, SegmentCounts
from segments.errors import InputError
from segments.events import EventLog
from segments.lateness import GateParams
from segments.rules import RuleSet, load_ruleset
from segments.timeutil import Clock, format_ms, wall_clock_ms


@dataclass(frozen=True)
class Comparison:
    """A comparison's result and its mismatches (for ``mismatches.jsonl`` and the report)."""

    result: ParityResult
    mismatches: Mismatches


def _numpy(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def _cells(
    side: str,
    table: pa.Table,
    users: np.ndarray,
    schedule: np.ndarray,
    codec: SegmentCodec,
    label: str,
    drop_outside: bool = False,
) -> Cells:
    masks = codec.masks(table.column("segments"))
    if side == "legacy":
        return legacy_cells(schedule, _numpy(table, "as_of"), users, masks, label, drop_outside)
    spans = settle(users, _numpy(table, "effective_time"), _numpy(table, "revision"), masks)
    return stream_cells(schedule, spans, label)


def compare_inputs(inputs: ComparisonInputs, clock: Clock = wall_clock_ms) -> Comparison:
    """Compare two checked outputs; raises ``InputError`` for a side with two lines for one pair."""
    ruleset = inputs.ruleset
    frame = inputs.events
    schedule = inputs.schedule.times
    tables = [inputs.legacy, inputs.stream, *(n.table for n in inputs.noise)]
    users, codes = UserIndex.build([frame.user_id, *(t.column("user_id") for t in tables)])
    event_user = codes[0]
    codec = SegmentCodec.for_outputs(ruleset, [t.column("segments") for t in tables])
    try:
        legacy = _cells("legacy", inputs.legacy, codes[1], schedule, codec, "legacy")
        stream = _cells("stream", inputs.stream, codes[2], schedule, codec, "stream")
        alignment = align(schedule, legacy, stream, len(users), codec.dtype)
        noise = tuple(
            _noise_floor(n, codes[3 + i], legacy, stream, codec, len(users), schedule)
            for i, n in enumerate(inputs.noise)
        )
    except DuplicateCell as dup:
        raise InputError(
            f"the {dup.side} output has more than one line for user {users.name(dup.user)!r} "
            f"at as-of {format_ms(int(schedule[dup.as_idx]))}"
        ) from None

    mism = alignment.mismatches()
    m_user = alignment.user[mism]
    m_time = schedule[alignment.as_idx[mism]]
    causes = classify(
        m_user,
        m_time,
        event_user,
        frame.event_time,
        frame.arrival_time,
        frame.too_late,
        frame.relevant,
        ruleset.span_ms,
    )
    mismatches = Mismatches(
        m_time, m_user, alignment.left[mism], alignment.right[mism], causes, users, codec, frame
    )
    per_segment = {
        name: SegmentCounts(*counts)
        for name, counts in zip(codec.names, alignment.per_bit(len(codec.names)), strict=True)
    }
    pairs_at, agree_at = alignment.over_time()
    over_time = tuple(
        AsOfAgreement(int(t), int(p), int(a)) for t, p, a in zip(schedule.tolist(), pairs_at, agree_at, strict=True)
    )
    result = ParityResult(
        ruleset={"name": ruleset.name, "version": ruleset.version, "digest": ruleset.digest},
        events_sha256=inputs.events_sha256,
        generated_at=clock(),
        as_of_rounds=len(schedule),
        pairs=alignment.pairs,
        agree=alignment.agreement(),
        by_cause=causes.counts(),
        per_segment=per_segment,
        agreement_over_time=over_time,
        latency=_latency(inputs, event_user, codes[2]),
        dead_letter={
            "legacy": {"rejected": frame.rejected, "events": len(frame)},
            "stream": {
                "rejected": inputs.dead_letters.rejected,
                "too_late": int(np.count_nonzero(frame.too_late)),
                "events": int(np.count_nonzero(frame.applied)),
                "source": inputs.dead_letters.source,
            },
        },
        ground_truth=_ground_truth(inputs, alignment, codec, event_user),
        noise=noise,
        params={
            "every_ms": inputs.schedule.every_ms,
            "max_out_of_orderness_ms": inputs.params.max_out_of_orderness_ms,
            "allowed_lateness_ms": inputs.params.allowed_lateness_ms,
            "span_ms": ruleset.span_ms,
        },
        inputs=dict(inputs.paths),
    )
    return Comparison(result, mismatches)


def _latency(inputs: ComparisonInputs, event_user: np.ndarray, stream_user: np.ndarray) -> dict[str, LatencySummary]:
    frame = inputs.events
    schedule = inputs.schedule
    relevant = frame.relevant
    values, never = legacy_freshness(frame.arrival_time[relevant], schedule.times, schedule.run_ms)
    legacy_source = "as_of_schedule+run_time" if schedule.durations_known else "as_of_schedule"
    legacy = LatencySketch.of(values).summary(legacy_source, never_visible=never)
    if inputs.live_latency is not None:
        stream = LatencySketch.of(inputs.live_latency).summary("live")
    else:
        table = inputs.stream
        expiry = pc.fill_null(pc.equal(table.column("cause"), "expiry"), False).to_numpy(zero_copy_only=False)
        values, unattributed = stream_freshness(
            stream_user,
            _numpy(table, "effective_time"),
            _numpy(table, "emitted_at"),
            expiry,
            event_user,
            frame.event_time,
            frame.arrival_time,
            frame.applied,
        )
        stream = LatencySketch.of(values).summary("transitions", unattributed=unattributed)
    return {"legacy": legacy, "stream": stream}


def _ground_truth(
    inputs: ComparisonInputs, alignment: Alignment, codec: SegmentCodec, event_user: np.ndarray
) -> GroundTruth | None:
    frame = inputs.events
    names = tiers(inputs.ruleset)
    if not frame.labelled or not names:
        return None
    user, as_idx, fraudulent = present_cells(
        inputs.schedule.times, event_user, frame.event_time, frame.fraud, frame.relevant, inputs.ruleset.span_ms
    )
    return evaluate(alignment, codec, names, user, as_idx, fraudulent)


def _noise_floor(
    noise: NoiseInput,
    users: np.ndarray,
    legacy: Cells,
    stream: Cells,
    codec: SegmentCodec,
    n_users: int,
    schedule: np.ndarray,
) -> NoiseFloor:
    """The primary output of a side against a second run of the same side, at the same as-ofs."""
    side = noise.side
    second = _cells(side, noise.table, users, schedule, codec, f"{side} noise", drop_outside=True)
    first = legacy if side == "legacy" else stream
    pairing = align(schedule, first, second, n_users, codec.dtype)
    return NoiseFloor(side, pairing.pairs, pairing.agreement(), str(noise.path), noise.events_sha256, second.outside)


def run_comparison(
    events_path: str | Path,
    legacy_path: str | Path,
    stream_path: str | Path,
    ruleset: RuleSet | str,
    every_ms: int | None = None,
    params: GateParams | GateFlags | None = None,
    out_dir: str | Path | None = None,
    *,
    noise_legacy: str | Path | None = None,
    noise_stream: str | Path | None = None,
    stream_latency: str | Path | None = None,
    event_log: EventLog | None = None,
    clock: Clock = wall_clock_ms,
) -> ParityResult:
    """Compare a legacy and a stream output of the same events and rule set; write the outputs to ``out_dir``.

    ``every_ms`` and ``params`` default to what the outputs' sidecars say (and
    must agree with them when given). ``event_log`` spares re-reading the events
    file when the caller has it loaded. Raises ``InputError`` (and other
    ``SegshadowError``) for inputs that cannot be compared; never exits.
    """
    rules = ruleset if isinstance(ruleset, RuleSet) else load_ruleset(ruleset)
    live = read_measurements(stream_latency) if stream_latency is not None else None
    inputs = load_inputs(
        events_path,
        legacy_path,
        stream_path,
        rules,
        every_ms,
        params,
        noise_legacy=noise_legacy,
        noise_stream=noise_stream,
        stream_latency=live,
        event_log=event_log,
    )
    comparison = compare_inputs(inputs, clock)
    if out_dir is not None:
        from compare.report import write_outputs

        write_outputs(out_dir, comparison)
    return comparison.result
