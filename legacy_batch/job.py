"""The legacy job: load the event log into the SQL events table, run every as-of, write the assignments.

A run of ``run_legacy`` over an events file:

1. reads the file (``segments.events.load_event_log``: valid events in arrival order,
   first arrival of an id wins; bad lines are counted, never stop the run);
2. registers the rule set (``RuleSetError`` if that name and version is stored with
   another definition);
3. **replaces the database's event log**: the events table is emptied, then the
   file's events are inserted. The events table holds one event log at a time; runs
   over different files need different databases (``--database-url``);
4. runs the as-ofs of SPEC §3 in increasing order: one aggregate query each
   (``legacy_batch.query``), each snapshot **staged** under the run's id
   (``SqlStore.stage_assignments``, idempotent per as-of) and sent to the optional
   sink (the Redis ``legacy`` namespace);
5. **publishes the run at once** (``SqlStore.publish_legacy_run``: one transaction
   replaces the rule set's published assignments and runs with the staged ones), so
   the published tables, which the router's SQL fallback reads, only ever hold
   complete runs and a run never mixes with a previous one;
6. writes the SPEC §3 lines to ``out`` atomically and then the ``.meta.json``
   sidecar; an interrupted run leaves no output that looks complete.

A database failure during steps 3-5 (a lost connection, a dropped database, a lock or
statement timeout of ``segments.db``) is ``RunFailed`` (exit 1) naming the step, what
failed and what was kept: nothing of this run is published, the previous complete
run stays (its id is named), ``out`` is not written. Events whose times are outside
the rule set's ``TimeBounds`` are dead-lettered as ``time_out_of_range`` in step 1,
and the schedule is bounded (``legacy_batch.schedule``).

Wall-clock stamps come from the injected ``clock``; durations from ``timer``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from legacy_batch.query import AggregateQuery, build_query
from legacy_batch.schedule import schedule
from legacy_batch.sqlfile import LegacySql, SqlFileQuery
from segments.db import db_errors, describe_db_error
from segments.errors import InputError, RunFailed
from segments.events import Event, load_event_log, write_jsonl
from segments.outputs import Assignment, file_sha256, meta_path, write_meta
from segments.rules import RuleSet, check_reads
from segments.sqlstore import EVENT_BATCH, LegacyRun, Publication, SqlStore
from segments.timeutil import Clock, format_ms, wall_clock_ms

if TYPE_CHECKING:
    from segments.redisstore import RedisStore

Timer = Callable[[], float]
ProgressHook = Callable[[str, int, int], None]
"""Called as ``hook(stage, done, total)``: stage ``read`` (the file, 0 then 1 of 1), ``load``
(events into SQL) or ``as_of`` (runs)."""

OUTPUT_KIND = "legacy_assignments"
PUBLISHING = "while publishing the run"


class AssignmentSink(Protocol):
    """Where a complete legacy snapshot goes after SQL (e.g. the Redis ``legacy`` namespace).

    ``rows`` are (user id, segments) for every user with a non-empty set at ``as_of``;
    as-ofs come in increasing order. Must be idempotent: an as-of may be written again.
    """

    def write_assignments(self, as_of: int, rows: Sequence[tuple[str, frozenset[str]]]) -> object: ...


class LegacyWriter(Protocol):
    """A store with ``write_legacy(as_of, rows)`` (``segments.redisstore.RedisStore``)."""

    def write_legacy(self, as_of: int, rows: Iterable[tuple[str, frozenset[str]]]) -> object: ...


@dataclass(frozen=True)
class LegacyWriterSink:
    """Adapts a ``LegacyWriter`` to ``AssignmentSink``."""

    writer: LegacyWriter

    def write_assignments(self, as_of: int, rows: Sequence[tuple[str, frozenset[str]]]) -> object:
        return self.writer.write_legacy(as_of, rows)


def serving_sink(store: RedisStore) -> AssignmentSink:
    """The Redis ``legacy`` namespace's current sets, with each as-of's members also in the legacy side's reach
    (``segments.reachstore.ReachingSink``): what every legacy write to the serving store goes through."""
    from segments.reachstore import ReachingSink, ReachStore

    return ReachingSink(LegacyWriterSink(store), ReachStore(store.client, prefix=store.prefix))


def as_sink(target: AssignmentSink | LegacyWriter) -> AssignmentSink:
    """``target`` as an ``AssignmentSink`` (wrapping anything that only has ``write_legacy``)."""
    if hasattr(target, "write_assignments"):
        return target  # type: ignore[return-value]
    if hasattr(target, "write_legacy"):
        return LegacyWriterSink(target)
    raise TypeError(f"{type(target).__name__} has neither write_assignments nor write_legacy")


@dataclass(frozen=True)
class AsOfRun:
    """One as-of: its assignments (sorted by user), the query time and the whole run's time (ms)."""

    as_of: int
    assignments: tuple[Assignment, ...]
    query_ms: float
    duration_ms: float


@dataclass(frozen=True)
class LegacyReport:
    """What a ``run_legacy`` did; ``meta()`` is the output's provenance sidecar."""

    ruleset: RuleSet
    events_path: str
    events_sha256: str
    every_ms: int
    backend: str
    as_ofs: tuple[int, ...]
    assignments: int
    counts: Mapping[str, int]
    parse_ms: float
    load_ms: float
    query_ms: tuple[float, ...] = field(repr=False)
    run_ms: tuple[float, ...] = field(repr=False)
    sql: LegacySql | None = None  # the team's query, when it stood in for the rule set's (``legacy_batch.sqlfile``)

    @property
    def query_median_ms(self) -> float:
        return statistics.median(self.query_ms) if self.query_ms else 0.0

    def meta(self) -> dict[str, Any]:
        """The sidecar: rule set, event file, parameters, counts and timings."""
        ruleset: dict[str, Any] = {
            "name": self.ruleset.name,
            "version": self.ruleset.version,
            "digest": self.ruleset.digest,
        }
        logic: dict[str, Any] = {}
        if self.sql is not None:
            # The team's SQL made this output: its SHA-256 stands where the rule set's digest would, and
            # the rule set is only declared (no digest: nothing shows that the query implements it).
            ruleset = {"name": self.ruleset.name, "version": self.ruleset.version, "source": "sql",
                       "sql_sha256": self.sql.sha256}  # fmt: skip
            logic = {"logic": self.sql.provenance(self.ruleset)}
        return {
            "kind": OUTPUT_KIND,
            "ruleset": ruleset,
            **logic,
            "events": self.events_path,
            "events_sha256": self.events_sha256,
            "every_ms": self.every_ms,
            "as_of_count": len(self.as_ofs),
            "as_of_times": list(self.as_ofs),
            "as_of_first": self.as_ofs[0] if self.as_ofs else None,
            "as_of_last": self.as_ofs[-1] if self.as_ofs else None,
            "assignments": self.assignments,
            "database": self.backend,
            "counts": dict(self.counts),
            "timing_ms": {
                "parse": round(self.parse_ms, 3),
                "load": round(self.load_ms, 3),
                "query_median": round(self.query_median_ms, 3),
                "run_per_as_of": [round(ms, 3) for ms in self.run_ms],
            },
        }


def load_events(store: SqlStore, events: Sequence[Event], on_progress: ProgressHook | None = None) -> int:
    """Replace the events table's content with ``events`` (arrival order); returns how many were stored."""
    total = len(events)

    def loaded(done: int) -> None:
        if on_progress is not None:
            on_progress("load", done, total)

    return store.replace_events(events, EVENT_BATCH, loaded)


def run_as_of(
    store: SqlStore,
    query: AggregateQuery | SqlFileQuery,
    t: int,
    sink: AssignmentSink | None = None,
    clock: Clock = wall_clock_ms,
    timer: Timer = time.perf_counter,
    run_id: str | None = None,
) -> AsOfRun:
    """Compute the snapshot at ``t`` from the events table and write it to SQL (and ``sink``).

    Without ``run_id`` the snapshot is published at once (the live legacy job); with it,
    staged in that run (``run_as_ofs``). Running the same as-of again over the same
    events rewrites the same snapshot.
    """
    started_at = clock()
    start = timer()
    with store.engine.connect() as conn:
        assignments = query.assignments_at(conn, t)
    query_ms = (timer() - start) * 1000
    run = LegacyRun(query.ruleset.ref, t, started_at, clock(), len(assignments), round(query_ms))
    if run_id is None:
        store.replace_assignments(query.ruleset.ref, t, assignments, run)
    else:
        store.stage_assignments(run_id, query.ruleset.ref, t, assignments, run)
    if sink is not None:
        sink.write_assignments(t, [(a.user_id, frozenset(a.segments)) for a in assignments])
    return AsOfRun(t, tuple(assignments), query_ms, (timer() - start) * 1000)


def run_as_ofs(
    store: SqlStore,
    ruleset: RuleSet,
    as_ofs: Sequence[int],
    sink: AssignmentSink | None = None,
    clock: Clock = wall_clock_ms,
    timer: Timer = time.perf_counter,
    on_progress: ProgressHook | None = None,
    run_id: str | None = None,
    *,
    sql: LegacySql | None = None,
) -> Iterator[AsOfRun]:
    """``run_as_of`` for each as-of in order, over the events already in the table, as one run.

    The snapshots are staged under ``run_id`` (a new run when None) and the run is
    published (``SqlStore.publish_legacy_run``) once the last as-of has been yielded and
    the caller asks for more: a caller that stops early, or a failure, publishes nothing
    and the previous complete run stays. With ``sql`` the team's query runs in place of the
    rule set's (``legacy_batch.sqlfile``), stored under the rule set's name.
    """
    query: AggregateQuery | SqlFileQuery = build_query(ruleset) if sql is None else SqlFileQuery.build(sql, ruleset)
    run_id = run_id or store.begin_legacy_run(ruleset.ref)
    for done, t in enumerate(as_ofs, start=1):
        yield run_as_of(store, query, t, sink, clock, timer, run_id)
        if on_progress is not None:
            on_progress("as_of", done, len(as_ofs))
    store.publish_legacy_run(run_id, ruleset.ref, len(as_ofs))


def _kept(previous: Publication | None) -> str:
    """What stays published when a run fails: the previous complete run, named."""
    if previous is None:
        return "no complete run of this rule set was published before"
    return (
        f"the previous complete run (id {previous.run_id[:12]}, {previous.as_ofs} as-ofs, "
        f"published {format_ms(previous.published_at)}) stays"
    )


def run_legacy(
    events_path: str | Path,
    ruleset: RuleSet,
    every_ms: int,
    out: str | Path,
    store: SqlStore,
    sink: AssignmentSink | None = None,
    clock: Clock = wall_clock_ms,
    timer: Timer = time.perf_counter,
    on_progress: ProgressHook | None = None,
    *,
    sql: LegacySql | None = None,
) -> LegacyReport:
    """The whole legacy job over an events file (see the module doc); returns its report.

    Raises ``InputError`` when the file cannot be read or holds no valid event,
    ``UsageError`` for an ``every_ms`` outside its limits or a schedule beyond
    ``MAX_AS_OFS`` (before the store is touched), ``RuleSetError`` when the rule set
    conflicts with a stored version, ``RunFailed`` when the database fails part-way
    (nothing published, the previous complete run named). Nothing is written to
    ``out`` unless the run completes.
    """
    start = timer()
    if on_progress is not None:
        on_progress("read", 0, 1)
    log = load_event_log(events_path, ruleset.time_bounds)
    if on_progress is not None:
        on_progress("read", 1, 1)
    # An attribute the rule set reads and the data lacks throughout: one clear line, before any SQL.
    check_reads(ruleset, log.events, (r.detail for r in log.rejected), str(events_path))
    if not log.events:
        detail = f"no valid events ({log.lines} lines, {len(log.rejected)} rejected)"
        raise InputError(detail, str(events_path))
    as_ofs = schedule(log.events, every_ms)
    digest = file_sha256(events_path)
    parse_ms = (timer() - start) * 1000

    previous: Publication | None = None
    step = "while preparing the store"
    query_ms: list[float] = []
    run_ms: list[float] = []

    def at(index: int) -> str:
        return f"at as-of {format_ms(as_ofs[index])} ({index + 1} of {len(as_ofs)})"

    def lines() -> Iterator[str]:
        nonlocal step
        runs = run_as_ofs(store, ruleset, as_ofs, sink, clock, timer, on_progress, run_id, sql=sql)
        for done, result in enumerate(runs, start=1):
            query_ms.append(result.query_ms)
            run_ms.append(result.duration_ms)
            for assignment in result.assignments:
                yield assignment.to_json()
            step = at(done) if done < len(as_ofs) else PUBLISHING

    target = Path(out)
    run_id = ""
    try:
        store.create_all()
        store.register_ruleset(ruleset)
        previous = store.publication(ruleset.ref)
        start = timer()
        run_id = store.begin_legacy_run(ruleset.ref)
        step = "while emptying and loading the events table (segshadow_events)"
        stored = load_events(store, log.events, on_progress)
        load_ms = (timer() - start) * 1000
        counts = {**log.counts, "stored": stored}
        del log
        step = at(0)
        meta_path(target).unlink(missing_ok=True)  # an old sidecar must not vouch for a new output
        try:
            written = write_jsonl(target, lines())
        except BaseException:
            target.with_name(target.name + ".partial").unlink(missing_ok=True)
            raise
    except db_errors() as exc:
        what = describe_db_error(exc, store.engine)
        if step == PUBLISHING:
            kept = (
                f"the publication was not confirmed: the published run is the previous one or this one "
                f"(id {run_id[:12]}), never a mix; {_kept(previous)} unless the switch committed"
            )
        else:
            kept = f"nothing of this run is published; {_kept(previous)}"
        raise RunFailed(f"legacy run: {what} {step}; {kept}; {target} not written") from exc
    report = LegacyReport(
        ruleset,
        str(events_path),
        digest,
        every_ms,
        store.backend,
        tuple(as_ofs),
        written,
        counts,
        parse_ms,
        load_ms,
        tuple(query_ms),
        tuple(run_ms),
        sql,
    )
    write_meta(out, report.meta())
    return report
