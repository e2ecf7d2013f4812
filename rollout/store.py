"""Durable rollout state and its append-only decision log, in the SQL store.

Two tables on this module's own ``metadata``:

- ``segshadow_rollout_state``: one row (id 1): the stage, the percentage, when the
  rollout entered that position, and a ``version`` counter that every change bumps.
- ``segshadow_rollout_decisions``: one row per change, never updated or deleted:
  who (a person or ``auto``), when, from where to where, the gate results (JSON),
  the evidence file and its SHA-256, the reason and whether it was forced. Its id
  is the state version the decision produced, so the log is gap-free and ordered
  the same on every backend.

Guarantees, on SQLite, PostgreSQL and CockroachDB:

- **Optimistic concurrency.** A change names the version it was decided on; the
  update is ``... WHERE version = :expected``. When another writer got there first,
  nothing is written and ``ConflictError`` says what the state is now.
- **Atomic.** The state update and its decision row are one transaction
  (``segments.db.run_transaction``, which retries on CockroachDB): a store that goes
  down mid-way leaves neither, never one without the other.
- **Replayable.** ``replay(history())`` rebuilds the state row from the log alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from rollout.stages import START, Position, Stage
from segments.db import make_engine, run_transaction
from segments.errors import ConflictError, InputError, StoreUnavailable, UsageError
from segments.timeutil import Clock, format_ms, wall_clock_ms

Action = Literal["advance", "rollback"]
AUTO = "auto"
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
)


@dataclass(frozen=True)
class RolloutState:
    """Where the rollout is: its position, the version counter, and since when (None: never moved)."""

    position: Position
    version: int
    entered_at_ms: int | None

    def in_stage_ms(self, now_ms: int) -> int | None:
        return None if self.entered_at_ms is None else now_ms - self.entered_at_ms


INITIAL = RolloutState(START, 0, None)


@dataclass(frozen=True)
class Draft:
    """A decision about to be recorded (the store adds its id and time)."""

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
        }


def replay(decisions: Iterable[Decision]) -> RolloutState:
    """The state the log leads to, from ``off`` at version 0.

    Raises ``InputError`` when the log is not a chain (an id out of sequence, or a
    decision that starts somewhere the previous one did not end).
    """
    state = INITIAL
    for d in decisions:
        if d.id != state.version + 1:
            raise InputError(f"decision log: id {d.id} follows version {state.version}")
        if d.source != state.position:
            raise InputError(f"decision log: decision {d.id} starts at {d.source}, not at {state.position}")
        state = RolloutState(d.target, d.id, d.at_ms)
    return state


def _check_text(name: str, value: str | None) -> None:
    if value is None:
        return
    if "\x00" in value:
        raise UsageError(f"{name} may not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{name} is not valid Unicode text") from None


class RolloutStore:
    """The rollout's durable state and decision log over a SQLAlchemy engine.

    ``RolloutStore.open(url)`` connects (``StoreUnavailable`` if it cannot) and creates
    the tables when missing. ``clock`` stamps decisions. Every method raises
    ``StoreUnavailable`` when the database cannot be reached.
    """

    def __init__(self, engine: Engine, clock: Clock = wall_clock_ms, url: str | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.url = url or engine.url.render_as_string(hide_password=True)

    @classmethod
    def open(cls, url: str, clock: Clock = wall_clock_ms, create: bool = True) -> RolloutStore:
        store = cls(make_engine(url), clock, url)
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
        """Create the tables and the initial state row (``off``, version 0) unless they exist."""
        try:
            metadata.create_all(self.engine, checkfirst=True)
        except sa.exc.DBAPIError:
            try:  # a concurrent creator may have raced us; a second look finds its tables
                metadata.create_all(self.engine, checkfirst=True)
            except sa.exc.DBAPIError as exc:
                raise self._unavailable(exc) from None

        def work(conn: Connection) -> None:
            exists = conn.execute(sa.select(state_table.c.id).where(state_table.c.id == _STATE_ID)).first()
            if exists is None:
                conn.execute(
                    state_table.insert().values(
                        id=_STATE_ID,
                        stage=START.stage.value,
                        percent=START.percent,
                        version=0,
                        entered_at=None,
                    )
                )

        try:
            run_transaction(self.engine, work)
        except sa.exc.IntegrityError:
            pass  # another process inserted the row first
        except sa.exc.DBAPIError as exc:
            raise self._unavailable(exc) from None

    def state(self) -> RolloutState:
        """The current state; ``INITIAL`` when the row is missing (tables made but never written)."""
        try:
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(state_table).where(state_table.c.id == _STATE_ID)).first()
        except sa.exc.DBAPIError as exc:
            raise self._unavailable(exc) from None
        if row is None:
            return INITIAL
        return RolloutState(Position.at(Stage(row.stage), row.percent), int(row.version), row.entered_at)

    def record(self, expected_version: int, draft: Draft) -> Decision:
        """Apply ``draft`` to the state decided on at ``expected_version`` and log it, atomically.

        Raises ``ConflictError`` when the state is no longer at ``expected_version`` and
        ``draft.source`` (another writer moved it), ``UsageError`` for text no backend can
        store (NUL, lone surrogates) and ``StoreUnavailable`` when the database is down.
        Nothing is written unless everything is.
        """
        _check_text("actor", draft.actor)
        _check_text("reason", draft.reason)
        _check_text("evidence path", draft.evidence_path)
        if not draft.actor.strip():
            raise UsageError("a decision needs an actor (a person's name, or 'auto')")
        decision = Decision(
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
        )
        gates_json = json.dumps(list(draft.gates), ensure_ascii=False, separators=(",", ":"), allow_nan=False)

        def work(conn: Connection) -> None:
            s = state_table.c
            moved = conn.execute(
                state_table.update()
                .where(
                    s.id == _STATE_ID,
                    s.version == expected_version,
                    s.stage == draft.source.stage.value,
                    s.percent == draft.source.percent,
                )
                .values(
                    stage=draft.target.stage.value,
                    percent=draft.target.percent,
                    version=decision.id,
                    entered_at=decision.at_ms,
                )
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
                )
            )

        try:
            run_transaction(self.engine, work)
        except sa.exc.IntegrityError:
            raise ConflictError(
                f"decision {decision.id} is already in the log: another writer recorded it first"
            ) from None
        except sa.exc.DBAPIError as exc:
            raise self._unavailable(exc) from None
        return decision

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


def _decision(row: Any) -> Decision:
    gates: Sequence[dict[str, Any]] = json.loads(row.gates)
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
    )
