"""Learning tokens from the OAuth exchange, against every store: memory, SQLite and a real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.config import StoreUrl
from proxy.core.catalog import Route
from proxy.core.credentials import Credential
from proxy.core.decision import Decision
from proxy.core.reasons import Reason
from proxy.http.app import create_app
from proxy.http.recorder import COMPACT_SECONDS, Recorder, compacted
from proxy.report.model import UNKNOWN_PAIRS, UNKNOWN_SHAPES, Call, build_report, seen_key
from proxy.stores import CachedStore, MemoryStore, RedisStore, SqliteStore, StoreError, open_store
from proxy.stores.base import Fold, TokenStore
from tests.conftest import (
    CATALOGUE,
    ProxyFactory,
    RedisServer,
    build_config,
    envelope,
    grants,
    proxy_client,
    sha,
)
from tests.fakes import FakeClock, FakeOAuth, FakePipedrive

BASIC = {"Authorization": "Basic Y2xpZW50OnNlY3JldA=="}  # client:secret, as the Node client sends


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.slow)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/tokens.db"
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    return "memory"


async def exchange(
    client: TestClient[Any, Any], form: str = "grant_type=authorization_code&code=abc"
) -> Any:
    response = await client.post(
        "/oauth/token",
        data=form,
        headers={**BASIC, "Content-Type": "application/x-www-form-urlencoded"},
    )
    return response


async def test_store_protocol(store_url: str) -> None:
    store = open_store(StoreUrl(store_url))
    try:
        await store.ping()  # usable: no StoreError
        assert await store.get(sha("unknown")) is None
        await store.put(sha("a"), frozenset({"deals:read", "base"}), 4_000_000_000)
        learned = await store.get(sha("a"))
        assert learned is not None
        assert learned.scopes == {"deals:read", "base"}
        assert learned.expires_at == pytest.approx(4_000_000_000, abs=1)
        await store.put(sha("old"), frozenset({"admin"}), 1.0)  # already expired
        assert await store.get(sha("old")) is None
        await store.forget(sha("a"))
        assert await store.get(sha("a")) is None
    finally:
        await store.close()


async def test_learned_token_is_allowed_and_refused_exactly_by_its_scopes(
    store_url: str, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    oauth = FakeOAuth(scope="base,deals:read,contacts:full")
    upstream.respond = oauth.respond
    client = await make_proxy(store=store_url)
    response = await exchange(client)
    assert response.status == 200
    token = (await response.json())["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    upstream.respond = None
    assert (await client.get("/v1/deals/1", headers=auth)).status == 200
    assert (await client.post("/api/v2/persons", headers=auth, json={})).status == 200
    refused = await client.delete("/v1/deals/1", headers=auth)
    assert refused.status == 403
    assert envelope(await refused.read())["scope_proxy"]["granted_scopes"] == [
        "base", "contacts:full", "deals:read",
    ]  # fmt: skip
    assert [r.raw_path for r in upstream.received] == [
        "/oauth/token",
        "/v1/deals/1",
        "/api/v2/persons",
    ]


async def test_refresh_teaches_the_new_token_and_expiry_ends_it(
    store_url: str, make_proxy: ProxyFactory, upstream: FakePipedrive, clock: FakeClock
) -> None:
    oauth = FakeOAuth(scope="deals:full", expires_in=1)
    upstream.respond = oauth.respond
    client = await make_proxy(store=store_url)
    await exchange(client)
    refreshed = await exchange(client, "grant_type=refresh_token&refresh_token=1:1:abc")
    new_token = (await refreshed.json())["access_token"]
    upstream.respond = None
    auth = {"Authorization": f"Bearer {new_token}"}
    assert (await client.delete("/v1/deals/3", headers=auth)).status == 200
    clock.advance(1.3)  # expires_in elapses
    expired = await client.delete("/v1/deals/3", headers=auth)
    assert expired.status == 401
    assert envelope(await expired.read())["scope_proxy"]["reason"] == "unknown_token"


async def test_revoke_forgets_the_token(
    store_url: str, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    oauth = FakeOAuth()
    upstream.respond = oauth.respond
    client = await make_proxy(store=store_url)
    token = (await (await exchange(client)).json())["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/v1/deals", headers=auth)).status == 200
    revoked = await client.post(
        "/oauth/revoke", data=f"token={token}&token_type_hint=access_token", headers=BASIC
    )
    assert revoked.status == 200
    assert (await client.get("/v1/deals", headers=auth)).status == 401


async def test_failed_exchange_teaches_nothing_and_passes_through(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    upstream.respond = FakeOAuth().respond
    client = await make_proxy()
    response = await exchange(client, "grant_type=authorization_code&code=spent")
    assert response.status == 400
    assert await response.json() == {"success": False, "message": "Invalid grant"}
    metrics = await (await client.get("/_proxy/metrics")).text()
    assert "scope_proxy_tokens_learned_total 0.0" in metrics


async def test_exchange_reaches_the_oauth_server_unchanged(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    upstream.respond = FakeOAuth().respond
    client = await make_proxy()
    form = "grant_type=authorization_code&code=abc&redirect_uri=https%3A%2F%2Fapp.example%2Fcb"
    await exchange(client, form)
    [seen] = upstream.received
    assert (seen.method, seen.raw_path, seen.body.decode()) == ("POST", "/oauth/token", form)
    assert seen.header("Authorization") == [BASIC["Authorization"]]
    assert seen.header("Content-Type") == ["application/x-www-form-urlencoded"]


async def test_api_domain_points_at_the_proxy_and_nothing_else_changes(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    oauth = FakeOAuth()
    upstream.respond = oauth.respond
    client = await make_proxy()
    response = await exchange(client)
    body = await response.json()
    assert body["api_domain"] == f"http://{client.host}:{client.port}"
    assert body["scope"] == "base,deals:read"
    assert response.headers["x-correlation-id"] == "oauth-1"
    raw = await response.read()
    assert raw.startswith(b'{"access_token":"v1u:')  # original formatting kept

    public = await make_proxy(public_url="https://scope-proxy.internal:8443")
    assert (await (await exchange(public)).json())[
        "api_domain"
    ] == "https://scope-proxy.internal:8443"
    untouched = await make_proxy(rewrite_api_domain=False)
    assert (await (await exchange(untouched)).json())["api_domain"] == "https://acme.pipedrive.com"


async def test_compressed_token_response_is_still_learned(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    oauth = FakeOAuth(scope="deals:read", encoding="gzip")
    upstream.respond = oauth.respond
    client = await make_proxy()
    body = await (await exchange(client)).json()
    upstream.respond = None
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await client.get("/v1/deals", headers=auth)).status == 200


async def test_sqlite_survives_a_restart_and_holds_no_raw_token(
    tmp_path: Path, upstream: FakePipedrive, aiohttp_client: Any
) -> None:
    database = tmp_path / "tokens.db"
    upstream.respond = FakeOAuth(scope="deals:read").respond
    config, catalogue = build_config(upstream.url, store=f"sqlite://{database}")
    first = await proxy_client(aiohttp_client, create_app(config, catalogue))
    token = (await (await exchange(first)).json())["access_token"]
    await first.close()
    upstream.respond = None
    second = await proxy_client(aiohttp_client, create_app(config, catalogue))
    assert (
        await second.get("/v1/deals", headers={"Authorization": f"Bearer {token}"})
    ).status == 200
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("tokens.db"))
    assert sha(token).encode() in stored
    assert token.encode() not in stored
    assert token.split(":")[1].encode() not in stored


async def test_redis_down_fails_closed_keeps_static_grants_and_recovers(
    redis_server: RedisServer, upstream: FakePipedrive, aiohttp_client: Any
) -> None:
    upstream.respond = FakeOAuth(scope="deals:read").respond
    config, catalogue = build_config(
        upstream.url, store=redis_server.url, tokens=grants(static=["deals:read"])
    )
    learner = await proxy_client(aiohttp_client, create_app(config, catalogue))
    token = (await (await exchange(learner)).json())["access_token"]
    upstream.respond = None
    other = await proxy_client(
        aiohttp_client, create_app(config, catalogue)
    )  # a replica with a cold cache
    auth = {"Authorization": f"Bearer {token}"}
    assert (await other.get("/v1/deals", headers=auth)).status == 200  # learned through another app

    redis_server.stop()
    upstream.received.clear()
    fresh = await proxy_client(aiohttp_client, create_app(config, catalogue))
    refused = await fresh.get("/v1/deals", headers=auth)
    assert refused.status == 503
    assert envelope(await refused.read())["error"].startswith("token store unavailable")
    assert upstream.received == [], "nothing is forwarded while the store is down"
    assert (await fresh.get("/_proxy/ready")).status == 503
    assert (await fresh.get("/v1/deals", headers={"Authorization": "Bearer static"})).status == 200
    metrics = await (await fresh.get("/_proxy/metrics")).text()
    assert 'scope_proxy_store_errors_total{operation="get"} 1.0' in metrics

    redis_server.start()  # same port; the data is gone, the proxy reconnects by itself
    assert (await fresh.get("/_proxy/ready")).status == 200
    upstream.respond = FakeOAuth(scope="deals:read").respond
    again = (await (await exchange(fresh)).json())["access_token"]
    upstream.respond = None
    assert (
        await fresh.get("/v1/deals", headers={"Authorization": f"Bearer {again}"})
    ).status == 200


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_unusable_store_raises_store_error(kind: str, tmp_path: Path) -> None:
    store: TokenStore
    if kind == "sqlite":
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        store = SqliteStore(str(blocker / "tokens.db"))
    else:
        store = RedisStore("redis://127.0.0.1:1/0", timeout=0.2)
    with pytest.raises(StoreError):
        await store.get(sha("x"))
    with pytest.raises(StoreError) as unusable:
        await store.ping()
    assert str(unusable.value).startswith(("sqlite ", "redis://127.0.0.1:1/0: ")), unusable.value
    await store.close()


async def test_cache_serves_known_tokens_without_the_backend_and_never_past_expiry() -> None:
    backend = MemoryStore()
    cache = CachedStore(backend, ttl=60)
    await cache.put(sha("t"), frozenset({"deals:read"}), 4_000_000_000)
    await backend.forget(sha("t"))  # gone from the backend: the cache still answers
    assert await cache.get(sha("t")) is not None
    await cache.put(sha("short"), frozenset({"deals:read"}), 1.0)
    assert await cache.get(sha("short")) is None


async def test_oversized_oauth_request_is_refused_before_the_oauth_server(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy()
    response = await client.post("/oauth/token", data=b"x" * (300 * 1024), headers=BASIC)
    assert response.status == 413
    assert envelope(await response.read())["scope_proxy"]["reason"] == "request_too_large"
    assert upstream.received == []


def call_key(fp: str, path: str = "/v1/deals/{id}") -> str:
    return Call(fp, "GET", "v1", f"GET {path}", "allow", "in_scope", ("deals:read",), 2).key()


async def test_a_storm_of_tokens_is_folded_into_other_keeping_the_busiest(store_url: str) -> None:
    store = open_store(StoreUrl(store_url))
    try:
        counts = {call_key(f"{n:012x}"): n + 1 for n in range(30)}
        counts[call_key(f"{29:012x}", "/v1/deals")] = 7
        await store.add_calls(counts)
        await store.compact_calls(lambda counts: compacted(counts, 5))
        after = await store.call_counts()
        kept = {key.partition("\t")[0] for key in after}
        assert kept == {f"{n:012x}" for n in range(25, 30)} | {"other"}
        assert sum(after.values()) == sum(counts.values()), "no call is lost, only folded"
        assert after[call_key("other")] == sum(range(1, 26))
        await store.compact_calls(lambda counts: compacted(counts, 5))  # changes nothing now
        assert await store.call_counts() == after
    finally:
        await store.close()


def counted(decision: Decision) -> Call:
    call = Call.of(decision)
    assert call is not None
    return call


async def test_the_recorder_bounds_what_it_stores_and_the_busy_token_stays(store_url: str) -> None:
    store = open_store(StoreUrl(store_url))
    recorder = Recorder(store, shown_tokens=2)  # the store keeps 20 tokens at most
    try:
        endpoint = CATALOGUE.match(Route("v1", ("deals",)), "GET")
        busy = Decision(
            "allow", Reason.IN_SCOPE, "GET", "v1", endpoint, Credential("oauth", "b" * 64)
        )
        for n in range(500):  # random tokens, one call each, as unknown_tokens: app_scopes allows
            recorder.record(counted(busy._replace(credential=Credential("oauth", f"{n:064x}"))))
            recorder.record(counted(busy))
            if n % 100 == 99:
                await recorder.flush()
        calls = await recorder.calls()
        tokens = {call.token_fp for call in calls}
        assert len(tokens) <= 21
        assert "b" * 12 in tokens
        assert sum(calls.values()) == 1000
    finally:
        await store.close()


async def test_the_recorder_bounds_the_unknown_paths_it_stores(store_url: str) -> None:
    store = open_store(StoreUrl(store_url))
    recorder = Recorder(store, shown_tokens=2)
    try:
        token = Credential("oauth", "c" * 64)
        unknown = Decision("deny", Reason.UNKNOWN_ENDPOINT, "GET", "v1", credential=token)
        for n in range(3_000):  # one token, a new made-up path every call
            recorder.record(counted(unknown._replace(shape=f"GET /v1/made/up{n % 26 * 'x'}{n}")))
            recorder.record(counted(unknown._replace(shape="GET /v1/dealz")))  # the app's typo
            if n % 250 == 249:
                await recorder.flush()
        stored = await store.call_counts()
        assert len(stored) <= 2 * UNKNOWN_PAIRS  # compacted each time as many more were added
        calls = await recorder.calls()
        assert sum(calls.values()) == 6_000, "no call is lost, only folded"
        report = build_report(calls, None)
        named = {e["endpoint"] for e in report["overall"]["endpoints"]}
        assert len(named) == UNKNOWN_SHAPES + 1
        assert {"GET /v1/dealz", "GET /v1/(other unknown paths)"} <= named
        dealz = next(e for e in report["overall"]["endpoints"] if e["endpoint"] == "GET /v1/dealz")
        assert dealz["count"] == 3_000, "the busy typo keeps its name and its count"
    finally:
        await store.close()


class CountingStore(MemoryStore):
    """The memory store, noting each compaction."""

    def __init__(self) -> None:
        super().__init__()
        self.compactions = 0

    async def compact_calls(self, fold: Fold) -> None:
        self.compactions += 1
        await super().compact_calls(fold)


async def test_names_past_the_bounds_are_folded_as_counted_and_compaction_waits() -> None:
    """A flood is bounded as it is counted, at no cost that grows with the store; the
    compaction that reads the whole store comes at most every COMPACT_SECONDS."""
    store, now = CountingStore(), [0.0]
    recorder = Recorder(store, shown_tokens=2, clock=lambda: now[0])  # 20 tokens named
    endpoint = CATALOGUE.match(Route("v1", ("deals",)), "GET")
    allowed = Decision(
        "allow", Reason.IN_SCOPE, "GET", "v1", endpoint, Credential("oauth", "a" * 64)
    )
    unknown = Decision(
        "deny", Reason.UNKNOWN_ENDPOINT, "GET", "v1", credential=Credential("oauth", "b" * 64)
    )
    for n in range(5_000):
        recorder.record(counted(allowed._replace(credential=Credential("oauth", f"{n:064x}"))))
        recorder.record(counted(unknown._replace(shape=f"GET /v1/made/up{n}")))
        if n % 500 == 499:
            await recorder.flush()
    stored = await store.call_counts()
    assert store.compactions == 0, "no compaction before COMPACT_SECONDS"
    assert len({key.partition("\t")[0] for key in stored}) <= 20 + 1  # and "other"
    assert sum('"unknown_endpoint"' in key for key in stored) <= UNKNOWN_SHAPES + 1
    assert sum(stored.values()) == 10_000, "no call is lost, only folded"
    now[0] = COMPACT_SECONDS + 1
    recorder.record(counted(allowed))
    await recorder.flush()
    assert store.compactions == 1
    recorder.record(counted(allowed))
    await recorder.flush()
    assert store.compactions == 1, "not again before COMPACT_SECONDS more"


async def test_the_memory_store_folds_off_the_event_loop_and_keeps_what_came_meanwhile() -> None:
    store = MemoryStore()
    await store.add_calls({call_key(f"{n:012x}"): 1 for n in range(30)})
    seen: list[bool] = []

    def fold(counts: Mapping[str, int]) -> dict[str, int]:
        seen.append(threading.current_thread() is threading.main_thread())
        return compacted(counts, 5) or dict(counts)

    compacting = asyncio.ensure_future(store.compact_calls(fold))
    await asyncio.sleep(0)
    await store.add_calls({call_key("f" * 12): 7})  # while the fold runs
    await compacting
    after = await store.call_counts()
    assert seen == [False]
    assert after[call_key("f" * 12)] == 7
    assert sum(after.values()) == 30 + 7


async def test_drift_sightings_keep_the_earliest_first_and_the_latest_last(store_url: str) -> None:
    """Replicas add their sightings in any order; a reset starts them over."""
    store = open_store(StoreUrl(store_url))
    try:
        key = "too_generous\tGET /v1/goals/find"
        await store.add_seen({key: ("2026-12-01T10:00:00.000000Z", "2026-12-01T10:05:00.000000Z")})
        await store.add_seen({key: ("2026-12-01T09:59:00.000000Z", "2026-12-01T10:01:00.000000Z"),
                              "missing\tGET /v1/x": ("2026-12-01T11:00:00.000000Z",) * 2})  # fmt: skip
        assert await store.seen_times() == {
            key: ("2026-12-01T09:59:00.000000Z", "2026-12-01T10:05:00.000000Z"),
            "missing\tGET /v1/x": ("2026-12-01T11:00:00.000000Z",) * 2,
        }
        await store.forget_seen(["missing\tGET /v1/x", "never\tseen"])
        assert set(await store.seen_times()) == {key}
        await store.reset_calls()
        assert await store.seen_times() == {}
    finally:
        await store.close()


async def test_the_recorder_forgets_the_sightings_of_drifts_a_compaction_folded() -> None:
    """A flood of made-up paths that Pipedrive answers leaves no more sightings than names."""
    store, now = CountingStore(), [0.0]
    recorder = Recorder(store, shown_tokens=2, clock=lambda: now[0])
    found = Decision("allow", Reason.UNKNOWN_ENDPOINT_ALLOWED, "GET", "v1",
                     credential=Credential("oauth", "b" * 64))  # fmt: skip
    for n in range(3 * UNKNOWN_SHAPES):
        call = counted(found._replace(shape=f"GET /v1/made/up{n}"))
        recorder.record(dataclasses.replace(call, drift="missing"), f"2026-12-01T10:{n // 60:02}Z")
        if n % 50 == 49:
            await recorder.flush()
            now[0] += COMPACT_SECONDS + 1  # a compaction may come at every flush
    assert store.compactions >= 1
    named = {seen_key(c.drift, c.endpoint) for c in await recorder.calls() if c.drift}
    sightings = await store.seen_times()
    assert set(sightings) <= named
    assert len(sightings) <= 2 * UNKNOWN_SHAPES
    report = build_report(await recorder.calls(), None, seen=sightings)
    assert sum(e["count"] for e in report["overall"]["drift"]) == 3 * UNKNOWN_SHAPES
    assert all(e["first_seen"] for e in report["overall"]["drift"]), "every entry is dated"


async def test_each_store_keeps_the_company_a_token_belongs_to(store_url: str) -> None:
    store = open_store(StoreUrl(store_url))
    try:
        await store.put(sha("c"), frozenset({"deals:read"}), 4_000_000_000, "acme.pipedrive.com")
        await store.put(sha("n"), frozenset({"deals:read"}), 4_000_000_000)
        with_company, without = await store.get(sha("c")), await store.get(sha("n"))
        assert with_company is not None
        assert without is not None
        assert (with_company.company, without.company) == ("acme.pipedrive.com", None)
    finally:
        await store.close()


def test_a_redis_value_an_earlier_version_wrote_reads_as_no_known_company() -> None:
    from proxy.stores.redis import read_token_value, token_value

    old = read_token_value("4000000000.000 base,deals:read")
    assert (old.scopes, old.expires_at, old.company) == (
        frozenset({"base", "deals:read"}),
        4e9,
        None,
    )
    new = read_token_value(token_value(frozenset({"deals:read"}), 4e9, "acme.pipedrive.com"))
    assert (new.scopes, new.company) == (frozenset({"deals:read"}), "acme.pipedrive.com")


async def test_a_sqlite_file_an_earlier_version_made_gains_the_company_and_keeps_its_tokens(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "tokens.db"
    with sqlite3.connect(path) as db:  # the first schema, with a learned token in it
        db.execute("CREATE TABLE tokens (digest TEXT PRIMARY KEY, scopes TEXT NOT NULL, "
                   "expires_at REAL NOT NULL)")  # fmt: skip
        db.execute("INSERT INTO tokens VALUES (?, ?, ?)", (sha("old"), "deals:read", 4e9))
    store = open_store(StoreUrl(f"sqlite://{path}"))
    try:
        old = await store.get(sha("old"))
        assert old is not None
        assert (old.scopes, old.company) == (frozenset({"deals:read"}), None)
        await store.put(sha("new"), frozenset({"deals:read"}), 4e9, "acme.pipedrive.com")
        new = await store.get(sha("new"))
        assert new is not None
        assert new.company == "acme.pipedrive.com"
    finally:
        await store.close()
