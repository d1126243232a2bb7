"""Drift: Pipedrive's own answers disagreeing with the catalogue, seen in live traffic, from a
fake Pipedrive that decides as Pipedrive does (``ScopedPipedrive``): each kind in the log line,
the metric and the report; none where Pipedrive agrees, whatever the credential; a grant the
proxy did not learn is ``grant_mismatch``; and ``report --fail-on drift``."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from proxy.cli import main
from proxy.core.drift import PEEK_BYTES, drift, is_scope_refusal
from proxy.report.html import render_html
from tests.conftest import ProxyFactory, grants, sha
from tests.fakes import SCOPE_MISMATCH, FakeOAuth, FakePipedrive, ScopedPipedrive

FORM = "grant_type=authorization_code&code=abc"
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}
API_TOKEN = "0123456789abcdef0123456789abcdef01234567"


async def learned_token(client: Any) -> dict[str, str]:
    """A token the proxy learns from Pipedrive's own token exchange, through it."""
    exchange = await client.post("/oauth/token", data=FORM, headers=FORM_HEADERS)
    assert exchange.status == 200
    return {"Authorization": f"Bearer {(await exchange.json())['access_token']}"}


async def calls(
    client: Any, auth: dict[str, str], wanted: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """The calls made, and their request events."""
    with capture_logs() as events:
        for method, path in wanted:
            await (await client.request(method, path, headers=auth)).read()
    return [dict(e) for e in events if e["event"] == "request"]


async def drift_metrics(client: Any) -> dict[str, float]:
    text = await (await client.get("/_proxy/metrics")).text()
    found = re.findall(r'^scope_proxy_drift_total\{kind="(\w+)"\} (\S+)$', text, re.MULTILINE)
    # every kind is exported from the start, at 0 (so that an alert sees the first): the ones seen
    return {kind: float(value) for kind, value in found if float(value)}


async def live_drift(client: Any) -> list[dict[str, Any]]:
    report = await (await client.get("/_proxy/report")).json()
    entries: list[dict[str, Any]] = report["overall"]["drift"]
    return entries


@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate", "raw-deflate"])
async def test_too_generous_pipedrive_refused_a_call_the_learned_scopes_cover(
    make_proxy: ProxyFactory, upstream: FakePipedrive, encoding: str
) -> None:
    pipedrive = ScopedPipedrive(FakeOAuth(scope="base,goals:read"),
                                differs={"GET /v1/goals/find": {"admin"}}, encoding=encoding)  # fmt: skip
    upstream.respond = pipedrive.respond
    client = await make_proxy()
    auth = await learned_token(client)
    before = await client.get("/v1/goals/find", headers=auth)
    assert before.status == 403
    sent = None if encoding == "identity" else encoding.removeprefix("raw-")
    assert before.headers.get("Content-Encoding") == sent, "the answer goes on as it came"
    await before.read()
    assert before.headers["X-Scope-Proxy-Decision"] == "allow"
    [event] = await calls(client, auth, [("GET", "/v1/goals/find")])
    assert (event["decision"], event["upstream_status"], event["drift"]) == (
        "allow", 403, "too_generous",
    )  # fmt: skip
    assert await drift_metrics(client) == {"too_generous": 2.0}
    [entry] = await live_drift(client)
    assert {k: entry[k] for k in ("kind", "endpoint", "method", "granted_scopes", "count")} == {
        "kind": "too_generous", "endpoint": "GET /v1/goals/find", "method": "GET",
        "granted_scopes": ["base", "goals:read"], "count": 2,
    }  # fmt: skip
    assert entry["first_seen"] is not None
    assert entry["first_seen"] <= entry["last_seen"]


async def test_a_403_that_is_not_pipedrives_scope_refusal_is_no_drift(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    from aiohttp import web

    async def forbidden(request: web.Request, seen: Any) -> web.StreamResponse:
        if seen.raw_path.startswith("/oauth/"):
            return await FakeOAuth(scope="base,deals:read").respond(request, seen)
        body = b'{"success":false,"error":"You do not have permission to view this deal"}'
        return web.Response(status=403, body=body, content_type="application/json")

    upstream.respond = forbidden
    client = await make_proxy()
    auth = await learned_token(client)
    [event] = await calls(client, auth, [("GET", "/v1/deals/1")])
    assert event["upstream_status"] == 403
    assert "drift" not in event
    assert await drift_metrics(client) == {}


async def test_too_strict_pipedrive_answered_a_call_the_learned_scopes_do_not_cover(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    pipedrive = ScopedPipedrive(
        FakeOAuth(scope="base,contacts:read"),
        differs={"GET /v1/deals/{id}": {"deals:read", "deals:full", "contacts:read"}},
    )
    upstream.respond = pipedrive.respond
    client = await make_proxy(mode="report", app_scopes=["contacts:read", "deals:read"])
    auth = await learned_token(client)
    events = await calls(client, auth, [("GET", "/v1/deals/1"), ("GET", "/v1/persons/2")])
    assert [(e["decision"], e["reason"], e.get("drift")) for e in events] == [
        ("report", "out_of_scope", "too_strict"), ("allow", "in_scope", None),
    ]  # fmt: skip
    report = await (await client.get("/_proxy/report")).json()
    [entry] = report["overall"]["drift"]
    assert (entry["kind"], entry["endpoint"], entry["granted_scopes"]) == (
        "too_strict", "GET /v1/deals/{id}", ["base", "contacts:read"],
    )  # fmt: skip
    # The recommendation there is uncertain, and the scope that succeeded is not called unused.
    assert any("GET /v1/deals/{id}" in w and "uncertain" in w for w in report["warnings"])
    assert "contacts:read" not in report["overall"]["unused_app_scopes"]


async def test_a_refusal_by_the_declared_ceiling_alone_is_no_drift(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    """Pipedrive does not know the app's declared ceiling: it answers what the token holds."""
    upstream.respond = ScopedPipedrive(FakeOAuth(scope="base,deals:read")).respond
    client = await make_proxy(mode="report", app_scopes=["contacts:read"])
    auth = await learned_token(client)
    [event] = await calls(client, auth, [("GET", "/v1/deals/1")])
    assert (event["reason"], event["upstream_status"]) == ("outside_app_scopes", 200)
    assert "drift" not in event


@pytest.mark.parametrize(
    "overrides", [{"mode": "report"}, {"unknown_endpoints": "allow"}], ids=["report", "allow"]
)
async def test_missing_pipedrive_answered_an_endpoint_the_catalogue_does_not_know(
    make_proxy: ProxyFactory, upstream: FakePipedrive, overrides: dict[str, Any]
) -> None:
    pipedrive = ScopedPipedrive(FakeOAuth(scope="base,deals:read"),
                                differs={"GET /v1/brandNewThings/7": {"base"}})  # fmt: skip
    upstream.respond = pipedrive.respond
    client = await make_proxy(**overrides)
    auth = await learned_token(client)
    events = await calls(client, auth, [("GET", "/v1/brandNewThings/7"), ("GET", "/v1/dealz")])
    assert [(e["endpoint"], e["upstream_status"], e.get("drift")) for e in events] == [
        ("GET /v1/brandNewThings/{id}", 200, "missing"),
        ("GET /v1/dealz", 404, None),  # Pipedrive does not know it either: no drift
    ]
    [entry] = await live_drift(client)
    assert (entry["kind"], entry["endpoint"]) == ("missing", "GET /v1/brandNewThings/{id}")


async def test_a_static_grant_pipedrive_refused_is_a_grant_mismatch_not_the_catalogues(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    token = "static-token-for-the-crm-sync"
    # The config says the token holds deals:read; Pipedrive gave it contacts:read only.
    upstream.respond = ScopedPipedrive(held={token: frozenset({"contacts:read"})}).respond
    client = await make_proxy(tokens=[{"name": "crm-sync", "sha256": sha(token),
                                       "scopes": ["deals:read"]}])  # fmt: skip
    [event] = await calls(client, {"Authorization": f"Bearer {token}"}, [("GET", "/v1/deals/1")])
    assert (event["grant"], event["upstream_status"], event["drift"]) == (
        "crm-sync", 403, "grant_mismatch",
    )  # fmt: skip
    [entry] = await live_drift(client)
    assert (entry["kind"], entry["grant"], entry["granted_scopes"]) == (
        "grant_mismatch", "crm-sync", ["deals:read"],
    )  # fmt: skip
    assert await drift_metrics(client) == {"grant_mismatch": 1.0}


async def test_an_assumed_app_scopes_grant_pipedrive_disagreed_with_is_a_grant_mismatch(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    upstream.respond = ScopedPipedrive(held={API_TOKEN: frozenset({"contacts:read"})}).respond
    client = await make_proxy(mode="report", app_scopes=["deals:read"], api_tokens="app_scopes")
    events = await calls(client, {"x-api-token": API_TOKEN},
                         [("GET", "/v1/deals/1"), ("GET", "/v1/persons/1")])  # fmt: skip
    assert [(e["reason"], e["upstream_status"], e.get("drift")) for e in events] == [
        ("in_scope", 403, "grant_mismatch"),  # taken to hold deals:read; Pipedrive refused
        ("out_of_scope", 200, "grant_mismatch"),  # taken not to hold contacts; Pipedrive answered
    ]


async def test_no_drift_where_pipedrive_agrees_whatever_the_credential(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    static, unknown = "static-token-for-the-crm-sync", "a-token-the-proxy-never-learned"
    pipedrive = ScopedPipedrive(
        FakeOAuth(scope="base,deals:read"),
        held={static: frozenset({"deals:read"}), unknown: frozenset({"deals:read"}),
              API_TOKEN: frozenset({"deals:read"})},
    )  # fmt: skip
    upstream.respond = pipedrive.respond
    client = await make_proxy(
        mode="report", app_scopes=["deals:read"], unknown_tokens="app_scopes",
        api_tokens="app_scopes", tokens=grants(**{static: ["deals:read"]}),
    )  # fmt: skip
    wanted = [("GET", "/v1/deals/1"), ("DELETE", "/v1/deals/1"), ("GET", "/v1/persons/1"),
              ("GET", "/api/v2/deals"), ("GET", "/v1/dealz")]  # fmt: skip
    credentials = [await learned_token(client), {"Authorization": f"Bearer {static}"},
                   {"Authorization": f"Bearer {unknown}"}, {"x-api-token": API_TOKEN}]  # fmt: skip
    statuses = set()
    for auth in credentials:
        for event in await calls(client, auth, wanted):
            assert "drift" not in event, event
            statuses.add(event["upstream_status"])
    assert statuses == {200, 403, 404}, "Pipedrive answered, refused, and knew nothing"
    assert await drift_metrics(client) == {}
    assert await live_drift(client) == []


async def test_envoys_check_never_sees_pipedrives_answer_so_never_drifts(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    upstream.respond = ScopedPipedrive(FakeOAuth(scope="base,contacts:read")).respond
    client = await make_proxy(mode="report")
    auth = await learned_token(client)
    events = await calls(client, auth, [("GET", "/_proxy/authz/v1/deals/1"),
                                        ("GET", "/_proxy/authz/v1/brandNewThings")])  # fmt: skip
    assert [(e["via"], e["status"]) for e in events] == [("ext_authz", 200)] * 2
    assert all("drift" not in e for e in events)


LINE = (
    '{{"event": "request", "decision": "{decision}", "reason": "{reason}", "method": "GET", '
    '"endpoint": "{endpoint}", "version": "v1", "token_fp": "aaaaaaaaaaaa", '
    '"accepted_scopes": ["goals:full", "goals:read"], "granted_scopes": ["goals:read"], '
    '"token_cost": 20, {grant}"drift": "{drift}", "timestamp": "{at}"}}\n'
)


def drift_line(drift: str, at: str, grant: str | None = None) -> str:
    return LINE.format(decision="allow", reason="in_scope", endpoint="GET /v1/goals/find",
                       grant=f'"grant": "{grant}", ' if grant else "", drift=drift, at=at)  # fmt: skip


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        ([drift_line("too_generous", "2026-12-01T10:00:00.000001Z")], 1),
        ([drift_line("grant_mismatch", "2026-12-01T10:00:00.000001Z", "crm-sync")], 0),
        ([drift_line("missing", "2026-12-01T10:00:00.000001Z")], 1),
    ],
    ids=["too-generous-fails", "grant-mismatch-never-fails", "missing-fails"],
)
def test_fail_on_drift_from_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], code: int
) -> None:
    log = tmp_path / "decisions.jsonl"
    log.write_text("".join(lines))
    assert main(["report", "--log", str(log), "--fail-on", "drift"]) == code
    assert main(["report", "--log", str(log), "--fail-on", "denied"]) == 0
    capsys.readouterr()
    assert main(["report", "--log", str(log), "--format", "json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)["overall"]["drift"]
    assert entry["count"] == 1


def test_first_and_last_seen_come_from_the_log_lines_and_start_over_at_a_reset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "decisions.jsonl"
    log.write_text(
        drift_line("too_generous", "2026-12-01T09:00:00.000000Z")
        + '{"event": "report_reset", "since": "2026-12-01T10:00:00.000000Z"}\n'
        + drift_line("too_generous", "2026-12-01T10:05:00.000000Z")
        + drift_line("too_generous", "2026-12-01T11:30:00.000000Z")
        + drift_line("too_generous", "2026-12-01T10:45:00.000000Z")
    )
    assert main(["report", "--log", str(log), "--format", "json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)["overall"]["drift"]
    assert (entry["count"], entry["first_seen"], entry["last_seen"]) == (
        3, "2026-12-01T10:05:00.000000Z", "2026-12-01T11:30:00.000000Z",
    )  # fmt: skip
    for format in ("text", "markdown", "junit"):
        assert main(["report", "--log", str(log), "--format", format]) == 0
        shown = capsys.readouterr().out
        assert "GET /v1/goals/find" in shown, format
        assert "too generous" in shown.replace("_", " "), format
    assert main(["report", "--log", str(log), "--format", "json"]) == 0
    page = render_html(json.loads(capsys.readouterr().out))
    assert '<h2 id="drift">Pipedrive disagreed with the catalogue</h2>' in page
    assert "<code>GET /v1/goals/find</code>" in page
    assert "2026-12-01T11:30:00.000000Z" in page


def test_a_refusal_is_recognised_in_the_codings_a_server_uses_and_bounded() -> None:
    assert is_scope_refusal(SCOPE_MISMATCH)
    assert is_scope_refusal(gzip.compress(SCOPE_MISMATCH), "gzip")
    assert is_scope_refusal(zlib.compress(SCOPE_MISMATCH), "Deflate")
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert is_scope_refusal(raw.compress(SCOPE_MISMATCH) + raw.flush(), "deflate")
    assert not is_scope_refusal(b"\x1b" + SCOPE_MISMATCH, "br"), "a coding it cannot read"
    assert not is_scope_refusal(SCOPE_MISMATCH[:60]), "cut short"
    assert not is_scope_refusal(gzip.compress(SCOPE_MISMATCH), None), "compressed, undeclared"
    assert not is_scope_refusal(b'{"success":true,"error":"Scope and URL mismatch"}')
    assert not is_scope_refusal(b'["Scope and URL mismatch"]')
    assert not is_scope_refusal(b"\xff\xfe" + SCOPE_MISMATCH)
    # A bomb: a few KB that would inflate to 100 MB is read no further than PEEK_BYTES.
    bomb = gzip.compress(b'{"error": "' + b" " * 100_000_000)
    assert len(bomb) < PEEK_BYTES * 100
    assert not is_scope_refusal(bomb[:PEEK_BYTES], "gzip")


def test_the_kinds_follow_the_decision_the_status_and_where_the_scopes_came_from() -> None:
    from proxy.core.catalog import api_route, load_catalogue
    from proxy.core.credentials import Credential
    from proxy.core.decision import Grant, Policy, authorize

    catalogue = load_catalogue()

    def decided(path: str, scopes: set[str], source: str, mode: str = "report") -> Any:
        route = api_route(path)
        assert route is not None
        policy = Policy(mode=mode)  # type: ignore[arg-type]
        credential = Credential("oauth", "t" * 40)
        static = Grant(frozenset(scopes), source) if source.startswith("static:") else None
        stored = frozenset(scopes) if source == "store" else None
        return authorize(catalogue, policy, route, "GET", credential, static, stored)

    learned_in, learned_out = (
        decided("/v1/deals/1", {"deals:read"}, "store"),
        decided("/v1/deals/1", {"contacts:read"}, "store"),
    )
    static_in = decided("/v1/deals/1", {"deals:read"}, "static:crm")
    unknown = decided("/v1/brandNewThings", {"deals:read"}, "store")
    assert drift(learned_in, 200, False) is None
    assert drift(learned_in, 403, True) == "too_generous"
    assert drift(learned_in, 403, False) is None  # some other 403
    assert drift(learned_in, 404, False) is None
    assert drift(learned_out, 200, False) == "too_strict"
    assert drift(learned_out, 403, True) is None  # Pipedrive agrees
    assert drift(static_in, 403, True) == "grant_mismatch"
    assert drift(unknown, 201, False) == "missing"
    assert drift(unknown, 404, False) is None
    enforced = decided("/v1/deals/1", {"contacts:read"}, "store", mode="enforce")
    assert drift(enforced, 200, False) is None, "refused, never forwarded: no answer to read"
