"""The site through FastAPI's TestClient over real stores: content per segment, escaping, SSE, metrics."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable

from fastapi.testclient import TestClient

from homepage.app import CSP
from rollout.stages import Position
from tests.homepage.conftest import Site

HOSTILE = "<script>alert(1)</script>"


def client(make_app: Callable[..., object], **kwargs: object) -> TestClient:
    return TestClient(make_app(**kwargs))  # type: ignore[arg-type]


def test_a_high_value_user_gets_premium_picks_and_free_express_shipping(site: Site, make_app) -> None:
    site.legacy("ann", "high_value")
    page = client(make_app).get("/", params={"user": "ann"})
    assert page.status_code == 200
    assert "Your premium picks" in page.text and "Free express shipping" in page.text
    assert 'data-theme="premium"' in page.text and 'data-side="legacy"' in page.text


def test_a_window_shopper_gets_a_time_limited_nudge(site: Site, make_app) -> None:
    site.legacy("bo", "window_shopper")
    page = client(make_app).get("/", params={"user": "bo"})
    assert "Still thinking it over?" in page.text and "ends in 30 minutes" in page.text
    assert "Your premium picks" not in page.text


def test_anyone_else_gets_the_generic_homepage(site: Site, make_app) -> None:
    page = client(make_app).get("/", params={"user": "new-visitor"})
    assert "Slow living, made simple" in page.text and 'data-theme="default"' in page.text
    assert "legacy has no value" in page.text


def test_the_account_page_follows_the_risk_tier(site: Site, make_app) -> None:
    app = client(make_app)
    expected = {
        "risk_high": "Your account is on hold",
        "risk_medium": "Please confirm it&#39;s you",
        "risk_low": "Everything looks good",
    }
    for tier, text in expected.items():
        site.legacy("pat", tier)
        page = app.get("/account", params={"user": "pat"})
        assert text in page.text and sum(t in page.text for t in expected.values()) == 1, tier


def test_the_badge_names_the_side_that_served_and_the_stage(site: Site, make_app) -> None:
    site.legacy("cy", "window_shopper")
    site.stream("cy", "high_value")
    site.move_to(
        Position.at("dual_write"), Position.at("shadow"), Position.at("canary", 99.99), Position.at("live")
    )
    page = client(make_app).get("/", params={"user": "cy"})
    assert re.search(r'served by <b data-slot="badge.side">stream</b>', page.text)
    assert '<span data-slot="badge.stage">live</span>' in page.text and "Your premium picks" in page.text


def test_a_hostile_user_id_is_rendered_as_text_everywhere(site: Site, make_app) -> None:
    app = client(make_app)
    for path in ("/", "/account"):
        page = app.get(path, params={"user": HOSTILE})
        assert page.status_code == 200
        assert HOSTILE not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert "%3Cscript%3Ealert%281%29%3C/script%3E" in page.text  # in the account link's query
        assert page.headers["content-security-policy"] == CSP
    quoted = app.get("/", params={"user": '"><img src=x onerror=alert(1)>'})
    assert "<img src=x" not in quoted.text and "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in quoted.text


def test_a_user_id_with_bidi_controls_is_shown_isolated_with_its_controls_visible(
    site: Site, make_app
) -> None:
    app = client(make_app)
    for path in ("/", "/account"):
        page = app.get(path, params={"user": "\u202eevil\u2066"})
        assert page.status_code == 200
        shown = re.sub(r'data-user="[^"]*"|href="[^"]*"', "", page.text)  # attributes are not displayed
        assert "\u202e" not in shown and "\u2066" not in shown
        assert "<bdi>[U+202E]evil[U+2066]</bdi>" in page.text


def test_pages_carry_no_inline_script_or_style(site: Site, make_app) -> None:
    app = client(make_app)
    for path in ("/?user=ann", "/account?user=ann", "/dashboard"):
        text = app.get(path).text
        assert (
            re.findall(r"<script(?![^>]*\bsrc=)", text) == []
            and " style=" not in text
            and "<style" not in text
        )
        assert " on" not in re.sub(r'"[^"]*"', '""', "".join(re.findall(r"<[a-z][^>]*>", text)))


def test_bad_user_ids_are_refused_politely(site: Site, make_app) -> None:
    app = client(make_app)
    too_long = app.get("/", params={"user": "x" * 129})
    assert too_long.status_code == 400 and "at most 128 characters" in too_long.text
    assert app.get("/", params={"user": ""}).status_code == 400
    assert app.get("/", params={"user": "x" * 128}).status_code == 200


def test_server_sent_events_push_the_new_content_when_segments_change(site: Site, make_app) -> None:
    site.legacy("dee", "window_shopper")
    app = client(make_app, poll_interval_s=0.05, sse_max_s=4)
    events: list[dict[str, object]] = []
    changed_at: list[float] = []

    def change_later() -> None:
        time.sleep(0.5)
        site.legacy("dee", "high_value")
        changed_at.append(time.monotonic())

    worker = threading.Thread(target=change_later)
    with app.stream("GET", "/events", params={"user": "dee"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        worker.start()
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
                if len(events) == 2:
                    received = time.monotonic()
                    break
    worker.join()
    assert [e["view"]["theme"] for e in events] == ["nudge", "premium"]  # type: ignore[index]
    assert received - changed_at[0] < 1.0


def test_events_for_the_account_page_carry_the_account_content(site: Site, make_app) -> None:
    site.legacy("eve", "risk_medium")
    app = client(make_app, poll_interval_s=0.05, sse_max_s=0.3)
    with app.stream("GET", "/events", params={"user": "eve", "page": "account"}) as response:
        data = next(line for line in response.iter_lines() if line.startswith("data: "))
    payload = json.loads(data[len("data: ") :])
    assert payload["view"]["theme"] == "verify" and payload["badge"]["side"] == "legacy"
    assert "eve" not in data  # the user id never travels in the content


def test_the_dashboard_shows_stage_agreement_causes_freshness_and_decisions(site: Site, make_app) -> None:
    site.move_to(Position.at("dual_write"), Position.at("shadow"), Position.at("canary", 5))
    page = client(make_app).get("/dashboard")
    assert page.status_code == 200
    assert '<span class="v" id="current-stage">canary 5%</span>' in page.text
    assert "Agreement over time" in page.text and "<polyline" in page.text
    for cause in ("late arrival", "dropped too late", "mixed", "unexplained"):
        assert cause in page.text
    assert "<td>14 ms</td>" in page.text and "<td>4 min 57 s</td>" in page.text  # stream and legacy p99
    assert "shadow → canary 5%" in page.text and "Gates for the next promotion" in page.text


def test_the_dashboard_shows_each_segments_drift_from_the_evidence(site: Site, make_app) -> None:
    drift = json.loads((site.evidence / "parity.json").read_text())["segment_drift"]
    worst = max(drift["per_as_of"], key=lambda r: r["psi_sides"])
    page = client(make_app).get("/dashboard").text
    assert 'id="segment-drift"' in page and "Segment drift, legacy vs stream" in page
    assert worst["segment"] in page and f"<b>{worst['psi_sides']:.4f}</b>" in page
    assert f"largest {drift['max_psi']:.4f}" in page
    assert page.count("<rect") >= len(drift["per_as_of"])
    # the chi-square of the sides beside the PSI, at the segment's worst as-of
    assert f'<td class="drift-chi2">{worst["chi2_sides"]:.2f} (p {worst["p_sides"]:.3g})</td>' in page


def test_the_dashboard_without_evidence_says_so(site: Site, make_app) -> None:
    (site.evidence / "parity.json").unlink()
    page = client(make_app).get("/dashboard")
    assert page.status_code == 200 and "no evidence at" in page.text


def test_metrics_expose_parity_freshness_dead_letters_stage_and_served(site: Site, make_app) -> None:
    site.move_to(Position.at("dual_write"), Position.at("shadow"), Position.at("canary", 25))
    app = client(make_app)
    app.get("/", params={"user": "someone"})
    text = app.get("/metrics").text
    assert (
        'segshadow_rollout_stage{stage="canary"} 1.0' in text
        and 'segshadow_rollout_stage{stage="live"} 0.0' in text
    )
    assert "segshadow_rollout_percent 25.0" in text
    assert "segshadow_parity_pairs 20000.0" in text and "segshadow_parity_agreement_ratio 0.9975" in text
    assert 'segshadow_parity_mismatches{cause="unexplained"} 0.0' in text
    assert 'segshadow_freshness_milliseconds{quantile="0.99",side="stream"} 14.0' in text
    assert 'segshadow_dead_letter_events{reason="too_late",side="stream"} 30.0' in text
    assert 'segshadow_gate_passing{gate="unexplained"} 1.0' in text
    assert re.search(r'segshadow_served_total\{fallback="(true|false)",side="(legacy|stream)"\} 1\.0', text)


def test_healthz_and_static_assets(site: Site, make_app) -> None:
    app = client(make_app)
    assert app.get("/healthz").text == "ok\n"
    script = app.get("/static/live.js")
    assert script.status_code == 200 and "innerHTML" not in script.text.replace("never innerHTML", "")
    assert app.get("/static/shop.css").status_code == 200


def test_the_dashboard_decision_table_shows_forced_and_weakened_moves_plan_and_evidence(
    site: Site, make_app
) -> None:
    from rollout.store import Draft

    site.move_to(Position.at("dual_write"), Position.at("shadow"))
    state = site.store.state()
    draft = Draft(
        "lead",
        "advance",
        state.position,
        Position.at("canary", 25),
        evidence_path="/ev/parity.json",
        evidence_sha256="ab" * 32,
        reason="CAB-7",
        forced=True,
        plan_digest="cd" * 32,
        weakened=True,
    )
    site.store.record(state.version, draft)
    page = client(make_app).get("/dashboard").text
    row = next(line for line in page.split("<tr") if "shadow → canary 25%" in line)
    assert "chip-forced" in row and ">weakened<" in row
    assert ("cd" * 6) in row and ("ab" * 6) in row and "CAB-7" in row
