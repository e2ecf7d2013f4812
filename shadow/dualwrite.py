"""Dual-write ingest: every accepted event to the legacy side's SQL table and the stream side's Redis Stream.

The **primary** (legacy SQL) write decides success and runs on the caller's
thread. Everything about the **shadow** (the Redis Stream) happens on one
background thread, so a slow or dead shadow never fails, blocks or slows the
primary: after the primary write, the caller only appends the batch to an
in-memory backlog (one lock, no I/O, no per-event work).

The background thread takes the whole backlog at once, in order, and

- writes it to the shadow as one ``Batch`` (one round trip, see
  ``shadow.targets``);
- when that fails (shadow down), or while the journal still holds anything,
  appends it to the durable ``Journal`` instead, so the shadow still receives
  events in arrival order. After a failure the shadow is not tried again for
  ``retry_every_s``: while it is down the thread only journals, so the backlog
  drains at disk speed instead of one timeout per batch;
- when the shadow answers again, replays the journal in order, then resumes
  direct writes. ``close`` waits for the backlog and, if the shadow is back,
  drains the journal.

Only the background thread (and ``close`` / ``replay_journal`` after it) touches
the journal, so the journal and the log always hold batches in the order the
primary accepted them. The backlog is unbounded: memory holds at most what
arrives while one shadow call is in flight (bounded by the client's timeout).

A timed-out write is ambiguous: the server may still apply commands that were
already on the wire (a frozen server does, once it resumes). So every entry has
a log id ``{ms}-{seq}`` fixed by the order the primary accepted it (``ms`` the
largest arrival time so far, ``seq`` counting up; strictly increasing), the
journal keeps the ids, and the shadow skips an id it already holds: replaying
what partly got through adds nothing twice and keeps the order. The ids are
computed where they are used (by the shadow server for direct writes, in Python
only for journaling), never on the caller's thread.

Counters: ``written`` (primary rows), ``shadowed`` (reached the shadow
directly), ``journaled``, ``replayed``, ``rejected`` (lines that failed
validation at ingest; they go to the ingest dead letters and to neither side).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol

from segments.events import Event
from shadow.journal import Journal

log = logging.getLogger("segshadow.shadow")

Entry = tuple[str, str]
"""(log id, raw JSON line)."""

_ARRIVAL = itemgetter(5)  # Event.arrival_time, read in C
assert Event._fields[5] == "arrival_time"
COALESCE_ENTRIES = 20_000  # at most this many entries per shadow call


@dataclass(frozen=True)
class Batch:
    """Consecutive log entries: entry ``i`` has id ``{m_i}-{after_seq + i + 1}`` where ``m_i`` is the largest of
    ``after_ms`` and ``arrivals[0..i]``; its line is ``lines[i]`` (one JSON line, no newline)."""

    after_ms: int
    after_seq: int
    arrivals: Sequence[int]
    lines: Sequence[str]

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def end(self) -> tuple[int, int]:
        """The log position after the batch: (ms, seq) of its last id."""
        if not self.lines:
            return self.after_ms, self.after_seq
        return max(self.after_ms, max(self.arrivals)), self.after_seq + len(self.lines)

    def ids(self) -> list[str]:
        out = []
        ms, seq = self.after_ms, self.after_seq
        for arrival in self.arrivals:
            if arrival > ms:
                ms = arrival
            seq += 1
            out.append(f"{ms}-{seq}")
        return out

    def entries(self) -> list[Entry]:
        return list(zip(self.ids(), self.lines, strict=True))

    def packed_arrivals(self) -> bytes:
        """The arrivals as little-endian doubles (exact below 2**53 ms), for the shadow server."""
        return struct.pack(f"<{len(self.arrivals)}d", *self.arrivals)

    @classmethod
    def runs_of(cls, entries: Sequence[Entry]) -> list[Batch]:
        """Batches giving exactly these ids and lines, in order: one per run of consecutive ``seq`` with
        non-decreasing ``ms`` (a journal written by this module is one run)."""
        out: list[Batch] = []
        start = 0
        parsed = [(int(ms), int(seq)) for ms, seq in (entry_id.split("-", 1) for entry_id, _ in entries)]
        for k in range(1, len(parsed) + 1):
            if k < len(parsed) and parsed[k][1] == parsed[k - 1][1] + 1 and parsed[k][0] >= parsed[k - 1][0]:
                continue
            first_ms, first_seq = parsed[start]
            run = parsed[start:k]
            out.append(cls(first_ms, first_seq - 1, [ms for ms, _ in run], [line for _, line in entries[start:k]]))
            start = k
        return out


class Primary(Protocol):
    """The side whose write decides success (legacy: the SQL events table)."""

    def write(self, events: Sequence[Event]) -> int: ...


class Shadow(Protocol):
    """The side written in the background (stream: the Redis Stream); raises on failure.

    ``write`` must skip entries whose id it already holds (and only those).
    """

    def write(self, batch: Batch) -> None: ...

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``after_id``: the shadow log's last id, when it already holds entries; new ids follow it.

        ``queue_batches``: how many caller batches one shadow call may carry when the
        thread has fallen behind (together at most ``COALESCE_ENTRIES`` entries).
        """
        self.primary = primary
        self.shadow = shadow
        self.journal = journal
        self.counts = DualWriteCounts()
        self._coalesce = max(1, queue_batches)
        self._retry_every_s = retry_every_s
        self._sleep = sleep
        self._clock = clock
        self._retry_at = float("-inf")  # the shadow is not tried before this (after a failure)
        self._lock = threading.Lock()  # guards the journal between the thread and close/replay_journal
        self._wake = threading.Condition()
        self._backlog: deque[tuple[Sequence[Event], Sequence[str]]] = deque()
        self._busy = False
        self._stopping = False
        ms, seq = (int(part) for part in after_id.split("-")) if after_id else (0, 0)
        self._position = (ms, seq)  # the last id given out (touched by the background thread only)
        self._worker = threading.Thread(target=self._run, name="segshadow-shadow-writer", daemon=True)
        self._worker.start()

    # ---- the primary path -----------------------------------------------------------------------

    def write(self, events: Sequence[Event], lines: Sequence[str]) -> int:
        """Write one batch: ``events`` to the primary (raises if it fails), ``lines`` towards the shadow.

        ``lines`` are the same events as JSON lines (no newline inside), in the same
        (arrival) order; neither sequence may be changed after the call.
        """
        if len(lines) != len(events):
            raise ValueError(f"{len(events)} events but {len(lines)} lines")
        written = self.primary.write(events)
        self.counts.written += written
        if lines:
            with self._wake:
                self._backlog.append((events, lines))
                self._wake.notify()
        return written

    def reject(self, count: int = 1) -> None:
        self.counts.rejected += count

    # ---- the shadow path (background thread) ----------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: bool(self._backlog) or self._stopping)
                if not self._backlog:
                    return
                taken = self._take()
                self._busy = True
            try:
                self._forward(self._batch(taken))
            except Exception:  # e.g. the journal's disk failed: say so, and keep the thread alive
                log.exception("the shadow writer could neither write nor journal a batch")
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    def _take(self) -> list[tuple[Sequence[Event], Sequence[str]]]:
        """Up to ``queue_batches`` caller batches (at most ``COALESCE_ENTRIES`` entries) off the backlog."""
        taken = [self._backlog.popleft()]
        size = len(taken[0][1])
        while self._backlog and len(taken) < self._coalesce and size + len(self._backlog[0][1]) <= COALESCE_ENTRIES:
            taken.append(self._backlog.popleft())
            size += len(taken[-1][1])
        return taken

    def _batch(self, taken: list[tuple[Sequence[Event], Sequence[str]]]) -> Batch:
        """The taken caller batches as one ``Batch`` with the next ids (outside the lock the caller takes)."""
        if len(taken) == 1:
            events, lines = taken[0]
        else:
            events = [event for part, _ in taken for event in part]
            lines = [line for _, part in taken for line in part]
        ms, seq = self._position
        batch = Batch(ms, seq, list(map(_ARRIVAL, events)), lines)
        self._position = batch.end
        return batch

    def _forward(self, batch: Batch) -> None:
        if self.journal.pending and not self._replay():
            self._to_journal(batch, "journal not yet replayed")
            return
        try:
            self.shadow.write(batch)
            self.counts.shadowed += len(batch)
        except Exception as exc:  # a shadow failure must never reach the primary path
            self.counts.shadow_failures += 1
            self._retry_at = self._clock() + self._retry_every_s
            self._to_journal(batch, f"{type(exc).__name__}: {exc}")

    def _to_journal(self, batch: Batch, why: str) -> None:
        with self._lock:
            if self.journal.pending == 0:
                log.warning("shadow write diverted to the journal: %s", why)
            self.journal.append([f"{entry_id} {line}" for entry_id, line in batch.entries()])
            self.counts.journaled += len(batch)

    def _replay(self, force: bool = False) -> bool:
        """Replay the journal into the shadow if it answers; True when the journal is empty afterwards.

        Without ``force`` nothing is tried within ``retry_every_s`` of the last failure.
        """
        if not force and self._clock() < self._retry_at:
            return False
        if not self.shadow.healthy():
            self._retry_at = self._clock() + self._retry_every_s
            return False
        with self._lock:
            try:
                replayed = 0
                for chunk in self.journal.drain():
                    for batch in Batch.runs_of([tuple(line.split(" ", 1)) for line in chunk]):  # type: ignore[misc]
                        self.shadow.write(batch)
                        replayed += len(batch)
            except Exception as exc:
                self.counts.shadow_failures += 1
                self._retry_at = self._clock() + self._retry_every_s
                log.warning("journal replay failed, will retry: %s", exc)
                return False
            self.journal.commit()
            self.counts.replayed += replayed
            log.info("replayed %d journaled events into the shadow", replayed)
            return True

    # ---- shutdown ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Wait until everything written so far has reached the shadow or the journal."""
        with self._wake:
            self._wake.wait_for(lambda: not self._backlog and not self._busy)

    def close(self, drain_timeout_s: float = 10.0) -> None:
        """Flush, stop the thread, then try to replay the journal for up to ``drain_timeout_s``."""
        self.flush()
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self._worker.join()
        deadline = time.monotonic() + drain_timeout_s
        while self.journal.pending and time.monotonic() < deadline:
            if self._replay(force=True):
                break
            self._sleep(self._retry_every_s)
        if self.journal.pending:
            log.warning("%d events stay journaled for the shadow side (it is still down)", self.journal.pending)

    def replay_journal(self) -> bool:
        """Replay now (e.g. after an outage, from an operator command); True when nothing is left."""
        return not self.journal.pending or self._replay(force=True)
