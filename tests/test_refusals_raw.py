"""Refusals of ambiguous requests, sent as raw bytes over a socket.

HTTP client libraries rewrite paths before sending (dot segments, encodings), so every request
here is written byte for byte. Each carries a token that holds every scope, so the refusal can
only come from the request's shape; and the fake upstream must receive nothing.
"""

from __future__ import annotations

import pytest

from tests.conftest import ProxyFactory, envelope, grants, raw_request
from tests.fakes import FakePipedrive
from tests.refusals import ALL, REFUSED, get


@pytest.mark.parametrize(("request_bytes", "status", "reason"), [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])  # fmt: skip
async def test_ambiguous_request_is_refused_before_any_upstream_contact(
    request_bytes: bytes,
    status: int,
    reason: str,
    http_parser_kind: str,
    make_proxy: ProxyFactory,
    upstream: FakePipedrive,
) -> None:
    client = await make_proxy(tokens=grants(everything=ALL))
    answer_status, headers, body = await raw_request(client, request_bytes)
    assert upstream.received == []
    assert answer_status == status, body
    assert headers["x-scope-proxy-decision"] == "deny"
    assert headers["content-type"].startswith("application/json")
    answer = envelope(body)
    assert answer["success"] is False
    assert answer["errorCode"] == status
    assert answer["scope_proxy"]["reason"] == reason


ACCEPTED = [
    ("plain path", b"/v1/deals/42"),
    ("api prefix", b"/api/v1/deals/42"),
    ("query kept as sent", b"/v1/deals?start=0&limit=5&sort=title%20ASC"),
    ("encoded UTF-8 in the query", b"/api/v2/deals/search?term=caf%C3%A9"),
    ("encoded slash in the query", b"/v1/itemSearch?term=a%2Fb"),
    ("brackets in the query", b"/api/v2/deals?ids[]=1&ids[]=2"),
    ("encoded space in a segment", b"/v1/deals/4%201"),
]


@pytest.mark.parametrize("target", [t for _, t in ACCEPTED], ids=[n for n, _ in ACCEPTED])
async def test_unambiguous_target_goes_upstream_byte_for_byte(
    target: bytes, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=grants(everything=ALL))
    status, headers, _ = await raw_request(client, get(target))
    assert status == 200
    assert headers["x-scope-proxy-decision"] == "allow"
    assert [r.raw_path.encode() for r in upstream.received] == [target]


async def test_oauth_token_path_keeps_its_documented_trailing_slash(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy()
    form = b"grant_type=refresh_token&refresh_token=r"
    status, _, _ = await raw_request(
        client,
        b"POST /oauth/token/ HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Basic Y2k6Y3M=\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: "
        + str(len(form)).encode() + b"\r\nConnection: close\r\n\r\n" + form,
    )  # fmt: skip
    assert status == 200
    assert [(r.method, r.raw_path, r.body) for r in upstream.received] == [
        ("POST", "/oauth/token/", form)
    ]
