"""Membership at the edge: a Bloom filter per segment of its current members, exported as bytes.

A CDN or another service answers "is u in X" from the bytes and the parameters
(``segments.sketches.BloomParams``; load with ``rbloom.Bloom.load_bytes(data,
bloom_hash)``) without a round trip. A filter never says no for a member (no
false negatives); it says yes for a non-member with about the target rate
(default 1%).

- ``build_blooms`` reads one side's current sets from the serving store
  (``RedisStore.scan_side``) and builds one filter per segment, sized for its
  member count at the target rate.
- ``BloomCache`` rebuilds them on a schedule (``every_ms``) and whenever the
  side has published a change batch since the last build (its heartbeat,
  ``meta.last_write_ms``, moved), checked at most every ``check_ms``: on the
  caller's thread, or (after ``start``, as ``segshadow serve`` does) in a
  background thread, so requests only read the last built filters.
- ``measure`` checks a filter against the exact set: false negatives (must be
  0) and the observed false-positive rate over non-member probes, with its
  Wilson 95% interval.
- ``write_files`` writes ``{segment}.bloom`` and ``{segment}.bloom.json`` (parameters).
- On each rebuild ``BloomCache`` also measures every filter against the exact
  set it was built from (``checks``: every other user the side holds is a
  non-member probe), so the observed false-positive rate on the workload is
  shown beside the target (``/segments/{name}/bloom.json``, ``check``); with a
  ``reach`` store it carries the current members into the starting minute's
  reach (``segments.reachstore.ReachStore.carry``) from the same scan.
- ``BloomCache.member`` answers "is u in X" from the filter: the site serves
  ``/api/member`` from it when started with ``serve_from_bloom`` (otherwise
  from the exact serving store), saying which it used.

The site serves ``/segments/{name}/bloom`` (the bytes, parameters in ``X-Bloom-*``
headers) and ``/segments/{name}/bloom.json``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from compare.stats import Z95, wilson_interval
from segments.errors import SegshadowError
from segments.redisstore import SideMeta, StoredSegments
from segments.sketches import DEFAULT_BLOOM_FPR, BloomParams, build_bloom, load_bloom
from segments.timeutil import Clock, format_ms, wall_clock_ms

log = logging.getLogger("segshadow.bloom")


class MemberSource(Protocol):
    """The serving store as the filters read it (``segments.redisstore.RedisStore``)."""

    def scan_side(self, side: str, batch: int = 1000) -> Iterator[tuple[str, StoredSegments]]: ...
    def meta(self, side: str) -> SideMeta | None: ...


@dataclass(frozen=True)
class SegmentBloom:
    """One segment's filter: its bytes, parameters, member count and what it was built from."""

    segment: str
    side: str
    data: bytes
    params: BloomParams
    members: int
    built_at: int
    source_write_ms: int | None

    def describe(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "side": self.side,
            "members": self.members,
            "bytes": len(self.data),
            "bytes_per_member": round(len(self.data) / max(self.members, 1), 3),
            "built_at": format_ms(self.built_at),
            **self.params.to_dict(),
        }

    def headers(self) -> dict[str, str]:
        d = self.describe()
        return {f"X-Bloom-{k.replace('_', '-').title()}": str(v) for k, v in d.items()}


def members_by_segment(source: MemberSource, side: str, everyone: set[str] | None = None) -> dict[str, set[str]]:
    """The current members of every segment on ``side`` (every user the side holds added to ``everyone``)."""
    out: dict[str, set[str]] = {}
    for user_id, stored in source.scan_side(side):
        if everyone is not None:
            everyone.add(user_id)
        for segment in stored.segments:
            out.setdefault(segment, set()).add(user_id)
    return out


class ReachCarrier(Protocol):
    """``segments.reachstore.ReachStore`` as the cache uses it."""

    def carry(self, side: str, members: Mapping[str, Iterable[str]], at_ms: int) -> int: ...


def build_blooms(
    members: Mapping[str, Iterable[str]],
    side: str,
    segments: Iterable[str],
    target_fpr: float = DEFAULT_BLOOM_FPR,
    now: int = 0,
    source_write_ms: int | None = None,
) -> dict[str, SegmentBloom]:
    """One filter per segment of ``segments`` (an empty segment gets an empty filter)."""
    out = {}
    for segment in segments or sorted(members):
        users = list(members.get(segment, ()))
        bloom, params = build_bloom(users, target_fpr)
        out[segment] = SegmentBloom(segment, side, bloom.save_bytes(), params, len(users), now, source_write_ms)
    return out


@dataclass(frozen=True)
class BloomCheck:
    """A filter against the exact set: false negatives (must be 0) and the observed false-positive rate."""

    members: int
    false_negatives: int
    probes: int
    false_positives: int
    target_fpr: float

    @property
    def observed_fpr(self) -> float:
        return self.false_positives / self.probes if self.probes else 0.0

    def interval(self, z: float = Z95) -> tuple[float, float]:
        """The Wilson interval of the observed rate (95% by default; ``z`` = 3 for 99.7%)."""
        return wilson_interval(self.false_positives, self.probes, z)

    def target_in_interval(self, z: float = Z95) -> bool:
        lo, hi = self.interval(z)
        return lo <= self.target_fpr <= hi

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.interval()
        return {
            "members": self.members,
            "false_negatives": self.false_negatives,
            "probes": self.probes,
            "false_positives": self.false_positives,
            "observed_fpr": self.observed_fpr,
            "observed_fpr_wilson95": [lo, hi],
            "target_fpr": self.target_fpr,
        }


def measure(exported: SegmentBloom, members: Iterable[str], non_members: Iterable[str]) -> BloomCheck:
    """Load the exported bytes (as a reader would) and test them against the exact set."""
    bloom = load_bloom(exported.data)
    exact = set(members)
    false_negatives = sum(1 for u in exact if u not in bloom)
    probes = false_positives = 0
    for u in non_members:
        if u in exact:
            continue
        probes += 1
        false_positives += u in bloom
    return BloomCheck(len(exact), false_negatives, probes, false_positives, exported.params.target_fpr)


def write_files(out_dir: str | Path, blooms: Mapping[str, SegmentBloom]) -> list[Path]:
    """``{segment}.bloom`` (bytes) and ``{segment}.bloom.json`` (parameters) for each filter."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, bloom in blooms.items():
        data, meta = out / f"{name}.bloom", out / f"{name}.bloom.json"
        data.write_bytes(bloom.data)
        meta.write_text(json.dumps(bloom.describe(), indent=2) + "\n", encoding="utf-8")
        written += [data, meta]
    return written


class BloomCache:
    """The filters of one side, rebuilt every ``every_ms`` and after each published change batch.

    ``segments`` names the filters to build (an empty one for a segment with no
    member); empty means every segment the side currently has members in.
    """

    def __init__(
        self,
        source: MemberSource,
        segments: Iterable[str],
        side: str = "stream",
        target_fpr: float = DEFAULT_BLOOM_FPR,
        every_ms: int = 60_000,
        check_ms: int = 1_000,
        clock: Clock = wall_clock_ms,
        reach: ReachCarrier | None = None,
    ) -> None:
        self.source = source
        self.segments = tuple(segments)
        self.side = side
        self.target_fpr = target_fpr
        self.every_ms = every_ms
        self.check_ms = check_ms
        self.clock = clock
        self.reach = reach
        self.builds = 0
        self.checks: dict[str, BloomCheck] = {}
        self._loaded: dict[str, Any] = {}
        self._blooms: dict[str, SegmentBloom] = {}
        self._built_at: int | None = None
        self._checked_at: int | None = None
        self._source_write: int | None = None
        self._lock = threading.Lock()  # the built state (filters, checks, times): swapped whole, read briefly
        self._build_lock = threading.Lock()  # one rebuild at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> dict[str, SegmentBloom]:
        """The filters, rebuilt first if the schedule says so or the side published since the last build.

        Once ``start`` has started the background rebuilds, a caller only reads the last built
        filters (it builds them itself only when none were built yet).
        """
        if self._thread is None or self._built_at is None:
            self.refresh()
        with self._lock:
            return dict(self._blooms)

    def refresh(self) -> bool:
        """Rebuild if the schedule says so or the side published a change batch since the last build.

        The scan, the filters, their checks and the carry are made outside ``_lock``; readers keep
        the previous filters until the new ones are swapped in. Returns whether it rebuilt.
        """
        with self._build_lock:
            now = self.clock()
            if self._built_at is not None and now - self._built_at < self.every_ms:
                if self._checked_at is not None and now - self._checked_at < self.check_ms:
                    return False
                self._checked_at = now
                meta = self.source.meta(self.side)
                if (meta.last_write_ms if meta is not None else None) == self._source_write:
                    return False
            self._rebuild(now)
            return True

    def start(self) -> None:
        """Rebuild in a background thread (every ``check_ms`` it checks the schedule and the side's
        heartbeat), so no request waits for a scan of the serving store. ``stop`` ends it."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="segshadow-bloom", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.check_ms / 1000):
            try:
                self.refresh()
            except SegshadowError as exc:  # the store is down: keep serving the last filters, try again
                log.warning("Bloom filters not rebuilt: %s", exc)

    def member(self, segment: str, user_id: str) -> bool | None:
        """Whether the segment's filter says ``user_id`` is a member (None: no filter for the segment)."""
        blooms = self.current()
        with self._lock:
            found = blooms.get(segment)
            if found is None:
                return None
            loaded = self._loaded.get(segment)
            if loaded is None or loaded[0] is not found:
                loaded = self._loaded[segment] = (found, load_bloom(found.data))
            return user_id in loaded[1]

    def _rebuild(self, now: int) -> None:
        meta = self.source.meta(self.side)
        written = meta.last_write_ms if meta is not None else None
        everyone: set[str] = set()
        members = members_by_segment(self.source, self.side, everyone)
        blooms = build_blooms(members, self.side, self.segments, self.target_fpr, now, written)
        checks = {name: measure(bloom, members.get(name, ()), everyone) for name, bloom in blooms.items()}
        if self.reach is not None:
            self.reach.carry(self.side, members, now)
        with self._lock:
            self._blooms, self.checks = blooms, checks
            self._built_at = self._checked_at = now
            self._source_write = written
            self.builds += 1
