"""Forwarding: what the upstream receives and what the client gets back, both checked."""

from __future__ import annotations

import asyncio
import gzip

from aiohttp import web

from tests.conftest import ProxyFactory, envelope, free_port, grants, raw_request
from tests.fakes import FakePipedrive, Received

READER = grants(reader=["deals:read", "deals:full"])


async def test_request_goes_upstream_unchanged_except_hop_by_hop_headers_and_host(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=READER)
    body = b'{"title": "Big deal", "value": 1000}'
    request = (
        b"PUT /api/v1/deals/42?x=1&y=%C3%A9 HTTP/1.1\r\n"
        b"Host: proxy.test\r\n"
        b"Authorization: Bearer reader\r\n"
        b"Content-Type: application/json\r\n"
        b"X-Custom: kept\r\n"
        b"X-Trace: a\r\nx-trace: b\r\nX-TRACE: c\r\n"  # one name, three spellings: all go
        b"Keep-Alive: timeout=5\r\n"
        b"X-Drop-Me: named by Connection\r\n"
        b"Connection: close, X-Drop-Me\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    status, headers, _ = await raw_request(client, request)
    assert status == 200
    assert headers["x-scope-proxy-decision"] == "allow"
    [seen] = upstream.received
    assert (seen.method, seen.raw_path, seen.body) == ("PUT", "/api/v1/deals/42?x=1&y=%C3%A9", body)
    assert seen.header("Authorization") == ["Bearer reader"]
    assert seen.header("X-Custom") == ["kept"]
    assert [(k, v) for k, v in seen.headers if k.lower() == "x-trace"] == [
        ("X-Trace", "a"), ("x-trace", "b"), ("X-TRACE", "c")
    ]  # fmt: skip
    assert seen.header("Content-Type") == ["application/json"]
    assert seen.header("Host") == [upstream.url.removeprefix("http://")]
    for dropped in ("Keep-Alive", "X-Drop-Me", "User-Agent", "Accept-Encoding", "Accept"):
        assert seen.header(dropped) == [], dropped


async def test_upstream_status_headers_and_compressed_bytes_come_back_unchanged(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    compressed = gzip.compress(b'{"success": false, "error": "daily request budget exceeded"}')

    async def budget_exhausted(request: web.Request, seen: Received) -> web.StreamResponse:
        return web.Response(
            status=429,
            body=compressed,
            headers={
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                "Retry-After": "7",
                "x-daily-ratelimit-token-remaining": "0",
                "x-correlation-id": "corr-1",
            },
        )

    upstream.respond = budget_exhausted
    client = await make_proxy(tokens=READER)
    response = await client.get(
        "/v1/deals", headers={"Authorization": "Bearer reader"}, auto_decompress=False
    )
    assert response.status == 429
    assert await response.read() == compressed
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Retry-After"] == "7"
    assert response.headers["x-daily-ratelimit-token-remaining"] == "0"
    assert response.headers["x-correlation-id"] == "corr-1"
    assert response.headers["X-Scope-Proxy-Decision"] == "allow"


async def test_head_is_authorized_as_get(make_proxy: ProxyFactory, upstream: FakePipedrive) -> None:
    client = await make_proxy(tokens=grants(reader=["deals:read"], nobody=[]))
    allowed = await client.head("/v1/deals/7", headers={"Authorization": "Bearer reader"})
    refused = await client.head("/v1/deals/7", headers={"Authorization": "Bearer nobody"})
    assert (allowed.status, refused.status) == (200, 403)
    get = await client.get("/v1/deals/7", headers={"Authorization": "Bearer reader"})
    # The upstream's Content-Length for HEAD is that of the GET body, and passes through.
    assert allowed.headers["Content-Length"] == str(len(await get.read()))
    assert [(r.method, r.raw_path) for r in upstream.received] == [
        ("HEAD", "/v1/deals/7"),
        ("GET", "/v1/deals/7"),
    ]


async def test_response_body_is_streamed_not_buffered(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    release = asyncio.Event()

    async def slow_download(request: web.Request, seen: Received) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        await response.write(b"first chunk;")
        await asyncio.wait_for(release.wait(), timeout=5)
        await response.write(b"second chunk")
        return response

    upstream.respond = slow_download
    client = await make_proxy(tokens=READER)
    response = await client.get("/v1/files/3/download", headers={"Authorization": "Bearer reader"})
    first = await asyncio.wait_for(response.content.readexactly(12), timeout=5)
    assert first == b"first chunk;"  # arrived while the upstream still holds the rest
    release.set()
    assert await response.content.read() == b"second chunk"


async def test_request_body_is_streamed_to_the_upstream_as_it_arrives(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    first_part_seen = asyncio.Event()

    async def read_incrementally(request: web.Request) -> web.StreamResponse:
        first = await request.content.readexactly(5)
        first_part_seen.set()
        rest = await request.content.read()
        return web.json_response({"got": (first + rest).decode()})

    upstream_app = web.Application()
    upstream_app.router.add_post("/v1/files", read_incrementally)
    runner = web.AppRunner(upstream_app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        client = await make_proxy(
            tokens=READER, upstream={"api_url": f"http://127.0.0.1:{port}", "read_timeout": 5}
        )
        assert client.server.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(
            b"POST /v1/files HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer reader\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n"
        )
        await writer.drain()
        # The upstream reads the first part while the client has not sent the rest.
        await asyncio.wait_for(first_part_seen.wait(), timeout=5)
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200")
        assert b'{"got": "hello world"}' in answer
    finally:
        await runner.cleanup()


async def test_unreachable_upstream_is_502_in_pipedrives_envelope(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy(
        tokens=READER, upstream={"api_url": f"http://127.0.0.1:{free_port()}"}
    )
    response = await client.get("/v1/deals", headers={"Authorization": "Bearer reader"})
    assert response.status == 502
    body = envelope(await response.read())
    assert (body["success"], body["errorCode"]) == (False, 502)
    assert body["scope_proxy"]["reason"] == "upstream_unavailable"
    assert response.headers["X-Scope-Proxy-Decision"] == "allow"


async def test_slow_upstream_is_504(make_proxy: ProxyFactory, upstream: FakePipedrive) -> None:
    async def too_slow(request: web.Request, seen: Received) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response()

    upstream.respond = too_slow
    client = await make_proxy(
        tokens=READER, upstream={"api_url": upstream.url, "read_timeout": 0.3}
    )
    response = await client.get("/v1/deals", headers={"Authorization": "Bearer reader"})
    assert response.status == 504
    body = envelope(await response.read())
    assert (body["errorCode"], body["scope_proxy"]["reason"]) == (504, "upstream_timeout")


async def test_upstream_failing_mid_body_leaves_the_client_a_truncated_answer(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    async def dies_halfway(request: web.Request, seen: Received) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: only the final chunk marks a complete body
        await response.prepare(request)
        await response.write(b"partial")
        assert request.transport is not None
        request.transport.close()
        return response

    upstream.respond = dies_halfway
    client = await make_proxy(tokens=READER)
    status, headers, body = await raw_request(
        client,
        b"GET /v1/deals HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer reader\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert b"partial" in body
    assert not body.endswith(b"0\r\n\r\n"), "a cut-off body must not end like a complete one"


async def test_client_that_goes_away_cancels_its_upstream_request(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    started = asyncio.Event()

    async def long_report(request: web.Request, seen: Received) -> web.StreamResponse:
        started.set()
        await asyncio.sleep(30)
        return web.Response()

    upstream.respond = long_report
    client = await make_proxy(tokens=READER, upstream={"api_url": upstream.url, "read_timeout": 60})
    assert client.server.port is not None
    _, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(b"GET /v1/deals HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer reader\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(started.wait(), timeout=5)
    writer.close()
    await asyncio.wait_for(upstream.cancelled.wait(), timeout=5)


async def test_expect_continue_is_answered_only_after_authorization(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=grants(writer=["deals:full"], nobody=[]))
    assert client.server.port is not None

    async def exchange(token: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(
            b"POST /v1/deals HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer " + token + b"\r\n"
            b"Expect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        if first.startswith(b"HTTP/1.1 100"):
            writer.write(b"{}")
            await writer.drain()
            first += await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
        return first

    refused = await exchange(b"nobody")
    assert refused.startswith(b"HTTP/1.1 403")
    assert upstream.received == []
    allowed = await exchange(b"writer")
    assert allowed.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")
    assert [(r.method, r.body) for r in upstream.received] == [("POST", b"{}")]


async def test_an_http_1_0_clients_expect_continue_is_ignored(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    """RFC 9110, 10.1.1: a server ignores a 100-continue expectation in an HTTP/1.0 request;
    the client sends its body without waiting, and gets the final answer only."""
    client = await make_proxy(tokens=grants(writer=["deals:full"]))
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        b"POST /v1/deals HTTP/1.0\r\nHost: p\r\nAuthorization: Bearer writer\r\n"
        b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n{}"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    assert not answer.startswith(b"HTTP/1.1 100"), answer[:40]
    assert answer.split(b" ")[1] == b"200", answer[:40]
    assert b"100 Continue" not in answer
    [received] = upstream.received
    assert received.body == b"{}"


async def test_upstream_cookies_are_not_replayed_to_other_clients(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    async def sets_cookie(request: web.Request, seen: Received) -> web.StreamResponse:
        response = web.Response(text="ok")
        response.set_cookie("session", "secret-of-app-one")
        return response

    upstream.respond = sets_cookie
    client = await make_proxy(tokens=READER)
    first = await client.get("/v1/deals", headers={"Authorization": "Bearer reader"})
    assert "secret-of-app-one" in first.headers["Set-Cookie"]
    client.session.cookie_jar.clear()
    await client.get("/v1/deals", headers={"Authorization": "Bearer reader"})
    assert upstream.received[1].header("Cookie") == []


async def test_a_client_reading_slowly_is_not_cut_off_by_the_upstream_read_timeout(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    """The upstream sends at once; the client stops reading for several read timeouts. The
    proxy stops reading the upstream meanwhile, and that silence is its own, not the upstream's.
    """
    body = bytes(range(256)) * 131072  # 32 MiB: more than the sockets' buffers hold

    async def at_once(request: web.Request, seen: Received) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/octet-stream")

    upstream.respond = at_once
    client = await make_proxy(
        tokens=READER, upstream={"api_url": upstream.url, "read_timeout": 0.3}
    )
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        b"GET /v1/deals HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer reader\r\n"
        b"Connection: close\r\n\r\n"
    )
    received = bytearray(await asyncio.wait_for(reader.read(65536), timeout=10))
    await asyncio.sleep(1.5)  # five read timeouts without reading
    while chunk := await asyncio.wait_for(reader.read(1 << 20), timeout=10):
        received += chunk
    writer.close()
    head, _, got = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(got) == len(body)
    assert got == body
