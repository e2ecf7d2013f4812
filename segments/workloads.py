"""Seeded workload generators: SPEC §1 event lines with the structure real traffic has.

``clickstream``: users browse in sessions (bursts of views a few seconds to a minute
apart, some carts, purchases of the carted items with amounts in cents, occasional
refunds minutes later). ``risk``: card transactions (``txn``) with ``attrs``
``{merchant, device, country, fraud}``; most users shop normally, a few legitimate
heavy users make large or rapid purchases (the tiers' false positives), and a few
fraudsters, after an account takeover, run the patterns the tiers are meant to catch:
card testing (many small txns within a minute), high-value sprees and merchant
hopping. ``attrs.fraud`` is the ground truth of each txn.

Delivery is modelled apart from content: a share of events arrives late (mostly by
seconds, some by minutes, a few by tens of minutes, so the stream's 60 s allowed
lateness drops some as too late), a share is delivered twice (the same ``event_id``,
sometimes with a changed payload), and a few lines are malformed (bad JSON, a
missing field, a naive timestamp, a bad amount: at least one of each when
``malformed > 0``). Lines come out in **arrival order** (ties in generation order).

Times are written as **integer epoch ms** by default (the fastest form to parse;
``time_format="rfc3339"`` writes ``...Z`` text instead); amounts are JSON numbers
with at most two decimals, one in ten as a decimal string. ``arrival_time`` is
written only when it differs from ``event_time``.

Everything is deterministic for a seed, and content does not depend on the delivery
knobs: the same seed with ``late_share=0`` gives the same events, delivered on time.
Size: about ``users x minutes x events_per_user_per_minute`` events (default 1/6 per
user per minute: ``users=100_000, minutes=60`` gives about 1M). All lines are built in
memory and sorted by arrival (about 300 MB for 1M events).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from segments.events import write_jsonl
from segments.timeutil import format_ms

WORKLOADS = ("clickstream", "risk")
DEFAULT_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DEFAULT_RATE = 1 / 6  # events per user per minute
MINUTE = 60_000

# (event_time, user_id, kind, amount as JSON text or None, attrs as JSON text or None)
Raw = tuple[int, str, str, str | None, str | None]


@dataclass(frozen=True)
class WorkloadParams:
    """A workload's knobs, validated once (``ValueError`` naming the bad one)."""

    kind: str
    users: int
    minutes: int
    seed: int
    start_ms: int = DEFAULT_START_MS
    events_per_user_per_minute: float = DEFAULT_RATE
    late_share: float = 0.05
    dup_share: float = 0.01
    malformed: float = 0.0002
    time_format: str = "ms"

    def __post_init__(self) -> None:
        if self.kind not in WORKLOADS:
            raise ValueError(f"unknown workload {self.kind!r}: choose one of {', '.join(WORKLOADS)}")
        if self.users < 1 or self.minutes < 1:
            raise ValueError("users and minutes must be at least 1")
        if not self.events_per_user_per_minute > 0:
            raise ValueError("events per user per minute must be positive")
        for name in ("late_share", "dup_share", "malformed"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.time_format not in ("ms", "rfc3339"):
            raise ValueError("time format must be ms or rfc3339")

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.minutes * MINUTE


@dataclass
class WorkloadCounts:
    """What a generated workload holds (``lines`` = events + duplicate deliveries + malformed)."""

    lines: int = 0
    events: int = 0
    duplicates: int = 0
    changed_duplicates: int = 0
    late: int = 0
    late_over_1m: int = 0
    malformed: int = 0
    users: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    fraud_txns: int = 0

    def as_dict(self) -> dict[str, int]:
        out = {k: v for k, v in vars(self).items() if k != "by_kind"}
        out.update({f"kind_{k}": v for k, v in sorted(self.by_kind.items())})
        return out


def generate(
    kind: str,
    users: int,
    minutes: int,
    seed: int,
    *,
    start_ms: int = DEFAULT_START_MS,
    events_per_user_per_minute: float = DEFAULT_RATE,
    late_share: float = 0.05,
    dup_share: float = 0.01,
    malformed: float = 0.0002,
    time_format: str = "ms",
) -> Iterator[str]:
    """The workload's JSON lines (no newline) in arrival order; see the module doc.

    Raises ``ValueError`` for a bad knob (before the first line).
    """
    params = WorkloadParams(
        kind, users, minutes, seed, start_ms, events_per_user_per_minute, late_share, dup_share, malformed,
        time_format,
    )
    lines, _ = build(params)
    return iter(lines)


def write_workload(
    kind: str,
    path: str | Path,
    users: int,
    minutes: int,
    seed: int,
    **knobs: float | int | str,
) -> dict[str, int]:
    """Write the workload to ``path`` (atomically) and return its counts (``WorkloadCounts.as_dict``)."""
    params = WorkloadParams(kind, users, minutes, seed, **knobs)  # type: ignore[arg-type]
    lines, counts = build(params)
    write_jsonl(path, lines)
    return counts.as_dict()


def build(params: WorkloadParams) -> tuple[list[str], WorkloadCounts]:
    """All lines of the workload in arrival order, and its counts."""
    content = random.Random(f"{params.seed}:{params.kind}:content")
    delivery = random.Random(f"{params.seed}:{params.kind}:delivery")
    counts = WorkloadCounts()
    raws = _clickstream(params, content) if params.kind == "clickstream" else _risk(params, content, counts)
    return _deliver(raws, params, delivery, counts), counts


# ---- shared helpers ------------------------------------------------------------------------------


def _poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth's product of uniforms for small means, a rounded normal for large)."""
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit = math.exp(-lam)
    k, product = 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def _at_least_one(rng: random.Random, lam: float) -> int:
    """A count with mean ``lam`` that is at least 1 whenever ``lam >= 1`` (every user shows up)."""
    if lam >= 1:
        return 1 + _poisson(rng, lam - 1)
    return 1 if rng.random() < lam else 0


def _money(cents: int, as_text: bool) -> str:
    """Cents as a JSON number (``12.5`` style is avoided: always 0 or 2 decimals) or a decimal string."""
    text = f"{cents // 100}" if cents % 100 == 0 else f"{cents // 100}.{cents % 100:02d}"
    return f'"{text}"' if as_text else text


def _price_cents(rng: random.Random, median: float, spread: float, low: int = 49) -> int:
    """A shop price in cents: log-normal around ``median`` units, often ending in .99 or .49."""
    cents = max(low, int(median * math.exp(rng.gauss(0.0, spread)) * 100))
    ending = rng.random()
    if ending < 0.4:
        cents = cents - cents % 100 + 99
    elif ending < 0.55:
        cents = cents - cents % 100 + 49
    return cents


def _table(names: Sequence[str], weights: Sequence[float], size: int = 4096) -> tuple[str, ...]:
    """A lookup table in which each name appears in proportion to its weight: a draw is one index."""
    total = sum(weights)
    table: list[str] = []
    for name, weight in zip(names, weights, strict=True):
        table.extend([name] * max(1, round(size * weight / total)))
    return tuple(table)


def _pick(rng: random.Random, table: Sequence[str]) -> str:
    return table[int(rng.random() * len(table))]


def _user_ids(prefix: str, users: int) -> list[str]:
    width = max(6, len(str(users - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(users)]


# ---- clickstream ---------------------------------------------------------------------------------

_MEAN_SESSION_EVENTS = 4.7  # measured mean events per clickstream session (see the size test)


def _clickstream(p: WorkloadParams, rng: random.Random) -> list[Raw]:
    start, end = p.start_ms, p.end_ms
    span = end - start
    sessions_per_user = p.events_per_user_per_minute * p.minutes / _MEAN_SESSION_EVENTS
    rand, expo = rng.random, rng.expovariate
    out: list[Raw] = []
    append = out.append
    for user in _user_ids("u", p.users):
        for _ in range(_at_least_one(rng, sessions_per_user)):
            t = start + int(rand() * span)
            cart: list[int] = []
            for _ in range(1 + int(expo(1 / 3.2))):
                if t >= end:
                    break
                append((t, user, "view", None, None))
                t += 2_000 + int(expo(1 / 14_000))
                if rand() < 0.22 and t < end:
                    cart.append(_price_cents(rng, 24.0, 0.9))
                    append((t, user, "cart", None, f'{{"product":"p{int(rand() * 5000)}"}}'))
                    t += 1_000 + int(expo(1 / 8_000))
            if cart and t < end and rand() < 0.5:
                total = sum(cart)
                append((t, user, "purchase", _money(total, rand() < 0.1), f'{{"items":{len(cart)}}}'))
                if rand() < 0.05:
                    back = t + 30_000 + int(expo(1 / 240_000))
                    if back < end:
                        refund = total if rand() < 0.5 or len(cart) == 1 else cart[0]
                        append((back, user, "refund", _money(refund, rand() < 0.1), None))
    return out


# ---- risk ----------------------------------------------------------------------------------------

_COUNTRIES = ("GB", "DE", "FR", "US", "NL", "ES", "IT", "PL", "SE", "IE")
_COUNTRY_TABLE = _table(_COUNTRIES, (30, 16, 12, 10, 8, 7, 6, 5, 3, 3), 100)
_FAR_COUNTRIES = ("NG", "RU", "BR", "VN", "ID", "UA", "PH", "RO")
_MERCHANTS = tuple(f"m{k:03d}" for k in range(400))
_MERCHANT_TABLE = _table(_MERCHANTS, [1.0 / (k + 1) ** 0.9 for k in range(len(_MERCHANTS))], 8192)
_MEAN_TRIP_TXNS = 1.2  # measured mean txns per trip over all users (see the size test)
_FRAUD_SHARE = 0.02
_HEAVY_SHARE = 0.05

Txn = Callable[[int, str, int, str, str, str, bool], None]


def _risk(p: WorkloadParams, rng: random.Random, counts: WorkloadCounts) -> list[Raw]:
    start, end = p.start_ms, p.end_ms
    span = end - start
    trips_per_user = p.events_per_user_per_minute * p.minutes / _MEAN_TRIP_TXNS
    rand = rng.random
    out: list[Raw] = []
    append = out.append

    def txn(t: int, user: str, cents: int, shop: str, device: str, country: str, fraud: bool) -> None:
        if start <= t < end:
            flag = "true" if fraud else "false"
            attrs = f'{{"merchant":"{shop}","device":"{device}","country":"{country}","fraud":{flag}}}'
            append((t, user, "txn", _money(cents, rand() < 0.1), attrs))

    for user in _user_ids("a", p.users):
        home = _pick(rng, _COUNTRY_TABLE)
        device = f"d{int(rand() * 10**8):08d}"
        favourites = [_pick(rng, _MERCHANT_TABLE) for _ in range(2 + int(rand() * 3))]
        role = rand()
        heavy = _FRAUD_SHARE <= role < _FRAUD_SHARE + _HEAVY_SHARE
        for _ in range(_at_least_one(rng, trips_per_user * (2 if heavy else 1))):
            t = start + int(rand() * span)
            style = rand()
            if heavy and style < 0.25:
                # a big legitimate purchase (electronics, travel): a false positive for the sum tiers
                cents = _price_cents(rng, 650.0, 0.5, 20_000)
                txn(t, user, cents, _pick(rng, _MERCHANT_TABLE), device, home, False)
            elif heavy and style < 0.45:
                # transit taps or a split bill: several small txns within a minute at one merchant
                shop = _pick(rng, _MERCHANT_TABLE)
                for _ in range(3 + int(rand() * 3)):
                    txn(t, user, _price_cents(rng, 3.0, 0.4), shop, device, home, False)
                    t += 3_000 + int(rand() * 12_000)
            else:
                for _ in range(1 + int(rng.expovariate(1 / 0.3))):
                    shop = favourites[int(rand() * len(favourites))] if rand() < 0.8 else _pick(rng, _MERCHANT_TABLE)
                    txn(t, user, _price_cents(rng, 22.0, 0.8), shop, device, home, False)
                    t += 60_000 + int(rand() * 600_000)
        if role < _FRAUD_SHARE:
            counts.fraud_txns += _fraud(rng, user, start + int(rand() * max(1, span - 10 * MINUTE)), txn)
    return out


def _fraud(rng: random.Random, user: str, t: int, txn: Txn) -> int:
    """One account takeover from ``t``: card testing, a high-value spree or merchant hopping."""
    randrange = rng.randrange
    device = f"x{randrange(10**8):08d}"
    country = rng.choice(_FAR_COUNTRIES)
    pattern = rng.random()
    made = 0
    if pattern < 0.4:
        # card testing: a burst of tiny charges at a few merchants, all within a minute
        shops = [rng.choice(_MERCHANTS) for _ in range(3 + randrange(5))]
        for _ in range(6 + randrange(10)):
            txn(t, user, 50 + randrange(250), rng.choice(shops), device, country, True)
            t += 1_000 + randrange(5_000)
            made += 1
    elif pattern < 0.7:
        # a spree: a few large purchases within minutes
        for _ in range(4 + randrange(4)):
            cents = _price_cents(rng, 520.0, 0.35, 15_000)
            txn(t, user, cents, rng.choice(_MERCHANTS), device, country, True)
            t += 20_000 + randrange(70_000)
            made += 1
    else:
        # merchant hopping: moderate amounts at a new merchant each time
        for shop in rng.sample(_MERCHANTS, 5 + randrange(4)):
            txn(t, user, _price_cents(rng, 60.0, 0.5), shop, device, country, True)
            t += 30_000 + randrange(60_000)
            made += 1
    return made


# ---- delivery: lateness, duplicates, malformed lines, arrival order ------------------------------


def _late_delay(rng: random.Random) -> int:
    """How late a late event arrives: seconds for most, minutes for some, tens of minutes for a few."""
    draw = rng.random()
    if draw < 0.85:
        return 500 + int(rng.expovariate(1 / 8_000))
    if draw < 0.97:
        return 30_000 + rng.randrange(150_000)
    return 5 * MINUTE + rng.randrange(35 * MINUTE)


def _deliver(raws: list[Raw], p: WorkloadParams, rng: random.Random, counts: WorkloadCounts) -> list[str]:
    raws.sort(key=lambda r: r[0])  # ids follow event time, as a producer would number them
    stamp: Callable[[int], str] = str if p.time_format == "ms" else (lambda ms: f'"{format_ms(ms)}"')
    rand = rng.random
    keys: list[int] = []
    lines: list[str] = []
    users: set[str] = set()
    by_kind: dict[str, int] = {}
    late_share, dup_share = p.late_share, p.dup_share

    def line(
        eid: str, t: int, user: str, kind: str, amount: str | None, arrival: int, attrs: str | None
    ) -> str:
        text = f'{{"event_id":"{eid}","user_id":"{user}","event_time":{stamp(t)},"kind":"{kind}"'
        if amount is not None:
            text += f',"amount":{amount}'
        if arrival != t:
            text += f',"arrival_time":{stamp(arrival)}'
        if attrs is not None:
            text += f',"attrs":{attrs}'
        return text + "}"

    for n, (t, user, kind, amount, attrs) in enumerate(raws):
        eid = f"e{n}"
        arrival = t
        if late_share and rand() < late_share:
            delay = _late_delay(rng)
            arrival = t + delay
            counts.late += 1
            counts.late_over_1m += delay > MINUTE
        keys.append(arrival)
        lines.append(line(eid, t, user, kind, amount, arrival, attrs))
        users.add(user)
        by_kind[kind] = by_kind.get(kind, 0) + 1
        if dup_share and rand() < dup_share:
            again = arrival + (rng.randrange(5_000) if rand() < 0.7 else 5_000 + rng.randrange(10 * MINUTE))
            counts.duplicates += 1
            if rand() < 0.25:
                counts.changed_duplicates += 1
                if amount is not None:
                    amount = _money(rng.randrange(1, 100_000), False)
                else:
                    kind = "cart" if kind == "view" else "view"
                t = t + rng.randrange(1, 3_000)
            keys.append(again)
            lines.append(line(eid, t, user, kind, amount, again, attrs))
    counts.events = len(raws)
    counts.users = len(users)
    counts.by_kind = by_kind
    if p.malformed:
        bad = max(4, round(p.malformed * len(raws)))
        for k in range(bad):
            arrival = p.start_ms + rng.randrange(p.end_ms - p.start_ms)
            keys.append(arrival)
            lines.append(_malformed(k % 4, f"bad{k}", arrival, stamp))
        counts.malformed = bad
    order = sorted(range(len(keys)), key=keys.__getitem__)
    counts.lines = len(order)
    return [lines[i] for i in order]


def _malformed(which: int, eid: str, t: int, stamp: Callable[[int], str]) -> str:
    """A line a real producer could send by mistake; ``which`` picks the defect."""
    if which == 0:  # cut off mid-line
        return f'{{"event_id":"{eid}","user_id":"u-broken","event_time":{stamp(t)},"ki'
    if which == 1:  # no user id
        return f'{{"event_id":"{eid}","event_time":{stamp(t)},"kind":"view"}}'
    if which == 2:  # a local time without an offset
        naive = format_ms(t).rstrip("Z")
        return f'{{"event_id":"{eid}","user_id":"u-broken","event_time":"{naive}","kind":"view"}}'
    head = f'{{"event_id":"{eid}","user_id":"u-broken","event_time":{stamp(t)}'
    return head + ',"kind":"purchase","amount":"12.3.4"}'
