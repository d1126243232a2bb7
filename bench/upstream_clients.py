"""Why the upstream client is aiohttp's: fidelity and cost of aiohttp, httpx 0.28 and httpx2,
and of the proxy's own way of sending ("proxy": aiohttp's connector, request and response
without ``ClientSession.request``, as ``UpstreamClient`` sends every call).

Three measurements, all side by side in one run, against an upstream on loopback that runs in
its own process (so the client being measured has a core to itself):

1. fidelity: the request line each client actually sends for URLs a proxy must forward byte for
   byte (dot segments, encoded dots, a leading '//'); a client that rewrites them forwards a path
   other than the one that was authorized;
2. cost: sequential requests to an instant upstream, time per request, as a ratio to aiohttp;
3. concurrency: requests per second with many requests in flight to a slow (100 ms) upstream.

Run: ``pip install -e '.[dev]' && python bench/upstream_clients.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import multiprocessing
import socket
import time
from collections.abc import Awaitable, Callable
from multiprocessing.process import BaseProcess
from typing import Any

import aiohttp
import httpx
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.config import UpstreamSettings
from proxy.http.forward import UpstreamClient

httpx2: Any
try:
    httpx2 = importlib.import_module("httpx2")
except ImportError:  # optional: the comparison runs without it
    httpx2 = None

FIDELITY_PATHS = [
    "/v1/deals/1/../../users",
    "/v1/deals/%2e%2e/users",
    "/v1/deals;x/../persons",
    "//evil.example/v1/users",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_upstream(port: int, delay: float, ready: Any) -> None:
    """The upstream: records nothing, answers a small JSON body after ``delay`` seconds."""

    async def handle(request: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=b'{"success":true,"data":[]}', content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


async def request_line_sent(send: Callable[[str], Awaitable[None]], path: str) -> str:
    """The request line a client puts on the wire for ``path``, read by a bare socket server."""
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if not seen.done():
            seen.set_result(line.decode("latin-1").split(" ")[1])
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await asyncio.wait_for(send(f"http://127.0.0.1:{port}{path}"), timeout=5)
    except Exception as error:  # a client that refuses the URL outright is also an answer
        if not seen.done():
            seen.set_result(f"(refused: {type(error).__name__})")
    finally:
        server.close()
    return await asyncio.wait_for(seen, timeout=5)


class Client:
    """One HTTP client under test, with a uniform ``get``."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self._session: Any = None

    async def __aenter__(self) -> Client:
        if self.name == "aiohttp":
            connector = aiohttp.TCPConnector(limit=self.limit)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        elif self.name == "proxy":
            self._session = UpstreamClient(UpstreamSettings(), body_timeout=30)
            await self._session.start()
        else:
            module: Any = httpx if self.name == "httpx" else httpx2
            limits = module.Limits(max_connections=self.limit, max_keepalive_connections=self.limit)
            self._session = module.AsyncClient(limits=limits, timeout=30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.name in ("aiohttp", "proxy"):
            await self._session.close()
        else:
            await self._session.aclose()

    async def get(self, url: str) -> None:
        if self.name == "aiohttp":
            async with self._session.get(URL(url, encoded=True)) as response:
                await response.read()
        elif self.name == "proxy":
            sent = self._session._exchange("GET", URL(url, encoded=True), CIMultiDict(), None)
            async with await sent as answer:
                await answer.read()
        else:
            response = await self._session.get(url)
            await response.aread()


async def fidelity(names: list[str]) -> dict[str, list[str]]:
    results: dict[str, list[str]] = {}
    for name in names:
        async with Client(name, 10) as client:
            results[name] = [await request_line_sent(client.get, path) for path in FIDELITY_PATHS]
    return results


async def sequential_cost(
    names: list[str], port: int, count: int
) -> dict[str, tuple[float, float]]:
    """(wall, client CPU) microseconds per request, sequential; best of three rounds.

    The upstream runs in another process, so this process's CPU time is the client's own cost.
    """
    url = f"http://127.0.0.1:{port}/v1/deals/1"
    costs = {}
    for name in names:
        async with Client(name, 10) as client:
            for _ in range(50):
                await client.get(url)  # warm the pool
            best_wall = best_cpu = float("inf")
            for _ in range(3):
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(count):
                    await client.get(url)
                best_wall = min(best_wall, (time.perf_counter() - wall) / count)
                best_cpu = min(best_cpu, (time.process_time() - cpu) / count)
            costs[name] = (best_wall * 1e6, best_cpu * 1e6)
    return costs


async def concurrent_rate(
    names: list[str], port: int, in_flight: int, seconds: float
) -> dict[str, float]:
    """Requests per second with ``in_flight`` requests always outstanding to a 100 ms upstream."""
    url = f"http://127.0.0.1:{port}/v1/deals"
    rates = {}
    for name in names:
        async with Client(name, in_flight) as client:
            done = 0
            deadline = time.perf_counter() + seconds

            async def worker(client: Client = client, deadline: float = deadline) -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    await client.get(url)
                    done += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            rates[name] = done / (time.perf_counter() - started)
    return rates


def start_upstream(delay: float) -> tuple[int, BaseProcess]:
    port = free_port()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=serve_upstream, args=(port, delay, ready), daemon=True)
    process.start()
    if not ready.wait(20):
        raise SystemExit("the upstream did not start")
    return port, process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per round")
    parser.add_argument("--in-flight", type=int, default=50, help="concurrent requests")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the concurrent run")
    args = parser.parse_args()
    names = ["aiohttp", "proxy", "httpx"] + (["httpx2"] if httpx2 is not None else [])
    print(f"clients: aiohttp {aiohttp.__version__}, httpx {httpx.__version__}"
          + (f", httpx2 {httpx2.__version__}" if httpx2 is not None else ", httpx2 not installed"))  # fmt: skip

    print("\n1. fidelity: the path each client sends upstream")
    sent = asyncio.run(fidelity(names))
    for index, path in enumerate(FIDELITY_PATHS):
        print(f"  asked for {path}")
        for name in names:
            mark = "same" if sent[name][index] == path else "REWRITTEN"
            print(f"    {name:8} sent {sent[name][index]:32} {mark}")

    fast_port, fast = start_upstream(0.0)
    slow_port, slow = start_upstream(0.1)
    try:
        print(f"\n2. cost: {args.requests} sequential requests, instant upstream (best of 3)")
        costs = asyncio.run(sequential_cost(names, fast_port, args.requests))
        base_wall, base_cpu = costs["aiohttp"]
        print(
            f"    {'client':8} {'wall us/req':>12} {'ratio':>6} {'client CPU us/req':>18} {'ratio':>6}"
        )
        for name in names:
            wall, cpu = costs[name]
            print(
                f"    {name:8} {wall:12.0f} {wall / base_wall:5.1f}x {cpu:18.0f} {cpu / base_cpu:5.1f}x"
            )

        print(
            f"\n3. concurrency: {args.in_flight} in flight, 100 ms upstream, {args.seconds:g} s each"
        )
        ideal = args.in_flight / 0.1
        rates = asyncio.run(concurrent_rate(names, slow_port, args.in_flight, args.seconds))
        for name in names:
            print(
                f"    {name:8} {rates[name]:8.0f} req/s   ({rates[name] / ideal:5.0%} of the {ideal:.0f} possible)"
            )
    finally:
        fast.terminate()
        slow.terminate()


if __name__ == "__main__":
    main()
