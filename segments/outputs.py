"""The two segmenters' output lines (SPEC §3 assignments, SPEC §4 transitions) and their provenance.

Every output file ``F`` gets a sidecar ``F.meta.json`` written last: which rule set
(name, version, digest), which event file (its SHA-256), the parameters, the
counts, and ``complete: true``. A reader that finds no sidecar, or one that does
not match the other inputs, refuses with a clear message instead of comparing
things that are not comparable.
"""

from __future__ import annotations

import functools
import hashlib
import json
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, NamedTuple

from segments.errors import InputError
from segments.timeutil import TimestampError, format_ms, parse_rfc3339_ms

CAUSES = ("event", "expiry", "correction")


class Assignment(NamedTuple):
    """Legacy: the user's non-empty segment set at as-of ``as_of`` (segments sorted)."""

    as_of: int
    user_id: str
    segments: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(
            {"as_of": format_ms(self.as_of), "user_id": self.user_id, "segments": list(self.segments)},
            ensure_ascii=False,
            separators=(",", ":"),
        )


class Transition(NamedTuple):
    """Stream: from ``effective_time`` on, the user's set is ``segments`` (highest ``revision`` wins).

    ``cause`` is ``event`` (an applied event changed the set), ``expiry`` (an event
    left a window, no new event) or ``correction`` (a late event changed a past
    instant that had already been emitted).
    """

    user_id: str
    segments: tuple[str, ...]
    effective_time: int
    revision: int
    emitted_at: int
    cause: str

    def to_json(self) -> str:
        # Written by hand: this runs for every transition the stream emits (json.dumps was 3x slower).
        return (
            f'{{"user_id":{encode_basestring(self.user_id)},'
            f'"segments":{_names_json(self.segments)},'
            f'"effective_time":"{format_ms(self.effective_time)}","revision":{self.revision},'
            f'"emitted_at":"{format_ms(self.emitted_at)}","cause":{_names_json(self.cause)}}}'
        )


@functools.lru_cache(maxsize=4096)
def _names_json(names: tuple[str, ...] | str) -> str:
    """A segment tuple as a JSON array, or a cause as a JSON string: few distinct values, memoised."""
    if isinstance(names, str):
        return encode_basestring(names)
    return f"[{','.join(map(encode_basestring, names))}]"


def _time(value: Any, where: str) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str):
        try:
            return parse_rfc3339_ms(value)
        except TimestampError as exc:
            raise ValueError(f"{where}: {exc}") from None
    raise ValueError(f"{where}: not a time")


def _segments(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValueError("segments must be a list of names")
    return tuple(sorted(value))


def _user(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("user_id must be a non-empty string")
    return value


def _lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", str(path)) from None
    with handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            if not text.endswith("\n"):
                raise InputError(f"line {number} is truncated (no newline at the end of the file)", str(path))
            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise InputError(f"line {number} is not JSON: {exc}", str(path)) from None
            if not isinstance(obj, dict):
                raise InputError(f"line {number} is not an object", str(path))
            yield number, obj


def read_assignments(path: str | Path) -> list[Assignment]:
    """Read a legacy output file; ``InputError`` names the first bad line."""
    out: list[Assignment] = []
    for number, obj in _lines(path):
        try:
            out.append(Assignment(_time(obj["as_of"], "as_of"), _user(obj["user_id"]), _segments(obj["segments"])))
        except (KeyError, ValueError) as exc:
            raise InputError(f"line {number} is not an assignment: {exc}", str(path)) from None
    return out


def read_transitions(path: str | Path) -> list[Transition]:
    """Read a stream output file; ``InputError`` names the first bad line."""
    out: list[Transition] = []
    for number, obj in _lines(path):
        try:
            revision = obj["revision"]
            if type(revision) is not int or revision < 1:
                raise ValueError("revision must be a positive integer")
            cause = obj.get("cause", "event")
            out.append(
                Transition(
                    _user(obj["user_id"]),
                    _segments(obj["segments"]),
                    _time(obj["effective_time"], "effective_time"),
                    revision,
                    _time(obj["emitted_at"], "emitted_at"),
                    str(cause),
                )
            )
        except (KeyError, ValueError) as exc:
            raise InputError(f"line {number} is not a transition: {exc}", str(path)) from None
    return out


class Timeline:
    """One user's settled step function (SPEC §4): per effective time the highest revision wins."""

    __slots__ = ("times", "values")

    def __init__(self, transitions: Iterable[Transition]) -> None:
        best: dict[int, tuple[int, tuple[str, ...]]] = {}
        for tr in transitions:
            current = best.get(tr.effective_time)
            if current is None or tr.revision > current[0]:
                best[tr.effective_time] = (tr.revision, tr.segments)
        self.times = sorted(best)
        self.values = [frozenset(best[t][1]) for t in self.times]

    def at(self, t: int) -> frozenset[str]:
        """The set at ``t``: the winning transition with the greatest effective time <= t, else empty."""
        index = bisect_right(self.times, t)
        return self.values[index - 1] if index else frozenset()


def timelines(transitions: Iterable[Transition]) -> dict[str, Timeline]:
    """Group transitions by user and settle each user's timeline."""
    by_user: dict[str, list[Transition]] = {}
    for tr in transitions:
        by_user.setdefault(tr.user_id, []).append(tr)
    return {user: Timeline(trs) for user, trs in by_user.items()}


# ---- provenance sidecars -------------------------------------------------------------------------


def meta_path(path: str | Path) -> Path:
    return Path(f"{path}.meta.json")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (identifies the event file both sides ran on)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", str(path)) from None
    return digest.hexdigest()


def write_meta(path: str | Path, meta: Mapping[str, Any]) -> None:
    """Write the sidecar of output ``path`` (after the output itself), marked complete."""
    target = meta_path(path)
    temp = target.with_name(target.name + ".partial")
    temp.write_text(json.dumps({**meta, "complete": True}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    temp.replace(target)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The sidecar of output ``path``; ``InputError`` when missing, unreadable or not marked complete."""
    target = meta_path(path)
    try:
        meta = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"no {target.name} beside it: not a complete segshadow output (was the run interrupted?)", str(path)
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable {target.name}: {exc}", str(path)) from None
    if not isinstance(meta, dict) or meta.get("complete") is not True:
        raise InputError(f"{target.name} does not mark the output complete", str(path))
    return meta
