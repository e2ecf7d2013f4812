"""The stream's lateness parameters have documented limits (bounded work)."""

from __future__ import annotations

import pytest

from segments.errors import UsageError
from segments.lateness import MAX_ALLOWED_LATENESS_MS, MAX_OUT_OF_ORDERNESS_MS, GateParams


@pytest.mark.parametrize(
    ("ooo", "lateness", "flag"),
    [
        (360_000_000_000_000, 60_000, "--max-out-of-orderness"),  # 100000000h: was a Beam OverflowError
        (MAX_OUT_OF_ORDERNESS_MS + 1, 60_000, "--max-out-of-orderness"),
        (5_000, MAX_ALLOWED_LATENESS_MS + 1, "--allowed-lateness"),
        (-1, 60_000, "--max-out-of-orderness"),
        (5_000, -1, "--allowed-lateness"),
    ],
)
def test_out_of_range_lateness_parameters_are_usage_errors_naming_the_flag(ooo: int, lateness: int, flag: str) -> None:
    with pytest.raises(UsageError, match=flag) as caught:
        GateParams(ooo, lateness)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


def test_the_limits_themselves_are_accepted() -> None:
    params = GateParams(MAX_OUT_OF_ORDERNESS_MS, MAX_ALLOWED_LATENESS_MS)
    assert (params.max_out_of_orderness_ms, params.allowed_lateness_ms) == (86_400_000, 31 * 86_400_000)
