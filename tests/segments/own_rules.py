"""A rule set with its own kinds and attribute fields, generated data for it, and an oracle that reads the
attributes themselves (not the amount/merchant slots the segmenters read), written from the rule set's text."""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import strategies as st

from segments.events import Event
from segments.rules import parse_ruleset_text

OWN = parse_ruleset_text(
    """
name: own
version: 1
window: 7m
kinds: [click, add_to_basket, order, chargeback, wishlist]
attributes: {price: number, shop: string, tier: string}
aggregates:
  clicks: {op: count, kinds: [click]}
  baskets_3m: {op: count, kinds: [add_to_basket], window: 3m}
  value: {op: sum, of: price, kinds: {order: 1, chargeback: -1}}
  value_2m: {op: sum, of: price, kinds: [order], window: 2m}
  shops: {op: count_distinct, of: shop, kinds: [click, order]}
segments:
  - name: browser
    when: {all: [{agg: clicks, op: ">=", value: 2}, {agg: value, op: "==", value: 0}]}
  - name: hot
    group: heat
    when: {any: [{agg: baskets_3m, op: ">=", value: 2}, {agg: value_2m, op: ">", value: 100}]}
  - name: warm
    group: heat
    when: {all: [{agg: value, op: ">=", value: 50.5}, {agg: shops, op: ">=", value: 2}]}
""",
    "own",
)
MIN = 60_000
PRICES = ["0.01", "33.33", "50.5", "60", "99.999999", "100", "150", 7, 250]
SHOPS = ["s1", "s2", "s3", 4, 5]


@st.composite
def own_lines(draw: st.DrawFn, base: int, max_events: int = 40) -> list[str]:
    """JSON lines in arrival order: the rule set's kinds (and an undeclared one), prices as text or
    numbers (sometimes missing where a sum needs one), shops as text or numbers (sometimes missing),
    late arrivals and reused ids."""
    n = draw(st.integers(1, max_events))
    users = draw(st.lists(st.sampled_from(["a", "b", "c:d", "é 😀"]), min_size=1, max_size=3, unique=True))
    rows = []
    for i in range(n):
        event_time = base + draw(st.integers(0, 30)) * MIN + draw(st.sampled_from([0, 0, 1, -1, 30_000]))
        kind = draw(st.sampled_from(["click", "add_to_basket", "order", "chargeback", "wishlist", "view"]))
        attrs: dict[str, object] = {}
        if draw(st.integers(0, 9)):  # one in ten lacks a price
            attrs["price"] = draw(st.sampled_from(PRICES))
        if draw(st.integers(0, 4)):
            attrs["shop"] = draw(st.sampled_from(SHOPS))
        row: dict[str, object] = {
            "event_id": f"e{draw(st.integers(0, n))}" if draw(st.booleans()) and i else f"e{i}",
            "user_id": draw(st.sampled_from(users)),
            "event_time": event_time,
            "arrival_time": event_time + draw(st.sampled_from([0, 0, 0, 1, 30_000, 5 * MIN, 12 * MIN])),
            "kind": kind,
            "attrs": attrs,
        }
        if draw(st.booleans()):
            row["amount"] = "9999"  # SPEC's amount: this rule set sums price, never amount
        rows.append(row)
    rows.sort(key=lambda r: r["arrival_time"])  # type: ignore[arg-type, return-value]
    return [json.dumps(r, ensure_ascii=False) for r in rows]


def oracle_valid(line: str) -> bool:
    """Whether the oracle accepts a generated line: a declared kind, and a price where a sum reads one."""
    obj = json.loads(line)
    if obj["kind"] not in ("click", "add_to_basket", "order", "chargeback", "wishlist"):
        return False
    return obj["kind"] not in ("order", "chargeback") or "price" in obj["attrs"]


def _micros(value: object) -> int:
    return int(Decimal(str(value)) * 1_000_000)


def oracle_segments(events: list[Event], t: int) -> frozenset[str]:
    """``OWN`` at ``t`` over a user's ``events``, computed from their ``attrs`` and written out by hand."""

    def within(e: Event, minutes: int) -> bool:
        return t - minutes * MIN < e.event_time <= t

    clicks = sum(1 for e in events if e.kind == "click" and within(e, 7))
    baskets = sum(1 for e in events if e.kind == "add_to_basket" and within(e, 3))
    value = sum(
        _micros(e.attrs["price"]) * (1 if e.kind == "order" else -1)  # type: ignore[index]
        for e in events
        if e.kind in ("order", "chargeback") and within(e, 7)
    )
    value_2m = sum(_micros(e.attrs["price"]) for e in events if e.kind == "order" and within(e, 2))  # type: ignore[index]
    shops = {
        str(e.attrs["shop"])  # type: ignore[index]
        for e in events
        if e.kind in ("click", "order") and within(e, 7) and e.attrs and e.attrs.get("shop") is not None
    }
    out = set()
    if clicks >= 2 and value == 0:
        out.add("browser")
    if baskets >= 2 or value_2m > 100_000_000:
        out.add("hot")
    elif value >= 50_500_000 and len(shops) >= 2:
        out.add("warm")
    return frozenset(out)
