"""Outside text on a page or a console: bidirectional controls shown, never obeyed."""

from __future__ import annotations

import jinja2
from hypothesis import given
from hypothesis import strategies as st

from segments.display import BIDI_CONTROLS, install, isolated, visible


def test_each_bidi_control_is_shown_as_its_code_point() -> None:
    assert visible("\u202eevil\u202c.exe") == "[U+202E]evil[U+202C].exe"
    assert visible("\u2067x\u2069") == "[U+2067]x[U+2069]"
    assert visible("plain: ann@example.com") == "plain: ann@example.com"
    assert visible("שלום") == "שלום"  # right-to-left letters are text, not controls


@given(st.text())
def test_no_control_survives_and_nothing_else_changes(text: str) -> None:
    shown = visible(text)
    assert not BIDI_CONTROLS & set(shown)
    if not BIDI_CONTROLS & set(text):
        assert shown == text


def test_isolated_escapes_and_wraps_in_bdi() -> None:
    assert str(isolated('<b>"\u202eevil"</b>')) == "<bdi>&lt;b&gt;&#34;[U+202E]evil&#34;&lt;/b&gt;</bdi>"


def test_the_filter_is_registered_for_autoescaped_templates() -> None:
    env = install(jinja2.Environment(autoescape=True))
    assert env.from_string("<p>{{ u | shown }}</p>").render(u="\u202e<i>") == "<p><bdi>[U+202E]&lt;i&gt;</bdi></p>"
