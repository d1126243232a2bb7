"""A fake Pipedrive that keeps its budgets as Pipedrive documents them, for
``bench/budget_replay.py``: ``python bench/fake_pipedrive.py PORT SETUP.json``.

Each company has a daily token budget (``limit``), shared by every app and user of it: each
call costs its endpoint's ``x-token-cost`` (the proxy's catalogue), and the company's other
apps and users spend ``others_per_second`` meanwhile. A call is answered 429 once the budget
is spent (``daily request budget exceeded``, ``Retry-After`` to the end of the day) or when its
token made its limit of calls in the current 2-second window (Pipedrive's windows are fixed:
0-2 s, 2-4 s, ...). Every answer says ``x-daily-ratelimit-token-limit`` and ``-remaining``.

``GET /_fake/stats`` says what happened: 429s by kind, what each company's apps spent, when a
budget ran out; ``POST /_fake/reset`` starts a new day.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.core.catalog import api_route, load_catalogue

CATALOGUE = load_catalogue()
WINDOW = 2.0


class Day:
    def __init__(self, setup: dict[str, Any]) -> None:
        self.setup = setup
        self.started = time.monotonic()
        self.spent_by_app: Counter[str] = Counter()  # the app's tokens, by company
        self.refused: Counter[str] = Counter()  # 429s by kind
        self.ran_out: dict[str, float] = {}  # company -> seconds into the day
        self.windows: dict[str, tuple[int, int]] = {}  # token -> (window number, calls)
        self.arrivals: defaultdict[str, list[float]] = defaultdict(list)
        self.calls = 0

    def remaining(self, company: str, now: float) -> int:
        entry = self.setup["companies"][company]
        others = int(entry.get("others_per_second", 0) * (now - self.started))
        return max(0, int(entry["limit"]) - others - self.spent_by_app[company])

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/_fake/stats":
            return web.json_response(self.stats())
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        token = token or request.headers.get("x-api-token", "")
        company = self.setup["tokens"].get(token)
        if company is None:
            return web.json_response({"success": False, "error": "unauthorized access"}, status=401)
        now = time.monotonic()
        self.calls += 1
        self.arrivals[token].append(now - self.started)
        limit = self.setup["companies"][company]["limit"]
        number = int((now - self.started) // WINDOW)
        window, calls = self.windows.get(token, (number, 0))
        calls = calls + 1 if window == number else 1
        self.windows[token] = (number, calls)
        burst = self.setup["burst"]["api_token" if token.startswith("api-") else "oauth"]
        headers = {"x-daily-ratelimit-token-limit": str(limit)}
        if calls > burst and token not in self.setup.get("unbursted", ()):
            self.refused["burst"] += 1
            headers["Retry-After"] = "2"
            headers["x-daily-ratelimit-token-remaining"] = str(self.remaining(company, now))
            body = {"success": False, "error": "Request over limit", "errorCode": 429}
            return web.json_response(body, status=429, headers=headers)
        route = api_route(request.raw_path.partition("?")[0])
        endpoint = CATALOGUE.match(route, request.method) if route is not None else None
        cost = endpoint.token_cost if endpoint is not None and endpoint.token_cost else 10
        left = self.remaining(company, now)
        if cost > left:
            self.refused["daily"] += 1
            self.ran_out.setdefault(company, now - self.started)
            headers["Retry-After"] = "3600"
            headers["x-daily-ratelimit-token-remaining"] = str(left)
            body = {"success": False, "error": "daily request budget exceeded", "errorCode": 429}
            return web.json_response(body, status=429, headers=headers)
        self.spent_by_app[company] += cost
        headers["x-daily-ratelimit-token-remaining"] = str(left - cost)
        headers["x-token-cost"] = str(cost)
        return web.json_response({"success": True, "data": {"id": 1}}, headers=headers)

    def stats(self) -> dict[str, Any]:
        most = 0
        for token, times in self.arrivals.items():  # the most of one token's calls in 2 s
            if token in self.setup.get("unbursted", ()):
                continue
            start = 0
            for end, at in enumerate(times):
                while at - times[start] >= WINDOW:
                    start += 1
                most = max(most, end - start + 1)
        return {
            "calls": self.calls,
            "refused": dict(self.refused),
            "spent_by_app": dict(self.spent_by_app),
            "ran_out": self.ran_out,
            "most_in_two_seconds": most,
        }


def main() -> None:
    port, setup = int(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    holder = {"day": Day(setup)}

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/_fake/reset":
            holder["day"] = Day(setup)
            return web.json_response({"reset": True})
        return await holder["day"].handle(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
