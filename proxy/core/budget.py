"""The budget governor's rules: Pipedrive's daily token budget per company, and its burst
windows per token. Pure: no I/O. The HTTP layer draws chunks of the app's shared count from
the store (``Draw``), hands back what Pipedrive's answers say (``said``, ``exhausted``) and
asks, for each call, whether it may go (``burst``, ``admit``).

The written semantics (docs/budget.md):

- A company's day has a ``limit``: ``daily_tokens`` until Pipedrive's
  ``x-daily-ratelimit-token-limit`` says otherwise. The app may spend ``share x limit``
  (``full``); calls to endpoints not named ``critical`` only ``share x limit x (1 - reserve)``
  (``normal``). The app's spend is the count it shares with its replicas (drawn in chunks of
  at most a tenth of its share, so that no call waits for the store).
- ``left`` is Pipedrive's latest ``x-daily-ratelimit-token-remaining`` less what the app spent
  since. The header never raises it during a day, except when the limit itself changes (a
  top-up): a rise of more than a tenth of the limit is the start of a new day.
- The day is the UTC day, unless Pipedrive's answers show otherwise: a new day seen in the
  header starts one (at the hour), and a 429 for the day's budget with a ``Retry-After``
  ends it then.
- A call of a company the proxy does not know is counted, never refused on budget; when the
  shared count cannot be reached, a call is never refused on budget either (counted, and added
  to the shared count once it answers).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

BudgetMode = Literal["off", "report", "enforce"]
BUDGET_MODES: tuple[BudgetMode, ...] = ("off", "report", "enforce")
Throttle = Literal["budget_exhausted", "burst_limit"]
BURST_SECONDS = 2.0
# How much longer than Pipedrive's 2-second window the proxy holds a call in its own: calls
# reach Pipedrive after a delay that differs from one call to the next, and a window of exactly
# 2 s at the proxy could put one call too many into one of Pipedrive's.
BURST_GUARD = 0.05
DAY = 86_400.0
HOUR = 3_600.0
CHUNKS = 10  # a draw takes at most this fraction (1/CHUNKS) of the app's share
UNKNOWN_COMPANY = "(unknown)"  # how reports and metrics name the company of unknown tokens
UNCAPPED = 2**62  # a draw that only counts (report mode, spend made while the store was away)
NEW_DAY_RISE = 0.1  # a rise in Pipedrive's remaining of more than this part of the limit
DAILY_RETRY_AFTER = 2.0  # a 429 asking to wait longer than this is the day's budget, not a burst
PROBE_SECONDS = 60.0  # with what Pipedrive said is left spent, one call a minute goes through
_PRUNE_EVERY = 4096  # calls between sweeps of idle burst windows
_PRUNE_LEDGERS = 10_000  # companies' days held before the days that are over are dropped


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """The ``budget`` section of the config."""

    mode: BudgetMode = "off"
    app: str = "default"
    daily_tokens: int = 30_000
    share: float = 1.0
    reserve: float = 0.0
    critical: frozenset[str] = frozenset()
    burst_oauth: int | None = None
    burst_api_token: int | None = None
    # ``critical`` as the config lists it, for messages that name an entry by its place
    critical_listed: tuple[str, ...] = field(default=(), compare=False)

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def burst_limit(self, kind: str) -> int | None:
        return self.burst_oauth if kind == "oauth" else self.burst_api_token


class Throttled(NamedTuple):
    """A call the governor refuses (or, in report mode, would refuse)."""

    kind: Throttle
    retry_after: int  # seconds
    company: str | None
    left: int | None  # what is left of the app's share today (budget_exhausted)
    resets_at: float | None  # when the day's budget resets (UNIX time)
    pipedrive: bool = False  # refused on what Pipedrive says is left, not on the app's share


class Draw(NamedTuple):
    """The call waits for a chunk of the shared count: ``want`` tokens, the count capped at
    ``cap``. ``key`` names the count: app, company and day."""

    key: str
    want: int
    cap: int


class Charge(NamedTuple):
    """What a call was charged, and in whose day: given back (``refund``) if it never reached
    Pipedrive. ``throttled``: in report mode, the refusal the call would have met."""

    ledger: Ledger
    cost: int
    endpoint: str
    throttled: Throttle | None = None


def utc_day_start(now: float) -> float:
    return now - now % DAY


def period_name(start: float) -> str:
    """How a store key names a day: its start, to the minute, in UTC."""
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%MZ")


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ledger:
    """One company's day, as this process knows it."""

    __slots__ = (
        "_caps", "_caps_limit", "_caps_policy", "app", "company", "drawn", "first_at", "held",
        "held_reserve", "key", "last_at", "left", "limit", "limit_said", "probe_at", "resets_at",
        "said_first",
        "said_last", "spent", "start", "throttled", "unsynced", "usage",
    )  # fmt: skip

    def __init__(self, app: str, company: str | None, start: float, limit: int) -> None:
        self.app = app
        self.company = company
        self.start = start
        self.resets_at = start + DAY
        self.limit = limit  # the company's daily budget
        self.limit_said = False  # whether Pipedrive said it
        self.left: float | None = None  # Pipedrive's remaining less the spend since; None: unsaid
        self.held = 0  # drawn from the shared count, not spent yet
        self.held_reserve = 0  # drawn past the normal cap: for critical endpoints only
        self.drawn = 0  # the shared count after this process's last draw
        self.spent = 0  # what this process's calls cost this day
        self.unsynced = 0  # spent while the shared count could not be reached
        self.probe_at = 0.0  # when a call may go to hear Pipedrive again, past what it said
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.said_first: tuple[float, int] | None = None  # (when, remaining): the company's rate
        self.said_last: tuple[float, int] | None = None
        self.usage: dict[str, list[int]] = {}  # endpoint -> [calls, tokens]
        self.throttled: Counter[str] = Counter()  # refusals (or would-be refusals) by kind
        self.key = f"{app}\t{company or UNKNOWN_COMPANY}\t{period_name(start)}"
        self._caps = (0, 0)
        self._caps_policy: BudgetPolicy | None = None
        self._caps_limit = 0

    def caps(self, policy: BudgetPolicy) -> tuple[int, int]:
        """The app's caps on the shared count: for other calls, and for critical ones (worked
        out again only when the policy or the limit changes)."""
        if self._caps_policy is not policy or self._caps_limit != self.limit:
            full = int(policy.share * self.limit)
            self._caps = (int(full * (1.0 - policy.reserve)), full)
            self._caps_policy, self._caps_limit = policy, self.limit
        return self._caps

    @property
    def shared_spent(self) -> int:
        """What the app spent today, as its shared count says (less what this process holds
        unspent; other replicas' unspent chunks are counted as spent)."""
        return max(0, self.drawn - self.held - self.held_reserve) + self.unsynced


class Governor:
    """Every company's day and every token's burst window, in this process."""

    def __init__(self, policy: BudgetPolicy) -> None:
        self.policy = policy
        self.ledgers: dict[str | None, Ledger] = {}
        self.windows: dict[str, deque[float]] = {}
        self._calls = 0

    def ledger(self, company: str | None, now: float) -> Ledger:
        """The company's ledger of the day ``now`` falls in (a new one when the day is over)."""
        ledger = self.ledgers.get(company)
        if ledger is None or now >= ledger.resets_at:
            start = utc_day_start(now) if ledger is None else _next_start(ledger, now)
            ledger = Ledger(self.policy.app, company, start, self.policy.daily_tokens)
            if len(self.ledgers) >= _PRUNE_LEDGERS:
                self.prune(now)
            self.ledgers[company] = ledger
        return ledger

    def burst(self, digest: str, kind: str, now: float) -> Throttled | None:
        """Whether the token may make one more call now: at most its limit in any 2-second
        span (a sliding window: where Pipedrive's windows start cannot be known). ``now`` is
        monotonic time. The call is counted in the window when it may go."""
        policy = self.policy
        limit = policy.burst_oauth if kind == "oauth" else policy.burst_api_token
        if limit is None:
            return None
        self._calls += 1
        if self._calls % _PRUNE_EVERY == 0:
            self.prune_windows(now)
        window = self.windows.get(digest)
        if window is None:
            window = self.windows[digest] = deque()
        edge = now - BURST_SECONDS - BURST_GUARD
        while window and window[0] <= edge:
            window.popleft()
        if len(window) >= limit:
            wait = window[0] + BURST_SECONDS + BURST_GUARD - now
            return Throttled("burst_limit", max(1, min(2, math.ceil(wait))), None, None, None)
        window.append(now)
        return None

    def unburst(self, digest: str) -> None:
        """Take back the last call counted in the token's window (refused after all)."""
        window = self.windows.get(digest)
        if window:
            window.pop()

    def prune_windows(self, now: float) -> None:
        edge = now - BURST_SECONDS - BURST_GUARD
        for digest in [d for d, w in self.windows.items() if not w or w[-1] <= edge]:
            del self.windows[digest]

    def admit(
        self,
        ledger: Ledger,
        cost: int,
        critical: bool,
        now: float,
        drew: bool,
        shared: bool,
        endpoint: str,
    ) -> Charge | Throttled | Draw:
        """Whether a call to ``endpoint`` costing ``cost`` may go: charged, refused, or first a
        ``Draw`` (``drew``: one was made for this call already; ``shared``: the shared count
        answers). When what Pipedrive said is left is spent, one call a minute goes through
        all the same (``PROBE_SECONDS``): its answer says whether the company's budget was
        topped up or reset, which no refused call could learn."""
        if ledger.company is None:  # never refused on budget: only counted
            return self._charge(ledger, cost, now, endpoint, apart=True)
        left = ledger.left
        if shared and left is not None and cost > left:
            if not ledger.probe_at:  # spent just now: a call goes to hear Pipedrive in a minute
                ledger.probe_at = now + PROBE_SECONDS
            if now < ledger.probe_at:
                return self.refuse(ledger, critical, now, pipedrive=True)
            ledger.probe_at = now + PROBE_SECONDS  # this one goes, to hear Pipedrive again
        held = ledger.held
        if held >= cost:  # the common case, inline (a third of the governor's instructions
            # per call: bench/budget_replay.py): charged from what this process holds
            ledger.held = held - cost
            ledger.spent += cost
            if left is not None:
                ledger.left = left - cost
            if ledger.first_at is None:
                ledger.first_at = now
            ledger.last_at = now
            usage = ledger.usage.get(endpoint)
            if usage is None:
                usage = ledger.usage[endpoint] = [0, 0]
            usage[0] += 1
            usage[1] += cost
            return Charge(ledger, cost, endpoint)
        pool = held + (ledger.held_reserve if critical else 0)
        if pool >= cost:
            return self._charge(ledger, cost, now, endpoint)
        if not shared:  # the shared count is away: counted, added to it once it answers
            return self.overdraw(ledger, cost, critical, now, endpoint)
        if not drew:
            normal, full = ledger.caps(self.policy)
            want = max(cost - pool, max(1, full // CHUNKS))
            return Draw(ledger.key, want, full if critical else normal)
        return self.refuse(ledger, critical, now)

    def overdraw(
        self, ledger: Ledger, cost: int, critical: bool, now: float, endpoint: str
    ) -> Charge:
        """Charge a call that goes whatever its budget says (report mode, or the shared count
        away): from what is held, the rest counted to be added to the shared count later."""
        take = min(cost, ledger.held)
        ledger.held -= take
        if critical:
            extra = min(cost - take, ledger.held_reserve)
            ledger.held_reserve -= extra
            take += extra
        if ledger.company is not None:
            ledger.unsynced += cost - take
        return self._charge(ledger, cost, now, endpoint, apart=True)

    def drew(self, ledger: Ledger, granted: int, total: int, policy: BudgetPolicy) -> None:
        """A draw's result: ``granted`` tokens, the shared count now ``total``. What lies past
        the normal cap is held for critical endpoints."""
        normal, _ = ledger.caps(policy)
        before = total - granted
        reserved = max(0, total - max(normal, before))
        ledger.held_reserve += reserved
        ledger.held += granted - reserved
        ledger.drawn = total

    def synced(self, ledger: Ledger, total: int) -> None:
        """The spend counted apart has been added to the shared count, now ``total``."""
        ledger.unsynced = 0
        ledger.drawn = total

    def refund(self, charge: Charge) -> None:
        """A charged call never reached Pipedrive: its cost is held again, and it is no
        longer counted among the day's calls."""
        ledger, cost = charge.ledger, charge.cost
        ledger.spent -= cost
        ledger.held += cost
        if ledger.left is not None:
            ledger.left += cost
        usage = ledger.usage.get(charge.endpoint)
        if usage is not None:
            usage[0] -= 1
            usage[1] -= cost
            if usage[0] <= 0:
                del ledger.usage[charge.endpoint]

    def carried(self, ledger: Ledger, charge: Charge, now: float) -> None:
        """The call whose answer showed that a new day began at Pipedrive is this day's:
        counted in it (the answer's remaining says it was spent already)."""
        if ledger is charge.ledger:
            return
        if ledger.company is not None:
            ledger.unsynced += charge.cost
        self._count(ledger, charge.cost, now, charge.endpoint)

    def said(self, ledger: Ledger, limit: int | None, remaining: int | None, now: float) -> Ledger:
        """What a Pipedrive answer's ``x-daily-ratelimit-token-*`` headers say; the ledger in
        effect after it (a new one when they show that a new day began at Pipedrive)."""
        left = ledger.left
        if (  # the common case, first: the limit as it was, what is left lower or about the same
            limit == ledger.limit
            and remaining is not None
            and left is not None
            and ledger.said_first is not None
            and remaining <= left + NEW_DAY_RISE * limit
        ):
            if remaining < left:
                ledger.left = remaining
            ledger.said_last = (now, remaining)
            return ledger
        topped_up = False
        if limit is not None and limit > 0:
            topped_up = ledger.limit_said and limit != ledger.limit
            ledger.limit, ledger.limit_said = limit, True
        if remaining is None:
            return ledger
        if left is None or topped_up:
            ledger.left = remaining
            ledger.probe_at = 0.0
        elif remaining > left + NEW_DAY_RISE * ledger.limit:  # a new day at Pipedrive
            ledger = self._new_day(ledger, now - now % HOUR)
            ledger.left = remaining
        else:
            ledger.left = min(left, remaining)
        if ledger.said_first is None:
            ledger.said_first = (now, remaining)
        ledger.said_last = (now, remaining)
        return ledger

    def exhausted(self, ledger: Ledger, retry_after: float | None, now: float) -> None:
        """Pipedrive refused a call on the day's budget: nothing is left until it resets,
        ``retry_after`` seconds from now when it says so."""
        ledger.left = 0
        if retry_after is not None and retry_after > 0:  # to the minute: replicas agree on it
            ledger.resets_at = round((now + retry_after) / 60) * 60
        ledger.probe_at = ledger.resets_at  # Pipedrive said when: no call goes before

    def projected(self, ledger: Ledger, now: float) -> float | None:
        """When, at the rates seen today, calls start being refused: the app's share (less the
        reserve: the endpoints not named critical) at the app's rate, or Pipedrive's remaining
        at the company's (every app and user of it); None when neither runs out before the
        day ends."""
        times: list[float] = []
        if ledger.company is None:  # never refused: nothing runs out
            return None
        if ledger.first_at is not None and ledger.spent > 0 and now - ledger.first_at >= 1.0:
            rate = ledger.spent / (now - ledger.first_at)
            normal, _ = ledger.caps(self.policy)
            times.append(now + max(0, normal - ledger.shared_spent) / rate)
        first, last = ledger.said_first, ledger.said_last
        if first is not None and last is not None and last[0] - first[0] >= 1.0:
            fell = first[1] - last[1]
            if fell > 0 and ledger.left is not None:
                times.append(now + max(0.0, ledger.left) / (fell / (last[0] - first[0])))
        if not times or min(times) >= ledger.resets_at:
            return None
        return min(times)

    def summary(self, now: float) -> list[dict[str, Any]]:
        """Each company's day, as the report's ``budget`` section shows it."""
        entries = []
        for ledger in sorted(self.ledgers.values(), key=lambda led: led.company or "~"):
            _, full = ledger.caps(self.policy)
            projected = self.projected(ledger, now)
            entries.append(
                {
                    "company": ledger.company or UNKNOWN_COMPANY,
                    "day_started": iso(ledger.start),
                    "resets_at": iso(ledger.resets_at),
                    "limit": ledger.limit,
                    "limit_from": "pipedrive" if ledger.limit_said else "daily_tokens",
                    "share_tokens": full if ledger.company is not None else None,
                    "spent": ledger.shared_spent if ledger.company is not None else ledger.spent,
                    "spent_here": ledger.spent,
                    "left": _whole(ledger.left),
                    "share_left": max(0, full - ledger.shared_spent)
                    if ledger.company is not None
                    else None,
                    "budget_left": self.budget_left(ledger),
                    "projected_exhaustion": iso(projected) if projected is not None else None,
                    "projected_in_seconds": round(projected - now, 1)
                    if projected is not None
                    else None,
                    "throttled": dict(sorted(ledger.throttled.items())),
                    "calls": sum(calls for calls, _ in ledger.usage.values()),
                    "costliest": costliest(ledger.usage),
                }
            )
        return entries

    def _charge(
        self, ledger: Ledger, cost: int, now: float, endpoint: str, apart: bool = False
    ) -> Charge:
        """Charge a call: from what is held (ordinary chunks first), unless ``apart``."""
        if not apart:
            take = min(ledger.held, cost)
            ledger.held -= take
            ledger.held_reserve -= cost - take
        if ledger.left is not None:
            ledger.left -= cost
        self._count(ledger, cost, now, endpoint)
        return Charge(ledger, cost, endpoint)

    @staticmethod
    def _count(ledger: Ledger, cost: int, now: float, endpoint: str) -> None:
        """Count a call in its company's day: what it spent, when, and on which endpoint."""
        ledger.spent += cost
        if ledger.first_at is None:
            ledger.first_at = now
        ledger.last_at = now
        usage = ledger.usage.get(endpoint)
        if usage is None:
            usage = ledger.usage[endpoint] = [0, 0]
        usage[0] += 1
        usage[1] += cost

    def refuse(
        self, ledger: Ledger, critical: bool, now: float, pipedrive: bool = False
    ) -> Throttled:
        """The refusal of a call the day's budget does not cover (``pipedrive``: what
        Pipedrive says is left, rather than the app's share)."""
        retry = max(1, math.ceil(ledger.resets_at - now))
        left = self.budget_left(ledger)
        return Throttled(
            "budget_exhausted", retry, ledger.company, left, ledger.resets_at, pipedrive
        )

    def budget_left(self, ledger: Ledger) -> int | None:
        """What the app may still spend of the company's day, the reserve included: what is
        left of its share, or less when Pipedrive says less is left; None for a company the
        proxy does not know (never refused on budget)."""
        if ledger.company is None:
            return None
        share_left = max(0, ledger.caps(self.policy)[1] - ledger.shared_spent)
        left = ledger.left
        if left is None or left >= share_left:
            return share_left
        return int(left) if left > 0 else 0

    def _new_day(self, ledger: Ledger, start: float) -> Ledger:
        fresh = Ledger(self.policy.app, ledger.company, start, ledger.limit)
        fresh.limit_said = ledger.limit_said
        self.ledgers[ledger.company] = fresh
        return fresh

    def noted(self, ledger: Ledger, throttled: Throttle) -> None:
        """Count a refusal (or, in report mode, a would-be refusal) in its company's day."""
        ledger.throttled[throttled] += 1

    def prune(self, now: float) -> None:
        """Drop the days that are over (the ledgers of companies that made no call since)."""
        for company in [c for c, led in self.ledgers.items() if now >= led.resets_at + DAY]:
            del self.ledgers[company]


COSTLIEST = 5  # endpoints named per company, costliest first


def costliest(usage: dict[str, list[int]]) -> list[dict[str, object]]:
    """The endpoints that cost the most tokens in all: each with its calls, its tokens in all
    and its cost per call."""
    return [
        {"endpoint": name, "calls": calls, "tokens": tokens,
         "token_cost": tokens // calls if calls else None}
        for name, (calls, tokens) in sorted(
            usage.items(), key=lambda item: (-item[1][1], item[0])
        )[:COSTLIEST]
        if calls > 0
    ]  # fmt: skip


def _next_start(ledger: Ledger, now: float) -> float:
    """When the day after ``ledger``'s starts: at its reset, or, when that is long past, the
    UTC day ``now`` falls in."""
    if now - ledger.resets_at < DAY:
        return ledger.resets_at
    return utc_day_start(now)


def _whole(value: float | None) -> int | None:
    return None if value is None else int(max(0.0, value))
