"""Arrival order over a file of any size: sorted runs spilled to disk, merged back, memory bounded by a run.

A replay admits events in arrival order (SPEC §1: by ``arrival_time``, ties in
input order, ``seq``), which is only known once every line is read. Holding
every parsed event until then costs about 750 bytes an event (750 MiB for a
million lines). ``ArrivalRuns`` holds at most ``run_events`` of them: when its
buffer is full it sorts it and writes it to an anonymous temporary file
(``marshal`` blocks of 4,096 events, each block its columns: one tuple per
field, about 60 bytes an event); ``ordered`` then yields every event in exactly
``arrival_order``'s order:

- nothing was spilled (a file of at most ``run_events`` valid events): the
  buffer sorted, as before, at no extra cost;
- the runs do not overlap (each run's last key at or below the next run's first:
  a file recorded in arrival order, or nearly): the runs one after the other;
- otherwise a k-way merge of the runs (``heapq.merge`` on ``arrival_time``).

Events are appended in input order (``seq`` ascending: a reader numbers lines as
it reads them). Every sort and merge here is then on ``arrival_time`` alone:
``list.sort`` and ``heapq.merge`` are stable and each run holds later lines
than the one before, so ties stay in ``seq`` order, which is ``arrival_order``'s
``(arrival_time, seq)`` without a tuple key per event. The keys are unique
(``seq`` is the line), so the order is total and the result does not depend on
the run size.

What a spilled event costs (the 1M-line replay, 7 runs): a block is written as
columns (``zip(*block)``, no tuple per event) once its events are dropped, with
``marshal``'s references (``MARSHAL_VERSION``), and read back by zipping the
columns into ``Event`` tuples that share what the parsed ones shared.

The temporary files are unlinked on creation (``tempfile.TemporaryFile``) and
closed when ``ordered`` ends or is closed.
A disk that cannot take a run raises ``RunFailed`` (exit code 1), one line.
"""

from __future__ import annotations

import heapq
import marshal
import tempfile
from collections.abc import Iterator
from itertools import chain, repeat
from operator import attrgetter
from typing import IO

from segments.errors import RunFailed
from segments.events import Event

RUN_EVENTS = 131_072
"""Events held before a run is spilled: about 100 MB of parsed events, the replay's bound on input memory."""

BLOCK_EVENTS = 4_096
"""Events per ``marshal`` record in a run file (one call each way, not one per event)."""

MARSHAL_VERSION = 4
"""With references: an object held twice in a block (``arrival_time`` when it is ``event_time``, ``merchant`` when
it is ``attrs``' value) is written once and read back shared, as the parser made it. ``marshal`` looks up only
objects with more than one reference, so ``_spill`` drops the events before it writes their columns."""

_key = attrgetter("arrival_time")  # stable sorts and merges keep ties in seq order (events come in seq order)
_new = tuple.__new__
_HOLE = Event("", "", 0, "", 0, 0, None, 0)  # fills a spilled event's slot until the run is cleared


class ArrivalRuns:
    """A sink for parsed events (``append``) that yields them back in arrival order (``ordered``)."""

    def __init__(self, run_events: int | None = None, directory: str | None = None) -> None:
        """``run_events``: events held before a run is spilled (``RUN_EVENTS`` when None); ``directory``: where
        the run files go (the system's temporary directory when None)."""
        self.run_events = max(1, RUN_EVENTS if run_events is None else run_events)
        self.directory = directory
        self.buffer: list[Event] = []
        self.runs: list[tuple[IO[bytes], list[int], int, int]] = []  # file, block sizes, first and last arrival
        self.count = 0
        self.last_arrival = 0  # the arrival time of the last event in arrival order (0 when none)

    def __len__(self) -> int:
        return self.count

    def append(self, event: Event) -> None:
        self.buffer.append(event)
        self.settle()

    def settle(self) -> None:
        """Spill the buffer if it holds a run. A caller that fills ``buffer`` itself (its ``append`` is a list's,
        with no call per event here) calls this every few thousand events; the bound is then a run plus those.
        Events come in ``seq`` order, whoever appends them (the module's note)."""
        if len(self.buffer) >= self.run_events:
            self._spill()

    def _spill(self) -> None:
        run = self.buffer
        run.sort(key=_key)
        first, last, events = _key(run[0]), _key(run[-1]), len(run)
        try:
            handle = tempfile.TemporaryFile(prefix="segshadow-run-", dir=self.directory)  # noqa: SIM115
            sizes = []
            for start in range(0, events, BLOCK_EVENTS):
                block = run[start : start + BLOCK_EVENTS]
                run[start : start + BLOCK_EVENTS] = repeat(_HOLE, len(block))  # the block: their sole holder
                columns = list(zip(*block, strict=True))
                del block  # its events go: a field is then held by its column alone, unless the event shared it
                sizes.append(handle.write(marshal.dumps(columns, MARSHAL_VERSION)))
            handle.flush()
        except OSError as exc:
            self.close()
            raise RunFailed(f"cannot spill the replay's input to a temporary file: {exc.strerror or exc}") from None
        self.runs.append((handle, sizes, first, last))
        self.count += events
        run.clear()  # the same list: a caller may hold ``buffer``

    def ordered(self) -> Iterator[Event]:
        """Every appended event, in ``(arrival_time, seq)`` order; call once, after the last ``append``."""
        try:
            tail = self.buffer
            tail.sort(key=_key)
            self.count += len(tail)
            self.buffer = []  # the tail is yielded from ``tail``; nothing may be appended after this
            if not self.runs:
                if tail:
                    self.last_arrival = tail[-1].arrival_time
                yield from tail
                return
            ends = [(first, last) for _, _, first, last in self.runs]
            if tail:
                ends.append((_key(tail[0]), _key(tail[-1])))
            self.last_arrival = max(last for _, last in ends)
            # A run that ends at the next one's first arrival still comes first: its lines are earlier.
            parts = [_read(handle, sizes) for handle, sizes, _, _ in self.runs] + [iter(tail)]
            if all(ends[i][1] <= ends[i + 1][0] for i in range(len(ends) - 1)):
                yield from chain.from_iterable(parts)
            else:
                yield from heapq.merge(*parts, key=_key)
        finally:
            self.close()

    def close(self) -> None:
        """Drop the temporary files (also done when ``ordered`` ends)."""
        for handle, _, _, _ in self.runs:
            handle.close()
        self.runs = []


def _read(handle: IO[bytes], sizes: list[int]) -> Iterator[Event]:
    """A run file's events, a block at a time (``marshal.loads`` of the block's bytes: ``marshal.load`` on
    a file reads it in small pieces, ten times slower), each rebuilt from the block's columns."""
    handle.seek(0)
    for size in sizes:
        yield from map(_new, repeat(Event), zip(*marshal.loads(handle.read(size)), strict=True))
