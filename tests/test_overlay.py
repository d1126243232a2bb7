"""What Pipedrive changed since its OpenAPI files, as an app meets it through the proxy: the
webhooks scopes (since 2024-01-26) for tokens learned from the OAuth exchange, `check` and
`explain` knowing their names, and the report recommending the narrowest of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.cli import main
from tests.conftest import ProxyFactory, envelope
from tests.fakes import FakeOAuth, FakePipedrive
from tests.processes import write_config

FORM = "grant_type=authorization_code&code=abc"
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}
WEBHOOK_CALLS = (("GET", "/v1/webhooks"), ("POST", "/v1/webhooks"), ("DELETE", "/v1/webhooks/7"))


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        ("base,webhooks:read", {"GET /v1/webhooks"}),
        ("base,webhooks:full", {"GET /v1/webhooks", "POST /v1/webhooks", "DELETE /v1/webhooks/7"}),
        ("base,admin", {"GET /v1/webhooks", "POST /v1/webhooks", "DELETE /v1/webhooks/7"}),
        ("base,deals:full", set()),
    ],
    ids=["webhooks-read-lists-only", "webhooks-full-lists-creates-deletes",
         "admin-still-does-all", "neither-does-any"],
)  # fmt: skip
async def test_webhook_endpoints_for_a_token_learned_from_the_exchange(
    make_proxy: ProxyFactory, upstream: FakePipedrive, scope: str, allowed: set[str]
) -> None:
    upstream.respond = FakeOAuth(scope=scope).respond
    client = await make_proxy()
    exchange = await client.post("/oauth/token", data=FORM, headers=FORM_HEADERS)
    auth = {"Authorization": f"Bearer {(await exchange.json())['access_token']}"}
    forwarded_before = len(upstream.received)
    for method, path in WEBHOOK_CALLS:
        body = b'{"subscription_url": "https://app.example/hook"}' if method == "POST" else None
        response = await client.request(method, path, headers=auth, data=body)
        if f"{method} {path}" in allowed:
            assert response.status == 200, (method, path)
            assert response.headers["X-Scope-Proxy-Decision"] == "allow"
            continue
        assert response.status == 403, (method, path)
        refusal = envelope(await response.read())
        assert refusal["error"] == "Scope and URL mismatch"
        accepted = refusal["scope_proxy"]["accepted_scopes"]
        assert {"webhooks:full", "admin"} <= set(accepted)
        assert ("webhooks:read" in accepted) == (method == "GET")
    forwarded = [f"{r.method} {r.raw_path}" for r in upstream.received[forwarded_before:]]
    assert set(forwarded) == allowed


@pytest.mark.parametrize("scope", ["webhooks:read", "webhooks:full"])
def test_check_and_explain_know_the_webhooks_scopes(
    tmp_path: Path, scope: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, app_scopes=[scope, "deals:read"])
    assert main(["check", "--config", config]) == 0
    assert main(["explain", "GET", "/v1/webhooks", "--scopes", scope]) == 0
    out = capsys.readouterr().out
    assert "decision:        allow (in_scope)" in out
    assert "since 2024-01-26" in out
    assert "developers.pipedrive.com" in out
    creating = main(["explain", "POST", "/v1/webhooks", "--scopes", scope])
    assert creating == (0 if scope == "webhooks:full" else 1)
    assert "unknown scope" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("calls", "recommended"),
    [
        ([("GET", "/v1/webhooks")], ["webhooks:read"]),
        ([("GET", "/v1/webhooks"), ("POST", "/v1/webhooks")], ["webhooks:full"]),
        ([("POST", "/v1/webhooks"), ("DELETE", "/v1/webhooks/3")], ["webhooks:full"]),
    ],
    ids=["a-run-that-lists", "a-run-that-lists-and-creates", "a-run-that-creates-and-deletes"],
)
async def test_the_report_recommends_the_narrowest_webhooks_scope_never_admin(
    make_proxy: ProxyFactory,
    upstream: FakePipedrive,
    calls: list[tuple[str, str]],
    recommended: list[str],
) -> None:
    upstream.respond = FakeOAuth(scope="base,admin").respond
    client = await make_proxy(mode="report", app_scopes=["admin"])
    exchange = await client.post("/oauth/token", data=FORM, headers=FORM_HEADERS)
    auth = {"Authorization": f"Bearer {(await exchange.json())['access_token']}"}
    for method, path in calls:
        assert (await client.request(method, path, headers=auth)).status == 200
    report = await (await client.get("/_proxy/report")).json()
    assert report["overall"]["minimal_scopes"] == recommended
    assert report["overall"]["unused_app_scopes"] == ["admin"]
    assert report["change"] == {"add": recommended, "remove": ["admin"], "replace": []}


def test_report_from_a_log_recommends_the_narrowest_webhooks_scope_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "decisions.jsonl"
    log.write_text(
        '{"event": "startup", "mode": "report", "app_scopes": ["admin"], "store": "memory"}\n'
        '{"event": "request", "decision": "allow", "reason": "in_scope", "method": "POST", '
        '"endpoint": "POST /v1/webhooks", "version": "v1", "token_fp": "3f2a9c1b7d4e", '
        '"accepted_scopes": ["admin", "webhooks:full"], "granted_scopes": ["admin"], '
        '"token_cost": 10}\n'
    )
    assert main(["report", "--log", str(log), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overall"]["minimal_scopes"] == ["webhooks:full"]
