"""SQLAlchemy engines for the three supported backends, and the retry that CockroachDB needs.

URLs are accepted as users write them: ``sqlite:///path``, ``postgresql://...``
(driven by psycopg 3) and ``cockroachdb://...`` (sqlalchemy-cockroachdb over
psycopg). Transactions that may hit a serialization conflict go through
``run_transaction``, which on CockroachDB uses the dialect's own retry loop and
elsewhere runs once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from segments.errors import StoreUnavailable, UsageError

T = TypeVar("T")


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


def make_engine(url: str, check: bool = True) -> Engine:
    """An engine for ``url``; with ``check``, connect once and raise ``StoreUnavailable`` if that fails."""
    if not url or "://" not in url:
        raise UsageError(f"not a database URL: {url!r}")
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(normalize_url(url), connect_args={"timeout": 30})
            if ":memory:" not in url and url.rstrip("/") != "sqlite:":
                sa.event.listen(engine, "connect", _sqlite_wal)
        else:
            engine = sa.create_engine(normalize_url(url), pool_pre_ping=True, connect_args={"connect_timeout": 5})
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ValueError) as exc:
        raise UsageError(f"unusable database URL: {exc}") from None
    if check:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            engine.dispose()
            raise StoreUnavailable("the database", url, exc.orig if hasattr(exc, "orig") else exc) from None
    return engine


def _sqlite_wal(dbapi_connection: object, _record: object) -> None:
    """Write-ahead logging: readers (legacy's as-of queries) no longer block the live writers and back."""
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def run_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work`` in one transaction; on CockroachDB retry it on serialization conflicts."""
    if backend(engine) == "cockroachdb":
        from sqlalchemy_cockroachdb import run_transaction as crdb_run

        return crdb_run(engine, work)
    with engine.begin() as conn:
        return work(conn)
