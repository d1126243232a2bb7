"""The budget governor's fast path (``Governor.take``, and the answers left unread): every
call it charges is charged as the whole way (``Budget.admit``) would charge it, and it steps
aside whenever the whole way has something to decide."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.budget import _SPAN as SPAN
from proxy.core.budget import (
    DAY,
    READ_EVERY,
    BudgetMode,
    BudgetPolicy,
    Charge,
    Governor,
    Ledger,
    Throttled,
    Window,
    utc_day_start,
)
from proxy.core.catalog import Catalogue, api_route
from proxy.core.credentials import Credential, CredentialKind
from proxy.core.decision import Decision, Grant, Policy, authorize
from proxy.core.errors import BudgetExceeded
from proxy.http.budget import Budget
from proxy.http.metrics import Metrics
from proxy.stores import MemoryStore
from tests.conftest import CATALOGUE, examples

NOON = utc_day_start(1_800_000_000.0) + DAY / 2
ACME = "acme.pipedrive.com"
LIMIT_HEADER = "x-daily-ratelimit-token-limit"
REMAINING_HEADER = "x-daily-ratelimit-token-remaining"
PATHS = [("GET", "/v1/deals/17"), ("GET", "/v1/deals"), ("GET", "/v1/deals/search"),
         ("GET", "/v1/users/me"), ("POST", "/v1/deals")]  # fmt: skip
TOKENS: list[tuple[CredentialKind, str]] = [("oauth", "a"), ("oauth", "b"), ("api_token", "c")]


def decision_for(
    method: str, path: str, token: tuple[CredentialKind, str], company: str | None = ACME,
    catalogue: Catalogue = CATALOGUE,
) -> Decision:  # fmt: skip
    route = api_route(path)
    assert route is not None
    kind, name = token
    credential = Credential(kind, hashlib.sha256(name.encode()).hexdigest())
    grant = Grant(frozenset({"deals:full", "users:read", "search:read"}), "static:t", company)
    decision = authorize(catalogue, Policy(), route, method, credential, grant, None)
    assert decision.verdict == "allow"
    return decision


@dataclass
class Clocks:
    now: float = NOON
    moment: float = 1_000.0

    def clock(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.moment


@dataclass
class Answer:
    headers: Mapping[str, str] = field(default_factory=dict)
    reads: int = 0

    def __getattribute__(self, name: str) -> object:
        if name == "headers":
            object.__setattr__(self, "reads", object.__getattribute__(self, "reads") + 1)
        return object.__getattribute__(self, name)


def budget_of(policy: BudgetPolicy, clocks: Clocks) -> Budget:
    return Budget(policy, MemoryStore(), Metrics(), clocks.clock, clocks.monotonic)


async def call(budget: Budget, decision: Decision, fast: bool) -> Charge | str:
    """One call as the server makes it (``fast``: ``take`` first), or the kind of its refusal."""
    note = budget.take(decision) if fast else None
    if note is not None:
        return note
    try:
        admitted = budget.admit(decision, check=False)
        return admitted if isinstance(admitted, Charge) else await admitted
    except BudgetExceeded as refused:
        return str(refused.reason)


def budget_left(ledger: Ledger) -> int | None:
    """What the app may still spend, as docs/budget.md writes it: what is left of its share,
    the reserve included, or less when Pipedrive says less is left."""
    if ledger.company is None:
        return None
    share_left = ledger.full - ledger.shared_spent
    if ledger.left is not None:
        share_left = min(share_left, ledger.left)
    return max(0, share_left)


def state(budget: Budget) -> object:
    governor = budget.governor
    for ledger in governor.ledgers.values():
        assert governor.budget_left(ledger) == budget_left(ledger)
    return (
        sorted(
            (ledger.company or "", ledger.spent, ledger.held, ledger.held_reserve, ledger.left,
             ledger.drawn, ledger.shared_spent, governor.budget_left(ledger), ledger.first_at,
             sorted((name, u.calls, u.tokens) for name, u in ledger.usage.items()),
             dict(ledger.throttled))
            for ledger in governor.ledgers.values()
        ),
        sorted((key, list(window)) for key, window in governor.windows.items()),
    )  # fmt: skip


# An event: (what, a, b, flag, seconds): a call (path a, token b, of a known company or not),
# a wait, Pipedrive's answer to the last call (a tokens fewer left at Pipedrive, status b), or
# no answer (the call never reached it).
Event = tuple[str, int, int, bool, float]
calls = st.tuples(st.just("call"), st.integers(0, len(PATHS) - 1),
                  st.integers(0, len(TOKENS) - 1), st.booleans(), st.just(0.0))  # fmt: skip
events = st.lists(
    st.one_of(
        calls, calls, calls, calls,  # most events are calls
        st.tuples(st.just("wait"), st.just(0), st.just(0), st.just(False), st.floats(0.0, 1.5)),
        st.tuples(st.just("answer"), st.integers(0, 300), st.sampled_from([200, 200, 429]),
                  st.just(True), st.just(0.0)),
        st.tuples(st.just("unreached"), st.just(0), st.just(502), st.just(False), st.just(0.0)),
    ),
    min_size=20,
    max_size=200,
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(events=events, share=st.sampled_from([0.3, 1.0]), reserve=st.sampled_from([0.0, 0.2]),
       mode=st.sampled_from(["enforce", "report"]))  # fmt: skip
def test_the_fast_path_charges_as_the_whole_way_would(
    events: list[Event], share: float, reserve: float, mode: BudgetMode
) -> None:
    policy = BudgetPolicy(mode, daily_tokens=2_000, share=share, reserve=reserve,
                          critical=frozenset({"GET /v1/users/me"}), burst_oauth=6,
                          burst_api_token=3)  # fmt: skip
    clocks = Clocks()
    budgets = {fast: budget_of(policy, clocks) for fast in (True, False)}
    remaining = 1_500
    notes: dict[bool, Charge | None] = {True: None, False: None}

    async def run() -> None:
        nonlocal remaining
        for what, a, b, flag, seconds in events:
            if what == "call":
                method, target = PATHS[a]
                decision = decision_for(method, target, TOKENS[b], ACME if flag else None)
                results = {fast: await call(budget, decision, fast)
                           for fast, budget in budgets.items()}  # fmt: skip
                seen = {
                    fast: (r.cost, r.endpoint, r.throttled) if isinstance(r, Charge) else r
                    for fast, r in results.items()
                }
                assert seen[True] == seen[False]
                for fast, result in results.items():
                    notes[fast] = result if isinstance(result, Charge) else None
            elif what == "wait":
                clocks.now += seconds
                clocks.moment += seconds
            elif notes[True] is not None:  # the answer to the last call charged
                if flag:
                    remaining = max(0, remaining - a)
                said = {LIMIT_HEADER: "2000", REMAINING_HEADER: str(remaining)}
                for fast, budget in budgets.items():
                    note = notes[fast]
                    assert note is not None
                    budget.answered(note, b, Answer(said), flag)
                notes[True] = notes[False] = None
            assert state(budgets[True]) == state(budgets[False])

    asyncio.run(run())


def test_a_charge_is_worked_out_again_when_the_catalogue_changes_an_endpoints_cost() -> None:
    clocks = Clocks()
    budget = budget_of(BudgetPolicy("enforce", daily_tokens=100_000), clocks)
    decision = decision_for("GET", "/v1/deals/17", TOKENS[0])
    assert decision.endpoint is not None
    first = asyncio.run(call(budget, decision, fast=True))
    assert isinstance(first, Charge)
    again = budget.take(decision)
    assert again is first  # the endpoint's charge serves again
    dearer = replace(decision.endpoint, token_cost=7)  # a reloaded catalogue's entry
    reloaded = decision._replace(endpoint=dearer)
    assert budget.take(reloaded) is None  # not the charge of the entry it was made for
    charged = asyncio.run(call(budget, reloaded, fast=True))
    assert isinstance(charged, Charge)
    assert charged.cost == 7
    assert budget.take(reloaded) is charged
    usage = budget.governor.ledgers[ACME].usage["GET /v1/deals/{id}"]
    assert (usage.calls, usage.tokens) == (4, 2 + 2 + 7 + 7)


def test_the_fast_path_steps_aside_for_a_full_burst_window_and_a_new_day() -> None:
    clocks = Clocks()
    budget = budget_of(BudgetPolicy("enforce", daily_tokens=100_000, burst_oauth=3), clocks)
    decision = decision_for("GET", "/v1/deals/17", TOKENS[0])
    assert isinstance(asyncio.run(call(budget, decision, fast=True)), Charge)
    assert budget.take(decision) is not None
    assert budget.take(decision) is not None
    assert budget.take(decision) is None  # the window is full: the whole way refuses
    assert asyncio.run(call(budget, decision, fast=True)) == "burst_limit"
    clocks.moment += 2.06
    assert budget.take(decision) is not None  # the first call left the span
    clocks.now = NOON + DAY  # the next day: a new ledger, the whole way
    assert budget.take(decision) is None


def test_pipedrives_headers_are_read_on_one_answer_in_a_few_until_little_is_left() -> None:
    clocks = Clocks()
    budget = budget_of(BudgetPolicy("enforce", daily_tokens=100_000), clocks)
    decision = decision_for("GET", "/v1/deals/17", TOKENS[0])
    remaining = 100_000

    def answer() -> Answer:
        note = budget.take(decision) or asyncio.run(call(budget, decision, fast=True))
        assert isinstance(note, Charge)
        said = Answer({LIMIT_HEADER: "100000", REMAINING_HEADER: str(remaining)})
        budget.answered(note, 200, said, True)
        return said

    assert answer().reads == 1  # the first: nothing was said yet
    reads = sum(answer().reads for _ in range(8 * READ_EVERY))
    assert reads == 8  # one in READ_EVERY while much is left
    ledger = budget.governor.ledgers[ACME]
    remaining = 9_000  # others spent: a tenth of the limit is 10,000
    for _ in range(READ_EVERY):
        answer()
    assert ledger.left is not None
    assert ledger.left <= 9_000  # heard within READ_EVERY answers
    assert all(answer().reads == 1 for _ in range(20))  # little left: every answer read
    note = budget.take(decision)
    assert note is not None
    refused = Answer({REMAINING_HEADER: "0", "Retry-After": "3600"})
    budget.answered(note, 429, refused, True)  # a 429: always read
    assert refused.reads == 1
    assert budget.governor.budget_left(ledger) == 0


def test_a_reload_keeps_each_tokens_calls_in_its_burst_window() -> None:
    governor = Governor(BudgetPolicy("enforce", burst_oauth=5))
    assert all(governor.burst("t", "oauth", at) is None for at in (0.0, 0.1, 0.2, 0.3))
    governor.reconfigure(BudgetPolicy("enforce", burst_oauth=3))  # lowered: the newest kept
    assert isinstance(governor.burst("t", "oauth", 0.4), Throttled)
    governor.reconfigure(BudgetPolicy("enforce", burst_oauth=None))
    assert governor.burst("t", "oauth", 0.5) is None
    governor.reconfigure(BudgetPolicy("enforce", burst_oauth=1))
    assert governor.burst("t", "oauth", 0.6) is None  # none counted while there was no limit
    assert isinstance(governor.burst("t", "oauth", 0.7), Throttled)


class _DequeWindow:
    """The burst window as a deque would keep it: the reference ``Window`` must agree with."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.moments: deque[float] = deque(maxlen=limit)

    def admits(self, now: float) -> bool:
        return len(self.moments) < self.limit or self.moments[0] <= now - SPAN

    def add(self, now: float) -> None:
        self.moments.append(now)

    def remove(self, moment: float) -> None:
        if moment in self.moments:
            self.moments.remove(moment)


@settings(max_examples=examples(300), deadline=None)
@given(
    limit=st.integers(1, 6),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["call", "call", "call", "undo", "reload"]),
            st.floats(0.0, 1.5),
            st.integers(1, 6),
        ),
        max_size=60,
    ),
)
def test_the_ring_window_admits_and_keeps_what_a_deque_would(
    limit: int, steps: list[tuple[str, float, int]]
) -> None:
    """The ring (``Window``) against a plain deque of the latest calls: the same calls
    admitted, the same moments kept in the same order, through calls, calls taken back and
    reloads that change the limit."""
    ring, reference = Window(limit), _DequeWindow(limit)
    now, taken = 0.0, []
    for action, gap, number in steps:
        now += gap
        if action == "call":
            admitted = ring.admits(now)
            assert admitted == reference.admits(now)
            if admitted:
                ring.add(now)
                reference.add(now)
                taken.append(now)
            else:
                assert 0 < ring.wait(now) <= SPAN + 1e-9
        elif action == "undo" and taken:
            moment = taken[-number % len(taken)]
            ring.remove(moment)
            reference.remove(moment)
        elif action == "reload":
            limit = number
            ring, reference_moments = Window(limit, ring), list(reference.moments)
            reference = _DequeWindow(limit)
            reference.moments.extend(reference_moments)
        assert list(ring) == list(reference.moments)
        assert ring.newest() == (reference.moments[-1] if reference.moments else -math.inf)


def test_a_window_holds_no_more_places_than_calls_were_made() -> None:
    """A window's ring grows with its token's calls: a high limit costs nothing up front."""
    window = Window(100_000)
    for moment in range(3):
        window.add(float(moment))
    assert len(window.ring) == 3
    assert list(window) == [0.0, 1.0, 2.0]
