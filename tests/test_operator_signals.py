"""What operators alert on: process and Python metrics, the upstream's latency by API version,
reloads, the token store going and coming back, a revoked token forgotten, each request's
client address, user agent and byte counts, and the running config with its secrets left out."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from proxy.config import load
from proxy.http.app import create_app
from proxy.http.serving import reload
from proxy.http.state import METRICS
from proxy.stores import MemoryStore, StoreError
from proxy.stores.base import Learned
from tests.conftest import (
    AiohttpClient,
    ProxyFactory,
    build_config,
    grants,
    proxy_client,
    raw_request,
    sha,
)
from tests.fakes import FakeClock, FakeOAuth, FakePipedrive
from tests.processes import write_config

TOKENS = grants(reader=["deals:read"])
READER = {"Authorization": "Bearer reader", "User-Agent": "my-app/1.0"}


def samples(metrics: str, name: str) -> dict[str, float]:
    """Each sample of ``name`` by its labels as written."""
    return {
        labels or "": float(value)
        for labels, value in re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", metrics, re.MULTILINE)
    }


async def scrape(client: Any) -> str:
    return str(await (await client.get("/_proxy/metrics")).text())


async def test_process_python_and_upstream_latency_metrics(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(tokens=TOKENS)
    for target in ("/v1/deals/1", "/api/v2/deals/1", "/api/v2/deals/2"):
        assert (await client.get(target, headers=READER)).status == 200
    assert (await client.delete("/v1/deals/1", headers=READER)).status == 403  # not forwarded
    metrics = await scrape(client)
    for name in (
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
        "python_info",
        "python_gc_collections_total",
    ):
        assert samples(metrics, name), name  # fmt: skip
    counts = samples(metrics, "scope_proxy_upstream_duration_seconds_count")
    assert counts == {'{version="v1"}': 1.0, '{version="v2"}': 2.0}


async def test_the_request_line_has_the_client_address_user_agent_and_byte_counts(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy(tokens=grants(writer=["deals:full"]))
    with capture_logs() as events:
        answer = await client.post(
            "/v1/deals", data=b'{"title": "x"}', headers={
                "Authorization": "Bearer writer", "Content-Type": "application/json",
                "User-Agent": "my-app/1.0", "X-Forwarded-For": "203.0.113.9"},
        )  # fmt: skip
        body = await answer.read()
    [event] = [e for e in events if e["event"] == "request"]
    assert event["client_addr"] == "127.0.0.1"  # the socket's peer, not X-Forwarded-For
    assert event["user_agent"] == "my-app/1.0"
    assert (event["bytes_in"], event["bytes_out"]) == (14, len(body))


async def test_reloads_are_counted_with_the_time_of_the_last_that_applied(tmp_path: Path) -> None:
    path = write_config(tmp_path, upstream={"api_url": "http://127.0.0.1:9"})
    config, catalogue = load(path)
    app = create_app(config, catalogue)
    with capture_logs():
        write_config(tmp_path, upstream={"api_url": "http://127.0.0.1:9"}, mode="report")
        reload(app, path, config)
        (tmp_path / "proxy.yaml").write_text("mode: nonsense\n")
        reload(app, path, config)
    metrics = app[METRICS].render().decode()
    assert samples(metrics, "scope_proxy_reloads_total") == {
        '{result="applied"}': 1.0, '{result="failed"}': 1.0,
    }  # fmt: skip
    assert samples(metrics, "scope_proxy_last_reload_success_timestamp_seconds")[""] > 1.7e9


class Unreliable(MemoryStore):
    """The memory store, failing while ``down``."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.down = False

    async def get(self, digest: str) -> Learned | None:
        if self.down:
            raise StoreError("connection refused")
        return await super().get(digest)


async def test_the_store_going_and_coming_back_is_an_event_each_and_a_gauge(
    aiohttp_client: AiohttpClient, upstream: FakePipedrive, clock: FakeClock
) -> None:
    store = Unreliable(clock)
    config, catalogue = build_config(upstream.url)
    client = await proxy_client(aiohttp_client, create_app(config, catalogue, store, clock))
    auth = {"Authorization": "Bearer learned-somewhere"}
    with capture_logs() as events:
        await client.get("/v1/deals", headers=auth)
        store.down = True
        for _ in range(3):
            assert (await client.get("/v1/deals", headers=auth)).status == 503
        down = samples(await scrape(client), "scope_proxy_store_up")[""]
        store.down = False
        await client.get("/v1/deals", headers=auth)
        up = samples(await scrape(client), "scope_proxy_store_up")[""]
    said = [e["event"] for e in events if e["event"] in ("store_unreachable", "store_back")]
    assert said == ["store_unreachable", "store_back"]  # once each, not per request
    assert (down, up) == (0.0, 1.0)


async def test_a_revoked_token_is_forgotten_with_an_event(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    oauth = FakeOAuth(scope="base,deals:read")
    upstream.respond = oauth.respond
    client = await make_proxy()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    issued = await client.post(
        "/oauth/token", data="grant_type=authorization_code&code=a", headers=form
    )
    token = (await issued.json())["access_token"]
    with capture_logs() as events:
        await client.post("/oauth/revoke", data=f"token={token}", headers=form)
    [forgotten] = [e for e in events if e["event"] == "token_forgotten"]
    assert forgotten["token_fp"] == sha(token)[:12]
    assert (
        await client.get("/v1/deals", headers={"Authorization": f"Bearer {token}"})
    ).status == 401


async def test_the_running_config_with_its_secrets_left_out(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(
        tokens=grants(reader=["deals:read"]), app_scopes=["deals:read"], warmup=60,
        upstream={"proxy": "http://ops:hunter2@egress:3128"},
    )  # fmt: skip
    shown = await (await client.get("/_proxy/config")).json()
    text = str(shown)
    assert "hunter2" not in text
    assert sha("reader") not in text  # a fingerprint, never the digest
    assert shown["tokens"] == [{"name": "reader", "token_fp": sha("reader")[:12],
                                "scopes": ["deals:read"], "company": None}]  # fmt: skip
    assert shown["upstream"]["proxy"] == "http://ops:***@egress:3128"
    assert (shown["warmup"], shown["mode"]) == (60.0, "enforce")
    assert shown["catalogue"].count(".") >= 1
    assert set(shown["egress"].values()) == {"http://egress:3128"}  # whichever set it, no password
    assert set(shown) >= {"listen", "admin_listen", "limits", "store", "from_environment"}


async def test_a_request_the_parser_refuses_is_logged_with_its_address_and_answer_size(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy()
    with capture_logs() as events:
        status, _, body = await raw_request(
            client, b"GET /v1/deals HTTP/1.1\r\nHost: p\r\nX-Bad: a\x01b\r\n\r\n"
        )
    assert status == 400
    [event] = [e for e in events if e["event"] == "request"]
    assert (event["reason"], event["client_addr"]) == ("malformed_request", "127.0.0.1")
    assert event["bytes_out"] == len(body) > 0


def test_every_labelled_counter_an_alert_watches_starts_at_zero() -> None:
    """increase() needs a series before its first increment: a fresh proxy exports them."""
    from proxy.http.metrics import Metrics

    metrics = Metrics().render().decode()
    assert samples(metrics, "scope_proxy_reloads_total") == {
        '{result="applied"}': 0.0, '{result="failed"}': 0.0,
    }  # fmt: skip
    assert set(samples(metrics, "scope_proxy_drift_total").values()) == {0.0}
    assert len(samples(metrics, "scope_proxy_drift_total")) == 4
    assert len(samples(metrics, "scope_proxy_lifecycle_calls_total")) == 3
