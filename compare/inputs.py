"""Reading what the comparator compares, and refusing what cannot be compared.

Outputs are read into Arrow tables (``compare.frames.LEGACY_SCHEMA`` /
``STREAM_SCHEMA``; user ids, segment sets and causes dictionary-encoded by
``compare.frames.compact``). A fast path parses canonical files with Arrow's JSON reader
(strict about types); anything it does not accept as canonical goes through the
exact readers of ``segments.outputs``, which either read it the same way or name
the first bad line. Either way the table is the same.

Refusals (``InputError``, one line, exit 2), never a silent wrong number:

- a missing, unreadable or incomplete ``.meta.json`` sidecar (an interrupted run);
- a sidecar naming another rule set (name, version or digest) than ``--rules``;
- a sidecar naming another event file (``events_sha256``) than ``--events``;
- a truncated last line, a line that is not an assignment/transition, a row
  count that differs from the one the sidecar states (legacy ``assignments``,
  stream ``counts.transitions``), or an empty output whose sidecar states no count;
- a ``--every`` / ``--max-out-of-orderness`` / ``--allowed-lateness`` that differs
  from what the output's sidecar says it ran with;
- legacy lines at times outside the as-of schedule.

Sidecar keys read. Legacy: ``ruleset {name, version, digest}``, ``events_sha256``,
``every_ms``, the schedule as ``as_of_times`` or ``as_ofs`` (lists of ms or RFC 3339;
otherwise recomputed with SPEC §3 and checked against ``as_of_count``,
``as_of_first``, ``as_of_last``), run durations ``timing_ms.run_per_as_of`` (or
``run_durations_ms``), ``assignments``. Stream: ``ruleset``, ``events_sha256``,
``max_out_of_orderness_ms``, ``allowed_lateness_ms``, ``counts.transitions``,
``dead_letter_path`` (a name beside the output; default ``FILE.deadletter.jsonl``).

A side may also come without a sidecar (``compare.foreign``: JSON Lines, CSV,
Parquet or a SQL query): then nothing above is checked for it, what the sidecar
would state comes from the flags, and ``provenance`` records it as ``declared``.
Each side may declare its own rule set (``legacy_rules`` / ``stream_rules``), and a
sidecar may state that the side ran the team's own logic rather than a rule set
(``ruleset.logic``: ``{"kind": "transform" | "sql", "ref", "sha256"}``, its digest
standing where the rule set's would); either way the sides then do not share one
rule set, and ``provenance.shared_ruleset`` says so.

Lines rejected before the events file was written (``shadow run``'s
``ingest.deadletter.jsonl`` in the events file's directory, or ``data import``'s
``EVENTS.rejected.jsonl`` beside it) are not in the events file; ``ingest_rejections``
counts them so the report's inputs block says what the console said.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from compare.foreign import ForeignOutput, read_foreign_legacy, read_foreign_stream
from compare.frames import LEGACY_SCHEMA, STREAM_SCHEMA, EventFrame, compact, legacy_table, stream_table
from legacy_batch.schedule import DEFAULT_EVERY_MS, as_of_times
from segments.durations import format_duration_ms
from segments.errors import InputError
from segments.events import EventLog, load_event_log
from segments.lateness import GateParams, too_late_ids
from segments.outputs import file_sha256, read_assignments, read_meta, read_transitions
from segments.rules import RuleSet
from segments.timeutil import TimestampError, format_ms, parse_rfc3339_ms

_BLOCK = 16 << 20
_CANONICAL_TIME_LENGTH = len("2024-01-01T00:00:00.000Z")


# ---- the outputs themselves ------------------------------------------------------------------------


def read_legacy(path: str | Path) -> pa.Table:
    """A legacy output file (SPEC §3) as a ``LEGACY_SCHEMA`` table, ``compact``; ``InputError`` names a bad line."""
    raw = _fast_json(path, pa.schema([("as_of", pa.string()), ("user_id", pa.string()), LEGACY_SCHEMA.field(2)]))
    if raw is not None and _clean(raw, ("as_of", "user_id", "segments")):
        as_of = _few_times(raw.column("as_of"))
        if as_of is not None:
            return compact(
                pa.table(
                    {"as_of": as_of, "user_id": raw.column("user_id"), "segments": raw.column("segments")},
                    schema=LEGACY_SCHEMA,
                )
            )
    return legacy_table(read_assignments(path))


def read_stream(path: str | Path) -> pa.Table:
    """A stream output file (SPEC §4) as a ``STREAM_SCHEMA`` table, ``compact``; ``InputError`` names a bad line."""
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            STREAM_SCHEMA.field(1),
            ("effective_time", pa.string()),
            ("revision", pa.int64()),
            ("emitted_at", pa.string()),
            ("cause", pa.string()),
        ]
    )
    raw = _fast_json(path, schema)
    if raw is not None and _clean(raw, ("user_id", "segments", "effective_time", "revision", "emitted_at")):
        revision = raw.column("revision")
        effective = _many_times(raw.column("effective_time"))
        emitted = _many_times(raw.column("emitted_at"))
        if effective is not None and emitted is not None and (len(revision) == 0 or pc.min(revision).as_py() >= 1):
            return compact(
                pa.table(
                    {
                        "user_id": raw.column("user_id"),
                        "segments": raw.column("segments"),
                        "effective_time": effective,
                        "revision": revision,
                        "emitted_at": emitted,
                        "cause": pc.fill_null(raw.column("cause"), "event"),
                    },
                    schema=STREAM_SCHEMA,
                )
            )
    return stream_table(read_transitions(path))


def _fast_json(path: str | Path, schema: pa.Schema) -> pa.Table | None:
    """The file parsed by Arrow, or None when the exact reader must decide (odd shape, bad line, truncation)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            if size == 0:
                return pa.table({f.name: pa.array([], f.type) for f in schema}, schema=schema)
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                return None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", str(path)) from None
    try:
        return pj.read_json(
            path,
            read_options=pj.ReadOptions(block_size=_BLOCK),
            parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowException, OSError, ValueError):
        return None


def _clean(table: pa.Table, required: tuple[str, ...]) -> bool:
    """No missing field, no empty user id, no null inside a segment list."""
    for name in required:
        if table.column(name).null_count:
            return False
    users = table.column("user_id")
    if len(users) and pc.min(pc.utf8_length(users)).as_py() == 0:
        return False
    segments = table.column("segments")
    return not (len(segments) and pc.list_flatten(segments).null_count)


def _few_times(column: pa.ChunkedArray) -> pa.Array | None:
    """A column with few distinct times (as-ofs): each distinct text parsed by the one exact parser."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    try:
        values = [parse_rfc3339_ms(text) for text in encoded.dictionary.to_pylist()]
    except TimestampError:
        return None
    return pa.array(np.array(values, dtype=np.int64)[encoded.indices.to_numpy(zero_copy_only=False)], pa.int64())


def _many_times(column: pa.ChunkedArray) -> pa.Array | None:
    """Canonical ``YYYY-MM-DDTHH:MM:SS.mmmZ`` texts parsed by Arrow; None when any is not canonical."""
    array = column.combine_chunks()
    if len(array) == 0:
        return pa.array([], pa.int64())
    lengths = pc.utf8_length(array)
    if pc.min(lengths).as_py() != _CANONICAL_TIME_LENGTH or pc.max(lengths).as_py() != _CANONICAL_TIME_LENGTH:
        return None
    if not pc.all(pc.ends_with(array, "Z")).as_py():
        return None
    try:
        return pc.cast(pc.cast(array, pa.timestamp("ms", "UTC")), pa.int64())
    except pa.ArrowException:
        return None


# ---- provenance --------------------------------------------------------------------------------------


def read_sidecar(path: str | Path, side: str) -> dict[str, Any]:
    """The output's complete sidecar; ``InputError`` naming the side when missing or incomplete."""
    if not Path(path).is_file():
        raise InputError(f"no such {side} output file", str(path))
    return read_meta(path)


def own_logic(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The team's own logic a side's sidecar states it ran (``ruleset.logic``), or None."""
    raw = meta.get("ruleset")
    logic = raw.get("logic") if isinstance(raw, Mapping) else None
    if isinstance(logic, Mapping) and isinstance(logic.get("kind"), str) and isinstance(logic.get("ref"), str):
        return {"kind": logic["kind"], "ref": logic["ref"], "sha256": logic.get("sha256")}
    return None


def check_ruleset(meta: Mapping[str, Any], path: str | Path, side: str, ruleset: RuleSet) -> None:
    """Refuse an output made with another rule set (name, version or digest) than ``ruleset``.

    A sidecar that states the side ran its own logic (``own_logic``) is not held to the digest.
    """
    if own_logic(meta) is not None:
        return
    name, version, digest = _ruleset_of(meta)
    if name is None and digest is None:
        raise InputError(f"the {side} output's sidecar names no rule set", str(path))
    wrong = (
        (name is not None and name != ruleset.name)
        or (version is not None and version != ruleset.version)
        or (digest is not None and digest != ruleset.digest)
    )
    if wrong:
        made = f"{name or '?'} v{version if version is not None else '?'}" + (f" ({digest[:12]})" if digest else "")
        raise InputError(
            f"the {side} output was made with rule set {made}, not {ruleset.ref} ({ruleset.digest[:12]})", str(path)
        )


def _ruleset_of(meta: Mapping[str, Any]) -> tuple[str | None, int | None, str | None]:
    raw = meta.get("ruleset")
    if isinstance(raw, Mapping):
        version = raw.get("version")
        return raw.get("name"), version if isinstance(version, int) else None, raw.get("digest")
    if isinstance(raw, str):
        name, _, version = raw.partition("@v")
        return name, int(version) if version.isdigit() else None, meta.get("ruleset_digest")
    return None, None, meta.get("ruleset_digest")


def check_events(meta: Mapping[str, Any], path: str | Path, side: str, events_sha256: str) -> None:
    """Refuse an output made from another event file than the one given."""
    made = meta.get("events_sha256")
    if not isinstance(made, str):
        raise InputError(f"the {side} output's sidecar does not name its event file (events_sha256)", str(path))
    if made != events_sha256:
        raise InputError(
            f"the {side} output was made from another event file (sha256 {made[:12]}, --events has "
            f"{events_sha256[:12]})",
            str(path),
        )


def check_rows(table: pa.Table, meta: Mapping[str, Any], path: str | Path, side: str) -> None:
    """Refuse an output whose row count differs from its sidecar's, or an empty one with no stated count."""
    stated = _stated_rows(meta, side)
    rows = table.num_rows
    if stated is None:
        if rows == 0:
            raise InputError(f"the {side} output is empty and its sidecar states no count", str(path))
        return
    if stated != rows:
        raise InputError(
            f"the {side} output has {rows} lines but its sidecar says {stated} (truncated or overwritten?)", str(path)
        )


def _stated_rows(meta: Mapping[str, Any], side: str) -> int | None:
    if side.startswith("legacy"):
        value = meta.get("assignments")
    else:
        counts = meta.get("counts")
        value = counts.get("transitions") if isinstance(counts, Mapping) else None
    return value if type(value) is int else None


# ---- parameters the outputs were made with -----------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """The legacy as-of times (sorted ms), each run's duration in ms (0 when unknown), and ``--every``."""

    times: np.ndarray
    run_ms: np.ndarray
    every_ms: int
    durations_known: bool


def resolve_schedule(
    meta: Mapping[str, Any], path: str | Path, frame: EventFrame, every_ms: int | None
) -> Schedule:
    """The as-of schedule: the sidecar's list when it has one, else SPEC §3 over the events.

    ``every_ms`` (the flag) must agree with the sidecar's ``every_ms`` when both are given.
    """
    stated = meta.get("every_ms")
    if every_ms is not None and type(stated) is int and stated != every_ms:
        raise InputError(
            f"the legacy output ran every {format_duration_ms(stated)}, not --every {format_duration_ms(every_ms)}",
            str(path),
        )
    every = every_ms if every_ms is not None else stated if type(stated) is int else DEFAULT_EVERY_MS
    listed = meta.get("as_of_times", meta.get("as_ofs"))
    if isinstance(listed, list):
        try:
            times = sorted({_as_ms(v) for v in listed})
        except (TypeError, ValueError) as exc:
            raise InputError(f"the legacy sidecar's as-of list is unreadable: {exc}", str(path)) from None
    elif len(frame):
        times = as_of_times(int(frame.arrival_time.min()), int(frame.arrival_time.max()), every)
    else:
        times = []
    _check_schedule(meta, path, times)
    run = _run_durations(meta, len(times))
    known = run is not None
    return Schedule(
        np.array(times, dtype=np.int64), run if run is not None else np.zeros(len(times)), every, known
    )


def _as_ms(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str):
        return parse_rfc3339_ms(value)
    raise TypeError(f"{value!r} is not a time")


def _check_schedule(meta: Mapping[str, Any], path: str | Path, times: list[int]) -> None:
    claims = {
        "as_of_count": len(times),
        "as_of_first": times[0] if times else None,
        "as_of_last": times[-1] if times else None,
    }
    for key, ours in claims.items():
        if key in meta and meta[key] != ours:
            stated, computed = meta[key], ours
            if key != "as_of_count":
                stated, computed = _shown_time(stated), _shown_time(computed)
            raise InputError(
                f"the legacy output's {key} is {stated} but the events and --every give {computed} "
                "(another event file or schedule?)",
                str(path),
            )


def _shown_time(value: Any) -> Any:
    return format_ms(value) if type(value) is int else value


def _run_durations(meta: Mapping[str, Any], n: int) -> np.ndarray | None:
    timing = meta.get("timing_ms")
    listed = timing.get("run_per_as_of") if isinstance(timing, Mapping) else meta.get("run_durations_ms")
    if not isinstance(listed, list) or len(listed) != n:
        return None
    try:
        return np.array([float(v) for v in listed], dtype=np.float64)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class GateFlags:
    """The lateness flags as given on the command line; None where a flag was not given."""

    max_out_of_orderness_ms: int | None = None
    allowed_lateness_ms: int | None = None

    @classmethod
    def of(cls, params: GateParams | GateFlags | None) -> GateFlags:
        if params is None:
            return cls()
        return cls(params.max_out_of_orderness_ms, params.allowed_lateness_ms)


def resolve_params(meta: Mapping[str, Any], path: str | Path, params: GateParams | GateFlags | None) -> GateParams:
    """The stream's lateness contract: what the sidecar states (a flag that says otherwise is refused),
    else the flag, else the default."""
    nested = meta.get("params")
    source: Mapping[str, Any] = nested if isinstance(nested, Mapping) else meta
    flags = GateFlags.of(params)
    default = GateParams()
    resolved = []
    for flag, key, given, fallback in (
        ("--max-out-of-orderness", "max_out_of_orderness_ms", flags.max_out_of_orderness_ms,
         default.max_out_of_orderness_ms),
        ("--allowed-lateness", "allowed_lateness_ms", flags.allowed_lateness_ms, default.allowed_lateness_ms),
    ):
        stated = source.get(key)
        if type(stated) is int and given is not None and stated != given:
            raise InputError(
                f"the stream output ran with {flag} {format_duration_ms(stated)}, not {format_duration_ms(given)}",
                str(path),
            )
        resolved.append(stated if type(stated) is int else given if given is not None else fallback)
    return GateParams(resolved[0], resolved[1])


# ---- the stream's dead letters -----------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetters:
    """What the stream dropped: the too-late ids, and how many other records (rejected lines)."""

    too_late: frozenset[str]
    rejected: int
    source: str


def dead_letter_file(meta: Mapping[str, Any], stream_path: str | Path) -> Path:
    named = meta.get("dead_letter_path")
    if isinstance(named, str) and named:
        candidate = Path(named)
        return candidate if candidate.is_absolute() else Path(stream_path).parent / candidate
    return Path(f"{stream_path}.deadletter.jsonl")


def read_dead_letters(path: Path) -> DeadLetters:
    """``segments.events.Rejection.to_json`` records; ``InputError`` on an unreadable or bad line."""
    too_late: set[str] = set()
    rejected = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                if not text.endswith("\n"):
                    raise InputError(f"line {number} is truncated", str(path))
                try:
                    record = json.loads(text)
                except ValueError:
                    raise InputError(f"line {number} is not JSON", str(path)) from None
                if not isinstance(record, dict) or not isinstance(record.get("reason"), str):
                    raise InputError(f"line {number} is not a dead-letter record", str(path))
                if record["reason"] == "too_late":
                    event_id = record.get("event_id")
                    if not isinstance(event_id, str):
                        raise InputError(f"line {number}: a too_late record without an event_id", str(path))
                    too_late.add(event_id)
                else:
                    rejected += 1
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", str(path)) from None
    return DeadLetters(frozenset(too_late), rejected, "dead_letter")


# ---- everything at once ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseInput:
    """A second output of one side, for the noise floor."""

    side: str
    path: Path
    table: pa.Table
    events_sha256: str | None


@dataclass(frozen=True)
class ComparisonInputs:
    """Everything one comparison reads, checked against each other."""

    ruleset: RuleSet
    events_sha256: str
    events: EventFrame
    schedule: Schedule
    params: GateParams
    legacy: pa.Table
    stream: pa.Table
    dead_letters: DeadLetters
    noise: tuple[NoiseInput, ...] = ()
    live_latency: np.ndarray | None = None
    paths: Mapping[str, str] = field(default_factory=dict)
    log: EventLog | None = field(default=None, repr=False)  # the events themselves (sketch evidence reads them)
    ingest: Mapping[str, Any] | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)  # see ``side_provenance``
    side_rules: Mapping[str, RuleSet] = field(default_factory=dict)  # the rule set each side declares

    @property
    def shared_ruleset(self) -> bool:
        return bool(self.provenance.get("shared_ruleset", True))


def side_provenance(
    meta: Mapping[str, Any] | None, rules: RuleSet, foreign: ForeignOutput | None
) -> dict[str, Any]:
    """What made one side and how we know: ``{"source": "sidecar" | "declared", "ruleset", "digest", "logic"}``."""
    logic = own_logic(meta) if meta is not None else None
    out: dict[str, Any] = {
        "source": "declared" if foreign is not None else "sidecar",
        "ruleset": rules.ref,
        "digest": rules.digest,
        "logic": logic,
    }
    if foreign is not None:
        out["format"] = foreign.format
        out["read_from"] = foreign.label
    return out


def _logic_key(side: Mapping[str, Any]) -> tuple[Any, ...]:
    logic = side.get("logic")
    return (logic["kind"], logic["ref"], logic.get("sha256")) if logic else ("ruleset", side["digest"])


def ingest_deadletter_file(events_path: str | Path) -> Path | None:
    """The file of lines rejected before ``events_path`` was written, when there is one (see the module doc)."""
    events = Path(events_path)
    for candidate in (events.with_name(events.name + ".rejected.jsonl"), events.with_name("ingest.deadletter.jsonl")):
        if candidate.is_file():
            return candidate
    return None


def ingest_rejections(events_path: str | Path) -> dict[str, Any] | None:
    """``{rejected, source}``: how many lines were rejected upstream of ``events_path``; None without such a file."""
    path = ingest_deadletter_file(events_path)
    if path is None:
        return None
    with path.open("rb") as lines:
        rejected = sum(1 for line in lines if line.strip())
    return {"rejected": rejected, "source": path.name}


def load_inputs(
    events_path: str | Path,
    legacy_path: str | Path,
    stream_path: str | Path,
    ruleset: RuleSet,
    every_ms: int | None = None,
    params: GateParams | GateFlags | None = None,
    *,
    noise_legacy: str | Path | None = None,
    noise_stream: str | Path | None = None,
    stream_latency: np.ndarray | None = None,
    event_log: EventLog | None = None,
    legacy_rules: RuleSet | None = None,
    stream_rules: RuleSet | None = None,
    legacy_foreign: ForeignOutput | None = None,
    stream_foreign: ForeignOutput | None = None,
) -> ComparisonInputs:
    """Read and cross-check the inputs of one comparison (``event_log``: the events file, already loaded).

    ``legacy_rules`` / ``stream_rules``: the rule set each side declares (default ``ruleset``, which the
    comparison evaluates causes and aggregates with). ``legacy_foreign`` / ``stream_foreign``: that side has
    no sidecar and is read as described (its provenance is declared by the flags, not verified).
    """
    events_sha256 = file_sha256(events_path)
    rules = {"legacy": legacy_rules or ruleset, "stream": stream_rules or ruleset}
    foreign = {"legacy": legacy_foreign, "stream": stream_foreign}
    legacy_meta = read_sidecar(legacy_path, "legacy") if legacy_foreign is None else {}
    stream_meta = read_sidecar(stream_path, "stream") if stream_foreign is None else {}
    for meta, path, side in ((legacy_meta, legacy_path, "legacy"), (stream_meta, stream_path, "stream")):
        if foreign[side] is None:
            check_ruleset(meta, path, side, rules[side])
            check_events(meta, path, side, events_sha256)
    provenance: dict[str, Any] = {
        "legacy": side_provenance(legacy_meta, rules["legacy"], legacy_foreign),
        "stream": side_provenance(stream_meta, rules["stream"], stream_foreign),
    }
    provenance["shared_ruleset"] = _logic_key(provenance["legacy"]) == _logic_key(provenance["stream"])
    gate = resolve_params(stream_meta, stream_path, params)
    log = event_log if event_log is not None else load_event_log(events_path, ruleset.time_bounds)
    dead_path = dead_letter_file(stream_meta, stream_path)
    if dead_path.is_file():
        dead = read_dead_letters(dead_path)
    else:
        dead = DeadLetters(frozenset(too_late_ids(log.events, gate)), len(log.rejected), "recomputed")
    frame = EventFrame.from_log(log, set(dead.too_late), ruleset)
    schedule = resolve_schedule(legacy_meta, legacy_path, frame, every_ms)
    if legacy_foreign is None:
        legacy = read_legacy(legacy_path)
        check_rows(legacy, legacy_meta, legacy_path, "legacy")
    else:
        legacy = compact(read_foreign_legacy(legacy_foreign))
    if stream_foreign is None:
        stream = read_stream(stream_path)
        check_rows(stream, stream_meta, stream_path, "stream")
    else:
        stream = compact(read_foreign_stream(stream_foreign))
    noise = []
    for side, second in (("legacy", noise_legacy), ("stream", noise_stream)):
        if second is None:
            continue
        meta = read_sidecar(second, f"{side} noise")
        check_ruleset(meta, second, f"{side} noise", ruleset)
        table = read_legacy(second) if side == "legacy" else read_stream(second)
        check_rows(table, meta, second, f"{side} noise")
        sha = meta.get("events_sha256")
        noise.append(NoiseInput(side, Path(second), table, sha if isinstance(sha, str) else None))
    return ComparisonInputs(
        ruleset,
        events_sha256,
        frame,
        schedule,
        gate,
        legacy,
        stream,
        dead,
        tuple(noise),
        stream_latency,
        {"events": str(events_path), "legacy": str(legacy_path), "stream": str(stream_path)},
        log,
        ingest_rejections(events_path),
        provenance,
        {side: rules[side] for side in rules if provenance[side]["logic"] is None},
    )
