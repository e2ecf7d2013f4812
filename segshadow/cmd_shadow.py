"""``segshadow shadow run``: the main job (SPEC §6).

``--workload clickstream|risk`` generates a seeded workload into the run
directory; ``--events PATH`` takes a file. Replay mode by default; ``--live``
runs the real-time path (see ``shadow.live``). With no database configured the run
is self-contained: a SQLite file in the run directory and an embedded Valkey. A
database from ``--database-url`` or ``SEGSHADOW_DATABASE_URL`` is used as given,
SQLite like any other. Exit 1 when the verdict fails ``--fail-on``. Either
mode ends by saving the serving store's segments to ``DIR/serving.jsonl``
(``segments.snapshot``), so ``segshadow serve --run DIR`` can show the run afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from legacy_batch.sqlfile import LegacySql
from segments.config import sqlite_url
from segments.embedded import redis_endpoint
from segments.errors import UsageError
from segments.rules import load_ruleset
from segments.workloads import WORKLOADS, write_workload
from segshadow.cmd_compare import FailOnOpt, check_fail_on, fail_on_verdict
from segshadow.cmd_stream import LatenessOpt, OooOpt, ShardsOpt, gate_params
from segshadow.common import (
    DatabaseOpt,
    DataDirOpt,
    RedisOpt,
    duration,
    duration_between,
    progress_bars,
    settings,
    status_lines,
    writable_dir,
)

shadow_app = typer.Typer(help="Shadow runs: both segmenters on the same events, compared.", no_args_is_help=True)
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
_STAGES = {
    "ingest": "dual-write ingest",
    "legacy": "legacy as-of runs",
    "stream": "Beam stream",
    "compare": "comparison",
}


@shadow_app.command("run", context_settings=_PASS_THROUGH)
def run(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="run directory for every output", callback=writable_dir)],
    workload: Annotated[str | None, typer.Option("--workload", help="generate: clickstream or risk")] = None,
    events: Annotated[Path | None, typer.Option("--events", help="or replay this events file")] = None,
    rules: Annotated[str | None, typer.Option("--rules", help="rule set (default: the workload's)")] = None,
    users: Annotated[int, typer.Option("--users", help="generated users", min=1)] = 2_000,
    minutes: Annotated[int, typer.Option("--minutes", help="generated minutes of traffic", min=1)] = 30,
    seed: Annotated[int, typer.Option("--seed", help="workload seed")] = 1,
    every: Annotated[str, typer.Option("--every", help="legacy as-of interval")] = "5m",
    max_out_of_orderness: OooOpt = "5s",
    allowed_lateness: LatenessOpt = "60s",
    shards: ShardsOpt = 8,
    noise: Annotated[bool, typer.Option("--noise/--no-noise", help="also run the stream on jittered arrivals")] = False,
    live: Annotated[bool, typer.Option("--live/--no-live", help="real-time path instead of replay")] = False,
    rate: Annotated[
        int, typer.Option("--rate", help="live: events per second (1-1000000)", min=1, max=1_000_000)
    ] = 1_000,
    duration_text: Annotated[
        str,
        typer.Option("--duration", help="live: how long to produce (1s-1d)", callback=duration_between("1s", "1d")),
    ] = "60s",
    database_url: DatabaseOpt = None,
    redis_url: RedisOpt = None,
    data_dir: DataDirOpt = None,
    fail_on: FailOnOpt = "defects",
    legacy_sql: Annotated[
        Path | None,
        typer.Option(
            "--legacy-sql",
            help="legacy side: run this query (user_id, segment rows over `events`) in place of the rule set's",
        ),
    ] = None,
    transform: Annotated[
        str | None,
        typer.Option("--transform", help="your own Beam PTransform (package.module:name) as the stream side"),
    ] = None,
) -> None:
    """The main job: dual-write events to both sides, run legacy and stream, compare, and report.

    Exit 1 when the verdict fails ``--fail-on`` (default: ``defects``), after every output is written.
    """
    check_fail_on(fail_on)
    if (workload is None) == (events is None):
        raise UsageError("give exactly one of --workload clickstream|risk or --events PATH")
    if workload is not None and workload not in WORKLOADS:
        raise UsageError(f"--workload must be one of {', '.join(WORKLOADS)}, not {workload!r}")
    every_ms = duration(every)
    if every_ms <= 0:
        raise UsageError("--every must be positive")
    params = gate_params(max_out_of_orderness, allowed_lateness)
    ruleset = load_ruleset(rules or workload or "clickstream")
    sql = None if legacy_sql is None else LegacySql.read(legacy_sql)
    if sql is not None and live:
        raise UsageError("--legacy-sql runs in replay mode; --live keeps the rule set's legacy query")
    own = None
    if transform is not None:
        from streaming.byo import load_transform

        own = load_transform(transform)
    out.mkdir(parents=True, exist_ok=True)
    where = settings(database_url or None, redis_url, data_dir)
    # A database given by --database-url or SEGSHADOW_DATABASE_URL (SQLite included) is used as given;
    # only with neither is the run self-contained, in a SQLite file of its own run directory.
    chosen = where.database_url != sqlite_url(where.data_dir / "segshadow.db")
    db = where.database_url if chosen else sqlite_url(out.resolve() / "segshadow.db")

    if live:
        from shadow.live import LivePlan, run_live

        if events is not None:
            raise UsageError("--live produces a generated workload in real time: give --workload, not --events")
        seconds = duration(duration_text) / 1000
        live_plan = LivePlan(
            ruleset, out, workload or "clickstream", every_ms, params, shards, rate, seconds, seed, transform=own
        )
        typer.echo(f"live: starting the stream, then {rate} events/s for {duration_text}", err=True)
        with redis_endpoint(where.redis_url) as url, _live_status(url, ruleset.name, out):
            live_report = run_live(live_plan, db, url, list(ctx.args))
            keep_serving(url, out)
        ingest, lat = live_report.counts["ingest"], live_report.latency
        typer.echo(
            f"ingest: {ingest['sent']} lines at {ingest['rate_achieved']:,.0f}/s ({ingest['rejected']} rejected, "
            f"{ingest['journaled']} journaled); legacy {live_report.counts['legacy']['as_ofs_compared']} settled "
            f"as-ofs compared; primary write p99 {lat['primary_write_ms']['p99_ms']} ms; stream emitted after "
            f"ingest p50 {lat['stream_emitted_after_ingest_ms']['p50_ms']} ms, "
            f"p99 {lat['stream_emitted_after_ingest_ms']['p99_ms']} ms"
        )
        typer.echo(live_report.parity.summary_line())
        typer.echo(f"report: {out / 'report.html'}  parity: {out / 'parity.json'}  live: {out / 'live.json'}")
        gate_outlook(out, ruleset.name)
        typer.echo(f"see it: segshadow serve --run {out}  (then open http://127.0.0.1:8000/)")
        fail_on_verdict(live_report.parity.verdict, live_report.parity.summary_line(), fail_on)
        return

    from shadow.run import ShadowPlan, run_shadow

    if workload is not None:
        input_path = out / "input.jsonl"
        counts = write_workload(workload, input_path, users=users, minutes=minutes, seed=seed)
        typer.echo(f"workload {workload}: {counts['lines']} lines, {counts['users']} users -> {input_path}", err=True)
    else:
        assert events is not None
        input_path = events
    plan = ShadowPlan(
        ruleset, out, every_ms, params, shards, noise, seed, tuple(ctx.args), legacy_sql=sql, transform=own
    )
    with redis_endpoint(where.redis_url) as url, progress_bars(_STAGES, transient=False) as bars:
        report = run_shadow(plan, input_path, db, url, bars)
        keep_serving(url, out)
    ingest = report.counts["ingest"]
    typer.echo(
        f"ingest: {ingest['accepted']} events dual-written ({ingest['rejected']} rejected, "
        f"{ingest['journaled']} journaled, {ingest['replayed']} replayed); "
        f"legacy {report.counts['legacy']['as_ofs']} as-ofs; stream {report.counts['stream'].get('transitions', 0)} "
        f"transitions"
    )
    typer.echo(report.parity.summary_line())
    typer.echo(f"report: {out / 'report.html'}  parity: {out / 'parity.json'}  summary: {out / 'summary.md'}")
    gate_outlook(out, ruleset.name)
    typer.echo(f"see it: segshadow serve --run {out}  (then open http://127.0.0.1:8000/)")
    fail_on_verdict(report.parity.verdict, report.parity.summary_line(), fail_on)


@contextlib.contextmanager
def _live_status(redis_url: str, ruleset_name: str, out: Path) -> Iterator[None]:
    """Every 5 s on a terminal: events sent, their rate, the consumer lag and the stream's p99 so far."""
    import redis

    from shadow.live import GROUP, live_stream_key
    from shadow.status import LiveWatcher

    client = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    watcher = LiveWatcher(client, live_stream_key(ruleset_name), GROUP, out / "stream.jsonl")
    try:
        with status_lines(lambda: watcher.sample().line()):
            yield
    finally:
        client.close()


def gate_outlook(out: Path, ruleset_name: str) -> None:
    """Say what the shipped plan's first promotion would decide on this run's evidence, and why.

    Printed after the run and written to ``DIR/gates.md``: each gate that does not
    pass, with its reason, so a demo's inconclusive verdict is explained where it is
    read. ``summary.md`` is sealed in the manifest, so the outlook (computed from the
    sealed evidence) goes beside it rather than into it.
    """
    from rollout.cutover import choose_target
    from rollout.evidence import load_evidence
    from rollout.gates import evaluate, verdict
    from rollout.plan import load_plan
    from rollout.stages import Position, Stage
    from segments.timeutil import wall_clock_ms

    plan = load_plan("risk" if ruleset_name == "risk" else "default")
    target = choose_target(plan, Position.at(Stage.SHADOW))
    results = evaluate(
        plan, plan.gates_for(target), load_evidence(out).data, wall_clock_ms(), time_in_stage=False
    )
    outcome = verdict(results)
    head = f"gates of the shipped plan {plan.name} to enter {target}: {outcome}"
    lines = [f"{r.status} {r.name}: {r.reason}" for r in results if r.status != "pass"]
    if outcome != "pass":
        lines.append("evidence that can pass comes from a live run: see the README, 'Evidence that passes'")
    typer.echo(head + "".join(f"\n  {line}" for line in lines))
    section = [f"# Gates: {head}\n"] + [f"- {line}" for line in lines]
    (out / "gates.md").write_text("\n".join(section) + "\n", encoding="utf-8")


def keep_serving(redis_url: str, out: Path) -> None:
    """Save the run's serving data (both sides' segments per user) to ``out/serving.jsonl``."""
    from segments.redisstore import connect
    from segments.snapshot import FILENAME, save_serving

    client = connect(redis_url)
    try:
        save_serving(client, out / FILENAME)
    finally:
        client.close()


def register(app: typer.Typer) -> None:
    """Add ``segshadow shadow ...`` to the top-level app."""
    app.add_typer(shadow_app, name="shadow")
