"""Bring your own Beam transform: a team's ``PTransform`` in place of segshadow's segmenter.

``--transform package.module:name`` names a ``PTransform`` subclass (built with no
arguments) or instance. The harness keeps everything around it:

- **input**: the admitted events, after parsing, deduplication (first arrival wins)
  and the too-late gate, exactly those segshadow's own segmenter applies, as
  ``AdmittedEvent`` values, each timestamped with its event time, in the global
  window. Amounts are exact integers of micro-units (``amount_micros``);
- **output** the transform returns: ``(user_id, segments, effective_time)`` per
  change of a user's set: ``segments`` is the whole set from ``effective_time`` on
  (an iterable of names; empty when the user leaves every segment),
  ``effective_time`` epoch ms (int) or a Beam ``Timestamp``. Windowing of the output
  does not matter: the harness re-windows it into the global window;
- **harness**: per user, orders the changes by effective time, drops those that
  repeat the set in force, numbers revisions (several different sets at one
  effective time become revisions 1, 2, ... in sorted order: the last wins),
  stamps ``emitted_at`` with the effective time (a transform's output carries no
  processing time, so replay freshness stays "not measured") and ``cause``
  ``transform``, and writes the usual sinks and the sidecar. Provenance: the
  sidecar's ``ruleset`` keeps the name of ``--rules`` (the rule set the transform
  claims to implement; the comparator evaluates causes with it) and carries
  ``logic: {"kind": "transform", "ref", "sha256"}``, the transform's import path and
  the SHA-256 of its module's source, whose digest stands where the rule set's would.

An output element that is not such a triple fails the run with a message naming it.

**Live** (``stream live --transform``, ``shadow run --live --transform``): the same
admitted events, read from the Redis Stream by the live source, go to the
transform; the harness cannot wait for the whole input, so it takes each change
as it comes (``LiveRevisions``, one per user in Beam state): a change that
alters what the user's transitions say at its effective time is emitted, the
first at that time as revision 1 and each later one as the next revision; one
that repeats the set in force is dropped, and a change that lands before an
earlier-dropped repeat re-emits that one. On in-order changes this gives what
replay's ``timeline`` gives. ``emitted_at`` is the wall clock when the harness
took the change. Every change of the run is kept per user (a few dozen bytes
each), as replay's grouping keeps them.

What fires a transform's windows live is the runner's watermark, and the live
source's watermark is its tick clock (the wall clock), not the gate's event-time
watermark: on a streaming runner (``-- --runner=FlinkRunner``), an admitted event
older than a window the watermark has passed is late data for Beam, kept only
under the transform's own ``allowed_lateness``. The local FnApiRunner runs a
``GroupByKey`` (so any ``CombinePerKey`` or windowed aggregation) only when its
input ends, i.e. when ``--duration`` ends: with it, a transform's aggregations
reach the sinks when the live run stops, over every event it admitted.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Tuple  # noqa: UP035 -- Beam reads typing.Tuple hints

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.utils.timestamp import Timestamp

from segments.errors import UsageError
from segments.outputs import Transition
from segments.rules import RuleSet
from segments.timeutil import Clock, wall_clock_ms
from streaming.pipeline import METRICS_NAMESPACE

CAUSE = "transform"


class AdmittedEvent(NamedTuple):
    """An event as a team's transform receives it (times in epoch ms, amount in micro-units)."""

    user_id: str
    event_time: int
    kind: str
    amount_micros: int
    merchant: str | None
    arrival_time: int


@dataclass(frozen=True)
class TransformRef:
    """A loaded transform and its provenance."""

    ref: str
    transform: beam.PTransform
    sha256: str

    def logic(self) -> dict[str, str]:
        """The sidecar's ``ruleset.logic``."""
        return {"kind": "transform", "ref": self.ref, "sha256": self.sha256}

    def sidecar_ruleset(self, ruleset: RuleSet) -> dict[str, Any]:
        """The sidecar's ``ruleset`` when this transform stands for ``ruleset`` (replay and live alike)."""
        return {
            "name": ruleset.name,
            "version": ruleset.version,
            "digest": self.sha256,
            "logic": self.logic(),
            "claims": {"ruleset": ruleset.ref, "digest": ruleset.digest},
        }


def load_transform(ref: str) -> TransformRef:
    """Import ``package.module:name`` (the working directory is importable, as with ``python -m``).

    ``UsageError`` (one line, exit 2) for a malformed path, a module that does not import, a missing
    name, or something that is not a ``PTransform`` (or a ``PTransform`` class that needs arguments).
    """
    module_name, colon, attr = ref.partition(":")
    if not colon or not module_name or not attr or not all(p.isidentifier() for p in module_name.split(".")):
        raise UsageError(f"--transform takes package.module:name, not {ref!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--transform {ref}: cannot import {module_name}: {exc}") from None
    except Exception as exc:
        raise UsageError(f"--transform {ref}: importing {module_name} failed: {type(exc).__name__}: {exc}") from None
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise UsageError(f"--transform {ref}: {module_name} has no {attr!r}")
        found = getattr(found, part)
    if isinstance(found, type) and issubclass(found, beam.PTransform):
        try:
            found = found()
        except TypeError as exc:
            raise UsageError(f"--transform {ref}: the class cannot be built without arguments ({exc})") from None
    if not isinstance(found, beam.PTransform):
        raise UsageError(f"--transform {ref}: {attr} is a {type(found).__name__}, not a Beam PTransform")
    return TransformRef(ref, found, _source_sha256(module))


def _source_sha256(module: Any) -> str:
    try:
        path = inspect.getsourcefile(module)
        if path is not None:
            with open(path, "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
    except (OSError, TypeError):
        pass
    raise UsageError(f"--transform: the source of {module.__name__} cannot be read, so it cannot be identified")


def admitted_events(batch: tuple[int, Any]) -> Iterator[window.TimestampedValue]:
    """A shard batch's applied events as ``AdmittedEvent`` values timestamped with their event time."""
    for row in batch[1].events:
        event = AdmittedEvent(row[0], row[1], row[2], row[3], row[4], row[5])
        yield window.TimestampedValue(event, Timestamp(micros=row[1] * 1000))


def change_of(element: Any) -> tuple[str, tuple[int, tuple[str, ...]]]:
    """A transform's output element checked and keyed by user; ``ValueError`` naming a bad one."""
    if not isinstance(element, tuple | list) or len(element) != 3:
        raise ValueError(f"the transform's output must be (user_id, segments, effective_time), not {element!r:.200}")
    user, segments, effective = element
    if not isinstance(user, str) or not user:
        raise ValueError(f"the transform's output has a bad user_id: {user!r:.100}")
    if isinstance(segments, str) or not isinstance(segments, Iterable):
        raise ValueError(f"the transform's segments must be a list of names, not {segments!r:.100}")
    names = tuple(sorted(set(segments)))
    if not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"the transform's segments must be non-empty names, not {names!r:.100}")
    if isinstance(effective, Timestamp):
        effective = effective.micros // 1000
    if isinstance(effective, bool) or not isinstance(effective, int):
        raise ValueError(f"the transform's effective_time must be epoch ms or a Timestamp, not {effective!r:.100}")
    return user, (effective, names)


def timeline(user: str, changes: Iterable[tuple[int, tuple[str, ...]]]) -> list[Transition]:
    """One user's changes (any order) as transitions with revisions (the module doc)."""
    by_time: dict[int, set[tuple[str, ...]]] = {}
    for effective, names in changes:
        by_time.setdefault(effective, set()).add(names)
    out: list[Transition] = []
    current: tuple[str, ...] = ()
    for effective in sorted(by_time):
        values = sorted(by_time[effective])
        if len(values) == 1 and values[0] == current:
            continue
        for revision, names in enumerate(values, start=1):
            out.append(Transition(user, names, effective, revision, effective, CAUSE))
        current = values[-1]
    return out


class _Timeline(beam.DoFn):
    """``timeline`` per user, counted as the segmenter counts its transitions (the sidecar states the count)."""

    def __init__(self) -> None:
        self.transitions = Metrics.counter(METRICS_NAMESPACE, "transitions")

    def process(self, element: tuple[str, Iterable[tuple[int, tuple[str, ...]]]]) -> Iterator[list[Transition]]:
        user, changes = element
        transitions = timeline(user, changes)
        if transitions:
            self.transitions.inc(len(transitions))
            yield transitions


def _changes(batches: beam.PCollection, transform: beam.PTransform) -> beam.PCollection:
    """Shard batches -> admitted events -> the team's transform -> checked ``(user, change)`` pairs, keyed by user
    in the global window: what the replay groups and the live path keeps in state."""
    return (
        batches
        | "AdmittedEvents" >> beam.FlatMap(admitted_events)
        | "YourTransform" >> transform
        | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        | "CheckChanges" >> beam.Map(change_of).with_output_types(Tuple[str, Any])  # noqa: UP006
    )


def transform_transitions(batches: beam.PCollection, transform: beam.PTransform) -> beam.PCollection:
    """Shard batches -> the team's transform -> lists of transitions (one list per user)."""
    return _changes(batches, transform) | "ByUser" >> beam.GroupByKey() | "Revisions" >> beam.ParDo(_Timeline())


class LiveRevisions:
    """One user's changes as they arrive live, and what was emitted for them (the module doc: live).

    Invariant after every ``take``: at every effective time received, the emitted
    transitions (the highest revision at the latest emitted time at or before it)
    say the set last received for that time.
    """

    def __init__(self) -> None:
        self.times: list[int] = []  # effective times received, sorted
        self.received: dict[int, tuple[str, ...]] = {}  # time -> the set last received for it
        self.emitted: dict[int, tuple[int, tuple[str, ...]]] = {}  # time -> (its last revision, that set)

    def _in_force(self, position: int) -> tuple[str, ...]:
        """What the emitted transitions say at ``self.times[position]`` (empty before any)."""
        times, emitted = self.times, self.emitted
        for index in range(position, -1, -1):  # usually the time itself or the one before: no copy of the list
            found = emitted.get(times[index])
            if found is not None:
                return found[1]
        return ()

    def _fix(self, position: int) -> list[tuple[int, int, tuple[str, ...]]]:
        time = self.times[position]
        names = self.received[time]
        if self._in_force(position) == names:
            return []
        revision = self.emitted[time][0] + 1 if time in self.emitted else 1
        self.emitted[time] = (revision, names)
        return [(time, revision, names)]

    def take(self, effective: int, names: tuple[str, ...]) -> list[tuple[int, int, tuple[str, ...]]]:
        """Record one change; the ``(effective, revision, segments)`` transitions it needs, in order."""
        position = bisect_left(self.times, effective)
        if position == len(self.times) or self.times[position] != effective:
            self.times.insert(position, effective)
        self.received[effective] = names
        out = self._fix(position)
        following = position + 1
        if out and following < len(self.times) and self.times[following] not in self.emitted:
            out.extend(self._fix(following))  # a repeat dropped before may not repeat what precedes it now
        return out


class _LiveTimeline(beam.DoFn):
    """Per user (stateful): a ``LiveRevisions`` in Beam state; emits each change's transitions at once."""

    STATE = ReadModifyWriteStateSpec("changes", PickleCoder())

    def __init__(self, clock: Clock = wall_clock_ms) -> None:
        self.clock = clock

    def setup(self) -> None:
        self.transitions = Metrics.counter(METRICS_NAMESPACE, "transitions")

    def process(
        self, element: tuple[str, tuple[int, tuple[str, ...]]], state: Any = beam.DoFn.StateParam(STATE)
    ) -> Iterator[list[Transition]]:
        user, (effective, names) = element
        revisions = state.read() or LiveRevisions()
        taken = revisions.take(effective, names)
        state.write(revisions)  # a dropped repeat is kept too: a change before it may make it count
        if not taken:
            return
        now = self.clock()
        self.transitions.inc(len(taken))
        yield [Transition(user, segments, time, revision, now, CAUSE) for time, revision, segments in taken]


def live_transform_transitions(batches: beam.PCollection, transform: beam.PTransform) -> beam.PCollection:
    """Live shard batches -> the team's transform -> lists of transitions, as the changes come (module doc)."""
    return _changes(batches, transform) | "Revisions" >> beam.ParDo(_LiveTimeline())
