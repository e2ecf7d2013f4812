"""Bounded waits: every engine gets its timeouts, settable in the URL (segments.db)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from segments.db import DbTimeouts, make_engine, split_timeouts, timeouts_of
from segments.errors import UsageError


def test_timeout_keys_leave_the_url_and_the_rest_stays() -> None:
    url, timeouts = split_timeouts("postgresql://u@h:5432/db?lock_timeout=2s&sslmode=disable&statement_timeout=1h")
    assert url == "postgresql://u@h:5432/db?sslmode=disable"
    assert timeouts == DbTimeouts(lock_ms=2_000, statement_ms=3_600_000)
    assert split_timeouts("sqlite:///x.db") == ("sqlite:///x.db", DbTimeouts())


def test_a_timeout_that_is_not_a_duration_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="bad duration"):
        make_engine("sqlite:///x.db?busy_timeout=soon", check=False)


def test_every_engine_waits_a_bounded_time(database_url: str) -> None:
    """The server's session really has the lock and statement timeouts; SQLite its busy timeout."""
    sep = "&" if "?" in database_url else "?"
    engine = make_engine(f"{database_url}{sep}lock_timeout=3s&statement_timeout=7s&busy_timeout=4s")
    try:
        assert timeouts_of(engine) == DbTimeouts(lock_ms=3_000, statement_ms=7_000, busy_ms=4_000)
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 4_000
            else:
                assert conn.execute(sa.text("SHOW lock_timeout")).scalar() == "3s"
                assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "7s"
    finally:
        engine.dispose()


def test_sqlite_files_log_ahead_and_only_the_rollout_store_syncs_every_commit(tmp_path: Path) -> None:
    """The segment store trades the last commits on power loss for its writers' latency; the decision log does not."""
    from rollout.store import RolloutStore

    def pragmas(engine: sa.Engine) -> tuple[str, int]:
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar_one()
            return str(mode), int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())

    segments = make_engine(f"sqlite:///{tmp_path / 'segments.db'}")
    assert pragmas(segments) == ("wal", 1)  # NORMAL
    rollout = RolloutStore.open(f"sqlite:///{tmp_path / 'rollout.db'}")
    assert pragmas(rollout.engine) == ("wal", 2)  # FULL
    rollout.close()
    segments.dispose()
