"""An upstream that misbehaves: every fault gets the right answer and the proxy keeps serving.

The upstream is raw sockets, told what to do by the id in the path (``/v1/deals/<fault>``):
refuse, never answer, reset or close mid-body, send a malformed status line, a 200 KB header or
a control character in one, drip its answer, close kept-alive connections without a word, or
drop the second request sent on a connection. The right answer is a 502 or 504 in Pipedrive's
envelope while nothing was sent yet, a visibly truncated body once the answer has started; and
afterwards the proxy's descriptors are back where they were.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.http.forward import has_control
from proxy.http.state import UPSTREAM
from tests.conftest import ProxyFactory, envelope, free_port, grants
from tests.fakes import parse_head, read_body

TOKENS = grants(reader=["deals:read"])
AUTH = {"Authorization": "Bearer reader"}
BODY = b'{"success": true, "data": {"id": 1, "title": "a deal with a long enough title"}}'


def answer(body: bytes = BODY, length: int | None = None, extra: bytes = b"") -> bytes:
    declared = len(body) if length is None else length
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {declared}\r\n".encode() + extra + b"\r\n" + body
    )  # fmt: skip


class FaultyUpstream:
    """Answers each request as its path's last segment says."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.url = ""
        self.heads: list[bytes] = []  # every request head received, in order
        self._answered: set[asyncio.StreamWriter] = set()  # connections that answered once

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                fault = head.split(b" ", 2)[1].rsplit(b"/", 1)[-1].decode()
                if not await self.behave(fault, reader, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def behave(
        self, fault: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer as ``fault`` says; False when the connection is done with."""
        if fault == "silent":
            await reader.read()  # until the proxy gives up and closes
            return False
        if fault == "reset":
            writer.write(answer()[: len(answer()) - 40])
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST
            return False
        if fault == "short":
            writer.write(answer(length=len(BODY) + 100))
            await writer.drain()
            return False  # FIN before the declared length
        if fault == "stall":
            writer.write(answer()[: len(answer()) - 40])
            await writer.drain()
            await reader.read()  # until the proxy gives up and closes
            return False
        if fault == "once":  # the first request on a connection; the next one is dropped
            if writer in self._answered:
                return False  # closed as the request arrives: the pooled connection is gone
            self._answered.add(writer)
            await read_body(reader, parse_head(0, self.heads[-1]).headers)
        if fault == "interim":  # an interim answer, then nothing: the final one is still due
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            await writer.drain()
            await reader.read()  # until the proxy gives up and closes
            return False
        if fault == "status":
            writer.write(b"HTTP/1.1 two hundred OK\r\nContent-Length: 0\r\n\r\n")
        elif fault == "hugeheader":
            writer.write(answer(extra=b"X-Big: " + b"a" * 200_000 + b"\r\n"))
        elif fault == "control":
            writer.write(answer(extra=b"X-Note: a\x01b\r\n"))
        elif fault == "delete":
            writer.write(answer(extra=b"X-Note: a\x7fb\r\n"))
        elif fault == "tabbed":  # a tab and bytes over 127 are allowed in a field value
            writer.write(answer(extra=b"X-Note: a\tb \xe9t\xc3\xa9\r\n"))
        elif fault == "drip":
            for byte in answer():
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.002)
        elif fault == "hangup":
            writer.write(answer())  # keep-alive, then close without saying so
            await writer.drain()
            await asyncio.sleep(0.02)
            return False
        else:
            writer.write(answer())
        await writer.drain()
        return True


@pytest.fixture
async def faulty() -> AsyncIterator[FaultyUpstream]:
    upstream = FaultyUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()


async def fetch(client: TestClient[Any, Any], fault: str) -> tuple[int, bytes, str]:
    """Status, body and how the body ended: ``whole`` or ``truncated``. Each call on a
    connection of its own, closed after it, so that only the proxy holds descriptors."""
    url = client.make_url(f"/v1/deals/{fault}")
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=10),  # a fault the proxy never answers fails
        ) as session,
        session.get(url, headers=AUTH) as response,
    ):
        try:
            body = await response.read()
            ending = "whole"
        except aiohttp.ClientPayloadError:  # the client saw the answer cut off
            body, ending = b"", "truncated"
        return response.status, body, ending


UPFRONT = [
    ("never answers", "silent", 504, "upstream_timeout"),
    ("an interim 103, then nothing", "interim", 504, "upstream_timeout"),
    ("malformed status line", "status", 502, "upstream_unavailable"),
    ("200 KB header", "hugeheader", 502, "upstream_unavailable"),
    ("control character in a header", "control", 502, "upstream_unavailable"),
    ("DEL in a header", "delete", 502, "upstream_unavailable"),
]


@pytest.mark.parametrize(
    ("fault", "status", "reason"), [u[1:] for u in UPFRONT], ids=[u[0] for u in UPFRONT]
)
async def test_a_fault_before_the_answer_is_a_502_or_504_in_the_envelope(
    fault: str, status: int, reason: str, make_proxy: ProxyFactory, faulty: FaultyUpstream
) -> None:
    client = await make_proxy(tokens=TOKENS, upstream={"api_url": faulty.url, "read_timeout": 0.5})
    got, body, _ = await fetch(client, fault)
    assert got == status
    document = envelope(body)
    assert (document["errorCode"], document["scope_proxy"]["reason"]) == (status, reason)
    assert (await fetch(client, "fine"))[:2] == (200, BODY), "and it keeps serving"


async def test_a_tab_and_bytes_over_127_in_an_upstream_header_are_not_refused(
    make_proxy: ProxyFactory, faulty: FaultyUpstream
) -> None:
    client = await make_proxy(tokens=TOKENS, upstream={"api_url": faulty.url})
    assert (await fetch(client, "tabbed"))[:2] == (200, BODY)


@given(st.text(st.characters(codec=None, categories=None), max_size=40))
@example("a\tb")
@example("\x7f")
@example("\udce9")  # a byte over 127 that is not UTF-8, as aiohttp decodes it
@example("".join(map(chr, range(0x80, 0x100))))
def test_has_control_finds_exactly_the_control_characters_other_than_a_tab(text: str) -> None:
    expected = any(char != "\t" and (char < " " or char == "\x7f") for char in text)
    assert has_control(text) is expected


MID_BODY = [
    ("reset mid-answer", "reset"),
    ("closed before the declared length", "short"),
    ("stalls mid-answer", "stall"),
]


@pytest.mark.parametrize("fault", [m[1] for m in MID_BODY], ids=[m[0] for m in MID_BODY])
async def test_a_fault_mid_answer_leaves_a_visibly_truncated_body(
    fault: str, make_proxy: ProxyFactory, faulty: FaultyUpstream
) -> None:
    client = await make_proxy(tokens=TOKENS, upstream={"api_url": faulty.url, "read_timeout": 0.5})
    status, _, ending = await fetch(client, fault)
    assert (status, ending) == (200, "truncated")
    assert (await fetch(client, "fine"))[:2] == (200, BODY)


async def test_a_dripped_answer_arrives_whole(
    make_proxy: ProxyFactory, faulty: FaultyUpstream
) -> None:
    client = await make_proxy(tokens=TOKENS, upstream={"api_url": faulty.url, "read_timeout": 0.5})
    assert await fetch(client, "drip") == (200, BODY, "whole")


async def test_a_pooled_connection_has_no_read_deadline_left_to_fail_it(
    make_proxy: ProxyFactory, faulty: FaultyUpstream
) -> None:
    """aiohttp re-arms the read timeout when a paused connection resumes reading, even when
    the rest of the answer it then parses completes it and the connection goes back to the
    pool; the timeout must not then fail the idle connection (the next call on it would get a
    504 without being sent). The resumption is imitated: it depends on socket buffer sizes."""
    client = await make_proxy(tokens=TOKENS, upstream={"api_url": faulty.url, "read_timeout": 0.2})
    assert (await fetch(client, "fine"))[:2] == (200, BODY)
    session = client.app[UPSTREAM]._session
    assert session is not None
    assert isinstance(session.connector, aiohttp.TCPConnector)
    pooled = [protocol for idle in session.connector._conns.values() for protocol, _ in idle]
    assert pooled, "the connection went back to the pool"
    for protocol in pooled:
        protocol._reschedule_timeout()  # what ResponseHandler.resume_reading does
    await asyncio.sleep(0.6)  # past the read timeout and the checks after it
    assert (await fetch(client, "fine"))[:2] == (200, BODY)


async def test_kept_alive_connections_closed_by_the_upstream_are_not_reused(
    make_proxy: ProxyFactory, faulty: FaultyUpstream
) -> None:
    client = await make_proxy(tokens=TOKENS, upstream={"api_url": faulty.url})
    for _ in range(5):
        assert (await fetch(client, "hangup"))[:2] == (200, BODY)
        await asyncio.sleep(0.1)  # the upstream has closed the pooled connection by now


async def test_an_idempotent_call_is_sent_again_when_its_pooled_connection_was_dropped(
    make_proxy: ProxyFactory, faulty: FaultyUpstream
) -> None:
    """The upstream drops the second request sent on a kept-alive connection, as one that
    closed it while idle but before the proxy noticed: a call without a body whose method is
    idempotent goes again, once, on a new connection; one with a body, or not idempotent, is
    never sent twice (a 502)."""
    client = await make_proxy(
        tokens=[*TOKENS, *grants(writer=["deals:full", "goals:full"])],
        upstream={"api_url": faulty.url},
    )
    writer = {"Authorization": "Bearer writer"}
    calls = [
        ("GET", "/api/v2/deals/once", AUTH, None, 200),
        ("DELETE", "/api/v2/deals/once", writer, None, 200),
        ("PATCH", "/api/v2/deals/once", writer, b'{"title": "x"}', 502),
        ("PUT", "/v1/goals/once", writer, b'{"title": "x"}', 502),  # idempotent, with a body
    ]
    for method, path, headers, body, status in calls:
        assert (await client.get(calls[0][1], headers=AUTH)).status == 200  # pools one
        sent = len(faulty.heads)
        response = await client.request(method, path, headers=headers, data=body)
        assert response.status == status, (method, await response.text())
        again = faulty.heads[sent:]
        assert [head.split(b" ", 1)[0] for head in again] == [method.encode()] * (
            2 if status == 200 else 1
        )
        if status == 502:
            assert envelope(await response.read())["scope_proxy"]["reason"] == (
                "upstream_unavailable"
            )


async def test_an_upstream_refusing_connections_is_a_502(make_proxy: ProxyFactory) -> None:
    client = await make_proxy(
        tokens=TOKENS, upstream={"api_url": f"http://127.0.0.1:{free_port()}"}
    )
    status, body, _ = await fetch(client, "fine")
    assert (status, envelope(body)["scope_proxy"]["reason"]) == (502, "upstream_unavailable")


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_descriptors_return_to_their_baseline_after_many_faults(
    make_proxy: ProxyFactory, faulty: FaultyUpstream
) -> None:
    client = await make_proxy(tokens=TOKENS, upstream={"api_url": faulty.url, "read_timeout": 0.3})
    await fetch(client, "fine")  # the pool and the client hold their one connection
    await asyncio.sleep(0.05)
    gc.collect()
    baseline = open_descriptors()
    faults = ["reset", "short", "stall", "status", "hugeheader", "control", "silent", "hangup"]
    for _ in range(5):
        await asyncio.gather(*(fetch(client, fault) for fault in faults))
    await fetch(client, "fine")
    for _ in range(50):  # connections close as the loop gets to them
        await asyncio.sleep(0.05)
        gc.collect()
        if open_descriptors() <= baseline:
            break
    assert open_descriptors() <= baseline
