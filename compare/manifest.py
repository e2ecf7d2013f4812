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
``rollout.evidence`` verifies all of it on use. The seal proves the files are the
ones the run wrote and agree with each other; it is not a signature: whoever can
rewrite every file and the manifest consistently can forge it (documented in
``rollout/README.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from compare.inputs import ingest_deadletter_file
from compare.parity import ParityResult
from segments.outputs import meta_path
from segments.timeutil import Clock, format_ms, wall_clock_ms

MANIFEST = "manifest.json"
INCOMPLETE = "INCOMPLETE"
FORMAT = "segshadow-evidence/1"
REQUIRED = ("parity", "mismatches", "events", "legacy", "legacy_meta", "stream", "stream_meta")
CHUNK = 1 << 20


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

    Raises ``OSError`` when an artifact cannot be read (the run then stays incomplete).
    """
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
    target = out / MANIFEST
    temp = out / (MANIFEST + ".partial")
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(target)
    (out / INCOMPLETE).unlink(missing_ok=True)
    return target
