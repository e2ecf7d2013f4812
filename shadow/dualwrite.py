"""Dual-write ingest: every accepted event to the legacy side's SQL table and the stream side's Redis Stream.

The **primary** (legacy SQL) write decides success and runs on the caller's
thread. Everything about the **shadow** (the Redis Stream) happens on one
background thread, so a slow or dead shadow never fails, blocks or slows the
primary: after the primary write, the caller only appends the batch to an
in-memory backlog (one lock, no I/O, no per-event work).

**Waking the thread.** By default (``linger_s`` 0) each batch wakes the thread,
so a batch reaches the shadow as soon as it can: the live run's choice, where the
shadow's delay is the stream's. Bulk ingest passes ``BULK_LINGER_S``: the thread
then wakes by its own timer every ``linger_s`` and takes what has queued, and the
caller wakes it only when a whole shadow call's worth is waiting. On this project's
2-core VM a wake per batch cost the SQLite primary 15.4% of its throughput, and the
primary thread's own CPU per event rose 11.1%, against 5.1% and 1.0% with the linger
(``bench/dual_write.py``, ``on-eager`` against ``on`` in the same run): each wake is
a cross-thread hand-off of the GIL and of a CPU, paid on the primary's thread too.
A batch then waits up to ``linger_s`` before its shadow call.

The background thread takes the whole backlog at once, in order, and

- writes it to the shadow as one ``Batch`` (one round trip and one log entry
  holding all its lines, see ``shadow.targets`` and ``streaming.eventlog``);
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
already on the wire (a frozen server does, once it resumes). So every line has
a log position ``{ms}-{seq}`` fixed by the order the primary accepted it (``ms``
the largest arrival time so far, ``seq`` counting lines up; strictly increasing);
a log entry's id is the position of its last line, so the log's last id says how
many lines it holds. The journal keeps each line's position, and the shadow skips
the lines up to its last id's ``seq``: replaying what wholly or partly got
through adds nothing twice and keeps the order, even when the replay cuts the
lines into other entries than the first attempt did. Positions are computed in
Python only for journaling (a direct write needs only the batch's end), never on
the caller's thread.

**A log that lost entries** (Redis restarted without persistence, a flush, a
failover to an empty or lagging replica) is noticed by the write that follows:
the shadow refuses a batch when its log ends before the batch's predecessor
(``LogLost``; ``shadow.targets`` checks the log's last id in the same server call
as the append). The thread then **re-seeds** the log from the primary, the
source of truth: the primary's events before the batch's first one (by
``(arrival_time, seq)``, the primary's arrival order), in that order, as a fresh
log whose last id is then set to the batch's predecessor; the batch (and the
journal after it) follows as it would have. Duplicates are not re-sent (the
primary keeps the first arrival of each id only), so the re-seeded log holds
each event once. A reader that had already applied re-sent events counts them
as duplicates (its dedup is its own, not Redis's). Each re-seed is recorded
(``DualWriter.reseeds``): when the shadow first failed and when the loss was
noticed (wall clock), where the log ended and where it should have, the lines
before the batch and how many events were re-sent. ``close`` checks the log's
end once more, so a loss after the last write is repaired too.

Counters: ``written`` (primary rows), ``shadowed`` (reached the shadow
directly), ``journaled``, ``replayed``, ``rejected`` (lines that failed
validation at ingest; they go to the ingest dead letters and to neither side),
``reseeds`` and ``resent`` (events re-sent from the primary by them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol

from segments.errors import SegshadowError
from segments.events import Event
from segments.timeutil import Clock, wall_clock_ms
from shadow.journal import Journal

log = logging.getLogger("segshadow.shadow")

Entry = tuple[str, str]
"""(log id, raw JSON line)."""

_ARRIVAL = itemgetter(5)  # Event.arrival_time, read in C
_SEQ = itemgetter(7)  # Event.seq
assert Event._fields[5] == "arrival_time" and Event._fields[7] == "seq"
Key = tuple[int, int]
"""An event's place in the primary's arrival order: ``(arrival_time, seq)``."""
COALESCE_ENTRIES = 20_000  # at most this many entries per shadow call
BULK_LINGER_S = 0.02
"""How long bulk ingest lets batches queue for the shadow thread (``DualWriter``'s ``linger_s``; module doc)."""


@dataclass(frozen=True)
class Batch:
    """Consecutive log entries: entry ``i`` has id ``{m_i}-{after_seq + i + 1}`` where ``m_i`` is the largest of
    ``after_ms`` and ``arrivals[0..i]``; its line is ``lines[i]`` (one JSON line, no newline).

    ``seqs``, when known, are the events' input positions (``Event.seq``), so that
    ``(arrivals[i], seqs[i])`` is entry ``i``'s place in the primary (``key``).
    """

    after_ms: int
    after_seq: int
    arrivals: Sequence[int]
    lines: Sequence[str]
    seqs: Sequence[int] | None = None

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

    def key(self, index: int) -> Key | None:
        """Entry ``index``'s place in the primary's arrival order, when the batch knows it."""
        return None if self.seqs is None else (self.arrivals[index], self.seqs[index])

    @classmethod
    def runs_of(cls, entries: Sequence[Entry], seqs: Sequence[int] | None = None) -> list[Batch]:
        """Batches giving exactly these ids and lines, in order: one per run of consecutive ``seq`` with
        non-decreasing ``ms`` (a journal written by this module is one run). ``seqs`` (one per entry, the
        events' input positions) carry over; the arrivals are the ids' ``ms``, which equal the events'
        arrival times when the lines came in arrival order."""
        out: list[Batch] = []
        start = 0
        parsed = [(int(ms), int(seq)) for ms, seq in (entry_id.split("-", 1) for entry_id, _ in entries)]
        for k in range(1, len(parsed) + 1):
            if k < len(parsed) and parsed[k][1] == parsed[k - 1][1] + 1 and parsed[k][0] >= parsed[k - 1][0]:
                continue
            first_ms, first_seq = parsed[start]
            run = parsed[start:k]
            lines = [line for _, line in entries[start:k]]
            positions = list(seqs[start:k]) if seqs is not None else None
            out.append(cls(first_ms, first_seq - 1, [ms for ms, _ in run], lines, positions))
            start = k
        return out


class LogLost(SegshadowError):
    """The shadow log ends before the entry a write follows: it lost entries (module doc).

    ``ends_at`` is the log's last id as found (``0-0`` for none), ``expected`` the id it should
    have reached. Exit code 1 if it ever reaches the user (a run that failed part-way).
    """

    exit_code = 1

    def __init__(self, ends_at: str, expected: str) -> None:
        super().__init__(f"the shadow log lost entries: it ends at {ends_at}, expected at least {expected}")
        self.ends_at = ends_at
        self.expected = expected


class Primary(Protocol):
    """The side whose write decides success (legacy: the SQL events table), and the source of truth."""

    def write(self, events: Sequence[Event]) -> int: ...

    def before(self, key: Key | None) -> list[Event]:
        """The stored events placed before ``key`` (all with None), in arrival order (see ``Key``)."""
        ...


class Shadow(Protocol):
    """The side written in the background (stream: the Redis Stream); raises on failure.

    ``write`` must skip entries whose id it already holds (and only those), and raise
    ``LogLost`` when the log's last id is before the batch's predecessor (seq below
    ``after_seq``). ``reseed`` starts the log again with ``batches`` (dropping what is
    left of it) and makes ``end`` its last id; ``verify`` raises ``LogLost`` when the
    log ends before ``end``.
    """

    def write(self, batch: Batch) -> None: ...

    def healthy(self) -> bool: ...

    def reseed(self, batches: Sequence[Batch], end: tuple[int, int]) -> None: ...

    def verify(self, end: tuple[int, int]) -> None: ...


@dataclass(frozen=True)
class Reseed:
    """One repair of a log that lost entries (wall-clock ms; see the module doc)."""

    noticed_at_ms: int
    down_since_ms: int | None  # the first failed shadow call before it, if the writer saw one
    log_ended_at: str
    expected_at: str
    lines_before: int  # lines this writer had put in the log before the repaired point
    resent: int

    def to_dict(self) -> dict[str, int | str | None]:
        return dict(vars(self))


@dataclass
class DualWriteCounts:
    written: int = 0
    shadowed: int = 0
    journaled: int = 0
    replayed: int = 0
    rejected: int = 0
    shadow_failures: int = 0
    reseeds: int = 0
    resent: int = 0

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
        wall_clock: Clock = wall_clock_ms,
        linger_s: float = 0.0,
    ) -> None:
        """``after_id``: the shadow log's last id, when it already holds entries; new ids follow it.

        ``queue_batches``: how many caller batches one shadow call may carry when the
        thread has fallen behind (together at most ``COALESCE_ENTRIES`` entries).
        ``linger_s``: 0 wakes the shadow thread for every batch; above 0 it wakes every
        ``linger_s`` (or when a whole call's worth is queued) and takes what has queued.
        """
        if linger_s < 0:
            raise ValueError(f"linger_s must not be negative, got {linger_s}")
        self.primary = primary
        self.shadow = shadow
        self.journal = journal
        self.counts = DualWriteCounts()
        self._coalesce = max(1, queue_batches)
        self._retry_every_s = retry_every_s
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._down_since: int | None = None  # wall ms of the first failed shadow call of the current outage
        self.reseeds: list[Reseed] = []
        self._retry_at = float("-inf")  # the shadow is not tried before this (after a failure)
        self._lock = threading.Lock()  # guards the journal between the thread and close/replay_journal
        self._wake = threading.Condition()
        self._backlog: deque[tuple[Sequence[Event], Sequence[str]]] = deque()
        self._queued = 0  # lines in the backlog
        self._flushing = 0  # callers waiting in ``flush``: a lingering thread takes the backlog now
        self._linger_s = linger_s
        self._busy = False
        self._stopping = False
        ms, seq = (int(part) for part in after_id.split("-")) if after_id else (0, 0)
        self._position = (ms, seq)  # the last id given out (touched by the background thread only)
        self._first_seq = seq
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
                self._queued += len(lines)
                if not self._linger_s or self._call_waiting():
                    self._wake.notify_all()  # the thread, and not only a caller waiting in ``flush``
        return written

    def _call_waiting(self) -> bool:
        """A whole shadow call's worth is queued (``_take`` would take no more)."""
        return len(self._backlog) >= self._coalesce or self._queued >= COALESCE_ENTRIES

    def reject(self, count: int = 1) -> None:
        self.counts.rejected += count

    # ---- the shadow path (background thread) ----------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._linger_s:
                    self._wake.wait_for(
                        lambda: self._stopping or (self._flushing > 0 and bool(self._backlog)) or self._call_waiting(),
                        timeout=self._linger_s,
                    )
                else:
                    self._wake.wait_for(lambda: bool(self._backlog) or self._stopping)
                if not self._backlog:
                    if self._stopping:
                        return
                    continue
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
        self._queued -= size
        return taken

    def _batch(self, taken: list[tuple[Sequence[Event], Sequence[str]]]) -> Batch:
        """The taken caller batches as one ``Batch`` with the next ids (outside the lock the caller takes)."""
        if len(taken) == 1:
            events, lines = taken[0]
        else:
            events = [event for part, _ in taken for event in part]
            lines = [line for _, part in taken for line in part]
        ms, seq = self._position
        batch = Batch(ms, seq, list(map(_ARRIVAL, events)), lines, list(map(_SEQ, events)))
        self._position = batch.end
        return batch

    def _forward(self, batch: Batch) -> None:
        if self.journal.pending and not self._replay():
            self._to_journal(batch, "journal not yet replayed")
            return
        try:
            self._send(batch)
            self.counts.shadowed += len(batch)
        except Exception as exc:  # a shadow failure must never reach the primary path
            self._failed()
            self._to_journal(batch, f"{type(exc).__name__}: {exc}")

    def _failed(self) -> None:
        self.counts.shadow_failures += 1
        self._retry_at = self._clock() + self._retry_every_s
        if self._down_since is None:
            self._down_since = self._wall_clock()

    def _send(self, batch: Batch) -> None:
        """Write ``batch``; when the log lost entries before it, re-seed the log first (module doc)."""
        try:
            self.shadow.write(batch)
        except LogLost as lost:
            first = batch.key(0) if len(batch) else None
            if first is None:
                raise  # a batch without places (not from ``write``) cannot say which events precede it
            self._reseed(first, (batch.after_ms, batch.after_seq), lost)
            self.shadow.write(batch)
        self._down_since = None

    def _reseed(self, first: Key | None, end: tuple[int, int], lost: LogLost) -> None:
        """Re-send the primary's events before ``first`` (all of them with None) as a fresh log ending at ``end``."""
        events = self.primary.before(first)
        batches: list[Batch] = []
        ms, seq = 0, 0
        for start in range(0, len(events), COALESCE_ENTRIES):
            part = events[start : start + COALESCE_ENTRIES]
            batch = Batch(ms, seq, list(map(_ARRIVAL, part)), [e.to_json() for e in part], list(map(_SEQ, part)))
            batches.append(batch)
            ms, seq = batch.end
        if (ms, seq) > end:
            raise SegshadowError(
                f"cannot re-seed the shadow log: the primary holds {len(events)} events before {end[0]}-{end[1]}, "
                "more than the log had lines"
            ) from lost
        noticed = self._wall_clock()
        log.warning("%s; re-seeding it with the primary's %d events before that point", lost, len(events))
        self.shadow.reseed(batches, end)
        self.counts.reseeds += 1
        self.counts.resent += len(events)
        lines_before = end[1] - self._first_seq
        self.reseeds.append(Reseed(noticed, self._down_since, lost.ends_at, lost.expected, lines_before, len(events)))

    def _to_journal(self, batch: Batch, why: str) -> None:
        with self._lock:
            if self.journal.pending == 0:
                log.warning("shadow write diverted to the journal: %s", why)
            seqs = batch.seqs if batch.seqs is not None else ["-"] * len(batch)
            self.journal.append([f"{i} {q} {line}" for (i, line), q in zip(batch.entries(), seqs, strict=True)])
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
                    for batch in _journaled(chunk):
                        self._send(batch)
                        replayed += len(batch)
            except Exception as exc:
                self._failed()
                log.warning("journal replay failed, will retry: %s", exc)
                return False
            self.journal.commit()
            self.counts.replayed += replayed
            log.info("replayed %d journaled events into the shadow", replayed)
            return True

    # ---- shutdown ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Wait until everything written so far has reached the shadow or the journal (a lingering thread is
        woken for it at once)."""
        with self._wake:
            self._flushing += 1
            self._wake.notify_all()
            try:
                self._wake.wait_for(lambda: not self._backlog and not self._busy)
            finally:
                self._flushing -= 1

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
            return
        try:
            self.shadow.verify(self._position)
        except LogLost as lost:  # lost after the last write: nothing else would notice
            try:
                self._reseed(None, self._position, lost)
            except Exception as exc:
                log.warning("could not re-seed the shadow log after the last write: %s", exc)
        except Exception as exc:
            log.warning("could not check the shadow log's end: %s", exc)

    def replay_journal(self) -> bool:
        """Replay now (e.g. after an outage, from an operator command); True when nothing is left."""
        return not self.journal.pending or self._replay(force=True)


def _journaled(chunk: Sequence[str]) -> list[Batch]:
    """Journal lines (``{id} {seq or -} {line}``) back into batches with their ids and places."""
    entries: list[Entry] = []
    seqs: list[int] = []
    for text in chunk:
        entry_id, seq, line = text.split(" ", 2)
        entries.append((entry_id, line))
        seqs.append(int(seq) if seq != "-" else -1)
    return Batch.runs_of(entries, seqs if -1 not in seqs else None)
