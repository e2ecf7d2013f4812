"""Data commands: ``segshadow import ...``, ``segshadow workload ...``, ``segshadow rules show|list``.

Outputs are written atomically (a temporary file renamed into place), so an
interrupted command never leaves a partial file under the requested name.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
import yaml

from segments.errors import InputError, RuleSetError, UsageError
from segments.events import DEFAULT_TIME_BOUNDS, Event, parse_line, write_jsonl
from segments.faults import FAULTS, write_faulty_workload
from segments.importers import IMPORTERS, Imported, import_mapped, parse_field_map
from segments.rules import SHIPPED, RuleSet, check_reads, load_ruleset, shipped_ruleset
from segments.timeutil import TimestampError, parse_rfc3339_ms
from segments.workloads import DEFAULT_RATE, DEFAULT_START_MS, WORKLOADS, write_workload
from segshadow.common import DatabaseOpt, DataDirOpt, settings, writable_file

import_app = typer.Typer(help="Turn public data sets, or your own export, into SPEC event files.", no_args_is_help=True)
rules_app = typer.Typer(help="Inspect rule sets.", no_args_is_help=True)

InputArg = Annotated[Path, typer.Argument(metavar="CSV_PATH", help="the data set's CSV file")]
OutOpt = Annotated[
    Path, typer.Option("--out", help="events file to write (JSON Lines, SPEC §1)", callback=writable_file)
]


def rejected_path(out: Path) -> Path:
    """Where an import writes the rows it rejected: ``OUT.rejected.jsonl`` beside ``OUT``."""
    return out.with_name(out.name + ".rejected.jsonl")


def _import(source: str, csv_path: Path, out: Path, read: Callable[[], Imported] | None = None) -> None:
    try:
        imported = IMPORTERS[source](csv_path) if read is None else read()
    except csv.Error as exc:  # e.g. a field over the csv module's size limit: not a data set this reads
        raise InputError(f"not a CSV file this importer reads: {exc}", str(csv_path)) from None
    write_jsonl(out, imported.lines)
    bad = rejected_path(out)
    write_jsonl(bad, (r.to_json() for r in imported.rejections))
    counts = imported.counts
    reasons = ", ".join(f"{k.removeprefix('rejected_')} {v}" for k, v in counts.items() if k.startswith("rejected_"))
    typer.echo(
        f"{source}: {counts['rows']} rows: imported {counts['imported']} events -> {out}; "
        f"rejected {counts['rejected']}{f' ({reasons})' if reasons else ''} -> {bad}"
    )


@import_app.command("uci-online-retail")
def import_uci(csv_path: InputArg, out: OutOpt) -> None:
    """The UCI Online Retail CSV: a purchase per invoice line, cancellations as refunds."""
    _import("uci-online-retail", csv_path, out)


@import_app.command("rees46")
def import_rees46(csv_path: InputArg, out: OutOpt) -> None:
    """The REES46 eCommerce behaviour CSV: views, carts and purchases."""
    _import("rees46", csv_path, out)


MapOpt = Annotated[
    str,
    typer.Option(
        "--map",
        help="TARGET=SOURCE,... e.g. user_id=uid,event_time=ts,arrival_time=received,kind=type,amount=price.value,"
        "merchant=shop,attrs.brand=brand (dotted SOURCE reads nested JSON; unmapped fields go to attrs)",
    ),
]
EpochOpt = Annotated[str, typer.Option("--epoch", help="unit of numeric times: ms or s (text times are ISO-8601)")]


RulesOpt = Annotated[
    str | None,
    typer.Option("--rules", help="validate with this rule set's kinds and attributes (default: SPEC kinds)"),
]


def _import_own(fmt: str, path: Path, mapping: str, out: Path, epoch: str, rules: str | None) -> None:
    fields = parse_field_map(mapping)
    ruleset = None if rules is None else load_ruleset(rules)
    bounds = DEFAULT_TIME_BOUNDS if ruleset is None else ruleset.time_bounds

    def read() -> Imported:
        imported = import_mapped(path, fmt, fields, epoch, bounds=bounds)
        if ruleset is not None:
            parsed = (parse_line(line, n, bounds) for n, line in enumerate(imported.lines, start=1))
            events = (event for event in parsed if isinstance(event, Event))
            check_reads(ruleset, events, (r.detail for r in imported.rejections), str(path))
        return imported

    _import(fmt, path, out, read)


OwnArg = Annotated[Path, typer.Argument(metavar="FILE", help="your event export")]


@import_app.command("jsonl")
def import_jsonl(path: OwnArg, mapping: MapOpt, out: OutOpt, epoch: EpochOpt = "ms", rules: RulesOpt = None) -> None:
    """Your own JSON Lines export as SPEC events, fields named by --map; bad records to OUT.rejected.jsonl."""
    _import_own("jsonl", path, mapping, out, epoch, rules)


@import_app.command("csv")
def import_csv(path: OwnArg, mapping: MapOpt, out: OutOpt, epoch: EpochOpt = "ms", rules: RulesOpt = None) -> None:
    """Your own CSV export (a header row) as SPEC events, fields named by --map; bad rows to OUT.rejected.jsonl."""
    _import_own("csv", path, mapping, out, epoch, rules)


@import_app.command("parquet")
def import_parquet(path: OwnArg, mapping: MapOpt, out: OutOpt, epoch: EpochOpt = "ms", rules: RulesOpt = None) -> None:
    """Your own Parquet export as SPEC events, fields named by --map; bad records to OUT.rejected.jsonl."""
    _import_own("parquet", path, mapping, out, epoch, rules)


def _start_ms(text: str | None) -> int:
    if text is None:
        return DEFAULT_START_MS
    if text.isdigit():
        return int(text)
    try:
        return parse_rfc3339_ms(text)
    except TimestampError as exc:
        raise UsageError(f"--start: {exc}") from None


def workload(
    kind: Annotated[str, typer.Argument(metavar="KIND", help="clickstream or risk")],
    out: Annotated[
        Path, typer.Option("--out", help="events file to write (JSON Lines, arrival order)", callback=writable_file)
    ],
    users: Annotated[int, typer.Option("--users", help="number of users")] = 1000,
    minutes: Annotated[int, typer.Option("--minutes", help="length of the workload in event time")] = 60,
    seed: Annotated[int, typer.Option("--seed", help="random seed (same seed, same file)")] = 1,
    start: Annotated[str | None, typer.Option("--start", help="first event time: RFC 3339 or epoch ms")] = None,
    rate: Annotated[
        float,
        typer.Option(
            "--events-per-user-per-minute",
            help="size knob (100K users x 60 min ~ 1M events)",
            show_default="1/6, i.e. 10 per hour",
        ),
    ] = DEFAULT_RATE,
    late_share: Annotated[float, typer.Option("--late-share", help="share of events that arrive late")] = 0.05,
    dup_share: Annotated[float, typer.Option("--dup-share", help="share of events delivered twice")] = 0.01,
    malformed: Annotated[
        float, typer.Option("--malformed", help="share of malformed lines (at least 4 when above 0)")
    ] = 0.0002,
    time_format: Annotated[str, typer.Option("--time-format", help="ms (epoch ms, default) or rfc3339")] = "ms",
    fault: Annotated[
        str | None, typer.Option("--fault", help="plant a fault (segments.faults): " + "|".join(FAULTS))
    ] = None,
) -> None:
    """Generate a seeded clickstream or risk workload (SPEC §1 lines in arrival order)."""
    if kind not in WORKLOADS:
        raise UsageError(f"unknown workload {kind!r}: choose one of {', '.join(WORKLOADS)}")
    if fault is not None and fault not in FAULTS:
        raise UsageError(f"unknown fault {fault!r}: choose one of {', '.join(FAULTS)}")
    writer = write_workload if fault is None else partial(write_faulty_workload, fault)
    try:
        counts = writer(
            kind,
            out,
            users,
            minutes,
            seed,
            start_ms=_start_ms(start),
            events_per_user_per_minute=rate,
            late_share=late_share,
            dup_share=dup_share,
            malformed=malformed,
            time_format=time_format,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    extra = f", {counts['fraud_txns']} fraud txns" if kind == "risk" else ""
    typer.echo(
        f"workload {kind} (seed {seed}): {counts['lines']} lines -> {out}: {counts['events']} events of "
        f"{counts['users']} users, {counts['late']} late ({counts['late_over_1m']} by over a minute), "
        f"{counts['duplicates']} duplicate deliveries ({counts['changed_duplicates']} changed), "
        f"{counts['malformed']} malformed{extra}"
    )
    if fault is not None:
        typer.echo(f"fault {fault}: {counts['fault_lines_dropped']} lines dropped; how to run it: {out}.fault.json")


def _resolve(ref: str, database_url: str | None, data_dir: str | None) -> RuleSet:
    try:
        return load_ruleset(ref)
    except RuleSetError:
        path = Path(ref)
        if path.suffix in (".yaml", ".yml", ".json") or path.exists() or database_url is None:
            raise
    from segments.sqlstore import SqlStore
    from segshadow.cmd_legacy import resolve_rules

    with SqlStore.open(settings(database_url, None, data_dir).database_url) as store:
        return resolve_rules(ref, store)


@rules_app.command("show")
def rules_show(
    ref: Annotated[
        str, typer.Argument(metavar="REF", help="a shipped name (clickstream, risk, name@vN) or a YAML/JSON file")
    ],
    as_json: Annotated[bool, typer.Option("--json/--no-json", help="print one JSON object")] = False,
    database_url: DatabaseOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Validate a rule set and print its definition and digest (a stored version with --database-url)."""
    ruleset = _resolve(ref, database_url, data_dir)
    if as_json:
        typer.echo(json.dumps({"ref": ruleset.ref, "digest": ruleset.digest, "definition": ruleset.definition}))
        return
    typer.echo(f"# {ruleset.ref}  digest {ruleset.digest}")
    typer.echo(yaml.safe_dump(dict(ruleset.definition), sort_keys=False, allow_unicode=True).rstrip())


@rules_app.command("list")
def rules_list(
    stored: Annotated[
        bool, typer.Option("--stored/--no-stored", help="also list the versions stored in the database")
    ] = False,
    database_url: DatabaseOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """List the shipped rule sets (and, with --stored, the database's stored versions)."""
    for name in SHIPPED:
        ruleset = shipped_ruleset(name)
        typer.echo(
            f"{ruleset.ref:<18} shipped  {ruleset.digest[:12]}  segments: {', '.join(ruleset.segment_names)}"
        )
    if stored:
        from segments.sqlstore import SqlStore

        with SqlStore.open(settings(database_url, None, data_dir).database_url) as store:
            for row in store.stored_rulesets():
                typer.echo(f"{row.name + '@v' + str(row.version):<18} stored   {row.digest[:12]}")


def register(app: typer.Typer) -> None:
    """Add ``import``, ``workload`` and ``rules`` to the top-level app."""
    app.add_typer(import_app, name="import")
    app.command("workload")(workload)
    app.add_typer(rules_app, name="rules")
