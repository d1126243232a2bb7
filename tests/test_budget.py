"""The budget governor in the proxy: a company's day charged call by call, Pipedrive's headers
read back, the local 429, burst windows at the upstream, report mode, reloads, the report's
budget section and the metrics."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from proxy.cli.report import report
from proxy.cli.run import check
from proxy.config import ConfigError, load
from proxy.http.app import create_app
from proxy.http.serving import reload
from proxy.http.state import BUDGET
from proxy.report.html import render_html
from proxy.report.junit import render_junit
from proxy.report.markdown import render_markdown
from proxy.report.text import render_text
from tests.conftest import ProxyFactory, proxy_client, sha
from tests.fakes import FakePipedrive, Received
from tests.processes import write_config

ACME = "acme.pipedrive.com"
AUTH = {"Authorization": "Bearer acme-token"}
DEALS = "/v1/deals/1"  # GET: 2 tokens
ME = "/v1/users/me"  # GET: 2 tokens


def grant(token: str = "acme-token", company: str | None = ACME, **more: Any) -> dict[str, Any]:
    entry = {"name": token, "sha256": sha(token), "scopes": ["deals:read", "users:read"], **more}
    if company is not None:
        entry["company"] = company
    return entry


def budget(**settings: Any) -> dict[str, Any]:
    return {"mode": "enforce", "daily_tokens": 100, **settings}


class BudgetedPipedrive:
    """Answers as Pipedrive does with a daily budget: each call's cost comes off what is left
    for the company, said in ``x-daily-ratelimit-token-*``; past it, 429."""

    def __init__(self, limit: int, remaining: int | None = None) -> None:
        self.limit = limit
        self.remaining = limit if remaining is None else remaining
        self.arrivals: list[float] = []

    async def respond(self, request: web.Request, seen: Received) -> web.StreamResponse:
        self.arrivals.append(time.monotonic())
        headers = {"x-daily-ratelimit-token-limit": str(self.limit)}
        if self.remaining < 2:
            headers["x-daily-ratelimit-token-remaining"] = "0"
            headers["Retry-After"] = "3600"
            body = {"success": False, "error": "daily request budget exceeded", "errorCode": 429}
            return web.json_response(body, status=429, headers=headers)
        self.remaining -= 2
        headers["x-daily-ratelimit-token-remaining"] = str(self.remaining)
        return web.json_response({"success": True, "data": {}}, headers=headers)


async def test_past_the_share_a_call_is_answered_as_pipedrive_answers_a_spent_budget(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=[grant()], budget=budget(share=0.1))  # 10 tokens
    statuses = [(await client.get(DEALS, headers=AUTH)).status for _ in range(5)]
    assert statuses == [200] * 5
    with capture_logs() as events:
        answer = await client.get(DEALS, headers=AUTH)
    assert answer.status == 429
    assert answer.headers["X-Scope-Proxy-Decision"] == "deny"
    retry = int(answer.headers["Retry-After"])
    assert 0 < retry <= 86_400
    body = await answer.json()
    assert {k: body[k] for k in ("success", "error", "errorCode")} == {
        "success": False, "error": "daily request budget exceeded", "errorCode": 429,
    }  # fmt: skip
    assert "error_info" not in body  # Pipedrive's own body has none
    details = body["scope_proxy"]
    assert details["reason"] == "budget_exhausted"
    assert details["company"] == ACME
    assert details["left"] == 0
    assert details["retry_after"] == retry
    assert details["resets_at"].endswith("T00:00:00Z")
    assert len(upstream.received) == 5  # never forwarded
    [event] = [e for e in events if e["event"] == "request"]
    assert event["reason"] == "budget_exhausted"
    assert event["company"] == ACME
    assert event["budget_left"] == 0


async def test_a_critical_endpoint_is_served_from_the_reserve_while_others_are_refused(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(
        tokens=[grant()], budget=budget(reserve=0.2, critical=["GET /v1/users/me"])
    )
    deals = [(await client.get(DEALS, headers=AUTH)).status for _ in range(45)]
    assert deals.count(200) == 40  # 80 tokens: the share less its reserve
    assert set(deals[40:]) == {429}
    me = [(await client.get(ME, headers=AUTH)).status for _ in range(10)]
    assert me == [200] * 10  # 20 tokens of reserve
    assert (await client.get(ME, headers=AUTH)).status == 429
    assert (await client.get(DEALS, headers=AUTH)).status == 429


async def test_pipedrives_remaining_header_lowers_what_is_left(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    pipedrive = BudgetedPipedrive(limit=30_000, remaining=7)  # other apps spent the rest
    upstream.respond = pipedrive.respond
    client = await make_proxy(tokens=[grant()], budget=budget(daily_tokens=30_000))
    statuses = [(await client.get(DEALS, headers=AUTH)).status for _ in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]  # 7 -> 5 -> 3 -> 1: 1 left < 2
    assert len(upstream.received) == 3  # Pipedrive never had to refuse one
    report = await (await client.get("/_proxy/report")).json()
    [company] = report["overall"]["budget"]["companies"]
    assert company["left"] == 1
    assert company["limit"] == 30_000
    assert company["limit_from"] == "pipedrive"


async def test_a_call_of_an_unknown_company_is_never_refused_on_budget(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=[grant(company=None)], budget=budget(daily_tokens=10))
    statuses = [(await client.get(DEALS, headers=AUTH)).status for _ in range(20)]
    assert statuses == [200] * 20
    report = await (await client.get("/_proxy/report")).json()
    [company] = report["overall"]["budget"]["companies"]
    assert company["company"] == "(unknown)"
    assert company["spent"] == 40


async def test_report_mode_forwards_everything_and_counts_what_it_would_refuse(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(
        tokens=[grant()], budget=budget(mode="report", share=0.1, burst={"oauth": 3})
    )
    with capture_logs() as events:
        statuses = [(await client.get(DEALS, headers=AUTH)).status for _ in range(8)]
    assert statuses == [200] * 8
    assert len(upstream.received) == 8
    throttled = [e.get("throttled") for e in events if e["event"] == "request"]
    assert throttled[:3] == [None] * 3
    assert set(throttled[3:]) <= {"burst_limit", "budget_exhausted"}
    assert all(throttled[5:])  # past 10 tokens: every call would have been refused
    metrics = (await (await client.get("/_proxy/metrics")).read()).decode()
    assert counter(metrics, 'scope_proxy_budget_throttled_total{kind="burst_limit"}') == 5
    report = await (await client.get("/_proxy/report")).json()
    [company] = report["overall"]["budget"]["companies"]
    assert company["spent"] == 16  # charged all the same: Pipedrive was called
    assert company["throttled"]["burst_limit"] == 5


async def test_the_burst_limit_is_never_exceeded_at_the_upstream(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    pipedrive = BudgetedPipedrive(limit=1_000_000)
    upstream.respond = pipedrive.respond
    client = await make_proxy(
        tokens=[grant()], budget=budget(daily_tokens=1_000_000, burst={"oauth": 5})
    )

    async def call() -> tuple[int, str | None]:
        answer = await client.get(DEALS, headers=AUTH)
        return answer.status, answer.headers.get("Retry-After")

    results: list[tuple[int, str | None]] = []
    for _ in range(6):  # 60 calls in waves over about 1.5 seconds
        results += await asyncio.gather(*(call() for _ in range(10)))
        await asyncio.sleep(0.25)
    arrivals = sorted(pipedrive.arrivals)
    assert arrivals, "nothing was forwarded"
    most = max(sum(1 for t in arrivals[i:] if t - first < 2.0) for i, first in enumerate(arrivals))
    assert most <= 5
    refused = [retry for status, retry in results if status == 429]
    assert len(refused) == 60 - len(arrivals)
    assert refused
    assert all(retry is not None and 1 <= int(retry) <= 2 for retry in refused)


async def test_burst_limits_differ_for_oauth_and_api_tokens(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(
        tokens=[grant(), grant("api-key", company=ACME)],
        budget=budget(daily_tokens=100_000, burst={"oauth": 4, "api_token": 2}),
    )
    oauth = [(await client.get(DEALS, headers=AUTH)).status for _ in range(5)]
    api = [(await client.get(DEALS, headers={"x-api-token": "api-key"})).status for _ in range(3)]
    assert oauth == [200] * 4 + [429]
    assert api == [200, 200, 429]


async def test_scope_refusals_come_first_and_cost_nothing(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=[grant()], budget=budget(share=0.1))
    for _ in range(20):
        assert (await client.get("/v1/activities", headers=AUTH)).status == 403
    assert (await client.get(DEALS, headers=AUTH)).status == 200
    report = await (await client.get("/_proxy/report")).json()
    assert report["overall"]["budget"]["companies"][0]["spent"] == 2


async def test_a_call_that_never_reached_pipedrive_is_given_back(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy(
        tokens=[grant()], budget=budget(share=0.1),
        upstream={"api_url": "http://127.0.0.1:9", "oauth_url": "http://127.0.0.1:9",
                  "connect_timeout": 1, "read_timeout": 1},
    )  # fmt: skip
    statuses = [(await client.get(DEALS, headers=AUTH)).status for _ in range(8)]
    assert statuses == [502] * 8  # never 429: the unreachable calls cost nothing
    section = client.app[BUDGET].section()
    assert section["companies"][0]["spent"] == 0


async def test_the_budget_section_and_metrics_show_each_companys_day(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    pipedrive = BudgetedPipedrive(limit=30_000, remaining=20_000)
    upstream.respond = pipedrive.respond
    other = grant("globex-token", company="globex.pipedrive.com")
    client = await make_proxy(tokens=[grant(), other], budget=budget(daily_tokens=30_000))
    for _ in range(3):
        await client.get(DEALS, headers=AUTH)
    await client.get("/v1/deals", headers={"Authorization": "Bearer globex-token"})  # 20
    report = await (await client.get("/_proxy/report")).json()
    section = report["overall"]["budget"]
    assert section["mode"] == "enforce"
    acme, globex = section["companies"]
    assert (acme["company"], acme["spent"], acme["calls"]) == (ACME, 6, 3)
    assert (globex["company"], globex["spent"]) == ("globex.pipedrive.com", 20)
    assert acme["left"] == 19_994
    assert acme["costliest"][0]["endpoint"] == "GET /v1/deals/{id}"
    assert acme["costliest"][0]["replacement"] == "GET /api/v2/deals/{id}"
    assert acme["costliest"][0]["replacement_token_cost"] == 1
    assert globex["costliest"][0]["replacement_token_cost"] == 10  # v1 list: 20
    metrics = (await (await client.get("/_proxy/metrics")).read()).decode()
    assert counter(metrics, f'scope_proxy_budget_spent_tokens{{company="{ACME}"}}') == 6
    assert counter(metrics, f'scope_proxy_budget_remaining_tokens{{company="{ACME}"}}') == 19_994
    for render in (render_text, render_markdown, render_junit, render_html):
        shown = render(report)
        assert ACME in shown, render.__name__
        assert "19994" in shown.replace(",", ""), render.__name__


async def test_the_log_line_says_the_calls_cost_and_what_was_left(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    pipedrive = BudgetedPipedrive(limit=30_000, remaining=500)
    upstream.respond = pipedrive.respond
    client = await make_proxy(tokens=[grant()], budget=budget(daily_tokens=30_000))
    with capture_logs() as events:
        await client.get(DEALS, headers=AUTH)
    [event] = [e for e in events if e["event"] == "request"]
    assert event["token_cost"] == 2
    assert event["company"] == ACME
    assert event["budget_left"] == 498


async def test_without_a_budget_the_log_line_and_report_are_as_before(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=[grant()])
    with capture_logs() as events:
        for _ in range(100):
            assert (await client.get(DEALS, headers=AUTH)).status == 200
    assert all("company" not in e for e in events if e["event"] == "request")
    report = await (await client.get("/_proxy/report")).json()
    assert "budget" not in report["overall"]


async def test_behind_envoy_the_governor_only_reports(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=[grant()], budget=budget(share=0.1, burst={"oauth": 2}))
    statuses = [(await client.get("/_proxy/authz" + DEALS, headers=AUTH)).status for _ in range(10)]
    assert statuses == [200] * 10
    section = client.app[BUDGET].section()
    company = section["companies"][0]
    assert company["spent"] == 20
    assert company["throttled"]["budget_exhausted"] >= 5


async def test_a_reload_changes_the_share(tmp_path: Path, aiohttp_client: Any) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})

    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/{tail:.*}", ok)
    upstream = await aiohttp_client(upstream_app)
    url = str(upstream.make_url("")).rstrip("/")
    settings = {"upstream": {"api_url": url}, "tokens": [grant()]}
    path = write_config(tmp_path, **settings, budget=budget(share=0.1))
    config, catalogue = load(path)
    client = await proxy_client(aiohttp_client, create_app(config, catalogue))
    assert [(await client.get(DEALS, headers=AUTH)).status for _ in range(6)][-1] == 429
    write_config(tmp_path, **settings, budget=budget(share=0.2))
    with capture_logs() as events:
        reload(client.app, path, config)
    assert "budget" in next(e for e in events if e["event"] == "reloaded")["applied"]
    shown = await (await client.get("/_proxy/config")).json()
    assert shown["budget"]["share"] == 0.2
    assert shown["budget"]["mode"] == "enforce"
    statuses = [(await client.get(DEALS, headers=AUTH)).status for _ in range(6)]
    assert statuses == [200] * 5 + [429]  # spent today stays: 10 of the 20 now allowed


def counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the metrics")


def test_report_log_reads_the_budget_section(tmp_path: Path) -> None:
    events = [
        {"event": "startup", "mode": "enforce", "store": "memory", "budget": "enforce",
         "timestamp": "2026-12-07T10:00:00Z", "app_scopes": None},
        *({"event": "request", "decision": "allow", "reason": "in_scope", "method": "GET",
           "endpoint": "GET /v1/deals", "version": "v1", "status": 200, "upstream_status": 200,
           "token_fp": "abc", "accepted_scopes": ["deals:read"], "granted_scopes": ["deals:read"],
           "token_cost": 20, "company": ACME, "budget_left": 1000 - 20 * (i + 1),
           "timestamp": f"2026-12-07T10:00:{i:02d}Z"} for i in range(10)),
        {"event": "request", "decision": "deny", "reason": "budget_exhausted", "method": "GET",
         "endpoint": "GET /v1/deals", "version": "v1", "status": 429, "upstream_status": None,
         "token_fp": "abc", "token_cost": 20, "company": ACME, "budget_left": 0,
         "timestamp": "2026-12-07T10:00:11Z"},
    ]  # fmt: skip
    log = tmp_path / "decisions.log"
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    out = tmp_path / "out.json"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert report(str(log), "json", None) == 0
    out.write_text(buffer.getvalue())
    document = json.loads(out.read_text())
    [company] = document["overall"]["budget"]["companies"]
    assert company["company"] == ACME
    assert company["spent"] == 200
    assert company["budget_left"] == 0  # the last line's
    assert company["left"] is None  # what Pipedrive said: not in a log
    assert company["throttled"] == {"budget_exhausted": 1}
    assert company["costliest"][0]["replacement"] == "GET /api/v2/deals"


async def test_a_burst_refusal_names_the_company_and_what_is_left(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=[grant()], budget=budget(burst={"oauth": 1}))
    assert (await client.get(DEALS, headers=AUTH)).status == 200
    answer = await client.get(DEALS, headers=AUTH)
    assert answer.status == 429
    details = (await answer.json())["scope_proxy"]
    assert details["reason"] == "burst_limit"
    assert details["company"] == ACME
    assert details["left"] == 98  # the share of 100 less the one call's 2
    assert details["resets_at"] is None  # a burst window is no day's end


async def test_with_pipedrives_remaining_spent_a_call_a_minute_goes_to_hear_it_again(
    make_proxy: ProxyFactory, upstream: FakePipedrive, clock: Any
) -> None:
    pipedrive = BudgetedPipedrive(limit=30_000, remaining=3)
    upstream.respond = pipedrive.respond
    client = await make_proxy(tokens=[grant()], budget=budget(daily_tokens=30_000))
    assert [(await client.get(DEALS, headers=AUTH)).status for _ in range(3)] == [200, 429, 429]
    pipedrive.remaining = 5_000  # the company bought a top-up meanwhile
    clock.advance(30)
    assert (await client.get(DEALS, headers=AUTH)).status == 429  # within the minute
    clock.advance(31)
    assert (await client.get(DEALS, headers=AUTH)).status == 200  # the probe: heard again
    assert (await client.get(DEALS, headers=AUTH)).status == 200
    assert len(upstream.received) == 3


async def test_a_call_pipedrive_refused_is_given_back_and_not_among_the_costliest(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    answers = iter([200, 429, 200])

    async def respond(request: web.Request, seen: Received) -> web.StreamResponse:
        status = next(answers)
        headers = {"x-daily-ratelimit-token-limit": "30000",
                   "x-daily-ratelimit-token-remaining": "20000"}  # fmt: skip
        if status == 429:  # its burst window: Pipedrive did not serve it
            headers["Retry-After"] = "1"
        return web.json_response({"success": status == 200}, status=status, headers=headers)

    upstream.respond = respond
    client = await make_proxy(tokens=[grant()], budget=budget(daily_tokens=30_000))
    statuses = [(await client.get(DEALS, headers=AUTH)).status for _ in range(3)]
    assert statuses == [200, 429, 200]  # Pipedrive's own 429, passed on
    [company] = client.app[BUDGET].section()["companies"]
    assert company["spent"] == 4  # two calls served: the refused one given back
    assert company["costliest"][0]["calls"] == 2
    assert company["costliest"][0]["tokens"] == 4


async def test_the_metrics_say_what_pipedrive_says_is_left_and_the_unknown_companys_spend(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    pipedrive = BudgetedPipedrive(limit=30_000, remaining=500)
    upstream.respond = pipedrive.respond
    client = await make_proxy(
        tokens=[grant(), grant("stray-token", company=None)], budget=budget(share=0.1)
    )
    for _ in range(3):
        await client.get(DEALS, headers=AUTH)
    await client.get(DEALS, headers={"Authorization": "Bearer stray-token"})
    metrics = (await (await client.get("/_proxy/metrics")).read()).decode()
    assert counter(metrics, f'scope_proxy_budget_remaining_tokens{{company="{ACME}"}}') == 494
    assert counter(metrics, 'scope_proxy_budget_spent_tokens{company="(unknown)"}') == 2


def test_a_budget_mistake_names_its_key_and_place(tmp_path: Path) -> None:
    cases = [
        ({"mode": "enforce", "critical": ["POST /v1/activities", "GET /v1/user/me"]},
         "budget.critical[1]: 'GET /v1/user/me' is no endpoint", "'GET /v1/users/me'"),
        ({"mode": "enforce", "critical": ["GET /v1/deals/42"]},
         "budget.critical[0]:", "'GET /v1/deals/{id}'"),
        ({"mode": True}, "budget.mode:", "write report or enforce"),
        ({"mode": "enforce", "share": 1.5}, "budget.share:", "between 0 and 1"),
        ({"mode": "enforce", "reserve": 0.1}, "budget.reserve:", "budget.critical"),
        ({"mode": "enforce", "burst": {"apitoken": 5}}, "budget.burst.apitoken:", "unknown key"),
    ]  # fmt: skip
    for settings, where, hint in cases:
        path = write_config(tmp_path, budget=settings)
        with pytest.raises(ConfigError) as raised:
            load(path)
        assert str(raised.value).startswith(where), settings
        assert hint in str(raised.value), settings


def test_check_says_the_budget_in_effect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        tmp_path, budget={"mode": "report", "share": 0.25, "critical": ["GET /v1/users/me"],
                          "reserve": 0.1, "burst": {"oauth": 80}},
    )  # fmt: skip
    assert check(path) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("budget:")]
    assert said == [
        "budget: report, app default, share 0.25 of 30000 tokens a day until Pipedrive says the "
        "company's, reserve 0.1 for 1 critical endpoint, burst 80 (OAuth) / - (API token) per 2 s"
    ]
    assert check(write_config(tmp_path)) == 0
    assert "budget:" not in capsys.readouterr().out  # off: not said
