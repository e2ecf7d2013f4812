"""The evidence seal: ``DIR/manifest.json``, written last, binds a run's verdict to every input and output.

A run that produces evidence (``compare``, ``shadow run``, ``shadow run --live``)
calls ``begin`` first: it removes an earlier ``manifest.json`` and writes the
``INCOMPLETE`` marker, so a directory whose run stopped part-way never looks
finished. ``seal`` is the run's last step: it writes the manifest atomically
(a temporary file, then a rename) and removes the marker. A directory with
``parity.json`` and no manifest, or with the marker, is an incomplete run.

``manifest.json``::

    {"format": "segshadow-evidence/1", "generated_at": <parity.json's>, "sealed_at": "...Z",
     "code_version": "segshadow X.Y.Z", "ruleset": {name, version, digest}, "params": {...},
     "verdict": "...", "artifacts": {ROLE: {"path", "sha256", "bytes"}},
     "provenance": {"legacy": {"source": "sidecar" | "declared", ...}, "stream": {...}, "shared_ruleset"}}

Roles: ``parity``, ``mismatches``, ``events``, ``legacy``, ``legacy_meta``,
``stream``, ``stream_meta`` always; ``stream_latency`` (the live samples),
``stream_deadletter``, ``noise_legacy``, ``noise_stream``, ``report``, ``summary``,
``shadow`` and ``live`` when the run has them. A path inside the run directory is
stored relative to it (the directory can be moved), any other path absolute.
``rollout.evidence`` verifies all of it on use. The hashes prove the files are the
ones the manifest names and agree with each other; alone they are not a signature:
whoever can rewrite every file and the manifest consistently can forge them (say,
move ``generated_at`` in both to make stale evidence fresh).

**Signed evidence.** With ``SEGSHADOW_EVIDENCE_KEY`` set (the key itself, or
``@FILE`` to read it from a file; at least 16 bytes) the manifest also carries
``"signature": {"alg": "HMAC-SHA256", "key_id", "value"}``: an HMAC of the
manifest's canonical JSON (sorted keys, no spaces, the signature left out) under
the key; ``key_id`` is the first 12 hex digits of the key's SHA-256, so a reader
can tell which key without learning it. A verifier that has the key set requires
a valid signature, so whoever runs the gates with the key (a CI job, the rollout
service) accepts only evidence that a holder of the key sealed; an operator
without it cannot re-seal an edited run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from compare.inputs import ingest_deadletter_file
from compare.parity import ParityResult
from segments.errors import UsageError
from segments.outputs import meta_path
from segments.rules import RuleSet, parse_ruleset_text
from segments.timeutil import Clock, format_ms, wall_clock_ms

MANIFEST = "manifest.json"
INCOMPLETE = "INCOMPLETE"
FORMAT = "segshadow-evidence/1"
REQUIRED = ("parity", "mismatches", "events", "legacy", "legacy_meta", "stream", "stream_meta")
CHUNK = 1 << 20
RULESET_FILE = "ruleset.json"  # the compared rule set's definition (canonical JSON)
KEY_ENV = "SEGSHADOW_EVIDENCE_KEY"
SIGNATURE_ALG = "HMAC-SHA256"
MIN_KEY_BYTES = 16


def evidence_key(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The signing key from ``SEGSHADOW_EVIDENCE_KEY`` (``@FILE``: the file's bytes, stripped), or None.

    ``UsageError`` for an unreadable key file or a key shorter than 16 bytes.
    """
    text = environ.get(KEY_ENV)
    if not text:
        return None
    if text.startswith("@"):
        try:
            key = Path(text[1:]).read_bytes().strip()
        except OSError as exc:
            raise UsageError(f"{KEY_ENV}: cannot read the key file {text[1:]}: {exc.strerror}") from None
    else:
        key = text.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise UsageError(f"{KEY_ENV}: the key has {len(key)} bytes; at least {MIN_KEY_BYTES} are needed")
    return key


def key_id(key: bytes) -> str:
    """Which key, without the key: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:12]


def signature_value(manifest: Mapping[str, Any], key: bytes) -> str:
    """The HMAC-SHA256 (hex) of ``manifest``'s canonical JSON, its ``signature`` left out."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def signature_problem(manifest: Mapping[str, Any], key: bytes | None) -> str | None:
    """Why ``manifest``'s signature does not hold under ``key`` (None: it holds, or no key to require one)."""
    if key is None:
        return None
    signed = manifest.get("signature")
    if not isinstance(signed, dict):
        return f"{MANIFEST}: not signed, and {KEY_ENV} is set: only signed evidence is accepted"
    if signed.get("alg") != SIGNATURE_ALG:
        return f"{MANIFEST}: signature algorithm {signed.get('alg')!r}, not {SIGNATURE_ALG}"
    if signed.get("key_id") != key_id(key):
        return f"{MANIFEST}: signed with key {signed.get('key_id')!r}, not this one ({key_id(key)})"
    if not hmac.compare_digest(str(signed.get("value", "")), signature_value(manifest, key)):
        return f"{MANIFEST}: the signature does not match: the manifest was changed after it was signed"
    return None


def sealed_ruleset(path: Path) -> RuleSet:
    """The rule set a run sealed as ``ruleset.json``; ``OSError`` or ``SegshadowError`` when it cannot be read."""
    return parse_ruleset_text(path.read_text(encoding="utf-8"), path.name)


def code_version() -> str:
    """The installed segshadow's version, as the manifest records it."""
    try:
        return f"segshadow {metadata.version('segshadow')}"
    except metadata.PackageNotFoundError:
        return "segshadow (not installed)"


def file_digest(path: str | Path) -> tuple[str, int]:
    """(SHA-256 hex, size in bytes) of a file, read in 1 MB chunks; ``OSError`` as the OS raises it."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def begin(out_dir: str | Path) -> None:
    """Mark ``out_dir`` as holding a run in progress: drop an earlier manifest, write ``INCOMPLETE``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    (out / INCOMPLETE).write_text("a run is writing this directory, or stopped before sealing it\n", "utf-8")


def comparison_artifacts(
    out_dir: str | Path,
    events: str | Path,
    legacy: str | Path,
    stream: str | Path,
    *,
    stream_latency: str | Path | None = None,
    noise_legacy: str | Path | None = None,
    noise_stream: str | Path | None = None,
    declared: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Path]:
    """The artifacts of one comparison by role (those that exist; the required ones always).

    A side in ``declared`` was read without a sidecar (``compare.foreign``): it has no ``*_meta`` role.
    """
    out = Path(out_dir)
    roles: dict[str, Path | None] = {
        "parity": out / "parity.json",
        "mismatches": out / "mismatches.jsonl",
        "report": out / "report.html",
        "summary": out / "summary.md",
        "sketches": out / "sketches.json",
        "ruleset": out / RULESET_FILE,
        "events": Path(events),
        "legacy": Path(legacy),
        "legacy_meta": meta_path(legacy),
        "stream": Path(stream),
        "stream_meta": meta_path(stream),
        "stream_deadletter": _stream_deadletter(Path(stream)),
        "ingest_deadletter": ingest_deadletter_file(events),
        "stream_latency": Path(stream_latency) if stream_latency is not None else None,
        "noise_legacy": Path(noise_legacy) if noise_legacy is not None else None,
        "noise_stream": Path(noise_stream) if noise_stream is not None else None,
    }
    for side in declared:
        roles[f"{side}_meta"] = None
    if "stream" in declared:
        roles["stream_deadletter"] = None
    return {role: path for role, path in roles.items() if path is not None and (role in REQUIRED or path.exists())}


def _stream_deadletter(stream: Path) -> Path | None:
    try:
        meta = json.loads(meta_path(stream).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = meta.get("dead_letter_path") if isinstance(meta, dict) else None
    return stream.parent / name if isinstance(name, str) and name else None


def _stored_path(out: Path, path: Path) -> str:
    resolved = path.resolve()
    try:
        return resolved.relative_to(out.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def seal(
    out_dir: str | Path,
    result: ParityResult | Mapping[str, Any],
    artifacts: Mapping[str, Path],
    clock: Clock = wall_clock_ms,
) -> Path:
    """Write ``out_dir/manifest.json`` (atomically, last) and remove the ``INCOMPLETE`` marker.

    ``result`` is the comparison's result (or ``parity.json``'s content) the manifest binds.

    Signed when ``SEGSHADOW_EVIDENCE_KEY`` is set (module doc). Raises ``OSError`` when an
    artifact cannot be read (the run then stays incomplete), ``UsageError`` for an unusable key.
    """
    key = evidence_key()
    out = Path(out_dir)
    entries: dict[str, Any] = {}
    for role, path in sorted(artifacts.items()):
        sha, size = file_digest(path)
        entries[role] = {"path": _stored_path(out, path), "sha256": sha, "bytes": size}
    data = result.to_dict() if isinstance(result, ParityResult) else result
    manifest = {
        "format": FORMAT,
        "generated_at": data["generated_at"],
        "sealed_at": format_ms(clock()),
        "code_version": code_version(),
        "ruleset": data["ruleset"],
        "params": data["params"],
        "verdict": data["verdict"],
        "artifacts": entries,
    }
    if data.get("provenance"):
        # Each side's source: "sidecar" (checked) or "declared" on the command line (not verified).
        manifest["provenance"] = data["provenance"]
    if key is not None:  # last: the signature covers everything above
        manifest["signature"] = {"alg": SIGNATURE_ALG, "key_id": key_id(key), "value": signature_value(manifest, key)}
    target = out / MANIFEST
    temp = out / (MANIFEST + ".partial")
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(target)
    (out / INCOMPLETE).unlink(missing_ok=True)
    return target
