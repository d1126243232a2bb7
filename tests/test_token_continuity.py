"""Tokens across restarts and rollouts.

Pipedrive has no token introspection: the proxy knows a token's scopes only from an exchange
it saw. A proxy that lost them (a memory store restarted, the first rollout in front of an
existing app) answers 401 to the app's tokens until the app refreshes them through it. What
gets an app through: the 401 saying how, an app that refreshes on a 401 recovering with one
refresh, a warm-up that takes unknown tokens to hold the declared scopes for a bounded time,
a store that survives a restart, and a count of the tokens still unknown.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from proxy.config import ConfigError, load_config
from proxy.core.credentials import token_digest
from proxy.http.state import STORE
from tests.conftest import ProxyFactory, free_port
from tests.fakes import FakeClock, FakeOAuth, FakePipedrive
from tests.processes import ROOT, serving, wait_ready, write_config

APP_SCOPES = ["deals:read"]
DEPLOY_SIDECAR = ROOT / "deploy" / "kubernetes" / "sidecar"


def gauge(metrics: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    assert found is not None, name
    return float(found[1])


async def unknown_count(client: TestClient[Any, Any]) -> tuple[float, int]:
    metrics = await (await client.get("/_proxy/metrics")).text()
    report = await (await client.get("/_proxy/report")).json()
    return gauge(metrics, "scope_proxy_unknown_tokens"), report["unknown_tokens"]


async def test_the_401_for_an_unknown_token_says_what_lets_it_through(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy()
    response = await client.get("/v1/deals", headers={"Authorization": "Bearer lost-in-a-restart"})
    assert response.status == 401
    body = await response.json()
    assert body["error"] == "unauthorized access"  # Pipedrive's words, as ever
    detail = body["scope_proxy"]["detail"]
    assert "refresh the token through the proxy (POST /oauth/token)" in detail
    assert "warmup" in detail


async def test_an_app_that_refreshes_on_a_401_recovers_with_one_refresh(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    """As the official Node client can be set to: on a 401, refresh the token and try again."""
    oauth = FakeOAuth(scope="base,deals:read")
    upstream.respond = oauth.respond
    client = await make_proxy()
    token, refreshes, answers = "held-before-the-restart", 0, []
    for _ in range(3):  # the app's loop: call; on a 401 refresh and call again
        response = await client.get("/v1/deals", headers={"Authorization": f"Bearer {token}"})
        answers.append(response.status)
        if response.status != 401:
            break
        refreshes += 1
        refreshed = await client.post(
            "/oauth/token", data="grant_type=refresh_token&refresh_token=1%3A1%3Aabc",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        token = (await refreshed.json())["access_token"]
    assert (answers, refreshes) == ([401, 200], 1)


async def test_the_warm_up_lets_unknown_tokens_hold_the_declared_scopes_then_closes(
    make_proxy: ProxyFactory, clock: FakeClock
) -> None:
    client = await make_proxy(app_scopes=APP_SCOPES, warmup=600)
    auth = {"Authorization": "Bearer known-to-the-app-not-to-the-proxy"}
    read = await client.get("/v1/deals/1", headers=auth)
    assert read.status == 200  # within the declared scopes
    write = await client.delete("/v1/deals/1", headers=auth)
    assert write.status == 403  # beyond them: refused as ever
    assert (await write.json())["scope_proxy"]["granted_scopes"] == ["deals:read"]
    clock.advance(599)
    assert (await client.get("/v1/deals/1", headers=auth)).status == 200
    clock.advance(2)
    assert (await client.get("/v1/deals/1", headers=auth)).status == 401  # the window closed


async def test_without_a_warm_up_an_unknown_token_is_refused_from_the_start(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy(app_scopes=APP_SCOPES)
    auth = {"Authorization": "Bearer known-to-the-app-not-to-the-proxy"}
    assert (await client.get("/v1/deals/1", headers=auth)).status == 401


def test_a_warm_up_is_one_token_lifetime_by_default_and_needs_the_declared_scopes(
    tmp_path: Path,
) -> None:
    assert load_config(write_config(tmp_path, app_scopes=APP_SCOPES, warmup=True)).warmup == 3600
    assert load_config(write_config(tmp_path, app_scopes=APP_SCOPES, warmup=90)).warmup == 90
    assert load_config(write_config(tmp_path, app_scopes=APP_SCOPES)).warmup == 0
    with pytest.raises(ConfigError, match=r"^warmup: "):
        load_config(write_config(tmp_path, warmup=True))


async def test_the_tokens_still_unknown_are_counted_in_the_metric_and_the_report(
    make_proxy: ProxyFactory, clock: FakeClock
) -> None:
    client = await make_proxy(app_scopes=APP_SCOPES, warmup=600)
    for name in ("one", "two", "three"):
        for _ in range(2):
            await client.get("/v1/deals", headers={"Authorization": f"Bearer {name}"})
    assert await unknown_count(client) == (3.0, 3)
    # one of them is learned (here, or by another replica sharing the store)
    await client.app[STORE].put(token_digest("two"), frozenset({"deals:read"}), clock() + 3600)
    await client.get("/v1/deals", headers={"Authorization": "Bearer two"})
    assert await unknown_count(client) == (2.0, 2)
    clock.advance(3601)  # not seen for an hour: no longer counted
    assert await unknown_count(client) == (0.0, 0)


@pytest.mark.slow
async def test_a_sidecar_restarted_with_the_shipped_store_keeps_every_learned_token(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    """The Kubernetes sidecar's store, SQLite on the pod's volume: a container restart (an OOM
    kill, a crash) keeps what was learned."""
    shipped = load_config(str(DEPLOY_SIDECAR / "proxy.yaml"), read_tokens=False)
    assert shipped.store.kind == "sqlite"
    oauth = FakeOAuth(scope="base,deals:read")
    upstream.respond = oauth.respond
    path = write_config(tmp_path, store=f"sqlite://{tmp_path}/tokens.db",
                        upstream={"api_url": upstream.url, "oauth_url": upstream.url})  # fmt: skip
    port = free_port()

    async with aiohttp.ClientSession() as session:
        with serving(path, port):
            await wait_ready(port)
            tokens = []
            for _ in range(3):
                async with session.post(
                    f"http://127.0.0.1:{port}/oauth/token",
                    data="grant_type=authorization_code&code=abc",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                ) as answer:
                    tokens.append((await answer.json())["access_token"])
        with serving(path, port):  # the container, restarted
            await wait_ready(port)
            statuses = []
            for token in tokens:
                async with session.get(
                    f"http://127.0.0.1:{port}/v1/deals",
                    headers={"Authorization": f"Bearer {token}"},
                ) as answer:
                    statuses.append(answer.status)
    assert statuses == [200, 200, 200]
