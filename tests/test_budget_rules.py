"""The budget governor's rules (``proxy.core.budget``): the share and its reserve, what
Pipedrive's headers say, the day, burst windows, the projection. Pure: no server, no store."""

from __future__ import annotations

from proxy.core.budget import (
    DAY,
    BudgetPolicy,
    Charge,
    Draw,
    Governor,
    Ledger,
    Throttled,
    utc_day_start,
)

_POOLS: dict[int, dict[str, int]] = {}
NOON = utc_day_start(1_800_000_000.0) + DAY / 2  # a UTC noon
ACME = "acme.pipedrive.com"


def spend(
    governor: Governor,
    ledger: Ledger,
    cost: int,
    critical: bool = False,
    now: float = NOON,
    pool: dict[str, int] | None = None,
) -> Charge | Throttled:
    """One call, drawing from ``pool`` (the shared count, by key; by default the governor's
    own) as the server would."""
    pool = pool if pool is not None else _POOLS.setdefault(id(governor), {})
    result = governor.admit(
        ledger, cost, critical, now, drew=False, shared=True, endpoint="GET /v1/deals"
    )
    if isinstance(result, Draw):
        count = pool.get(result.key, 0)
        granted = max(0, min(result.want, result.cap - count))
        pool[result.key] = count + granted
        governor.drew(ledger, granted, count + granted, governor.policy)
        result = governor.admit(
            ledger, cost, critical, now, drew=True, shared=True, endpoint="GET /v1/deals"
        )
    assert not isinstance(result, Draw)
    return result


def test_calls_are_charged_until_the_share_is_spent_then_refused_until_the_reset() -> None:
    governor = Governor(BudgetPolicy("enforce", daily_tokens=1000, share=0.5))
    ledger = governor.ledger(ACME, NOON)
    results = [spend(governor, ledger, 20) for _ in range(30)]
    charged = [r for r in results if isinstance(r, Charge)]
    assert len(charged) == 25  # 500 tokens: half of 1000
    refused = results[25]
    assert isinstance(refused, Throttled)
    assert refused.kind == "budget_exhausted"
    assert refused.left == 0
    assert refused.retry_after == DAY / 2  # to the next UTC midnight
    assert ledger.shared_spent == 500


def test_the_reserve_is_kept_for_the_critical_endpoints() -> None:
    governor = Governor(BudgetPolicy("enforce", daily_tokens=1000, share=1.0, reserve=0.2,
                                     critical=frozenset({"GET /v1/users/me"})))  # fmt: skip
    ledger = governor.ledger(ACME, NOON)
    pool: dict[str, int] = {}
    while isinstance(spend(governor, ledger, 20, pool=pool), Charge):
        pass
    assert ledger.shared_spent == 800  # the rest of the share is the reserve
    assert isinstance(spend(governor, ledger, 2, pool=pool), Throttled)  # not critical
    served = [spend(governor, ledger, 2, critical=True, pool=pool) for _ in range(100)]
    assert sum(isinstance(r, Charge) for r in served) == 100  # 200 tokens of reserve
    assert isinstance(spend(governor, ledger, 2, critical=True, pool=pool), Throttled)
    assert ledger.shared_spent == 1000


def test_pipedrives_remaining_lowers_what_is_left_and_never_raises_it_during_a_day() -> None:
    governor = Governor(BudgetPolicy("enforce", daily_tokens=30_000))
    ledger = governor.ledger(ACME, NOON)
    assert isinstance(spend(governor, ledger, 10), Charge)
    governor.said(ledger, 30_000, 25, NOON)  # other apps spent the rest
    assert isinstance(spend(governor, ledger, 20), Charge)
    refused = spend(governor, ledger, 20)  # 5 left: not enough
    assert isinstance(refused, Throttled)
    assert refused.left == 5
    governor.said(ledger, 30_000, 2_500, NOON + 1)  # a rise within a day: not believed
    assert ledger.left == 5
    assert isinstance(spend(governor, ledger, 20), Throttled)


def test_a_top_up_raises_what_is_left() -> None:
    governor = Governor(BudgetPolicy("enforce", daily_tokens=30_000))
    ledger = governor.ledger(ACME, NOON)
    governor.said(ledger, 30_000, 10, NOON)
    assert isinstance(spend(governor, ledger, 20), Throttled)
    governor.said(ledger, 40_000, 10_010, NOON + 5)  # the company bought 10,000 more
    assert ledger.left == 10_010
    assert ledger.caps(governor.policy) == (40_000, 40_000)
    assert isinstance(spend(governor, ledger, 20), Charge)


def test_a_jump_in_remaining_is_a_new_day_at_pipedrive() -> None:
    governor = Governor(BudgetPolicy("enforce", daily_tokens=1000))
    ledger = governor.ledger(ACME, NOON)
    for _ in range(45):
        spend(governor, ledger, 20)
    governor.said(ledger, 1000, 100, NOON)
    governor.said(ledger, 1000, 990, NOON + 600)  # reset at Pipedrive: its day, not UTC's
    fresh = governor.ledger(ACME, NOON + 600)
    assert fresh is not ledger
    assert fresh.left == 990
    assert fresh.spent == 0
    assert fresh.start == NOON  # at the hour
    assert isinstance(spend(governor, fresh, 20, now=NOON + 600), Charge)


def test_a_429_for_the_days_budget_ends_the_day_when_pipedrive_says() -> None:
    governor = Governor(BudgetPolicy("enforce", daily_tokens=1000))
    ledger = governor.ledger(ACME, NOON)
    governor.exhausted(ledger, 3600, NOON)
    refused = spend(governor, ledger, 2)
    assert isinstance(refused, Throttled)
    assert refused.retry_after == 3600
    later = governor.ledger(ACME, NOON + 3600)
    assert later is not ledger
    assert isinstance(spend(governor, later, 2, now=NOON + 3600), Charge)


def test_the_utc_day_ends_the_count() -> None:
    governor = Governor(BudgetPolicy("enforce", daily_tokens=100))
    ledger = governor.ledger(ACME, NOON)
    pool: dict[str, int] = {}
    while isinstance(spend(governor, ledger, 20, pool=pool), Charge):
        pass
    tomorrow = NOON + DAY / 2
    fresh = governor.ledger(ACME, tomorrow)
    assert fresh.key != ledger.key  # another day's shared count
    assert isinstance(spend(governor, fresh, 20, now=tomorrow, pool=pool), Charge)


def test_an_unknown_company_is_counted_never_refused() -> None:
    governor = Governor(BudgetPolicy("enforce", daily_tokens=10, share=0.1))
    ledger = governor.ledger(None, NOON)
    results = [
        governor.admit(ledger, 40, False, NOON, drew=False, shared=True, endpoint="GET /v1/deals")
        for _ in range(50)
    ]
    assert all(isinstance(r, Charge) for r in results)
    assert ledger.spent == 2000


def test_with_the_shared_count_away_calls_are_counted_not_refused_and_added_later() -> None:
    governor = Governor(BudgetPolicy("enforce", daily_tokens=100))
    ledger = governor.ledger(ACME, NOON)
    results = [
        governor.admit(ledger, 20, False, NOON, drew=False, shared=False, endpoint="GET /v1/deals")
        for _ in range(10)
    ]
    assert all(isinstance(r, Charge) for r in results)
    assert ledger.unsynced == 200
    assert ledger.shared_spent == 200


def test_burst_windows_slide() -> None:
    governor = Governor(BudgetPolicy("enforce", burst_oauth=3, burst_api_token=1))
    assert [governor.burst("t", "oauth", at) for at in (0.0, 0.5, 1.0)] == [None] * 3
    refused = governor.burst("t", "oauth", 1.5)
    assert isinstance(refused, Throttled)
    assert refused.kind == "burst_limit"
    assert 1 <= refused.retry_after <= 2
    assert isinstance(governor.burst("t", "oauth", 2.04), Throttled)  # held 50 ms longer
    assert governor.burst("t", "oauth", 2.06) is None  # the call at 0.0 is out of the span
    assert isinstance(governor.burst("t", "oauth", 2.2), Throttled)
    assert governor.burst("other", "oauth", 2.2) is None  # per token
    assert governor.burst("k", "api_token", 0.0) is None
    assert isinstance(governor.burst("k", "api_token", 1.9), Throttled)


def test_no_burst_limit_unless_configured() -> None:
    governor = Governor(BudgetPolicy("enforce", burst_oauth=None))
    assert all(governor.burst("t", "oauth", 0.0) is None for _ in range(1000))


def test_the_projection_is_when_the_share_runs_out_at_the_rate_seen() -> None:
    governor = Governor(BudgetPolicy("enforce", daily_tokens=10_000))
    ledger = governor.ledger(ACME, NOON)
    pool: dict[str, int] = {}
    for second in range(100):  # 20 tokens a second
        spend(governor, ledger, 20, now=NOON + second, pool=pool)
    now = NOON + 100
    projected = governor.projected(ledger, now)
    assert projected is not None
    # 8,000 tokens left at 20 a second
    assert abs(projected - (now + 8_000 / 20)) < 20


def test_the_projection_follows_the_company_when_others_spend_faster() -> None:
    governor = Governor(BudgetPolicy("enforce", daily_tokens=100_000))
    ledger = governor.ledger(ACME, NOON)
    spend(governor, ledger, 2)
    governor.said(ledger, 100_000, 50_000, NOON)
    governor.said(ledger, 100_000, 40_000, NOON + 100)  # 100 a second, the company over
    projected = governor.projected(ledger, NOON + 100)
    assert projected is not None
    assert abs(projected - (NOON + 100 + 400)) < 5


def test_a_draw_takes_at_most_a_tenth_of_the_share() -> None:
    governor = Governor(BudgetPolicy("enforce", daily_tokens=30_000, share=0.5))
    ledger = governor.ledger(ACME, NOON)
    draw = governor.admit(
        ledger, 20, False, NOON, drew=False, shared=True, endpoint="GET /v1/deals"
    )
    assert isinstance(draw, Draw)
    assert draw.want == 1_500
    assert draw.cap == 15_000
