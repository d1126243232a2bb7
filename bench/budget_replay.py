"""The budget governor against a fake Pipedrive that keeps its budgets: an app's day replayed
straight to it, through the proxy with the governor off, on (memory store) and on over Redis;
then the governor's cost per call. ``python bench/budget_replay.py [--quick]``.

The replay: four companies (one the proxy does not know), six tokens (one a personal API
token), a mix of v1 and v2 endpoints with ``GET /v1/users/me`` as the critical one, every token
bursting past its limit now and then, and each company's other apps and users spending
meanwhile. A day is compressed into ``--seconds`` (60); Pipedrive's 2-second burst windows are
kept as they are, and the burst limits scaled to the replay's rates. See bench/README.md,
"The budget governor", for the targets and a run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import yaml
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    ROOT,
    cpu_times,
    free_port,
    pin,
    proxy,
    require,
    schedule,
    sequential_calls,
    wait_ready,
    wrk,
)

from proxy.core.catalog import api_route, load_catalogue

SHARE, RESERVE = 0.5, 0.04
CRITICAL = "GET /v1/users/me"
BURST = {"oauth": 40, "api_token": 16}
# company -> its daily budget at the fake for a 60-second day (a shorter day: less, at the
# same rates), what its other apps and users spend of it, and what the app would spend of its
# share if let (its demand)
COMPANIES = {
    "acme.pipedrive.com": {"limit": 20_000, "others": 0.15, "demand": 2.0},
    "globex.pipedrive.com": {"limit": 40_000, "others": 0.10, "demand": 0.5},
    "initech.pipedrive.com": {"limit": 12_000, "others": 0.20, "demand": 2.0},
    "hooli.pipedrive.com": {"limit": 100_000, "others": 0.0, "demand": 0.03},
}
# token -> (its company, its part of the company's calls, whether the proxy knows the company)
TOKENS = {
    "acme-1": ("acme.pipedrive.com", 0.4, True),
    "acme-2": ("acme.pipedrive.com", 0.4, True),
    "api-acme": ("acme.pipedrive.com", 0.2, True),
    "globex-1": ("globex.pipedrive.com", 1.0, True),
    "initech-1": ("initech.pipedrive.com", 1.0, True),
    "hooli-1": ("hooli.pipedrive.com", 1.0, False),
}
# The throughput runs' company: a large one (Ultimate, 500 seats: 7 x 30,000 x 500 tokens a
# day), whose budget no run comes near, so that every call does the governor's whole work.
LARGE = 105_000_000
BULK = "bulk-token"  # the throughput runs' token: a company with no end to its budget
MIX = [  # (method, path, weight)
    ("GET", "/v1/deals/{n}", 0.40), ("GET", "/v1/deals", 0.20),
    ("GET", "/v1/deals/search?term=acme", 0.05), ("GET", "/api/v2/deals", 0.15),
    ("POST", "/v1/deals", 0.10), ("GET", "/v1/users/me", 0.10),
]  # fmt: skip
CATALOGUE = load_catalogue()


class Call(NamedTuple):
    at: float  # seconds into the replay
    token: str
    method: str
    path: str
    endpoint: str
    cost: int


def endpoint_of(method: str, path: str) -> tuple[str, int]:
    route = api_route(path.partition("?")[0])
    assert route is not None
    endpoint = CATALOGUE.match(route, method)
    assert endpoint is not None
    assert endpoint.token_cost is not None
    return endpoint.name, endpoint.token_cost


def limits(seconds: float) -> dict[str, int]:
    """Each company's budget for a day of ``seconds``: the calls come at the same rates."""
    return {company: int(s["limit"] * seconds / 60) for company, s in COMPANIES.items()}


def day_of_calls(seconds: float, seed: int = 7) -> list[Call]:
    """A day's calls: each company's demand (a multiple of the app's share of its budget)
    spread over the replay as Poisson arrivals, and every 10 s one token's burst past its limit."""
    rng = random.Random(seed)
    mean_cost = sum(endpoint_of(m, p.format(n=1))[1] * w for m, p, w in MIX)
    calls: list[Call] = []
    budgets = limits(seconds)
    for token, (company, part, _) in TOKENS.items():
        tokens = COMPANIES[company]["demand"] * SHARE * budgets[company] * part
        rate = tokens / mean_cost / seconds
        at = rng.expovariate(rate)
        while at < seconds:
            calls.append(_call(rng, at, token))
            at += rng.expovariate(rate)
    bursting = [t for t in TOKENS if TOKENS[t][0] != "hooli.pipedrive.com"]
    for index, start in enumerate(range(5, int(seconds) - 2, 10)):
        token = bursting[index % len(bursting)]
        limit = BURST["api_token" if token.startswith("api-") else "oauth"]
        calls += [_call(rng, start + i * 0.4 / limit, token) for i in range(2 * limit)]
    return sorted(calls)


def _call(rng: random.Random, at: float, token: str) -> Call:
    method, path, _ = rng.choices(MIX, weights=[w for *_, w in MIX])[0]
    path = path.format(n=rng.randint(1, 5000))
    name, cost = endpoint_of(method, path)
    return Call(at, token, method, path, name, cost)


@dataclass
class Result:
    call: Call
    status: int
    reason: str | None  # the proxy's own refusal's reason
    sent: float


@dataclass
class Run:
    results: list[Result]
    stats: dict[str, Any]
    projected: float | None  # acme's projected exhaustion, seconds into the replay
    projected_at: float | None


def headers_of(token: str) -> dict[str, str]:
    if token.startswith("api-"):
        return {"x-api-token": token}
    return {"Authorization": f"Bearer {token}"}


async def replay(url: str, fake: str, calls: list[Call], seconds: float, report: bool) -> Run:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        await session.post(f"{fake}/_fake/reset")
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.5

        async def one(call: Call) -> Result:
            await asyncio.sleep(max(0.0, start + call.at - loop.time()))
            sent = loop.time() - start
            body = {"title": "deal"} if call.method == "POST" else None
            async with session.request(
                call.method, url + call.path, headers=headers_of(call.token), json=body
            ) as answer:
                data = await answer.read()
            reason = None
            if answer.status == 429 and b"scope_proxy" in data:
                reason = json.loads(data)["scope_proxy"]["reason"]
            return Result(call, answer.status, reason, sent)

        async def projection() -> tuple[float | None, float | None]:
            if not report:
                return None, None
            at = seconds * 0.25
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            async with session.get(f"{url}/_proxy/report") as answer:
                document = await answer.json()
            taken = loop.time() - start
            for company in document["overall"]["budget"]["companies"]:
                if company["company"] == "acme.pipedrive.com":
                    ahead = company["projected_in_seconds"]
                    return (taken + ahead if ahead is not None else None), taken
            return None, taken

        results, (projected, projected_at) = await asyncio.gather(
            asyncio.gather(*(one(call) for call in calls)), projection()
        )
        async with session.get(f"{fake}/_fake/stats") as answer:
            stats = await answer.json()
    return Run(list(results), stats, projected, projected_at)


def judged(run: Run, limits: dict[str, int]) -> dict[str, float]:
    """The replay's figures: upstream 429s, critical calls served, the share used, calls
    refused that the share would have allowed, the projection's error."""
    results = run.results
    critical = [r for r in results if r.call.endpoint == CRITICAL and r.reason != "burst_limit"]
    served_critical = sum(r.status == 200 for r in critical) / len(critical) if critical else 1.0
    used = []
    for company, setting in COMPANIES.items():
        if setting["demand"] > 1 and TOKENS_KNOWN.get(company):
            share = SHARE * limits[company]
            used.append(run.stats["spent_by_app"].get(company, 0) / share)
    wrong = 0
    by_company: dict[str, list[Result]] = {}
    for result in sorted(results, key=lambda r: r.sent):
        by_company.setdefault(TOKENS[result.call.token][0], []).append(result)
    for company, ordered in by_company.items():
        spent = 0
        full = SHARE * limits[company]
        for result in ordered:
            if result.status == 200:
                spent += result.call.cost
            elif result.reason == "budget_exhausted":
                cap = full if result.call.endpoint == CRITICAL else full * (1 - RESERVE)
                if spent + result.call.cost <= cap - 40:  # 40: one call's cost in flight
                    wrong += 1
    figures = {
        "upstream_429": run.stats["refused"].get("daily", 0) + run.stats["refused"].get("burst", 0),
        "critical_served": served_critical,
        "share_used": min(used) if used else 0.0,
        "wrongly_refused": wrong / len(results),
        "most_in_two_seconds": run.stats["most_in_two_seconds"],
        "refused_budget": sum(r.reason == "budget_exhausted" for r in results),
        "refused_burst": sum(r.reason == "burst_limit" for r in results),
    }
    if run.projected is not None and run.projected_at is not None:
        acme = [r for r in results if TOKENS[r.call.token][0] == "acme.pipedrive.com"]
        real = min(
            (
                r.sent
                for r in acme
                if r.reason == "budget_exhausted" and r.call.endpoint != CRITICAL
            ),
            default=None,
        )
        if real is not None:
            # both times from the start of the day: the error is a part of the day gone by
            figures["projection_error"] = abs(run.projected - real) / real
            figures["projected"] = run.projected
            figures["exhausted"] = real
    return figures


TOKENS_KNOWN = {
    company: True for company, *_ in TOKENS.values() if company != "hooli.pipedrive.com"
}


def fake_setup(folder: Path, seconds: float) -> Path:
    budgets = limits(seconds)
    companies = {
        name: {"limit": budgets[name], "others_per_second": s["others"] * budgets[name] / seconds}
        for name, s in COMPANIES.items()
    }
    companies["bulk.pipedrive.com"] = {"limit": 10**15, "others_per_second": 0}
    tokens = {token: company for token, (company, *_) in TOKENS.items()}
    tokens[BULK] = "bulk.pipedrive.com"
    setup = {"companies": companies, "tokens": tokens, "burst": {**BURST},
             "unbursted": [BULK]}  # fmt: skip
    path = folder / "fake.json"
    path.write_text(json.dumps(setup))
    return path


def document(
    port: int, upstream: int, folder: Path, store: str, mode: str, bulk: bool = False
) -> dict[str, Any]:
    """The proxy's config: the replay's budget, or (``bulk``) one no call comes near, so that
    the throughput runs measure the governor's work on every call and nothing else."""
    grants = [
        {"name": token, "sha256": hashlib.sha256(token.encode()).hexdigest(),
         "scopes": ["deals:full", "search:read"], **({"company": company} if known else {})}
        for token, (company, _, known) in TOKENS.items()
    ]  # fmt: skip
    grants.append({"name": "bulk", "sha256": hashlib.sha256(BULK.encode()).hexdigest(),
                   "scopes": ["deals:full"], "company": "bulk.pipedrive.com"})  # fmt: skip
    budget = {"mode": mode, "app": "replay", "daily_tokens": 30_000, "share": SHARE,
              "reserve": RESERVE, "critical": [CRITICAL], "burst": BURST}  # fmt: skip
    if bulk:
        budget.update(daily_tokens=LARGE, burst={"oauth": 100_000, "api_token": 100_000})
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "upstream": {"api_url": f"http://127.0.0.1:{upstream}", "read_timeout": 30},
        "tokens": grants,
        "api_tokens": "deny",
        "store": store,
        "budget": budget,
        "logging": {"format": "json", "level": "warning"},
        "limits": {"max_connections": 4096},
    }


@contextmanager
def background(args: list[str], env: dict[str, str] | None = None) -> Any:
    child = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, **env} if env else None)  # fmt: skip
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def governor_alone(calls: int = 200_000) -> float:
    """The governor's own CPU per call (microseconds): charging a call and reading its answer
    back, as the server does, on the memory store."""
    from proxy.core.budget import BudgetPolicy, quietly
    from proxy.core.credentials import Credential
    from proxy.core.decision import Grant, Policy, authorize
    from proxy.http.budget import Budget
    from proxy.http.metrics import Metrics
    from proxy.stores import MemoryStore

    route = api_route("/v1/deals/17")
    assert route is not None
    credential = Credential("oauth", hashlib.sha256(b"t").hexdigest())
    grant = Grant(frozenset({"deals:read"}), "static:bench", "acme.pipedrive.com")
    decision = authorize(CATALOGUE, Policy(), route, "GET", credential, grant, None)
    policy = BudgetPolicy("enforce", daily_tokens=LARGE, critical=frozenset({CRITICAL}),
                          burst_oauth=10**9)  # fmt: skip
    budget = Budget(policy, MemoryStore(), Metrics())
    said = web.Response(headers={"x-daily-ratelimit-token-limit": str(LARGE),
                                 "x-daily-ratelimit-token-remaining": str(LARGE - 5_000_000)})  # fmt: skip

    async def run(count: int) -> float:
        started = time.process_time()
        for _ in range(count):
            note = budget.take(decision) or await budget.admitted(decision, False)  # as served
            if quietly(note, 200, True) < 0:  # as the server reads an answer
                budget.read(note, 200, said, True)
        return time.process_time() - started

    rounds = []
    for _ in range(5):
        spent = asyncio.run(run(calls))
        rounds.append(spent / calls * 1e6)
    return statistics.median(rounds)


def nginx_upstream(folder: Path, port: int) -> list[str]:
    """nginx answering every call as Pipedrive would with a budget no call comes near: the
    throughput runs' upstream, so that the proxy, not the upstream, is what is measured."""
    config = folder / "nginx.conf"
    config.write_text(f"""
worker_processes 1; daemon off; pid {folder}/nginx.pid; error_log {folder}/nginx.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port};
    location / {{ default_type application/json;
      add_header x-daily-ratelimit-token-limit {LARGE} always;
      add_header x-daily-ratelimit-token-remaining {LARGE - 5_000_000} always;
      return 200 '{{"success":true,"data":{{"id":17}}}}'; }} }}
}}
""")
    return ["nginx", "-c", str(config), "-p", str(folder)]


def throughput(
    urls: dict[str, str], pids: dict[str, int], rounds: int, seconds: int
) -> dict[str, Any]:
    """Requests/s and the proxy's CPU per call, governor off and on, in alternating rounds."""
    script = f'wrk.headers["Authorization"] = "Bearer {BULK}"\nwrk.path = "/v1/deals/17"\n'
    for url in urls.values():
        wrk(url, 32, 1, script=script)  # warm up
    # each round's requests/s, CPU time per call (us) and of that the time in user space
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in urls}
    names = list(urls)
    for number in range(rounds):
        # every target in every place of the order alike: what runs just before one shows
        shift = number % len(names)
        order = names[shift:] + names[:shift]
        for name in order if number // len(names) % 2 == 0 else reversed(order):
            user, system = cpu_times(pids[name])
            load = wrk(urls[name], 32, seconds, script=script, cpus={0}, batch=True)
            user_after, system_after = cpu_times(pids[name])
            if set(load.statuses) != {"200"}:
                sys.exit(f"bench: {name} answered {load.statuses}")
            per_call = 1e6 / load.requests
            used = (user_after - user + system_after - system) * per_call
            samples[name].append((load.rate, used, (user_after - user) * per_call))
        print(f"  round {number + 1}/{rounds}: " + ", ".join(
            f"{name} {samples[name][-1][0]:.0f}/s" for name in names))  # fmt: skip
    return {
        name: {
            "rate": statistics.median(s[0] for s in values),
            "cpu_us": statistics.median(s[1] for s in values),
            "user_us": statistics.median(s[2] for s in values),
            "ratio": statistics.median(
                s[0] / off[0] for s, off in zip(values, samples["off"], strict=True)
            ),
            "cpu_added_us": statistics.median(
                s[1] - off[1] for s, off in zip(values, samples["off"], strict=True)
            ),
        }
        for name, values in samples.items()
    }


def print_replay(figures: dict[str, dict[str, float]]) -> None:
    print()
    header = f"| {'':34} | {'direct':>8} | {'off':>8} | {'on':>8} | {'on, Redis':>9} |"
    print(header)
    print("|" + "---|" * 5)
    rows = [
        ("upstream 429s", "upstream_429", "{:.0f}"),
        ("critical calls served", "critical_served", "{:.1%}"),
        ("share used (least of acme, initech)", "share_used", "{:.1%}"),
        ("calls refused the share allowed", "wrongly_refused", "{:.2%}"),
        ("refused: budget", "refused_budget", "{:.0f}"),
        ("refused: burst", "refused_burst", "{:.0f}"),
        ("most of one token's calls in 2 s", "most_in_two_seconds", "{:.0f}"),
        ("projection error", "projection_error", "{:.1%}"),
    ]
    for label, key, shape in rows:
        cells = [
            shape.format(figures[n][key]) if key in figures[n] else "-"
            for n in ("direct", "off", "on", "redis")
        ]
        print(f"| {label:34} | " + " | ".join(f"{c:>8}" for c in cells) + " |")


def instructions(folder: Path, upstream: int, pairs: int, count: int) -> dict[str, Any]:
    """Instructions per call of the proxy, governor off and on (memory store), each under
    valgrind's callgrind, ``count`` calls one after the other on one connection, after 300 to
    warm it: a count, which what else the machine does leaves alone. A process's count moves
    with where its objects fall (Python's string hashes are seeded anew in each), so ``pairs``
    pairs of processes are counted, an off and an on one sharing a seed in each: the median of
    the pairs' differences, and each pair's."""
    request = (
        f"GET /v1/deals/17 HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {BULK}\r\n\r\n"
    ).encode()
    found: dict[str, list[float]] = {"off": [], "on": []}
    for pair in range(1, pairs + 1):
        with ExitStack() as stack:
            ports, pids = {}, {}
            for name in found:
                port = ports[name] = free_port()
                config = folder / f"counted-{name}.yaml"
                mode = "off" if name == "off" else "enforce"
                config.write_text(
                    yaml.safe_dump(document(port, upstream, folder, "memory", mode, True))
                )
                out = folder / f"callgrind-{pair}-{name}.out"
                pids[name] = stack.enter_context(background(
                    ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                     sys.executable, "-m", "proxy", "serve", "--config", str(config)],
                    {"PYTHONHASHSEED": str(pair)})).pid  # fmt: skip
            for port in ports.values():
                wait_ready(f"http://127.0.0.1:{port}/_proxy/health", 180)
                sequential_calls(port, request, 300)

            with ThreadPoolExecutor(2) as pool:  # each process on its own CPU
                off, on = pool.map(
                    _counted,
                    [folder / f"callgrind-{pair}-{name}.out" for name in ("off", "on")],
                    [pids["off"], pids["on"]], [ports["off"], ports["on"]],
                    [request] * 2, [count] * 2,
                )  # fmt: skip
            found["off"].append(off)
            found["on"].append(on)
        print(f"  pair {pair}/{pairs}: off {off / 1000:.1f}k, on {on / 1000:.1f}k instructions "
              f"per call (+{(on - off) / 1000:.1f}k)")  # fmt: skip
    added = [on - off for off, on in zip(found["off"], found["on"], strict=True)]
    return {"off": statistics.median(found["off"]), "on": statistics.median(found["on"]),
            "added": statistics.median(added), "pairs": added}  # fmt: skip


def _counted(out: Path, pid: int, port: int, request: bytes, count: int) -> float:
    """The instructions per call of the callgrind process ``pid`` (writing ``out``) over
    ``count`` calls of ``request``."""
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
    sequential_calls(port, request, count)
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    dumped = sorted(out.parent.glob(f"{out.name}*"), key=lambda p: p.stat().st_mtime)
    totals = next(int(line.split()[1]) for line in dumped[-1].read_text().splitlines()
                  if line.startswith("totals:"))  # fmt: skip
    return totals / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="the replayed day's length")
    parser.add_argument("--quick", action="store_true", help="a 30-second day, fewer rounds")
    args = parser.parse_args()
    seconds = 30.0 if args.quick else args.seconds
    rounds, round_seconds = (8, 2) if args.quick else (24, 2)
    require("wrk", "redis-server", "nginx", "valgrind")
    calls = day_of_calls(seconds)
    print(f"replaying {len(calls)} calls over {seconds:g} s, {len(TOKENS)} tokens")
    with tempfile.TemporaryDirectory(prefix="budget-replay-") as name, ExitStack() as stack:
        folder = Path(name)
        fake_port, redis_port = free_port(), free_port()
        stack.enter_context(background(
            [sys.executable, str(ROOT / "bench" / "fake_pipedrive.py"), str(fake_port),
             str(fake_setup(folder, seconds))]))  # fmt: skip
        stack.enter_context(background(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"]))  # fmt: skip
        fake = f"http://127.0.0.1:{fake_port}"
        wait_ready(f"{fake}/_fake/stats")
        redis = f"redis://127.0.0.1:{redis_port}/0"
        budgets = limits(seconds)
        ports = {name: free_port() for name in ("off", "on", "redis")}
        settings = {"off": ("memory", "off"), "on": ("memory", "enforce"),
                    "redis": (redis, "enforce")}  # fmt: skip
        runs: dict[str, Run] = {}
        print("direct to the fake Pipedrive ...")
        runs["direct"] = asyncio.run(replay(fake, fake, calls, seconds, report=False))
        for name in ("off", "on", "redis"):
            print(f"through the proxy, governor {name} ...")
            store, mode = settings[name]
            with proxy(document(ports[name], fake_port, folder, store, mode)):
                url = f"http://127.0.0.1:{ports[name]}"
                runs[name] = asyncio.run(replay(url, fake, calls, seconds, report=mode != "off"))
        figures = {name: judged(run, budgets) for name, run in runs.items()}
        print_replay(figures)
        print("throughput, governor off and on (and off again: the noise) ...")
        with ExitStack() as proxies:
            nginx_port = free_port()
            nginx = proxies.enter_context(background(nginx_upstream(folder, nginx_port)))
            wait_ready(f"http://127.0.0.1:{nginx_port}/")
            schedule(nginx.pid, batch=True)
            pin(nginx.pid, {0})  # wrk and nginx on one CPU, the proxy measured on the other
            pids = {}
            ports["off, again"] = free_port()
            settings["off, again"] = settings["off"]
            for name in ("off", "on", "redis", "off, again"):
                store, mode = settings[name]
                process = proxies.enter_context(
                    proxy(document(ports[name], nginx_port, folder, store, mode, bulk=True))
                )
                pids[name] = process.pid
                pin(process.pid, {1})
            urls = {name: f"http://127.0.0.1:{port}/v1/deals/17" for name, port in ports.items()}
            load = throughput(urls, pids, rounds, round_seconds)
            print("instructions per call, governor off and on (under callgrind) ...")
            counted = instructions(folder, nginx_port, 2 if args.quick else 5, 1500)
    alone = governor_alone()
    print()
    print(f"| {'requests/s (x off)':34} | {'':>8} | {load['off']['rate']:>8.0f} | "
          f"{load['on']['ratio']:>8.3f} | {load['redis']['ratio']:>9.3f} |")  # fmt: skip
    print(f"| {'proxy CPU per call, us (+ over off)':34} | {'':>8} | "
          f"{load['off']['cpu_us']:>8.1f} | {load['on']['cpu_added_us']:>+8.1f} | "
          f"{load['redis']['cpu_added_us']:>+9.1f} |")  # fmt: skip
    again = load["off, again"]
    print(
        f"\noff against itself (the noise): {again['ratio']:.3f}x, "
        f"{again['cpu_added_us']:+.1f} us per call"
    )
    added = counted["added"]
    # at the pace off's counted instructions ran: its time in user space per call (callgrind
    # counts the process's instructions, not the kernel's work for it, which the governor adds
    # nothing to)
    added_us = added * load["off"]["user_us"] / counted["off"]
    pairs = ", ".join(f"{a / 1000:+.1f}k" for a in counted["pairs"])
    print(
        f"instructions per call: off {counted['off'] / 1000:.1f}k, on "
        f"{counted['on'] / 1000:.1f}k (+{added / 1000:.1f}k, {added / counted['off']:+.1%}, "
        f"about {added_us:.1f} us at the pace of off's {load['off']['user_us']:.1f} us in user "
        f"space per call; the pairs: {pairs})"
    )
    print(f"\ngovernor alone: {alone:.2f} us per call (charge and read back, memory store)")
    on = figures["on"]
    targets = [
        ("0 upstream 429s", on["upstream_429"] == 0, f"{on['upstream_429']:.0f}"),
        ("100% of critical calls served", on["critical_served"] == 1.0,
         f"{on['critical_served']:.1%}"),
        (">= 95% of the share usable", on["share_used"] >= 0.95, f"{on['share_used']:.1%}"),
        ("<= 1% refused that the share allowed", on["wrongly_refused"] <= 0.01,
         f"{on['wrongly_refused']:.2%}"),
        ("projection within 10%", on.get("projection_error", 1.0) <= 0.10,
         f"{on.get('projection_error', float('nan')):.1%}"),
        ("governor CPU <= 3 us per call (end to end, from instructions)", added_us <= 3.0,
         f"{added_us:.1f} us; its own code alone {alone:.2f} us"),
        ("throughput on >= 0.95x off", load["on"]["ratio"] >= 0.95, f"{load['on']['ratio']:.3f}x"),
    ]  # fmt: skip
    print()
    missed = 0
    for label, met, value in targets:
        print(f"{'met   ' if met else 'MISSED'} {label}: {value}")
        missed += not met
    print(f"\nRedis: 429s {figures['redis']['upstream_429']:.0f}, critical "
          f"{figures['redis']['critical_served']:.1%}, share {figures['redis']['share_used']:.1%}, "
          f"wrongly refused {figures['redis']['wrongly_refused']:.2%}, "
          f"throughput {load['redis']['ratio']:.3f}x off")  # fmt: skip
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
