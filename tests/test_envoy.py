"""Envoy in front: a real Envoy, on the bootstrap ``envoy-config`` prints, asks a real proxy
process about every call (``/_proxy/authz/...``) and forwards what it allows to the fake
Pipedrive. Whatever reaches the upstream must be a call the token may make, byte for byte."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import h2.config
import h2.connection
import h2.events
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.core.canonical import canonicalize
from proxy.core.catalog import DISPLAY_PREFIX, api_route
from proxy.core.credentials import extract_credential
from proxy.core.decision import Grant, Policy, authorize
from proxy.core.errors import ProxyError
from tests.conftest import CATALOGUE, RedisServer, free_port, grants, sha
from tests.fakes import FakeOAuth, FakePipedrive, Received
from tests.processes import (
    envoy_bootstrap,
    envoy_running,
    serving,
    wait_listening,
    wait_ready,
    write_config,
)
from tests.refusals import REFUSED
from tests.tables import PIPEDRIVE_403, concrete
from tests.waiting import eventually, log_events

pytestmark = pytest.mark.slow

ALL_SCOPES = sorted(CATALOGUE.scopes)
# Every third endpoint of the catalogue, v1 and v2 alike.
SAMPLE = CATALOGUE.endpoints[::3]


@dataclass
class Front:
    """Envoy on ``url``, the proxy it asks on ``proxy_port``, the proxy's log file."""

    url: str
    proxy_port: int
    envoy_port: int
    log: Path
    proxy: subprocess.Popen[str]


@asynccontextmanager
async def envoy_front(tmp_path: Path, fake: FakePipedrive, **document: Any) -> AsyncIterator[Front]:
    """Envoy in front of the proxy in front of ``fake`` (unless ``upstream`` says otherwise)."""
    document.setdefault("upstream", {"api_url": fake.url, "oauth_url": fake.url})
    config_path = write_config(tmp_path, **document)
    proxy_port, envoy_port = free_port(), free_port()
    log = tmp_path / "proxy.log"
    bootstrap = envoy_bootstrap(
        tmp_path, config_path, f"127.0.0.1:{envoy_port}", f"http://127.0.0.1:{proxy_port}"
    )
    with serving(config_path, proxy_port, log=log) as proxy:
        await wait_ready(proxy_port)
        with envoy_running(bootstrap) as envoy:
            await wait_listening(envoy_port, envoy)
            yield Front(f"http://127.0.0.1:{envoy_port}", proxy_port, envoy_port, log, proxy)


async def call(
    url: str, method: str, target: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as client,
        client.request(
            method, URL(url + target, encoded=True), headers=headers, data=body or None
        ) as response,
    ):
        return response.status, CIMultiDict(response.headers), await response.read()


async def raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


def scope_tokens() -> list[dict[str, object]]:
    return grants(**{f"only-{scope}": [scope] for scope in ALL_SCOPES})


async def test_in_scope_calls_reach_the_upstream_byte_for_byte_and_out_of_scope_ones_get_403(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    async with envoy_front(tmp_path, upstream, tokens=scope_tokens()) as front:
        for endpoint in SAMPLE:
            prefix = DISPLAY_PREFIX[endpoint.version]
            target = prefix + concrete(endpoint.template) + "?limit=5&term=caf%C3%A9+au+lait"
            body = (
                b'{"title": "x", "value": 1}'
                if endpoint.method in ("POST", "PUT", "PATCH")
                else b""
            )
            accepting = sorted(endpoint.scopes)[0]
            before = len(upstream.received)
            status, headers, _ = await call(
                front.url, endpoint.method, target, {"Authorization": f"Bearer only-{accepting}"},
                body,
            )  # fmt: skip
            assert status == 200, (endpoint.name, status)
            assert headers["X-Scope-Proxy-Decision"] == "allow"
            [seen] = upstream.received[before:]
            assert (seen.method, seen.raw_path, seen.body) == (endpoint.method, target, body)
            assert seen.header("Authorization") == [f"Bearer only-{accepting}"]
            if "base" in endpoint.scopes:
                continue  # every token holds base: nothing can refuse it
            refused = sorted(set(ALL_SCOPES) - endpoint.scopes)[0]
            status, headers, answer = await call(
                front.url, endpoint.method, target, {"Authorization": f"Bearer only-{refused}"},
                body,
            )  # fmt: skip
            assert status == 403, endpoint.name
            assert headers["X-Scope-Proxy-Decision"] == "deny"
            assert headers["Content-Type"].startswith("application/json")
            document = json.loads(answer)
            assert {key: document[key] for key in PIPEDRIVE_403} == PIPEDRIVE_403
            assert document["scope_proxy"] == {
                "reason": "out_of_scope",
                "endpoint": endpoint.name,
                "accepted_scopes": list(endpoint.scope_list),
                "granted_scopes": [refused],
            }
            assert len(upstream.received) == before + 1, "the refused call never reached it"


async def test_missing_unknown_and_double_credentials_are_refused_before_the_upstream(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    cases = [
        ({}, 401, "missing_credential"),
        ({"Authorization": "Bearer nobody-knows-me"}, 401, "unknown_token"),
        ({"Authorization": "Bearer reader", "x-api-token": "abc"}, 400, "multiple_credentials"),
    ]
    async with envoy_front(tmp_path, upstream, tokens=grants(reader=["deals:read"])) as front:
        for headers, status, reason in cases:
            got, answer_headers, answer = await call(front.url, "GET", "/v1/deals", headers)
            assert (got, json.loads(answer)["scope_proxy"]["reason"]) == (status, reason)
            assert answer_headers["X-Scope-Proxy-Decision"] == "deny"
        # The same header twice: Envoy joins the two into one value, which the check refuses.
        for name in (b"Authorization: Bearer reader", b"x-api-token: abc"):
            request = (
                b"GET /v1/deals HTTP/1.1\r\nHost: envoy.test\r\n" + name + b"\r\n" + name
                + b"2\r\nConnection: close\r\n\r\n"
            )  # fmt: skip
            head, _, body = (await raw_exchange(front.envoy_port, request)).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), head
            assert json.loads(body)["scope_proxy"]["reason"] == "multiple_credentials"
    assert upstream.received == []


async def test_the_oauth_exchange_through_envoy_teaches_the_proxy_and_points_apps_at_envoy(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    oauth = FakeOAuth(scope="base,deals:read")
    upstream.respond = oauth.respond
    async with envoy_front(tmp_path, upstream) as front:
        status, _, answer = await call(
            front.url, "POST", "/oauth/token",
            {"Authorization": "Basic Y2k6Y3M=", "Content-Type": "application/x-www-form-urlencoded"},
            b"grant_type=authorization_code&code=abc",
        )  # fmt: skip
        assert status == 200
        exchanged = json.loads(answer)
        assert exchanged["api_domain"] == front.url, "apps are sent back to Envoy, not around it"
        learned = {"Authorization": f"Bearer {exchanged['access_token']}"}
        assert (await call(front.url, "GET", "/v1/deals/7", learned))[0] == 200
        assert (await call(front.url, "DELETE", "/v1/deals/7", learned))[0] == 403
    assert [seen.raw_path for seen in upstream.received] == ["/oauth/token", "/v1/deals/7"]
    assert exchanged["access_token"] not in front.log.read_text()


async def test_hostile_requests_through_envoy_reach_the_upstream_only_as_calls_the_token_may_make(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    """The proxy's table of hostile requests, sent to Envoy as raw bytes with a token that may
    only read deals. Envoy refuses some itself and rewrites a few harmlessly (it drops Upgrade);
    the rest the check refuses as the proxy alone would. Whatever reaches the upstream is read
    again here, as the proxy would read it: one canonical form, and a call the token may make."""
    handled_by: dict[str, str] = {}
    async with envoy_front(tmp_path, upstream, tokens=grants(everything=["deals:read"])) as front:
        for name, request, status, reason in REFUSED:
            before = len(upstream.received)
            answer = await raw_exchange(front.envoy_port, request)
            head, _, body = answer.partition(b"\r\n\r\n")
            got = int(head.split(b" ", 2)[1])
            reached = upstream.received[before:]
            for seen in reached:
                assert_may_call(seen, grant=frozenset({"deals:read"}))
            try:
                checked_reason = json.loads(body)["scope_proxy"]["reason"]
            except (ValueError, KeyError):
                checked_reason = None
            if checked_reason is not None:
                assert (got, checked_reason) in ((status, reason), (404, "not_found")), name
                handled_by[name] = "proxy" if checked_reason == reason else "envoy route"
            elif reached:
                handled_by[name] = "envoy rewrote it"
            else:
                assert got >= 400, name
                handled_by[name] = "envoy refused it"
    assert handled_by["Upgrade header"] == "envoy rewrote it"
    assert handled_by["X_Api_Token header"] == "envoy refused it"
    assert handled_by["dot-dot escaping the prefix"] == "proxy"
    assert handled_by["second Authorization header"] == "proxy"
    assert list(handled_by.values()).count("proxy") >= len(REFUSED) * 2 // 3


def assert_may_call(seen: Received, grant: frozenset[str]) -> None:
    headers = [(name.encode(), value.encode()) for name, value in seen.headers]
    try:
        canonical = canonicalize(seen.method, seen.raw_path, headers)
        credential = extract_credential(canonical.credential_headers, canonical.query_pairs)
    except ProxyError as error:
        raise AssertionError(f"the upstream got {seen.method} {seen.raw_path}: {error}") from None
    route = api_route(canonical.path)
    assert route is not None, seen.raw_path
    decision = authorize(
        CATALOGUE, Policy(), route, seen.method, credential, Grant(grant, "test"), None
    )
    assert decision.verdict == "allow", (seen.method, seen.raw_path, decision.reason)


async def test_bodies_stream_through_envoy_and_a_get_with_a_body_is_refused(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    upload = bytes(range(256)) * 4096  # 1 MiB
    async with envoy_front(tmp_path, upstream, tokens=grants(writer=["deals:full"])) as front:
        auth = {"Authorization": "Bearer writer", "Content-Type": "application/octet-stream"}
        status, _, _ = await call(front.url, "POST", "/v1/deals", auth, upload)
        assert status == 200
        assert upstream.received[-1].body == upload
        # Envoy hands the check one byte of the body: enough to see that a GET has one.
        request = (
            b"GET /v1/deals HTTP/1.1\r\nHost: envoy.test\r\nAuthorization: Bearer writer\r\n"
            b"Content-Length: 24\r\nConnection: close\r\n\r\nGET /v1/users HTTP/1.1\r\n"
        )
        head, _, body = (await raw_exchange(front.envoy_port, request)).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), head
        assert json.loads(body)["scope_proxy"]["detail"] == "GET takes no body (Content-Length)"
        status, _, _ = await call(
            front.url, "HEAD", "/v1/deals/1", {"Authorization": "Bearer writer"}
        )
        assert status == 200
    assert [(seen.method, seen.raw_path) for seen in upstream.received] == [
        ("POST", "/v1/deals"),
        ("HEAD", "/v1/deals/1"),
    ]


async def test_checks_are_counted_in_the_report_metrics_and_log_like_forwarded_calls(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    async with envoy_front(tmp_path, upstream, tokens=grants(reader=["deals:read"])) as front:
        auth = {"Authorization": "Bearer reader"}
        for _ in range(3):
            assert (await call(front.url, "GET", "/v1/deals/1", auth))[0] == 200
        assert (await call(front.url, "DELETE", "/v1/deals/1", auth))[0] == 403
        admin = f"http://127.0.0.1:{front.proxy_port}"
        _, _, answer = await call(admin, "GET", "/_proxy/report", {})
        _, _, metrics = await call(admin, "GET", "/_proxy/metrics", {})
        await eventually(lambda: len(log_events(front.log, "request")) == 4, "4 checks logged")
        events = log_events(front.log, "request")
    report = json.loads(answer)["overall"]
    assert report["requests"] == 4
    assert {(row["endpoint"], row["count"], row["decision"]) for row in report["endpoints"]} == {
        ("GET /v1/deals/{id}", 3, "allow"),
        ("DELETE /v1/deals/{id}", 1, "deny"),
    }
    assert report["minimal_scopes"] == ["deals:full"]
    assert 'scope_proxy_requests_total{decision="allow",reason="in_scope",version="v1"} 3.0' in (
        metrics.decode()
    )
    checks = [event for event in events if event["via"] == "ext_authz"]
    assert [(event["method"], event["status"], event["upstream_status"]) for event in checks] == [
        ("GET", 200, None), ("GET", 200, None), ("GET", 200, None), ("DELETE", 403, None),
    ]  # fmt: skip
    assert {event["token_fp"] for event in checks} == {sha("reader")[:12]}
    assert len(upstream.received) == 3


async def test_no_answer_from_the_proxy_refuses_the_call_in_the_envelope(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    """Fail closed: with the proxy gone, or its store unreachable, nothing reaches Pipedrive.
    Envoy's own answer then says so in Pipedrive's envelope, with the decision header; the
    proxy's own refusals (503, 403) and Pipedrive's own 503 pass unchanged."""
    closed = free_port()

    async def unavailable(request: web.Request, seen: Received) -> web.StreamResponse:
        if request.path == "/v1/deals/503":
            return web.Response(status=503, text="Pipedrive is down", headers={"X-From": "pd"})
        return web.json_response({"success": True})

    upstream.respond = unavailable
    async with envoy_front(
        tmp_path,
        upstream,
        tokens=grants(reader=["deals:read"]),
        store=f"redis://127.0.0.1:{closed}/0",
    ) as front:
        reader = {"Authorization": "Bearer reader"}
        # A static grant needs no store; a token only the store could know is refused.
        assert (await call(front.url, "GET", "/v1/deals", reader))[0] == 200
        status, headers, body = await call(
            front.url, "GET", "/v1/deals", {"Authorization": "Bearer learned"}
        )
        # Envoy takes the proxy's 503 for a failed check: its own answer, the proxy's log why
        assert (status, headers["X-Scope-Proxy-Decision"]) == (503, "deny")
        assert json.loads(body)["scope_proxy"]["reason"] == "authorizer_unavailable"
        await eventually(
            lambda: any(
                e["reason"] == "store_unavailable" for e in log_events(front.log, "request")
            ),
            "the proxy logged why",
        )
        status, headers, body = await call(front.url, "DELETE", "/v1/deals/1", reader)
        assert (status, json.loads(body)["error"]) == (403, "Scope and URL mismatch")
        status, headers, body = await call(front.url, "GET", "/v1/deals/503", reader)
        assert (status, body, headers["X-From"]) == (503, b"Pipedrive is down", "pd")
        front.proxy.kill()
        front.proxy.wait(timeout=10)
        status, headers, body = await call(front.url, "GET", "/v1/deals", reader)
    assert (status, headers["Content-Type"]) == (503, "application/json")
    assert headers["X-Scope-Proxy-Decision"] == "deny"
    answer = json.loads(body)
    assert (answer["success"], answer["errorCode"]) == (False, 503)
    assert answer["scope_proxy"]["reason"] == "authorizer_unavailable"
    assert "could not be reached" in answer["error"]
    assert [seen.raw_path for seen in upstream.received] == ["/v1/deals", "/v1/deals/503"]


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_form_bodies_are_read_by_the_check_and_refused_with_an_override(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    """Envoy sends the body to the check, up to limits.max_checked_body: a form field that
    overrides the method is refused (nothing forwarded), one over the bound is 413, and a
    clean form and a large upload of another type go upstream byte for byte."""
    clean = b"title=Big+deal&value=1000&" + b"x" * 3000
    upload = bytes(range(256)) * 64  # 16 KiB, over the bound: not a form, not read
    async with envoy_front(
        tmp_path, upstream, tokens=grants(writer=["deals:full"]),
        limits={"max_checked_body": 4096},
    ) as front:  # fmt: skip
        auth = {"Authorization": "Bearer writer"}
        answers = {}
        for name, body, headers in [
            ("override", b"title=x&_method=DELETE", FORM),
            ("encoded name", b"%5Fmethod=GET", FORM),
            ("credential", b"api_token=other", FORM),
            ("multipart", b'--b\r\nContent-Disposition: form-data; name="_method"\r\n\r\n'
                          b"GET\r\n--b--\r\n",
             {"Content-Type": "multipart/form-data; boundary=b"}),
            ("json", b'{"_method": "GET"}', {"Content-Type": "application/json"}),
            ("too large", b"a=" + b"x" * 5000, FORM),
            ("clean", clean, FORM),
            ("upload", upload, {"Content-Type": "application/octet-stream"}),
        ]:  # fmt: skip
            status, headers_back, _ = await call(
                front.url, "POST", "/v1/deals", {**auth, **headers}, body
            )
            answers[name] = (status, headers_back.get("X-Scope-Proxy-Decision"))
        # exactly the bound first, then an override: Envoy marks no body partial that is cut
        # at exactly what it was asked for, so it is asked for one byte more
        cut = b"title=" + b"a" * 4090
        rest = b"&_method=PUT"
        reader, writer = await asyncio.open_connection("127.0.0.1", front.envoy_port)
        writer.write(
            b"POST /v1/deals HTTP/1.1\r\nHost: envoy.test\r\nAuthorization: Bearer writer\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(cut) + len(rest)}\r\nConnection: close\r\n\r\n".encode()
            + cut
        )
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.write(rest)
        await writer.drain()
        head = (await asyncio.wait_for(reader.read(), timeout=10)).partition(b"\r\n\r\n")[0]
        writer.close()
        answers["cut at the bound"] = (int(head.split()[1]), "deny")
        # a POST with no Content-Type at all (Rack reads it as a form)
        raw = (
            b"POST /v1/deals HTTP/1.1\r\nHost: envoy.test\r\nAuthorization: Bearer writer\r\n"
            b"Content-Length: 14\r\nConnection: close\r\n\r\n_method=DELETE"
        )
        head = (await raw_exchange(front.envoy_port, raw)).partition(b"\r\n\r\n")[0]
        answers["no content type"] = (int(head.split()[1]), "deny")
    assert answers == {
        "override": (400, "deny"), "encoded name": (400, "deny"),
        "no content type": (400, "deny"), "credential": (400, "deny"),
        "multipart": (400, "deny"), "json": (400, "deny"), "too large": (413, "deny"),
        "clean": (200, "allow"), "upload": (200, "allow"), "cut at the bound": (413, "deny"),
    }  # fmt: skip
    assert [seen.body for seen in upstream.received] == [clean, upload]


def h2_exchange(port: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """An HTTP/2 request with prior knowledge (h2c), its header bytes exactly as given, and
    a GET that ends with trailers and no DATA; what comes back before the connection closes."""
    settings = h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False, validate_inbound_headers=False,
    )  # fmt: skip
    connection = h2.connection.H2Connection(config=settings)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        connection.send_headers(stream, headers, end_stream=False)
        connection.send_headers(stream, [(b"x-trailer", b"1")], end_stream=True)
        sock.sendall(connection.data_to_send())
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    return answer


async def test_http2_is_not_served_and_header_bytes_are_checked_as_they_are_forwarded(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    """Over HTTP/2 a GET can end with trailers and no DATA, which Envoy forwards with
    Transfer-Encoding: chunked without the check seeing a body stream: the listener speaks
    HTTP/1.1 only. And Envoy replaces bytes that are not UTF-8 in a header value with '!' in
    the check unless told to send them raw: sent raw, the check refuses them."""
    async with envoy_front(tmp_path, upstream, tokens=grants(reader=["deals:read"])) as front:
        port = front.envoy_port
        h2_get = [(b":method", b"GET"), (b":path", b"/v1/deals"), (b":scheme", b"http"),
                  (b":authority", b"envoy.test"), (b"authorization", b"Bearer reader")]  # fmt: skip
        answer = await asyncio.to_thread(h2_exchange, port, h2_get)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]  # the h2 preface, refused
        request = (
            b"GET /v1/deals HTTP/1.1\r\nHost: envoy.test\r\nAuthorization: Bearer reader\r\n"
            b"X-Foo: \xff\xfe\r\nConnection: close\r\n\r\n"
        )
        head, _, body = (await raw_exchange(port, request)).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), head
        assert json.loads(body)["scope_proxy"]["reason"] in (
            "ambiguous_request",
            "malformed_request",
        )
        ok = request.replace(b"X-Foo: \xff\xfe\r\n", b"X-Foo: ok\r\n")
        assert (await raw_exchange(port, ok)).startswith(b"HTTP/1.1 200 ")
    assert [seen.raw_path for seen in upstream.received] == ["/v1/deals"]


async def test_an_empty_body_on_a_get_is_still_a_body(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    """Envoy forwards a GET with an empty chunked body with Transfer-Encoding: chunked, which
    the proxy alone refuses; the check refuses it too."""
    async with envoy_front(tmp_path, upstream, tokens=grants(reader=["deals:read"])) as front:
        request = (
            b"GET /v1/deals HTTP/1.1\r\nHost: envoy.test\r\nAuthorization: Bearer reader\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
        )
        for method in (b"GET", b"HEAD"):
            sent = request.replace(b"GET ", method + b" ", 1)
            head, _, body = (await raw_exchange(front.envoy_port, sent)).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), head
            if method == b"GET":
                assert json.loads(body)["scope_proxy"]["reason"] == "ambiguous_request"
        status, _, _ = await call(front.url, "GET", "/v1/deals", {"Authorization": "Bearer reader"})
        assert status == 200
    assert [seen.raw_path for seen in upstream.received] == ["/v1/deals"]
    assert [seen.header("Transfer-Encoding") for seen in upstream.received] == [[]]


async def test_only_the_proxys_own_verdict_lets_a_call_through(
    tmp_path: Path, upstream: FakePipedrive, aiohttp_server: Any
) -> None:
    """ext_authz takes any 200 as allowed: with --authz pointing at a server that answers 200
    to everything, calls must still be refused, and a client cannot send the verdict itself."""

    async def anything_goes(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything_goes)
    wrong = await aiohttp_server(app)
    config_path = write_config(
        tmp_path,
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        tokens=grants(reader=["deals:read"]),
    )
    envoy_port = free_port()
    bootstrap = envoy_bootstrap(
        tmp_path, config_path, f"127.0.0.1:{envoy_port}", f"http://127.0.0.1:{wrong.port}"
    )
    with envoy_running(bootstrap) as envoy:
        await wait_listening(envoy_port, envoy)
        url = f"http://127.0.0.1:{envoy_port}"
        for headers in (
            {"Authorization": "Bearer reader"},
            {"Authorization": "Bearer reader", "X-Scope-Proxy-Decision": "allow"},
        ):
            status, _, _ = await call(url, "GET", "/v1/deals/1", headers)
            assert status == 403, headers
    assert upstream.received == []

    # With the proxy answering, the verdict lets the call on and stays between Envoy and it.
    async with envoy_front(tmp_path, upstream, tokens=grants(reader=["deals:read"])) as front:
        headers = {"Authorization": "Bearer reader", "X-Scope-Proxy-Decision": "report"}
        status, answer_headers, _ = await call(front.url, "GET", "/v1/deals/1", headers)
        assert status == 200
        assert answer_headers["X-Scope-Proxy-Decision"] == "allow"
    [seen] = upstream.received
    assert seen.header("X-Scope-Proxy-Decision") == []


async def test_a_check_envoy_gave_up_on_is_logged_so_and_not_counted(
    tmp_path: Path, upstream: FakePipedrive, redis_server: RedisServer
) -> None:
    """Envoy stops waiting after its check timeout and refuses the call. A check whose client
    left while the proxy was still deciding (its store was slow) is logged as such, not as a
    call made, and the report does not count it."""
    config_path = write_config(
        tmp_path,
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        store=redis_server.url,
        app_scopes=["deals:read"],
        unknown_tokens="app_scopes",
    )
    port, log = free_port(), tmp_path / "proxy.log"
    check = (
        b"GET /_proxy/authz/v1/deals/1 HTTP/1.1\r\nHost: envoy.test\r\n"
        b"Authorization: Bearer not-yet-known\r\n\r\n"
    )
    with serving(config_path, port, log=log):
        await wait_ready(port)
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)  # the token lookup waits
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(check)
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.close()  # Envoy's timeout
            await writer.wait_closed()
            await asyncio.sleep(0.1)
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        answer = await raw_exchange(
            port, check.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        )
        assert answer.startswith(b"HTTP/1.1 200 ")
        _, _, report = await call(f"http://127.0.0.1:{port}", "GET", "/_proxy/report", {})
        await eventually(lambda: len(log_events(log, "request")) == 2, "both checks logged")
    events = log_events(log, "request")
    assert [(e["decision"], e["reason"], e["status"], e["error"]) for e in events] == [
        ("deny", "client_gone", 499, "client_gone"),  # left before the decision
        ("allow", "in_scope", 200, None),
    ]
    assert json.loads(report)["overall"]["requests"] == 1


async def test_an_unreachable_upstream_is_answered_in_the_envelope_as_the_proxy_would(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    async with envoy_front(
        tmp_path, upstream, tokens=grants(reader=["deals:read"]),
        upstream={"api_url": closed, "oauth_url": upstream.url},
    ) as front:  # fmt: skip
        auth = {"Authorization": "Bearer reader"}
        status, headers, body = await call(front.url, "GET", "/v1/deals/1", auth)
        alone, _, alone_body = await call(
            f"http://127.0.0.1:{front.proxy_port}", "GET", "/v1/deals/1", auth
        )
    assert status == alone == 502
    assert headers["Content-Type"] == "application/json"
    through_envoy, direct = json.loads(body), json.loads(alone_body)
    assert {k: through_envoy[k] for k in ("success", "error", "errorCode", "error_info")} == {
        k: direct[k] for k in ("success", "error", "errorCode", "error_info")
    }
    assert through_envoy["scope_proxy"]["reason"] == direct["scope_proxy"]["reason"]


async def test_envoy_holds_clients_to_the_proxys_limits(tmp_path: Path) -> None:
    """A connection that sends nothing is closed after ``header_timeout``, not kept for the
    idle ``keepalive_timeout``; past ``max_connections``, a new one is closed at once; and Envoy
    starts without warning that its connections are unlimited."""
    config_path = write_config(
        tmp_path,
        upstream={"api_url": "http://127.0.0.1:9", "oauth_url": "http://127.0.0.1:9"},
        limits={"header_timeout": 1, "keepalive_timeout": 75, "max_connections": 4},
    )
    port = free_port()
    bootstrap = envoy_bootstrap(
        tmp_path, config_path, f"127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"
    )
    log = tmp_path / "envoy.log"
    with envoy_running(bootstrap, log=log) as envoy:
        await wait_listening(port, envoy)
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened = loop.time()
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # closed by Envoy
        assert 0.8 < loop.time() - opened < 5
        writer.close()

        held = []
        for _ in range(4):  # each asks once and keeps its connection, as a keep-alive client
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: envoy\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
            held.append((reader, writer))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: envoy\r\n\r\n")
        try:
            refused = await asyncio.wait_for(reader.read(), timeout=5)
        except ConnectionResetError:
            refused = b""
        assert refused == b"", "the fifth connection must be closed without an answer"
        writer.close()
        held[0][1].close()  # one leaves: a new one is served again

        async def served() -> bool:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n")
            try:
                answer = await asyncio.wait_for(reader.read(), timeout=5)
            except ConnectionResetError:
                answer = b""
            writer.close()
            return answer.startswith(b"HTTP/1.1 404 ")

        await eventually(served, "a new connection served once another left")
        for _, held_writer in held[1:]:
            held_writer.close()
    said = log.read_text()
    assert "no configured limit" not in said, said
