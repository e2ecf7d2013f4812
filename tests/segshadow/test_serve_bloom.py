"""``segshadow serve --serve-from-bloom [--bloom-fpr R]``: membership answered from the Bloom filters, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from segments.outputs import Transition
from segments.reachstore import ReachStore
from segments.redisstore import RedisStore
from segments.sketches import REDIS_HLL_BOUND, relative_error
from segments.timeutil import wall_clock_ms
from tests.rollout.helpers import closed_port


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _serve(tmp_path: Path, redis_url: str, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    port = closed_port()
    argv = [sys.executable, "-m", "segshadow.cli", "serve", "--port", str(port), *flags]
    argv += ["--database-url", f"sqlite:///{tmp_path / 'site.db'}", "--redis-url", redis_url]
    argv += ["--data-dir", str(tmp_path / "data")]
    log = open(tmp_path / "serve.log", "w+b")  # noqa: SIM115
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                return process, base
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.seek(0)
                raise RuntimeError(f"serve did not start: {log.read().decode()[-2000:]}") from None
            time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def test_serve_from_bloom_answers_membership_from_the_filter_at_the_target_rate(
    tmp_path: Path, redis_url: str
) -> None:
    """Members always say yes (no false negatives); non-members say yes about as often as --bloom-fpr,
    and the site says which it answered from. Without the flag the same route answers from the exact set."""
    members = [f"m{n}" for n in range(400)]
    others = [f"o{n}" for n in range(1600)]  # users the stream holds outside the segment: the filter's probes
    now = wall_clock_ms()
    with RedisStore.open(redis_url) as store:
        store.write_stream([Transition(u, ("high_value",), now, 1, now, "event") for u in members])
        store.write_stream([Transition(u, ("window_shopper",), now, 1, now, "event") for u in others])

    process, base = _serve(tmp_path, redis_url, "--serve-from-bloom", "--bloom-fpr", "0.05")
    try:
        described = _get(f"{base}/segments/high_value/bloom.json")
        assert described["target_fpr"] == 0.05 and described["members"] == len(members)
        for user in members[:50]:
            body = _get(f"{base}/api/member?user={user}&segment=high_value")
            assert body["member"] is True and body["source"] == "bloom" and body["target_fpr"] == 0.05
        said_yes = sum(_get(f"{base}/api/member?user={u}&segment=high_value")["member"] for u in others[:400])
        assert described["check"]["false_negatives"] == 0
        assert 0 < said_yes < 60  # 5% of 400 is 20 (fixed ids and hash: deterministic)
        # The rebuild carried the current holders into the stream's reach of the minute it ran in.
        reach = ReachStore(redis.Redis.from_url(redis_url))
        minute = wall_clock_ms() // 60_000 * 60_000
        counts = [reach.count("stream", "high_value", "minute", b) for b in (minute - 60_000, minute)]
        assert any(relative_error(c, len(members)) <= REDIS_HLL_BOUND for c in counts), counts
        reach.client.close()
    finally:
        _stop(process)

    process, base = _serve(tmp_path, redis_url)
    try:
        body = _get(f"{base}/api/member?user=o1&segment=high_value")
        assert body["member"] is False and body["source"] != "bloom"
        assert _get(f"{base}/segments/high_value/bloom.json")["target_fpr"] == 0.01  # the default target
    finally:
        _stop(process)


@pytest.mark.parametrize("rate", ["0", "nan"])
def test_a_bad_bloom_rate_is_one_line_and_exit_2(rate: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "segshadow.cli", "serve", "--serve-from-bloom", "--bloom-fpr", rate,
         "--database-url", f"sqlite:///{tmp_path / 'x.db'}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--bloom-fpr" in done.stderr, done.stderr
    assert not (tmp_path / "x.db").exists()
