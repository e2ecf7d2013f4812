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
Only replay (and ``shadow run``) take a transform: the harness groups a user's
changes after the whole input, which a live pipeline never reaches.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp

from segments.errors import UsageError
from segments.outputs import Transition
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


def transform_transitions(batches: beam.PCollection, transform: beam.PTransform) -> beam.PCollection:
    """Shard batches -> the team's transform -> lists of transitions (one list per user)."""
    return (
        batches
        | "AdmittedEvents" >> beam.FlatMap(admitted_events)
        | "YourTransform" >> transform
        | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
        | "CheckChanges" >> beam.Map(change_of)
        | "ByUser" >> beam.GroupByKey()
        | "Revisions" >> beam.ParDo(_Timeline())
    )
