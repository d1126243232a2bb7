"""What the proxy costs: throughput and latency against a bare aiohttp pass-through, side by side.

Three processes on loopback: an upstream that answers a small JSON body, a bare pass-through
proxy (aiohttp server + one ClientSession, no checks), and pipedrive-scope-proxy with a static
grant. The load generator (this process) alternates between the two proxies in rounds, so both
see the same machine conditions; the figures are ratios from the same run.

Run: ``python bench/proxy_overhead.py`` (about a minute). Targets: throughput >= 85% of the bare
pass-through, median latency added <= 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

TOKEN = "bench-token"
PATHS = ["/v1/deals/42", "/api/v2/deals?limit=5", "/v1/persons/7/deals", "/api/v1/users/me"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_upstream(port: int) -> None:
    body = json.dumps({"success": True, "data": {"id": 42, "title": "x" * 200}}).encode()

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def run_bare_proxy(port: int, upstream: int) -> None:
    """The baseline: forward everything, stream the answer back, decide nothing."""

    async def forward(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        url = URL(f"http://127.0.0.1:{upstream}{request.raw_path}", encoded=True)
        async with session.request(request.method, url, headers=request.headers) as answer:
            response = web.StreamResponse(status=answer.status, headers=answer.headers)
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app["session"].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def wait_listening(port: int) -> None:
    for _ in range(400):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


async def load(port: int, connections: int, seconds: float) -> tuple[float, list[float]]:
    """Requests per second and per-request latencies (ms) with ``connections`` kept busy."""
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as client:
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            index = offset
            while time.perf_counter() < deadline:
                url = f"http://127.0.0.1:{port}{PATHS[index % len(PATHS)]}"
                index += 1
                started = time.perf_counter()
                async with client.get(url, headers=headers) as response:
                    await response.read()
                    assert response.status == 200, response.status
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(connections)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(bare: tuple[int, int], scoped: tuple[int, int], args: argparse.Namespace) -> None:
    """``bare`` and ``scoped`` are (port, pid)."""
    for port, _ in (bare, scoped):
        await load(port, args.connections, 1.0)  # warm up
    results: dict[str, tuple[list[float], list[float]]] = {"bare": ([], []), "scoped": ([], [])}
    cpu: dict[str, list[float]] = {"bare": [], "scoped": []}
    for round_number in range(args.rounds):
        for name, (port, pid) in (("bare", bare), ("scoped", scoped)):
            before = cpu_seconds(pid)
            rate, latencies = await load(port, args.connections, args.seconds)
            cpu[name].append((cpu_seconds(pid) - before) / len(latencies) * 1e6)
            results[name][0].append(rate)
            results[name][1].extend(latencies)
        print(f"  round {round_number + 1}/{args.rounds}: "
              f"bare {results['bare'][0][-1]:7.0f} req/s, scoped {results['scoped'][0][-1]:7.0f} req/s")  # fmt: skip
    bare_rate = statistics.median(results["bare"][0])
    scoped_rate = statistics.median(results["scoped"][0])
    bare_p50 = statistics.median(results["bare"][1])
    scoped_p50 = statistics.median(results["scoped"][1])
    print(f"\nthroughput: scoped {scoped_rate:.0f} req/s vs bare {bare_rate:.0f} req/s "
          f"= {scoped_rate / bare_rate:.0%} (target >= 85%)")  # fmt: skip
    print(f"median latency: scoped {scoped_p50:.2f} ms vs bare {bare_p50:.2f} ms, "
          f"added {scoped_p50 - bare_p50:+.2f} ms (target <= 1 ms)")  # fmt: skip
    bare_cpu, scoped_cpu = statistics.median(cpu["bare"]), statistics.median(cpu["scoped"])
    print(f"proxy CPU per request: scoped {scoped_cpu:.0f} us vs bare {bare_cpu:.0f} us "
          f"= {scoped_cpu / bare_cpu:.2f}x (the load generator shares the cores, so throughput "
          "understates what a dedicated core would give)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    upstream, bare, scoped = free_port(), free_port(), free_port()
    processes: list[BaseProcess] = [
        context.Process(target=run_upstream, args=(upstream,), daemon=True),
        context.Process(target=run_bare_proxy, args=(bare, upstream), daemon=True),
    ]
    for process in processes:
        process.start()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "bench.yaml"
        config.write_text(json.dumps({
            "upstream": {"api_url": f"http://127.0.0.1:{upstream}"},
            "tokens": [{"name": "bench", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                        "scopes": ["deals:read", "users:read"]}],
            "logging": {"format": "json", "level": os.environ.get("BENCH_LOG_LEVEL", "info")},
        }))  # fmt: skip
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--host",
             "127.0.0.1", "--port", str(scoped)],
            stdout=subprocess.DEVNULL, env={**os.environ},
        )  # fmt: skip
        try:

            async def run() -> None:
                for port in (upstream, bare, scoped):
                    await wait_listening(port)
                print(f"{args.rounds} rounds of {args.seconds:g} s, {args.connections} connections, "
                      "the decision log written (to /dev/null) as in production")  # fmt: skip
                bare_pid, scoped_pid = processes[1].pid, proxy.pid
                assert bare_pid is not None
                await measure((bare, bare_pid), (scoped, scoped_pid), args)

            asyncio.run(run())
        finally:
            proxy.terminate()
            proxy.wait(timeout=30)
            for process in processes:
                process.terminate()


if __name__ == "__main__":
    main()
