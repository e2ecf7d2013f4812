"""SQLAlchemy engines for the three supported backends, and the retry that CockroachDB needs.

URLs are accepted as users write them: ``sqlite:///path``, ``postgresql://...``
(driven by psycopg 3) and ``cockroachdb://...`` (sqlalchemy-cockroachdb over
psycopg). Transactions that may hit a serialization conflict go through
``run_transaction``, which on CockroachDB uses the dialect's own retry loop and
elsewhere runs once.

**Bounded waits.** Every engine waits a bounded time, so a lock held elsewhere or a
server that stops answering is a failure with a reason, never a hang
(``DbTimeouts``; defaults in brackets):

- PostgreSQL and CockroachDB: ``connect_timeout`` [5 s], and the session settings
  ``lock_timeout`` [10 s] and ``statement_timeout`` [10 min] sent as libpq
  ``options`` at connect (CockroachDB reads the same ``-c`` session variables);
  TCP keepalives notice a server that vanished without closing the connection.
- SQLite: the busy timeout [10 s] (how long a writer waits for another's lock).

**SQLite durability.** A file database runs in write-ahead-log mode. The segment
store (events, as-ofs, transitions) syncs with ``synchronous=NORMAL``: a commit
survives the process being killed, and the file is never corrupted, but an
operating-system crash or power loss can roll back the last commits. With the
default ``FULL`` every commit waited for an fsync, and the live run's three
writers (the dual-writer, the legacy job, the stream's transitions sink) queued
on those: the stream's freshness p99 at 300 events/s was 66 to 207 ms on a quiet
2-core machine, 28 to 34 ms with ``NORMAL``. The rollout store (the decision log)
asks ``durable=True`` and keeps ``FULL``. Power-loss durability of the segment
store is PostgreSQL's job, the production backend.

Each is set in the database URL's query, in the duration syntax of the command
line: ``postgresql://host/db?lock_timeout=30s&statement_timeout=1h``,
``sqlite:///file.db?busy_timeout=2s`` (``0`` turns a PostgreSQL timeout off). These
keys are taken out of the URL before it reaches the driver; ``connect_timeout``
(seconds, libpq's own key) and any ``options`` of the URL are kept. A wait beyond a
bound raises the driver's error; ``describe_db_error`` words it in one line (e.g.
"PostgreSQL lock wait exceeded 10s") for the ``RunFailed`` of the job that hit it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from segments.durations import format_duration_ms, parse_duration_ms
from segments.errors import StoreUnavailable, UsageError

T = TypeVar("T")
TIMEOUT_KEYS = ("lock_timeout", "statement_timeout", "busy_timeout")


@dataclass(frozen=True)
class DbTimeouts:
    """How long an engine waits (see the module doc); ``0`` turns a PostgreSQL timeout off."""

    connect_s: int = 5
    lock_ms: int = 10_000
    statement_ms: int = 600_000
    busy_ms: int = 10_000


_timeouts: weakref.WeakKeyDictionary[Engine, DbTimeouts] = weakref.WeakKeyDictionary()


def split_timeouts(url: str) -> tuple[str, DbTimeouts]:
    """``url`` without segshadow's timeout keys, and the ``DbTimeouts`` they give (defaults for the
    others); ``UsageError`` for a value that is not a duration."""
    if "?" not in url or not any(key in url for key in TIMEOUT_KEYS):
        return url, DbTimeouts()
    parsed = sa.engine.make_url(url)
    values: dict[str, int] = {}
    for key in TIMEOUT_KEYS:
        raw = parsed.query.get(key)
        if raw is None:
            continue
        text = raw if isinstance(raw, str) else raw[-1]
        values[key.replace("_timeout", "_ms")] = parse_duration_ms(text)
    clean = parsed.difference_update_query(TIMEOUT_KEYS).render_as_string(hide_password=False)
    return clean, DbTimeouts(**values)


def timeouts_of(engine: Engine) -> DbTimeouts:
    """The timeouts ``make_engine`` gave ``engine`` (the defaults for an engine made elsewhere)."""
    return _timeouts.get(engine, DbTimeouts())


def normalize_url(url: str) -> str:
    """Give each backend its driver: psycopg 3 for PostgreSQL and CockroachDB."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("cockroachdb://"):
        return "cockroachdb+psycopg://" + url.split("://", 1)[1]
    return url


def backend(engine: Engine) -> str:
    """``sqlite``, ``postgresql`` or ``cockroachdb``."""
    return str(engine.dialect.name)


def make_engine(url: str, check: bool = True, durable: bool = False) -> Engine:
    """An engine for ``url`` with bounded waits (module doc); with ``check``, connect once and raise
    ``StoreUnavailable`` if that fails. ``UsageError`` for a URL or timeout that cannot be used.
    ``durable`` keeps SQLite's ``synchronous=FULL`` (module doc, 'SQLite durability')."""
    if not url or "://" not in url:
        raise UsageError(f"not a database URL: {url!r}")
    try:
        driver_url, timeouts = split_timeouts(url)
        if url.startswith("sqlite"):
            engine = sa.create_engine(normalize_url(driver_url), connect_args={"timeout": timeouts.busy_ms / 1000})
            if ":memory:" not in url and url.rstrip("/") != "sqlite:":
                sa.event.listen(engine, "connect", _sqlite_wal_full if durable else _sqlite_wal)
        else:
            engine = sa.create_engine(
                normalize_url(driver_url), pool_pre_ping=True, connect_args=_server_args(driver_url, timeouts)
            )
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ValueError) as exc:
        raise UsageError(f"unusable database URL: {exc}") from None
    _timeouts[engine] = timeouts
    if check:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            engine.dispose()
            raise StoreUnavailable("the database", url, exc.orig if hasattr(exc, "orig") else exc) from None
    return engine


def _server_args(url: str, timeouts: DbTimeouts) -> dict[str, object]:
    """libpq connection arguments for PostgreSQL and CockroachDB: the timeouts and keepalives."""
    query = sa.engine.make_url(url).query
    options = f"-c lock_timeout={timeouts.lock_ms} -c statement_timeout={timeouts.statement_ms}"
    given = query.get("options")
    if given:  # the URL's own options come last, so a setting there wins
        options = f"{options} {given if isinstance(given, str) else ' '.join(given)}"
    args: dict[str, object] = {
        "options": options,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    if "connect_timeout" not in query:
        args["connect_timeout"] = timeouts.connect_s
    return args


def db_errors() -> tuple[type[BaseException], ...]:
    """What a database call raises when the server or the file fails: SQLAlchemy's errors and the
    drivers' own (psycopg's COPY and SQLite's executemany bypass SQLAlchemy's wrapping)."""
    import sqlite3

    import psycopg

    return (sa.exc.SQLAlchemyError, psycopg.Error, sqlite3.Error)


_SQLSTATES = {
    "57P01": "the server terminated the connection (pg_terminate_backend or a shutdown)",
    "57P02": "the server terminated the connection (crash shutdown)",
    "57P03": "the server is not accepting connections",
    "3D000": "the database does not exist (dropped?)",
    "53300": "the server has too many connections",
    "40001": "a serialization conflict outlasted the retries",
}


def describe_db_error(exc: BaseException, engine: Engine | None = None) -> str:
    """One line saying what failed in a database call: a timeout (naming its bound), a lost
    connection, a dropped database, or the driver's first line."""
    orig = getattr(exc, "orig", None) or exc
    timeouts = timeouts_of(engine) if engine is not None else DbTimeouts()
    name = "PostgreSQL" if engine is None or backend(engine) == "postgresql" else "CockroachDB"
    sqlstate = getattr(orig, "sqlstate", None) or ""
    first = (str(orig).strip().splitlines() or [""])[0]
    if sqlstate == "55P03" or "lock timeout" in first:
        return f"{name} lock wait exceeded {format_duration_ms(timeouts.lock_ms)}"
    if sqlstate == "57014" and "statement timeout" in first:
        return f"{name} statement exceeded {format_duration_ms(timeouts.statement_ms)}"
    if sqlstate in _SQLSTATES:
        return f"{name}: {_SQLSTATES[sqlstate]}"
    lost = ("server closed the connection", "connection is closed", "connection is lost", "terminating connection")
    if sqlstate.startswith("08") or any(words in first for words in lost):
        return f"{name}: the connection to the server was lost ({first[:120]})"
    if "database is locked" in first:
        return f"SQLite busy timeout exceeded {format_duration_ms(timeouts.busy_ms)} (database is locked)"
    return f"{type(orig).__name__}: {first[:200]}"


def _sqlite_wal(dbapi_connection: object, _record: object, synchronous: str = "NORMAL") -> None:
    """Write-ahead logging: readers (legacy's as-of queries) no longer block the live writers and back;
    ``synchronous`` as the module doc says."""
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.close()


def _sqlite_wal_full(dbapi_connection: object, record: object) -> None:
    _sqlite_wal(dbapi_connection, record, "FULL")


def run_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work`` in one transaction; on CockroachDB retry it on serialization conflicts."""
    if backend(engine) == "cockroachdb":
        from sqlalchemy_cockroachdb import run_transaction as crdb_run

        return crdb_run(engine, work)
    with engine.begin() as conn:
        return work(conn)
