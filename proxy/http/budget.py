"""The budget governor in the server: each call in scope is charged its endpoint's token cost
against its company's day before it is forwarded, and what Pipedrive's answer says of the
budget is read back (``proxy.core.budget`` holds the rules).

The app's spend is shared with its replicas through the store in chunks (``draw_budget``), at
most a tenth of its share each: a call waits for the store only when this process's chunk is
spent. When the store cannot be reached, no call is refused on the budget; the spend is
counted here and added to the shared count once the store answers (tried again at most every
``RETRY_SECONDS``). Behind Envoy the governor only reports: its check sees no answer of
Pipedrive's (no headers, no refunds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, NamedTuple, Protocol

from proxy.core.budget import (
    DAY,
    DEFAULT_COST,
    READ_EVERY,
    UNCAPPED,
    UNKNOWN_COMPANY,
    BudgetPolicy,
    Charge,
    Draw,
    Governor,
    Ledger,
    Throttled,
    iso,
    quietly,
)
from proxy.core.decision import Decision
from proxy.core.errors import BudgetExceeded
from proxy.core.reasons import Reason
from proxy.http.logs import get_logger
from proxy.http.metrics import Metrics
from proxy.stores import Clock, Store, StoreError

RETRY_SECONDS = 5.0  # after the store failed a draw, how long calls go on without trying again
LIMIT_HEADER = "x-daily-ratelimit-token-limit"
REMAINING_HEADER = "x-daily-ratelimit-token-remaining"


class Answer(Protocol):
    """What ``Budget.answered`` reads of an answer: its headers (read only when it must)."""

    @property
    def headers(self) -> Mapping[str, str]: ...


_KINDS = {"budget_exhausted": Reason.BUDGET_EXHAUSTED, "burst_limit": Reason.BURST_LIMIT}


class _Asked(NamedTuple):
    """A call the governor decides the whole way (``Budget.admit``), perhaps after a draw."""

    decision: Decision
    ledger: Ledger
    cost: int
    critical: bool  # its endpoint is named in budget.critical
    label: str  # its endpoint, as the report names it
    report: bool  # counted, never refused (report mode, or Envoy's check)
    throttled: Throttled | None  # the burst refusal it would have met (report)
    moment: float  # when it was counted in its token's burst window (monotonic)


# What the governor made of one call: its charge (the company's day, the cost, and in report
# mode the refusal it would have met), for its log line and to read its answer back.
Note = Charge


class Budget:
    """This process's governor, and its draws from the store."""

    def __init__(
        self,
        policy: BudgetPolicy,
        store: Store,
        metrics: Metrics,
        clock: Clock = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.monotonic = monotonic
        self.governor = Governor(policy, clock, monotonic)
        self.on = policy.on  # whether calls are charged (the policy's mode is not off)
        # The common case, a call charged at once: None when it must go the whole way (admit)
        self.take = self.governor.take
        self.store = store
        self.metrics = metrics
        self._away_until = 0.0  # the store failed a draw: not tried again before then
        self._draws: dict[str, asyncio.Future[None]] = {}
        self._limit_text: str | None = None  # the last limit header read, and its number
        self._limit: int | None = None
        metrics.budget_rows = self.rows

    def reconfigure(self, policy: BudgetPolicy) -> None:
        """A reload: the new share, reserve and limits hold from the next call on; what was
        spent and drawn today stays (the count is the app's, whatever its share)."""
        self.on = policy.on
        if policy.app != self.governor.policy.app:  # another app's count: start it afresh
            fresh = Governor(policy, self.clock, self.monotonic)
            fresh.windows = self.governor.windows  # a token's calls, whatever the app's name
            fresh.reconfigure(policy)
            self.governor = fresh
            self.take = fresh.take
        else:
            self.governor.reconfigure(policy)

    def admit(self, decision: Decision, check: bool) -> Note | Awaitable[Note]:
        """Charge a call in scope, or raise its refusal (``BudgetExceeded``, carrying the
        decision turned to ``deny``). ``check``: Envoy's check, which only reports. A call
        this process holds enough of the share for is decided at once (a ``Note``); one that
        must first draw a chunk from the store is decided once it is drawn (await it). The
        common case is ``take``'s, which callers try first (``admitted``, past it)."""
        governor, policy = self.governor, self.governor.policy
        credential, grant, endpoint = decision.credential, decision.grant, decision.endpoint
        company = grant.company if grant is not None else None
        now = self.clock()
        label = endpoint.name if endpoint is not None else decision.shape or "(unknown endpoint)"
        ledger = governor.ledger(company, now)  # the day's ledger: looked up, or begun
        cost = endpoint.token_cost if endpoint is not None and endpoint.token_cost else DEFAULT_COST
        report = check or policy.mode == "report"
        throttled: Throttled | None = None
        moment = self.monotonic()
        if credential is not None:
            throttled = governor.burst(credential.digest, credential.kind, moment)
            if throttled is not None:
                self.metrics.budget_throttled.labels(throttled.kind).inc()
                governor.noted(ledger, throttled.kind)
                if not report:
                    raise self._refusal(decision, throttled, ledger)
        asked = _Asked(decision, ledger, cost, label in policy.critical, label, report,
                       throttled, moment)  # fmt: skip
        shared = now >= self._away_until
        result = governor.admit(ledger, cost, asked.critical, now, False, shared, label, endpoint)
        if type(result) is Charge and throttled is None:
            return result
        if isinstance(result, Draw):
            return self._drawn(asked, result)
        return self._settle(asked, result)

    async def admitted(self, decision: Decision, check: bool) -> Note:
        """``admit``, drawn first when it must be: the call ``take`` left to the whole way.
        Callers write ``budget.take(decision) or await budget.admitted(decision, check)``."""
        admitted = self.admit(decision, check)
        return admitted if isinstance(admitted, Charge) else await admitted

    async def _drawn(self, asked: _Asked, draw: Draw) -> Note:
        # Shielded: a client that leaves meanwhile must not lose what the store granted.
        await asyncio.shield(self._draw(asked.ledger, draw))
        now = self.clock()
        shared = now >= self._away_until
        result = self.governor.admit(
            asked.ledger, asked.cost, asked.critical, now, True, shared, asked.label,
            asked.decision.endpoint,
        )  # fmt: skip
        if isinstance(result, Draw):  # never after a draw; refused, should it ever be
            result = self.governor.refuse(asked.ledger, asked.critical, now)
        return self._settle(asked, result)

    def _settle(self, asked: _Asked, result: Charge | Throttled) -> Note:
        governor, ledger, decision = self.governor, asked.ledger, asked.decision
        throttled = asked.throttled
        if isinstance(result, Throttled):
            self.metrics.budget_throttled.labels(result.kind).inc()
            governor.noted(ledger, result.kind)
            credential = decision.credential
            if not asked.report:
                if credential is not None and throttled is None:  # no call after all
                    governor.unburst(credential.digest, credential.kind, asked.moment)
                raise self._refusal(decision, result, ledger)
            throttled = throttled or result
            result = governor.overdraw(
                ledger, asked.cost, asked.critical, self.clock(), asked.label, decision.endpoint
            )
        return result if throttled is None else replace(result, throttled=throttled.kind)

    def answered(self, note: Note, status: int, answer: Answer, reached: bool) -> int | None:
        """Read Pipedrive's answer to a charged call: ``quietly`` in the common case, else
        ``read`` (the server calls the two itself, sparing a call on every answer)."""
        left = quietly(note, status, reached)
        return left if left >= 0 else self.read(note, status, answer, reached)

    def read(self, note: Note, status: int, answer: Answer, reached: bool) -> int | None:
        """Read Pipedrive's answer to a charged call, once ``quietly`` said it must be read (on
        one answer in ``READ_EVERY`` of a company's while what Pipedrive said is left is above
        a tenth of the limit, else on each): its budget headers, a 429 for the day's budget;
        give the cost back if the call never reached Pipedrive (``reached`` false) or Pipedrive
        refused it with 429. Returns what is left for the app (its log field)."""
        ledger = note.ledger
        governor = self.governor
        if not reached or status == 429:
            governor.refund(note)
        if reached and ledger.company is not None:
            headers = answer.headers
            said_limit = headers.get(LIMIT_HEADER)
            if said_limit != self._limit_text:  # the same on every answer, mostly: read once
                self._limit_text, self._limit = said_limit, _integer(said_limit)
            limit = self._limit
            remaining = _integer(headers.get(REMAINING_HEADER))
            if remaining is not None:  # heard: the next READ_EVERY - 1 quiet answers unread
                ledger.unread = READ_EVERY
            if limit is not None or remaining is not None:
                said = governor.said(ledger, limit, remaining, self.clock())
                if said is not ledger:  # a new day at Pipedrive: this call was its first
                    governor.carried(said, note, self.clock())
                    ledger = said
            if status == 429:
                wait = _integer(headers.get("Retry-After"))
                if remaining == 0 or (wait is not None and wait > 2):
                    governor.exhausted(ledger, wait, self.clock())
        return governor.budget_left(ledger)

    def left(self, ledger: Ledger) -> int | None:
        """What the app may still spend of the company's day (``Governor.budget_left``)."""
        return self.governor.budget_left(ledger)

    def rows(self) -> Iterable[tuple[str, int, int | None]]:
        """Each company's spend today and what Pipedrive says is left of its budget (less the
        app's spend since; None until it has said): the metrics' rows. None with the governor
        off (a reload turned it off: its series go)."""
        if self.governor.policy.mode == "off":
            return
        for ledger in list(self.governor.ledgers.values()):
            if ledger.company is None:
                yield UNKNOWN_COMPANY, ledger.spent, None
            else:
                left = ledger.left
                yield (
                    ledger.company,
                    ledger.shared_spent,
                    int(max(0.0, left)) if left is not None else None,
                )

    def section(self) -> dict[str, Any]:
        """The report's ``budget`` section."""
        policy = self.governor.policy
        return {
            "mode": policy.mode,
            "app": policy.app,
            "share": policy.share,
            "reserve": policy.reserve,
            "critical": sorted(policy.critical),
            "companies": self.governor.summary(self.clock()),
        }

    async def close(self) -> None:
        """Give back what this process drew and did not spend, so that the next one (a
        rollout, a restart) may spend it."""
        for ledger in list(self.governor.ledgers.values()):
            unspent = ledger.held + ledger.held_reserve + ledger.returning
            if ledger.company is None or unspent <= 0:
                continue
            try:
                await self.store.give_back_budget(ledger.key, unspent)
            except StoreError:
                return
            ledger.held = ledger.held_reserve = ledger.returning = 0

    async def _draw(self, ledger: Ledger, draw: Draw) -> None:
        """Draw a chunk (one draw per count at a time: other calls wait for it)."""
        pending = self._draws.get(draw.key)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future = asyncio.get_running_loop().create_future()
        self._draws[draw.key] = future
        try:
            ttl = max(60.0, ledger.resets_at - self.clock() + DAY)
            if ledger.returning:  # held past lowered caps: given back first
                returning = ledger.returning
                await self.store.give_back_budget(draw.key, returning)
                ledger.returning -= returning
            if ledger.unsynced:  # spent while the store was away: counted first
                unsynced = ledger.unsynced
                _, total = await self.store.draw_budget(draw.key, unsynced, UNCAPPED, ttl)
                ledger.unsynced -= unsynced
                ledger.drawn = total
            granted, total = await self.store.draw_budget(draw.key, draw.want, draw.cap, ttl)
            self.governor.drew(ledger, granted, total, self.governor.policy)
        except StoreError as error:
            if self._away_until <= self.clock():
                get_logger().warning("budget_store_unreachable", problem=str(error))
            self._away_until = self.clock() + RETRY_SECONDS
        finally:
            del self._draws[draw.key]
            future.set_result(None)

    def _refusal(self, decision: Decision, throttled: Throttled, ledger: Ledger) -> BudgetExceeded:
        reason = _KINDS[throttled.kind]
        if throttled.kind == "burst_limit":
            detail = (
                "this token made its limit of calls in the last 2 seconds "
                f"(budget.burst): retry after {throttled.retry_after} s"
            )
        elif throttled.pipedrive:
            detail = (
                "what Pipedrive says is left of the company's daily token budget (its other "
                "apps and users spend it too) would not cover this call"
            )
        elif decision.label in self.governor.policy.critical:
            detail = "this app's share of the company's daily token budget is spent (budget.share)"
        elif self.governor.policy.reserve:
            detail = (
                "this app's share of the company's daily token budget is spent but for its "
                "reserve, kept for the endpoints named in budget.critical"
            )
        else:
            detail = "this app's share of the company's daily token budget is spent (budget.share)"
        resets = iso(throttled.resets_at) if throttled.resets_at is not None else None
        left = self.governor.budget_left(ledger)
        error = BudgetExceeded(reason, throttled.retry_after, ledger.company, left, resets, detail)
        error.decision = decision._replace(verdict="deny", reason=reason)
        return error


def _integer(value: str | None) -> int | None:
    """A header's whole number (digits only, as Pipedrive sends them), else None."""
    if value is None or not value.isdigit() or len(value) > 15:
        return None
    return int(value)
