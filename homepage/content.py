"""What the mock shop shows for a set of segments: pure functions from segments to page content.

The page template and the live updates (server-sent events) both render these
values, so the first paint and every later change show the same thing. Nothing
here comes from the request: the user id is never part of the content.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from rollout.router import Served

ARTS = ("lamp", "chair", "vase", "mug", "throw", "plant", "clock", "bowl")


@dataclass(frozen=True)
class Product:
    name: str
    price: str
    was: str
    note: str
    tag: str
    art: str


@dataclass(frozen=True)
class HomeView:
    """The homepage: a theme (``premium``, ``nudge`` or ``default``), hero, banner, offers and perks."""

    theme: str
    eyebrow: str
    title: str
    subtitle: str
    cta: str
    banner: str
    offers_title: str
    offers: tuple[Product, ...]
    perks: tuple[str, ...]


@dataclass(frozen=True)
class AccountView:
    """The account page: a theme (``hold``, ``verify`` or ``normal``), a status notice and an action."""

    theme: str
    status: str
    title: str
    message: str
    action: str


PREMIUM = (
    Product("Walnut Record Console", "€1,290", "", "Solid walnut, made to order", "Premium pick", "clock"),
    Product("Merino Cable Throw", "€240", "", "Undyed New Zealand merino", "Premium pick", "throw"),
    Product("Brass Arc Floor Lamp", "€560", "", "Hand-finished brass", "Premium pick", "lamp"),
    Product("Stoneware Dinner Set", "€310", "", "12 pieces, kiln-fired", "Premium pick", "bowl"),
)
NUDGE = (
    Product("Linen Lounge Chair", "€382", "€449", "You looked at this twice", "15% off", "chair"),
    Product("Speckled Glaze Mug", "€24", "€28", "Still in your basket", "15% off", "mug"),
    Product("Fluted Glass Vase", "€59", "€69", "Viewed 12 minutes ago", "15% off", "vase"),
    Product("Olive Tree, 120 cm", "€127", "€149", "Only 3 left", "15% off", "plant"),
)
BESTSELLERS = (
    Product("Fluted Glass Vase", "€69", "", "Bestseller", "New in", "vase"),
    Product("Speckled Glaze Mug", "€28", "", "Set of two available", "Bestseller", "mug"),
    Product("Linen Lounge Chair", "€449", "", "Five colours", "New in", "chair"),
    Product("Olive Tree, 120 cm", "€149", "", "Delivered potted", "Bestseller", "plant"),
)


def home_view(segments: Iterable[str]) -> HomeView:
    """``high_value`` → premium picks and free express shipping; ``window_shopper`` → a
    time-limited discount nudge; anything else → the generic season's content."""
    names = frozenset(segments)
    if "high_value" in names:
        return HomeView(
            "premium",
            "Members' edit",
            "Your premium picks",
            "Hand-selected pieces for our best customers, with free express shipping on every order.",
            "Shop your picks",
            "Free express shipping is on us: every order, no minimum.",
            "Chosen for you",
            PREMIUM,
            ("Free express shipping", "Priority support line", "Extended 60-day returns"),
        )
    if "window_shopper" in names:
        return HomeView(
            "nudge",
            "Just for the next 30 minutes",
            "Still thinking it over?",
            "Take 15% off everything you have been looking at. The offer ends in 30 minutes.",
            "Claim 15% off",
            "Your 15% welcome discount expires in 30 minutes: code LOOK15 applied at checkout.",
            "Still on your mind",
            NUDGE,
            ("Free returns within 30 days", "Secure checkout", "Delivery in 3-5 days"),
        )
    return HomeView(
        "default",
        "Autumn collection",
        "Slow living, made simple",
        "Thoughtful homeware for every room, from small workshops across Europe.",
        "Explore the collection",
        "Free standard shipping on orders over €50.",
        "Bestsellers this week",
        BESTSELLERS,
        ("Free shipping over €50", "Free returns within 30 days", "Secure checkout"),
    )


def account_view(segments: Iterable[str]) -> AccountView:
    """``risk_high`` → a hold notice; ``risk_medium`` → step-up verification; otherwise normal."""
    names = frozenset(segments)
    if "risk_high" in names:
        return AccountView(
            "hold",
            "On hold",
            "Your account is on hold",
            "We have paused new orders and payouts while we review recent activity on your account. "
            "Our team will contact you within one business day.",
            "Contact support",
        )
    if "risk_medium" in names:
        return AccountView(
            "verify",
            "Verification needed",
            "Please confirm it's you",
            "For your security, we will send a one-time code to your phone before your next purchase.",
            "Send my code",
        )
    return AccountView(
        "normal",
        "In good standing",
        "Everything looks good",
        "Your orders, addresses and payment methods are up to date.",
        "View my orders",
    )


def badge(served: Served) -> dict[str, Any]:
    """The small "served by" badge: side, stage label, stale flag, and the router's reason."""
    stage = f"canary {served.percent:g}%" if served.stage == "canary" else served.stage.replace("_", " ")
    return {
        "side": served.side,
        "stage": stage,
        "stale": "stale" if served.stale else "",
        "fallback": "fallback" if served.fallback else "",
        "reason": served.reason,
        "segments": ", ".join(served.segments) or "none",
    }


def payload(page: str, served: Served) -> dict[str, Any]:
    """Everything a page shows for ``served``, as plain JSON-able values (template and SSE)."""
    view: HomeView | AccountView = (
        account_view(served.segments) if page == "account" else home_view(served.segments)
    )
    return {"page": page, "view": asdict(view), "badge": badge(served)}
