"""Benchmark of the comparator's bulk path: 10M (user, as-of) pairs with 1% mismatches, causes included.

Usage: ``.venv/bin/python bench/compare.py [--users 100000] [--as-ofs 100] [--repeat 3] [--skip-files] [--dir DIR]``
(``--stage NAME --dir DIR`` runs one stage; the benchmark calls itself that way).

Synthetic data, seeded: every user holds a non-empty set at every as-of (users x
as-ofs pairs); each user's set changes in about half of the 5-minute periods (one
stream transition, caused by one event, each); legacy is the stream's timeline
sampled at the as-ofs with 1% of the pairs altered; for those, events are planted
that make most of them late arrivals, drops as too late, or both (the rest stay
unexplained). Each stage runs in its own process so that its peak RSS is its own:

1. ``engine``: inputs as Arrow tables and event columns in memory, as the readers
   hand them over (user ids, segment sets, revisions, causes and as-ofs dictionary-encoded:
   ``compare.frames.compact``) -> ``compare.compare_inputs`` (alignment, causes,
   per-segment counts, latency sketches, sketch evidence); median of ``--repeat``
   runs; then writing ``mismatches.jsonl``, ``parity.json``, ``report.html`` and
   ``summary.md``.
2. ``files``: the same from the two sides' JSON Lines files (``read_legacy`` /
   ``read_stream``, the real readers) -> compare -> outputs.
3. ``deepdiff``: the naive baseline, ``DeepDiff`` over the two sides' assignment
   dicts for a 200K-pair subset; pairs/s scaled to the whole.
4. ``events``: ``load_event_log`` + ``EventFrame.from_log`` on a real workload file,
   the per-event cost of loading an event log that is not already in memory.

Prints pairs/s, peak RSS per stage and the ratio to the baseline. Stages run with
``MIMALLOC_PURGE_DELAY=0`` (unless set): Arrow's default pool here is mimalloc,
which otherwise keeps freed pages a while, so RSS would count memory no longer in use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compare.comparison import compare_inputs
from compare.frames import EventFrame, decoded
from compare.inputs import ComparisonInputs, DeadLetters, Schedule, read_legacy, read_stream
from compare.report import write_outputs
from segments.lateness import GateParams
from segments.rules import load_ruleset

T0 = 1_704_067_200_000
EVERY = 300_000
MINUTE = 60_000
SEED = 20240101
CLICK = load_ruleset("clickstream")
SETS = pa.array([[], ["high_value"], ["window_shopper"], ["high_value", "window_shopper"]], pa.list_(pa.string()))


def peak_rss_mb() -> float:
    """The process's peak resident set size so far (since start, or since ``reset_peak``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Start measuring the peak RSS afresh (Linux: ``/proc/self/clear_refs``); False when not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _coded(codes: np.ndarray, values: pa.Array) -> pa.DictionaryArray:
    """``values.take(codes)`` as a dictionary column, with the narrowest index type that holds ``codes``."""
    small = np.int8 if len(values) <= 127 else np.int16 if len(values) <= 32767 else np.int32
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(small)), values)


class Synthetic:
    """The seeded workload: Arrow tables for both sides and the event columns."""

    def __init__(self, users: int, as_ofs: int, tables: bool = True) -> None:
        rng = np.random.default_rng(SEED)
        self.users, self.as_ofs = users, as_ofs
        self.schedule = T0 + EVERY * np.arange(1, as_ofs + 1, dtype=np.int64)
        names = pc.binary_join_element_wise("u", pc.cast(pa.array(np.arange(users)), pa.string()), "")
        changes = rng.random((users, as_ofs)) < 0.5
        changes[:, 0] = True
        value = rng.integers(1, 4, (users, as_ofs), dtype=np.uint8)
        tu, tk = np.nonzero(changes)
        del changes
        n = len(tu)
        eff = self.schedule[tk] - EVERY + 1 + rng.integers(0, EVERY - 2_000, n)
        arrival = eff + rng.integers(0, 1_000, n)
        emitted = arrival + rng.integers(1, 20, n)
        tmask = value[tu, tk]
        order = np.argsort(eff, kind="stable")  # the stream writes in emission order
        # the columns as the readers hand them over (``compare.frames.compact``): ids, sets and causes
        # dictionary-encoded
        self.stream = pa.table({}) if not tables else pa.table(
            {
                "user_id": _coded(tu[order], names),
                "segments": _coded(tmask[order], SETS),
                "effective_time": pa.array(eff[order]),
                "revision": _coded(np.zeros(n, dtype=np.int8), pa.array([1])),
                "emitted_at": pa.array(emitted[order]),
                "cause": _coded(np.zeros(n, dtype=np.int8), pa.array(["event"])),
            }
        )
        # legacy: the timeline sampled at the as-ofs (the latest change at or before each), 1% altered
        index = np.zeros((users, as_ofs), dtype=np.int32)
        index[tu, tk] = tk.astype(np.int32)
        np.maximum.accumulate(index, axis=1, out=index)
        sampled = np.take_along_axis(value, index, axis=1).ravel()
        del index, value
        cells = users * as_ofs
        altered = np.flatnonzero(rng.random(cells) < 0.01)
        legacy_mask = sampled
        legacy_mask[altered] ^= rng.integers(1, 4, len(altered), dtype=np.uint8)
        keep = np.flatnonzero(legacy_mask != 0)
        self.legacy = pa.table({}) if not tables else pa.table(
            {
                "as_of": _coded(keep % as_ofs, pa.array(self.schedule)),
                "user_id": _coded(keep // as_ofs, names),
                "segments": _coded(legacy_mask[keep], SETS),
            }
        )
        del legacy_mask, keep
        # planted events behind the altered pairs
        au, ak = altered // as_ofs, altered % as_ofs
        t = self.schedule[ak]
        draw = rng.random(len(altered))
        late = draw < 0.5
        dropped = (draw >= 0.4) & (draw < 0.8)
        lu, lt = au[late], t[late] - rng.integers(1, 9 * MINUTE, int(late.sum()))
        du, dt = au[dropped], t[dropped] - rng.integers(1, 9 * MINUTE, int(dropped.sum()))
        event_user = np.concatenate([tu, lu, du])
        event_time = np.concatenate([eff, lt, dt])
        event_arrival = np.concatenate([arrival, t[late] + 30_000, dt + 500])
        too_late = np.concatenate([np.zeros(n + len(lu), dtype=np.bool_), np.ones(len(du), dtype=np.bool_)])
        arrival_order = np.argsort(event_arrival, kind="stable")  # an event log is in arrival order
        event_user, event_time = event_user[arrival_order], event_time[arrival_order]
        event_arrival, too_late = event_arrival[arrival_order], too_late[arrival_order]
        count = len(event_user)
        kinds = pa.array(["view", "purchase"])
        self.events = EventFrame(
            event_id=pc.binary_join_element_wise("e", pc.cast(pa.array(np.arange(count)), pa.string()), ""),
            user_id=_coded(event_user, names),
            kind=_coded(rng.integers(0, 2, count), kinds),
            event_time=event_time,
            arrival_time=event_arrival,
            too_late=too_late,
            relevant=np.ones(count, dtype=np.bool_),
            fraud=np.zeros(count, dtype=np.bool_),
            labelled=False,
        )
        self.altered = len(altered)

    def inputs(self, legacy: pa.Table | None = None, stream: pa.Table | None = None) -> ComparisonInputs:
        return ComparisonInputs(
            ruleset=CLICK,
            events_sha256="0" * 64,
            events=self.events,
            schedule=Schedule(self.schedule, np.zeros(self.as_ofs), EVERY, False),
            params=GateParams(),
            legacy=self.legacy if legacy is None else legacy,
            stream=self.stream if stream is None else stream,
            dead_letters=DeadLetters(frozenset(), 0, "synthetic"),
        )


def _timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def stage_engine(args: argparse.Namespace) -> dict[str, object]:
    data = Synthetic(args.users, args.as_ofs)
    inputs = data.inputs()
    generated_peak = peak_rss_mb()
    inputs_rss = rss_mb()
    reset_peak()
    seconds = []
    cpu = []
    comparison = None
    for _ in range(args.repeat):
        comparison = None  # the previous run's result is not part of this run's peak
        started = time.process_time()
        comparison, elapsed = _timed(lambda: compare_inputs(inputs))
        cpu.append(time.process_time() - started)
        seconds.append(elapsed)
    assert comparison is not None
    result = comparison.result
    compare_peak = peak_rss_mb()
    _, write_s = _timed(lambda: write_outputs(Path(args.dir) / "out_engine", comparison))
    return {
        "pairs": result.pairs,
        "mismatch": result.mismatch,
        "by_cause": dict(result.by_cause),
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "median_cpu_s": statistics.median(cpu),
        "write_outputs_s": write_s,
        "legacy_rows": data.legacy.num_rows,
        "transitions": data.stream.num_rows,
        "events": len(data.events),
        "generator_peak_rss_mb": generated_peak,
        "compare_peak_rss_mb": compare_peak,
        "inputs_rss_mb": inputs_rss,
        "peak_rss_mb": peak_rss_mb(),
    }


def _write_jsonl(table: pa.Table, path: Path, times: tuple[str, ...]) -> None:
    import duckdb

    columns = {}
    for name in table.column_names:
        column = decoded(table.column(name))
        if name in times:
            column = pc.strftime(column.cast(pa.timestamp("ms", "UTC")), format="%Y-%m-%dT%H:%M:%SZ")
        columns[name] = column
    con = duckdb.connect()
    con.execute("SET threads=2")
    con.register("t", pa.table(columns))
    con.execute(f"COPY t TO '{path}' (FORMAT JSON)")
    con.close()


def stage_write(args: argparse.Namespace) -> dict[str, object]:
    data = Synthetic(args.users, args.as_ofs)
    directory = Path(args.dir)
    _, seconds = _timed(
        lambda: (
            _write_jsonl(data.legacy, directory / "legacy.jsonl", ("as_of",)),
            _write_jsonl(data.stream, directory / "stream.jsonl", ("effective_time", "emitted_at")),
        )
    )
    return {
        "seconds": seconds,
        "legacy_mb": (directory / "legacy.jsonl").stat().st_size / 1e6,
        "stream_mb": (directory / "stream.jsonl").stat().st_size / 1e6,
    }


def stage_files(args: argparse.Namespace) -> dict[str, object]:
    directory = Path(args.dir)
    data = Synthetic(args.users, args.as_ofs, tables=False)
    generated_rss = rss_mb()
    reset_peak()
    legacy, read_legacy_s = _timed(lambda: read_legacy(directory / "legacy.jsonl"))
    stream, read_stream_s = _timed(lambda: read_stream(directory / "stream.jsonl"))
    comparison, compare_s = _timed(lambda: compare_inputs(data.inputs(legacy, stream)))
    _, write_s = _timed(lambda: write_outputs(directory / "out_files", comparison))
    return {
        "pairs": comparison.result.pairs,
        "read_legacy_s": read_legacy_s,
        "read_stream_s": read_stream_s,
        "compare_s": compare_s,
        "write_outputs_s": write_s,
        "events_rss_mb": generated_rss,
        "peak_rss_mb": peak_rss_mb(),
    }


def stage_deepdiff(args: argparse.Namespace) -> dict[str, object]:
    from deepdiff import DeepDiff

    from segments.outputs import Timeline

    data = Synthetic(args.users, args.as_ofs)
    subset_users = max(1, 200_000 // args.as_ofs)
    names = {f"u{i}" for i in range(subset_users)}
    legacy = data.legacy.filter(pc.is_in(data.legacy.column("user_id"), pa.array(sorted(names)))).to_pylist()
    left = {f"{row['as_of']}|{row['user_id']}": sorted(row["segments"]) for row in legacy}
    stream = data.stream.filter(pc.is_in(data.stream.column("user_id"), pa.array(sorted(names)))).to_pylist()
    by_user: dict[str, list] = {}
    for row in stream:
        by_user.setdefault(row["user_id"], []).append(row)
    right = {}
    for user, rows in by_user.items():
        from segments.outputs import Transition

        timeline = Timeline(
            Transition(user, tuple(r["segments"]), r["effective_time"], r["revision"], r["emitted_at"], r["cause"])
            for r in rows
        )
        for t in data.schedule.tolist():
            value = timeline.at(t)
            if value:
                right[f"{t}|{user}"] = sorted(value)
    pairs = len(left.keys() | right.keys())
    diff, seconds = _timed(lambda: DeepDiff(left, right))
    changed = len(diff.get("values_changed", {})) + len(diff.get("dictionary_item_added", [])) + len(
        diff.get("dictionary_item_removed", [])
    ) + len(diff.get("iterable_item_added", {})) + len(diff.get("iterable_item_removed", {}))
    return {"pairs": pairs, "seconds": seconds, "differences": changed, "peak_rss_mb": peak_rss_mb()}


def stage_events(args: argparse.Namespace) -> dict[str, object]:
    from segments.events import load_event_log
    from segments.workloads import write_workload

    path = Path(args.dir) / "workload.jsonl"
    write_workload("clickstream", path, users=20_000, minutes=30, seed=1)
    log, load_s = _timed(lambda: load_event_log(path))
    frame, frame_s = _timed(lambda: EventFrame.from_log(log, set(), CLICK))
    return {"events": len(frame), "load_s": load_s, "frame_s": frame_s, "peak_rss_mb": peak_rss_mb()}


STAGES = {
    "engine": stage_engine,
    "write": stage_write,
    "files": stage_files,
    "deepdiff": stage_deepdiff,
    "events": stage_events,
}


def run_stage(name: str, args: argparse.Namespace) -> dict[str, object]:
    command = [
        sys.executable, __file__, "--stage", name, "--dir", args.dir, "--users", str(args.users),
        "--as-ofs", str(args.as_ofs), "--repeat", str(args.repeat),
    ]
    # Arrow's default pool here is mimalloc, which keeps freed pages for a while (the jemalloc decay set in
    # the stage does nothing then): purge them at once, so that RSS means what is in use, as intended
    env = {**os.environ, "MIMALLOC_PURGE_DELAY": os.environ.get("MIMALLOC_PURGE_DELAY", "0")}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"stage {name} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--as-ofs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-files", action="store_true")
    parser.add_argument("--stage", choices=sorted(STAGES))
    parser.add_argument("--dir")
    args = parser.parse_args()
    if args.stage:
        with contextlib.suppress(AttributeError, NotImplementedError, pa.ArrowException):
            pa.jemalloc_set_decay_ms(0)  # give freed Arrow memory back at once, so RSS means what is in use
        print(json.dumps(STAGES[args.stage](args)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as directory:
        args.dir = directory
        engine = run_stage("engine", args)
        pairs = int(engine["pairs"])  # type: ignore[call-overload]
        rate = pairs / float(engine["median_s"])  # type: ignore[arg-type]
        print(f"pairs: {pairs:,} ({engine['legacy_rows']:,} legacy lines, {engine['transitions']:,} transitions, "
              f"{engine['events']:,} events); mismatches {engine['mismatch']:,}: {engine['by_cause']}")
        runs = ", ".join(f"{s:.2f}" for s in engine["seconds"])  # type: ignore[attr-defined]
        print(f"engine (Arrow tables in memory -> compare_inputs): median {engine['median_s']:.2f} s "
              f"[{runs}] = {rate:,.0f} pairs/s; CPU {engine['median_cpu_s']:.2f} s over both threads "
              f"(load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        print(f"  RSS: inputs resident {engine['inputs_rss_mb']:,.0f} MB; peak while comparing "
              f"{engine['compare_peak_rss_mb']:,.0f} MB (inputs included); peak incl. writing outputs "
              f"{engine['peak_rss_mb']:,.0f} MB; the generator's own peak {engine['generator_peak_rss_mb']:,.0f} MB")
        print(f"  writing mismatches.jsonl + parity.json + report.html + summary.md: {engine['write_outputs_s']:.2f} s")
        if not args.skip_files:
            written = run_stage("write", args)
            files = run_stage("files", args)
            total = sum(float(files[k]) for k in ("read_legacy_s", "read_stream_s", "compare_s"))  # type: ignore[arg-type]
            print(f"files ({written['legacy_mb']:,.0f} MB legacy + {written['stream_mb']:,.0f} MB stream JSONL): "
                  f"read legacy {files['read_legacy_s']:.2f} s, read stream {files['read_stream_s']:.2f} s, "
                  f"compare {files['compare_s']:.2f} s -> {pairs / total:,.0f} pairs/s; "
                  f"outputs {files['write_outputs_s']:.2f} s; peak RSS {files['peak_rss_mb']:,.0f} MB "
                  f"(event columns resident before reading: {files['events_rss_mb']:,.0f} MB)")
        baseline = run_stage("deepdiff", args)
        base_rate = int(baseline["pairs"]) / float(baseline["seconds"])  # type: ignore[call-overload, arg-type]
        print(f"baseline DeepDiff over assignment dicts: {baseline['pairs']:,} pairs in {baseline['seconds']:.2f} s "
              f"= {base_rate:,.0f} pairs/s (scaled to {pairs:,}: {pairs / base_rate:,.0f} s)")
        print(f"ratio engine / deepdiff: {rate / base_rate:,.1f}x")
        events = run_stage("events", args)
        print(f"event log from a file (load_event_log + EventFrame.from_log): {events['events']:,} events in "
              f"{float(events['load_s']) + float(events['frame_s']):.2f} s "  # type: ignore[arg-type]
              f"= {int(events['events']) / (float(events['load_s']) + float(events['frame_s'])):,.0f} events/s")  # type: ignore[call-overload, arg-type]


if __name__ == "__main__":
    main()
