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


class Shadow(Protocol):
    """The side written in the background (stream: the Redis Stream); raises on failure."""

    def write(self, lines: Sequence[str]) -> None: ...

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
    ) -> None:
        self.primary = primary
        self.shadow = shadow
        self.journal = journal
        self.counts = DualWriteCounts()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_batches)
        self._retry_every_s = retry_every_s
        self._sleep = sleep
        self._lock = threading.Lock()  # guards the journal and the counters the worker touches
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
            try:
                self._queue.put_nowait(list(lines))
            except queue.Full:
                self._to_journal(list(lines), "shadow queue full")
        return written

    def reject(self, count: int = 1) -> None:
        self.counts.rejected += count

    # ---- the shadow path (background thread) ----------------------------------------------------

    def _to_journal(self, lines: list[str], why: str) -> None:
        with self._lock:
            if self.journal.pending == 0:
                log.warning("shadow write diverted to the journal: %s", why)
            self.journal.append(lines)
            self.counts.journaled += len(lines)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                lines: list[str] = item  # type: ignore[assignment]
                if self.journal.pending and not self._replay():
                    self._to_journal(lines, "journal not yet replayed")
                    continue
                try:
                    self.shadow.write(lines)
                    self.counts.shadowed += len(lines)
                except Exception as exc:  # a shadow failure must never reach the primary path
                    self.counts.shadow_failures += 1
                    self._to_journal(lines, f"{type(exc).__name__}: {exc}")
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
                    self.shadow.write(chunk)
                    replayed += len(chunk)
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
