"""Request smuggling: no request the proxy did not authorize reaches the upstream.

The upstream here answers as soon as a request head arrives and only then reads the body its
head declares, as Node's ``http`` and Go's ``net/http`` do, and (where a test says so) ignores
bodies on GET, as servers open to CL.0 desync do. The proxy pools its upstream connections, so
any request whose body is not sent exactly as declared would hand the next request on that
connection to the upstream as body, or a body to it as a request.

Cases mirror PortSwigger's "HTTP request smuggling" research (CL.TE, TE.0, CL.0 / "browser-
powered desync") and the body-decompression desync found in this proxy (a gzip body inflated by
aiohttp's server and forwarded with the compressed length).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import (
    AiohttpClient,
    ProxyFactory,
    build_config,
    envelope,
    grants,
    proxy_client,
    raw_request,
)
from tests.fakes import EagerUpstream
from tests.waiting import eventually

TOKENS = grants(reader=["deals:read"], writer=["deals:full"])
SMUGGLED = b"GET /v1/activities HTTP/1.1\r\nHost: upstream\r\nX-Request-Id: smuggled\r\n\r\n"


@pytest.fixture
async def eager() -> AsyncIterator[EagerUpstream]:
    upstream = EagerUpstream(ignore_get_body=True)
    await upstream.start()
    yield upstream
    await upstream.close()


def request(
    method: str, target: str, token: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: proxy.test", f"Authorization: Bearer {token}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body and "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


COMPRESSED = [
    ("gzip", gzip.compress(b'{"title": "Big deal"}')),
    ("deflate", zlib.compress(b'{"title": "Big deal"}')),
    ("br", os.urandom(40)),  # whatever the bytes: the proxy never decodes them
    ("zstd", os.urandom(40)),
    ("gzip, identity", gzip.compress(b"x" * 500)),
]


@pytest.mark.parametrize(("coding", "body"), COMPRESSED, ids=[c for c, _ in COMPRESSED])
async def test_decompression_desync_a_compressed_body_goes_upstream_as_sent(
    coding: str, body: bytes, make_proxy: ProxyFactory, eager: EagerUpstream
) -> None:
    client = await make_proxy(tokens=TOKENS, upstream={"api_url": eager.url})
    status, _, _ = await raw_request(
        client,
        request(
            "POST", "/v1/deals", "writer", body,
            # a form, multipart or JSON body with its own encoding cannot be read: refused
            # (tests/attacks/test_body_overrides.py); any other goes as it came
            {"Content-Encoding": coding, "Content-Type": "application/octet-stream"},
        ),
    )  # fmt: skip
    assert status == 200
    [seen] = eager.received
    assert (seen.method, seen.target, seen.body) == ("POST", "/v1/deals", body)
    assert seen.headers["content-length"] == str(len(body))
    assert seen.headers["content-encoding"] == coding


BODY_ON_BODYLESS = [
    ("CL.0: a GET with a Content-Length body", "GET",
     {"X-Request-Id": "a"}, SMUGGLED),
    ("TE.0: a GET with a chunked body", "GET",
     {"Transfer-Encoding": "chunked"}, f"{len(SMUGGLED):x}\r\n".encode() + SMUGGLED + b"\r\n0\r\n\r\n"),
    ("a HEAD with a body", "HEAD", {}, SMUGGLED),
    ("a GET with a gzip body that inflates to a request", "GET",
     {"Content-Encoding": "gzip"}, gzip.compress(SMUGGLED)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "headers", "body"),
    [c[1:] for c in BODY_ON_BODYLESS],
    ids=[c[0] for c in BODY_ON_BODYLESS],
)
async def test_a_body_on_get_or_head_is_refused(
    method: str,
    headers: dict[str, str],
    body: bytes,
    http_parser_kind: str,
    make_proxy: ProxyFactory,
    eager: EagerUpstream,
) -> None:
    client = await make_proxy(tokens=TOKENS, upstream={"api_url": eager.url})
    status, answer_headers, answer = await raw_request(
        client, request(method, "/v1/deals", "reader", body, headers)
    )
    assert status == 400
    assert answer_headers["x-scope-proxy-decision"] == "deny"
    if method != "HEAD":
        assert envelope(answer)["scope_proxy"]["reason"] == "ambiguous_request"
    assert eager.received == []


async def test_a_get_declaring_an_empty_body_is_served(
    make_proxy: ProxyFactory, eager: EagerUpstream
) -> None:
    client = await make_proxy(tokens=TOKENS, upstream={"api_url": eager.url})
    status, _, _ = await raw_request(
        client, request("GET", "/v1/deals", "reader", headers={"Content-Length": "0"})
    )
    assert status == 200
    assert [(r.method, r.target) for r in eager.received] == [("GET", "/v1/deals")]


async def one_call(port: int, data: bytes) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body) if body else {}


async def test_sequence_no_unauthorized_request_reaches_the_upstream_and_no_answer_is_crossed(
    make_proxy: ProxyFactory, eager: EagerUpstream
) -> None:
    """Rounds of concurrent clients, allowed calls among smuggling attempts, over a pool of
    upstream connections: the upstream parses exactly the allowed calls, and each client gets
    the answer to its own call."""
    client = await make_proxy(tokens=TOKENS, upstream={"api_url": eager.url})
    assert client.server.port is not None
    port = client.server.port
    allowed: dict[str, tuple[str, str]] = {}
    calls: list[tuple[str | None, bytes]] = []
    for round_ in range(6):
        for n in range(4):
            rid = f"ok-{round_}-{n}"
            target = f"/v1/deals/{round_ * 10 + n}"
            allowed[rid] = ("GET", target)
            calls.append((rid, request("GET", target, "reader", headers={"X-Request-Id": rid})))
        rid = f"post-{round_}"
        allowed[rid] = ("POST", "/v1/deals")
        padded = gzip.compress(SMUGGLED + os.urandom(64))  # inflates shorter than it is
        calls.append((rid, request("POST", "/v1/deals", "writer", padded,
                                   {"Content-Encoding": "gzip", "X-Request-Id": rid,
                                    "Content-Type": "application/octet-stream"})))  # fmt: skip
        for _, method, extra, smuggling in BODY_ON_BODYLESS:
            calls.append((None, request(method, "/v1/deals", "reader", smuggling, extra)))
    answers = await asyncio.gather(*(one_call(port, data) for _, data in calls))

    for (call_id, _), (status, answer) in zip(calls, answers, strict=True):
        if call_id is None:
            assert status == 400
        else:
            assert status == 200, call_id
            assert answer["request_id"] == call_id, "a client got another client's answer"
            assert (answer["method"], answer["target"]) == allowed[call_id]
    assert sorted(r.request_id or "" for r in eager.received) == sorted(allowed)
    for seen in eager.received:
        assert seen.request_id is not None
        assert (seen.method, seen.target) == allowed[seen.request_id]


async def test_a_body_cut_short_by_its_client_closes_its_upstream_connection(
    make_proxy: ProxyFactory, eager: EagerUpstream
) -> None:
    client = await make_proxy(tokens=TOKENS, upstream={"api_url": eager.url})
    assert client.server.port is not None
    _reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    head = request(
        "POST", "/v1/deals", "writer", b"x" * 100,
        {"X-Request-Id": "cut", "Content-Type": "application/octet-stream"},
    )  # fmt: skip
    writer.write(head[:-60])  # the head and 40 of the 100 bytes it declares
    await writer.drain()
    for _ in range(200):
        if eager.received:
            break
        await asyncio.sleep(0.01)
    writer.close()
    for _ in range(200):
        if eager.cut_mid_body:
            break
        await asyncio.sleep(0.01)
    assert eager.cut_mid_body == [1], "the upstream connection of the cut body was closed"
    status, body = await one_call(
        client.server.port, request("GET", "/v1/deals/1", "reader", headers={"X-Request-Id": "n"})
    )
    assert (status, body["request_id"], body["connection"]) == (200, "n", 2)
    assert [r.request_id for r in eager.received] == ["cut", "n"]


async def test_a_body_shorter_than_declared_is_never_followed_on_its_connection(
    aiohttp_client: AiohttpClient, eager: EagerUpstream
) -> None:
    """The second line of defence: should a body ever reach the forwarder shorter than its
    Content-Length (here the server is made to inflate gzip bodies again, as aiohttp does by
    default), its upstream connection is closed, never handed to the next request."""
    from proxy.http.app import create_app

    config, catalogue = build_config(eager.url, tokens=TOKENS)
    app = create_app(config, catalogue)
    assert app._handler_args is not None
    app._handler_args["auto_decompress"] = True  # type: ignore[index]  # the old, vulnerable setting
    client = await proxy_client(aiohttp_client, app)
    assert client.server.port is not None
    port = client.server.port
    short = gzip.compress(os.urandom(200))  # inflates to 200 bytes, declared as about 220
    status, _ = await one_call(
        port,
        request(
            "POST",
            "/v1/deals",
            "writer",
            short,
            {
                "Content-Encoding": "gzip",
                "X-Request-Id": "s",
                "Content-Type": "application/octet-stream",
            },
        ),
    )
    assert status in (200, 502)
    status, body = await one_call(
        port, request("GET", "/v1/deals/1", "reader", headers={"X-Request-Id": "next"})
    )
    assert (status, body["request_id"]) == (200, "next")
    assert body["connection"] != eager.received[0].connection
    assert [r.request_id for r in eager.received] == ["s", "next"]


async def test_an_upstream_writing_on_an_idle_connection_never_answers_the_next_client(
    make_proxy: ProxyFactory,
) -> None:
    """Response desync: bytes an upstream sends on a pooled connection while it is idle must
    not be read as the answer to the next request on it (that client would get them, and every
    later client the previous one's answer)."""
    injected = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"
    eager = EagerUpstream(unsolicited=injected)
    await eager.start()
    try:
        client = await make_proxy(tokens=TOKENS, upstream={"api_url": eager.url})
        assert client.server.port is not None
        port = client.server.port
        status, first = await one_call(
            port, request("GET", "/v1/deals", "reader", headers={"X-Request-Id": "first"})
        )
        assert (status, first["request_id"]) == (200, "first")
        await eventually(lambda: eager.unsolicited_sent == 1, "the upstream's unsolicited bytes")
        await asyncio.sleep(0)  # and the proxy's side has read them
        for n in range(4):
            status, answer = await one_call(
                port, request("GET", f"/v1/deals/{n}", "writer", headers={"X-Request-Id": f"n{n}"})
            )
            assert (status, answer["request_id"]) == (200, f"n{n}")
            assert answer["connection"] != first["connection"]
    finally:
        await eager.close()
