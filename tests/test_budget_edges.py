"""The budget governor at its edges: calls that never reached Pipedrive among quiet answers,
reloads (of the app's name, of the share), a draw refused while the token called again, and
the answer to yesterday's last call read after midnight."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.core.budget import DAY, READ_EVERY, UNCAPPED, BudgetPolicy, Charge
from proxy.http.budget import Budget
from proxy.http.metrics import Metrics
from proxy.stores import MemoryStore
from tests.test_budget_fast import (
    ACME,
    LIMIT_HEADER,
    NOON,
    REMAINING_HEADER,
    TOKENS,
    Answer,
    Clocks,
    budget_of,
    call,
    decision_for,
)

DEAL = ("GET", "/v1/deals/17")  # 2 tokens
SEARCH = ("GET", "/v1/deals/search")  # 40 tokens


def test_calls_that_never_reached_pipedrive_do_not_put_off_reading_its_headers() -> None:
    """Pipedrive's headers are read on one answer in 8 while much is left; a call that never
    reached it brings no headers, and does not count as one read."""
    clocks = Clocks()
    budget = budget_of(BudgetPolicy("enforce", daily_tokens=100_000), clocks)
    decision = decision_for(*DEAL, TOKENS[0])
    remaining = 100_000

    def one(reached: bool) -> Answer:
        clocks.moment += 1.0
        note = budget.take(decision) or asyncio.run(call(budget, decision, fast=True))
        assert isinstance(note, Charge)
        said = Answer({LIMIT_HEADER: "100000", REMAINING_HEADER: str(remaining)})
        budget.answered(note, 200 if reached else 502, said, reached)
        return said

    assert one(True).reads == 1  # the first answer: read
    remaining = 50_000  # the company's other apps spent half the budget
    answered = 0
    for _ in range(5):  # 7 answers, then one call that never reached Pipedrive; repeated
        for _ in range(READ_EVERY - 1):
            one(True)
            answered += 1
        one(False)
    ledger = budget.governor.ledgers[ACME]
    assert answered == 35
    assert ledger.left is not None
    assert ledger.left <= 50_000, f"after {answered} answers, left={ledger.left}"


def test_a_reload_that_changes_the_app_keeps_each_tokens_burst_window() -> None:
    """Pipedrive's burst windows are per token, whatever ``budget.app`` is."""
    clocks = Clocks()
    budget = budget_of(
        BudgetPolicy("enforce", app="a", daily_tokens=100_000, burst_oauth=4), clocks
    )
    decision = decision_for(*DEAL, TOKENS[0])
    for _ in range(3):
        assert isinstance(asyncio.run(call(budget, decision, fast=True)), Charge)
        clocks.moment += 0.1
    budget.reconfigure(BudgetPolicy("enforce", app="b", daily_tokens=100_000, burst_oauth=3))
    fourth = asyncio.run(call(budget, decision, fast=True))  # 4th call within 0.3 s
    assert fourth == "burst_limit", f"4th call in 0.3 s with burst 3 was {fourth!r}"


class GatedStore(MemoryStore):
    """A memory store whose draws wait until the gate opens."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self.gate = asyncio.Event()
        self.gate.set()

    async def draw_budget(self, key: str, want: int, cap: int, ttl: float) -> tuple[int, int]:
        await self.gate.wait()
        return await super().draw_budget(key, want, cap, ttl)


def test_a_call_refused_after_its_draw_takes_back_its_own_place_in_the_burst_window() -> None:
    """Not the place of the token's call made on the fast path while the draw was pending,
    which did go to Pipedrive."""
    clocks = Clocks()
    policy = BudgetPolicy("enforce", daily_tokens=100, share=1.0, burst_oauth=2)

    async def run() -> list[object]:
        store = GatedStore(clocks.clock)
        budget = Budget(policy, store, Metrics(), clocks.clock, clocks.monotonic)
        prime = await call(budget, decision_for(*DEAL, TOKENS[1]), fast=True)  # token b
        assert isinstance(prime, Charge)  # drew 10, holds 8
        ledger = budget.governor.ledgers[ACME]
        await store.draw_budget(ledger.key, 90, 100, DAY)  # other replicas took the rest
        store.gate.clear()
        a_deal, a_search = decision_for(*DEAL, TOKENS[0]), decision_for(*SEARCH, TOKENS[0])
        clocks.moment = 10.0
        first = asyncio.ensure_future(call(budget, a_search, fast=True))  # needs a draw
        await asyncio.sleep(0)
        clocks.moment = 10.1
        went = budget.take(a_deal)  # token a, fast path: goes to Pipedrive at 10.1
        assert isinstance(went, Charge)
        store.gate.set()
        assert await first == "budget_exhausted"  # the search never went
        clocks.moment = 11.0
        second = await call(budget, a_deal, fast=True)  # goes at 11.0
        assert isinstance(second, Charge)
        clocks.moment = 12.06  # 1.96 s after the call at 10.1: a 3rd call within 2 s
        third = await call(budget, a_deal, fast=True)
        return [third]

    (third,) = asyncio.run(run())
    assert third == "burst_limit", (
        f"3 calls of token a reached Pipedrive within 1.96 s (burst 2): {third!r}"
    )


def test_a_reload_lowering_the_share_refuses_what_is_held_past_it() -> None:
    """A call is refused when its cost would take the app's spend past share x limit, the
    new share from the next call on, though this process holds a chunk drawn before."""
    clocks = Clocks()
    budget = budget_of(BudgetPolicy("enforce", daily_tokens=30_000, share=1.0), clocks)
    decision = decision_for(*DEAL, TOKENS[0])
    for _ in range(3):
        clocks.moment += 1.0
        assert isinstance(asyncio.run(call(budget, decision, fast=True)), Charge)
    ledger = budget.governor.ledgers[ACME]
    budget.reconfigure(BudgetPolicy("enforce", daily_tokens=30_000, share=0.0001))  # 3 tokens
    assert ledger.shared_spent == 6  # what was held past the new share is not counted spent
    assert budget.governor.budget_left(ledger) == 0
    assert ledger.returning > 0  # but given back to the shared count at the next draw
    clocks.moment += 1.0
    nxt = asyncio.run(call(budget, decision, fast=True))
    assert nxt == "budget_exhausted", (
        f"spent 6 of a 3-token share, left 0, yet charged: {nxt!r}, held={ledger.held}"
    )
    assert ledger.returning == 0  # given back at the draw that call made
    _, count = asyncio.run(budget.store.draw_budget(ledger.key, 0, UNCAPPED, DAY))
    assert count == 6  # the shared count: what was spent, nothing held past the share


def test_the_answer_to_yesterdays_last_call_does_not_replace_todays_ledger() -> None:
    """A call charged before midnight whose answer, read after it, shows Pipedrive's reset:
    what it says is today's, and today's ledger (its chunk, its calls) stays."""
    clocks = Clocks()
    clocks.now = NOON + DAY / 2 - 1.0  # 23:59:59
    budget = budget_of(BudgetPolicy("enforce", daily_tokens=10_000), clocks)
    decision = decision_for(*DEAL, TOKENS[0])
    first = asyncio.run(call(budget, decision, fast=True))
    assert isinstance(first, Charge)
    budget.answered(first, 200, Answer({LIMIT_HEADER: "10000", REMAINING_HEADER: "500"}), True)
    late = asyncio.run(call(budget, decision, fast=True))  # 23:59:59, answered after midnight
    assert isinstance(late, Charge)
    clocks.now += 2.0  # 00:00:01: a new UTC day
    clocks.moment += 1.0
    today = asyncio.run(call(budget, decision, fast=True))
    assert isinstance(today, Charge)
    assert today.ledger is not late.ledger
    held_today = today.ledger.held
    budget.answered(late, 200, Answer({LIMIT_HEADER: "10000", REMAINING_HEADER: "9990"}), True)
    current = budget.governor.ledgers[ACME]
    assert current is today.ledger, (
        f"today's ledger replaced: it held {held_today}, the new one holds {current.held}; "
        f"today's calls {sum(u.calls for u in today.ledger.usage.values())} -> "
        f"{sum(u.calls for u in current.usage.values())}"
    )
