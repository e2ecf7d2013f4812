"""One comparison end to end: ``compare_inputs`` (pure, columnar) and ``run_comparison`` (files in, files out).

``compare_inputs`` is what the shadow run and the benchmark call with inputs
already in memory; ``run_comparison`` reads and checks the files
(``compare.inputs``), compares, and writes ``parity.json``, ``mismatches.jsonl``,
``report.html`` and ``summary.md`` (``compare.report``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compare.alignment import Alignment, Cells, DuplicateCell, Side, align, legacy_cells, settle
from compare.approximate import ApproxBounds, reclassify
from compare.causes import UNEXPLAINED, Causes, classify
from compare.drift import drift_section
from compare.foreign import ForeignOutput, write_legacy_lines
from compare.frames import SegmentCodec, UserIndex, decoded, dictionary_parts
from compare.groundtruth import GroundTruth, evaluate, present_cells, tiers
from compare.inputs import ComparisonInputs, GateFlags, NoiseInput, load_inputs
from compare.keys import KeySpace, SortedRows
from compare.latency import (
    LatencySummary,
    freshness_columns,
    legacy_freshness,
    not_measured,
    read_measurements,
    summarize,
)
from compare.manifest import RULESET_FILE, begin, comparison_artifacts, seal
from compare.mismatches import Mismatches, logic_groups
from compare.parity import AsOfAgreement, NoiseFloor, ParityResult, SegmentCounts
from compare.reach import ReachPort
from compare.sketches import SketchEvidence, build_sketch_evidence
from segments.errors import InputError
from segments.events import EventLog
from segments.lateness import GateParams
from segments.rules import RuleSet, load_ruleset
from segments.timeutil import Clock, format_ms, wall_clock_ms

A = TypeVar("A")
B = TypeVar("B")


@dataclass(frozen=True)
class Comparison:
    """A comparison's result and its mismatches (for ``mismatches.jsonl`` and the report)."""

    result: ParityResult
    mismatches: Mismatches
    sketches: SketchEvidence | None = None  # reach, heavy hitters, Count-Min bounds (``sketches.json``)


def _numpy(table: pa.Table, name: str) -> np.ndarray:
    return decoded(table.column(name)).to_numpy()


def _both(first: Callable[[], A], second: Callable[[], B], parallel: bool) -> tuple[A, B]:
    """Run two independent steps, at once when ``parallel`` (numpy and Arrow release the GIL in their kernels)."""
    if not parallel:
        return first(), second()
    with ThreadPoolExecutor(max_workers=1) as pool:
        later = pool.submit(second)
        return first(), later.result()


def _cells(
    side: str,
    table: pa.Table,
    users: np.ndarray,
    masks: np.ndarray,
    schedule: np.ndarray,
    label: str,
    space: KeySpace | None,
    drop_outside: bool = False,
) -> tuple[Side, SortedRows | None]:
    """One side as alignment takes it (legacy cells, or a stream's settled timelines), and for a stream
    its transitions sorted by (user, effective time)."""
    if side == "legacy":
        return legacy_cells(schedule, _coded(table, "as_of"), users, masks, label, drop_outside), None
    rows = SortedRows.of(users, _numpy(table, "effective_time"), space)
    return settle(rows, _coded(table, "revision"), masks), rows


def _coded(table: pa.Table, name: str) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A column of few distinct numbers as (each row's code, the distinct values) when it is dictionary-encoded,
    else its values."""
    column = table.column(name)
    parts = dictionary_parts(column) if not column.null_count else None
    return (parts[0], parts[1].to_numpy()) if parts is not None else _numpy(table, name)


def _legacy_side(inputs: ComparisonInputs, users: np.ndarray, masks: np.ndarray) -> Side:
    """Legacy cells."""
    cells, _ = _cells("legacy", inputs.legacy, users, masks, inputs.schedule.times, "legacy", None)
    return cells


def _stream_side(inputs: ComparisonInputs, users: np.ndarray, masks: np.ndarray, space: KeySpace | None) -> Side:
    """The stream's settled timelines (its transitions are sorted by (user, effective time) only to settle
    them: freshness reads the columns as they come)."""
    side, _ = _cells("stream", inputs.stream, users, masks, inputs.schedule.times, "stream", space)
    return side


def _event_rows(inputs: ComparisonInputs, event_user: np.ndarray, space: KeySpace | None) -> SortedRows:
    """The event log sorted by (user, event time): what the causes look up."""
    return SortedRows.of(event_user, inputs.events.event_time, space)


def _pairing(
    inputs: ComparisonInputs,
    sides: dict[str, Side],
    codes: list[np.ndarray],
    masks: list[np.ndarray],
    n_users: int,
    codec: SegmentCodec,
    space: KeySpace | None,
) -> tuple[Alignment, tuple[NoiseFloor, ...]]:
    """The alignment of both sides, and each noise run against its side."""
    schedule = inputs.schedule.times
    alignment = align(schedule, sides["legacy"], sides["stream"], n_users, codec.dtype)
    noise = tuple(
        _noise_floor(n, sides[n.side], codes[3 + i], masks[2 + i], n_users, codec, schedule, space)
        for i, n in enumerate(inputs.noise)
    )
    return alignment, noise


def compare_inputs(
    inputs: ComparisonInputs,
    clock: Clock = wall_clock_ms,
    parallel: bool = True,
    *,
    sketches: bool = True,
    reach_store: ReachPort | None = None,
) -> Comparison:
    """Compare two checked outputs; raises ``InputError`` for a side with two lines for one pair.

    With ``parallel``, independent steps run two at a time (the work is in numpy
    and Arrow kernels, which release the GIL); the result is the same either way.
    Big intermediates are dropped as soon as they are used. With ``sketches`` the
    sketch evidence is built too (``compare.sketches``; with ``reach_store`` each
    side's reach is also kept in the serving store).
    """
    ruleset = inputs.ruleset
    frame = inputs.events
    schedule = inputs.schedule.times
    tables = [inputs.legacy, inputs.stream, *(n.table for n in inputs.noise)]
    (users, codes), (codec, masks) = _both(
        partial(UserIndex.build, [frame.user_id, *(t.column("user_id") for t in tables)]),
        partial(SegmentCodec.encode_all, ruleset, [t.column("segments") for t in tables]),
        parallel,
    )
    event_user = codes[0]
    space = KeySpace.of(
        len(users),
        [frame.event_time, schedule - ruleset.span_ms, schedule]
        + [_numpy(t, "effective_time") for t in tables[1:] if "effective_time" in t.column_names],
    )
    # Three rounds of two steps, ordered so that what one round builds is dropped before the next: the
    # sides; their alignment beside the stream's freshness; then the sorted event log beside legacy's.
    try:
        legacy, stream = _both(
            partial(_legacy_side, inputs, codes[1], masks[0]),
            partial(_stream_side, inputs, codes[2], masks[1], space),
            parallel,
        )
        sides = {"legacy": legacy, "stream": stream}
        del legacy, stream
        stream_user = codes[2]
        codes[1] = codes[2] = codes[0][:0]  # spent: the cells carry them now (and freshness the stream's)
        (alignment, noise), stream_latency = _both(
            partial(_pairing, inputs, sides, codes, masks, len(users), codec, space),
            partial(_stream_latency, inputs, event_user, stream_user),
            parallel,
        )
        del stream_user
    except DuplicateCell as dup:
        raise InputError(
            f"the {dup.side} output has more than one line for user {users.name(dup.user)!r} "
            f"at as-of {format_ms(int(schedule[dup.as_idx]))}"
        ) from None
    del sides, codes, masks  # the alignment holds what is needed from here
    events, legacy_latency = _both(
        partial(_event_rows, inputs, event_user, space), partial(_legacy_latency, inputs), parallel
    )
    m_user, m_idx, left, right = alignment.mismatches()
    m_time = schedule[m_idx]
    causes = classify(m_user, m_time, events, frame.arrival_time, frame.too_late, frame.relevant, ruleset.span_ms)
    if ruleset.approximate and inputs.log is not None:
        causes = approximate_causes(inputs, causes, users, codec, m_user, m_time, right)
    mismatches = Mismatches(
        m_time,
        m_user,
        left,
        right,
        causes,
        users,
        codec,
        frame,
        ruleset=ruleset,
        facts=inputs.log.events if inputs.log is not None else None,
    )
    per_segment = {
        name: SegmentCounts(*counts)
        for name, counts in zip(codec.names, alignment.per_bit(len(codec.names)), strict=True)
    }
    pairs_at, agree_at = alignment.over_time()
    over_time = tuple(
        AsOfAgreement(int(t), int(p), int(a)) for t, p, a in zip(schedule.tolist(), pairs_at, agree_at, strict=True)
    )
    drift = _drift(alignment, codec, schedule, pairs_at)
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
        latency={"legacy": legacy_latency, "stream": stream_latency},
        dead_letter={
            "legacy": {"rejected": frame.rejected, "events": len(frame)},
            "stream": {
                "rejected": inputs.dead_letters.rejected,
                "too_late": int(np.count_nonzero(frame.too_late)),
                "events": int(np.count_nonzero(frame.applied)),
                "source": inputs.dead_letters.source,
            },
            **({"ingest": dict(inputs.ingest)} if inputs.ingest is not None else {}),
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
        drift=drift,
        provenance=dict(inputs.provenance) or None,
        unexplained_groups=(
            logic_groups(mismatches, side_rules=inputs.side_rules) if causes.counts()["unexplained"] else None
        ),
    )
    evidence = build_sketch_evidence(inputs, mismatches, reach_store) if sketches else None
    return Comparison(result, mismatches, evidence)


def approximate_causes(
    inputs: ComparisonInputs,
    causes: Causes,
    users: UserIndex,
    codec: SegmentCodec,
    m_user: np.ndarray,
    m_time: np.ndarray,
    stream: np.ndarray,
) -> Causes:
    """``causes`` with the unexplained mismatches that the Count-Min bound explains marked ``approximate``."""
    assert inputs.log is not None
    bounds = ApproxBounds(inputs.ruleset, inputs.log.events, inputs.dead_letters.too_late)
    where = np.flatnonzero(causes.code == UNEXPLAINED)
    names = [""] * len(m_user)
    sets: list[frozenset[str]] = [frozenset()] * len(m_user)
    for i in where.tolist():
        names[i] = users.name(int(m_user[i]))
        sets[i] = frozenset(codec.decode(int(stream[i])))
    return Causes(reclassify(causes.code, bounds, names, m_time, sets), causes.windows)


def _drift(alignment: Alignment, codec: SegmentCodec, schedule: np.ndarray, pairs_at: np.ndarray) -> dict[str, Any]:
    """``segment_drift`` from the alignment: each side's count of pairs in each segment at each as-of."""
    left, right = alignment.per_bit_over_time(len(codec.names))
    times = [int(t) for t in schedule.tolist()]
    counts = [
        {t: {name: int(side[i, j]) for i, name in enumerate(codec.names)} for j, t in enumerate(times)}
        for side in (left, right)
    ]
    return drift_section(times, {t: int(p) for t, p in zip(times, pairs_at, strict=True)}, counts[0], counts[1])


def _legacy_latency(inputs: ComparisonInputs) -> LatencySummary:
    frame = inputs.events
    schedule = inputs.schedule
    arrivals = frame.arrival_time if bool(frame.relevant.all()) else frame.arrival_time[frame.relevant]
    values, never = legacy_freshness(arrivals, schedule.times, schedule.run_ms)
    source = "as_of_schedule+run_time" if schedule.durations_known else "as_of_schedule"
    return summarize(values, source, never_visible=never)


def _stream_latency(inputs: ComparisonInputs, event_user: np.ndarray, stream_user: np.ndarray) -> LatencySummary:
    """Stream freshness from the columns as they come (user codes of the events and of the stream's rows):
    its figures do not depend on row order, so nothing is gathered into a sorted order for it."""
    if inputs.live_latency is not None:
        return summarize(inputs.live_latency, "live")
    frame = inputs.events
    table = inputs.stream
    expiry = pc.fill_null(pc.equal(table.column("cause"), "expiry"), False).to_numpy(zero_copy_only=False)
    values, expiry_delay, unattributed = freshness_columns(
        stream_user,
        _numpy(table, "emitted_at"),
        expiry,
        _numpy(table, "effective_time"),
        event_user,
        frame.arrival_time,
        frame.applied,
    )
    expiries = summarize(expiry_delay, "expiry")
    # A replay stamps emitted_at on the arrival clock: its delays are ordering delays, not processing
    # latency, so stream freshness is not measured (no figure at all, never 0 ms); the freshness gate
    # says inconclusive and asks for a live measurement.
    return not_measured(
        "replay",
        transitions_attributed=len(values),
        unattributed=unattributed,
        expiry_count=expiries.count,
        expiry_p50_ms=int(expiries.p50_ms or 0),
        expiry_p99_ms=int(expiries.p99_ms or 0),
    )


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
    first: Side,
    users: np.ndarray,
    masks: np.ndarray,
    n_users: int,
    codec: SegmentCodec,
    schedule: np.ndarray,
    space: KeySpace | None,
) -> NoiseFloor:
    """The primary output of a side (``first``) against a second run of it, at the same as-ofs."""
    side = noise.side
    second, _ = _cells(side, noise.table, users, masks, schedule, f"{side} noise", space, drop_outside=True)
    pairing = align(schedule, first, second, n_users, codec.dtype)
    outside = second.outside if isinstance(second, Cells) else 0
    return NoiseFloor(side, pairing.pairs, pairing.agreement(), str(noise.path), noise.events_sha256, outside)


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
    seal_outputs: bool = True,
    reach_store: ReachPort | None = None,
    legacy_rules: RuleSet | None = None,
    stream_rules: RuleSet | None = None,
    legacy_foreign: ForeignOutput | None = None,
    stream_foreign: ForeignOutput | None = None,
) -> ParityResult:
    """Compare a legacy and a stream output of the same events and rule set; write the outputs to ``out_dir``.

    ``every_ms`` and ``params`` default to what the outputs' sidecars say (and
    must agree with them when given). ``event_log`` spares re-reading the events
    file when the caller has it loaded. With ``out_dir``, the directory is marked
    incomplete first and sealed last (``compare.manifest``); a caller that writes
    more files after the comparison passes ``seal_outputs=False`` and seals itself.
    ``legacy_rules`` / ``stream_rules`` / ``legacy_foreign`` / ``stream_foreign``: see
    ``compare.inputs.load_inputs`` (a side read without a sidecar is sealed without one).
    Raises ``InputError`` (and other ``SegshadowError``) for inputs that cannot be
    compared; never exits.
    """
    if out_dir is not None:
        begin(out_dir)
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
        legacy_rules=legacy_rules,
        stream_rules=stream_rules,
        legacy_foreign=legacy_foreign,
        stream_foreign=stream_foreign,
    )
    if out_dir is not None and legacy_foreign is not None and legacy_foreign.format == "sql":
        write_legacy_lines(legacy_path, inputs.legacy)  # what the query returned, sealed with the run
    comparison = compare_inputs(inputs, clock, reach_store=reach_store)
    if out_dir is not None:
        from compare.report import write_outputs

        write_outputs(out_dir, comparison)
        # the definition the run read events under, sealed: the evidence check re-reads them the same way
        (Path(out_dir) / RULESET_FILE).write_text(rules.to_canonical_json() + "\n", encoding="utf-8")
        if seal_outputs:
            artifacts = comparison_artifacts(
                out_dir,
                events_path,
                legacy_path,
                stream_path,
                stream_latency=stream_latency,
                noise_legacy=noise_legacy,
                noise_stream=noise_stream,
                declared={side for side, f in (("legacy", legacy_foreign), ("stream", stream_foreign)) if f},
            )
            seal(out_dir, comparison.result, artifacts, clock)
    return comparison.result
