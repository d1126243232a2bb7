"""The budget replay's own instruments (bench/budget_replay.py): the day it replays, and how
it judges a run, on made-up runs whose right answers are known."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

from tests.processes import load_script

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def replay() -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))  # it imports bench/harness.py
    return load_script(ROOT / "bench" / "budget_replay.py", "budget_replay")


def test_the_day_is_the_same_each_run_and_bursts_past_every_limit(replay: ModuleType) -> None:
    calls = replay.day_of_calls(60.0)
    assert calls == replay.day_of_calls(60.0)
    assert {call.token for call in calls} == set(replay.TOKENS)
    assert any(call.endpoint == replay.CRITICAL for call in calls)
    for token in ("acme-1", "api-acme"):  # each bursts past its limit in some 2-second span
        times = sorted(call.at for call in calls if call.token == token)
        limit = replay.BURST["api_token" if token.startswith("api-") else "oauth"]
        most = max(sum(1 for t in times[i:] if t - first < 2.0) for i, first in enumerate(times))
        assert most > limit, token
    budgets = replay.limits(60.0)
    demand = sum(c.cost for c in calls if replay.TOKENS[c.token][0] == "acme.pipedrive.com")
    assert demand > 1.5 * replay.SHARE * budgets["acme.pipedrive.com"]  # the share must bind


def run_of(replay: ModuleType, results: Sequence[tuple[str, int, str | None]]) -> object:
    """A made-up run: acme's calls of ``GET /v1/deals`` (20 tokens), one a second."""
    made = [
        replay.Result(replay.Call(float(i), "acme-1", "GET", path, *replay.endpoint_of("GET", path)),
                      status, reason, float(i))
        for i, (path, status, reason) in enumerate(results)
    ]  # fmt: skip
    spent = sum(r.call.cost for r in made if r.status == 200)
    stats = {"refused": {}, "spent_by_app": {"acme.pipedrive.com": spent, "initech.pipedrive.com": 0},
             "most_in_two_seconds": 1}  # fmt: skip
    return replay.Run(made, stats, None, None)


def test_a_refusal_while_the_share_had_room_counts_as_wrong(replay: ModuleType) -> None:
    limits = {company: 1000 for company in replay.COMPANIES}  # acme's share: 500 tokens
    early = [("/v1/deals", 200, None)] * 5 + [("/v1/deals", 429, "budget_exhausted")]
    figures = replay.judged(run_of(replay, early), limits)
    assert figures["wrongly_refused"] == pytest.approx(1 / 6)  # 100 spent of 480: room left
    late = [("/v1/deals", 200, None)] * 23 + [("/v1/deals", 429, "budget_exhausted")]
    figures = replay.judged(run_of(replay, late), limits)
    assert figures["wrongly_refused"] == 0  # 460 of 480: one more would pass it
    bursts = [("/v1/deals", 429, "burst_limit")] * 3 + [("/v1/users/me", 200, None)]
    figures = replay.judged(run_of(replay, bursts), limits)
    assert figures["wrongly_refused"] == 0  # a burst refusal is the limit doing its work
    assert figures["critical_served"] == 1.0
