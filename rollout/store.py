"""Durable rollout state, the plan in force, and the hash-chained decision log, in the SQL store.

Four tables on this module's own ``metadata``:

- ``segshadow_rollout_state``: one row (id 1): the stage, the percentage, when the
  rollout entered that position, a ``version`` counter that every decision bumps,
  the digest of the plan in force (and whether it was installed as a weakening), and
  ``head``, the hash of the last decision row.
- ``segshadow_rollout_decisions``: one row per decision, never updated or deleted:
  who (a person or ``auto``), when, the action (``advance``, ``rollback``, or
  ``plan``: a change of the plan in force, which does not move the rollout), from
  where to where, the gate results (JSON), the evidence and its SHA-256, the reason,
  whether it was forced, the plan digest it was judged under and whether that plan is
  weakened, notes (JSON list: what was skipped or relaxed), and the hash chain:
  ``prev_hash`` (the row before; 64 zeros for the first) and ``row_hash``, the SHA-256
  of the row's canonical content (``Decision.content_hash``). Its id is the state
  version the decision produced, so the log is gap-free and ordered the same on every backend.
- ``segshadow_rollout_plans``: every plan ever in force, by digest, with its full text.
- ``segshadow_rollout_evidence``: the SHA-256 of every evidence that admitted a move,
  with that decision's id: one evidence admits one move.

Guarantees, on SQLite, PostgreSQL and CockroachDB:

- **Optimistic concurrency.** A change names the version it was decided on; the
  update is ``... WHERE version = :expected``. When another writer got there first,
  nothing is written and ``ConflictError`` says what the state is now.
- **Atomic.** The state update, its decision row, a new plan's text and the evidence
  it uses are one transaction (``segments.db.run_transaction``, which retries on
  CockroachDB): a store that goes down mid-way leaves none of them.
- **Replayable and self-proving.** ``replay(history())`` rebuilds the state row from
  the log alone; ``verify_log`` recomputes the chain and names the first row that was
  edited, deleted, inserted or moved, and checks that the chain ends at the state's ``head``.
- **Upgrades in place.** A store made by the previous version (no plan, no chain) gets
  the new columns and tables when opened (``create``), and its existing rows are chained
  as they are then; an edit made before that upgrade cannot be detected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from rollout.stages import START, Position, Stage
from segments.db import make_engine, run_transaction
from segments.errors import ConflictError, InputError, StoreUnavailable, UsageError
from segments.timeutil import Clock, format_ms, wall_clock_ms

Action = Literal["advance", "rollback", "plan"]
AUTO = "auto"
GENESIS = "0" * 64
"""The ``prev_hash`` of the first decision."""
_STATE_ID = 1

metadata = sa.MetaData()

state_table = sa.Table(
    "segshadow_rollout_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("percent", sa.Float, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("entered_at", sa.BigInteger, nullable=True),
    sa.Column("plan_digest", sa.String(64), nullable=True),
    sa.Column("plan_weakened", sa.Boolean, nullable=True),
    sa.Column("head", sa.String(64), nullable=True),
)

decisions_table = sa.Table(
    "segshadow_rollout_decisions",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("from_stage", sa.String(16), nullable=False),
    sa.Column("from_percent", sa.Float, nullable=False),
    sa.Column("to_stage", sa.String(16), nullable=False),
    sa.Column("to_percent", sa.Float, nullable=False),
    sa.Column("gates", sa.Text, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=True),
    sa.Column("evidence_path", sa.Text, nullable=True),
    sa.Column("evidence_sha256", sa.String(64), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("forced", sa.Boolean, nullable=False),
    sa.Column("plan_digest", sa.String(64), nullable=True),
    sa.Column("weakened", sa.Boolean, nullable=True),
    sa.Column("notes", sa.Text, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=True),
    sa.Column("row_hash", sa.String(64), nullable=True),
)

plans_table = sa.Table(
    "segshadow_rollout_plans",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("decision_id", sa.BigInteger, nullable=False),
)

evidence_table = sa.Table(
    "segshadow_rollout_evidence",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("decision_id", sa.BigInteger, nullable=False),
)


@dataclass(frozen=True)
class RolloutState:
    """Where the rollout is: its position, the version counter, since when (None: never moved),
    the plan in force (None before the first decision pins one), whether that plan was
    installed as a weakening, and ``head``, the hash of the last decision."""

    position: Position
    version: int
    entered_at_ms: int | None
    plan_digest: str | None = None
    plan_weakened: bool = False
    head: str = GENESIS

    def in_stage_ms(self, now_ms: int) -> int | None:
        return None if self.entered_at_ms is None else now_ms - self.entered_at_ms


INITIAL = RolloutState(START, 0, None)


@dataclass(frozen=True)
class PlanText:
    """A plan to install with a decision: its digest, the name it declares, its full text."""

    digest: str
    name: str
    text: str


@dataclass(frozen=True)
class Draft:
    """A decision about to be recorded (the store adds its id, time and hashes).

    ``plan_digest`` is the plan the decision was judged under; ``install`` carries that
    plan's text when this decision puts it in force (the first decision, or ``plan``).
    ``uses_evidence``: the evidence admitted this move, so it may admit no other.
    """

    actor: str
    action: Action
    source: Position
    target: Position
    gates: tuple[dict[str, Any], ...] = ()
    verdict: str | None = None
    evidence_path: str | None = None
    evidence_sha256: str | None = None
    reason: str | None = None
    forced: bool = False
    plan_digest: str | None = None
    weakened: bool = False
    notes: tuple[str, ...] = ()
    install: PlanText | None = None
    uses_evidence: bool = False


@dataclass(frozen=True)
class Decision:
    """A recorded decision; ``id`` is the state version it produced."""

    id: int
    at_ms: int
    actor: str
    action: Action
    source: Position
    target: Position
    gates: tuple[dict[str, Any], ...] = field(repr=False)
    verdict: str | None
    evidence_path: str | None
    evidence_sha256: str | None
    reason: str | None
    forced: bool
    plan_digest: str | None = None
    weakened: bool = False
    notes: tuple[str, ...] = ()
    prev_hash: str | None = None
    row_hash: str | None = None

    def content(self) -> dict[str, Any]:
        """What the row hash covers: every field but ``row_hash`` itself, ``prev_hash`` included."""
        return {
            "id": self.id,
            "at": self.at_ms,
            "actor": self.actor,
            "action": self.action,
            "from": [self.source.stage.value, self.source.percent],
            "to": [self.target.stage.value, self.target.percent],
            "gates": list(self.gates),
            "verdict": self.verdict,
            "evidence": [self.evidence_path, self.evidence_sha256],
            "reason": self.reason,
            "forced": self.forced,
            "plan": self.plan_digest,
            "weakened": self.weakened,
            "notes": list(self.notes),
            "prev": self.prev_hash,
        }

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of ``content()`` (sorted keys, no spaces, UTF-8)."""
        text = json.dumps(
            self.content(), sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": format_ms(self.at_ms),
            "actor": self.actor,
            "action": self.action,
            "from": {"stage": self.source.stage.value, "percent": self.source.percent},
            "to": {"stage": self.target.stage.value, "percent": self.target.percent},
            "gates": list(self.gates),
            "verdict": self.verdict,
            "evidence": {"path": self.evidence_path, "sha256": self.evidence_sha256},
            "reason": self.reason,
            "forced": self.forced,
            "plan_digest": self.plan_digest,
            "weakened": self.weakened,
            "notes": list(self.notes),
            "prev_hash": self.prev_hash,
            "row_hash": self.row_hash,
        }


def replay(decisions: Iterable[Decision]) -> RolloutState:
    """The state the log leads to, from ``off`` at version 0.

    Raises ``InputError`` when the log is not a chain (an id out of sequence, or a
    decision that starts somewhere the previous one did not end). A ``plan`` decision
    changes the plan in force, not the position or its start time; so does a decision
    judged under another plan than the one before (the first, which pins the plan).
    """
    state = INITIAL
    for d in decisions:
        if d.id != state.version + 1:
            raise InputError(f"decision log: id {d.id} follows version {state.version}")
        if d.source != state.position:
            raise InputError(f"decision log: decision {d.id} starts at {d.source}, not at {state.position}")
        entered = state.entered_at_ms if d.action == "plan" else d.at_ms
        installs = d.plan_digest is not None and (d.action == "plan" or d.plan_digest != state.plan_digest)
        state = RolloutState(
            d.target,
            d.id,
            entered,
            d.plan_digest if installs else state.plan_digest,
            d.weakened if installs else state.plan_weakened,
            d.row_hash or GENESIS,
        )
    return state


@dataclass(frozen=True)
class Problem:
    """One way the log fails to prove itself: the decision id it concerns and what is wrong."""

    id: int
    message: str

    def __str__(self) -> str:
        return f"decision #{self.id}: {self.message}"


def verify_log(decisions: Sequence[Decision], state: RolloutState) -> tuple[Problem, ...]:
    """Recompute the hash chain of ``decisions`` (in id order) and check it leads to ``state``.

    Reports, each with the id concerned: a row whose content does not hash to its
    ``row_hash`` (edited, or moved from another place), a row whose ``prev_hash`` is not
    the hash of the row before (one deleted, inserted or reordered), a missing id, and
    a chain that does not end at the state row's version and ``head`` (the last rows
    deleted, or the state row edited). Empty when the log proves itself.
    """
    problems: list[Problem] = []
    prev, expected = GENESIS, 1
    for d in decisions:
        if d.id > expected:
            missing = f"#{expected}" if d.id == expected + 1 else f"#{expected}..#{d.id - 1}"
            jump = f"the log jumps from #{expected - 1} to #{d.id}"
            problems.append(Problem(expected, f"missing: {jump} ({missing} deleted)"))
        if d.row_hash is None:
            problems.append(Problem(d.id, "has no hash: the row was written or altered outside segshadow"))
        elif d.content_hash() != d.row_hash:
            problems.append(
                Problem(d.id, f"edited: its content hashes to {d.content_hash()[:12]}, the row says {d.row_hash[:12]}")
            )
        if d.prev_hash != prev:
            problems.append(
                Problem(
                    d.id,
                    f"out of chain: it follows {str(d.prev_hash)[:12]}, the row before it hashes to {prev[:12]} "
                    "(a row deleted, inserted or reordered)",
                )
            )
        prev, expected = d.row_hash or "", d.id + 1
    last = decisions[-1].id if decisions else 0
    if state.version != last or (last and state.head != prev):
        problems.append(
            Problem(
                max(state.version, last),
                f"the log ends at #{last} (hash {prev[:12]}), the state row is at version {state.version} "
                f"(head {state.head[:12]})",
            )
        )
    if not problems:
        try:
            replayed = replay(decisions)
        except InputError as exc:
            problems.append(Problem(last, str(exc)))
        else:
            if (replayed.position, replayed.plan_digest) != (state.position, state.plan_digest):
                problems.append(
                    Problem(
                        last,
                        f"the log leads to {replayed.position} under plan {str(replayed.plan_digest)[:12]}, "
                        f"the state row says {state.position} under {str(state.plan_digest)[:12]}",
                    )
                )
    return tuple(problems)


def _check_text(name: str, value: str | None) -> None:
    if value is None:
        return
    if "\x00" in value:
        raise UsageError(f"{name} may not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{name} is not valid Unicode text") from None


class EvidenceReused(ConflictError):
    """Evidence that already admitted a move, offered for another one (exit 2: decide on new evidence)."""

    def __init__(self, sha256: str, decision_id: int) -> None:
        super().__init__(
            f"evidence sha256:{sha256[:12]} already admitted decision #{decision_id}: one evidence admits "
            "one move; collect new evidence at the current position"
        )
        self.sha256 = sha256
        self.decision_id = decision_id


class RolloutStore:
    """The rollout's durable state and decision log over a SQLAlchemy engine.

    ``RolloutStore.open(url)`` connects (``StoreUnavailable`` if it cannot) and creates
    the tables when missing, upgrading a store of the previous version in place.
    ``clock`` stamps decisions. Every method raises ``StoreUnavailable`` when the
    database cannot be reached.
    """

    def __init__(self, engine: Engine, clock: Clock = wall_clock_ms, url: str | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.url = url or engine.url.render_as_string(hide_password=True)

    @classmethod
    def open(cls, url: str, clock: Clock = wall_clock_ms, create: bool = True) -> RolloutStore:
        store = cls(make_engine(url, durable=True), clock, url)
        if create:
            store.create()
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> RolloutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        orig = getattr(exc, "orig", None)
        return StoreUnavailable("the database", self.url, orig if orig is not None else exc)

    def create(self) -> None:
        """Create the tables and the initial state row (``off``, version 0) unless they exist.

        A store of the previous version gets the missing (nullable) columns and, when its
        log was never chained, its rows chained as they are now.
        """
        try:
            metadata.create_all(self.engine, checkfirst=True)
        except sa.exc.DBAPIError:
            try:  # a concurrent creator may have raced us; a second look finds its tables
                metadata.create_all(self.engine, checkfirst=True)
            except sa.exc.DBAPIError as exc:
                raise self._unavailable(exc) from None
        try:
            self._add_missing_columns()
        except sa.exc.DBAPIError as exc:
            raise self._unavailable(exc) from None

        def work(conn: Connection) -> None:
            row = conn.execute(sa.select(state_table).where(state_table.c.id == _STATE_ID)).first()
            if row is None:
                conn.execute(
                    state_table.insert().values(
                        id=_STATE_ID,
                        stage=START.stage.value,
                        percent=START.percent,
                        version=0,
                        entered_at=None,
                        head=GENESIS,
                    )
                )
            elif row.version > 0 and row.head is None:
                self._chain_existing(conn)

        try:
            run_transaction(self.engine, work)
        except sa.exc.IntegrityError:
            pass  # another process inserted the row first
        except sa.exc.DBAPIError as exc:
            raise self._unavailable(exc) from None

    def _add_missing_columns(self) -> None:
        for table in (state_table, decisions_table):
            # The columns a plain SELECT returns: no dialect inspector (CockroachDB's reads its own catalog).
            with self.engine.connect() as conn:
                have = set(conn.execute(sa.text(f"SELECT * FROM {table.name} LIMIT 0")).keys())
            missing = [c for c in table.columns if c.name not in have]
            if not missing:
                continue
            with self.engine.begin() as conn:
                for column in missing:
                    kind = column.type.compile(dialect=self.engine.dialect)
                    conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))

    def _chain_existing(self, conn: Connection) -> None:
        """Chain the rows of a log written before hashes existed (the upgrade), and set the head."""
        prev = GENESIS
        for row in conn.execute(sa.select(decisions_table).order_by(decisions_table.c.id)).all():
            decision = replace(_decision(row), prev_hash=prev)
            prev = decision.content_hash()
            conn.execute(
                decisions_table.update()
                .where(decisions_table.c.id == decision.id)
                .values(prev_hash=decision.prev_hash, row_hash=prev, weakened=False)
            )
        conn.execute(state_table.update().where(state_table.c.id == _STATE_ID).values(head=prev, plan_weakened=False))

    def state(self) -> RolloutState:
        """The current state; ``INITIAL`` when the row is missing (tables made but never written)."""
        try:
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(state_table).where(state_table.c.id == _STATE_ID)).first()
        except sa.exc.DBAPIError as exc:
            raise self._unavailable(exc) from None
        if row is None:
            return INITIAL
        return _state(row)

    def plan_text(self, digest: str) -> str | None:
        """The full text of the plan with ``digest`` as it was put in force (None when unknown)."""
        try:
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(plans_table.c.text).where(plans_table.c.digest == digest)).first()
        except sa.exc.DBAPIError as exc:
            raise self._unavailable(exc) from None
        return None if row is None else str(row.text)

    def evidence_use(self, sha256: str) -> int | None:
        """The id of the decision ``sha256`` admitted, or None when that evidence is unused."""
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(evidence_table.c.decision_id).where(evidence_table.c.sha256 == sha256)
                ).first()
        except sa.exc.DBAPIError as exc:
            raise self._unavailable(exc) from None
        return None if row is None else int(row.decision_id)

    def record(self, expected_version: int, draft: Draft) -> Decision:
        """Apply ``draft`` to the state decided on at ``expected_version`` and log it, atomically.

        Raises ``ConflictError`` when the state is no longer at ``expected_version`` and
        ``draft.source`` (another writer moved it), ``EvidenceReused`` when the draft uses
        evidence that already admitted a move, ``UsageError`` for text no backend can
        store (NUL, lone surrogates) and ``StoreUnavailable`` when the database is down.
        Nothing is written unless everything is.
        """
        _check_text("actor", draft.actor)
        _check_text("reason", draft.reason)
        _check_text("evidence path", draft.evidence_path)
        for note in draft.notes:
            _check_text("note", note)
        if not draft.actor.strip():
            raise UsageError("a decision needs an actor (a person's name, or 'auto')")
        if draft.action == "plan" and draft.source != draft.target:
            raise UsageError("a plan decision does not move the rollout")
        unhashed = Decision(
            expected_version + 1,
            self.clock(),
            draft.actor,
            draft.action,
            draft.source,
            draft.target,
            draft.gates,
            draft.verdict,
            draft.evidence_path,
            draft.evidence_sha256,
            draft.reason,
            draft.forced,
            draft.plan_digest,
            draft.weakened,
            draft.notes,
        )
        gates_json = json.dumps(list(draft.gates), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        notes_json = json.dumps(list(draft.notes), ensure_ascii=False) if draft.notes else None
        recorded: list[Decision] = []

        def work(conn: Connection) -> None:
            recorded.clear()
            s = state_table.c
            values: dict[str, Any] = {
                "stage": draft.target.stage.value,
                "percent": draft.target.percent,
                "version": unhashed.id,
            }
            if draft.action != "plan":
                values["entered_at"] = unhashed.at_ms
            if draft.install is not None:
                values["plan_digest"] = draft.install.digest
                values["plan_weakened"] = draft.weakened
            moved = conn.execute(
                state_table.update()
                .where(
                    s.id == _STATE_ID,
                    s.version == expected_version,
                    s.stage == draft.source.stage.value,
                    s.percent == draft.source.percent,
                )
                .values(**values)
            )
            if moved.rowcount != 1:
                row = conn.execute(sa.select(state_table).where(s.id == _STATE_ID)).first()
                now = (
                    f"{Position.at(Stage(row.stage), row.percent)} (version {row.version})"
                    if row
                    else "missing"
                )
                raise ConflictError(
                    f"the rollout changed since it was read at version {expected_version} ({draft.source}): "
                    f"it is now {now}; check `segshadow cutover status` and decide again"
                )
            # The row is ours until commit: the head we chain to cannot change underneath.
            head = conn.execute(sa.select(s.head).where(s.id == _STATE_ID)).scalar_one()
            prev = head if expected_version > 0 and head else GENESIS
            decision = replace(unhashed, prev_hash=prev)
            decision = replace(decision, row_hash=decision.content_hash())
            conn.execute(state_table.update().where(s.id == _STATE_ID).values(head=decision.row_hash))
            if draft.uses_evidence and draft.evidence_sha256:
                used = conn.execute(
                    sa.select(evidence_table.c.decision_id).where(evidence_table.c.sha256 == draft.evidence_sha256)
                ).first()
                if used is not None:
                    raise EvidenceReused(draft.evidence_sha256, int(used.decision_id))
                conn.execute(evidence_table.insert().values(sha256=draft.evidence_sha256, decision_id=decision.id))
            if draft.install is not None:
                known = conn.execute(
                    sa.select(plans_table.c.digest).where(plans_table.c.digest == draft.install.digest)
                ).first()
                if known is None:
                    conn.execute(
                        plans_table.insert().values(
                            digest=draft.install.digest,
                            name=draft.install.name,
                            text=draft.install.text,
                            decision_id=decision.id,
                        )
                    )
            conn.execute(
                decisions_table.insert().values(
                    id=decision.id,
                    at=decision.at_ms,
                    actor=decision.actor,
                    action=decision.action,
                    from_stage=decision.source.stage.value,
                    from_percent=decision.source.percent,
                    to_stage=decision.target.stage.value,
                    to_percent=decision.target.percent,
                    gates=gates_json,
                    verdict=decision.verdict,
                    evidence_path=decision.evidence_path,
                    evidence_sha256=decision.evidence_sha256,
                    reason=decision.reason,
                    forced=decision.forced,
                    plan_digest=decision.plan_digest,
                    weakened=decision.weakened,
                    notes=notes_json,
                    prev_hash=decision.prev_hash,
                    row_hash=decision.row_hash,
                )
            )
            recorded.append(decision)

        try:
            run_transaction(self.engine, work)
        except sa.exc.IntegrityError:
            raise ConflictError(
                f"decision {unhashed.id} is already in the log: another writer recorded it first"
            ) from None
        except sa.exc.DBAPIError as exc:
            raise self._unavailable(exc) from None
        return recorded[-1]

    def history(self, limit: int | None = None) -> list[Decision]:
        """The decision log in order (the last ``limit`` decisions when given)."""
        query = sa.select(decisions_table).order_by(
            decisions_table.c.id.desc() if limit else decisions_table.c.id
        )
        if limit:
            query = query.limit(limit)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except sa.exc.DBAPIError as exc:
            raise self._unavailable(exc) from None
        decisions = [_decision(row) for row in rows]
        return sorted(decisions, key=lambda d: d.id)


def _state(row: Any) -> RolloutState:
    return RolloutState(
        Position.at(Stage(row.stage), row.percent),
        int(row.version),
        row.entered_at,
        row.plan_digest,
        bool(row.plan_weakened),
        row.head or GENESIS,
    )


def _decision(row: Any) -> Decision:
    gates: Sequence[dict[str, Any]] = json.loads(row.gates)
    notes: Sequence[str] = json.loads(row.notes) if row.notes else ()
    return Decision(
        int(row.id),
        int(row.at),
        row.actor,
        row.action,
        Position.at(Stage(row.from_stage), row.from_percent),
        Position.at(Stage(row.to_stage), row.to_percent),
        tuple(gates),
        row.verdict,
        row.evidence_path,
        row.evidence_sha256,
        row.reason,
        bool(row.forced),
        row.plan_digest,
        bool(row.weakened),
        tuple(notes),
        row.prev_hash,
        row.row_hash,
    )
