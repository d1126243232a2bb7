"""Client limits: what one client may hold of the proxy (config ``limits``).

Slow or silent clients are the cheapest way to take a server down (slowloris, slow POST); each
limit here is shown closing what it must close while other clients keep being served.
"""

from __future__ import annotations

import asyncio
import time

from tests.conftest import ProxyFactory, envelope, grants, raw_request
from tests.fakes import EagerUpstream, FakePipedrive

TOKENS = grants(reader=["deals:read"], writer=["deals:full"])
FAST = {"header_timeout": 0.3, "body_timeout": 0.3, "keepalive_timeout": 0.5}
GET = b"GET /v1/deals HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer reader\r\n\r\n"
# Slow POST: the head and 1 of the 100 body bytes it declares, then nothing.
STALLED_UPLOAD = (  # a body streamed as it comes (a form is read first: test_body_overrides)
    b"POST /v1/deals HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer writer\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\nx"
)


async def open_to(client_port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", client_port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, float]:
    """What the proxy sends before it closes, and how long that took."""
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), timeout=seconds)
    return data, time.monotonic() - started


async def test_a_connection_that_sends_nothing_is_closed_after_header_timeout(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy(tokens=TOKENS, limits=FAST)
    assert client.server.port is not None
    reader, writer = await open_to(client.server.port)
    data, took = await closed_within(reader, 5)
    writer.close()
    assert data == b""
    assert 0.2 < took < 2


async def test_a_half_sent_head_is_answered_408_and_closed_after_header_timeout(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS, limits=FAST)
    assert client.server.port is not None
    reader, writer = await open_to(client.server.port)
    writer.write(GET[:30])  # slowloris: part of the head, then nothing
    await writer.drain()
    data, took = await closed_within(reader, 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 ")
    assert b"X-Scope-Proxy-Decision: deny" in data
    assert envelope(data.partition(b"\r\n\r\n")[2])["scope_proxy"]["reason"] == "header_timeout"
    assert took < 2
    assert upstream.received == []
    metrics = await (await client.get("/_proxy/metrics")).text()
    assert 'scope_proxy_connections_dropped_total{reason="header_timeout"} 1.0' in metrics


async def test_a_head_dripped_slower_than_header_timeout_is_cut_off(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy(tokens=TOKENS, limits=FAST)
    assert client.server.port is not None
    reader, writer = await open_to(client.server.port)
    started = time.monotonic()

    async def until_closed() -> tuple[bytes, float]:
        try:
            data = await reader.read()
        except ConnectionError:
            data = b"reset"  # closed under a client still writing: its kernel may drop the 408
        return data, time.monotonic() - started

    closed = asyncio.create_task(until_closed())
    for byte in GET:  # a byte every 50 ms: each alone is in time, the whole head is not
        if closed.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.05)
    data, took = await asyncio.wait_for(closed, timeout=5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 ") or data == b"reset"
    assert took < 2


async def test_a_kept_alive_connection_gets_a_fresh_head_deadline_per_request(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy(tokens=TOKENS, limits={**FAST, "keepalive_timeout": 5})
    assert client.server.port is not None
    reader, writer = await open_to(client.server.port)
    for _ in range(3):  # well past header_timeout in all, each request in time
        writer.write(GET)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        await asyncio.sleep(0.2)
    writer.close()


async def test_an_idle_kept_alive_connection_closes_after_keepalive_timeout(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy(tokens=TOKENS, limits={**FAST, "header_timeout": 10})
    assert client.server.port is not None
    reader, writer = await open_to(client.server.port)
    writer.write(GET)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    data, took = await closed_within(reader, 5)
    writer.close()
    assert (data, took < 2) == (b"", True)


async def test_one_connection_over_max_connections_is_refused_at_once_and_the_rest_served(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS, limits={"max_connections": 3, "header_timeout": 5})
    assert client.server.port is not None
    held = [await open_to(client.server.port) for _ in range(3)]
    await asyncio.sleep(0.05)
    reader, writer = await open_to(client.server.port)
    data, took = await closed_within(reader, 2)
    assert data.startswith(b"HTTP/1.1 503 ")
    assert envelope(data.partition(b"\r\n\r\n")[2])["scope_proxy"]["reason"] == (
        "too_many_connections"
    )
    assert took < 0.5
    writer.close()
    # The connections already open are served as ever.
    for held_reader, held_writer in held:
        held_writer.write(GET)
        await held_writer.drain()
        head = await asyncio.wait_for(held_reader.readuntil(b"\r\n\r\n"), timeout=5)
        assert head.startswith(b"HTTP/1.1 200 ")
        held_writer.close()
    assert len(upstream.received) == 3


async def test_a_stalled_upload_is_cut_at_body_timeout_with_its_upstream_call(
    make_proxy: ProxyFactory,
) -> None:
    """Slow POST: a token holder who sends a byte and stops must not hold an upstream
    connection: at body_timeout the client gets 408 and the upstream call is cancelled."""
    patient = EagerUpstream()  # answers at the head, then reads the body it declares
    await patient.start()
    try:
        client = await make_proxy(tokens=TOKENS, limits=FAST, upstream={"api_url": patient.url})
        assert client.server.port is not None
        reader, writer = await open_to(client.server.port)
        writer.write(STALLED_UPLOAD)
        await writer.drain()
        data, took = await closed_within(reader, 5)
        writer.close()
        for _ in range(100):
            if patient.cut_mid_body:
                break
            await asyncio.sleep(0.02)
        assert patient.cut_mid_body == [1], "the upstream connection was closed mid-body"
        assert took < 2
        assert data  # the upstream answered at the head: the client has that answer, or a 408
    finally:
        await patient.close()


async def test_a_stalled_upload_before_any_answer_is_a_408(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS, limits=FAST)
    assert client.server.port is not None
    reader, writer = await open_to(client.server.port)
    writer.write(STALLED_UPLOAD)
    await writer.drain()
    data, took = await closed_within(reader, 5)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert envelope(data.partition(b"\r\n\r\n")[2])["scope_proxy"]["reason"] == "request_timeout"
    assert took < 2
    assert upstream.received == [], "the upstream never got a whole request"
    writer.close()


async def test_a_stalled_oauth_form_is_a_408(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(limits=FAST)
    status, _, body = await asyncio.wait_for(
        raw_request(
            client,
            b"POST /oauth/token HTTP/1.1\r\nHost: p\r\nContent-Length: 50\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\ngrant_type=",
        ),
        timeout=5,
    )
    assert (status, envelope(body)["scope_proxy"]["reason"]) == (408, "request_timeout")
