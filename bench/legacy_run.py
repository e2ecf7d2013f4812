"""Benchmark: ``segshadow legacy run`` over about 1M events of 100K users.

Generates the clickstream workload (``segments.workloads``, seeded) unless ``--events``
is given, then runs the real command in a child process on SQLite (a fresh file) and,
when ``SEGSHADOW_DATABASE_URL`` names a PostgreSQL server, on PostgreSQL in a private
schema dropped afterwards. For each it prints the total wall time, the stage times the
job records in its ``.meta.json`` (parse, load into SQL, per-as-of query median and
max), and the child's CPU time and peak RSS (``os.wait4`` rusage, so each backend is
measured alone; CPU time is the steadier figure on a shared machine). Redis is left out unless ``--redis-url`` is given.

    .venv/bin/python bench/legacy_run.py [--events FILE | --users 100000 --minutes 60 --seed 7] [--rules clickstream]
                                         [--every 5m] [--redis-url URL] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from segments.config import DATABASE_ENV, REDIS_ENV
from segments.db import normalize_url
from segments.outputs import read_meta
from segments.workloads import write_workload


def _run_cli(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Run ``segshadow`` with ``args``; (wall s, CPU s, peak RSS in MiB) of that child alone."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "segshadow.cli", *args], env=env)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"segshadow {' '.join(args)} failed with exit code {child.returncode}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024


def _report(name: str, elapsed: float, cpu: float, rss_mib: int, out: Path) -> dict[str, object]:
    meta = read_meta(out)
    timing = meta["timing_ms"]
    runs = timing["run_per_as_of"]
    figures = {
        "backend": name,
        "events_accepted": meta["counts"]["accepted"],
        "lines": meta["counts"]["lines"],
        "as_ofs": meta["as_of_count"],
        "assignments": meta["assignments"],
        "total_s": round(elapsed, 2),
        "client_cpu_s": round(cpu, 2),
        "parse_s": round(timing["parse"] / 1000, 2),
        "load_s": round(timing["load"] / 1000, 2),
        "query_median_ms": round(timing["query_median"], 1),
        "as_of_run_median_ms": round(statistics.median(runs), 1) if runs else 0.0,
        "as_of_run_max_ms": round(max(runs), 1) if runs else 0.0,
        "as_ofs_total_s": round(sum(runs) / 1000, 2),
        "peak_rss_mib": rss_mib,
    }
    print(json.dumps(figures))
    return figures


def _postgres_schema(base: str) -> tuple[str, sa.Engine, str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(normalize_url(base))
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", engine, schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=Path, help="an existing events file (default: generate one)")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rules", default="clickstream")
    parser.add_argument("--every", default="5m")
    parser.add_argument("--redis-url", help="also write the legacy namespace to this Redis")
    parser.add_argument("--workdir", type=Path, help="where files go (default: a temporary directory)")
    opts = parser.parse_args()

    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="segshadow-bench-legacy-"))
    workdir.mkdir(parents=True, exist_ok=True)
    events = opts.events
    if events is None:
        events = workdir / "events.jsonl"
        start = time.perf_counter()
        counts = write_workload("clickstream", events, opts.users, opts.minutes, opts.seed)
        print(json.dumps({"generated": str(events), "seconds": round(time.perf_counter() - start, 1), **counts}))

    env = {k: v for k, v in os.environ.items() if k not in (DATABASE_ENV, REDIS_ENV)}
    common = ["legacy", "run", "--events", str(events), "--rules", opts.rules, "--every", opts.every]
    if opts.redis_url:
        common += ["--redis-url", opts.redis_url]

    out = workdir / "legacy-sqlite.jsonl"
    database = workdir / "legacy.db"
    database.unlink(missing_ok=True)
    elapsed, cpu, rss = _run_cli([*common, "--out", str(out), "--database-url", f"sqlite:///{database}"], env)
    results = [_report("sqlite", elapsed, cpu, rss, out)]

    server = os.environ.get(DATABASE_ENV, "")
    if server.startswith(("postgresql://", "postgres://")):
        url, engine, schema = _postgres_schema(server)
        try:
            out = workdir / "legacy-postgresql.jsonl"
            elapsed, cpu, rss = _run_cli([*common, "--out", str(out), "--database-url", url], env)
            results.append(_report("postgresql", elapsed, cpu, rss, out))
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            engine.dispose()
        same = (workdir / "legacy-sqlite.jsonl").read_bytes() == out.read_bytes()
        ratio = float(str(results[1]["total_s"])) / float(str(results[0]["total_s"]))
        print(json.dumps({"outputs_identical": same, "postgresql_over_sqlite": round(ratio, 2)}))


if __name__ == "__main__":
    main()
