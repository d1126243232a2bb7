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
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from proxy.core.catalog import Endpoint
    from proxy.core.decision import Decision

BudgetMode = Literal["off", "report", "enforce"]
BUDGET_MODES: tuple[BudgetMode, ...] = ("off", "report", "enforce")
Throttle = Literal["budget_exhausted", "burst_limit"]
BURST_SECONDS = 2.0
# How much longer than Pipedrive's 2-second window the proxy holds a call in its own: calls
# reach Pipedrive after a delay that differs from one call to the next, and a window of exactly
# 2 s at the proxy could put one call too many into one of Pipedrive's.
BURST_GUARD = 0.05
_SPAN = BURST_SECONDS + BURST_GUARD
DAY = 86_400.0
HOUR = 3_600.0
CHUNKS = 10  # a draw takes at most this fraction (1/CHUNKS) of the app's share
DEFAULT_COST = 10  # an endpoint whose cost Pipedrive's files do not give: their commonest cost
UNKNOWN_COMPANY = "(unknown)"  # how reports and metrics name the company of unknown tokens
UNCAPPED = 2**62  # a draw that only counts (report mode, spend made while the store was away)
# Pipedrive's budget headers are read on one answer in READ_EVERY of a company's while what it
# says is left is above 1/QUIET_PART of the limit (and on every answer below that, every 429,
# and the first answer of a company's day): what the app spends is counted all the same; what
# the company's other apps and users spend shows a few answers later.
READ_EVERY = 8
QUIET_PART = 10
NEW_DAY_RISE = 0.1  # a rise in Pipedrive's remaining of more than this part of the limit
DAILY_RETRY_AFTER = 2.0  # a 429 asking to wait longer than this is the day's budget, not a burst
PROBE_SECONDS = 60.0  # with what Pipedrive said is left spent, one call a minute goes through
_PRUNE_EVERY = 4096  # burst windows begun between sweeps of the idle ones
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


@dataclass(frozen=True, slots=True, eq=False)
class Charge:
    """What a call was charged, and in whose day: given back (``refund``) if it never reached
    Pipedrive. ``throttled``: in report mode, the refusal the call would have met. (A class
    with slots: its fields are read on every call, quicker than a named tuple's.)"""

    ledger: Ledger
    cost: int
    endpoint: str
    throttled: Throttle | None = None
    source: Endpoint | None = None  # the catalogue's entry charged, when one matched


class Window:
    """A token's burst window: the moments (monotonic time) of its latest calls, at most its
    limit of them, in a ring that grows to its limit as calls come. Full, ``ring[at]`` is the
    oldest and the place the next call takes: a call may go when that one lies out of the
    span. Not full yet, ``at`` is its length: a call goes, at its end. Checking and taking a
    call cost a list subscript or two, the quickest the interpreter has (``Governor.take``)."""

    __slots__ = ("at", "last", "ring")

    def __init__(self, limit: int, moments: Iterable[float] = ()) -> None:
        self.ring = list(moments)[-limit:] if limit > 0 else []
        self.last = limit - 1  # the ring's last place, after which ``at`` goes back to 0
        self.at = len(self.ring) if len(self.ring) < limit else 0

    def __iter__(self) -> Iterator[float]:
        """The moments of its calls, oldest first."""
        return iter(self.ring[self.at :] + self.ring[: self.at])

    def admits(self, now: float) -> bool:
        """Whether a call at ``now`` stays within the limit: fewer calls than the limit, or the
        oldest out of the span (a window of no places, for a kind without a limit, admits
        every call)."""
        return self.at == len(self.ring) or self.ring[self.at] <= now - _SPAN

    def add(self, now: float) -> None:
        """Count a call at ``now``: at the ring's end, or in place of the oldest."""
        at = self.at
        if self.last < 0:
            return
        if at == len(self.ring):
            self.ring.append(now)
        else:
            self.ring[at] = now
        self.at = at + 1 if at < self.last else 0

    def wait(self, now: float) -> float:
        """How long until a call at ``now`` would be admitted."""
        return 0.0 if self.admits(now) else self.ring[self.at] + _SPAN - now

    def newest(self) -> float:
        """The moment of its latest call (-inf if none)."""
        return self.ring[self.at - 1] if self.ring else -math.inf

    def remove(self, moment: float) -> None:
        """Take back the call counted at ``moment``, if the window still holds it."""
        moments = list(self)
        if moment in moments:
            moments.remove(moment)
            self.ring, self.at = moments, len(moments)


# The burst window of every token of a kind with no burst limit: it keeps no call.
_NO_WINDOW = Window(0)


class Usage:
    """An endpoint's calls in a company's day, and the charge that serves for each."""

    __slots__ = ("calls", "charge", "tokens")

    def __init__(self, charge: Charge) -> None:
        self.calls = 0
        self.tokens = 0
        self.charge = charge


def quietly(charge: Charge, status: int, reached: bool) -> int:
    """The common case of Pipedrive's answer to a charged call: answered (not 429), with much
    left, and not the answer in ``READ_EVERY`` whose headers are read. Returns what the app
    may still spend (``Governor.budget_left``), or -1 when the answer must be read."""
    ledger = charge.ledger
    if reached and status != 429:
        unread = ledger.unread - 1
        if unread and ledger.fast < ledger.quiet:
            ledger.unread = unread
            left = ledger.share_room - ledger.fast
            return left if left > 0 else 0
    return -1


def utc_day_start(now: float) -> float:
    return now - now % DAY


def period_name(start: float) -> str:
    """How a store key names a day: its start, to the minute, in UTC."""
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%MZ")


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ledger:
    """One company's day, as this process knows it.

    The calls charged on the fast path (``Governor.take``) only add their cost to ``fast``:
    what is held, what Pipedrive said is left and what was spent are kept less (or plus) that,
    and read through properties that apply it, so that every other path reads and writes them
    as plain numbers. ``room`` is how far ``fast`` may grow before a call must go the whole
    way (what is held, or what Pipedrive said is left, whichever is less), ``share_room``
    what the app may still spend at ``fast`` 0 (``Governor.budget_left``), and ``quiet`` how
    far ``fast`` may grow while what Pipedrive said is left stays above a tenth of the limit
    (its answers need not all be read meanwhile): all are worked out again whenever one of
    the numbers they come from is set.
    """

    __slots__ = (
        "_caps", "_caps_limit", "_caps_policy", "_drawn", "_full", "_held", "_left",
        "_reserve", "_spent", "_unsynced", "app", "company", "fast", "first_at", "key",
        "limit", "limit_said", "probe_at", "quiet", "resets_at", "returning", "room",
        "said_first", "said_last", "share_room", "start", "throttled", "unread", "usage",
    )  # fmt: skip

    def __init__(self, app: str, company: str | None, start: float, limit: int) -> None:
        self.app = app
        self.company = company
        self.start = start
        self.resets_at = start + DAY
        self.limit = limit  # the company's daily budget
        self.limit_said = False  # whether Pipedrive said it
        self.fast = 0  # what the calls charged on the fast path cost
        self._left: int | None = None  # Pipedrive's remaining less the spend since (left)
        self._held = 0  # drawn from the shared count, not spent yet (held)
        self._reserve = 0  # drawn past the normal cap: for critical endpoints only
        self._drawn = 0  # the shared count after this process's last draw
        self._spent = 0  # what this process's calls cost this day (spent)
        self._unsynced = 0  # spent while the shared count could not be reached
        self._full = 0  # the app's share of the limit: caps()[1]
        self.returning = 0  # drawn past lowered caps: to be given back to the shared count
        self.probe_at = 0.0  # when a call may go to hear Pipedrive again, past what it said
        self.first_at: float | None = None  # when the day's first call was charged
        self.said_first: tuple[float, int] | None = None  # (when, remaining): the company's rate
        self.said_last: tuple[float, int] | None = None
        self.usage: dict[str, Usage] = {}  # by endpoint, as the report names it
        self.throttled: Counter[str] = Counter()  # refusals (or would-be refusals) by kind
        self.key = f"{app}\t{company or UNKNOWN_COMPANY}\t{period_name(start)}"
        self._caps = (0, 0)
        self._caps_policy: BudgetPolicy | None = None
        self._caps_limit = 0
        self.room = -1
        self.share_room = 0
        self.quiet = -1
        self.unread = READ_EVERY  # answers until Pipedrive's headers are read again (quietly)
        self._gate()

    def _gate(self) -> None:
        """Work out ``room`` and ``share_room`` again (see the class)."""
        held, left, fast = self._held, self._left, self.fast
        room = held if left is None or left > held else left
        spent = self._drawn - (held - fast) - self._reserve  # shared_spent, but the unsynced
        share = self._full - (spent if spent > 0 else 0) - self._unsynced + fast
        if left is not None and left < share:
            share = left
        quiet = -1 if left is None else left - self.limit // QUIET_PART
        if self.company is None or spent < 0:
            room = quiet = -1  # never refused, or a count that reads less than nothing
        self.room, self.share_room, self.quiet = room, share, quiet

    @property
    def held(self) -> int:
        """Drawn from the shared count, not spent yet."""
        return self._held - self.fast

    @held.setter
    def held(self, value: int) -> None:
        self._held = value + self.fast
        self._gate()

    @property
    def left(self) -> int | None:
        """Pipedrive's latest remaining less the spend since; None until it has said."""
        return None if self._left is None else self._left - self.fast

    @left.setter
    def left(self, value: int | None) -> None:
        self._left = None if value is None else value + self.fast
        self._gate()

    @property
    def spent(self) -> int:
        """What this process's calls cost this day."""
        return self._spent + self.fast

    @spent.setter
    def spent(self, value: int) -> None:
        self._spent = value - self.fast

    @property
    def held_reserve(self) -> int:
        """Drawn past the normal cap: for critical endpoints only."""
        return self._reserve

    @held_reserve.setter
    def held_reserve(self, value: int) -> None:
        self._reserve = value
        self._gate()

    @property
    def drawn(self) -> int:
        """The shared count after this process's last draw."""
        return self._drawn

    @drawn.setter
    def drawn(self, value: int) -> None:
        self._drawn = value
        self._gate()

    @property
    def unsynced(self) -> int:
        """Spent while the shared count could not be reached."""
        return self._unsynced

    @unsynced.setter
    def unsynced(self, value: int) -> None:
        self._unsynced = value
        self._gate()

    @property
    def full(self) -> int:
        """The app's share of the limit (``caps()[1]``)."""
        return self._full

    def caps(self, policy: BudgetPolicy) -> tuple[int, int]:
        """The app's caps on the shared count: for other calls, and for critical ones (worked
        out again only when the policy or the limit changes)."""
        if self._caps_policy is not policy or self._caps_limit != self.limit:
            full = self._full = int(policy.share * self.limit)
            normal = int(full * (1.0 - policy.reserve))
            self._caps = (normal, full)
            self._caps_policy, self._caps_limit = policy, self.limit
            # Lowered caps (a reload, a smaller limit said): what is held past them is not
            # spent, but given back to the shared count at the next draw (``returning``).
            held = self.held
            spent = max(0, self._drawn - held - self._reserve) + self._unsynced
            kept = min(held, max(0, normal - spent))
            kept_reserve = min(self._reserve, max(0, full - spent - kept))
            trimmed = held - kept + self._reserve - kept_reserve
            if trimmed:
                self._held -= held - kept
                self._reserve = kept_reserve
                self._drawn -= trimmed
                self.returning += trimmed
            self._gate()
        return self._caps

    @property
    def shared_spent(self) -> int:
        """What the app spent today, as its shared count says (less what this process holds
        unspent; other replicas' unspent chunks are counted as spent)."""
        return max(0, self.drawn - self.held - self.held_reserve) + self.unsynced


class Governor:
    """Every company's day and every token's burst window, in this process."""

    def __init__(
        self,
        policy: BudgetPolicy,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.clock = clock  # UNIX time: the days
        self.monotonic = monotonic  # the burst windows
        self.ledgers: dict[str | None, Ledger] = {}
        # Each token's burst window, keyed by its credential (kind, digest): the times of its
        # latest calls, at most its limit of them (a call takes the place of the oldest);
        # _NO_WINDOW for a kind with no limit.
        self.windows: dict[tuple[str, str], Window] = {}
        self._begun = 0  # windows begun since the last sweep of idle ones

    def reconfigure(self, policy: BudgetPolicy) -> None:
        """A reload of the same app's policy: the new share, reserve and limits hold from the
        next call on; the burst windows keep their calls (to the new limits)."""
        self.policy = policy
        for ledger in self.ledgers.values():
            ledger.caps(policy)
        self.windows = {
            key: _NO_WINDOW if limit is None else Window(limit, window)
            for key, window in self.windows.items()
            for limit in (policy.burst_limit(key[0]),)
        }

    def take(self, decision: Decision) -> Charge | None:
        """The common case of ``burst`` and ``admit`` at once, for the call ``decision``
        allowed: its company's day is under way and its endpoint was charged in it before,
        its token's burst window has room, and this process holds enough of the share (and of
        what Pipedrive said is left) for its cost. Then the call is counted in the window and
        charged (the charge of the endpoint's earlier calls serves again); else nothing is
        changed and None returned: the call goes the whole way (``ledger``, ``burst``,
        ``admit``). Every call pays for this one, so it is written for the interpreter
        (bench/budget_replay.py counts its instructions)."""
        grant, endpoint = decision.grant, decision.endpoint
        if grant is None or endpoint is None:
            return None
        ledger = self.ledgers.get(grant.company)
        clock = self.clock  # read, then called: the interpreter's quick way to an attribute
        if ledger is None or clock() >= ledger.resets_at:
            return None
        usage = ledger.usage.get(endpoint.name)
        if usage is None:
            return None
        charge = usage.charge
        if charge.source is not endpoint:  # a catalogue reloaded since
            return None
        cost = charge.cost
        fast = ledger.fast + cost
        if fast > ledger.room:  # more than is held, or than Pipedrive said is left
            return None
        window = self.windows.get(decision.credential)  # type: ignore[arg-type]
        if window is None:
            return None
        if window is not _NO_WINDOW:  # Window.admits and Window.add, written out
            monotonic = self.monotonic
            moment = monotonic()
            ring, at = window.ring, window.at
            if at == len(ring):  # fewer calls than its limit yet
                ring.append(moment)
            elif ring[at] > moment - _SPAN:
                return None  # its limit of calls within the span
            else:
                ring[at] = moment
            window.at = at + 1 if at < window.last else 0
        ledger.fast = fast
        usage.calls += 1
        usage.tokens += cost
        return charge

    def ledger(self, company: str | None, now: float) -> Ledger:
        """The company's ledger of the day ``now`` falls in (a new one when the day is over)."""
        ledger = self.ledgers.get(company)
        if ledger is None or now >= ledger.resets_at:
            start = utc_day_start(now) if ledger is None else _next_start(ledger, now)
            ledger = Ledger(self.policy.app, company, start, self.policy.daily_tokens)
            ledger.caps(self.policy)
            if len(self.ledgers) >= _PRUNE_LEDGERS:
                self.prune(now)
            self.ledgers[company] = ledger
        return ledger

    def burst(self, digest: str, kind: str, now: float) -> Throttled | None:
        """Whether the token may make one more call now: at most its limit in any 2-second
        span (a sliding window: where Pipedrive's windows start cannot be known). ``now`` is
        monotonic time. The call is counted in the window when it may go."""
        limit = self.policy.burst_limit(kind)
        key = (kind, digest)
        window = self.windows.get(key)
        if window is None:
            self._begun += 1
            if self._begun >= _PRUNE_EVERY:
                self.prune_windows(now)
            window = self.windows[key] = _NO_WINDOW if limit is None else Window(limit)
        if not window.admits(now):  # its limit within the span
            wait = window.wait(now)
            return Throttled("burst_limit", max(1, min(2, math.ceil(wait))), None, None, None)
        window.add(now)  # in place of its oldest call, out of the span by now
        return None

    def unburst(self, digest: str, kind: str, moment: float) -> None:
        """Take back the call counted in the token's window at ``moment`` (refused after all;
        the token's other calls meanwhile stay counted)."""
        window = self.windows.get((kind, digest))
        if window is not None:
            window.remove(moment)  # unless dropped already, by calls since

    def prune_windows(self, now: float) -> None:
        """Drop the windows of tokens that made no call within the span."""
        self._begun = 0
        edge = now - _SPAN
        for key in [k for k, w in self.windows.items() if w.newest() <= edge]:
            del self.windows[key]

    def admit(
        self,
        ledger: Ledger,
        cost: int,
        critical: bool,
        now: float,
        drew: bool,
        shared: bool,
        endpoint: str,
        source: Endpoint | None = None,
    ) -> Charge | Throttled | Draw:
        """Whether a call to ``endpoint`` costing ``cost`` may go: charged, refused, or first a
        ``Draw`` (``drew``: one was made for this call already; ``shared``: the shared count
        answers). When what Pipedrive said is left is spent, one call a minute goes through
        all the same (``PROBE_SECONDS``): its answer says whether the company's budget was
        topped up or reset, which no refused call could learn."""
        if ledger.company is None:  # never refused on budget: only counted
            return self._charge(ledger, cost, now, endpoint, source, apart=True)
        left = ledger.left
        if shared and left is not None and cost > left:
            if not ledger.probe_at:  # spent just now: a call goes to hear Pipedrive in a minute
                ledger.probe_at = now + PROBE_SECONDS
            if now < ledger.probe_at:
                return self.refuse(ledger, critical, now, pipedrive=True)
            ledger.probe_at = now + PROBE_SECONDS  # this one goes, to hear Pipedrive again
        held = ledger.held
        pool = held + (ledger.held_reserve if critical else 0)
        if pool >= cost:
            return self._charge(ledger, cost, now, endpoint, source)
        if not shared:  # the shared count is away: counted, added to it once it answers
            return self.overdraw(ledger, cost, critical, now, endpoint, source)
        if not drew:
            normal, full = ledger.caps(self.policy)
            want = max(cost - pool, max(1, full // CHUNKS))
            return Draw(ledger.key, want, full if critical else normal)
        return self.refuse(ledger, critical, now)

    def overdraw(
        self,
        ledger: Ledger,
        cost: int,
        critical: bool,
        now: float,
        endpoint: str,
        source: Endpoint | None = None,
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
        return self._charge(ledger, cost, now, endpoint, source, apart=True)

    def drew(self, ledger: Ledger, granted: int, total: int, policy: BudgetPolicy) -> None:
        """A draw's result: ``granted`` tokens, the shared count now ``total``. What lies past
        the normal cap is held for critical endpoints."""
        normal, _ = ledger.caps(policy)
        before = total - granted
        reserved = max(0, total - max(normal, before))
        ledger.held_reserve += reserved
        ledger.held += granted - reserved
        ledger.drawn = total

    def refund(self, charge: Charge) -> None:
        """A charged call never reached Pipedrive: its cost is held again, and it is no
        longer counted among the day's calls."""
        ledger, cost = charge.ledger, charge.cost
        ledger.spent -= cost
        if ledger.company is not None:  # what a company's calls spend is drawn: held again
            ledger.held += cost
        if ledger.left is not None:
            ledger.left += cost
        usage = ledger.usage.get(charge.endpoint)
        if usage is not None:
            usage.calls -= 1
            usage.tokens -= cost
            if usage.calls <= 0:
                del ledger.usage[charge.endpoint]

    def carried(self, ledger: Ledger, charge: Charge, now: float) -> None:
        """The call whose answer showed that a new day began at Pipedrive is this day's:
        counted in it (the answer's remaining says it was spent already)."""
        if ledger is charge.ledger:
            return
        if ledger.company is not None:
            ledger.unsynced += charge.cost
        self._count(ledger, charge.cost, now, charge.endpoint, charge.source)

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
            ledger.caps(self.policy)
        if remaining is None:
            return ledger
        if left is None or topped_up:
            ledger.left = remaining
            ledger.probe_at = 0.0
        elif remaining > left + NEW_DAY_RISE * ledger.limit:  # a new day at Pipedrive
            current = self.ledgers.get(ledger.company)
            if current is not None and current is not ledger:  # a day begun here meanwhile
                return self.said(current, limit, remaining, now)
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
            ledger.resets_at = float(round((now + retry_after) / 60) * 60)
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
                    "calls": sum(usage.calls for usage in ledger.usage.values()),
                    "costliest": costliest(
                        (name, usage.calls, usage.tokens) for name, usage in ledger.usage.items()
                    ),
                }
            )
        return entries

    def _charge(
        self,
        ledger: Ledger,
        cost: int,
        now: float,
        endpoint: str,
        source: Endpoint | None = None,
        apart: bool = False,
    ) -> Charge:
        """Charge a call: from what is held (ordinary chunks first), unless ``apart``."""
        if not apart:
            take = min(ledger.held, cost)
            ledger.held -= take
            ledger.held_reserve -= cost - take
        if ledger.left is not None:
            ledger.left -= cost
        return self._count(ledger, cost, now, endpoint, source)

    @staticmethod
    def _count(
        ledger: Ledger, cost: int, now: float, endpoint: str, source: Endpoint | None = None
    ) -> Charge:
        """Count a call in its company's day: what it spent, when, and on which endpoint; its
        charge (kept for the endpoint's next calls, which ``take`` charges alike)."""
        ledger.spent += cost
        if ledger.first_at is None:
            ledger.first_at = now
        usage = ledger.usage.get(endpoint)
        if usage is None:
            usage = ledger.usage[endpoint] = Usage(Charge(ledger, cost, endpoint, None, source))
        elif usage.charge.source is not source or usage.charge.cost != cost:
            usage.charge = Charge(ledger, cost, endpoint, None, source)
        usage.calls += 1
        usage.tokens += cost
        return usage.charge

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
        left = ledger.share_room - ledger.fast  # worked out as the numbers were set (_gate)
        return left if left > 0 else 0

    def _new_day(self, ledger: Ledger, start: float) -> Ledger:
        fresh = Ledger(self.policy.app, ledger.company, start, ledger.limit)
        fresh.limit_said = ledger.limit_said
        fresh.caps(self.policy)
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


def costliest(usage: Iterable[tuple[str, int, int]]) -> list[dict[str, object]]:
    """The endpoints that cost the most tokens in all, of (endpoint, calls, tokens): each with
    its calls, its tokens in all and its cost per call."""
    return [
        {"endpoint": name, "calls": calls, "tokens": tokens,
         "token_cost": tokens // calls if calls else None}
        for name, calls, tokens in sorted(usage, key=lambda item: (-item[2], item[0]))[:COSTLIEST]
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
