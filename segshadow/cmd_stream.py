"""``segshadow stream replay|live``: the Beam streaming segmenter alone (SPEC §4, §6).

Options after ``--`` go to Beam unchanged (runner and its options). Transitions
go to the JSONL file, to the SQL transitions log (``--database-url``, env, or the
embedded SQLite), and to Redis (namespace ``stream``) when a Redis server is
named; like ``legacy run``, a one-off embedded Valkey is not started for a
replay because its values would vanish with it (``stream live`` needs Redis and
starts one when none is named).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from segments.errors import InputError, UsageError
from segments.events import Event, iter_lines, parse_line
from segments.lateness import GateParams
from segments.rules import RuleSet
from segments.sqlstore import SqlStore
from segshadow.cmd_legacy import resolve_rules
from segshadow.common import (
    DatabaseOpt,
    DataDirOpt,
    RedisOpt,
    busy,
    duration,
    duration_between,
    settings,
    writable_file,
)
from streaming.config import EVENTS_STREAM, GROUP, StreamConfig

stream_app = typer.Typer(help="The Beam streaming segmenter.", no_args_is_help=True)
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

OooOpt = Annotated[str, typer.Option("--max-out-of-orderness", help="watermark = max event time minus this")]
LatenessOpt = Annotated[str, typer.Option("--allowed-lateness", help="older than watermark minus this: too late")]
ShardsOpt = Annotated[
    int, typer.Option("--shards", help="parallel per-user state partitions (1-4096)", min=1, max=4096)
]
NoSqlOpt = Annotated[bool, typer.Option("--no-sql/--sql", help="do not write the SQL transitions log")]
TransformOpt = Annotated[
    str | None,
    typer.Option(
        "--transform",
        help="your own Beam PTransform (package.module:name) segments the admitted events (see streaming.byo)",
    ),
]


def gate_params(max_out_of_orderness: str, allowed_lateness: str) -> GateParams:
    """The lateness contract from command-line durations; ``UsageError`` when negative or malformed."""
    return GateParams(duration(max_out_of_orderness), duration(allowed_lateness))


def require_a_valid_event(path: Path) -> None:
    """``InputError`` (exit 2, as ``legacy run`` and ``shadow run`` give) when the file holds no valid event.

    Reads up to the first valid line, so only an empty or all-rejected file is read whole.
    """
    lines = 0
    for number, text in iter_lines(path):
        lines += 1
        if isinstance(parse_line(text, number), Event):
            return
    raise InputError(f"no valid events ({lines} lines, {lines} rejected)", str(path))


def _config(ruleset: RuleSet, params: GateParams, shards: int, live: bool = False, batch: int = 20_000) -> StreamConfig:
    if shards < 1 or shards > 4096:
        raise UsageError("--shards must be between 1 and 4096")
    return StreamConfig(ruleset, params, shards, batch, live)


@stream_app.command("replay", context_settings=_PASS_THROUGH)
def replay(
    ctx: typer.Context,
    events: Annotated[Path, typer.Option("--events", help="recorded events (JSON Lines, SPEC §1)")],
    rules: Annotated[str, typer.Option("--rules", help="rule set: clickstream, risk, name@vN or a file")],
    out: Annotated[
        Path, typer.Option("--out", help="transitions file to write (SPEC §4 lines)", callback=writable_file)
    ],
    max_out_of_orderness: OooOpt = "5s",
    allowed_lateness: LatenessOpt = "60s",
    shards: ShardsOpt = 8,
    no_sql: NoSqlOpt = False,
    database_url: DatabaseOpt = None,
    redis_url: RedisOpt = None,
    data_dir: DataDirOpt = None,
    transform: TransformOpt = None,
) -> None:
    """Run the Beam stream over a recorded events file (arrival order) and write its transitions."""
    from streaming.byo import load_transform
    from streaming.replay import run_replay

    params = gate_params(max_out_of_orderness, allowed_lateness)
    own = load_transform(transform) if transform is not None else None
    require_a_valid_event(events)
    where = settings(database_url, redis_url, data_dir)
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(SqlStore.open(where.database_url))
        ruleset = resolve_rules(rules, store)
        store.register_ruleset(ruleset)
        stack.enter_context(busy("stream replay (Beam)"))
        result = run_replay(
            events,
            out,
            _config(ruleset, params, shards),
            redis_url=None if where.redis_embedded else where.redis_url,
            database_url=None if no_sql else where.database_url,
            beam_args=list(ctx.args),
            transform=own,
        )
    c = result.counts
    rate = c.get("lines", 0) / result.seconds if result.seconds else 0.0
    typer.echo(
        f"stream {ruleset.ref}{f' (transform {own.ref})' if own else ''}: {c.get('transitions', 0)} transitions "
        f"-> {out} "
        f"(events: {c.get('applied', 0)} applied, {c.get('duplicates', 0)} duplicates, "
        f"{c.get('too_late', 0)} too late, {c.get('rejected', 0)} rejected; "
        f"{result.seconds:.1f}s, {rate:,.0f} lines/s)"
    )


@stream_app.command("live", context_settings=_PASS_THROUGH)
def live(
    ctx: typer.Context,
    rules: Annotated[str, typer.Option("--rules", help="rule set: clickstream, risk, name@vN or a file")],
    max_out_of_orderness: OooOpt = "5s",
    allowed_lateness: LatenessOpt = "60s",
    shards: ShardsOpt = 4,
    stream_key: Annotated[str, typer.Option("--stream-key", help="Redis Stream holding the events")] = EVENTS_STREAM,
    group: Annotated[str, typer.Option("--group", help="consumer group")] = GROUP,
    consumer: Annotated[str, typer.Option("--consumer", help="consumer name in the group")] = "stream-1",
    poll: Annotated[
        str,
        typer.Option("--poll", help="how often to read the stream (1ms-1m)", callback=duration_between("1ms", "1m")),
    ] = "5ms",
    duration_text: Annotated[
        str | None,
        typer.Option("--duration", help="stop after this long (1ms-30d)", callback=duration_between("1ms", "30d")),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="also append transitions to this file", callback=writable_file)
    ] = None,
    no_sql: NoSqlOpt = False,
    database_url: DatabaseOpt = None,
    redis_url: RedisOpt = None,
    data_dir: DataDirOpt = None,
    transform: TransformOpt = None,
) -> None:
    """Run the Beam stream live on a Redis Stream (consumer group), writing segments to Redis and SQL."""
    import apache_beam as beam

    from segments.embedded import redis_endpoint
    from streaming.byo import load_transform
    from streaming.live import LiveSource, build_live
    from streaming.options import LIVE_RUNNER, in_process_tuned, pipeline_options, sink_delay_ms

    params = gate_params(max_out_of_orderness, allowed_lateness)
    own = load_transform(transform) if transform is not None else None
    poll_ms = duration(poll)
    seconds = duration(duration_text) / 1000 if duration_text else None
    if poll_ms <= 0:
        raise UsageError("--poll must be positive")
    where = settings(database_url, redis_url, data_dir)
    options = pipeline_options(list(ctx.args), LIVE_RUNNER, streaming=True)
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(SqlStore.open(where.database_url))
        ruleset = resolve_rules(rules, store)
        store.register_ruleset(ruleset)
        url = stack.enter_context(redis_endpoint(where.redis_url))
        if where.redis_embedded:
            typer.echo(f"no Redis named: started an embedded Valkey at {url}", err=True)
        source = LiveSource(url, stream_key, group, consumer, poll_ms)
        config = _config(ruleset, params, shards, live=True)
        pipeline = beam.Pipeline(options=options)
        build_live(
            pipeline, config, source, seconds, None if no_sql else where.database_url, str(out) if out else None,
            sink_delay_ms(options), transform=own,
        )
        with in_process_tuned(options, live=True):
            pipeline.run().wait_until_finish()
    typer.echo(f"stream live {ruleset.ref}{f' (transform {own.ref})' if own else ''}: stopped")


def register(app: typer.Typer) -> None:
    """Add ``segshadow stream ...`` to the top-level app."""
    app.add_typer(stream_app, name="stream")
