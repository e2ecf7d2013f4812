"""Comparison evidence: the comparator's ``DIR/parity.json``, read once, with its SHA-256.

The keys the gates read (SPEC §5 and the comparator's contract): ``pairs``,
``agree``, ``mismatch``, ``by_cause``, ``per_segment``, ``ruleset{name, version,
digest}``, ``generated_at`` (RFC 3339), ``as_of_rounds``, ``unexplained_rate``,
``unexplained_rate_wilson95``, ``agreement_over_time``, ``latency{legacy, stream}``,
``dead_letter{legacy, stream}``, ``ground_truth`` (risk only) and ``verdict``. A
missing key is not an error here: the gate that needs it says "inconclusive".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segments.errors import InputError

PARITY = "parity.json"


@dataclass(frozen=True)
class Evidence:
    """One evidence file: where it is, the SHA-256 of its bytes, and its parsed content."""

    path: str
    sha256: str
    data: Mapping[str, Any]


def parity_path(where: str | Path) -> Path:
    """``where/parity.json`` for a directory, or ``where`` itself when it names the file."""
    path = Path(where)
    return path if path.suffix == ".json" else path / PARITY


def load_evidence(where: str | Path) -> Evidence:
    """Read ``parity.json`` from the evidence directory ``where`` (or the file itself).

    Raises ``InputError`` when it is missing, unreadable, not JSON, or not an object.
    """
    path = parity_path(where)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
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
    return Evidence(str(path), hashlib.sha256(raw).hexdigest(), data)


class EvidenceFile:
    """The latest evidence in a directory, re-read only when ``parity.json`` changes (for long runs).

    ``current()`` returns None when there is no readable evidence; ``error`` then says why.
    """

    def __init__(self, where: str | Path) -> None:
        self.path = parity_path(where)
        self.error: str | None = None
        self._seen: tuple[int, int] | None = None
        self._evidence: Evidence | None = None

    def current(self) -> Evidence | None:
        try:
            stat = self.path.stat()
        except OSError:
            self._seen, self._evidence = None, None
            self.error = f"no evidence at {self.path}"
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._seen:
            try:
                self._evidence, self.error = load_evidence(self.path), None
            except InputError as exc:
                self._evidence, self.error = None, str(exc)
            self._seen = stamp
        return self._evidence
