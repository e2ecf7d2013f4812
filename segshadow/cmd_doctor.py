"""``segshadow doctor``: which layer is at fault (ingest, logic, state, sink), from a run's evidence.

Prints a table (one row a layer: verdict, what shows it, the next step), writes
``DIR/doctor.json`` and places a section in ``DIR/report.html``. Exit 0 when every
layer is ok (or only suspect), 1 when a layer fails (the first failing one is
named), 3 when the evidence is too thin to say, 2 for bad usage.
``--live`` also reads the health ``stream live`` publishes in the serving store
(``--redis-url`` or ``SEGSHADOW_REDIS_URL``; never an embedded one, which no
pipeline writes to) over the last ``--since``, into the state and sink layers.
``--database-url`` names the store the run wrote to (default: the run's own
``segshadow.db``), where the logic layer reads the rule-set history of the
compared period; the environment's database URL is not read, as a shared
database holds other runs' rule sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from compare.doctor_evidence import examine, read_live
from compare.doctor_report import write_outputs
from segments.errors import UsageError
from segments.timeutil import wall_clock_ms
from segshadow.common import RedisOpt, duration, settings

_STYLE = {"ok": "green", "suspect": "yellow", "failing": "bold red", "thin": "magenta"}


def doctor(
    evidence: Annotated[Path, typer.Option("--evidence", help="a shadow run's directory")],
    live: Annotated[
        bool, typer.Option("--live/--no-live", help="also read the running pipeline's published health")
    ] = False,
    since: Annotated[str, typer.Option("--since", help="with --live: how far back to read")] = "1h",
    redis_url: RedisOpt = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="the store the run wrote to, for the rule-set history over the period "
                     "(default: the run's own segshadow.db; the environment's URL is not read)"),
    ] = None,
) -> None:
    """Walk the layers in order over a run's evidence; name the first failing one and what to do next."""
    since_ms = duration(since)
    if since_ms <= 0:
        raise UsageError("--since must be positive")
    health = None
    if live:
        where = settings(None, redis_url)
        if where.redis_embedded:
            raise UsageError("--live reads the serving store stream live publishes to: give --redis-url or "
                             "SEGSHADOW_REDIS_URL")
        health = read_live(where.redis_url, since_ms, wall_clock_ms())
    diagnosis = examine(evidence, health, database_url=database_url)
    write_outputs(evidence, diagnosis)
    table = Table(title=f"segshadow doctor: {evidence}")
    for column in ("layer", "verdict", "what shows it", "next step"):
        table.add_column(column, overflow="fold")
    for layer in diagnosis.layers:
        shown = layer.summary + "".join(f"\n- {f}" for f in layer.findings[:4] if f != layer.summary)
        # the texts hold brackets (segments[high_value]...) that rich would read as markup and drop
        verdict = f"[{_STYLE[layer.verdict]}]{layer.verdict}[/]"
        table.add_row(layer.layer, verdict, escape(shown), escape(layer.next_step))
    Console(width=160).print(table)
    typer.echo(diagnosis.headline)
    typer.echo(f"doctor.json: {evidence / 'doctor.json'}")
    raise typer.Exit(diagnosis.exit_code)


def register(app: typer.Typer) -> None:
    """Add ``segshadow doctor`` to the top-level app."""
    app.command("doctor")(doctor)
