"""``segshadow cutover ...``, ``segshadow gate check`` and ``segshadow serve``: the rollout's command line.

Exit codes: 0 done; 1 a gate did not pass (the refused advance, a failed check, a
watch that rolled back); 2 bad usage or input (one line); ``gate check`` exits 3
when the verdict is inconclusive (too little, too old or unusable evidence), so
CI pipelines and Argo Rollouts' Job metric provider can tell "not yet" from "no".
"""

from __future__ import annotations

import contextlib
import getpass
import json
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from rollout.cutover import (
    GatesFailed,
    advance,
    check_intent,
    choose_target,
    parse_position,
    plan_in_force,
    plan_step,
    position_gate,
    propose,
    rollback,
    set_plan,
    spell,
)
from rollout.evidence import VERIFY_MODES, load_evidence
from rollout.gates import EXIT_CODES, GateResult, evaluate, verdict
from rollout.plan import Plan, load_plan, text_digest
from rollout.stages import MEANINGS, ORDER, Position, Stage, needs_gates
from rollout.store import Decision, RolloutState, RolloutStore, verify_log
from segments.config import Settings
from segments.display import visible
from segments.errors import CheckFailed, InputError, SegshadowError, StoreUnavailable, UsageError, redact
from segments.sketches import DEFAULT_BLOOM_FPR
from segments.snapshot import ServingSnapshot
from segments.timeutil import format_ms, wall_clock_ms
from segshadow.common import (
    DatabaseOpt,
    DataDirOpt,
    RedisOpt,
    bloom_rate,
    duration,
    duration_between,
    listen_port,
    percentage,
    settings,
)

out = Console(highlight=False, soft_wrap=True)

EvidenceOpt = Annotated[
    str | None,
    typer.Option("--evidence", help="evidence directory (DIR/parity.json from `segshadow compare`)"),
]
PlanOpt = Annotated[
    str | None,
    typer.Option(
        "--plan",
        help="rollout plan: 'default' (clickstream), 'risk', or a YAML file; the first decision pins it, "
        "later it must be the plan in force (change it with `cutover plan set`)",
    ),
]
ExpectVersionOpt = Annotated[
    int | None, typer.Option("--expect-version", help="the version `cutover status` showed you")
]
ActorOpt = Annotated[str | None, typer.Option("--actor", help="who decides (default: the login name)")]


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@contextlib.contextmanager
def _store(conf: Settings) -> Iterator[RolloutStore]:
    store = RolloutStore.open(conf.database_url)
    try:
        yield store
    finally:
        store.close()


def _invalidate_cache(conf: Settings) -> None:
    """Drop the router's cached stage so servers see a decision at once (else within the cache TTL).

    An embedded Redis is private to this run, so there is nothing to drop; an
    unreachable one only delays the change by the TTL, so it is a warning.
    """
    if conf.redis_embedded:
        return
    from rollout.router import StageCache
    from segments.redisstore import connect

    try:
        client = connect(conf.redis_url, timeout_s=1.0, retries=1)
    except SegshadowError as exc:
        print(
            f"segshadow: warning: stage cache not cleared ({exc}); servers see the change within the TTL",
            file=sys.stderr,
        )
        return
    try:
        StageCache(None, client).invalidate()
    finally:
        client.close()


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def print_gates(
    results: Sequence[GateResult] | Sequence[dict[str, object]], title: str | None = None
) -> None:
    """Each gate on a line of its own, with its status, numbers and reason, on stdout (greppable)."""
    if title:
        out.print(title, markup=False)
    colours = {"pass": "green", "fail": "red", "inconclusive": "yellow"}
    for r in results:
        row = r.to_dict() if isinstance(r, GateResult) else r
        status = str(row["status"])
        numbers = f"observed {_fmt(row['observed'])}, threshold {_fmt(row['threshold'])}"
        colour = colours.get(status, "white")
        detail = escape(f"{row['name']!s:<20} {numbers}: {row['reason']}")
        out.print(f"  [{colour}]{status:<12}[/] {detail}")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _state_lines(state: RolloutState, now: int) -> list[str]:
    meaning = MEANINGS[state.position.stage]
    since = "never moved" if state.entered_at_ms is None else f"since {format_ms(state.entered_at_ms)}"
    return [
        f"stage: {state.position} (version {state.version}, {since})",
        f"  ingest: {meaning.ingest}; computes: {meaning.computes}; compared: {_yes(meaning.compared)}",
        f"  serves: {meaning.serves}{' (falls back to legacy)' if meaning.fallback else ''}",
    ]


def _decision_line(d: Decision) -> str:
    forced = " FORCED" if d.forced else ""
    weakened = " WEAKENED" if d.weakened else ""
    gates = f" gates {d.verdict}" if d.verdict else ""
    plan = f" plan sha256:{d.plan_digest[:12]}" if d.plan_digest else ""
    evidence = f" evidence {d.evidence_path} sha256:{d.evidence_sha256[:12]}" if d.evidence_sha256 else ""
    reason = f" — {visible(d.reason)}" if d.reason else ""
    notes = "".join(f" [{n}]" for n in d.notes)
    move = f"plan set at {d.source}" if d.action == "plan" else f"{d.action} {d.source} → {d.target}"
    head = f"#{d.id} {format_ms(d.at_ms)} {visible(d.actor)}: {move}"
    return f"{head}{forced}{weakened}{gates}{plan}{evidence}{reason}{notes}"


def _requested(plan: str | None) -> Plan | None:
    return load_plan(plan) if plan else None


@dataclass(frozen=True)
class RecordedRun:
    """What ``serve --run DIR`` serves: the run's directory, store, plan and serving snapshot."""

    directory: str
    database_url: str | None
    plan: str
    snapshot: ServingSnapshot

    def load(self, client: Any) -> list[str]:
        """Load the run's serving data into ``client``; returns what to tell the user, with a page to open
        per segment legacy serves (the side that serves before canary; ``{base}`` stands for the site)."""
        from pathlib import Path
        from urllib.parse import quote

        from segments.outputs import read_assignments
        from segments.redisstore import RedisStore
        from segments.snapshot import last_busy_as_of, load_serving

        load_serving(client, self.snapshot)
        store = RedisStore(client, clock=lambda: self.snapshot.saved_at)
        lines = [f"recorded run {self.directory}, segments as saved at {format_ms(self.snapshot.saved_at)}"]
        legacy = dict(store.scan_side("legacy"))
        legacy_file = Path(self.directory) / "legacy.jsonl"
        if not any(s.segments for s in legacy.values()) and legacy_file.is_file():
            busy = last_busy_as_of(read_assignments(legacy_file))
            if busy is not None:
                as_of, rows = busy
                store.clear_side("legacy")
                store.write_legacy(as_of, [(a.user_id, frozenset(a.segments)) for a in rows])
                legacy = dict(store.scan_side("legacy"))
                lines.append(
                    f"legacy's last as-of left every set empty (the traffic had ended): serving its last as-of "
                    f"with segments, {format_ms(as_of)}"
                )
        for segment in ("high_value", "window_shopper", "risk_high", "risk_medium"):
            users = sorted(u for u, s in legacy.items() if segment in s.segments)
            if users:
                page = "account" if segment.startswith("risk") else ""
                lines.append(f"  {segment}: {{base}}/{page}?user={quote(users[0], safe='')}")
        return lines


def _recorded_run(directory: str, redis_url: str | None) -> RecordedRun:
    """Read a run directory for ``serve --run``; ``UsageError``/``InputError`` when it cannot be served."""
    from pathlib import Path

    from segments.config import sqlite_url
    from segments.snapshot import FILENAME, read_serving

    if redis_url:
        raise UsageError("--run serves from its own embedded Valkey: drop --redis-url")
    where = Path(directory)
    if not (where / FILENAME).is_file():
        raise InputError(f"no {FILENAME}: not a finished run (segshadow shadow run --out {directory})", directory)
    snapshot = read_serving(where / FILENAME)
    db = where / "segshadow.db"
    plan = "default"
    with contextlib.suppress(OSError, ValueError, AttributeError):
        ruleset = json.loads((where / "parity.json").read_text(encoding="utf-8")).get("ruleset", "")
        plan = "risk" if str(ruleset).startswith("risk") else "default"
    return RecordedRun(directory, sqlite_url(db.resolve()) if db.is_file() else None, plan, snapshot)


def register(app: typer.Typer) -> None:
    """Add ``cutover``, ``gate`` and ``serve``."""
    cutover = typer.Typer(
        help="Walk the cutover through its stages, gated on evidence.", no_args_is_help=True
    )
    plan_app = typer.Typer(help="The plan in force: show it, or change it (a recorded decision).", no_args_is_help=True)
    gate = typer.Typer(
        help="Evaluate a rollout plan's gates on evidence (for CI and Argo Rollouts).", no_args_is_help=True
    )
    app.add_typer(cutover, name="cutover")
    cutover.add_typer(plan_app, name="plan")
    app.add_typer(gate, name="gate")

    @cutover.command("status")
    def status(
        evidence: EvidenceOpt = None,
        plan: PlanOpt = None,
        as_json: Annotated[bool, typer.Option("--json/--no-json", help="print JSON")] = False,
        database_url: DatabaseOpt = None,
        redis_url: RedisOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """The store, stage and version, the plan in force, the last decision, and (with --evidence) the next gates."""
        conf = settings(database_url, redis_url, data_dir)
        requested = _requested(plan)
        with _store(conf) as store:
            state = store.state()
            now = store.clock()
            last = store.history(limit=1)
            in_force = plan_in_force(store, state, requested)
            results: tuple[GateResult, ...] = ()
            target: Position | None = None
            following: Position | None = None
            if state.position.stage is not Stage.COMPLETE:
                following = plan_step(in_force.plan, state.position)
            if evidence is not None and needs_gates(state.position) and following is not None:
                proposal = propose(in_force.plan, state, load_evidence(evidence), now)
                results, target = proposal.results, proposal.target
            url = store.url
        the_plan = in_force.plan
        if as_json:
            doc = {
                "store": redact(url),
                "stage": state.position.stage.value,
                "percent": state.position.percent,
                "version": state.version,
                "entered_at": format_ms(state.entered_at_ms) if state.entered_at_ms is not None else None,
                "plan": {
                    "name": the_plan.name,
                    "digest": the_plan.digest,
                    "pinned": not in_force.installs,
                    "weakened": in_force.weakened,
                    "weakenings": list(in_force.weakenings),
                },
                "last_decision": last[0].to_dict() if last else None,
                "next": str(following) if following else None,
                "gates": [r.to_dict() for r in results],
                "verdict": verdict(results) if results else None,
            }
            typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
            return
        out.print(f"store: {redact(url)}", markup=False)
        for line in _state_lines(state, now):
            out.print(line)
        mark = " WEAKENED" if in_force.weakened else ""
        pinned = "in force" if not in_force.installs else "not pinned yet: the first advance pins"
        out.print(f"plan: {the_plan.label} ({pinned}){mark}", markup=False)
        if last:
            out.print("last decision: " + _decision_line(last[0]), markup=False)
        if following is not None:
            bound = (
                f"--expect-version {state.version} --evidence DIR"
                if needs_gates(state.position)
                else f"--from {spell(state.position)}"
            )
            out.print(f"next step: {following} (segshadow cutover advance {bound})", markup=False)
        if target is not None:
            print_gates(results, f"gates to advance to {target}: {verdict(results)}")

    @cutover.command("advance")
    def advance_cmd(
        to: Annotated[str | None, typer.Option("--to", help=f"target stage ({', '.join(ORDER)})")] = None,
        percent: Annotated[
            float | None,
            typer.Option("--percent", help="canary percentage (above 0, at most 100)", callback=percentage),
        ] = None,
        source: Annotated[
            str | None,
            typer.Option("--from", help="where you advance from, as status shows it: STAGE or canary:PERCENT"),
        ] = None,
        expect_version: ExpectVersionOpt = None,
        evidence: EvidenceOpt = None,
        plan: PlanOpt = None,
        actor: ActorOpt = None,
        force: Annotated[
            bool, typer.Option("--force/--no-force", help="advance when gates do not pass, or off the plan's steps")
        ] = False,
        reason: Annotated[
            str | None, typer.Option("--reason", help="why (required with --force or a weakened first plan)")
        ] = None,
        database_url: DatabaseOpt = None,
        redis_url: RedisOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Advance to the plan's next step; past shadow every gate must pass on fresh, unused evidence, else exit 1.

        ``--from``/``--expect-version`` make the move conditional on what you saw (a
        conflict exits 2); moves without evidence need one of them. ``--force --reason
        TEXT`` overrides failing gates or leaves the plan; the decision is recorded as forced.
        """
        conf = settings(database_url, redis_url, data_dir)
        found = load_evidence(evidence) if evidence is not None else None
        requested = _requested(plan)
        start = parse_position(source) if source is not None else None
        with _store(conf) as store:
            try:
                decision, proposal = advance(
                    store,
                    requested,
                    found,
                    actor=_actor(actor),
                    to=to,
                    percent=percent,
                    force=force,
                    reason=reason,
                    source=start,
                    expected_version=expect_version,
                )
            except GatesFailed as exc:
                print_gates(exc.results, f"gates to advance to {exc.target}: {verdict(exc.results)}")
                raise
            except StoreUnavailable as exc:
                raise SegshadowError(
                    f"{exc}; the move was not recorded (unless the commit itself was cut off: "
                    "`segshadow cutover status` tells)"
                ) from None
        _invalidate_cache(conf)
        if proposal.results:
            print_gates(proposal.results, f"gates to advance to {proposal.target}: {proposal.verdict}")
        marks = "".join(
            [", FORCED" if decision.forced else "", ", WEAKENED plan" if decision.weakened else ""]
        )
        out.print(
            f"advanced {decision.source} → {decision.target} "
            f"(decision #{decision.id}, version {decision.id}{marks}, plan sha256:{str(decision.plan_digest)[:12]})"
        )

    @cutover.command("rollback")
    def rollback_cmd(
        reason: Annotated[str, typer.Option("--reason", help="why (recorded)")],
        actor: ActorOpt = None,
        evidence: EvidenceOpt = None,
        expect_version: ExpectVersionOpt = None,
        database_url: DatabaseOpt = None,
        redis_url: RedisOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Roll back to shadow from canary or live, recording who and why."""
        conf = settings(database_url, redis_url, data_dir)
        found = load_evidence(evidence) if evidence is not None else None
        with _store(conf) as store:
            state = store.state()
            check_intent(state, None, expect_version)
            decision = rollback(store, actor=_actor(actor), reason=reason, evidence=found, expected=state)
        _invalidate_cache(conf)
        out.print(f"rolled back {decision.source} → {decision.target} (decision #{decision.id})")

    @cutover.command("history")
    def history(
        as_json: Annotated[bool, typer.Option("--json/--no-json", help="print JSON Lines, one decision each")] = False,
        gates: Annotated[bool, typer.Option("--gates/--no-gates", help="show each decision's gate results")] = False,
        verify: Annotated[
            bool,
            typer.Option(
                "--verify/--no-verify", help="also re-check every plan text and every recorded evidence still on disk"
            ),
        ] = False,
        database_url: DatabaseOpt = None,
        redis_url: RedisOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """The decision log, oldest first; checks its hash chain leads to the state row (exit 1 when not)."""
        conf = settings(database_url, redis_url, data_dir)
        with _store(conf) as store:
            decisions = store.history()
            state = store.state()
            problems = [str(p) for p in verify_log(decisions, state)]
            checked = 0
            if verify:
                for digest in dict.fromkeys(d.plan_digest for d in decisions if d.plan_digest):
                    text = store.plan_text(digest)
                    first = next(d.id for d in decisions if d.plan_digest == digest)
                    if text is None:
                        problems.append(f"decision #{first}: the text of plan sha256:{digest[:12]} is missing")
                    elif text_digest(text) != digest:
                        problems.append(f"decision #{first}: the stored text of plan sha256:{digest[:12]} was edited")
                for d in decisions:
                    if not d.evidence_path or not d.evidence_sha256 or not Path(d.evidence_path).exists():
                        continue
                    try:
                        now = load_evidence(d.evidence_path)
                    except SegshadowError as exc:
                        problems.append(f"decision #{d.id}: evidence {d.evidence_path} does not verify: {exc}")
                        continue
                    checked += 1
                    seal = now.data.get("evidence_seal") or {}
                    if seal.get("status") != "pass":
                        problems.append(
                            f"decision #{d.id}: evidence {d.evidence_path} no longer matches its seal: "
                            f"{seal.get('reason', 'no seal')}"
                        )
                    elif now.sha256 != d.evidence_sha256:
                        problems.append(
                            f"decision #{d.id}: evidence {d.evidence_path} is sha256:{now.sha256[:12]} now, "
                            f"sha256:{d.evidence_sha256[:12]} when recorded"
                        )
        if as_json:
            for d in decisions:
                typer.echo(json.dumps(d.to_dict(), ensure_ascii=False))
        else:
            if not decisions:
                out.print("no decisions yet: the rollout is at off")
            for d in decisions:
                out.print(_decision_line(d), markup=False)
                if gates and d.gates:
                    print_gates(d.gates)
            for problem in problems:
                out.print(f"problem: {problem}", markup=False)
            if not problems:
                tail = f"; {checked} evidence files re-checked" if verify else ""
                out.print(
                    f"log verified: {len(decisions)} decisions chain to the state row (version {state.version}){tail}"
                )
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CheckFailed(f"the decision log does not verify: {problems[0]}{more}")

    @plan_app.command("set")
    def plan_set(
        file: Annotated[str, typer.Argument(metavar="FILE", help="the plan: 'default', 'risk', or a YAML file")],
        reason: Annotated[str | None, typer.Option("--reason", help="why (required; recorded)")] = None,
        actor: ActorOpt = None,
        expect_version: ExpectVersionOpt = None,
        database_url: DatabaseOpt = None,
        redis_url: RedisOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Put another plan in force, as a recorded decision; a plan that relaxes a gate is marked weakened."""
        conf = settings(database_url, redis_url, data_dir)
        new = load_plan(file)
        with _store(conf) as store:
            decision, relaxed = set_plan(
                store, new, actor=_actor(actor), reason=reason, expected_version=expect_version
            )
        for item in relaxed:
            out.print(f"  weakens: {item}", markup=False)
        out.print(
            f"plan {new.label} in force from decision #{decision.id}{' (WEAKENED)' if decision.weakened else ''}"
        )

    @plan_app.command("show")
    def plan_show(
        database_url: DatabaseOpt = None,
        redis_url: RedisOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Print the plan in force: its digest, then its full text as it was pinned."""
        conf = settings(database_url, redis_url, data_dir)
        with _store(conf) as store:
            in_force = plan_in_force(store, store.state(), None)
        state = "in force" if not in_force.installs else "not pinned yet: the first advance pins it"
        out.print(f"# plan {in_force.plan.label} ({state}){' WEAKENED' if in_force.weakened else ''}")
        typer.echo(in_force.plan.text.rstrip("\n"))

    @cutover.command("watch")
    def watch_cmd(
        evidence: Annotated[str, typer.Option("--evidence", help="evidence directory, re-read every tick")],
        plan: PlanOpt = None,
        interval: Annotated[
            str,
            typer.Option("--interval", help="time between ticks (10ms-1d)", callback=duration_between("10ms", "1d")),
        ] = "30s",
        iterations: Annotated[
            int, typer.Option("--iterations", help="ticks to run; 0 runs until interrupted", min=0)
        ] = 0,
        database_url: DatabaseOpt = None,
        redis_url: RedisOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """During canary and live, re-evaluate the gates; on a failed gate roll back to shadow (exit 1)."""
        from rollout.watch import Tick, watch

        conf = settings(database_url, redis_url, data_dir)
        requested = _requested(plan)
        every_s = duration(interval) / 1000
        rolled_back: list[Tick] = []

        def show(tick: Tick) -> None:
            out.print(f"{format_ms(tick.at_ms)} {tick.position}: {tick.action}: {tick.reason}", markup=False)
            if tick.action == "rolled_back":
                rolled_back.append(tick)
                print_gates(tick.results)
                _invalidate_cache(conf)

        with _store(conf) as store:
            the_plan = plan_in_force(store, store.state(), requested).plan
            watch(
                store,
                the_plan,
                lambda: load_evidence(evidence),
                iterations=iterations or None,
                interval_s=every_s,
                on_tick=show,
            )
        if rolled_back:
            raise CheckFailed(f"rolled back to shadow: {rolled_back[-1].reason}")

    @gate.command("check")
    def check(
        evidence: Annotated[str, typer.Option("--evidence", help="evidence directory (DIR/parity.json)")],
        plan: PlanOpt = None,
        to: Annotated[
            str | None, typer.Option("--to", help="the promotion to check (default: the next one)")
        ] = None,
        percent: Annotated[
            float | None,
            typer.Option("--percent", help="canary percentage of that promotion", callback=percentage),
        ] = None,
        verify: Annotated[
            str, typer.Option("--verify", help="counts (re-derive from the artifacts) or full (recompute)")
        ] = "counts",
        database_url: DatabaseOpt = None,
        redis_url: RedisOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Exit 0 when every gate passes, 1 when one fails, 3 when inconclusive; prints every gate's numbers.

        The plan is the one in force (``--plan`` must be it once the rollout has one).
        The promotion checked is the next one from the rollout's current state (the
        plan's first canary before shadow), with the gates of every step it enters or
        skips; time in stage is taken from the store and not checked while the rollout
        has not reached shadow. Evidence generated before the current position began is
        inconclusive, evidence that already admitted a move fails.
        """
        conf = settings(database_url, redis_url, data_dir)
        requested = _requested(plan)
        if verify not in VERIFY_MODES:
            raise UsageError(f"--verify must be counts or full, not {verify!r}")
        found = load_evidence(evidence, verify)
        with _store(conf) as store:
            state = store.state()
            now = store.clock()
            the_plan = plan_in_force(store, state, requested).plan
            used = store.evidence_use(found.sha256)
        extra: list[GateResult] = []
        if needs_gates(state.position):
            current = state.position
            in_stage = state.in_stage_ms(now)
            timed = True
            extra.append(position_gate(state, found))
        else:
            current = Position.at(Stage.SHADOW)
            in_stage, timed = None, False
        target = choose_target(the_plan, current, to, percent)
        if used is not None:
            extra.append(
                GateResult("evidence_unused", "fail", found.sha256[:12], None, f"already admitted decision #{used}")
            )
        results = (
            *evaluate(
                the_plan,
                the_plan.gates_for_move(current, target),
                found.data,
                now,
                in_stage,
                time_in_stage=timed,
            ),
            *extra,
        )
        outcome = verdict(results)
        print_gates(results, f"gates of plan {the_plan.label} to enter {target}, evidence {found.path}")
        if not timed:
            out.print(
                f"min_time_in_stage not checked: the rollout is at {state.position}, before the gated stages"
            )
        out.print(f"verdict: {outcome}")
        raise typer.Exit(EXIT_CODES[outcome])

    @app.command("serve")
    def serve(
        host: Annotated[
            str, typer.Option("--host", help="address to listen on (keep 127.0.0.1 unless you mean to expose the site)")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", help="TCP port (1-65535, free)", callback=listen_port)] = 8000,
        evidence: EvidenceOpt = None,
        plan: Annotated[
            str | None, typer.Option("--plan", help="plan whose gates the dashboard shows")
        ] = None,
        ruleset: Annotated[
            str | None,
            typer.Option("--legacy-ruleset", help="rule set ref (name@vN) of the SQL legacy fallback"),
        ] = None,
        stream_stale_after: Annotated[
            str,
            typer.Option(
                "--stream-stale-after",
                help="stream heartbeat age that counts as stale (1ms-1d)",
                callback=duration_between("1ms", "1d"),
            ),
        ] = "5s",
        run: Annotated[
            str | None,
            typer.Option(
                "--run",
                help="serve a finished shadow run (its directory): its segments in a fresh embedded Valkey, "
                "its rollout store and its evidence; no server needed",
            ),
        ] = None,
        serve_from_bloom: Annotated[
            bool,
            typer.Option(
                "--serve-from-bloom/--serve-exact",
                help="answer /api/member from each segment's Bloom filter of the stream's current members "
                "(no serving-store read per request; false positives near --bloom-fpr, measured on each rebuild "
                "and shown in /segments/NAME/bloom.json) instead of the exact set the rollout serves "
                "(--serve-exact, the default)",
            ),
        ] = False,
        bloom_fpr: Annotated[
            float,
            typer.Option(
                "--bloom-fpr",
                help="target false-positive rate of the Bloom filters (0.000001-0.5)",
                callback=bloom_rate,
            ),
        ] = DEFAULT_BLOOM_FPR,
        database_url: DatabaseOpt = None,
        redis_url: RedisOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Serve the mock shop, its account page, the cutover dashboard and /metrics.

        ``--serve-from-bloom`` answers membership (``/api/member``) from the per-segment Bloom
        filters the site also exports at ``/segments/NAME/bloom``, rebuilt from the serving store
        every minute and after each published change batch, at the ``--bloom-fpr`` target.

        ``--run DIR`` shows a finished ``shadow run --out DIR``: the segments it saved in
        ``DIR/serving.jsonl``, loaded into a fresh embedded Valkey (never into a configured
        Redis), the run's SQLite store ``DIR/segshadow.db`` when there is one, and ``DIR`` as
        the evidence. Staleness is judged at the moment the run saved its segments.
        """
        import uvicorn

        from homepage.app import create_app
        from homepage.bloom import BloomCache
        from rollout.router import LegacySqlReader, Router, StageCache, serving_client
        from segments.embedded import redis_endpoint
        from segments.reachstore import ReachStore
        from segments.redisstore import RedisStore

        recorded = _recorded_run(run, redis_url) if run is not None else None
        if recorded is not None:
            database_url = database_url or recorded.database_url
            evidence = evidence or recorded.directory
            plan = plan or recorded.plan
        conf = settings(database_url, redis_url, data_dir)
        the_plan = load_plan(plan) if plan else None
        stale_ms = duration(stream_stale_after)
        # uvicorn re-raises SIGTERM after its graceful shutdown; exiting through Python instead lets the
        # context managers below stop an embedded Valkey rather than leave it running.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with _store(conf) as store, redis_endpoint("embedded" if recorded else conf.redis_url) as url:
            client = serving_client(url)
            stages = StageCache(store, client)
            clock = wall_clock_ms
            notes: list[str] = []
            if recorded is not None:
                notes = recorded.load(client)
                saved_at = recorded.snapshot.saved_at
                clock = lambda: saved_at  # noqa: E731  (a recorded run is judged as of its save)
            serving = RedisStore(client)
            router = Router(
                stages,
                serving,
                LegacySqlReader(store.engine, ruleset),
                clock=clock,
                stream_stale_after_ms=stale_ms,
            )
            # Each rebuild also carries the stream's current members into the reach of the minute it runs in
            # (segments.reachstore: the holders at a minute's start); not for a recorded run, whose clock stands.
            reach = None if recorded is not None else ReachStore(client, prefix=serving.prefix)
            blooms = BloomCache(serving, (), target_fpr=bloom_fpr, clock=clock, reach=reach)
            site = create_app(router, evidence, plan=the_plan, blooms=blooms, serve_from_bloom=serve_from_bloom)
            print(
                f"segshadow: serving on http://{host}:{port}/ (dashboard /dashboard, metrics /metrics)",
                file=sys.stderr,
            )
            for line in notes:
                print(f"segshadow: {line.replace('{base}', f'http://{host}:{port}')}", file=sys.stderr)
            blooms.start()  # rebuilt in the background: no request waits for a scan of the serving store
            try:
                uvicorn.run(site, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
            finally:
                blooms.stop()
