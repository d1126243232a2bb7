"""Soak: a long mixed load, allowed, refused and faulty calls; the proxy must stay up, flat in
memory, and give every descriptor back.

    python bench/soak.py                   # 200,000 requests at 200 connections (a few minutes)
    python bench/soak.py --requests 20000  # a short run

It starts everything it needs (an upstream on raw sockets that also misbehaves on cue, the
proxy as ``serve`` starts it, wrk from Debian's packages) and stops it all. Targets: no
unexpected answer or socket error; resident memory at the end within 10% of what it was after
the warm-up; open descriptors back to what they were before any traffic. It prints the figures
and exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import cpu_seconds, free_port, open_descriptors, proxy, require, rss_mib, wrk

BODY = json.dumps({"success": True, "data": {"id": 42, "title": "a deal", "value": 1000}}).encode()
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY
)  # fmt: skip
# The mix: (weight, method, path, token); the upstream misbehaves on /hangup and /garbage.
MIX = [
    (70, "GET", "/v1/deals/42", "reader"),
    (10, "DELETE", "/v1/deals/42", "reader"),  # 403 out of scope
    (5, "GET", "/v1/activities", "unknown"),  # 401 unknown token
    (5, "GET", "/v1/deals/%2e%2e", "reader"),  # 400 ambiguous
    (5, "GET", "/v1/deals/hangup", "reader"),  # 502 upstream closes without an answer
    (5, "GET", "/v1/deals/garbage", "reader"),  # 502 malformed status line
]
EXPECTED = {"200", "400", "401", "403", "502"}


def run_upstream(port: int) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path.endswith(b"/hangup"):
                    return
                if path.endswith(b"/garbage"):
                    writer.write(b"HTTP/1.1 two hundred\r\n\r\n")
                    return
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def lua_mix() -> str:
    entries = []
    for weight, method, path, token in MIX:
        headers = f'{{["Authorization"] = "Bearer {token}"}}'
        request = f'wrk.format("{method}", "{path}", {headers})'
        entries += [request] * weight
    return (
        "local requests, n = {}, 0\n"
        "function prepare() requests = {" + ", ".join(entries) + "} end\n"
        "function request() n = n + 1; return requests[(n % #requests) + 1] end\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--connections", type=int, default=200)
    args = parser.parse_args()
    require("wrk")
    upstream_port, proxy_port = free_port(), free_port()
    upstream = multiprocessing.get_context("spawn").Process(
        target=run_upstream, args=(upstream_port,), daemon=True
    )
    upstream.start()
    document = {
        "listen": {"host": "127.0.0.1", "port": proxy_port},
        "upstream": {"api_url": f"http://127.0.0.1:{upstream_port}",
                     "oauth_url": f"http://127.0.0.1:{upstream_port}", "read_timeout": 5},
        "tokens": [{"name": "reader", "sha256": hashlib.sha256(b"reader").hexdigest(),
                    "scopes": ["deals:read"]}],
        "logging": {"format": "json", "level": "info"},
    }  # fmt: skip
    url = f"http://127.0.0.1:{proxy_port}"
    script = lua_mix()
    failures: list[str] = []
    with proxy(document) as process:
        pid = process.pid
        baseline_fds = open_descriptors(pid)
        print(f"soak: {args.requests} requests at {args.connections} connections, mixed:")
        for weight, method, path, token in MIX:
            print(f"  {weight:3d}%  {method} {path} ({token})")
        warm = wrk(url, args.connections, 5, script=script)
        time.sleep(1)
        warm_rss = rss_mib(pid)
        print(f"warm-up: {warm.requests} requests, {warm.rate:.0f}/s; resident {warm_rss:.1f} MiB")
        total, unexpected, socket_errors = 0, 0, 0
        statuses: dict[str, int] = {}
        started_cpu, started = cpu_seconds(pid), time.monotonic()
        rounds = []
        while total < args.requests:
            load = wrk(url, args.connections, 15, script=script)
            total += load.requests
            socket_errors += load.socket_errors
            for status, count in load.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
                if status not in EXPECTED:
                    unexpected += count
            rss = rss_mib(pid)
            rounds.append(rss)
            print(
                f"  {total:8d} requests  {load.rate:6.0f}/s  p99 {load.p99_ms:6.1f} ms  "
                f"resident {rss:6.1f} MiB  descriptors {open_descriptors(pid)}"
            )
            if process.poll() is not None:
                failures.append("the proxy exited")
                break
        elapsed, cpu = time.monotonic() - started, cpu_seconds(pid) - started_cpu
        final_rss = rss_mib(pid)
        final_fds = open_descriptors(pid)
        # Idle pooled upstream connections close after aiohttp's 15 s keep-alive, which its
        # connector checks every 15 s: up to 30 s.
        for _ in range(80):
            if final_fds <= baseline_fds:
                break
            time.sleep(0.5)
            final_fds = open_descriptors(pid)
    upstream.terminate()
    growth = final_rss / warm_rss - 1
    print(f"statuses after the warm-up: {json.dumps(dict(sorted(statuses.items())))}")
    print(
        f"measured: {total} requests in {elapsed:.0f} s ({total / elapsed:.0f}/s), "
        f"{1000 * cpu / total:.2f} CPU s per 1000 requests"
    )
    results = [
        ("unexpected answers", unexpected, unexpected == 0, "0"),
        ("socket errors", socket_errors, socket_errors == 0, "0"),
        ("memory growth after warm-up", f"{growth:+.1%}", growth <= 0.10, "<= +10%"),
        ("descriptors at the end / before", f"{final_fds} / {baseline_fds}",
         final_fds <= baseline_fds, "back to baseline"),
        ("requests", total, total >= args.requests, f">= {args.requests}"),
    ]  # fmt: skip
    print(f"{'target':34} {'measured':>18}  {'wanted':>16}")
    for name, value, met, wanted in results:
        print(f"{name:34} {value!s:>18}  {wanted:>16}  {'ok' if met else 'MISSED'}")
        if not met:
            failures.append(name)
    if failures:
        print(f"soak: missed: {', '.join(failures)}")
        return 1
    print("soak: every target met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
