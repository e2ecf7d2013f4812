"""The durable journal of shadow writes that did not reach the shadow side.

An append-only JSON Lines file, flushed and fsynced on every append, so a crash
after ``append`` returns loses nothing. ``drain`` hands entries back in the order
they were journaled and the journal is emptied only once the caller has written
them all (``commit``), so a failure while replaying leaves the journal intact.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from segments.errors import InputError


class Journal:
    """Journaled raw event lines, in arrival order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        self._pending = self._count()

    def _count(self) -> int:
        try:
            with open(self.path, "rb") as handle:
                return sum(1 for line in handle if line.strip())
        except OSError as exc:
            raise InputError(f"cannot read the journal: {exc.strerror}", str(self.path)) from None

    @property
    def pending(self) -> int:
        """How many lines wait to be replayed."""
        return self._pending

    def append(self, lines: Sequence[str]) -> None:
        """Durably add ``lines`` (each one JSON event without newline) after everything journaled so far."""
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        self._pending += len(lines)

    def drain(self, batch: int = 5_000) -> Iterator[list[str]]:
        """The journaled lines in order, ``batch`` at a time; call ``commit`` once all are written."""
        chunk: list[str] = []
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    chunk.append(line.rstrip("\n"))
                    if len(chunk) >= batch:
                        yield chunk
                        chunk = []
        if chunk:
            yield chunk

    def commit(self) -> None:
        """Everything drained was written: empty the journal."""
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        self._pending = 0
