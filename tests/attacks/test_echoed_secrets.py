"""Secrets echoed: no answer and no log line quotes the request back.

aiohttp's HTTP parser answers what it cannot parse in plain text and quotes the offending line,
which may hold an ``api_token``, an ``x-api-token`` or a Bearer token; so did the proxy's own 401
for a malformed ``Authorization``. Reflected secrets end up in client logs, proxies' error pages
and bug reports (CWE-209, information exposure through an error message). Every answer here is
Pipedrive's envelope with the decision header and a message in the proxy's own words.
"""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from tests.conftest import ProxyFactory, envelope, grants
from tests.fakes import FakePipedrive

SECRET = b"s3cr3tT0ken0123456789abcdef"
HOST = b"Host: proxy.test\r\n"
BEARER = b"Authorization: Bearer writer\r\n"

CASES = [
    ("an Authorization with no scheme", 401, "unsupported_credential",
     b"GET /v1/deals HTTP/1.1\r\n" + HOST + b"Authorization: " + SECRET + b"\r\n"),
    ("a Basic Authorization", 401, "unsupported_credential",
     b"GET /v1/deals HTTP/1.1\r\n" + HOST + b"Authorization: Basic " + SECRET + b"\r\n"),
    ("a Bearer token with a comma", 400, "multiple_credentials",
     b"GET /v1/deals HTTP/1.1\r\n" + HOST + b"Authorization: Bearer " + SECRET + b",x\r\n"),
    ("a NUL in an x-api-token value", 400, "malformed_request",
     b"GET /v1/deals HTTP/1.1\r\n" + HOST + b"x-api-token: " + SECRET + b"\x00\r\n"),
    ("a header name with a space", 400, "malformed_request",
     b"GET /v1/deals HTTP/1.1\r\n" + HOST + b"X-Api-Token " + SECRET + b": 1\r\n"),
    ("an over-long x-api-token line", 400, "malformed_request",
     b"GET /v1/deals HTTP/1.1\r\n" + HOST + b"x-api-token: " + SECRET + b"a" * 9000 + b"\r\n"),
    ("a bad HTTP version after an api_token", 400, "malformed_request",
     b"GET /v1/deals?api_token=" + SECRET + b" HTTP/9.x\r\n" + HOST),
    ("a lower-case method before an api_token", 400, "malformed_request",
     b"get /v1/deals?api_token=" + SECRET + b" HTTP/1.1\r\n" + HOST),
    ("a control character after an api_token", 400, "malformed_request",
     b"GET /v1/deals?api_token=" + SECRET + b"\x01 HTTP/1.1\r\n" + HOST),
    ("a non-ASCII byte in an x-api-token value", 400, "ambiguous_request",
     b"GET /v1/deals HTTP/1.1\r\n" + HOST + b"x-api-token: " + SECRET + b"\xc3\xa9\r\n"),
    ("a Content-Length that is the token", 400, "malformed_request",
     b"POST /v1/deals HTTP/1.1\r\n" + HOST + BEARER + b"Content-Length: " + SECRET + b"\r\n"),
    ("a disguised x-api-token header", 400, "ambiguous_request",
     b"GET /v1/deals HTTP/1.1\r\n" + HOST + b"X_Api_Token: " + SECRET + b"\r\n"),
    ("a disguised api_token parameter", 400, "ambiguous_request",
     b"GET /v1/deals?api.token=" + SECRET + b" HTTP/1.1\r\n" + HOST),
    ("a refused path holding the token", 400, "ambiguous_request",
     b"GET /v1/" + SECRET + b"%2F HTTP/1.1\r\n" + HOST + BEARER),
    ("a path outside the API holding the token", 404, "not_found",
     b"GET /" + SECRET + b" HTTP/1.1\r\n" + HOST + BEARER),
    ("an unknown method", 400, "malformed_request",
     SECRET + b" /v1/deals HTTP/1.1\r\n" + HOST),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "reason", "head"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_no_answer_or_log_line_quotes_the_request(
    status: int,
    reason: str,
    head: bytes,
    http_parser_kind: str,
    make_proxy: ProxyFactory,
    upstream: FakePipedrive,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await make_proxy(tokens=grants(writer=["deals:full"]))
    assert client.server.port is not None
    with capture_logs() as events:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(head + b"Connection: close\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
    assert SECRET not in answer
    assert SECRET.decode() not in repr(events) + capsys.readouterr().out
    response_head, _, body = answer.partition(b"\r\n\r\n")
    response_head += b"\r\n"
    assert int(response_head.split(b" ")[1]) == status
    assert b"\r\nX-Scope-Proxy-Decision: deny\r\n" in response_head
    assert b"\r\nContent-Type: application/json" in response_head
    document = envelope(body)
    assert (document["errorCode"], document["scope_proxy"]["reason"]) == (status, reason)
    [event] = [e for e in events if e["event"] == "request"]
    assert (event["reason"], event["status"]) == (reason, status)
    assert event["problem"], "the log line names the problem"
    assert upstream.received == []


async def test_a_chunked_body_with_a_token_for_a_size_is_not_echoed(
    make_proxy: ProxyFactory, upstream: FakePipedrive, capsys: pytest.CaptureFixture[str]
) -> None:
    """A framing error found mid-body, after the call was authorized: cut off, never quoted."""
    client = await make_proxy(tokens=grants(writer=["deals:full"]))
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        b"POST /v1/deals HTTP/1.1\r\n" + HOST + BEARER + b"Transfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + SECRET + b"\r\nxyz\r\n0\r\n\r\n"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    assert SECRET not in answer
    assert SECRET.decode() not in capsys.readouterr().out
    assert all(SECRET not in r.body for r in upstream.received)


async def test_a_malformed_chunk_after_the_answer_is_not_quoted_in_any_log(
    http_parser_kind: str,
    make_proxy: ProxyFactory,
    upstream: FakePipedrive,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The call is refused while its body is still coming; the rest of the body, which aiohttp
    reads and drops after the answer, has a chunk size that is the token. aiohttp's own error
    report (a traceback quoting the line) would print it; the proxy logs the kind of error."""
    client = await make_proxy(tokens=grants(reader=["deals:read"]), limits={"body_timeout": 1})
    assert client.server.port is not None
    with capture_logs() as events:
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(
            b"POST /v1/deals HTTP/1.1\r\n" + HOST + b"Authorization: Bearer reader\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        writer.write(SECRET + b"\r\n0\r\n\r\n")  # after the answer: read and dropped
        await writer.drain()
        await asyncio.wait_for(reader.read(), timeout=10)  # the connection closes
        writer.close()
    assert head.startswith(b"HTTP/1.1 403 ")
    printed = capsys.readouterr()
    for where in (repr(events), printed.out, printed.err, caplog.text):
        assert SECRET.decode() not in where
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")], caplog.text
    assert upstream.received == []
