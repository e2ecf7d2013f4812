"""One freshness figure: the gate's p99 is never below the exact p99, and every output shows the same one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from compare.latency import EXACT_LIMIT, LatencySketch, exact_quantile, summarize
from homepage.dashboard import freshness_rows, human_ms
from rollout.evidence import load_evidence
from rollout.gates import freshness_gate
from tests.rollout.helpers import T0, good_evidence, write_evidence


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=3000))
def test_the_gate_reads_a_p99_at_least_the_exact_p99_of_the_samples(values: list[float]) -> None:
    exact = exact_quantile(np.sort(np.asarray(values)), 0.99)
    figure = summarize(values, "live")
    assert figure.p99_ms == exact  # exact below the bound, and the same every time
    data = {"latency": {"stream": figure.to_dict()}}
    assert freshness_gate(data, 10**9).observed >= round(exact, 3) - 1e-9


def test_beyond_the_exact_bound_the_sketch_figure_is_an_upper_bound() -> None:
    values = np.random.default_rng(7).exponential(20.0, 200_000)
    ordered = np.sort(values)
    sketch = LatencySketch.of(values).summary("live")
    assert sketch.p99_ms is not None and sketch.p99_ms >= exact_quantile(ordered, 0.99)
    assert not sketch.exact and EXACT_LIMIT < 10**7


def test_every_output_of_one_evidence_shows_the_same_p99(tmp_path: Path) -> None:
    """parity.json (gate, Prometheus and dashboard read it), the samples it is sealed with, the report."""
    stream = {"p50_ms": 3.0, "p95_ms": 21.0, "p99_ms": 38.0, "max_ms": 43.0, "count": 500, "source": "live"}
    data = good_evidence(T0)
    data["latency"]["stream"] = stream
    ev = load_evidence(write_evidence(tmp_path / "ev", data))
    samples = [float(x) for x in (tmp_path / "ev" / "stream_latency.txt").read_text().split()]
    exact = exact_quantile(np.sort(np.asarray(samples)), 0.99)
    assert ev.sealed and exact == 38.0
    assert ev.data["latency"]["stream"]["p99_ms"] == exact
    assert freshness_gate(ev.data, 50).observed == exact
    assert freshness_rows(ev.data["latency"])[1]["p99"] == human_ms(exact)


def test_replay_evidence_shows_not_measured_and_the_gate_is_inconclusive_not_zero(tmp_path: Path) -> None:
    data = good_evidence(T0)
    data["latency"]["stream"] = {"source": "replay", "p99_ms": 0.0, "count": 10}
    ev = load_evidence(write_evidence(tmp_path / "ev", data))
    assert ev.data["latency"]["stream"]["p99_ms"] is None
    result = freshness_gate(ev.data, 50)
    assert result.status == "inconclusive" and "not measured (replay)" in result.reason
    assert freshness_rows(ev.data["latency"])[1]["p99"] == "not measured (replay)"
    assert "0.0 ms" not in json.dumps(freshness_rows(ev.data["latency"]))
