"""The dashboard's segment-reach panel, drawn from the evidence's sketches.json."""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi.testclient import TestClient

from compare.reach import build_reach
from tests.compare.test_reach import seeded_sides
from tests.homepage.conftest import Site


def test_dashboard_draws_reach_of_both_sides_with_the_bound(site: Site, make_app: Callable[..., object]) -> None:
    legacy, stream, horizon = seeded_sides(600, seed=2)
    reach = build_reach(legacy, stream, horizon)
    (site.evidence / "sketches.json").write_text(json.dumps({"reach": reach.to_dict()}))
    page = TestClient(make_app()).get("/dashboard").text  # type: ignore[arg-type]
    assert 'aria-label="reach of high_value"' in page and 'aria-label="reach of window_shopper"' in page
    assert page.count("<polygon") >= 4  # a bound band per side per segment
    assert "stated bound ±3.79%" in page


def test_dashboard_without_sketches_says_so(site: Site, make_app: Callable[..., object]) -> None:
    page = TestClient(make_app()).get("/dashboard").text  # type: ignore[arg-type]
    assert "No reach in the evidence (sketches.json) yet." in page
