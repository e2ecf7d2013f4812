"""A fuzz of the command line (issue 14, item 8): whatever the input, one documented exit code and one line.

Random and mutated event lines (``legacy run`` on SQLite), rule-set YAML (``rules
show``), plan YAML (``gate check``), durations (``cutover watch --interval``,
``legacy run --every``) and option values (``--percent``) go through the real
command line, each run in a process of its own under a 2 GB address-space limit.
Every run must end with exit code 0, 1, 2 or 3, at most one line on stderr, no
traceback, and no ``unexpected`` error (an exception the command line did not
know: a bug).

A Python interpreter takes 1-2 s to import the command line (SQLAlchemy, pyarrow,
Beam's pieces), more than all the work of a small run. So the runs are forked
from one process that imported ``segshadow.cli`` once: each child sets the limit,
points its stdout and stderr at files and calls ``segshadow.cli.main`` with the
run's argv, exactly what the ``segshadow`` script does; the exit status is the
child's. ``test_the_installed_script_under_the_limit`` runs the script itself
once, so the forked runs are known to stand for it. The examples are fixed
(``derandomize``); the whole fuzz takes well under a minute.

Event times are near 2024-01-01 or extreme: epoch 1 ms, year 9999, the last
millisecond before 2100 and the first of it, fifty years on; in the event time, the
arrival or both (an arrival far in the future of its event time, an event far
ahead of its arrival). Bounded work must turn each into a dead letter
(``time_out_of_range``) or a schedule refused in one line. ``--every`` is one of
1 s to 1 h (or a refused value), and the near times span at most 30 of its
intervals (an hour at most), so a run that is accepted stays small: every extreme
in range is at least 25 years from the near times and from the other ones in
range, beyond ``MAX_AS_OFS`` as-ofs at any accepted ``--every`` up to an hour.
"""

from __future__ import annotations

import copy
import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
ADDRESS_SPACE = 2 * 1024**3
RUN_SECONDS = 60  # a run still going after this is killed (SIGALRM) and fails the fuzz
DOCUMENTED = {0, 1, 2, 3}
FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

# Reads one JSON request a line ({"argv", "out", "err"}), forks a child that runs the command line on it
# under the address-space limit, and answers with the child's exit code.
_FORK_SERVER = """
import json, os, resource, signal, sys
from segshadow.cli import main
limit, seconds = int(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            signal.alarm(seconds)
            for fd, path in ((1, request["out"]), (2, request["err"])):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            os.chdir(request["cwd"])
            try:
                main(request["argv"])
                code = 0
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


@dataclass(frozen=True)
class Outcome:
    argv: tuple[str, ...]
    code: int
    out: str
    err: str


class Runner:
    """Runs the command line in forked children of one process that imported it (see the module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.process = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER, str(ADDRESS_SPACE), str(RUN_SECONDS)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "SEGSHADOW_DEBUG"},
        )
        assert self.process.stdout is not None and self.process.stdout.readline() == "ready\n"

    def __call__(self, *argv: str) -> Outcome:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.count += 1
        out, err = self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err"
        request = {"argv": list(argv), "out": str(out), "err": str(err), "cwd": str(self.workdir)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        code = json.loads(self.process.stdout.readline())
        return Outcome(tuple(argv), code, out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    runner = Runner(tmp_path_factory.mktemp("fuzz"))
    yield runner
    runner.close()


def check(outcome: Outcome) -> None:
    """A documented exit code; at most one line on stderr, a ``segshadow:`` one, never a traceback or a bug."""
    where = f"segshadow {' '.join(outcome.argv)[:300]} -> {outcome.code}: {outcome.err[-2000:]!r}"
    assert outcome.code in DOCUMENTED, where
    lines = outcome.err.splitlines()
    assert len(lines) <= 1, where
    assert "Traceback" not in outcome.err and "unexpected" not in outcome.err, where
    if outcome.code != 0:
        assert len(lines) == 1 and lines[0].startswith("segshadow: error: "), where


# ---- inputs ----------------------------------------------------------------------------------------------

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
HOUR = 3_600_000
KINDS = ["view", "cart", "purchase", "refund", "txn"]

YEAR = 365 * 24 * HOUR
EVERY_MS = {"1h": HOUR, "5m": 300_000, "30s": 30_000, "10s": 10_000, "1s": 1_000}
NEAR_INTERVALS = 30  # how many --every intervals the near times span at most: each accepted run stays small


def _clock(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def near_time(span_ms: int = HOUR) -> st.SearchStrategy[Any]:
    """A time in [T0, T0 + span_ms], as epoch ms or RFC 3339 (UTC or +01:00)."""
    seconds = st.integers(0, span_ms // 1000)
    return st.one_of(
        st.integers(T0, T0 + span_ms),
        seconds.map(lambda s: f"2024-01-01T{_clock(s)}Z"),
        seconds.map(lambda s: f"2024-01-01T{_clock(s + 3600)}+01:00"),
    )


extreme_time = st.sampled_from(
    [
        1,
        "1970-01-01T00:00:00.001Z",
        "9999-12-31T23:59:59.999Z",
        4_102_444_799_999,  # the last millisecond before 2100: in range
        "2100-01-01T00:00:00Z",  # the first millisecond of 2100: out of range
        T0 + 50 * YEAR,
    ]
)
odd_time = st.one_of(
    st.sampled_from([0, -1, 2**63, -(2**63), 2**64, 253_402_300_799_999]),
    st.sampled_from(["9999-12-31T23:59:59.999Z", "0001-01-01T00:00:00Z"]),
    st.sampled_from(["2024-01-01T00:00:00", "2024-13-01T00:00:00Z", "2024-01-01 00:00:00Z", "", "now", "1e3"]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
amount = st.one_of(
    st.decimals(min_value=0, max_value=10**12, places=6, allow_nan=False).map(str),
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e400", "-0", "0.0000001", "NaN", "12,5", " 3 ", "١٢"]),
)
scalar = st.one_of(st.text(max_size=12), st.integers(), st.floats(), st.booleans(), st.none())


@st.composite
def event(draw: st.DrawFn, span_ms: int = HOUR) -> dict[str, Any]:
    """An event of SPEC §1, often valid, with any field possibly missing or odd; times near T0 (within
    ``span_ms``), or extreme (in the event time, the arrival, or both; ``event_lines`` adds well-formed
    events with extreme times)."""
    near = near_time(span_ms)
    doc: dict[str, Any] = {
        "event_id": draw(st.one_of(st.text(min_size=1, max_size=4), scalar)),
        "user_id": draw(st.one_of(st.sampled_from(["u1", "u2", "ü"]), st.text(max_size=200), scalar)),
        "event_time": draw(st.one_of(near, near, near, odd_time, extreme_time)),
        "kind": draw(st.one_of(st.sampled_from(KINDS), scalar)),
        "arrival_time": draw(st.one_of(near, near, near, odd_time, extreme_time)),
    }
    if draw(st.booleans()):
        doc["amount"] = draw(amount)
    if draw(st.booleans()):
        doc["attrs"] = draw(st.one_of(st.dictionaries(st.text(max_size=5), scalar, max_size=3), scalar))
    for key in draw(st.lists(st.sampled_from([*doc]), max_size=2)):
        doc.pop(key, None)
    if "arrival_time" not in doc or not isinstance(doc["arrival_time"], int | str):
        doc["event_time"] = draw(near)  # absent or bad arrival: the event time is the arrival
    return doc


@st.composite
def mutated_text(draw: st.DrawFn, text: str) -> str:
    """``text`` with a few characters replaced, inserted or deleted."""
    chars = list(text)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(chars)))
        how = draw(st.sampled_from(["replace", "insert", "delete"]))
        new = draw(st.characters(codec="utf-8", exclude_categories=["Cs"]))
        if how == "insert" or at == len(chars):
            chars.insert(at, new)
        elif how == "replace":
            chars[at] = new
        else:
            del chars[at]
    return "".join(chars)


def _line(value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=True, ensure_ascii=False)
    except ValueError:
        return "{}"


@st.composite
def event_lines(draw: st.DrawFn, span_ms: int = HOUR) -> bytes:
    """A file of event lines: valid, mutated, random JSON, random text and random bytes, in any mix."""
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 12))):
        kinds = ["valid", "valid", "event", "event", "extreme", "extreme", "mutated", "json", "text", "bytes"]
        kind = draw(st.sampled_from(kinds))
        if kind == "valid":  # most files hold some valid events, so runs get as far as the schedule
            doc = {"event_id": f"v{len(lines)}", "user_id": draw(st.sampled_from(["u1", "u2"])), "kind": "view"}
            lines.append(_line({**doc, "event_time": draw(near_time(span_ms))}).encode())
        elif kind == "event":
            lines.append(_line(draw(event(span_ms))).encode())
        elif kind == "extreme":  # well formed, so only the time range can refuse it
            at = draw(extreme_time)
            arrival = draw(st.one_of(st.just(at), extreme_time, near_time(span_ms)))
            doc = {"event_id": f"x{len(lines)}", "user_id": "u1", "event_time": at, "arrival_time": arrival}
            lines.append(_line({**doc, "kind": "view"}).encode())
        elif kind == "mutated":
            lines.append(draw(mutated_text(_line(draw(event(span_ms))))).encode("utf-8", "surrogatepass"))
        elif kind == "json":
            lines.append(_line(draw(st.recursive(scalar, lambda c: st.lists(c, max_size=3), max_leaves=6))).encode())
        elif kind == "text":
            lines.append(draw(st.text(max_size=60)).encode("utf-8", "surrogatepass"))
        else:
            lines.append(draw(st.binary(max_size=60)))
    return b"\n".join(lines) + draw(st.sampled_from([b"", b"\n", b"\r\n"]))


DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
duration_text = st.one_of(
    st.tuples(st.integers(0, 10**30), st.sampled_from(["ms", "s", "m", "h", "d", "", "x", " s", "S", "mins"])).map(
        lambda t: f"{t[0]}{t[1]}"
    ),
    st.text(max_size=12),
    st.sampled_from(["-5m", "1.5m", "5 m", "0", "٥m", "1" + "0" * 5000 + "ms", "\x00", "5m\n"]),
)
refused_every = duration_text.filter(lambda t: t.strip() != "0" and not DURATION.match(t))


def _paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += _paths(value, (*path, index))
    return found


yaml_value = st.one_of(
    scalar,
    duration_text,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.recursive(
        scalar,
        lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)),
        max_leaves=8,
    ),
)


@st.composite
def mutated_yaml(draw: st.DrawFn, shipped: str) -> bytes:
    """A shipped YAML document with values replaced or removed, then maybe its text mangled or nested deeply."""
    doc = copy.deepcopy(yaml.safe_load(shipped))
    for _ in range(draw(st.integers(0, 4))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()):
            parent[path[-1]] = draw(yaml_value)
        else:
            del parent[path[-1]]
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    finish = draw(st.sampled_from(["as is", "as is", "mangled", "nested", "bytes"]))
    if finish == "mangled":
        text = draw(mutated_text(text))
    elif finish == "nested":
        depth = draw(st.integers(1, 6000))
        text += f"extra: {'[' * depth}{']' * depth}\n"
    elif finish == "bytes":
        return draw(st.binary(max_size=200))
    return text.encode("utf-8", "surrogatepass")


def _shipped(path: str) -> str:
    return (ROOT / path).read_text(encoding="utf-8")


# ---- the fuzz --------------------------------------------------------------------------------------------


@st.composite
def legacy_input(draw: st.DrawFn) -> tuple[bytes, str]:
    """An ``--every`` (accepted or refused) and an event file whose near times span at most
    ``NEAR_INTERVALS`` of it (see the module doc)."""
    refused = draw(st.integers(0, 4)) == 0
    every = draw(refused_every) if refused else draw(st.sampled_from(list(EVERY_MS)))
    span = min(HOUR, NEAR_INTERVALS * EVERY_MS.get(every, HOUR))
    return draw(event_lines(span)), every


@pytest.mark.slow
@settings(FUZZ, max_examples=15)
@given(run=legacy_input())
def test_legacy_run_on_any_event_file(cli: Runner, run: tuple[bytes, str]) -> None:
    data, every = run
    events = cli.workdir / "events.jsonl"
    events.write_bytes(data)
    db = cli.workdir / "legacy.db"
    db.unlink(missing_ok=True)
    outcome = cli(
        "legacy", "run", "--events", str(events), "--rules", "clickstream", "--out", str(cli.workdir / "a.jsonl"),
        "--every", every, "--database-url", f"sqlite:///{db}",
    )  # fmt: skip
    check(outcome)


@pytest.mark.slow
@settings(FUZZ, max_examples=15)
@given(text=mutated_yaml(_shipped("segments/rulesets/clickstream.yaml")))
def test_rules_show_on_any_rule_set(cli: Runner, text: bytes) -> None:
    rules = cli.workdir / "rules.yaml"
    rules.write_bytes(text)
    check(cli("rules", "show", str(rules)))


@pytest.mark.slow
@settings(FUZZ, max_examples=12)
@given(text=mutated_yaml(_shipped("rollout/default_plan.yaml")))
def test_gate_check_on_any_plan(cli: Runner, text: bytes) -> None:
    plan = cli.workdir / "plan.yaml"
    plan.write_bytes(text)
    evidence = cli.workdir / "no-evidence"
    evidence.mkdir(exist_ok=True)
    check(cli("gate", "check", "--plan", str(plan), "--evidence", str(evidence), "--database-url",
              f"sqlite:///{cli.workdir / 'rollout.db'}"))  # fmt: skip


@pytest.mark.slow
@settings(FUZZ, max_examples=12)
@given(interval=duration_text, percent=st.one_of(st.floats().map(str), st.integers().map(str), st.text(max_size=8)))
def test_durations_and_option_values(cli: Runner, interval: str, percent: str) -> None:
    db = f"sqlite:///{cli.workdir / 'rollout.db'}"
    check(cli("cutover", "watch", "--evidence", str(cli.workdir), "--interval", interval, "--iterations", "1",
              "--database-url", db))  # fmt: skip
    check(cli("cutover", "advance", "--percent", percent, "--database-url", db))


def test_the_fork_server_reports_what_the_child_did(cli: Runner) -> None:
    """The harness itself: a traceback, a second line and an undocumented code would each be caught."""
    ok = cli("rules", "show", "clickstream")
    assert ok.code == 0 and "high_value" in ok.out and ok.err == ""
    bad = cli("rules", "show", str(cli.workdir / "missing.yaml"))
    assert bad.code == 2 and bad.err.startswith("segshadow: error: ")
    for broken in (Outcome((), 0, "", "Traceback (most recent call last):\n"), Outcome((), 4, "", ""),
                   Outcome((), 2, "", "segshadow: error: a\nsegshadow: error: b\n"),
                   Outcome((), 1, "", "segshadow: error: unexpected KeyError: 'x' (traceback in /x)\n")):  # fmt: skip
        with pytest.raises(AssertionError):
            check(broken)


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.mark.slow
def test_the_installed_script_under_the_limit(tmp_path: Path) -> None:
    """The ``segshadow`` script itself, under the same limit: a refused value and a good run."""
    script = Path(sys.executable).with_name("segshadow")
    env = {k: v for k, v in os.environ.items() if k != "SEGSHADOW_DEBUG"}
    refused = subprocess.run(
        [str(script), "cutover", "watch", "--evidence", str(tmp_path), "--interval", "0s"],
        capture_output=True, text=True, preexec_fn=_limit_address_space, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    check(Outcome(("cutover", "watch"), refused.returncode, refused.stdout, refused.stderr))
    assert refused.returncode == 2 and "'--interval'" in refused.stderr
    shown = subprocess.run(
        [str(script), "rules", "show", "risk"],
        capture_output=True, text=True, preexec_fn=_limit_address_space, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert shown.returncode == 0 and "risk_high" in shown.stdout and shown.stderr == ""
