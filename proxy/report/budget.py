"""The report's ``budget`` section: per company, what the app spent of the day's token budget,
what is left, when it runs out at the rate seen, what was refused, and the costliest endpoints
with what their v2 replacements cost.

The live proxy's section comes from its governor (``proxy.http.budget``); ``report --log``
builds the same from the decision log's ``company``, ``token_cost`` and ``budget_left`` fields
(``BudgetLog``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from proxy.core.budget import UNKNOWN_COMPANY, costliest, iso
from proxy.core.catalog import Catalogue, Endpoint, api_route
from proxy.core.reasons import THROTTLED


def replacement_of(catalogue: Catalogue | None, name: str) -> Endpoint | None:
    """The v2 endpoint Pipedrive names in place of the endpoint called ``name``, if any."""
    old = catalogue.by_name.get(name) if catalogue is not None else None
    if catalogue is None or old is None or old.replacement is None:
        return None
    method, _, path = old.replacement.partition(" ")
    route = api_route(path.partition("?")[0])
    return catalogue.match(route, method) if route is not None else None


def with_alternatives(
    companies: list[dict[str, Any]], catalogue: Catalogue | None
) -> list[dict[str, Any]]:
    """Each company's costliest endpoints, with their v2 replacement and its cost per call."""
    for company in companies:
        for entry in company["costliest"]:
            new = replacement_of(catalogue, entry["endpoint"])
            entry["replacement"] = new.name if new is not None else None
            entry["replacement_token_cost"] = new.token_cost if new is not None else None
    return companies


class BudgetLog:
    """The budget section read from a decision log: each company's days."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self._days: dict[tuple[str, str], _Day] = {}

    def read(self, event: Mapping[str, Any]) -> None:
        if event.get("event") in ("startup", "reloaded") and isinstance(event.get("budget"), str):
            self.mode = event["budget"]
            return
        if event.get("event") != "request" or "company" not in event:
            return
        company = event.get("company") or UNKNOWN_COMPANY
        stamp = event.get("timestamp")
        moment = _moment(stamp) if isinstance(stamp, str) else None
        day = stamp[:10] if isinstance(stamp, str) else "unknown"
        entry = self._days.setdefault((str(company), day), _Day())
        entry.seen(event, moment)

    def section(self, catalogue: Catalogue | None) -> dict[str, Any] | None:
        if not self._days:
            return None
        companies = [
            day.summary(company, date)
            for (company, date), day in sorted(self._days.items(), key=lambda item: item[0])
        ]
        return {"mode": self.mode, "app": None, "share": None, "reserve": None, "critical": None,
                "companies": with_alternatives(companies, catalogue)}  # fmt: skip


class _Day:
    def __init__(self) -> None:
        self.spent = 0
        self.usage: dict[str, list[int]] = {}  # endpoint -> [calls, tokens]
        self.throttled: Counter[str] = Counter()
        self.left: int | None = None
        self.first: float | None = None
        self.last: float | None = None

    def seen(self, event: Mapping[str, Any], moment: float | None) -> None:
        left = event.get("budget_left")
        if isinstance(left, int):
            self.left = left
        reason = event.get("reason")
        if reason in THROTTLED:
            self.throttled[str(reason)] += 1
            return
        if isinstance(event.get("throttled"), str):  # report mode: would have been refused
            self.throttled[event["throttled"]] += 1
        cost = event.get("token_cost")
        endpoint = str(event.get("endpoint") or "(unknown endpoint)")
        if isinstance(cost, int) and event.get("upstream_status") is not None:
            self.spent += cost
            usage = self.usage.setdefault(endpoint, [0, 0])
            usage[0] += 1
            usage[1] += cost
            if moment is not None:
                self.first = moment if self.first is None else min(self.first, moment)
                self.last = moment if self.last is None else max(self.last, moment)

    def summary(self, company: str, date: str) -> dict[str, Any]:
        """The day as the live report shows it: what a log cannot say (the limit, the share,
        what Pipedrive said is left) is None; ``budget_left`` is the last call's."""
        projected = None
        if self.first is not None and self.last is not None and self.left is not None:
            span = self.last - self.first
            if span >= 1.0 and self.spent > 0 and company != UNKNOWN_COMPANY:
                projected = iso(self.last + self.left / (self.spent / span))
        return {
            "company": company,
            "day_started": f"{date}T00:00:00Z" if date != "unknown" else None,
            "resets_at": None,
            "limit": None,
            "limit_from": None,
            "share_tokens": None,
            "spent": self.spent,
            "spent_here": self.spent,
            "left": None,
            "share_left": None,
            "budget_left": self.left,
            "projected_exhaustion": projected,
            "projected_in_seconds": None,
            "throttled": dict(sorted(self.throttled.items())),
            "calls": sum(calls for calls, _ in self.usage.values()),
            "costliest": costliest(
                (name, calls, tokens) for name, (calls, tokens) in self.usage.items()
            ),
        }


def _moment(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
