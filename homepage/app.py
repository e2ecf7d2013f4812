"""The site: a mock shop that reads each user's segments through the rollout router.

``create_app(router, evidence_dir, ...)`` builds it over real stores; ``segshadow
serve`` runs it with uvicorn. Routes:

- ``/?user=ID`` the homepage, ``/account?user=ID`` the account page, both with a
  badge naming the side that served and the stage;
- ``/events?user=ID&page=home|account`` server-sent events: the server polls the
  router every ``poll_interval_s`` and pushes the page content when it changes;
  the page's script (``/static/live.js``) puts it in place with ``textContent``;
- ``/dashboard`` the cutover: stage, agreement over time, mismatches by cause,
  freshness, dead letters, the gates and the decision log;
- ``/segments/{name}/bloom`` a Bloom filter of the segment's current members (bytes, parameters
  in ``X-Bloom-*`` headers) and ``/segments/{name}/bloom.json`` (``homepage.bloom``);
- ``/metrics`` Prometheus, ``/healthz``.

Every value reaches HTML through Jinja2 with autoescaping; no inline script or style
is used, and every response carries a strict Content-Security-Policy, so nothing a
request contains can run in the page.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import jinja2
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from compare.axes import thousands
from compare.reach import reach_charts
from homepage.bloom import BloomCache, SegmentBloom
from homepage.content import badge, payload
from homepage.dashboard import dashboard
from rollout.evidence import EvidenceFile
from rollout.gates import evaluate
from rollout.metrics import CONTENT_TYPE, RolloutMetrics
from rollout.plan import Plan
from rollout.router import Router
from rollout.stages import needs_gates
from rollout.store import RolloutState
from segments.display import install
from segments.errors import SegshadowError
from segments.sketches import REDIS_HLL_BOUND
from segments.timeutil import Clock, format_ms, wall_clock_ms

HERE = Path(__file__).resolve().parent
MAX_USER_ID = 128
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
Page = Literal["home", "account"]


SEGMENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class BloomNotFound(SegshadowError):
    """No filter for that segment (unknown, no members, or no serving store)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no Bloom filter for segment {name[:64]!r}")


class BadUserId(SegshadowError):
    """A ``user`` parameter that is empty or longer than SPEC §1 allows."""


def templates() -> jinja2.Environment:
    """The site's Jinja2 environment: autoescaping on for everything, undefined names are errors, and
    ``shown`` for outside text (user ids, actors, reasons; ``segments.display``) and ``thousands`` for counts
    (``compare.axes``)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["thousands"] = thousands
    return install(env)


def check_user(user: str) -> str:
    if not user:
        raise BadUserId("the user id is empty")
    if len(user) > MAX_USER_ID:
        raise BadUserId(f"a user id has at most {MAX_USER_ID} characters")
    return user


def create_app(
    router: Router,
    evidence_dir: str | Path | None = None,
    *,
    plan: Plan | None = None,
    metrics: RolloutMetrics | None = None,
    clock: Clock = wall_clock_ms,
    poll_interval_s: float = 0.25,
    sse_max_s: float = 300.0,
    blooms: BloomCache | None = None,
    serve_from_bloom: bool = False,
) -> FastAPI:
    """The site over ``router`` (and its stage cache and SQL store); ``evidence_dir`` feeds the dashboard.

    ``plan`` adds the gates of the next promotion to the dashboard and the metrics.
    An event stream closes after ``sse_max_s`` (the browser reconnects by itself).
    ``serve_from_bloom`` answers ``/api/member`` from the segment's Bloom filter
    (no read of the serving store per request; false positives at about the
    target rate, measured and shown in ``bloom.json``) instead of the exact set.
    """
    env = templates()
    evidence = EvidenceFile(evidence_dir) if evidence_dir is not None else None
    metrics = metrics or RolloutMetrics(evidence, router.stages, plan, clock)
    app = FastAPI(title="Larkspur & Co. (segshadow demo)", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(BadUserId)
    async def bad_user(request: Request, exc: BadUserId) -> HTMLResponse:
        return html("error.html", status=400, message=str(exc))

    def html(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        base: dict[str, Any] = {"page": "", "user": None, "theme": "default", "side": "", "served": None}
        text = env.get_template(name).render({**base, **context})
        return HTMLResponse(text, status_code=status, headers={"Cache-Control": "no-store"})

    def page(name: Page, user: str) -> HTMLResponse:
        served = router.serve(user)
        metrics.observe(served)
        content = payload(name, served)
        return html(
            f"{name}.html",
            page=name,
            user=user,
            theme=content["view"]["theme"],
            side=served.side,
            served=served,
            view=content["view"],
            badge=badge(served),
        )

    @app.get("/", response_class=HTMLResponse)
    def home(user: str = Query("guest")) -> HTMLResponse:
        return page("home", check_user(user))

    @app.get("/account", response_class=HTMLResponse)
    def account(user: str = Query("guest")) -> HTMLResponse:
        return page("account", check_user(user))

    @app.get("/api/served")
    def served_json(user: str = Query("guest")) -> JSONResponse:
        served = router.serve(check_user(user))
        return JSONResponse(
            {
                "user_id": served.user_id,
                "side": served.side,
                "segments": list(served.segments),
                "stage": served.stage,
                "percent": served.percent,
                "reason": served.reason,
                "stale": served.stale,
                "fallback": served.fallback,
            }
        )

    @app.get("/events")
    async def events(
        request: Request, user: str = Query("guest"), page: Page = Query("home")
    ) -> StreamingResponse:
        user = check_user(user)

        async def stream() -> AsyncIterator[str]:
            started = time.monotonic()
            last, quiet = "", 0.0
            yield "retry: 1000\n\n"
            while time.monotonic() - started < sse_max_s:
                served = await run_in_threadpool(router.serve, user)
                text = json.dumps(payload(page, served), ensure_ascii=True, separators=(",", ":"))
                if text != last:
                    last, quiet = text, 0.0
                    yield f"event: segments\ndata: {text}\n\n"
                elif quiet >= 10:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(poll_interval_s)
                quiet += poll_interval_s
                if await request.is_disconnected():
                    break

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    @app.get("/dashboard", response_class=HTMLResponse)
    def dash() -> HTMLResponse:
        now = clock()
        found = evidence.current() if evidence is not None else None
        note = None if evidence is None else evidence.error
        if evidence is None:
            note = "no evidence directory configured (segshadow serve --evidence DIR)"
        view = router.stages.current()
        history, state = [], None
        store = router.stages.store
        if store is not None:
            try:
                history = store.history(limit=12)
                state = store.state()
            except SegshadowError as exc:
                note = f"{note}; {exc}" if note else str(exc)
        gates = _next_gates(plan, state, found.data if found else None, now)
        content = dashboard(found.data if found else None, note, view, history, gates, now)
        return html(
            "dashboard.html",
            page="dashboard",
            d=content,
            live_reach=live_reach(router.source),
            live_reach_bound=REDIS_HLL_BOUND,
            **reach_view(evidence),
        )

    if blooms is None and router.source is not None and hasattr(router.source, "scan_side"):
        blooms = BloomCache(router.source, (), clock=clock)  # type: ignore[arg-type]

    def segment_bloom(name: str) -> SegmentBloom:
        found = blooms.current().get(name) if blooms is not None and SEGMENT_NAME.fullmatch(name) else None
        if found is None:
            raise BloomNotFound(name)
        return found

    @app.exception_handler(BloomNotFound)
    async def no_bloom(request: Request, exc: BloomNotFound) -> PlainTextResponse:
        return PlainTextResponse(f"{exc}\n", status_code=404)

    @app.get("/segments/{name}/bloom")
    def bloom_bytes(name: str) -> Response:
        found = segment_bloom(name)
        headers = {**found.headers(), "Cache-Control": "max-age=60"}
        return Response(found.data, media_type="application/octet-stream", headers=headers)

    @app.get("/segments/{name}/bloom.json")
    def bloom_json(name: str) -> JSONResponse:
        found = segment_bloom(name)
        check = blooms.checks.get(name) if blooms is not None else None
        body = {**found.describe(), "check": check.to_dict() if check is not None else None}
        return JSONResponse(body, headers={"Cache-Control": "max-age=60"})

    @app.get("/api/member")
    def member(user: str = Query("guest"), segment: str = Query(...)) -> JSONResponse:
        """Is ``user`` in ``segment``: from the Bloom filter with ``serve_from_bloom``, else the exact set served."""
        user = check_user(user)
        if serve_from_bloom:
            answer = blooms.member(segment, user) if blooms is not None and SEGMENT_NAME.fullmatch(segment) else None
            if answer is None:
                raise BloomNotFound(segment)
            check = blooms.checks.get(segment) if blooms is not None else None
            return JSONResponse(
                {
                    "user_id": user,
                    "segment": segment,
                    "member": answer,
                    "source": "bloom",
                    "observed_fpr": check.observed_fpr if check is not None else None,
                    "target_fpr": check.target_fpr if check is not None else None,
                }
            )
        served = router.serve(user)
        return JSONResponse(
            {"user_id": user, "segment": segment, "member": segment in served.segments, "source": served.side}
        )

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/healthz")
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    return app


def reach_view(evidence: EvidenceFile | None) -> dict[str, Any]:
    """The reach charts from ``sketches.json`` beside the evidence's ``parity.json`` (sealed with it)."""
    if evidence is None:
        return {"reach": [], "reach_bound": None}
    try:
        data = json.loads((evidence.path.parent / "sketches.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"reach": [], "reach_bound": None}
    reach = data.get("reach") if isinstance(data, dict) else None
    if not isinstance(reach, dict):
        return {"reach": [], "reach_bound": None}
    bound = (reach.get("summary") or {}).get("hll", {}).get("minute_bound")
    return {"reach": reach_charts(reach, "minute", width=640, height=180), "reach_bound": bound}


def live_reach(source: object, minutes: int = 10) -> list[dict[str, Any]]:
    """Both sides' reach per segment over the last ``minutes`` minutes, read from the serving store
    (``segments.reachstore``: kept in the write path, the stream's by its sink, legacy's by its as-of
    writes; ``PFCOUNT`` per minute): a legacy and a stream row per segment either side has reach in;
    empty without a Redis store."""
    from segments.reachstore import ReachStore

    client = getattr(source, "client", None)
    if client is None:
        return []
    store = ReachStore(client, prefix=getattr(source, "prefix", "segshadow"))
    rows: list[dict[str, Any]] = []
    try:
        found = [b for b in (store.latest_bucket(side) for side in ("legacy", "stream")) if b is not None]
        if not found:
            return []
        latest = max(found)  # one set of columns for both sides
        segments = sorted(set(store.segments("legacy")) | set(store.segments("stream")))
        for segment in segments:  # both sides of a segment side by side (a side without it counts 0)
            for side in ("legacy", "stream"):
                series = store.series(side, segment, "minute", latest - (minutes - 1) * 60_000, latest)
                rows.append(
                    {"side": side, "segment": segment, "buckets": [(format_ms(b)[11:16], c) for b, c in series]}
                )
    except SegshadowError:
        return []
    return rows


def _next_gates(plan: Plan | None, state: RolloutState | None, data: Any, now: int) -> list[Any] | None:
    """The gates of the plan's next promotion from ``state`` on ``data``; None when they do not apply."""
    if plan is None or state is None or data is None or not needs_gates(state.position):
        return None
    step = plan.next_step(state.position)
    if step is None:
        return None
    return list(evaluate(plan, step.gates, data, now, state.in_stage_ms(now)))
