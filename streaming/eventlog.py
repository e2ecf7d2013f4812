"""The event log's entries: what a Redis Stream entry holds and where it stands, importable without Beam.

An entry holds event lines in arrival order, in one of two fields:

- ``e`` (``FIELD``): exactly one line, which may hold anything (a newline too). Any
  producer may write these, with any ids (``XADD key * e LINE``);
- ``b`` (``BATCH_FIELD``): one or more lines joined by ``\\n``, none holding a newline.
  The dual-writer writes one such entry per batch (``shadow.targets``), so a batch of
  500 events costs the log one ``XADD``, not 500.

An entry with neither field counts as one empty line (rejected as bad input by
whoever reads it, as before entries could hold batches).

**Positions.** The dual-writer gives each line a position ``{ms}-{seq}``: ``seq``
counts the log's lines from its start, ``ms`` is the largest arrival time up to
that line. An entry's id is the position of its **last** line, so a log written by
the dual-writer holds ``seq`` lines up to an entry with id ``ms-seq`` (``position``),
and a reader's cursor (the last entry it admitted) says how many lines it has read.
Entry boundaries carry no meaning: a replayed journal or a re-seed may cut the same
lines into other entries; the lines and their order are the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from streaming.config import BATCH_FIELD, FIELD

_ONE = FIELD.encode()
_MANY = BATCH_FIELD.encode()


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def entry_lines(fields: Any) -> list[str]:
    """The lines of one entry, from its fields as redis-py gives them (a dict, bytes or str keys) or as Redis
    sends them (the flat list ``[field, value, ...]``)."""
    if isinstance(fields, dict):
        for name, value in fields.items():
            key = name if isinstance(name, bytes) else str(name).encode()
            if key == _MANY:
                return _text(value).split("\n")
            if key == _ONE:
                return [_text(value)]
        return [""]
    if fields:
        first = fields[0]
        if first in (_MANY, BATCH_FIELD):
            return _text(fields[1]).split("\n")
        if first in (_ONE, FIELD):
            return [_text(fields[1])]
        return entry_lines(dict(zip(fields[::2], fields[1::2], strict=False)))
    return [""]


def log_lines(entries: Iterable[Sequence[Any]]) -> Iterator[str]:
    """Every line of ``entries`` (``(id, fields)`` pairs, e.g. an ``XRANGE`` reply), in order."""
    for _, fields in entries:
        yield from entry_lines(fields)


def position(entry_id: Any) -> tuple[int, int]:
    """An id ``ms-seq`` as numbers; for the dual-writer's log ``seq`` is the lines up to that entry."""
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def entries_for(lines_wanted: int, lines_seen: int, entries_seen: int) -> int:
    """How many entries to ask for to get about ``lines_wanted`` lines, judging by the lines per entry seen so far;
    one entry while nothing was seen (an entry may hold a re-seed's 20,000 lines), and always at least one."""
    if lines_seen <= 0 or entries_seen <= 0:
        return 1
    return max(1, lines_wanted * entries_seen // lines_seen)
