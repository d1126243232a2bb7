"""The proxy as an app would use it: routes, policies, responses, log events and metrics."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from proxy.report.model import build_report
from proxy.report.replay import calls_from_log
from tests.conftest import ProxyFactory, envelope, grants, raw_request, sha
from tests.fakes import FakePipedrive, Received

TOKEN = "v1u:AQIBAHj+LzTNK2yuuuaLqifzhWb9crUNKTpk4FlQ9rjnXqp/6AAAAAA=:secret-part-1234"
CONTRACT_FIELDS = {
    "decision", "reason", "method", "endpoint", "version", "status", "upstream_status",
    "duration_ms", "token_fp", "accepted_scopes", "granted_scopes", "token_cost",
    "grant", "request_id", "correlation_id",
}  # fmt: skip


async def test_v1_and_v2_decide_differently_where_pipedrive_does(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=grants(activities=["activities:read"]))
    auth = {"Authorization": "Bearer activities"}
    v1 = await client.get("/v1/activityFields", headers=auth)
    api_v1 = await client.get("/api/v1/activityFields", headers=auth)
    v2 = await client.get("/api/v2/activityFields", headers=auth)
    assert (v1.status, api_v1.status, v2.status) == (200, 200, 403)
    assert envelope(await v2.read())["scope_proxy"]["accepted_scopes"] == ["admin"]
    assert [r.raw_path for r in upstream.received] == [
        "/v1/activityFields",
        "/api/v1/activityFields",
    ]


@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [
        ("GET", "/v2/deals", 404, "not_found"),
        ("GET", "/", 404, "not_found"),
        ("GET", "/_proxy/nothing", 404, "not_found"),
        ("GET", "/oauth/token", 405, "method_not_allowed"),
        ("OPTIONS", "/v1/deals", 405, "method_not_allowed"),
        ("GET", "/v1/noSuchThing", 404, "unknown_endpoint"),
        ("GET", "/api/v2/deals/1/noSuchThing", 404, "unknown_endpoint"),
        ("PATCH", "/v1/deals/1", 404, "unknown_endpoint"),
    ],
)
async def test_paths_outside_the_api_are_never_forwarded(
    method: str, path: str, status: int, reason: str, make_proxy: ProxyFactory,
    upstream: FakePipedrive,
) -> None:  # fmt: skip
    client = await make_proxy(tokens=grants(ops=["admin"]))
    response = await client.request(method, path, headers={"Authorization": "Bearer ops"})
    assert response.status == status
    body = envelope(await response.read())
    assert (body["success"], body["errorCode"], body["scope_proxy"]["reason"]) == (
        False, status, reason,
    )  # fmt: skip
    assert response.headers["X-Scope-Proxy-Decision"] == "deny"
    assert response.headers["Content-Type"] == "application/json"
    assert upstream.received == []


async def test_401_is_pipedrives_unauthorized_envelope(make_proxy: ProxyFactory) -> None:
    client = await make_proxy()
    for headers in ({}, {"Authorization": "Bearer nobody-knows-me"}):
        response = await client.get("/v1/deals", headers=headers)
        assert response.status == 401
        body = envelope(await response.read())
        assert (body["success"], body["error"], body["errorCode"]) == (
            False, "unauthorized access", 401,
        )  # fmt: skip
        assert response.headers["X-Scope-Proxy-Decision"] == "deny"


async def test_personal_api_tokens_are_refused_by_default_and_say_why(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy()
    response = await client.get("/v1/deals", headers={"x-api-token": "a" * 40})
    assert response.status == 403
    body = envelope(await response.read())
    assert "not scoped" in body["error"]
    assert body["scope_proxy"]["reason"] == "api_token_not_scoped"
    assert upstream.received == []


async def test_staging_setup_treats_api_tokens_and_unknown_tokens_as_the_app(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(
        app_scopes=["deals:read"], api_tokens="app_scopes", unknown_tokens="app_scopes"
    )
    assert (await client.get("/v1/deals?api_token=" + "b" * 40)).status == 200
    assert (await client.get("/v1/deals", headers={"Authorization": "Bearer new"})).status == 200
    refused = await client.get("/v1/persons", headers={"x-api-token": "c" * 40})
    assert refused.status == 403
    assert envelope(await refused.read())["scope_proxy"]["granted_scopes"] == ["deals:read"]
    assert len(upstream.received) == 2


async def test_app_scopes_are_a_ceiling_over_what_a_token_holds(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(app_scopes=["deals:read"], tokens=grants(full=["deals:full"]))
    auth = {"Authorization": "Bearer full"}
    assert (await client.get("/v1/deals/1", headers=auth)).status == 200
    refused = await client.delete("/v1/deals/1", headers=auth)
    assert refused.status == 403
    assert envelope(await refused.read())["scope_proxy"]["reason"] == "outside_app_scopes"
    assert [r.method for r in upstream.received] == ["GET"]


async def test_report_mode_forwards_and_marks_what_enforce_would_refuse(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(mode="report", tokens=grants(reader=["deals:read"]))
    auth = {"Authorization": "Bearer reader"}
    marked = await client.delete("/v1/deals/1", headers=auth)
    assert (marked.status, marked.headers["X-Scope-Proxy-Decision"]) == (200, "report")
    ok = await client.get("/v1/deals/1", headers=auth)
    assert ok.headers["X-Scope-Proxy-Decision"] == "allow"
    unknown = await client.get("/v1/deals", headers={"Authorization": "Bearer stranger"})
    assert unknown.status == 401  # report mode relaxes scopes only
    status, _, _ = await raw_request(
        client, b"GET /v1/deals/%2e%2e/users HTTP/1.1\r\nAuthorization: Bearer reader\r\n"
        b"Connection: close\r\n\r\n",
    )  # fmt: skip
    assert status == 400
    assert [r.method for r in upstream.received] == ["DELETE", "GET"]
    metrics = await (await client.get("/_proxy/metrics")).text()
    assert (
        'scope_proxy_requests_total{decision="report",reason="out_of_scope",version="v1"} 1.0'
        in (metrics)
    )


@pytest.mark.parametrize(
    ("method", "path", "endpoint", "methods"),
    [
        ("GET", "/v1/dealz", "GET /v1/dealz", None),
        ("GET", "/api/v2/deals/42/noSuchThing", "GET /api/v2/deals/{id}/noSuchThing", None),
        ("PATCH", "/v1/deals/1", "PATCH /v1/deals/{id}", ["GET", "HEAD", "PUT", "DELETE"]),
        ("POST", "/api/v2/deals/1", "POST /api/v2/deals/{id}", ["GET", "HEAD", "PATCH", "DELETE"]),
    ],
    ids=["a-typo", "a-path-under-a-known-one", "v1-deal-patched", "v2-deal-posted"],
)
async def test_an_unknown_endpoint_is_a_404_saying_so_never_a_scope_mismatch(
    make_proxy: ProxyFactory, upstream: FakePipedrive, method: str, path: str, endpoint: str,
    methods: list[str] | None,
) -> None:  # fmt: skip
    client = await make_proxy(tokens=grants(ops=["admin", "deals:full"]))
    response = await client.request(method, path, headers={"Authorization": "Bearer ops"})
    assert response.status == 404
    body = envelope(await response.read())
    assert body["success"] is False
    assert body["errorCode"] == 404
    assert body["error"].startswith("Unknown endpoint: ")
    assert "Scope and URL mismatch" not in body["error"]
    details = body["scope_proxy"]
    assert (details["reason"], details["endpoint"]) == ("unknown_endpoint", endpoint)
    assert details.get("methods") == methods
    assert response.headers["X-Scope-Proxy-Decision"] == "deny"
    assert upstream.received == []


async def test_report_mode_forwards_an_unknown_endpoint_marked_report(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(mode="report", tokens=grants(ops=["deals:full"]))
    auth = {"Authorization": "Bearer ops"}
    for method, path in (("GET", "/v1/dealz"), ("PATCH", "/v1/deals/1")):
        response = await client.request(method, path, headers=auth)
        assert (response.status, response.headers["X-Scope-Proxy-Decision"]) == (200, "report")
    assert [(r.method, r.raw_path) for r in upstream.received] == [
        ("GET", "/v1/dealz"), ("PATCH", "/v1/deals/1"),
    ]  # fmt: skip
    report = await (await client.get("/_proxy/report")).json()
    assert {(d["endpoint"], d["reason"]) for d in report["overall"]["denied"]} == {
        ("GET /v1/dealz", "unknown_endpoint"), ("PATCH /v1/deals/{id}", "unknown_endpoint"),
    }  # fmt: skip


async def test_unknown_endpoints_allow_forwards_paths_the_catalogue_lacks(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(unknown_endpoints="allow", tokens=grants(x=[]))
    response = await client.get("/v1/brandNewThing", headers={"Authorization": "Bearer x"})
    assert response.status == 200
    assert [r.raw_path for r in upstream.received] == ["/v1/brandNewThing"]


async def test_one_log_event_per_request_with_contract_fields_and_no_raw_token(
    make_proxy: ProxyFactory, upstream: FakePipedrive, capsys: pytest.CaptureFixture[str]
) -> None:
    client = await make_proxy(
        tokens=[{"name": "t", "sha256": sha(TOKEN), "scopes": ["deals:read"]}]
    )
    with capture_logs() as events:
        await client.get(
            "/v1/deals/5?api_token_hint=1", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        await client.delete("/v1/deals/5", headers={"Authorization": f"Bearer {TOKEN}"})
        await client.get("/_proxy/health")
    requests = [e for e in events if e["event"] == "request"]
    assert len(requests) == 2, "one event per API request; health checks are not traffic"
    allowed, denied = requests
    assert set(allowed) >= CONTRACT_FIELDS
    assert {k: allowed[k] for k in ("decision", "reason", "endpoint", "version", "status",
                                    "upstream_status", "token_fp", "token_cost")} == {
        "decision": "allow", "reason": "in_scope", "endpoint": "GET /v1/deals/{id}",
        "version": "v1", "status": 200, "upstream_status": 200, "token_fp": sha(TOKEN)[:12],
        "token_cost": 2,
    }  # fmt: skip
    assert list(allowed["granted_scopes"]) == ["deals:read"]
    assert (denied["decision"], denied["status"], denied["upstream_status"]) == ("deny", 403, None)
    output = repr(events) + capsys.readouterr().out
    assert TOKEN not in output
    assert "secret-part" not in output
    assert "api_token_hint" not in output, "the query string is never logged"


async def test_health_ready_and_metrics(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(tokens=grants(reader=["deals:read"]))
    await client.get("/v1/deals", headers={"Authorization": "Bearer reader"})
    await client.get("/v1/persons", headers={"Authorization": "Bearer reader"})
    health = await client.get("/_proxy/health")
    ready = await client.get("/_proxy/ready")
    assert (health.status, ready.status) == (200, 200)
    assert (await ready.json())["store"] == "ok"
    metrics = await (await client.get("/_proxy/metrics")).text()

    def value(pattern: str) -> float:
        found = re.search(pattern + r" (\S+)", metrics)
        assert found, pattern
        return float(found.group(1))

    assert (
        value(r'scope_proxy_requests_total\{decision="allow",reason="in_scope",version="v1"\}') == 1
    )
    assert (
        value(r'scope_proxy_requests_total\{decision="deny",reason="out_of_scope",version="v1"\}')
        == 1
    )
    assert value(r"scope_proxy_request_duration_seconds_count") == 2
    assert "scope_proxy_upstream_errors_total" in metrics
    assert "scope_proxy_tokens_learned_total" in metrics
    assert "/v1/deals" not in metrics, "raw paths are never labels"


ALLOW = [
    ("GET", "/oauth/token", "POST"),
    ("POST", "/oauth/authorize", "GET, HEAD"),
    ("PUT", "/oauth/revoke", "POST"),
    ("POST", "/_proxy/health", "GET, HEAD"),
    ("DELETE", "/_proxy/report", "GET, HEAD"),
    ("GET", "/_proxy/report/reset", "POST"),
    ("PROPFIND", "/v1/deals", "GET, HEAD, POST, DELETE"),
    ("OPTIONS", "/v1/deals/1", "GET, HEAD, PUT, DELETE"),
    ("OPTIONS", "/api/v2/deals/1", "GET, HEAD, PATCH, DELETE"),
    ("TRACE", "/api/v2/deals/1/followers", "GET, HEAD, POST"),
]


@pytest.mark.parametrize(("method", "path", "allow"), ALLOW, ids=[f"{m} {p}" for m, p, _ in ALLOW])
async def test_a_405_lists_the_methods_the_path_really_takes(
    method: str, path: str, allow: str, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=grants(ops=["admin"]))
    response = await client.request(method, path, headers={"Authorization": "Bearer ops"})
    assert response.status == 405
    assert response.headers["Allow"] == allow
    assert method not in allow.split(", ")
    assert envelope(await response.read())["scope_proxy"]["reason"] == "method_not_allowed"
    assert upstream.received == []


async def test_the_decision_header_is_on_streamed_answers_too(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    async def streamed(request: web.Request, seen: Received) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"success": true')
        await asyncio.sleep(0.05)  # the proxy has started streaming by now
        await response.write(b"}")
        return response

    upstream.respond = streamed
    client = await make_proxy(mode="report", tokens=grants(reader=["deals:read"]))
    allowed = await client.get("/v1/deals", headers={"Authorization": "Bearer reader"})
    assert allowed.headers["Transfer-Encoding"] == "chunked"  # it was streamed, not buffered
    assert allowed.headers["X-Scope-Proxy-Decision"] == "allow"
    reported = await client.get("/v1/activities", headers={"Authorization": "Bearer reader"})
    assert reported.headers["Transfer-Encoding"] == "chunked"
    assert reported.headers["X-Scope-Proxy-Decision"] == "report"
    assert await reported.read() == b'{"success": true}'


async def test_the_log_event_names_the_static_grant_and_every_refusal_its_problem(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy(tokens=[{"name": "ci-bot", "sha256": sha(TOKEN), "scopes": []}])
    with capture_logs() as events:
        await client.get("/v1/users/me", headers={"Authorization": f"Bearer {TOKEN}"})
        await client.get(
            "/v1/users/me",
            headers={"Authorization": f"Bearer {TOKEN}", "X-HTTP-Method-Override": "DELETE"},
        )
    served, refused = [e for e in events if e["event"] == "request"]
    assert (served["grant"], served["problem"]) == ("ci-bot", None)
    assert (refused["reason"], refused["problem"]) == (
        "ambiguous_request", "method-override header x-http-method-override is not accepted",
    )  # fmt: skip


async def test_the_consent_page_is_a_redirect_to_pipedrive_never_a_forward(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    """SDKs whose OAuth host is the proxy build the browser's consent URL from it."""
    client = await make_proxy(
        upstream={"api_url": upstream.url, "oauth_url": "https://oauth.example"}
    )
    query = "client_id=abc&redirect_uri=https%3A%2F%2Fapp.example%2Fcallback&state=x%20y"
    request = f"GET /oauth/authorize?{query} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
    with capture_logs() as events:
        status, headers, _ = await raw_request(client, request.encode())
    assert status == 302
    assert headers["location"] == f"https://oauth.example/oauth/authorize?{query}", "as it came"
    assert headers["x-scope-proxy-decision"] == "allow"
    [event] = [e for e in events if e["event"] == "request"]
    assert (event["reason"], event["status"], event["upstream_status"]) == (
        "oauth_redirect", 302, None,
    )  # fmt: skip
    assert upstream.received == []


async def test_each_call_has_a_request_id_and_pipedrives_correlation_id_in_its_log_line(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    """The client's X-Request-Id, else one made up and sent upstream, so that one call can be
    found in the proxy's log and in the app's; and Pipedrive's x-correlation-id, for its
    support."""
    client = await make_proxy(tokens=grants(reader=["deals:read"]))
    reader = {"Authorization": "Bearer reader"}
    with capture_logs() as events:
        await client.get("/v1/deals/1", headers=reader)
        await client.get("/v1/deals/2", headers={**reader, "X-Request-Id": "app-trace-7"})
        await client.delete("/v1/deals/3", headers=reader)
    made, given, refused = [e for e in events if e["event"] == "request"]
    assert re.fullmatch(r"[0-9a-f]{32}", made["request_id"])
    assert made["correlation_id"] == "abc-123"  # what the fake Pipedrive answers with
    assert (given["request_id"], given["correlation_id"]) == ("app-trace-7", "abc-123")
    assert re.fullmatch(r"[0-9a-f]{32}", refused["request_id"])
    assert refused["correlation_id"] is None
    assert made["request_id"] != refused["request_id"]
    first, second = upstream.received
    assert first.header("X-Request-Id") == [made["request_id"]]
    assert second.header("X-Request-Id") == ["app-trace-7"]  # the client's own, once
    assert len(upstream.received) == 2


async def test_a_call_refused_for_its_token_names_the_endpoint_it_was_for(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    """A 401 or a 400 for the credential still says which call it was (its template), so that
    the call that lacked a token can be found; never its raw path."""
    client = await make_proxy()
    with capture_logs() as events:
        await client.get("/v1/deals/77")  # no token
        await client.get("/api/v2/deals/78", headers={"Authorization": "Bearer unknown"})
        await client.get(
            "/v1/noSuchThing/79", headers={"Authorization": "Bearer a", "X-Api-Token": "b"}
        )
    named = [(e["reason"], e["endpoint"], e["version"]) for e in events if e["event"] == "request"]
    assert named == [
        ("missing_credential", "GET /v1/deals/{id}", "v1"),
        ("unknown_token", "GET /api/v2/deals/{id}", "v2"),
        ("multiple_credentials", "GET /v1/noSuchThing/{id}", "v1"),
    ]
    assert upstream.received == []


async def test_request_ids_sent_as_raw_bytes_reach_the_upstream_as_sent(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    """Two X-Request-Id headers, or a very long one: forwarded as the client sent them (the
    proxy adds none), logged as the first one's first 200 characters."""
    client = await make_proxy(tokens=grants(reader=["deals:read"]))
    long_id = "r" * 300
    with capture_logs() as events:
        for ids in ([b"first", b"second"], [long_id.encode()]):
            extra = b"".join(b"X-Request-Id: " + value + b"\r\n" for value in ids)
            status, _, _ = await raw_request(
                client,
                b"GET /v1/deals/1 HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer reader\r\n"
                + extra + b"Connection: close\r\n\r\n",
            )  # fmt: skip
            assert status == 200
    first, second = upstream.received
    assert first.header("X-Request-Id") == ["first", "second"]
    assert second.header("X-Request-Id") == [long_id]
    logged = [e["request_id"] for e in events if e["event"] == "request"]
    assert logged == ["first", long_id[:200]]


async def test_calls_meant_for_the_api_count_as_refused_and_stray_requests_apart(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    """A prefix in other letter case is refused (400) and counted against the gate, as is the
    prefix alone (404, an unknown endpoint); a stray request is counted apart even when it is
    refused for its shape. Live and replayed from the log alike."""
    client = await make_proxy(tokens=grants(reader=["deals:read"]))
    sent = [(b"/V1/deals/1", 400), (b"/Api/v2/deals", 400), (b"/v1", 404),
            (b"/favicon.ico;x", 400), (b"/", 404)]  # fmt: skip
    with capture_logs() as events:
        for target, status in sent:
            answer = await raw_request(
                client,
                b"GET " + target + b" HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer reader\r\n"
                b"Connection: close\r\n\r\n",
            )
            assert answer[0] == status, target
    live = await (await client.get("/_proxy/report")).json()
    assert live["refused_before_decision"] == [{"reason": "ambiguous_request", "count": 2}]
    assert live["not_api_calls"] == 2
    assert [d["endpoint"] for d in live["overall"]["denied"]] == ["GET /v1/"]
    lines = [
        json.dumps({**e, "reason": str(e["reason"])}) for e in events if e["event"] == "request"
    ]
    replayed = build_report(calls_from_log(lines).calls, None)
    assert replayed["refused_before_decision"] == live["refused_before_decision"]
    assert replayed["not_api_calls"] == live["not_api_calls"]
    assert upstream.received == []
