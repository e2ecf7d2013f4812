"""Sealed evidence: every attack on a real comparison's directory makes `gate check` fail, naming file and field."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from compare.comparison import run_comparison
from compare.manifest import INCOMPLETE, KEY_ENV, MANIFEST, file_digest, seal
from legacy_batch.job import run_legacy
from rollout.evidence import load_evidence
from rollout.gates import evaluate
from rollout.plan import load_plan
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segments.timeutil import format_ms, parse_rfc3339_ms
from segments.workloads import write_workload
from segshadow.cli import main
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real comparison of a small clickstream workload with a planted stream defect (unexplained)."""
    root = tmp_path_factory.mktemp("sealed")
    ruleset = load_ruleset("clickstream")
    events = root / "events.jsonl"
    write_workload("clickstream", events, users=60, minutes=20, seed=3, late_share=0.1)
    with SqlStore.open(f"sqlite:///{root / 'db.sqlite'}") as store:
        run_legacy(events, ruleset, 300_000, root / "legacy.jsonl", store)
    run_replay(events, root / "stream.jsonl", StreamConfig(ruleset))
    lines = (root / "stream.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (root / "stream.jsonl").write_text("".join(lines[::2]), encoding="utf-8")  # the defect: half the transitions
    meta = json.loads((root / "stream.jsonl.meta.json").read_text())
    meta["counts"]["transitions"] = len(lines[::2])
    (root / "stream.jsonl.meta.json").write_text(json.dumps(meta))
    run_comparison(events, root / "legacy.jsonl", root / "stream.jsonl", ruleset, out_dir=root / "ev")
    return root


@pytest.fixture
def evidence(sealed: Path, tmp_path: Path) -> Path:
    """A private copy of the sealed run (inputs and evidence side by side, as the manifest names them)."""
    copy = tmp_path / "run"
    shutil.copytree(sealed, copy)
    manifest = json.loads((copy / "ev" / MANIFEST).read_text())
    for entry in manifest["artifacts"].values():  # the copy's inputs, at the copy's place
        entry["path"] = entry["path"].replace(str(sealed), str(copy))
    (copy / "ev" / MANIFEST).write_text(json.dumps(manifest))
    return copy / "ev"


def reseal(ev: Path) -> None:
    """The attacker's best move: rewrite every artifact hash in the manifest to match the edited files."""
    manifest = json.loads((ev / MANIFEST).read_text())
    for entry in manifest["artifacts"].values():
        path = Path(entry["path"]) if Path(entry["path"]).is_absolute() else ev / entry["path"]
        entry["sha256"], entry["bytes"] = file_digest(path)
    (ev / MANIFEST).write_text(json.dumps(manifest))


def edit_parity(ev: Path, change: Callable[[dict], None]) -> None:
    data = json.loads((ev / "parity.json").read_text())
    change(data)
    (ev / "parity.json").write_text(json.dumps(data, indent=2))


@pytest.fixture
def gate_check(database_url: str, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """``segshadow gate check`` with the shipped gates (the evidence is too small to pass them): (exit, output)."""

    def check(ev: Path, *extra: str) -> tuple[int, str]:
        plan = ev.parent / "plan.yaml"
        plan.write_text(
            "name: seal-only\nruleset: {name: clickstream, version: 1}\nevidence_max_age: 100000h\n"
            "gates: {}\nsteps: [{stage: canary, percent: 1}, {stage: live}, {stage: rampdown}, {stage: complete}]\n"
        )
        code = 0
        try:
            main(["gate", "check", "--plan", str(plan), "--evidence", str(ev), "--database-url", database_url, *extra])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out + err

    return check


def seal_reason(ev: Path, verify: str = "counts") -> str:
    found = load_evidence(ev, verify)  # type: ignore[arg-type]
    plan = load_plan("default")
    now = parse_rfc3339_ms(found.data["generated_at"])
    result = {r.name: r for r in evaluate(plan, plan.steps[0].gates, found.data, now, 0)}["evidence_seal"]
    assert result.status == "fail", result
    return result.reason


def test_untouched_evidence_is_sealed_and_full_verification_agrees(evidence: Path, gate_check: Callable) -> None:
    assert load_evidence(evidence).sealed and load_evidence(evidence, "full").sealed
    manifest = (evidence / MANIFEST).read_bytes()
    assert load_evidence(evidence).sha256 == hashlib.sha256(manifest).hexdigest()
    _, out = gate_check(evidence)
    assert "pass         evidence_seal" in out, out


COUNTED = [
    ("pairs", lambda d: d.update(pairs=d["pairs"] + 1)),
    ("agree", lambda d: d.update(agree=d["agree"] + 1)),
    ("mismatch", lambda d: d.update(mismatch=d["mismatch"] - 1)),
    ("by_cause.unexplained", lambda d: d["by_cause"].update(unexplained=0)),
    ("by_cause.late_arrival", lambda d: d["by_cause"].update(late_arrival=d["by_cause"]["late_arrival"] + 1)),
    ("by_cause.dropped_too_late", lambda d: d["by_cause"].update(dropped_too_late=99)),
    ("by_cause.mixed", lambda d: d["by_cause"].update(mixed=7)),
    ("dead_letter.stream.too_late", lambda d: d["dead_letter"]["stream"].update(too_late=0)),
    ("dead_letter.legacy.events", lambda d: d["dead_letter"]["legacy"].update(events=10**6)),
    ("latency.stream.p99_ms", lambda d: d["latency"]["stream"].update(p99_ms=3.0, source="live", count=10)),
    ("as_of_rounds", lambda d: d.update(as_of_rounds=100)),
    ("segment_drift.max_psi", lambda d: d["segment_drift"].update(max_psi=0.0)),
    ("segment_drift.per_as_of", lambda d: d["segment_drift"]["per_as_of"][-1].update(psi_sides=0.0)),
]


@pytest.mark.parametrize(("field", "change"), COUNTED, ids=[f for f, _ in COUNTED])
def test_an_edited_counted_field_fails_by_hash_and_resealed_by_recount(
    evidence: Path, gate_check: Callable, field: str, change: Callable[[dict], None]
) -> None:
    edit_parity(evidence, change)
    code, out = gate_check(evidence)
    assert code == 1 and "fail         evidence_seal" in out and "parity.json: SHA-256 differs" in out, out
    reseal(evidence)
    reason = seal_reason(evidence)
    assert f"parity.json: {field} is" in reason, reason
    code, out = gate_check(evidence)
    assert code == 1 and "fail         evidence_seal" in out, out


def test_an_edited_generated_at_fails_even_resealed(evidence: Path, gate_check: Callable) -> None:
    edit_parity(evidence, lambda d: d.update(generated_at=format_ms(parse_rfc3339_ms(d["generated_at"]) + 10**7)))
    assert "parity.json: SHA-256 differs" in seal_reason(evidence)
    reseal(evidence)
    assert "parity.json: generated_at" in seal_reason(evidence)
    code, out = gate_check(evidence)
    assert code == 1 and "fail         evidence_seal" in out, out


def test_edited_or_removed_mismatches_fail_and_a_consistent_forgery_fails_full_verification(
    evidence: Path, gate_check: Callable
) -> None:
    path = evidence / "mismatches.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "cause": "late_arrival"}) + "\n" for r in rows))
    assert "mismatches.jsonl: SHA-256 differs" in seal_reason(evidence)
    reseal(evidence)
    assert "parity.json: by_cause.unexplained is" in seal_reason(evidence)
    # Forge parity.json too so every count agrees: only recomputing the comparison catches it.
    edit_parity(
        evidence,
        lambda d: (
            d["by_cause"].update(late_arrival=d["mismatch"], dropped_too_late=0, mixed=0, unexplained=0),
            d.update(verdict="explained_differences", unexplained_rate=0.0),
        ),
    )
    manifest = json.loads((evidence / MANIFEST).read_text())
    manifest["verdict"] = "explained_differences"
    (evidence / MANIFEST).write_text(json.dumps(manifest))
    reseal(evidence)
    assert load_evidence(evidence).sealed  # the counts agree with the forged mismatches
    assert "parity.json: by_cause differs from the recomputed comparison" in seal_reason(evidence, "full")
    code, out = gate_check(evidence, "--verify", "full")
    assert code == 1 and "fail         evidence_seal" in out and "recomputed" in out, out
    path.unlink()
    assert "mismatches.jsonl: missing" in seal_reason(evidence)


def test_an_edited_output_file_fails_naming_it(evidence: Path, gate_check: Callable) -> None:
    legacy = evidence.parent / "legacy.jsonl"
    lines = legacy.read_text().splitlines(keepends=True)
    legacy.write_text("".join(lines[1:]))
    assert "legacy.jsonl: SHA-256 differs" in seal_reason(evidence)
    reseal(evidence)
    assert "parity.json: pairs is" in seal_reason(evidence)


@pytest.mark.parametrize("damage", ["missing", "partial", "incomplete"])
def test_a_missing_partial_or_incomplete_manifest_fails_the_gate(
    evidence: Path, gate_check: Callable, damage: str
) -> None:
    manifest = evidence / MANIFEST
    if damage == "missing":
        manifest.unlink()
    elif damage == "partial":
        manifest.write_bytes(manifest.read_bytes()[:40])
    else:
        (evidence / INCOMPLETE).write_text("")
    code, out = gate_check(evidence)
    assert code == 1 and "fail         evidence_seal" in out, out
    assert {"missing": "incomplete run: no manifest.json", "partial": "manifest.json: not JSON",
            "incomplete": "incomplete run: INCOMPLETE"}[damage] in out


def test_a_directory_left_by_a_run_that_stopped_says_incomplete(tmp_path: Path, gate_check: Callable) -> None:
    (tmp_path / INCOMPLETE).write_text("")
    code, out = gate_check(tmp_path)
    assert code == 2 and "incomplete run" in out and len(out.strip().splitlines()) == 1


# ---- signed evidence -----------------------------------------------------------------------------

KEY = "a-key-the-gate-holds-0123456789"


def _sign_again(ev: Path) -> None:
    """Seal ``ev`` afresh from its parity.json and listed artifacts, as a run would (signed if a key is set)."""
    manifest = json.loads((ev / MANIFEST).read_text())
    artifacts = {
        role: Path(e["path"]) if Path(e["path"]).is_absolute() else ev / e["path"]
        for role, e in manifest["artifacts"].items()
    }
    seal(ev, json.loads((ev / "parity.json").read_text()), artifacts)


def test_signed_evidence_passes_with_the_key_and_without_one(
    evidence: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    _sign_again(evidence)
    signed = json.loads((evidence / MANIFEST).read_text())["signature"]
    assert signed["alg"] == "HMAC-SHA256" and KEY not in json.dumps(signed)
    assert load_evidence(evidence).sealed
    assert "its signature" in load_evidence(evidence).data["evidence_seal"]["reason"]
    monkeypatch.delenv(KEY_ENV)
    assert load_evidence(evidence).sealed, "without the key the hashes are checked as before"


def test_stale_evidence_made_fresh_and_resealed_without_the_key_fails_under_it(
    evidence: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forgery hashes cannot catch: generated_at moved in parity.json AND the manifest, every hash redone."""
    monkeypatch.setenv(KEY_ENV, KEY)
    _sign_again(evidence)
    monkeypatch.delenv(KEY_ENV)
    later = format_ms(parse_rfc3339_ms(json.loads((evidence / "parity.json").read_text())["generated_at"]) + 10**7)
    edit_parity(evidence, lambda d: d.update(generated_at=later))
    manifest = json.loads((evidence / MANIFEST).read_text())
    manifest["generated_at"] = later
    (evidence / MANIFEST).write_text(json.dumps(manifest))
    reseal(evidence)
    assert load_evidence(evidence).sealed, "without a key this forgery holds: the hashes agree"
    monkeypatch.setenv(KEY_ENV, KEY)
    assert "the signature does not match" in seal_reason(evidence)
    monkeypatch.delenv(KEY_ENV)
    _sign_again(evidence)  # the attacker re-seals with no key: unsigned
    monkeypatch.setenv(KEY_ENV, KEY)
    assert "not signed" in load_evidence(evidence).data["evidence_seal"]["reason"]
    monkeypatch.setenv(KEY_ENV, "another-key-0123456789abcdef")
    _sign_again(evidence)  # or with a key of their own
    monkeypatch.setenv(KEY_ENV, KEY)
    assert "signed with key" in seal_reason(evidence)


def test_a_short_or_unreadable_key_is_a_usage_error(
    evidence: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gate_check: Callable
) -> None:
    monkeypatch.setenv(KEY_ENV, "short")
    code, out = gate_check(evidence)
    assert code == 2 and "the key has 5 bytes; at least 16" in out and "Traceback" not in out, out
    monkeypatch.setenv(KEY_ENV, f"@{tmp_path / 'nowhere.key'}")
    code, out = gate_check(evidence)
    assert code == 2 and "cannot read the key file" in out, out
    (tmp_path / "gate.key").write_text(KEY + "\n")
    monkeypatch.setenv(KEY_ENV, f"@{tmp_path / 'gate.key'}")
    _sign_again(evidence)
    monkeypatch.setenv(KEY_ENV, KEY)
    assert load_evidence(evidence).sealed, "a key file holds the same key (its trailing newline stripped)"
