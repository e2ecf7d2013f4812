"""``segshadow legacy run``: the legacy SQL batch segmenter alone (SPEC §3, §6).

The database is ``--database-url``, else ``SEGSHADOW_DATABASE_URL``, else the embedded
SQLite file in the data directory. A run replaces that database's events table
(and the rule set's earlier legacy assignments), so runs never mix; see
``legacy_batch.job``. Assignments go to Redis (namespace ``legacy``) only when a
Redis server is named (``--redis-url`` or ``SEGSHADOW_REDIS_URL``): an embedded
Valkey started for one run would be gone when it ends, so none is started.
There each as-of's members also go into the legacy side's segment reach
(``PFADD`` per minute and hour, ``segments.reachstore.ReachingSink``), as the
stream's sink keeps the stream's.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from legacy_batch.job import AssignmentSink, run_legacy, serving_sink
from legacy_batch.sqlfile import LegacySql
from segments.errors import RuleSetError, UsageError
from segments.rules import RuleSet, load_ruleset
from segments.sqlstore import SqlStore
from segshadow.common import DatabaseOpt, DataDirOpt, RedisOpt, duration, progress_bars, settings, writable_file

legacy_app = typer.Typer(help="The legacy SQL batch segmenter.", no_args_is_help=True)

_STAGES = {"read": "reading events", "load": "loading events into SQL", "as_of": "as-of runs"}


def resolve_rules(ref: str, store: SqlStore) -> RuleSet:
    """A rule-set file, a shipped name (``clickstream``, ``risk@v1``), else a version stored in ``store``.

    Raises ``RuleSetError`` (the file's or shipped set's error when none is stored either).
    """
    try:
        return load_ruleset(ref)
    except RuleSetError as shipped_error:
        path = Path(ref)
        if path.suffix in (".yaml", ".yml", ".json") or path.exists():
            raise
        name, _, raw_version = ref.partition("@")
        version: int | None = None
        if raw_version:
            digits = raw_version.removeprefix("v")
            if not digits.isdigit():
                raise RuleSetError(f"bad version in {ref!r}: write name@vN") from None
            version = int(digits)
        try:
            return store.load_ruleset(name, version)
        except RuleSetError:
            raise shipped_error from None


def _redis_sink(url: str, stack: contextlib.ExitStack) -> AssignmentSink:
    """The ``legacy`` namespace's current sets; each as-of's members also go into its reach (reachstore)."""
    from segments.redisstore import RedisStore

    return serving_sink(stack.enter_context(RedisStore.open(url)))


@legacy_app.command("run")
def run(
    events: Annotated[Path, typer.Option("--events", help="events file (JSON Lines, SPEC §1)")],
    rules: Annotated[str, typer.Option("--rules", help="rule set: clickstream, risk, name@vN or a file")],
    out: Annotated[
        Path, typer.Option("--out", help="assignments file to write (SPEC §3 lines)", callback=writable_file)
    ],
    every: Annotated[str, typer.Option("--every", help="interval between as-of times")] = "5m",
    sql: Annotated[
        Path | None,
        typer.Option(
            "--sql",
            help="run this query (user_id, segment rows over `events`, binds :as_of :window_start) "
            "in place of the rule set's; --rules then names the rule set it implements",
        ),
    ] = None,
    database_url: DatabaseOpt = None,
    redis_url: RedisOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run the legacy batch segmenter over an events file at every as-of time and write the assignments.

    The run replaces the database's events table and this rule set's earlier legacy
    assignments. Assignments also go to the Redis ``legacy`` namespace when a Redis server
    is named (--redis-url or SEGSHADOW_REDIS_URL); no embedded Valkey is started for it.
    With --sql the team's query runs at each as-of over the events that had arrived by then
    (legacy_batch.sqlfile); the sidecar names the query's SHA-256.
    """
    every_ms = duration(every)
    if every_ms <= 0:
        raise UsageError(f"--every must be positive, not {every!r}")
    legacy_sql = None if sql is None else LegacySql.read(sql)
    where = settings(database_url, redis_url, data_dir)
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(SqlStore.open(where.database_url))
        ruleset = resolve_rules(rules, store)
        sink = None if where.redis_embedded else _redis_sink(where.redis_url, stack)
        bars = stack.enter_context(progress_bars(_STAGES))
        report = run_legacy(events, ruleset, every_ms, out, store, sink, on_progress=bars, sql=legacy_sql)
    counts = report.counts
    logic = "" if legacy_sql is None else f" (SQL {sql}, sha256 {legacy_sql.sha256[:12]})"
    typer.echo(
        f"legacy {ruleset.ref}{logic}: {report.assignments} assignments at {len(report.as_ofs)} as-of times "
        f"-> {out} (events: {counts['accepted']} accepted, {counts['duplicates']} duplicates, "
        f"{counts['rejected']} rejected; {report.backend}{'' if sink is None else ' + redis'})"
    )


def register(app: typer.Typer) -> None:
    """Add ``segshadow legacy ...`` to the top-level app."""
    app.add_typer(legacy_app, name="legacy")
