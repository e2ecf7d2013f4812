"""Probabilistic sketches where they pay, each with the error bound it states: the shared vocabulary.

Three structures, all from maintained libraries (nothing hand-written):

- **HyperLogLog** (Apache DataSketches ``hll_sketch``, ``lg_k`` 12, HLL_8): the
  distinct users of a segment in a time bucket (``GRAINS``: minute and hour).
  Serialized compact, mergeable with ``hll_union`` across shards and runs. Its
  stated bound is DataSketches' own: ``hll_sketch.get_rel_err`` at
  ``HLL_SIGMAS`` standard deviations (3: about 99.7% of buckets fall inside).
  Redis' ``PFADD``/``PFCOUNT`` (16,384 registers) states a standard error of
  1.04/sqrt(16384) = 0.81%; ``REDIS_HLL_BOUND`` is three of those.
- **Count-Min** (DataSketches ``count_min_sketch``): ``CmsParams`` fixes its width
  (buckets per row), depth (rows) and seed, from either those or an error
  target. It never under-estimates; with probability ``confidence`` = 1 -
  e^-depth it over-estimates by at most ``relative_error`` (e / width) times the
  total weight it has seen.
- **Bloom** (``rbloom``): ``BloomParams`` and ``build_bloom`` make a filter whose
  bytes another service can load and query with the same parameters and the
  hash in ``bloom_hash`` (the first 16 bytes of SHA-256 of the UTF-8 user id,
  read as a big-endian signed 128-bit integer), so "is u in X" needs no round trip.

Pure functions and frozen values; Redis and files are at the edges
(``compare.reach``, ``homepage.bloom``).
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import datasketches as ds
import rbloom

GRAINS: Mapping[str, int] = {"minute": 60_000, "hour": 3_600_000}
HLL_LG_K = 12
HLL_TYPE = ds.tgt_hll_type.HLL_8
HLL_SIGMAS = 3
REDIS_HLL_STD_ERROR = 1.04 / math.sqrt(16384)
REDIS_HLL_BOUND = HLL_SIGMAS * REDIS_HLL_STD_ERROR
CMS_SEED = 9001
DEFAULT_BLOOM_FPR = 0.01


# ---- HyperLogLog ------------------------------------------------------------------------------------


def bucket_of(t_ms: int, grain_ms: int) -> int:
    """The start (ms) of the bucket of width ``grain_ms`` holding instant ``t_ms``."""
    return t_ms - t_ms % grain_ms


def new_hll() -> ds.hll_sketch:
    return ds.hll_sketch(HLL_LG_K, HLL_TYPE)


def hll_of(users: Iterable[str]) -> ds.hll_sketch:
    """An HLL sketch of ``users``."""
    sketch = new_hll()
    for user in users:
        sketch.update(user)
    return sketch


def hll_bound(unioned: bool = False) -> float:
    """The relative error DataSketches states for ``HLL_LG_K`` at ``HLL_SIGMAS`` standard deviations."""
    return abs(ds.hll_sketch.get_rel_err(True, unioned, HLL_LG_K, HLL_SIGMAS))


def merge_hll(sketches: Iterable[ds.hll_sketch]) -> ds.hll_sketch:
    """The union of ``sketches`` (shards, runs, the minutes of an hour) as one sketch."""
    union = ds.hll_union(HLL_LG_K)
    for sketch in sketches:
        union.update(sketch)
    return union.get_result(HLL_TYPE)


def hll_to_text(sketch: ds.hll_sketch) -> str:
    return base64.b64encode(sketch.serialize_compact()).decode("ascii")


def hll_from_text(text: str) -> ds.hll_sketch:
    return ds.hll_sketch.deserialize(base64.b64decode(text))


def relative_error(estimate: float, exact: int) -> float:
    """|estimate - exact| / exact (0 when both are 0; the estimate itself when exact is 0)."""
    if exact == 0:
        return float(estimate)
    return abs(estimate - exact) / exact


# ---- Count-Min --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CmsParams:
    """A Count-Min sketch's shape. ``relative_error`` is e / width; ``confidence`` is 1 - e^-depth."""

    width: int
    depth: int
    bucket_ms: int = 60_000
    seed: int = CMS_SEED

    @property
    def relative_error(self) -> float:
        return math.e / self.width

    @property
    def confidence(self) -> float:
        return 1.0 - math.exp(-self.depth)

    def slack(self, total_weight: int) -> int:
        """The most the sketch over-estimates one item (at ``confidence``) after ``total_weight`` updates."""
        return math.ceil(self.relative_error * total_weight)

    def new(self) -> ds.count_min_sketch:
        return ds.count_min_sketch(self.depth, self.width, self.seed)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "width": self.width,
            "depth": self.depth,
            "bucket_ms": self.bucket_ms,
            "seed": self.seed,
            "relative_error": self.relative_error,
            "confidence": self.confidence,
        }


def cms_params(
    width: int | None, depth: int | None, error: float | None, confidence: float | None, bucket_ms: int = 60_000
) -> CmsParams:
    """Params from an explicit ``width``/``depth`` or an ``error`` target (relative error) and ``confidence``.

    Raises ``ValueError`` when both forms or neither complete form is given, or a value is out of range.
    """
    if error is not None or confidence is not None:
        if width is not None or depth is not None:
            raise ValueError("give either width/depth or error/confidence for a Count-Min aggregate")
        error = 0.001 if error is None else error
        confidence = 0.99 if confidence is None else confidence
        if not 0 < error < 1 or not 0 < confidence < 1:
            raise ValueError("error and confidence are between 0 and 1")
        width = int(ds.count_min_sketch.suggest_num_buckets(error))
        depth = int(ds.count_min_sketch.suggest_num_hashes(confidence))
    width = 2048 if width is None else width
    depth = 5 if depth is None else depth
    if not 2 <= width <= 1 << 24 or not 1 <= depth <= 32:
        raise ValueError("Count-Min width is 2..16777216 and depth 1..32")
    return CmsParams(width, depth, bucket_ms)


# ---- Bloom ------------------------------------------------------------------------------------------


def bloom_hash(user_id: str) -> int:
    """The hash every Bloom filter here uses: SHA-256 of the UTF-8 id, first 16 bytes, big-endian signed.

    Stable across processes and languages (Python's ``hash`` is salted per process).
    """
    digest = hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:16], "big", signed=True)


@dataclass(frozen=True)
class BloomParams:
    """What a reader needs besides the bytes: capacity, target FPR, the resulting bits and the hash."""

    capacity: int
    target_fpr: float
    size_bits: int
    hash: str = "sha256-128-be-signed"
    library: str = f"rbloom {getattr(rbloom, '__version__', '1.5')}"

    def to_dict(self) -> dict[str, object]:
        return {
            "capacity": self.capacity,
            "target_fpr": self.target_fpr,
            "size_bits": self.size_bits,
            "hash": self.hash,
            "library": self.library,
        }


def build_bloom(members: Iterable[str], target_fpr: float = DEFAULT_BLOOM_FPR) -> tuple[rbloom.Bloom, BloomParams]:
    """A Bloom filter of ``members`` sized for exactly their number at ``target_fpr`` (at least 1 item)."""
    if not 0 < target_fpr < 1:
        raise ValueError("a Bloom filter's target false-positive rate is between 0 and 1")
    users = list(members)
    capacity = max(len(users), 1)
    bloom = rbloom.Bloom(capacity, target_fpr, bloom_hash)
    bloom.update(users)
    return bloom, BloomParams(capacity, target_fpr, bloom.size_in_bits)


def load_bloom(data: bytes) -> rbloom.Bloom:
    """A filter from ``build_bloom``'s bytes (``save_bytes``), with the same hash."""
    return rbloom.Bloom.load_bytes(data, bloom_hash)
