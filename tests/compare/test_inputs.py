"""Inputs that cannot be compared are refused with one clear line; readers give the same table fast or exact."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compare.comparison import run_comparison
from compare.frames import legacy_table, stream_table
from compare.inputs import GateFlags, read_legacy, read_stream
from segments.errors import InputError, SegshadowError
from segments.outputs import Assignment, Transition, meta_path, read_assignments, read_transitions
from segments.rules import compile_ruleset, load_ruleset
from segshadow.cli import main
from tests.compare.builders import MIN, T0, event, write_events, write_legacy, write_stream

CLICK = load_ruleset("clickstream")
WS = ["window_shopper"]


@pytest.fixture
def case(tmp_path: Path) -> dict[str, Path]:
    """A small, comparable pair of outputs."""
    events = write_events(
        tmp_path / "events.jsonl", [event(f"v{i}", "u", T0 + (6 + i) * MIN) for i in range(3)]
    )
    legacy = write_legacy(tmp_path / "legacy.jsonl", [(T0 + 10 * MIN, "u", WS)], events, CLICK)
    stream = write_stream(
        tmp_path / "stream.jsonl", [("u", WS, T0 + 8 * MIN, 1, T0 + 8 * MIN, "event")], events, CLICK
    )
    return {"events": events, "legacy": legacy, "stream": stream, "dir": tmp_path}


def _compare(case: dict[str, Path], **kwargs: object) -> object:
    return run_comparison(case["events"], case["legacy"], case["stream"], CLICK, **kwargs)  # type: ignore[arg-type]


def _edit_meta(path: Path, **changes: object) -> None:
    meta = json.loads(meta_path(path).read_text())
    meta.update(changes)
    meta_path(path).write_text(json.dumps(meta))


def test_other_rule_set_version_is_refused(case: dict[str, Path]) -> None:
    """A stream made with clickstream v2 is not comparable with --rules clickstream (v1)."""
    _edit_meta(case["stream"], ruleset={"name": "clickstream", "version": 2, "digest": "ab" * 32})
    with pytest.raises(InputError, match=r"stream output was made with rule set clickstream v2 .*not clickstream@v1"):
        _compare(case)


def test_other_rule_set_definition_is_refused(case: dict[str, Path]) -> None:
    """Same name and version but another definition (digest) is refused too."""
    other = dict(CLICK.definition, description="edited")
    edited = compile_ruleset(other)
    assert edited.digest != CLICK.digest
    with pytest.raises(InputError, match="rule set"):
        run_comparison(case["events"], case["legacy"], case["stream"], edited)


def test_outputs_of_another_event_file_are_refused(case: dict[str, Path]) -> None:
    """The legacy sidecar's events_sha256 must be the --events file's."""
    other = write_events(case["dir"] / "other.jsonl", [event("x", "u", T0 + 6 * MIN)])
    with pytest.raises(InputError, match="made from another event file"):
        run_comparison(other, case["legacy"], case["stream"], CLICK)


def test_missing_or_incomplete_sidecar_is_refused(case: dict[str, Path]) -> None:
    """No sidecar (an interrupted run), or one not marked complete: refused."""
    meta_path(case["legacy"]).unlink()
    with pytest.raises(InputError, match=re.escape("no legacy.jsonl.meta.json")):
        _compare(case)
    _edit_meta(case["stream"], complete=False)
    with pytest.raises(InputError, match="does not mark the output complete"):
        run_comparison(case["events"], case["stream"], case["stream"], CLICK)


def test_truncated_output_is_refused(case: dict[str, Path]) -> None:
    """A last line cut short (no newline) names its line."""
    text = case["stream"].read_text()
    case["stream"].write_text(text[: len(text) // 2])
    with pytest.raises(InputError, match="line 1 is truncated"):
        _compare(case)


def test_row_count_other_than_the_sidecars_is_refused(case: dict[str, Path]) -> None:
    """A complete-looking file that lost lines since its sidecar was written."""
    _edit_meta(case["legacy"], assignments=5)
    with pytest.raises(InputError, match="has 1 lines but its sidecar says 5"):
        _compare(case)


def test_empty_output_needs_a_stated_count(case: dict[str, Path]) -> None:
    """An empty output is refused unless its sidecar says it is empty; then it is compared."""
    case["stream"].write_text("")
    _edit_meta(case["stream"], counts={})
    with pytest.raises(InputError, match="stream output is empty"):
        _compare(case)
    _edit_meta(case["stream"], counts={"transitions": 0})
    result = _compare(case)
    assert result.by_cause["unexplained"] == 1  # type: ignore[attr-defined]


def test_unreadable_files_are_refused(case: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="no such legacy output"):
        run_comparison(case["events"], case["dir"] / "nope.jsonl", case["stream"], CLICK)
    with pytest.raises(InputError, match="cannot read"):
        run_comparison(case["dir"] / "nope.jsonl", case["legacy"], case["stream"], CLICK)


def test_flags_that_contradict_the_sidecars_are_refused(case: dict[str, Path]) -> None:
    """--every, --max-out-of-orderness and --allowed-lateness must be what the outputs ran with."""
    with pytest.raises(InputError, match="ran every 5m, not --every 10m"):
        _compare(case, every_ms=10 * MIN)
    with pytest.raises(InputError, match="--allowed-lateness 1m, not 2m"):
        _compare(case, params=GateFlags(allowed_lateness_ms=2 * MIN))
    assert _compare(case, every_ms=5 * MIN, params=GateFlags(5_000, 60_000)).pairs == 1  # type: ignore[attr-defined]


def test_legacy_lines_outside_the_schedule_are_refused(case: dict[str, Path]) -> None:
    """A legacy as-of that SPEC §3 would not run over these events (another --every or event file)."""
    legacy = write_legacy(case["legacy"], [(T0 + 7 * MIN, "u", WS)], case["events"], CLICK)
    message = "as-of 2024-01-01T00:07:00.000Z, which is not one of the as-of times"
    with pytest.raises(InputError, match=re.escape(message)):
        run_comparison(case["events"], legacy, case["stream"], CLICK)


def test_schedule_claims_are_checked(case: dict[str, Path]) -> None:
    """The sidecar's as_of_count / first / last must match the schedule recomputed from the events."""
    _edit_meta(case["legacy"], as_of_count=3)
    with pytest.raises(InputError, match="as_of_count is 3 but the events and --every give 1"):
        _compare(case)


def test_two_lines_for_one_user_and_as_of_are_refused(case: dict[str, Path]) -> None:
    legacy = write_legacy(
        case["legacy"], [(T0 + 10 * MIN, "u", WS), (T0 + 10 * MIN, "u", ["high_value"])], case["events"], CLICK
    )
    message = "more than one line for user 'u' at as-of 2024-01-01T00:10:00.000Z"
    with pytest.raises(InputError, match=re.escape(message)):
        run_comparison(case["events"], legacy, case["stream"], CLICK)


def test_command_line_refusal_is_one_line_and_exit_2(case: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """``segshadow compare`` on incomparable inputs: exit 2, one line, no traceback."""
    _edit_meta(case["stream"], events_sha256="0" * 64)
    argv = ["compare", "--events", str(case["events"]), "--legacy", str(case["legacy"]), "--stream",
            str(case["stream"]), "--rules", "clickstream", "--out", str(case["dir"] / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("segshadow: error: ") and "Traceback" not in err


def test_command_line_success_prints_a_summary(case: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 0 with one summary line; the comparison itself never exits 1."""
    out = case["dir"] / "out"
    argv = ["compare", "--events", str(case["events"]), "--legacy", str(case["legacy"]), "--stream",
            str(case["stream"]), "--rules", "clickstream", "--every", "5m", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("parity: 1 pairs over 1 as-ofs, 1 agree") and str(out / "report.html") in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "mismatches.jsonl",
        "parity.json",
        "report.html",
        "ruleset.json",
        "sketches.json",
        "summary.md",
    ]


# ---- the fast reader and the exact reader agree ----------------------------------------------------


def test_fast_and_exact_readers_give_the_same_tables(tmp_path: Path) -> None:
    """Canonical files (Arrow path), and files with ms integers or offsets (exact path), read alike."""
    assignments = [Assignment(T0 + 5 * MIN, "ü ser", ("a", "b")), Assignment(T0 + 10 * MIN, "u2", ("c",))]
    transitions = [
        Transition("u", ("a",), T0 + 1, 1, T0 + 2, "event"),
        Transition("v\"quoted", (), T0 + 3, 2, T0 + 4, "expiry"),
    ]
    canonical = tmp_path / "legacy.jsonl"
    canonical.write_text("".join(a.to_json() + "\n" for a in assignments))
    assert read_legacy(canonical).equals(legacy_table(read_assignments(canonical)))
    assert read_legacy(canonical).column("as_of").to_pylist() == [a.as_of for a in assignments]
    odd = tmp_path / "legacy_odd.jsonl"
    odd.write_text(
        json.dumps({"as_of": T0 + 5 * MIN, "user_id": "ü ser", "segments": ["b", "a"]}) + "\n"
        + json.dumps({"as_of": "2024-01-01T02:10:00+02:00", "user_id": "u2", "segments": ["c"]}) + "\n"
    )
    assert read_legacy(odd).equals(legacy_table(assignments))
    stream = tmp_path / "stream.jsonl"
    stream.write_text("".join(t.to_json() + "\n" for t in transitions))
    assert read_stream(stream).equals(stream_table(read_transitions(stream)))
    assert read_stream(stream).equals(stream_table(transitions))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"as_of": "2024-01-01T00:05:00Z", "user_id": 5, "segments": []}', "line 2 is not an assignment"),
        ('{"as_of": "2024-01-01T00:05:00", "user_id": "u", "segments": []}', "line 2 is not an assignment"),
        ('{"as_of": "2024-01-01T00:05:00Z", "user_id": "u"', "line 2 is not JSON"),
        ('{"as_of": "2024-01-01T00:05:00Z", "user_id": "", "segments": []}', "line 2 is not an assignment"),
    ],
)
def test_bad_lines_are_named(tmp_path: Path, line: str, message: str) -> None:
    """What the fast path does not accept goes to the exact reader, which names the line."""
    path = tmp_path / "legacy.jsonl"
    path.write_text(Assignment(T0, "u", ("a",)).to_json() + "\n" + line + "\n")
    with pytest.raises(SegshadowError, match=message):
        read_legacy(path)
