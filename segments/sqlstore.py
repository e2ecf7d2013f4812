"""The durable SQL store: rule-set versions, the events table, legacy assignments and runs,
stream transitions and dead letters, on SQLite, PostgreSQL and CockroachDB.

Tables are SQLAlchemy Core tables on one ``metadata``, every name prefixed
``segshadow_``. All values travel as bound parameters; no SQL is ever built from
a value.

Contracts kept on every backend:

- **Money is exact**: ``amount_micros`` is a BIGINT of millionths of a unit (NULL when
  the event carries no amount); sums come back as Python ints.
- **Text is stored verbatim** when the backend can hold it. A few strings are legal
  in segshadow but not storable as SQL text: a NUL character (PostgreSQL and
  CockroachDB refuse it) and a lone surrogate (no UTF-8 form; the event reader
  produces one for invalid bytes or a ``\\ud800`` escape). Those, and any string that
  starts with the escape mark ``\\x1b``, are stored as ``\\x1b`` followed by their
  ASCII JSON spelling (``to_sql_text``). The encoding is injective, so equality,
  GROUP BY and COUNT DISTINCT over the stored column mean the same as over the
  original ids, and readers decode it back (``from_sql_text``).
- **Writes are idempotent**: events and transitions are inserted with
  ``ON CONFLICT DO NOTHING`` (the first arrival of an ``event_id`` wins when events
  are passed in arrival order), dead letters are keyed by (source, seq, reason),
  and ``replace_assignments`` deletes and inserts one as-of in one transaction.
- **Rule-set versions are immutable**: registering an existing (name, version) with a
  different digest raises ``RuleSetError``.
- **A legacy run is published all at once.** A batch run stages its snapshots under a
  run id (``begin_legacy_run``, ``stage_assignments``: tables
  ``segshadow_legacy_staged_assignments`` and ``segshadow_legacy_staged_runs``) and
  ``publish_legacy_run`` then replaces the rule set's rows of
  ``segshadow_legacy_assignments`` and ``segshadow_legacy_runs`` with the staged ones
  and records the run in ``segshadow_legacy_publications``, in one transaction.
  Readers of the published tables (the router's SQL fallback, ``read_assignments``)
  therefore see the previous complete run or the new complete run, never a part of
  one; a run that fails part-way leaves only staged rows, which no reader reads and
  the next ``begin_legacy_run`` of the rule set deletes. Chosen over a run-id column
  on the published tables because it leaves those tables and their readers as they
  are: an existing store only gains the three new tables (``create_all``), nothing is
  migrated. The cost is one server-side ``INSERT ... SELECT`` of the run's rows at
  the switch (on CockroachDB a transaction as large as the run; see below).
  ``replace_assignments`` still publishes one as-of directly: the live legacy job
  (``shadow.live``) publishes each complete as-of as it goes.
- **Stream transitions of a replay are published all at once** the same way
  (``segshadow_transitions_staged``, ``publish_transitions``): a replay that fails
  part-way leaves the rule set's previous transitions as they were. The live stream
  appends straight to ``segshadow_transitions``.

Bulk paths (1M events, measured in ``bench/legacy_run.py``): SQLite gets the driver's
``executemany`` of plain tuples (SQLAlchemy's per-row parameter processing cost more
than the insert itself); PostgreSQL gets ``COPY`` (``insert_events`` copies into a
temporary table and then runs one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``;
``replace_events`` and ``replace_assignments`` copy straight into the table, and
``replace_events`` builds the secondary indexes after the load).

CockroachDB (the ``cockroachdb://`` dialect of sqlalchemy-cockroachdb) differs from
PostgreSQL in ways handled here:

- It runs SERIALIZABLE and asks clients to retry transactions that fail with
  SQLSTATE 40001: every write goes through ``segments.db.run_transaction``, which
  uses the dialect's retry loop there; each unit of work is safe to run again
  (delete+insert of one as-of, ON CONFLICT DO NOTHING inserts, a COPY-free load).
- Large transactions are discouraged (they are more likely to conflict and have a
  size limit): events go in batches of ``EVENT_BATCH`` rows, one transaction each.
  The one exception is the switch that publishes a legacy run or a replay's
  transitions (atomicity is its point): it is a single ``INSERT ... SELECT`` of the
  run's rows, retried whole by ``run_transaction``; a run too large for the
  cluster's transaction limits fails there with the previous run still published.
- ``TRUNCATE`` is a schema change there, not transactional: ``clear_events`` runs it
  in a transaction of its own on PostgreSQL and CockroachDB (``DELETE`` on SQLite).
- Temporary tables are experimental and index changes are slow online schema changes:
  no COPY staging table and no index rebuild; bulk rows go by psycopg's pipelined
  ``executemany``, conflicting inserts by ``INSERT ... ON CONFLICT DO NOTHING RETURNING``.
- ``SUM`` over INT8 returns DECIMAL (PostgreSQL: NUMERIC): every aggregate is
  converted with ``int()`` when read, so no float ever appears.
- The dialect derives from PostgreSQL's, so the same ``postgresql.insert`` construct
  compiles for both. Tests compile every table's DDL for it and, with a PostgreSQL
  server, run the store and the legacy job through the ``cockroachdb://`` dialect
  against that server (CockroachDB itself cannot run here).
- String ordering follows each backend's collation; nothing here relies on SQL
  ``ORDER BY`` of user ids (readers sort in Python where order matters).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from segments.db import backend, make_engine, run_transaction
from segments.errors import RuleSetError, UsageError
from segments.events import Event, Rejection, dumps_exact
from segments.outputs import Assignment, Transition
from segments.rules import RuleSet, compile_ruleset
from segments.timeutil import Clock, wall_clock_ms

EVENT_BATCH = 10_000
COPY_MIN_ROWS = 1_000  # PostgreSQL loads larger batches through COPY and a staging table
ROW_BATCH = 5_000
DEAD_LETTER_SOURCES = ("ingest", "stream")
_ESCAPE = "\x1b"

metadata = sa.MetaData()

rulesets_table = sa.Table(
    "segshadow_rulesets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("definition", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

events_table = sa.Table(
    "segshadow_events",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("event_time", sa.BigInteger, nullable=False),
    sa.Column("arrival_time", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("amount_micros", sa.BigInteger, nullable=True),
    sa.Column("merchant", sa.Text, nullable=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.Text, nullable=True),
    sa.Index("ix_segshadow_events_event_time", "event_time"),
    sa.Index("ix_segshadow_events_arrival_time", "arrival_time"),
)

assignments_table = sa.Table(
    "segshadow_legacy_assignments",
    metadata,
    sa.Column("ruleset", sa.String(80), primary_key=True),
    sa.Column("as_of", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("segments", sa.Text, nullable=False),
)

legacy_runs_table = sa.Table(
    "segshadow_legacy_runs",
    metadata,
    sa.Column("ruleset", sa.String(80), primary_key=True),
    sa.Column("as_of", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("started_at", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.BigInteger, nullable=False),
    sa.Column("users", sa.Integer, nullable=False),
    sa.Column("duration_ms", sa.BigInteger, nullable=False),
)

staged_assignments_table = sa.Table(
    "segshadow_legacy_staged_assignments",
    metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("as_of", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("ruleset", sa.String(80), nullable=False),
    sa.Column("segments", sa.Text, nullable=False),
    sa.Index("ix_segshadow_legacy_staged_assignments_ruleset", "ruleset"),
)

staged_runs_table = sa.Table(
    "segshadow_legacy_staged_runs",
    metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("as_of", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ruleset", sa.String(80), nullable=False),
    sa.Column("started_at", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.BigInteger, nullable=False),
    sa.Column("users", sa.Integer, nullable=False),
    sa.Column("duration_ms", sa.BigInteger, nullable=False),
)

publications_table = sa.Table(
    "segshadow_legacy_publications",
    metadata,
    sa.Column("ruleset", sa.String(80), primary_key=True),
    sa.Column("run_id", sa.String(40), nullable=False),
    sa.Column("published_at", sa.BigInteger, nullable=False),
    sa.Column("as_ofs", sa.Integer, nullable=False),
    sa.Column("assignments", sa.BigInteger, nullable=False),
)

transitions_table = sa.Table(
    "segshadow_transitions",
    metadata,
    sa.Column("ruleset", sa.String(80), primary_key=True),
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("effective_time", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("revision", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("segments", sa.Text, nullable=False),
    sa.Column("emitted_at", sa.BigInteger, nullable=False),
    sa.Column("cause", sa.String(16), nullable=False),
)

staged_transitions_table = sa.Table(
    "segshadow_transitions_staged",
    metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("effective_time", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("revision", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("ruleset", sa.String(80), nullable=False),
    sa.Column("segments", sa.Text, nullable=False),
    sa.Column("emitted_at", sa.BigInteger, nullable=False),
    sa.Column("cause", sa.String(16), nullable=False),
)

dead_letters_table = sa.Table(
    "segshadow_dead_letters",
    metadata,
    sa.Column("source", sa.String(16), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("reason", sa.String(32), primary_key=True),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=True),
    sa.Column("user_id", sa.Text, nullable=True),
    sa.Column("recorded_at", sa.BigInteger, nullable=False),
)


# ---- text that every backend can hold -------------------------------------------------------------


def _storable(text: str) -> bool:
    if text.isascii():
        return "\x00" not in text and not text.startswith(_ESCAPE)
    if "\x00" in text or text.startswith(_ESCAPE):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_sql_text(text: str) -> str:
    """``text`` as stored: itself, or ``\\x1b`` + its ASCII JSON when the backend could not hold it.

    Injective; ``from_sql_text`` is its inverse. See the module doc.
    """
    if _storable(text):
        return text
    return _ESCAPE + json.dumps(text)


def from_sql_text(stored: str) -> str:
    """The original string of a value written by ``to_sql_text``."""
    if stored.startswith(_ESCAPE):
        decoded = json.loads(stored[1:])
        assert isinstance(decoded, str)
        return decoded
    return stored


def _opt_text(text: str | None) -> str | None:
    return None if text is None else to_sql_text(text)


def _opt_from(stored: str | None) -> str | None:
    return None if stored is None else from_sql_text(stored)


def _segments_text(segments: Iterable[str]) -> str:
    return json.dumps(sorted(segments), separators=(",", ":"))


def _segments_from(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _payload(event: Event) -> str | None:
    """The event's ``attrs`` and unknown fields as exact JSON (None when it has neither)."""
    if event.attrs is None and event.extra is None:
        return None
    body: dict[str, Any] = {}
    if event.attrs is not None:
        body["attrs"] = event.attrs
    if event.extra is not None:
        body["extra"] = event.extra
    return dumps_exact(body)


_payload_decoder = json.JSONDecoder(parse_float=Decimal)


# ---- values read back ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LegacyRun:
    """One legacy as-of run: when it ran (ms), how many users got a non-empty set, how long it took."""

    ruleset: str
    as_of: int
    started_at: int
    finished_at: int
    users: int
    duration_ms: int


@dataclass(frozen=True)
class Publication:
    """The complete legacy run that is published for a rule set: its id, when, and its size."""

    ruleset: str
    run_id: str
    published_at: int
    as_ofs: int
    assignments: int


@dataclass(frozen=True)
class DeadLetter:
    """A stored dead-letter record: where it was rejected (``ingest`` or ``stream``) and when."""

    source: str
    rejection: Rejection
    recorded_at: int


@dataclass(frozen=True)
class StoredRuleSet:
    """A row of the rule-set table, without compiling the definition."""

    name: str
    version: int
    digest: str
    created_at: int


# ---- the store ---------------------------------------------------------------------------------------


class SqlStore:
    """The durable store over one SQLAlchemy engine (see the module doc for guarantees).

    ``clock`` stamps ``created_at`` and ``recorded_at``. Methods raise what
    SQLAlchemy raises for server errors; bad arguments raise ``UsageError`` and
    rule-set conflicts ``RuleSetError``.
    """

    def __init__(self, engine: Engine, clock: Clock = wall_clock_ms) -> None:
        self.engine = engine
        self.clock = clock
        self.backend = backend(engine)

    @classmethod
    def open(cls, url: str, clock: Clock = wall_clock_ms, create: bool = True) -> SqlStore:
        """Connect to ``url`` (``StoreUnavailable`` if unreachable); with ``create``, create the tables."""
        store = cls(make_engine(url), clock)
        if create:
            store.create_all()
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_all(self) -> None:
        """Create the tables and indexes that do not exist yet (safe to call again)."""
        metadata.create_all(self.engine)

    def _insert(self, table: sa.Table) -> Any:
        """INSERT ... ON CONFLICT DO NOTHING for this backend."""
        if self.backend == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing()
        return postgresql.insert(table).on_conflict_do_nothing()

    def _insert_rows(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]], key: str) -> int:
        """Insert ``rows`` ignoring conflicts; returns how many were new."""
        if not rows:
            return 0
        statement = self._insert(table)
        if self.backend == "sqlite":
            return int(conn.execute(statement, rows).rowcount)
        # psycopg reports no row count for executemany; RETURNING also makes SQLAlchemy send
        # many rows per statement ("insertmanyvalues"), far fewer round trips.
        return len(conn.execute(statement.returning(table.c[key]), rows).all())

    def _bulk_insert(self, conn: Connection, table: sa.Table, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert ``rows`` (values in the table's column order) that cannot conflict, the fastest way
        the backend has: COPY on PostgreSQL, the driver's executemany elsewhere (psycopg pipelines
        it on CockroachDB; measured against PostgreSQL, 3x faster than multi-row VALUES statements)."""
        if not rows:
            return
        names = [c.name for c in table.columns]
        columns = ", ".join(names)
        if self.backend == "postgresql":
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            with cursor.copy(f"COPY {table.name} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        elif self.backend == "sqlite":
            marks = ", ".join("?" * len(names))
            conn.exec_driver_sql(f"INSERT INTO {table.name} ({columns}) VALUES ({marks})", list(rows))
        else:
            conn.execute(sa.insert(table), [dict(zip(names, row, strict=True)) for row in rows])

    def _insert_batch(self, table: sa.Table, rows: list[dict[str, Any]], key: str) -> int:
        """One transaction inserting ``rows`` with conflicts ignored; returns how many were new."""

        def work(conn: Connection) -> int:
            return self._insert_rows(conn, table, rows, key)

        return run_transaction(self.engine, work)

    # ---- rule sets ------------------------------------------------------------------------------

    def register_ruleset(self, ruleset: RuleSet) -> None:
        """Store ``ruleset`` under (name, version); a no-op when that exact definition is there.

        Raises ``RuleSetError`` when (name, version) is stored with a different digest.
        """
        row = {
            "name": ruleset.name,
            "version": ruleset.version,
            "digest": ruleset.digest,
            # key order kept (not canonical_json's sorted keys): aggregates come back in file order
            "definition": json.dumps(ruleset.definition, ensure_ascii=False, separators=(",", ":")),
            "created_at": self.clock(),
        }
        table = rulesets_table

        def work(conn: Connection) -> str:
            conn.execute(self._insert(table), [row])
            query = sa.select(table.c.digest).where(
                table.c.name == ruleset.name, table.c.version == ruleset.version
            )
            return str(conn.execute(query).scalar_one())

        stored = run_transaction(self.engine, work)
        if stored != ruleset.digest:
            raise RuleSetError(
                f"{ruleset.ref} is already stored with digest {stored[:12]}, this definition has "
                f"{ruleset.digest[:12]}: versions are immutable, give the changed rule set a new version",
                "version",
            )

    def load_ruleset(self, name: str, version: int | None = None) -> RuleSet:
        """The stored rule set ``name`` at ``version`` (the highest stored version when None).

        Raises ``RuleSetError`` when it is not stored or its stored digest does not match
        its definition.
        """
        table = rulesets_table
        query = sa.select(table.c.version, table.c.digest, table.c.definition).where(table.c.name == name)
        if version is not None:
            query = query.where(table.c.version == version)
        query = query.order_by(table.c.version.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            which = f"{name}@v{version}" if version is not None else name
            raise RuleSetError(f"no stored rule set {which}")
        ruleset = compile_ruleset(json.loads(row.definition), f"stored {name}@v{row.version}")
        if ruleset.digest != row.digest:
            raise RuleSetError(f"stored {ruleset.ref} does not match its digest {row.digest[:12]}")
        return ruleset

    def stored_rulesets(self) -> list[StoredRuleSet]:
        """Every stored (name, version), by name then version."""
        table = rulesets_table
        query = sa.select(table.c.name, table.c.version, table.c.digest, table.c.created_at)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        found = [StoredRuleSet(r.name, r.version, r.digest, r.created_at) for r in rows]
        return sorted(found, key=lambda r: (r.name, r.version))

    # ---- events ---------------------------------------------------------------------------------

    def insert_events(self, events: Iterable[Event], batch: int = EVENT_BATCH) -> int:
        """Insert events, ``batch`` rows per transaction; returns how many were new.

        Pass events in arrival order: an ``event_id`` already stored (or earlier in the
        same call) is ignored, so the first arrival wins whatever the later payload.
        The bulk path differs per backend (see ``_load_rows``); the result does not.
        """
        if batch < 1:
            raise UsageError("batch must be positive")
        inserted = 0
        for chunk in _chunks(events, batch):
            rows: dict[str, tuple[Any, ...]] = {}
            for event in chunk:
                row = _event_row(event)
                rows.setdefault(row[0], row)  # first arrival within the batch
            values = list(rows.values())

            def work(conn: Connection, values: list[tuple[Any, ...]] = values) -> int:
                return self._load_rows(conn, values)

            inserted += run_transaction(self.engine, work)
        return inserted

    def replace_events(
        self,
        events: Sequence[Event],
        batch: int = EVENT_BATCH,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Make ``events`` (in arrival order) the whole content of the events table; returns how many
        were stored (the first arrival of each id). ``on_batch(done)`` follows the progress.

        The bulk path of a job that owns the table (the legacy run): the table is emptied,
        ids are deduplicated here, and the rows go straight into the table by the backend's
        fastest path (``_bulk_insert``; COPY on PostgreSQL, about twice as fast as
        ``insert_events``). On SQLite and PostgreSQL the secondary indexes are dropped for
        the load and built after it (not on CockroachDB, where index changes are slow
        online schema changes); every call ends by creating any index that is missing, so
        a load that died half-way is repaired by the next. A concurrent writer of the same
        ids makes the load fail with an integrity error rather than be silently overwritten.
        """
        if batch < 1:
            raise UsageError("batch must be positive")
        self.clear_events()
        if self.backend in ("sqlite", "postgresql"):
            run_transaction(self.engine, _drop_event_indexes)
        stored = self._bulk_load(events, batch, on_batch)
        run_transaction(self.engine, _create_event_indexes)
        return stored

    def _bulk_load(self, events: Sequence[Event], batch: int, on_batch: Callable[[int], None] | None) -> int:
        seen: set[str] = set()
        for start in range(0, len(events), batch):
            rows = []
            for event in events[start : start + batch]:
                if event.event_id not in seen:
                    seen.add(event.event_id)
                    rows.append(_event_row(event))

            def work(conn: Connection, rows: list[tuple[Any, ...]] = rows) -> None:
                self._bulk_insert(conn, events_table, rows)

            run_transaction(self.engine, work)
            if on_batch is not None:
                on_batch(min(start + batch, len(events)))
        return len(seen)

    def _load_rows(self, conn: Connection, rows: list[tuple[Any, ...]]) -> int:
        """Insert event rows (``EVENT_COLUMNS`` order, ids unique among them) unless their id is stored.

        SQLite: one prepared INSERT ... ON CONFLICT DO NOTHING run by the driver's
        executemany. PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT
        ... ON CONFLICT DO NOTHING (COPY itself cannot skip conflicts); a small batch (live
        ingest's 10 ms batches) skips the staging table, whose set-up costs ~8 ms, for one
        INSERT ... SELECT FROM unnest(...) of one array per column, ON CONFLICT DO NOTHING
        (psycopg sends each array as one parameter; bench/dual_write.py's 500-event batches:
        14 client CPU us an event and 33K events/s, against 121 us and 6.1K events/s for the
        multi-row statements below). CockroachDB (temporary tables are experimental there):
        INSERT ... ON CONFLICT DO NOTHING RETURNING, which SQLAlchemy sends as multi-row
        statements, counting the rows returned.
        """
        table = events_table.name
        columns = ", ".join(EVENT_COLUMNS)
        if self.backend == "sqlite":
            marks = ", ".join("?" * len(EVENT_COLUMNS))
            sql = f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING"
            return int(conn.exec_driver_sql(sql, rows).rowcount)
        if self.backend == "postgresql" and len(rows) > COPY_MIN_ROWS:
            staging = "segshadow_events_load"
            conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {staging} (LIKE {table}) ON COMMIT DROP")
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            with cursor.copy(f"COPY {staging} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            result = conn.exec_driver_sql(
                f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} ON CONFLICT DO NOTHING"
            )
            conn.exec_driver_sql(f"DROP TABLE {staging}")
            return int(result.rowcount)
        if self.backend == "postgresql":
            result = conn.exec_driver_sql(
                f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({_PG_UNNEST}) ON CONFLICT DO NOTHING",
                tuple(list(column) for column in zip(*rows, strict=True)),
            )
            return int(result.rowcount)
        named = [dict(zip(EVENT_COLUMNS, row, strict=True)) for row in rows]
        return self._insert_rows(conn, events_table, named, "event_id")

    def clear_events(self) -> None:
        """Empty the events table (TRUNCATE where the backend has it, in a transaction of its own)."""
        if self.backend == "sqlite":
            statement: Any = sa.delete(events_table)
        else:
            statement = sa.text(f"TRUNCATE TABLE {events_table.name}")
        run_transaction(self.engine, lambda conn: conn.execute(statement))

    def count_events(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one())

    def arrival_span(self) -> tuple[int, int] | None:
        """(first, last) arrival time of the stored events, or None when there are none."""
        table = events_table
        query = sa.select(sa.func.min(table.c.arrival_time), sa.func.max(table.c.arrival_time))
        with self.engine.connect() as conn:
            first, last = conn.execute(query).one()
        return None if first is None else (int(first), int(last))

    def iter_events(self) -> Iterator[Event]:
        """The stored events in arrival order (ties by input position), streamed."""
        table = events_table
        query = sa.select(table).order_by(table.c.arrival_time, table.c.seq)
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=EVENT_BATCH).execute(query):
                yield _event_from_row(row)

    def read_events(self) -> list[Event]:
        return list(self.iter_events())

    # ---- legacy assignments and runs -------------------------------------------------------------

    def replace_assignments(
        self, ruleset_ref: str, as_of: int, rows: Iterable[Assignment], run: LegacyRun | None = None
    ) -> int:
        """Make ``rows`` the complete published legacy snapshot of ``ruleset_ref`` at ``as_of``; returns
        its size (the live legacy job's path; a batch run stages and publishes once, see below).

        Deletes what was stored for that as-of and inserts ``rows`` (and ``run``, when
        given) in one transaction, so re-running an as-of leaves exactly one copy.
        Raises ``UsageError`` when a row belongs to another as-of or a user repeats.
        """
        values = _snapshot_values(ruleset_ref, as_of, rows, run)
        a, r = assignments_table, legacy_runs_table

        def work(conn: Connection) -> int:
            conn.execute(sa.delete(a).where(a.c.ruleset == ruleset_ref, a.c.as_of == as_of))
            self._bulk_insert(conn, a, [(ruleset_ref, as_of, user, segs) for user, segs in values])
            if run is not None:
                conn.execute(sa.delete(r).where(r.c.ruleset == ruleset_ref, r.c.as_of == as_of))
                conn.execute(sa.insert(r), [asdict(run)])
            return len(values)

        return run_transaction(self.engine, work)

    # ---- a legacy run, staged then published at once (see the module doc) -------------------------

    def begin_legacy_run(self, ruleset_ref: str, run_id: str | None = None) -> str:
        """Start a staged legacy run of ``ruleset_ref``; returns its id (a fresh one unless given).

        Deletes what earlier unfinished runs of the rule set staged; the published run is
        untouched.
        """
        run_id = run_id or uuid.uuid4().hex
        sa_, sr = staged_assignments_table, staged_runs_table

        def work(conn: Connection) -> None:
            conn.execute(sa.delete(sa_).where(sa_.c.ruleset == ruleset_ref))
            conn.execute(sa.delete(sr).where(sr.c.ruleset == ruleset_ref))

        run_transaction(self.engine, work)
        return run_id

    def stage_assignments(
        self, run_id: str, ruleset_ref: str, as_of: int, rows: Iterable[Assignment], run: LegacyRun | None = None
    ) -> int:
        """``replace_assignments`` into run ``run_id``'s staging: invisible until ``publish_legacy_run``.

        Idempotent per as-of; the same ``UsageError`` checks.
        """
        values = _snapshot_values(ruleset_ref, as_of, rows, run)
        sa_, sr = staged_assignments_table, staged_runs_table

        def work(conn: Connection) -> int:
            conn.execute(sa.delete(sa_).where(sa_.c.run_id == run_id, sa_.c.as_of == as_of))
            self._bulk_insert(conn, sa_, [(run_id, as_of, user, ruleset_ref, segs) for user, segs in values])
            if run is not None:
                conn.execute(sa.delete(sr).where(sr.c.run_id == run_id, sr.c.as_of == as_of))
                conn.execute(sa.insert(sr), [{**asdict(run), "run_id": run_id}])
            return len(values)

        return run_transaction(self.engine, work)

    def publish_legacy_run(self, run_id: str, ruleset_ref: str, as_ofs: int) -> Publication:
        """Make run ``run_id`` the published legacy run of ``ruleset_ref``, in one transaction.

        The rule set's published assignments and runs are replaced by the staged ones,
        the staging rows are deleted and the publication recorded. Publishing a run
        that is already published changes nothing.
        """
        a, r, p = assignments_table, legacy_runs_table, publications_table
        sa_, sr = staged_assignments_table, staged_runs_table
        now = self.clock()

        def work(conn: Connection) -> Publication:
            current = conn.execute(sa.select(p).where(p.c.ruleset == ruleset_ref)).first()
            if current is not None and current.run_id == run_id:
                return Publication(ruleset_ref, run_id, current.published_at, current.as_ofs, current.assignments)
            conn.execute(sa.delete(a).where(a.c.ruleset == ruleset_ref))
            conn.execute(sa.delete(r).where(r.c.ruleset == ruleset_ref))
            # counted apart: psycopg reports no row count for INSERT ... SELECT through SQLAlchemy
            moved = conn.execute(
                sa.select(sa.func.count()).select_from(sa_).where(sa_.c.run_id == run_id)
            ).scalar_one()
            conn.execute(
                sa.insert(a).from_select(
                    ["ruleset", "as_of", "user_id", "segments"],
                    sa.select(sa_.c.ruleset, sa_.c.as_of, sa_.c.user_id, sa_.c.segments).where(
                        sa_.c.run_id == run_id
                    ),
                )
            )
            run_columns = ["ruleset", "as_of", "started_at", "finished_at", "users", "duration_ms"]
            conn.execute(
                sa.insert(r).from_select(
                    run_columns, sa.select(*(sr.c[name] for name in run_columns)).where(sr.c.run_id == run_id)
                )
            )
            conn.execute(sa.delete(sa_).where(sa_.c.run_id == run_id))
            conn.execute(sa.delete(sr).where(sr.c.run_id == run_id))
            publication = Publication(ruleset_ref, run_id, now, as_ofs, int(moved))
            conn.execute(sa.delete(p).where(p.c.ruleset == ruleset_ref))
            conn.execute(sa.insert(p), [asdict(publication)])
            return publication

        return run_transaction(self.engine, work)

    def publication(self, ruleset_ref: str) -> Publication | None:
        """The published legacy run of ``ruleset_ref``, or None (none yet, or a store from before
        runs were published at once)."""
        p = publications_table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(p).where(p.c.ruleset == ruleset_ref)).first()
        if row is None:
            return None
        return Publication(row.ruleset, row.run_id, row.published_at, row.as_ofs, row.assignments)

    def staged_rows(self, ruleset_ref: str) -> int:
        """How many assignment rows unfinished runs of ``ruleset_ref`` left staged (never read as results)."""
        sa_ = staged_assignments_table
        query = sa.select(sa.func.count()).select_from(sa_).where(sa_.c.ruleset == ruleset_ref)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def read_assignments(self, ruleset_ref: str, as_of: int | None = None) -> list[Assignment]:
        """Stored legacy assignments of ``ruleset_ref`` (one as-of, or all), sorted by as-of then user."""
        a = assignments_table
        query = sa.select(a.c.as_of, a.c.user_id, a.c.segments).where(a.c.ruleset == ruleset_ref)
        if as_of is not None:
            query = query.where(a.c.as_of == as_of)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return sorted(
            Assignment(int(r.as_of), from_sql_text(r.user_id), _segments_from(r.segments)) for r in rows
        )

    def legacy_runs(self, ruleset_ref: str) -> list[LegacyRun]:
        """Recorded legacy runs of ``ruleset_ref`` by as-of (the last one is the legacy side's freshness)."""
        r = legacy_runs_table
        query = sa.select(r).where(r.c.ruleset == ruleset_ref).order_by(r.c.as_of)
        with self.engine.connect() as conn:
            return [
                LegacyRun(row.ruleset, row.as_of, row.started_at, row.finished_at, row.users, row.duration_ms)
                for row in conn.execute(query)
            ]

    def clear_legacy(self, ruleset_ref: str) -> None:
        """Forget every legacy assignment, run and publication of ``ruleset_ref``."""
        a, r, p = assignments_table, legacy_runs_table, publications_table

        def work(conn: Connection) -> None:
            conn.execute(sa.delete(a).where(a.c.ruleset == ruleset_ref))
            conn.execute(sa.delete(r).where(r.c.ruleset == ruleset_ref))
            conn.execute(sa.delete(p).where(p.c.ruleset == ruleset_ref))

        run_transaction(self.engine, work)

    # ---- stream transitions -----------------------------------------------------------------------

    def insert_transitions(
        self, transitions: Iterable[Transition], ruleset_ref: str, run_id: str | None = None
    ) -> int:
        """Store stream transitions of ``ruleset_ref``; a (user, effective_time, revision) already
        stored is left as it is (a retried bundle changes nothing). Returns how many were new.

        With ``run_id`` (a replay, see ``begin_transitions``) they are staged, invisible to
        readers until ``publish_transitions``; without, appended to the published log (live).
        """
        table = transitions_table if run_id is None else staged_transitions_table
        extra = {} if run_id is None else {"run_id": run_id}
        inserted = 0
        for chunk in _chunks(transitions, ROW_BATCH):
            rows = [
                {
                    "ruleset": ruleset_ref,
                    "user_id": to_sql_text(tr.user_id),
                    "effective_time": tr.effective_time,
                    "revision": tr.revision,
                    "segments": _segments_text(tr.segments),
                    "emitted_at": tr.emitted_at,
                    "cause": tr.cause,
                    **extra,
                }
                for tr in chunk
            ]
            inserted += self._insert_batch(table, rows, "revision")
        return inserted

    def begin_transitions(self, ruleset_ref: str, run_id: str | None = None) -> str:
        """Start a replay's staged transitions of ``ruleset_ref``; returns the run id (fresh unless
        given). Deletes what unfinished replays of the rule set staged."""
        run_id = run_id or uuid.uuid4().hex
        st = staged_transitions_table
        run_transaction(self.engine, lambda conn: conn.execute(sa.delete(st).where(st.c.ruleset == ruleset_ref)))
        return run_id

    def publish_transitions(self, run_id: str, ruleset_ref: str) -> int:
        """Make replay ``run_id``'s staged transitions the whole published log of ``ruleset_ref``, in one
        transaction (the previous replay's transitions go); returns how many were published."""
        t, st = transitions_table, staged_transitions_table
        columns = ["ruleset", "user_id", "effective_time", "revision", "segments", "emitted_at", "cause"]

        def work(conn: Connection) -> int:
            conn.execute(sa.delete(t).where(t.c.ruleset == ruleset_ref))
            moved = conn.execute(
                sa.select(sa.func.count()).select_from(st).where(st.c.run_id == run_id)
            ).scalar_one()
            conn.execute(
                sa.insert(t).from_select(
                    columns, sa.select(*(st.c[name] for name in columns)).where(st.c.run_id == run_id)
                )
            )
            conn.execute(sa.delete(st).where(st.c.run_id == run_id))
            return int(moved)

        return run_transaction(self.engine, work)

    def read_transitions(self, ruleset_ref: str, user_id: str | None = None) -> list[Transition]:
        """Stored transitions of ``ruleset_ref`` (one user's, or all), sorted by user, time, revision."""
        t = transitions_table
        query = sa.select(t).where(t.c.ruleset == ruleset_ref)
        if user_id is not None:
            query = query.where(t.c.user_id == to_sql_text(user_id))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return sorted(
            Transition(
                from_sql_text(r.user_id),
                _segments_from(r.segments),
                r.effective_time,
                r.revision,
                r.emitted_at,
                r.cause,
            )
            for r in rows
        )

    # ---- dead letters --------------------------------------------------------------------------------

    def insert_dead_letters(self, source: str, rejections: Iterable[Rejection]) -> int:
        """Store dead-letter records from ``source`` (``ingest`` or ``stream``); a (source, seq,
        reason) already stored is left as it is. Returns how many were new."""
        if source not in DEAD_LETTER_SOURCES:
            choices = ", ".join(DEAD_LETTER_SOURCES)
            raise UsageError(f"dead-letter source must be one of {choices}, not {source!r}")
        now = self.clock()
        inserted = 0
        for chunk in _chunks(rejections, ROW_BATCH):
            rows = [
                {
                    "source": source,
                    "seq": rej.seq,
                    "reason": rej.reason,
                    "detail": to_sql_text(rej.detail),
                    "raw": to_sql_text(rej.raw),
                    "event_id": _opt_text(rej.event_id),
                    "user_id": _opt_text(rej.user_id),
                    "recorded_at": now,
                }
                for rej in chunk
            ]
            inserted += self._insert_batch(dead_letters_table, rows, "seq")
        return inserted

    def read_dead_letters(self, source: str | None = None) -> list[DeadLetter]:
        """Stored dead letters (of one source, or all), by source then seq then reason."""
        d = dead_letters_table
        query = sa.select(d)
        if source is not None:
            query = query.where(d.c.source == source)
        query = query.order_by(d.c.source, d.c.seq, d.c.reason)
        with self.engine.connect() as conn:
            return [
                DeadLetter(
                    r.source,
                    Rejection(
                        r.reason,
                        from_sql_text(r.detail),
                        r.seq,
                        from_sql_text(r.raw),
                        _opt_from(r.event_id),
                        _opt_from(r.user_id),
                    ),
                    r.recorded_at,
                )
                for r in conn.execute(query)
            ]


def _snapshot_values(
    ruleset_ref: str, as_of: int, rows: Iterable[Assignment], run: LegacyRun | None
) -> list[tuple[str, str]]:
    """(stored user id, segments text) of one as-of's snapshot; ``UsageError`` for a row of another
    as-of, a repeated user, or a run of another rule set or as-of."""
    values: list[tuple[str, str]] = []
    seen: set[str] = set()
    for row in rows:
        if row.as_of != as_of:
            raise UsageError(f"assignment at {row.as_of} given for as-of {as_of}")
        if row.user_id in seen:
            raise UsageError(f"user {row.user_id!r} twice in the snapshot at {as_of}")
        seen.add(row.user_id)
        values.append((to_sql_text(row.user_id), _segments_text(row.segments)))
    if run is not None and (run.ruleset, run.as_of) != (ruleset_ref, as_of):
        raise UsageError(f"run of {run.ruleset} at {run.as_of} given for {ruleset_ref} at {as_of}")
    return values


def _drop_event_indexes(conn: Connection) -> None:
    for index in events_table.indexes:
        index.drop(conn, checkfirst=True)


def _create_event_indexes(conn: Connection) -> None:
    for index in events_table.indexes:
        index.create(conn, checkfirst=True)


EVENT_COLUMNS = (
    "event_id",
    "user_id",
    "event_time",
    "arrival_time",
    "kind",
    "amount_micros",
    "merchant",
    "seq",
    "payload",
)
# unnest's arguments for a small PostgreSQL batch (``_load_rows``): one array parameter per column, typed as
# the events table declares it.
_PG_UNNEST = ", ".join(
    f"%s::{'bigint' if isinstance(events_table.c[name].type, sa.BigInteger) else 'text'}[]" for name in EVENT_COLUMNS
)


def _event_row(event: Event) -> tuple[Any, ...]:
    """The event's values in ``EVENT_COLUMNS`` order."""
    merchant = event.merchant
    return (
        to_sql_text(event.event_id),
        to_sql_text(event.user_id),
        event.event_time,
        event.arrival_time,
        event.kind,
        event.amount_micros if event.has_amount else None,
        None if merchant is None else to_sql_text(merchant),
        event.seq,
        _payload(event),
    )


def _event_from_row(row: Any) -> Event:
    body = _payload_decoder.decode(row.payload) if row.payload is not None else {}
    amount = row.amount_micros
    return Event(
        from_sql_text(row.event_id),
        from_sql_text(row.user_id),
        int(row.event_time),
        row.kind,
        0 if amount is None else int(amount),
        int(row.arrival_time),
        _opt_from(row.merchant),
        int(row.seq),
        amount is not None,
        body.get("attrs"),
        body.get("extra"),
    )


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


__all__ = [
    "DEAD_LETTER_SOURCES",
    "DeadLetter",
    "LegacyRun",
    "Publication",
    "SqlStore",
    "StoredRuleSet",
    "assignments_table",
    "dead_letters_table",
    "events_table",
    "from_sql_text",
    "legacy_runs_table",
    "metadata",
    "publications_table",
    "rulesets_table",
    "staged_assignments_table",
    "staged_runs_table",
    "staged_transitions_table",
    "to_sql_text",
    "transitions_table",
]

