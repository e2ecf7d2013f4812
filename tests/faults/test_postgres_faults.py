"""PostgreSQL faults during ``segshadow legacy run``, through the real command line in a subprocess.

Each test first publishes a complete run in a throwaway database of its own
(``CREATE DATABASE``, dropped after), then starts a second run with the CLI and
injects one fault: the run's backend terminated (``pg_terminate_backend``) at the
start (blocked on the events table), in the middle (while an as-of statement runs,
once several as-ofs are staged) and at the end (blocked in the switch that
publishes); the database dropped mid-run (``DROP DATABASE ... WITH (FORCE)``); a
table lock held past ``lock_timeout``. Each asserts the documented outcome: exit 1,
exactly one line on stderr and no traceback, ``--out`` not written, and the
published rows (what the router's SQL fallback reads) still exactly the previous
complete run, with nothing of the failed run among them.

Needs ``SEGSHADOW_DATABASE_URL`` pointing at PostgreSQL (as ``.ci/run`` sets it);
skipped, saying so, without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from legacy_batch.job import run_legacy
from rollout.router import LegacySqlReader
from segments.config import DATABASE_ENV
from segments.outputs import Assignment
from segments.rules import load_ruleset
from segments.sqlstore import Publication, SqlStore

pytestmark = pytest.mark.slow

APP = "segshadow-fault-test"
BASE = 1_704_067_200_000  # 2024-01-01T00:00:00Z
RULES = load_ruleset("clickstream")
SERVER = os.environ.get(DATABASE_ENV, "")


def _driver(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def _with_database(url: str, name: str) -> str:
    head, _, query = url.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


@dataclass
class FaultDb:
    """A throwaway database: its URL for segshadow, and an admin engine on the server's own database."""

    name: str
    url: str
    admin: sa.Engine

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        with self.admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            result = conn.exec_driver_sql(statement)
            return [tuple(row) for row in result] if result.returns_rows else []

    def backends(self, where: str = "TRUE") -> list[int]:
        return [
            int(pid)  # type: ignore[call-overload]
            for (pid,) in self.sql(
                f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.name}' "
                f"AND application_name = '{APP}' AND {where}"
            )
        ]

    def terminate(self, where: str = "TRUE") -> int:
        return sum(bool(self.sql(f"SELECT pg_terminate_backend({pid})")[0][0]) for pid in self.backends(where))

    def staged_as_ofs(self) -> int:
        try:
            with sa.create_engine(_driver(self.url), poolclass=sa.pool.NullPool).connect() as conn:
                return int(conn.exec_driver_sql("SELECT count(*) FROM segshadow_legacy_staged_runs").scalar_one())
        except sa.exc.DBAPIError:
            return 0


@pytest.fixture
def fault_db() -> Iterator[FaultDb]:
    if not SERVER.startswith(("postgresql://", "postgres://")):
        pytest.skip(f"the PostgreSQL fault suite needs {DATABASE_ENV}=postgresql://... (CI sets it)")
    name = f"segshadow_fault_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(_driver(SERVER), poolclass=sa.pool.NullPool)
    db = FaultDb(name, _with_database(SERVER, name), admin)
    db.sql(f'CREATE DATABASE "{name}"')
    try:
        yield db
    finally:
        db.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _events(path: Path, users: int, minutes: int, tag: str) -> Path:
    """A view, and for every third user a purchase, per user and minute: enough for every as-of to
    hold a few hundred users; ``tag`` keeps the runs' event ids and users apart."""
    lines = []
    for minute in range(minutes):
        for user in range(users):
            t = BASE + minute * 60_000 + user
            lines.append({"event_id": f"{tag}-{minute}-{user}", "user_id": f"{tag}{user}", "event_time": t,
                          "kind": "view"})  # fmt: skip
            if user % 3 == 0:
                lines.append({"event_id": f"{tag}-{minute}-{user}-p", "user_id": f"{tag}{user}",
                              "event_time": t, "kind": "purchase", "amount": "120"})  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Previous:
    publication: Publication
    rows: list[Assignment]


def _publish_a_complete_run(db: FaultDb, tmp_path: Path) -> Previous:
    with SqlStore.open(db.url) as store:
        run_legacy(_events(tmp_path / "first.jsonl", 40, 20, "old"), RULES, 300_000, tmp_path / "first.out", store)
        publication = store.publication(RULES.ref)
        assert publication is not None
        return Previous(publication, store.read_assignments(RULES.ref))


def _start_run(db: FaultDb, tmp_path: Path, every: str = "5s", **query: str) -> tuple[subprocess.Popen[str], Path]:
    events = _events(tmp_path / "second.jsonl", 60, 40, "new")
    params = "&".join(f"{k}={v}" for k, v in {"application_name": APP, **query}.items())
    url = db.url + ("&" if "?" in db.url else "?") + params
    out = tmp_path / "second.out"
    argv = [sys.executable, "-m", "segshadow.cli", "legacy", "run", "--events", str(events), "--rules", "clickstream",
            "--every", every, "--out", str(out), "--database-url", url]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("SEGSHADOW_REDIS_URL",)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, out


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], what: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}: {err[-500:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, [line for line in err.splitlines() if line.strip()]


def _assert_failed_cleanly(code: int, err: list[str], out: Path, *phrases: str) -> str:
    assert code == 1, err
    assert len(err) == 1, err
    line = err[0]
    print(line)  # shown by pytest -rP: the fault suite's table in the notes comes from these
    assert "Traceback" not in line and line.startswith("segshadow: error: legacy run: "), line
    for phrase in phrases:
        assert phrase in line, line
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    return line


def _assert_previous_run_stays(db: FaultDb, previous: Previous) -> None:
    with SqlStore.open(db.url) as store:
        assert store.publication(RULES.ref) == previous.publication
        assert store.read_assignments(RULES.ref) == previous.rows
        newest = max(a.as_of for a in previous.rows)
        reader = LegacySqlReader(store.engine, RULES.ref)
        assert reader.latest("old0") == (("high_value",), newest)
        assert reader.latest("new0") == ((), newest), "nothing of the failed run is served"


def test_backend_terminated_at_the_start(fault_db: FaultDb, tmp_path: Path) -> None:
    """The run is blocked on the events table (a lock we hold) when its backend is terminated."""
    previous = _publish_a_complete_run(fault_db, tmp_path)
    engine = sa.create_engine(_driver(fault_db.url), poolclass=sa.pool.NullPool)
    with engine.connect() as locker:
        locker.begin()
        locker.exec_driver_sql("LOCK TABLE segshadow_events IN ACCESS EXCLUSIVE MODE")
        proc, out = _start_run(fault_db, tmp_path)
        _wait_for(lambda: bool(fault_db.backends("wait_event_type = 'Lock'")), proc, "the run waits for the lock")
        assert fault_db.terminate("wait_event_type = 'Lock'") == 1
        code, err = _finish(proc)
        locker.rollback()
    _assert_failed_cleanly(code, err, out, "terminated the connection", "while emptying and loading the events table",
                           f"nothing of this run is published; the previous complete run (id "
                           f"{previous.publication.run_id[:12]}")  # fmt: skip
    _assert_previous_run_stays(fault_db, previous)


def test_backend_terminated_in_the_middle(fault_db: FaultDb, tmp_path: Path) -> None:
    """Once a few as-ofs are staged, the run's backend is terminated inside an as-of's transaction.

    The run is held there by a lock we take on the staged runs' table: terminating
    whichever backend looks active is a race, since a statement that has just finished
    leaves an idle pooled connection, which the pool's pre-ping replaces unnoticed
    (nothing is lost then, and the run rightly completes).
    """
    previous = _publish_a_complete_run(fault_db, tmp_path)
    engine = sa.create_engine(_driver(fault_db.url), poolclass=sa.pool.NullPool)
    proc, out = _start_run(fault_db, tmp_path)
    _wait_for(lambda: fault_db.staged_as_ofs() >= 3, proc, "three as-ofs are staged")
    with engine.connect() as locker:
        locker.begin()
        locker.exec_driver_sql("LOCK TABLE segshadow_legacy_staged_runs IN ACCESS EXCLUSIVE MODE")
        _wait_for(lambda: bool(fault_db.backends("wait_event_type = 'Lock'")), proc, "an as-of waits for the lock")
        assert fault_db.terminate("wait_event_type = 'Lock'") == 1
        code, err = _finish(proc)
        locker.rollback()
    line = _assert_failed_cleanly(code, err, out, " at as-of ", "nothing of this run is published")
    assert "terminated the connection" in line or "connection to the server was lost" in line, line
    done, total = line.split(" at as-of ", 1)[1].split("(", 1)[1].split(")", 1)[0].split(" of ")
    assert 3 < int(done) < int(total), line
    _assert_previous_run_stays(fault_db, previous)


def test_backend_terminated_at_the_end(fault_db: FaultDb, tmp_path: Path) -> None:
    """Every as-of is staged; the run is blocked in the switch (we hold the published table) when its
    backend is terminated: the switch never commits."""
    previous = _publish_a_complete_run(fault_db, tmp_path)
    engine = sa.create_engine(_driver(fault_db.url), poolclass=sa.pool.NullPool)
    with engine.connect() as locker:
        locker.begin()
        locker.exec_driver_sql("LOCK TABLE segshadow_legacy_assignments IN ACCESS EXCLUSIVE MODE")
        proc, out = _start_run(fault_db, tmp_path, every="1m")
        _wait_for(lambda: bool(fault_db.backends("wait_event_type = 'Lock'")), proc, "the switch waits for the lock")
        assert fault_db.staged_as_ofs() == 41
        assert fault_db.terminate("wait_event_type = 'Lock'") == 1
        code, err = _finish(proc)
        locker.rollback()
    _assert_failed_cleanly(code, err, out, "terminated the connection", "while publishing the run",
                           "the publication was not confirmed")  # fmt: skip
    _assert_previous_run_stays(fault_db, previous)


def test_database_dropped_in_the_middle(fault_db: FaultDb, tmp_path: Path) -> None:
    """``DROP DATABASE ... WITH (FORCE)`` once a few as-ofs are staged: a clean failure, nothing written."""
    _publish_a_complete_run(fault_db, tmp_path)
    proc, out = _start_run(fault_db, tmp_path)
    _wait_for(lambda: fault_db.staged_as_ofs() >= 3, proc, "three as-ofs are staged")
    fault_db.sql(f'DROP DATABASE "{fault_db.name}" WITH (FORCE)')
    code, err = _finish(proc)
    line = _assert_failed_cleanly(code, err, out, "nothing of this run is published")
    # which of the three the run meets depends on where it is when the server ends its session
    told = ("terminated the connection", "does not exist", "the connection to the server was lost")
    assert any(words in line for words in told), line


def test_a_table_lock_held_past_the_timeout(fault_db: FaultDb, tmp_path: Path) -> None:
    """Another session holds ``LOCK TABLE segshadow_events`` longer than the run's ``lock_timeout``."""
    previous = _publish_a_complete_run(fault_db, tmp_path)
    engine = sa.create_engine(_driver(fault_db.url), poolclass=sa.pool.NullPool)
    with engine.connect() as locker:
        locker.begin()
        locker.exec_driver_sql("LOCK TABLE segshadow_events IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        proc, out = _start_run(fault_db, tmp_path, lock_timeout="2s")
        code, err = _finish(proc)
        elapsed = time.monotonic() - started
        locker.rollback()
    _assert_failed_cleanly(code, err, out, "PostgreSQL lock wait exceeded 2s",
                           "while emptying and loading the events table (segshadow_events)",
                           "nothing of this run is published")  # fmt: skip
    assert elapsed < 15
    _assert_previous_run_stays(fault_db, previous)
