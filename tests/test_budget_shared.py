"""The budget shared by replicas: chunks drawn atomically from the store's count (memory,
SQLite, a real Redis), two replicas within one budget, a replica giving back what it held when
it stops, and the store away: calls counted, never refused on budget."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from proxy.config import StoreUrl
from proxy.http.app import create_app
from proxy.http.state import BUDGET
from proxy.stores import MemoryStore, RedisStore, SqliteStore, Store, open_store
from tests.conftest import RedisServer, build_config, proxy_client, sha
from tests.fakes import FakePipedrive

ACME = "acme.pipedrive.com"
AUTH = {"Authorization": "Bearer acme-token"}
DEALS = "/v1/deals/1"  # 2 tokens
GRANT = {"name": "acme", "sha256": sha("acme-token"), "scopes": ["deals:read"], "company": ACME}
DAY = 86_400.0


async def draws_in_parallel(stores: list[Store], cap: int) -> tuple[int, list[int]]:
    """Many draws of 7 from each store at once: what was granted in all, and the counts seen."""

    async def draw(store: Store) -> tuple[int, int]:
        return await store.draw_budget("app\tacme\tday", 7, cap, DAY)

    results = await asyncio.gather(*(draw(store) for store in stores for _ in range(40)))
    return sum(granted for granted, _ in results), [count for _, count in results]


async def test_memory_draws_never_pass_the_cap() -> None:
    store = MemoryStore()
    granted, counts = await draws_in_parallel([store], cap=100)
    assert granted == 100
    assert max(counts) == 100


async def test_sqlite_draws_from_two_processes_files_never_pass_the_cap(tmp_path: Path) -> None:
    path = str(tmp_path / "budget.db")
    first, second = SqliteStore(path), SqliteStore(path)  # two connections: two processes' own
    try:
        await first.ping()  # the file made, then opened again
        await second.ping()
        granted, counts = await draws_in_parallel([first, second], cap=300)
        assert granted == 300
        assert max(counts) == 300
        await first.give_back_budget("app\tacme\tday", 50)
        assert await second.draw_budget("app\tacme\tday", 80, 300, DAY) == (50, 300)
    finally:
        await first.close()
        await second.close()


async def test_redis_draws_from_two_clients_never_pass_the_cap(redis_server: RedisServer) -> None:
    first, second = RedisStore(redis_server.url), RedisStore(redis_server.url)
    try:
        granted, counts = await draws_in_parallel([first, second], cap=300)
        assert granted == 300
        assert max(counts) == 300
        await first.give_back_budget("app\tacme\tday", 50)
        assert await second.draw_budget("app\tacme\tday", 80, 300, DAY) == (50, 300)
    finally:
        await first.close()
        await second.close()


async def replicas(
    aiohttp_client: Any, upstream: FakePipedrive, store: str, count: int = 2, **budget: Any
) -> list[TestClient[web.Request, web.Application]]:
    clients = []
    for _ in range(count):
        config, catalogue = build_config(
            upstream.url, tokens=[GRANT], store=store,
            budget={"mode": "enforce", "daily_tokens": 1000, **budget},
        )  # fmt: skip
        app = create_app(config, catalogue, store=open_store(StoreUrl(store)))
        clients.append(await proxy_client(aiohttp_client, app))
    return clients


async def two_replicas_spend_one_budget(
    aiohttp_client: Any, upstream: FakePipedrive, store: str
) -> None:
    first, second = await replicas(aiohttp_client, upstream, store)
    served = 0
    for _ in range(300):  # alternately, until both refuse
        statuses = [(await c.get(DEALS, headers=AUTH)).status for c in (first, second)]
        served += statuses.count(200)
        assert set(statuses) <= {200, 429}
    assert served * 2 == 1000  # the one share, to the token: chunks are drawn within it
    assert len(upstream.received) == served
    for client in (first, second):
        section = client.app[BUDGET].section()
        assert section["companies"][0]["spent"] == 1000


async def test_two_replicas_on_one_sqlite_file_stay_within_one_budget(
    aiohttp_client: Any, upstream: FakePipedrive, tmp_path: Path
) -> None:
    await two_replicas_spend_one_budget(aiohttp_client, upstream, f"sqlite://{tmp_path}/t.db")


async def test_two_replicas_on_one_redis_stay_within_one_budget(
    aiohttp_client: Any, upstream: FakePipedrive, redis_server: RedisServer
) -> None:
    await two_replicas_spend_one_budget(aiohttp_client, upstream, redis_server.url)


async def test_a_replica_that_stops_gives_back_what_it_held(
    aiohttp_client: Any, upstream: FakePipedrive, redis_server: RedisServer
) -> None:
    first, second = await replicas(aiohttp_client, upstream, redis_server.url)
    assert (await first.get(DEALS, headers=AUTH)).status == 200  # drew a chunk of 100
    await first.close()  # a rollout: 98 unspent go back to the count
    served = 0
    while (await second.get(DEALS, headers=AUTH)).status == 200:
        served += 1
    assert served * 2 == 1000 - 2


async def test_with_redis_down_a_replica_counts_and_never_refuses_on_budget(
    aiohttp_client: Any, upstream: FakePipedrive, redis_server: RedisServer
) -> None:
    [client] = await replicas(aiohttp_client, upstream, redis_server.url, count=1, share=0.1)
    redis_server.stop()
    with capture_logs() as events:
        statuses = [(await client.get(DEALS, headers=AUTH)).status for _ in range(100)]
    assert statuses == [200] * 100  # 200 tokens, twice its share: never refused on budget
    said = [e for e in events if e["event"] == "budget_store_unreachable"]
    assert len(said) == 1  # said once, not per call
    section = client.app[BUDGET].section()
    assert section["companies"][0]["spent"] == 200
    redis_server.start()
    client.app[BUDGET]._away_until = 0.0  # the retry pause over (5 s)
    assert (await client.get(DEALS, headers=AUTH)).status == 429  # the count caught up
    store = RedisStore(redis_server.url)
    try:
        key = next(iter(client.app[BUDGET].governor.ledgers.values())).key
        _, count = await store.draw_budget(key, 0, 0, DAY)
        assert count == 200  # what was spent while Redis was away, added to its count
    finally:
        await store.close()


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_burst_windows_hold_whatever_the_store(
    aiohttp_client: Any, upstream: FakePipedrive, store: str, tmp_path: Path
) -> None:
    url = "memory" if store == "memory" else f"sqlite://{tmp_path}/t.db"
    [client] = await replicas(
        aiohttp_client, upstream, url, count=1, daily_tokens=10**6, burst={"oauth": 3}
    )
    statuses = [(await client.get(DEALS, headers=AUTH)).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
