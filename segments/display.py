"""Showing text that came from outside (user ids, actors, reasons) so it cannot rearrange what is around it.

SPEC §1 allows any Unicode in a user id, including the bidirectional controls
(U+202E RIGHT-TO-LEFT OVERRIDE and its kin). Printed as they are, they reverse the
id itself and the text after it, so ``\\u202eevil`` reads ``live`` on a page or a
terminal. Every place that shows such text goes through this module:

- ``visible(text)``: each bidirectional control is replaced by a visible
  ``[U+XXXX]``; everything else is kept. For consoles, logs and Markdown.
- ``isolated(text)``: ``visible`` text, HTML-escaped, inside ``<bdi>`` so that
  a legitimately right-to-left id (Hebrew, Arabic) is laid out on its own and does
  not reorder the words around it. For HTML; registered as the Jinja filter
  ``shown`` by ``install(env)`` in every environment that renders user text.
"""

from __future__ import annotations

import re

from jinja2 import Environment
from markupsafe import Markup, escape

# ALM, LRM, RLM, the embeddings and overrides (LRE RLE PDF LRO RLO) and the isolates (LRI RLI FSI PDI).
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_CONTROL = re.compile("[" + "".join(sorted(BIDI_CONTROLS)) + "]")


def visible(text: object) -> str:
    """``text`` with every bidirectional control shown as ``[U+XXXX]`` (other characters unchanged)."""
    return _CONTROL.sub(lambda m: f"[U+{ord(m.group()):04X}]", str(text))


def isolated(text: object) -> Markup:
    """``visible(text)``, HTML-escaped, in a ``<bdi>`` element: safe to place anywhere in a page."""
    return Markup("<bdi>") + escape(visible(text)) + Markup("</bdi>")


def install(env: Environment) -> Environment:
    """Register ``shown`` (``isolated``) as a filter of ``env``; returns ``env``."""
    env.filters["shown"] = isolated
    return env
