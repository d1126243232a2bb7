"""The OAuth exchange must not go around the proxy: every token answer is read, or refused.

axios, and so the official Node client, sends ``Accept-Encoding: gzip, compress, deflate, br``;
forwarded as is, the OAuth server answers in brotli, which the proxy could not read: the token
would not be learned and ``api_domain`` not rewritten, so the client's next calls would go
straight to Pipedrive. The proxy asks only for what it reads, and refuses (502) a successful
token answer it still cannot read. A token whose lifetime cannot be believed (``1e999``,
``NaN``) is not learned, and its answer still reaches the client.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from tests.conftest import ProxyFactory, envelope
from tests.fakes import FakeOAuth, FakePipedrive

AXIOS = {
    "Authorization": "Basic Y2xpZW50OnNlY3JldA==",
    "Content-Type": "application/x-www-form-urlencoded",
    "Accept-Encoding": "gzip, compress, deflate, br",
}
FORM = "grant_type=authorization_code&code=abc"


async def test_a_brotli_accepting_client_still_teaches_the_proxy(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    oauth = FakeOAuth(scope="deals:read", encoding="negotiate")
    upstream.respond = oauth.respond
    client = await make_proxy()
    response = await client.post("/oauth/token", data=FORM, headers=AXIOS)
    assert response.status == 200
    assert oauth.accepted == ["identity"], "the OAuth server is asked only for what the proxy reads"
    body = await response.json()
    assert body["api_domain"] == f"http://{client.host}:{client.port}"
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await client.get("/v1/deals", headers=auth)).status == 200
    assert (await client.delete("/v1/deals/1", headers=auth)).status == 403


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_an_answer_encoded_anyway_in_a_coding_the_proxy_reads_is_learned(
    encoding: str, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    upstream.respond = FakeOAuth(scope="deals:read", encoding=encoding).respond
    client = await make_proxy()
    response = await client.post("/oauth/token", data=FORM, headers=AXIOS)
    body = await response.json()
    assert body["api_domain"] == f"http://{client.host}:{client.port}"
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await client.get("/v1/deals", headers=auth)).status == 200


async def test_a_token_answer_the_proxy_cannot_read_is_a_502_never_passed_on(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    oauth = FakeOAuth(scope="deals:read", encoding="br")  # a server that ignores Accept-Encoding
    upstream.respond = oauth.respond
    client = await make_proxy()
    response = await client.post("/oauth/token", data=FORM, headers=AXIOS)
    assert response.status == 502
    assert response.headers["X-Scope-Proxy-Decision"] == "allow"
    assert envelope(await response.read())["scope_proxy"]["reason"] == "oauth_response_unreadable"
    [token] = oauth.issued
    assert token.encode() not in await response.read()


async def test_a_content_encoded_oauth_request_is_refused(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    upstream.respond = FakeOAuth().respond
    client = await make_proxy()
    response = await client.post(
        "/oauth/revoke", data=b"\x1f\x8b...", headers={**AXIOS, "Content-Encoding": "gzip"}
    )
    assert response.status == 400
    assert upstream.received == []


async def test_an_oauth_body_whose_chunking_breaks_is_a_400_never_passed_on(
    http_parser_kind: str, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    """The body is read whole before the exchange is passed on; a chunk size the parser refuses
    halfway through is a malformed request (the pure-Python parser reports it as an error, the
    compiled one stops reading: the stall timeout answers)."""
    upstream.respond = FakeOAuth().respond
    client = await make_proxy(limits={"body_timeout": 1})
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        b"POST /oauth/token HTTP/1.1\r\nHost: proxy.test\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n1\r\na\r\n"
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the first chunk is read before the broken one comes
    writer.write(b"ZZ\r\nxx\r\n0\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    reason = envelope(body)["scope_proxy"]["reason"]
    assert (status, reason) in ((400, "malformed_request"), (408, "request_timeout")), answer
    if http_parser_kind == "pure-Python parser":
        assert (status, reason) == (400, "malformed_request")
    assert upstream.received == []


@pytest.mark.parametrize("lifetime", [math.inf, -math.inf, math.nan, -5.0, 0.0, 1e12])
async def test_an_unbelievable_lifetime_teaches_nothing_and_the_answer_passes(
    lifetime: float, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    upstream.respond = FakeOAuth(scope="deals:read", expires_in=lifetime).respond
    client = await make_proxy()
    response = await client.post("/oauth/token", data=FORM, headers=AXIOS)
    assert response.status == 200
    body = await response.json()
    assert body["api_domain"] == f"http://{client.host}:{client.port}"
    refused = await client.get(
        "/v1/deals", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert refused.status == 401
    assert envelope(await refused.read())["scope_proxy"]["reason"] == "unknown_token"
