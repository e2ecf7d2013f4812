"""Reading a shadow run's evidence directory for ``compare.doctor`` (the I/O edge of the triage).

Files read, each optional (a layer whose files are missing is ``thin``, never ok):
``events.jsonl`` (the accepted log), ``ingest.deadletter.jsonl``,
``shadow.json`` (dual-write counters), ``legacy.jsonl`` and ``stream.jsonl`` with
their ``.meta.json`` sidecars, ``parity.json``. The legacy definition is the
shipped rule set its sidecar names (checked by digest); the stream's is the
``definition`` its sidecar carries (checked by digest). ``InputError`` only when
the directory itself does not exist. The rule-set history of the compared period
(``read_history``) comes from the store the run wrote to: ``--database-url``, else
the run's ``segshadow.db``; without one the logic layer says it was not checked.
The segment drift is ``parity.json``'s (``compare.drift``, the figure the report,
the dashboard and the ``max_segment_psi`` gate read), or the same section computed
from the outputs when the run has no comparison of them.

``read_live`` reads what ``stream live`` publishes (``streaming.health``) from the
serving store for ``--live``: ``StoreUnavailable`` when Redis cannot be reached.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, NamedTuple

from compare.doctor import (
    Diagnosis,
    LineObs,
    LiveHealth,
    LogicInputs,
    RuleSetUse,
    SinkInputs,
    StateInputs,
    changes_in_period,
    diagnose,
    in_force,
    ingest_layer,
    live_sink,
    live_state,
    logic_layer,
    sides_at,
    sink_layer,
    state_layer,
)
from compare.drift import drift_from_sides
from compare.manifest import RULESET_FILE, sealed_ruleset
from segments.errors import InputError, SegshadowError, StoreUnavailable
from segments.events import DEFAULT_TIME_BOUNDS, Event, TimeBounds, iter_lines, load_event_log
from segments.lateness import GateParams, too_late_ids
from segments.outputs import meta_path, read_assignments, read_transitions
from segments.rules import RuleSet, compile_ruleset, load_ruleset


def _json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _line_obs(events_path: Path, dead_path: Path, total_lines: int | None) -> list[LineObs]:
    accepted = list(iter_lines(events_path)) if events_path.is_file() else []
    dead = list(iter_lines(dead_path)) if dead_path.is_file() else []
    lines = total_lines or (len(accepted) + len(dead)) or 1
    out: list[LineObs] = []
    for index, (_, text) in enumerate(accepted):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        out.append(LineObs(index / max(1, len(accepted)), obj if isinstance(obj, dict) else None, None, text))
    for _, text in dead:
        try:
            record = json.loads(text)
        except ValueError:
            continue
        raw = str(record.get("raw", ""))
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        position = min(0.999999, max(0, int(record.get("line", 1)) - 1) / lines)
        out.append(LineObs(position, obj if isinstance(obj, dict) else None, str(record.get("reason")), raw))
    return out


def _legacy_rules(ref: dict[str, Any]) -> RuleSet | None:
    try:
        ruleset = load_ruleset(f"{ref.get('name')}@v{ref.get('version')}")
    except SegshadowError:
        return None
    return ruleset if ruleset.digest == ref.get("digest") else None


def _stream_rules(ref: dict[str, Any]) -> RuleSet | None:
    definition = ref.get("definition")
    if not isinstance(definition, dict):
        return _legacy_rules(ref)
    try:
        ruleset = compile_ruleset(definition, "the stream sidecar's definition")
    except SegshadowError:
        return None
    return ruleset if ruleset.digest == ref.get("digest") else None


def _drift(parity: dict[str, Any] | None, sides: Any) -> tuple[list[dict[str, Any]], str]:
    """The run's segment drift, one definition (``compare.drift``): ``parity.json``'s ``segment_drift`` when the
    comparison of these outputs has it (what the report, the dashboard and the gate read), else the same
    section computed from the outputs."""
    section = parity.get("segment_drift") if parity is not None else None
    if isinstance(section, dict) and isinstance(section.get("per_as_of"), list):
        return [dict(r) for r in section["per_as_of"] if isinstance(r, dict)], "parity.json"
    if sides:
        return list(drift_from_sides(sides)["per_as_of"]), "outputs (no parity.json of these outputs)"
    return [], ""


class History(NamedTuple):
    """The rule-set history the store holds for the compared period (``compare.doctor.RuleSetUse``)."""

    uses: list[RuleSetUse]
    definitions: dict[str, RuleSet]
    wall: tuple[int, int] | None
    note: str


def read_history(database_url: str, name: str, first: int, last: int) -> History:
    """Every stored version of rule set ``name``, the legacy as-of runs in ``[first, last]`` under each, and the
    first effective time of the stream's transitions under each, up to ``last`` (the stream's start under it).

    An as-of that legacy ran under several rule sets is parallel runs (two versions compared in one
    database), not a switch: it is left out of the legacy uses and counted in the note."""
    from segments.sqlstore import SqlStore

    uses: list[RuleSetUse] = []
    definitions: dict[str, RuleSet] = {}
    runs: dict[int, list[tuple[str, str, int, int]]] = {}
    try:
        store = SqlStore.open(database_url, create=False)
    except SegshadowError as exc:
        return History([], {}, None, f"not checked: the store cannot be opened ({exc})")
    try:
        stored = [r for r in store.stored_rulesets() if r.name == name]
        for row in stored:
            ref = f"{row.name}@v{row.version}"
            uses.append(RuleSetUse("store", ref, row.digest, row.created_at))
            with contextlib.suppress(SegshadowError):
                definitions[ref] = store.load_ruleset(row.name, row.version)
            for run in store.legacy_runs(ref):
                if first <= run.as_of <= last:
                    runs.setdefault(run.as_of, []).append((ref, row.digest, run.started_at, run.finished_at))
            times = [t.effective_time for t in store.read_transitions(ref) if t.effective_time <= last]
            if times:  # when the stream started under it (before the period: in force when it began)
                uses.append(RuleSetUse("stream", ref, row.digest, min(times)))
    except Exception as exc:  # a store of another schema or version: say so, never fail the triage on it
        return History([], {}, None, f"not checked: the store's rule-set history cannot be read ({exc})")
    finally:
        store.close()
    parallel = sum(1 for v in runs.values() if len({d for _, d, _, _ in v}) > 1)
    single = [(t, v[0]) for t, v in sorted(runs.items()) if len({d for _, d, _, _ in v}) == 1]
    uses += [RuleSetUse("legacy", ref, digest, t) for t, (ref, digest, _, _) in single]
    wall = (min(r[2] for _, r in single), max(r[3] for _, r in single)) if single else None
    note = (f"checked in the store: {len(stored)} stored versions of {name}, {len(single)} legacy as-of runs and "
            f"the stream's transitions in the period")
    if parallel:
        note += f"; {parallel} as-ofs were run under several rule sets (parallel runs, not a switch)"
    return History(uses, definitions, wall, note)


def read_live(redis_url: str, since_ms: int, now_ms: int) -> LiveHealth:
    """The live health published in the serving store at ``redis_url``, with its history over ``since_ms``."""
    import redis

    from segments.redisstore import connect
    from streaming.health import read_health

    try:
        client = connect(redis_url)
        try:
            current, history = read_health(client, now_ms - since_ms)
        finally:
            client.close()
    except redis.RedisError as exc:
        raise StoreUnavailable("Redis", redis_url, exc) from exc
    return LiveHealth(current, history, now_ms, since_ms)


def _sealed_bounds(path: Path) -> TimeBounds:
    """The time bounds and kinds of the rule set sealed at ``path`` (SPEC's when there is none readable)."""
    try:
        return sealed_ruleset(path).time_bounds
    except (OSError, SegshadowError):
        return DEFAULT_TIME_BOUNDS


def examine(run: Path, live: LiveHealth | None = None, *, database_url: str | None = None) -> Diagnosis:
    """Read the run directory ``run`` and diagnose it layer by layer (with ``live``, the state and sink layers
    also judge the running pipeline's health). The rule-set history is read from the store at
    ``database_url``, else from the run's own ``segshadow.db`` when it has one."""
    if not run.is_dir():
        raise InputError("no such evidence directory", str(run))
    shadow = _json(run / "shadow.json") or {}
    ingest_counts = (shadow.get("counts") or {}).get("ingest")
    events_path = run / "events.jsonl"
    # the run's own definition: its kinds and bounds decide what was accepted
    log = load_event_log(events_path, _sealed_bounds(run / RULESET_FILE)) if events_path.is_file() else None
    events = log.events if log is not None else []
    lines = _line_obs(events_path, run / "ingest.deadletter.jsonl", (ingest_counts or {}).get("lines"))
    legacy_meta = _json(meta_path(run / "legacy.jsonl")) or {}
    stream_meta = _json(meta_path(run / "stream.jsonl")) or {}
    lref = legacy_meta.get("ruleset") or {}
    sref = stream_meta.get("ruleset") or {}
    legacy_rules = _legacy_rules(lref) if lref else None
    stream_rules = _stream_rules(sref) if sref else None
    reference = legacy_rules or stream_rules

    if reference is None:
        from compare.doctor import LayerVerdict

        ingest = LayerVerdict("ingest", "thin", "no rule set known for the run: no profile to check against")
    else:
        ingest = ingest_layer(lines, events, len(log.duplicates) if log else 0, reference)

    params: GateParams | None = None
    if "allowed_lateness_ms" in stream_meta and "max_out_of_orderness_ms" in stream_meta:
        params = GateParams(int(stream_meta["max_out_of_orderness_ms"]), int(stream_meta["allowed_lateness_ms"]))
    sides = None
    applied: list[Event] = []
    as_ofs = [int(t) for t in legacy_meta.get("as_of_times") or []]
    have_outputs = (run / "legacy.jsonl").is_file() and (run / "stream.jsonl").is_file()
    if have_outputs and as_ofs and params is not None:
        sides = sides_at(as_ofs, read_assignments(run / "legacy.jsonl"), read_transitions(run / "stream.jsonl"))
        dropped = too_late_ids(events, params)
        applied = [e for e in events if e.event_id not in dropped]
    parity = _json(run / "parity.json")
    if parity is not None and (parity.get("ruleset") or {}).get("digest") != sref.get("digest"):
        parity = None  # a comparison of other outputs than these
    history_inputs: dict[str, Any] = {}
    url = database_url or (f"sqlite:///{run / 'segshadow.db'}" if (run / "segshadow.db").is_file() else None)
    name = lref.get("name") or sref.get("name")
    if url is not None and as_ofs and isinstance(name, str):
        history = read_history(url, name, min(as_ofs), max(as_ofs))
        history_inputs = {
            "changes": changes_in_period(history.uses, min(as_ofs), max(as_ofs), wall=history.wall),
            "definitions": history.definitions,
            "legacy_at": in_force(history.uses, "legacy", as_ofs),
            "stream_at": in_force(history.uses, "stream", as_ofs),
            "history": history.note,
        }
    logic = logic_layer(LogicInputs(lref, sref, legacy_rules, stream_rules, parity, sides, applied,
                                    **history_inputs))

    counts = stream_meta.get("counts") or {}
    span = reference.span_ms if reference is not None else 0
    rebuilds = counts.get("shard_rebuilds")
    state = state_layer(StateInputs(events, params, span, counts.get("too_late"), stream_meta.get("metrics") or {},
                                    rebuilds=rebuilds if isinstance(rebuilds, int) else None))
    sink = sink_layer(SinkInputs(stream_meta.get("metrics") if stream_meta else None, counts, ingest_counts))
    if live is not None:
        state, sink = live_state(state, live), live_sink(sink, live)
    drift, source = _drift(parity, sides)
    return diagnose((ingest, logic, state, sink), drift, drift_source=source)
