"""A flood of made-up paths cannot grow the proxy's memory without bound.

Tokens are bounded in the report and its store; paths were not: each call to a path no
catalogue entry matches was counted under its own shape, so one token (or, with
``unknown_tokens: app_scopes``, a made-up one) sending ``GET /v1/<100 made-up words>`` in a
loop grew the report by about 3.5 KB a call until the proxy was killed for its memory (behind
Envoy, every check then fails). The real proxy process is flooded here, and its resident memory
read from ``/proc`` before and after, the report served in between.
"""

from __future__ import annotations

import asyncio
import random
import string
from pathlib import Path

import aiohttp
import pytest

from proxy.report.model import UNKNOWN_SHAPES
from tests.conftest import free_port
from tests.processes import serving, wait_ready, write_config
from tests.waiting import eventually

pytestmark = pytest.mark.slow

CALLS = 6_000
CONNECTIONS = 6


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def flood(port: int, calls: int, seed: int) -> None:
    """``calls`` requests, each to ``/v1/`` and 100 made-up words, on keep-alive connections."""
    chooser = random.Random(seed)
    words = [
        "".join(chooser.choices(string.ascii_lowercase, k=chooser.randint(4, 10)))
        for _ in range(3_000)
    ]

    async def connection(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            path = "/v1/" + "/".join(chooser.choices(words, k=100))
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer made-up\r\n\r\n"
                .encode()
            )  # fmt: skip
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 404 "), head[:40]
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
        writer.close()

    await asyncio.gather(*(connection(calls // CONNECTIONS) for _ in range(CONNECTIONS)))


async def requests(port: int, count: int) -> bool:
    """Whether the report counts ``count`` requests (each process flushes once a second)."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"http://127.0.0.1:{port}/_proxy/report") as answer,
    ):
        found: int = (await answer.json())["overall"]["requests"]
        return found == count


async def test_a_flood_of_unknown_paths_leaves_memory_and_the_report_bounded(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        upstream={"api_url": "http://127.0.0.1:9", "oauth_url": "http://127.0.0.1:9"},
        app_scopes=["deals:read"],
        unknown_tokens="app_scopes",  # a made-up token is enough
        logging={"format": "json", "level": "warning"},
    )
    port = free_port()
    with serving(config, port, log=tmp_path / "proxy.log") as proxy:
        await wait_ready(port)
        await flood(port, 600, seed=1)  # warm: every code path has run, its caches are full
        await eventually(lambda: requests(port, 600), "the warm-up's counts flushed")
        before = resident_mib(proxy.pid)
        await flood(port, CALLS, seed=2)
        await eventually(lambda: requests(port, 600 + CALLS), "the flood's counts flushed")
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{port}/_proxy/report") as answer,
        ):
            report = await answer.json()
            size = int(answer.headers["Content-Length"])
        grown = resident_mib(proxy.pid) - before
    named = {entry["endpoint"] for entry in report["overall"]["endpoints"]}
    assert report["overall"]["requests"] == 600 + CALLS
    assert len(named) == UNKNOWN_SHAPES + 1
    assert "GET /v1/(other unknown paths)" in named
    assert max(map(len, named)) < 400
    assert size < 200_000, f"the report is {size} bytes"
    # Unbounded, this flood grew the process by about 55 MiB (20 MB of report alone).
    assert grown < 15, f"the proxy grew by {grown:.1f} MiB"
