"""Comparison evidence: ``DIR/parity.json``, verified against its seal (``DIR/manifest.json``) on every read.

The keys the gates read (SPEC §5 and the comparator's contract): ``pairs``,
``agree``, ``mismatch``, ``by_cause``, ``per_segment``, ``ruleset{name, version,
digest}``, ``generated_at`` (RFC 3339), ``as_of_rounds``, ``unexplained_rate``,
``unexplained_rate_wilson95``, ``agreement_over_time``, ``latency{legacy, stream}``,
``dead_letter{legacy, stream}``, ``ground_truth`` (risk only), ``segment_drift.max_psi`` and ``verdict``. A
missing key is not an error here: the gate that needs it says "inconclusive".

**The seal** (``compare.manifest`` writes it). ``load_evidence`` checks, and puts
the outcome under ``data["evidence_seal"]`` (``{status, reason, problems, verify,
manifest_sha256}``; whatever ``parity.json`` says under that key is replaced), where
the ``evidence_seal`` gate of ``rollout.gates.evaluate`` reads it:

1. the run is complete: ``manifest.json`` is there and readable, and no
   ``INCOMPLETE`` marker is;
2. every required artifact is listed, exists and has the SHA-256 and size the
   manifest gives; ``parity.json``'s ``generated_at``, ``ruleset``, ``params`` and
   ``verdict`` equal the manifest's (so an edited ``generated_at`` fails even
   with ``parity.json``'s hash rewritten too);
3. ``verify="counts"`` (the default) re-derives every count a gate reads from
   the artifacts and compares it with ``parity.json``: ``mismatch``, ``by_cause.*``
   and each segment's ``legacy_only`` / ``stream_only`` from ``mismatches.jsonl``;
   ``pairs``, ``agree``, ``per_segment.*.both`` and ``agreement_over_time`` from the
   legacy output's lines plus the mismatches (a pair is a legacy line, or a
   mismatch whose legacy set is empty); ``as_of_rounds`` from the legacy sidecar's
   schedule; ``segment_drift`` (every row and ``max_psi``) from each side's count per
   as-of and segment, legacy's from its lines and the stream's as legacy's plus the
   mismatches' differences, over the pairs (``compare.drift.drift_section``);
   ``dead_letter.*`` from the events file (validation, dedup and the
   stream's lateness gate with the manifest's parameters) and the stream's
   dead-letter file; the stream freshness from the live samples
   (``stream_latency.txt``) by ``compare.latency.summarize``, or "not measured"
   for a replay; ``unexplained_rate`` and ``verdict`` from those. This reads each
   artifact once and costs about as much as reading the events;
4. ``verify="full"`` also recomputes the comparison itself from the events and
   both outputs (``compare.comparison``) and requires the same ``parity.json``
   (every key but ``generated_at`` and ``inputs``) and the same ``mismatches.jsonl``.

Any difference is a **fail** of the ``evidence_seal`` gate whose reason names the
file and the field, never a pass or an inconclusive. ``Evidence.sha256`` is the
manifest's SHA-256 (``parity.json``'s when there is no manifest; the seal then fails):
the identity a decision records.

``load_evidence`` raises ``InputError`` (exit 2) only when there is no
``parity.json`` to read at all (saying "incomplete run" when the marker is there);
everything else about the seal is a gate result.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from compare.causes import CAUSES
from compare.drift import drift_section
from compare.inputs import read_dead_letters
from compare.latency import summarize
from compare.manifest import (
    FORMAT,
    INCOMPLETE,
    MANIFEST,
    REQUIRED,
    evidence_key,
    file_digest,
    sealed_ruleset,
    signature_problem,
)
from compare.stats import rate
from segments.errors import InputError, SegshadowError
from segments.events import DEFAULT_TIME_BOUNDS, TimeBounds, load_event_log
from segments.lateness import GateParams, too_late_ids

PARITY = "parity.json"
SEAL = "evidence_seal"
Verify = Literal["counts", "full"]
VERIFY_MODES: tuple[Verify, ...] = ("counts", "full")


@dataclass(frozen=True)
class Evidence:
    """One evidence directory: its ``parity.json`` path, its identity (the manifest's SHA-256), and
    the parsed ``parity.json`` with the seal's outcome under ``evidence_seal``."""

    path: str
    sha256: str
    data: Mapping[str, Any]

    @property
    def sealed(self) -> bool:
        return bool(self.data.get(SEAL, {}).get("status") == "pass")


def parity_path(where: str | Path) -> Path:
    """``where/parity.json`` for a directory, or ``where`` itself when it names the file."""
    path = Path(where)
    return path if path.suffix == ".json" else path / PARITY


def load_evidence(where: str | Path, verify: Verify = "counts") -> Evidence:
    """Read ``parity.json`` from the evidence directory ``where`` (or the file itself) and verify its seal.

    Raises ``InputError`` when ``parity.json`` is missing, unreadable, not JSON, or
    not an object, and ``ValueError`` for an unknown ``verify``. A seal that does
    not verify is not raised: it is ``data["evidence_seal"]`` with status ``fail``.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, not {verify!r}")
    path = parity_path(where)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if (path.parent / INCOMPLETE).exists():
            raise InputError(
                f"incomplete run: {INCOMPLETE} is there and no {path.name} (the run stopped part-way)",
                str(path.parent),
            ) from None
        raise InputError(
            f"no {path.name} here: not an evidence directory (run `segshadow compare`)", str(path.parent)
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", str(path)) from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InputError(f"not JSON: {exc}", str(path)) from None
    if not isinstance(data, dict):
        raise InputError("not a JSON object", str(path))
    identity, problems = _check_seal(path, data, verify)
    what = "manifest, its signature and artifacts" if evidence_key() is not None else "manifest and artifacts"
    data[SEAL] = {
        "status": "fail" if problems else "pass",
        "reason": "; ".join(problems) if problems else f"{what} verified ({verify})",
        "problems": problems,
        "verify": verify,
        "manifest_sha256": identity,
    }
    return Evidence(str(path), identity or hashlib.sha256(raw).hexdigest(), data)


# ---- the seal ------------------------------------------------------------------------------------


class _Broken(Exception):
    """An artifact that cannot be read as what it should be; the message names the file."""


def _check_seal(parity: Path, data: Mapping[str, Any], verify: Verify) -> tuple[str | None, list[str]]:
    """(the manifest's SHA-256 or None, every problem found; none means sealed)."""
    where = parity.parent
    problems: list[str] = []
    if (where / INCOMPLETE).exists():
        problems.append(f"incomplete run: {INCOMPLETE} is present in {where} (the run did not finish)")
    try:
        raw = (where / MANIFEST).read_bytes()
    except FileNotFoundError:
        return None, [*problems, f"incomplete run: no {MANIFEST} beside {parity.name} (unsealed evidence)"]
    except OSError as exc:
        return None, [*problems, f"{MANIFEST}: cannot read: {exc.strerror}"]
    identity = hashlib.sha256(raw).hexdigest()
    try:
        manifest = json.loads(raw)
    except ValueError:
        return identity, [*problems, f"{MANIFEST}: not JSON (partial or damaged)"]
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return identity, [*problems, f"{MANIFEST}: not a {FORMAT} manifest"]
    signature = signature_problem(manifest, evidence_key())
    if signature is not None:
        problems.append(signature)
    listed = manifest.get("artifacts")
    if not isinstance(listed, dict):
        return identity, [*problems, f"{MANIFEST}: artifacts is missing"]
    files = _verify_files(where, parity, listed, problems)
    for key in ("generated_at", "ruleset", "params", "verdict"):
        if data.get(key) != manifest.get(key):
            problems.append(f"{PARITY}: {key} {data.get(key)!r} differs from {MANIFEST}'s {manifest.get(key)!r}")
    bounds = DEFAULT_TIME_BOUNDS  # SPEC's, for runs sealed before ruleset.json
    if "ruleset" in files:
        path = files["ruleset"]
        try:
            sealed = sealed_ruleset(path)
        except (OSError, SegshadowError) as exc:
            return identity, [*problems, f"{path.name}: {exc}"]
        bounds = sealed.time_bounds
        problems.extend(_ruleset_problem(path.name, sealed.digest, manifest.get("ruleset")))
    if all(role in files for role in REQUIRED):
        try:
            derived = recount(files, manifest.get("params"), bounds)
            problems.extend(_differences(data, derived))
            if verify == "full" and not problems:
                problems.extend(_recompute(files, data))
        except _Broken as exc:
            problems.append(str(exc))
    return identity, problems


def _ruleset_problem(name: str, digest: str, declared: Any) -> list[str]:
    """A problem when the sealed definition is not the rule set the manifest names (by digest)."""
    want = declared.get("digest") if isinstance(declared, Mapping) else None
    if want is not None and digest != want:
        return [f"{name}: digest {digest[:12]} differs from {MANIFEST}'s rule set {str(want)[:12]}"]
    return []


def _verify_files(where: Path, parity: Path, listed: Mapping[str, Any], problems: list[str]) -> dict[str, Path]:
    """The listed artifacts whose bytes match the manifest, by role; a problem for every other one."""
    files: dict[str, Path] = {}
    for role in REQUIRED:
        if role not in listed:
            problems.append(f"{MANIFEST}: artifact {role!r} is not listed")
    for role, entry in sorted(listed.items()):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            problems.append(f"{MANIFEST}: artifact {role!r} has no path")
            continue
        path = Path(entry["path"])
        path = path if path.is_absolute() else where / path
        try:
            sha, size = file_digest(path)
        except FileNotFoundError:
            problems.append(f"{path.name}: missing (listed in {MANIFEST} as {role})")
            continue
        except OSError as exc:
            problems.append(f"{path.name}: cannot read: {exc.strerror}")
            continue
        if sha != entry.get("sha256") or size != entry.get("bytes"):
            problems.append(f"{path.name}: SHA-256 differs from {MANIFEST} (edited after the run was sealed)")
            continue
        files[role] = path
    if "parity" in files and files["parity"].resolve() != parity.resolve():
        problems.append(f"{MANIFEST}: seals {files['parity']}, not {parity}")
    return files


def _differences(data: Mapping[str, Any], derived: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``parity.json: FIELD is X; FILE gives Y`` for every derived field parity.json disagrees with."""
    found: list[str] = []
    for key, (want, source) in derived.items():
        field = f"{prefix}{key}"
        got = _at(data, field)
        if isinstance(want, float) and isinstance(got, int | float) and not isinstance(got, bool):
            same = math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-9)
        else:
            same = got == want and type(got) is type(want)
        if not same:
            found.append(f"{PARITY}: {field} is {got!r}; {source} gives {want!r}")
    return found


def _at(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except ValueError:
                    raise _Broken(f"{path.name}: line {number} is not JSON") from None
                if not isinstance(row, dict):
                    raise _Broken(f"{path.name}: line {number} is not an object")
                rows.append(row)
    except (OSError, UnicodeDecodeError) as exc:
        raise _Broken(f"{path.name}: cannot read: {exc}") from None
    return rows


def _names(row: Mapping[str, Any], key: str, path: Path) -> frozenset[str]:
    value = row.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Broken(f"{path.name}: a line has no list of segment names under {key!r}")
    return frozenset(value)


def recount(
    files: Mapping[str, Path], params: Any, bounds: TimeBounds = DEFAULT_TIME_BOUNDS
) -> dict[str, tuple[Any, str]]:
    """Every count a gate reads, re-derived from the artifacts: ``{dotted field: (value, source file)}``;
    ``bounds`` are the events' (the sealed rule set's: what the run accepted).

    Raises ``_Broken`` naming the file when an artifact cannot be read as what it should be.
    """
    mismatches_path, legacy_path = files["mismatches"], files["legacy"]
    m_name, l_name = mismatches_path.name, legacy_path.name
    causes: Counter[str] = Counter()
    legacy_only: Counter[str] = Counter()
    stream_only: Counter[str] = Counter()
    missed_at: Counter[str] = Counter()
    unseen_at: Counter[str] = Counter()  # mismatches legacy has no line for (empty legacy set)
    shift_at: Counter[tuple[str, str]] = Counter()  # (as_of, segment): stream's count minus legacy's
    mismatch = 0
    for row in _jsonl(mismatches_path):
        left, right = _names(row, "legacy", mismatches_path), _names(row, "stream", mismatches_path)
        cause = row.get("cause")
        if cause not in CAUSES or not isinstance(row.get("as_of"), str) or left == right:
            raise _Broken(f"{m_name}: line {mismatch + 1} is not a mismatch record (as_of, two sets, cause)")
        mismatch += 1
        causes[cause] += 1
        legacy_only.update(left - right)
        stream_only.update(right - left)
        shift_at.update((row["as_of"], name) for name in right - left)
        shift_at.subtract((row["as_of"], name) for name in left - right)
        missed_at[row["as_of"]] += 1
        if not left:
            unseen_at[row["as_of"]] += 1
    lines_at: Counter[str] = Counter()
    in_legacy: Counter[str] = Counter()
    legacy_at: Counter[tuple[str, str]] = Counter()
    for row in _jsonl(legacy_path):
        names = _names(row, "segments", legacy_path)
        if not isinstance(row.get("as_of"), str) or not names:
            raise _Broken(f"{l_name}: a line has no as_of or an empty set")
        lines_at[row["as_of"]] += 1
        in_legacy.update(names)
        legacy_at.update((row["as_of"], name) for name in names)
    pairs = sum(lines_at.values()) + sum(unseen_at.values())
    agree = pairs - mismatch
    both_src = f"{l_name} and {m_name}"
    derived: dict[str, tuple[Any, str]] = {
        "pairs": (pairs, both_src),
        "agree": (agree, both_src),
        "mismatch": (mismatch, m_name),
        "unexplained_rate": (rate(causes["unexplained"], pairs), both_src),
        "verdict": (
            "parity" if not mismatch else "defects" if causes["unexplained"] else "explained_differences",
            m_name,
        ),
    }
    derived.update({f"by_cause.{c}": (causes[c], m_name) for c in CAUSES})
    for name in sorted(set(in_legacy) | set(legacy_only) | set(stream_only)):
        derived[f"per_segment.{name}.both"] = (in_legacy[name] - legacy_only[name], both_src)
        derived[f"per_segment.{name}.legacy_only"] = (legacy_only[name], m_name)
        derived[f"per_segment.{name}.stream_only"] = (stream_only[name], m_name)
    times = _schedule(files["legacy_meta"])
    derived.update(_rounds(times, files["legacy_meta"].name, lines_at, unseen_at, missed_at, both_src))
    derived.update(_drift(times, lines_at, unseen_at, legacy_at, shift_at, both_src))
    derived.update(_dead_letters(files, params, bounds))
    derived.update(_freshness(files))
    return derived


def _verdict(mismatch: int, unexplained: int) -> str:
    if mismatch == 0:
        return "parity"
    return "defects" if unexplained else "explained_differences"


def _schedule(meta_path: Path) -> list[int]:
    """The legacy sidecar's as-of times, in order."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _Broken(f"{meta_path.name}: cannot read: {exc}") from None
    times = meta.get("as_of_times") if isinstance(meta, dict) else None
    if not isinstance(times, list) or not all(type(t) is int for t in times):
        raise _Broken(f"{meta_path.name}: as_of_times is missing")
    return sorted(times)


def _rounds(
    times: list[int], meta_name: str, lines_at: Counter[str], unseen_at: Counter[str], missed_at: Counter[str],
    source: str,
) -> dict[str, tuple[Any, str]]:
    from segments.timeutil import format_ms

    over_time = []
    for t in times:
        stamp = format_ms(t)
        pairs = lines_at[stamp] + unseen_at[stamp]
        over_time.append({"as_of": stamp, "pairs": pairs, "agree": pairs - missed_at[stamp]})
    return {"as_of_rounds": (len(times), meta_name), "agreement_over_time": (over_time, source)}


def _drift(
    times: list[int],
    lines_at: Counter[str],
    unseen_at: Counter[str],
    legacy_at: Counter[tuple[str, str]],
    shift_at: Counter[tuple[str, str]],
    source: str,
) -> dict[str, tuple[Any, str]]:
    """``segment_drift`` (every row and ``max_psi``) from each side's count per (as-of, segment): legacy's from
    its lines, the stream's as legacy's plus what the mismatches add and take away."""
    from segments.timeutil import format_ms

    stamps = {format_ms(t): t for t in times}
    legacy: dict[int, dict[str, int]] = {t: {} for t in times}
    stream: dict[int, dict[str, int]] = {t: {} for t in times}
    for (stamp, name), count in legacy_at.items():
        if stamp in stamps:
            legacy[stamps[stamp]][name] = count
    for (stamp, name) in set(legacy_at) | set(shift_at):
        if stamp in stamps:
            stream[stamps[stamp]][name] = legacy_at[(stamp, name)] + shift_at[(stamp, name)]
    pairs = {t: lines_at[format_ms(t)] + unseen_at[format_ms(t)] for t in times}
    try:
        section = drift_section(times, pairs, legacy, stream)
    except ValueError as exc:
        raise _Broken(f"{source}: {exc}") from None
    return {f"segment_drift.{key}": (section[key], source) for key in ("max_psi", "per_as_of")}


def _dead_letters(files: Mapping[str, Path], params: Any, bounds: TimeBounds) -> dict[str, tuple[Any, str]]:
    events = files["events"]
    if not isinstance(params, Mapping):
        raise _Broken(f"{MANIFEST}: params is missing")
    try:
        gate = GateParams(int(params["max_out_of_orderness_ms"]), int(params["allowed_lateness_ms"]))
        log = load_event_log(events, bounds)
    except (KeyError, TypeError, ValueError):
        raise _Broken(f"{MANIFEST}: params has no usable lateness settings") from None
    except SegshadowError as exc:
        raise _Broken(f"{events.name}: {exc}") from None
    late = len(too_late_ids(log.events, gate))
    rejected = len(log.rejected)
    stream_rejected, stream_source = rejected, events.name
    if "stream_deadletter" in files:
        try:
            stream_rejected = read_dead_letters(files["stream_deadletter"]).rejected
        except SegshadowError as exc:
            raise _Broken(f"{files['stream_deadletter'].name}: {exc}") from None
        stream_source = files["stream_deadletter"].name
    name = events.name
    return {
        "dead_letter.legacy.rejected": (rejected, name),
        "dead_letter.legacy.events": (len(log.events), name),
        "dead_letter.stream.rejected": (stream_rejected, stream_source),
        "dead_letter.stream.too_late": (late, f"{name} (the stream's lateness gate)"),
        "dead_letter.stream.events": (len(log.events) - late, name),
    }


def _freshness(files: Mapping[str, Path]) -> dict[str, tuple[Any, str]]:
    """The stream figure from the live samples; a replay (no samples) has none."""
    samples = files.get("stream_latency")
    if samples is None:
        return {
            "latency.stream.source": ("replay", "the manifest (no live samples)"),
            "latency.stream.count": (0, "the manifest (no live samples)"),
            "latency.stream.p99_ms": (None, "the manifest (no live samples)"),
        }
    from compare.latency import read_measurements

    try:
        values = read_measurements(samples)
    except SegshadowError as exc:
        raise _Broken(f"{samples.name}: {exc}") from None
    figure = summarize(values, "live").to_dict()
    if not figure["exact"]:  # a sketch's figure is not reproducible: check its count and its bound instead
        return {"latency.stream.count": (figure["count"], samples.name)}
    return {f"latency.stream.{k}": (figure[k], samples.name) for k in ("count", "p50_ms", "p95_ms", "p99_ms", "max_ms")}


def _recompute(files: Mapping[str, Path], data: Mapping[str, Any]) -> list[str]:
    """``verify="full"``: the comparison again from the events and both outputs; every difference."""
    from compare.comparison import run_comparison
    from compare.inputs import GateFlags

    ruleset = data.get("ruleset", {})
    params = data.get("params", {})
    try:
        from segments.rules import load_ruleset

        rules = load_ruleset(f"{ruleset['name']}@v{ruleset['version']}")
        with tempfile.TemporaryDirectory(prefix="segshadow-verify-") as scratch:
            result = run_comparison(
                files["events"],
                files["legacy"],
                files["stream"],
                rules,
                params.get("every_ms"),
                GateFlags(params.get("max_out_of_orderness_ms"), params.get("allowed_lateness_ms")),
                scratch,
                noise_legacy=files.get("noise_legacy"),
                noise_stream=files.get("noise_stream"),
                stream_latency=files.get("stream_latency"),
                seal_outputs=False,
            )
            same_mismatches = file_digest(Path(scratch) / "mismatches.jsonl")[0] == file_digest(files["mismatches"])[0]
    except (SegshadowError, KeyError, TypeError) as exc:
        return [f"--verify full: the comparison could not be recomputed: {exc}"]
    if rules.digest != ruleset.get("digest"):
        return [f"{PARITY}: ruleset.digest differs from the rule set {rules.ref} the comparison was recomputed with"]
    again = result.to_dict()
    problems = [
        f"{PARITY}: {key} differs from the recomputed comparison"
        for key in sorted(set(again) | set(data))
        if key not in ("generated_at", "inputs", SEAL) and again.get(key) != data.get(key)
    ]
    if not same_mismatches:
        problems.append(f"{files['mismatches'].name}: differs from the recomputed comparison's mismatches")
    return problems


class EvidenceFile:
    """The latest evidence in a directory, re-read only when ``parity.json`` or its manifest changes.

    ``current()`` returns None when there is no readable evidence; ``error`` then says why.
    """

    def __init__(self, where: str | Path, verify: Verify = "counts") -> None:
        self.path = parity_path(where)
        self.verify: Verify = verify
        self.error: str | None = None
        self._seen: tuple[tuple[int, int], ...] | None = None
        self._evidence: Evidence | None = None

    def current(self) -> Evidence | None:
        stamps = []
        for path in (self.path, self.path.parent / MANIFEST):
            try:
                stat = path.stat()
            except FileNotFoundError:
                stamps.append((0, -1))
                continue
            except OSError:
                stamps.append((0, -2))
                continue
            stamps.append((stat.st_mtime_ns, stat.st_size))
        if stamps[0][1] < 0:
            self._seen, self._evidence = None, None
            self.error = f"no evidence at {self.path}"
            return None
        stamp = tuple(stamps)
        if stamp != self._seen:
            try:
                self._evidence, self.error = load_evidence(self.path, self.verify), None
            except InputError as exc:
                self._evidence, self.error = None, str(exc)
            self._seen = stamp
        return self._evidence
