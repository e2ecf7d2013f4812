"""Dual-write ingest: every accepted event to the legacy side's SQL table and the stream side's Redis Stream.

The **primary** (legacy SQL) write decides success and runs on the caller's
thread. The **shadow** write (XADD to the Redis Stream) runs on a background
thread behind a bounded queue, so a slow or dead shadow never fails, blocks or
slows the primary beyond one ``queue.put_nowait``:

- queue full (shadow slow) or shadow write failed (shadow down): the batch goes to
  the durable ``Journal`` instead, and so does every later batch while the
  journal holds anything, so the shadow side still receives events in arrival
  order;
- when the shadow answers again, the journal is replayed in order, then direct
  writes resume. ``close`` waits for the queue and, if the shadow is back,
  drains the journal.

A timed-out write is ambiguous: the server may still apply commands that were
already on the wire (a frozen server does, once it resumes). So every entry gets
its log id when the primary accepts it (``{arrival ms}-{sequence}``, strictly
increasing), the journal keeps the ids, and the shadow skips an id it already
holds: replaying what partly got through adds nothing twice and keeps the order.

Counters: ``written`` (primary rows), ``shadowed`` (reached the shadow
directly), ``journaled``, ``replayed``, ``rejected`` (lines that failed
validation at ingest; they go to the ingest dead letters and to neither side).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from segments.events import Event
from shadow.journal import Journal

log = logging.getLogger("segshadow.shadow")


class Primary(Protocol):
    """The side whose write decides success (legacy: the SQL events table)."""

    def write(self, events: Sequence[Event]) -> int: ...


Entry = tuple[str, str]
"""(log id, raw JSON line)."""


class Shadow(Protocol):
    """The side written in the background (stream: the Redis Stream); raises on failure.

    ``write`` must skip entries whose id it already holds (and only those).
    """

    def write(self, entries: Sequence[Entry]) -> None: ...

    def healthy(self) -> bool: ...


@dataclass
class DualWriteCounts:
    written: int = 0
    shadowed: int = 0
    journaled: int = 0
    replayed: int = 0
    rejected: int = 0
    shadow_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


_STOP = object()


class DualWriter:
    """Writes batches to the primary now and to the shadow in the background (see the module doc)."""

    def __init__(
        self,
        primary: Primary,
        shadow: Shadow,
        journal: Journal,
        queue_batches: int = 64,
        retry_every_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        after_id: str | None = None,
    ) -> None:
        """``after_id``: the shadow log's last id, when it already holds entries; new ids follow it."""
        self.primary = primary
        self.shadow = shadow
        self.journal = journal
        self.counts = DualWriteCounts()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_batches)
        self._retry_every_s = retry_every_s
        self._sleep = sleep
        self._lock = threading.Lock()  # guards the journal and the counters the worker touches
        self._last_ms, self._seq = (int(part) for part in after_id.split("-")) if after_id else (0, 0)
        self._worker = threading.Thread(target=self._run, name="segshadow-shadow-writer", daemon=True)
        self._worker.start()

    # ---- the primary path -----------------------------------------------------------------------

    def write(self, events: Sequence[Event], lines: Sequence[str]) -> int:
        """Write one batch: ``events`` to the primary (raises if it fails), ``lines`` towards the shadow.

        ``lines`` are the same events as JSON lines, in the same (arrival) order.
        """
        written = self.primary.write(events)
        self.counts.written += written
        if lines:
            entries = [(self._next_id(event.arrival_time), line) for event, line in zip(events, lines, strict=True)]
            try:
                self._queue.put_nowait(entries)
            except queue.Full:
                self._to_journal(entries, "shadow queue full")
        return written

    def _next_id(self, arrival_ms: int) -> str:
        self._last_ms = max(self._last_ms, arrival_ms)
        self._seq += 1
        return f"{self._last_ms}-{self._seq}"

    def reject(self, count: int = 1) -> None:
        self.counts.rejected += count

    # ---- the shadow path (background thread) ----------------------------------------------------

    def _to_journal(self, entries: list[Entry], why: str) -> None:
        with self._lock:
            if self.journal.pending == 0:
                log.warning("shadow write diverted to the journal: %s", why)
            self.journal.append([f"{entry_id} {line}" for entry_id, line in entries])
            self.counts.journaled += len(entries)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                entries: list[Entry] = item  # type: ignore[assignment]
                if self.journal.pending and not self._replay():
                    self._to_journal(entries, "journal not yet replayed")
                    continue
                try:
                    self.shadow.write(entries)
                    self.counts.shadowed += len(entries)
                except Exception as exc:  # a shadow failure must never reach the primary path
                    self.counts.shadow_failures += 1
                    self._to_journal(entries, f"{type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()

    def _replay(self) -> bool:
        """Replay the journal into the shadow if it answers; True when the journal is empty afterwards."""
        if not self.shadow.healthy():
            return False
        with self._lock:
            try:
                replayed = 0
                for chunk in self.journal.drain():
                    entries = [tuple(line.split(" ", 1)) for line in chunk]
                    self.shadow.write(entries)  # type: ignore[arg-type]
                    replayed += len(entries)
            except Exception as exc:
                self.counts.shadow_failures += 1
                log.warning("journal replay failed, will retry: %s", exc)
                return False
            self.journal.commit()
            self.counts.replayed += replayed
            log.info("replayed %d journaled events into the shadow", replayed)
            return True

    # ---- shutdown ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Wait until everything queued has been written to the shadow or journaled."""
        self._queue.join()

    def close(self, drain_timeout_s: float = 10.0) -> None:
        """Flush, stop the worker, then try to replay the journal for up to ``drain_timeout_s``."""
        self.flush()
        self._queue.put(_STOP)
        self._worker.join()
        deadline = time.monotonic() + drain_timeout_s
        while self.journal.pending and time.monotonic() < deadline:
            if self._replay():
                break
            self._sleep(self._retry_every_s)
        if self.journal.pending:
            log.warning("%d events stay journaled for the shadow side (it is still down)", self.journal.pending)

    def replay_journal(self) -> bool:
        """Replay now (e.g. after an outage, from an operator command); True when nothing is left."""
        return not self.journal.pending or self._replay()
