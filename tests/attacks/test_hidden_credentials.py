"""A second credential the proxy does not count: every spelling some server reads as one.

Pipedrive honours a personal API token over a Bearer token, so a request that carries a checked
Bearer token and an unchecked API token is a scope bypass. PHP's request parser turns ``.``,
`` `` and an unclosed ``[`` in parameter names into ``_`` and drops leading spaces (the mangling
behind CVE-2024-4577-style parser confusions and many WAF bypasses); RFC 6750 defines
``access_token`` as a query credential; ``Connection: Authorization`` would have the proxy drop
the very header it checked (RFC 9110's hop-by-hop rule turned against a proxy).
"""

from __future__ import annotations

import pytest

from tests.conftest import ProxyFactory, envelope, grants, raw_request
from tests.fakes import FakePipedrive

TOKENS = grants(reader=["deals:read"])


def call(
    target: bytes, extra: bytes = b"", auth: bytes = b"Authorization: Bearer reader\r\n"
) -> bytes:
    return (
        b"GET " + target + b" HTTP/1.1\r\nHost: proxy.test\r\n" + auth + extra
        + b"Connection: close\r\n\r\n"
    )  # fmt: skip


# Query names that PHP (or another server) reads as api_token or access_token.
DISGUISED_PARAMETERS = [
    ("PHP: '.' read as '_'", b"api.token"),
    ("PHP: encoded '.' read as '_'", b"api%2Etoken"),
    ("PHP: '+' (a space) read as '_'", b"api+token"),
    ("PHP: encoded space read as '_'", b"api%20token"),
    ("PHP: unclosed '[' read as '_'", b"api[token"),
    ("PHP: encoded unclosed '['", b"api%5Btoken"),
    ("PHP: leading space dropped", b"%20api_token"),
    ("PHP: leading '+' dropped", b"+api_token"),
    ("PHP and Node qs: an array named api_token", b"api_token[]"),
    ("PHP and Node qs: an indexed api_token", b"api_token[0]"),
    ("a case-insensitive reader", b"API_TOKEN"),
    ("a reader of '-' as '_'", b"api-token"),
    ("Unicode normalization: fullwidth low line", b"api%EF%BC%BFtoken"),
    ("Node qs: a bracketed name is read as the root", b"[api_token]"),
    ("Node qs: a bracketed array", b"[api_token][]"),
    ("Node qs: a bracketed access_token", b"[access_token]"),
    ("Rack: a stray closing bracket", b"]api_token"),
    ("Rack: doubled opening brackets", b"[[api_token"),
    ("RFC 6750 access_token", b"access_token"),
    ("RFC 6750 access_token, mangled", b"access.token"),
    ("RFC 6750 access_token, upper case", b"ACCESS_TOKEN"),
]


@pytest.mark.parametrize(
    "name", [n for _, n in DISGUISED_PARAMETERS], ids=[i for i, _ in DISGUISED_PARAMETERS]
)
async def test_a_disguised_api_token_beside_a_bearer_is_two_credentials(
    name: bytes, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS)
    status, headers, body = await raw_request(client, call(b"/v1/deals?" + name + b"=0123abc"))
    assert (status, envelope(body)["scope_proxy"]["reason"]) == (400, "multiple_credentials")
    assert headers["x-scope-proxy-decision"] == "deny"
    assert upstream.received == []


@pytest.mark.parametrize(
    "name", [n for _, n in DISGUISED_PARAMETERS], ids=[i for i, _ in DISGUISED_PARAMETERS]
)
async def test_a_disguised_credential_alone_is_refused_not_guessed(
    name: bytes, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS, api_tokens="app_scopes", app_scopes=["deals:read"])
    status, _, body = await raw_request(client, call(b"/v1/deals?" + name + b"=0123abc", auth=b""))
    assert (status, envelope(body)["scope_proxy"]["reason"]) == (400, "ambiguous_request")
    assert upstream.received == []


NOT_CREDENTIALS = [
    ("a longer name", b"api_token_hint"),
    ("PHP: a closed bracket makes an array named api", b"api[token]"),
    ("a trailing suffix", b"my_api_token"),
]


@pytest.mark.parametrize(
    "name", [n for _, n in NOT_CREDENTIALS], ids=[i for i, _ in NOT_CREDENTIALS]
)
async def test_names_no_server_reads_as_a_credential_pass(
    name: bytes, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS)
    status, _, _ = await raw_request(client, call(b"/v1/deals?" + name + b"=1"))
    assert status == 200
    assert [r.raw_path.encode() for r in upstream.received] == [b"/v1/deals?" + name + b"=1"]


CONNECTION_TRICKS = [
    ("Connection names Authorization", b"Connection: Authorization\r\n"),
    ("Connection names it among others", b"Connection: keep-alive, authorization\r\n"),
    ("Connection names x-api-token", b"Connection: x-api-token\r\n"),
    ("Connection names x_api_token", b"Connection: x_api_token\r\n"),
    ("Proxy-Connection names Authorization", b"Proxy-Connection: Authorization\r\n"),
    ("Connection names Content-Length", b"Connection: Content-Length\r\n"),
    ("Connection names Transfer-Encoding", b"Connection: Transfer-Encoding\r\n"),
    ("Connection names Host", b"Connection: Host\r\n"),
]


@pytest.mark.parametrize(
    "header", [h for _, h in CONNECTION_TRICKS], ids=[i for i, _ in CONNECTION_TRICKS]
)
async def test_a_connection_header_naming_what_the_decision_reads_is_refused(
    header: bytes, http_parser_kind: str, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS)
    # Refused before anything is read: the proxy would decide on a header, then drop it.
    status, _, body = await raw_request(client, call(b"/v1/deals", header + b"X-Note: 1\r\n"))
    assert (status, envelope(body)["scope_proxy"]["reason"]) == (400, "ambiguous_request")
    assert upstream.received == []


async def test_connection_may_still_name_hop_by_hop_and_custom_headers(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS)
    status, _, _ = await raw_request(
        client, call(b"/v1/deals", b"Connection: close, X-Trace\r\nX-Trace: 1\r\nTE: trailers\r\n")
    )
    assert status == 200
    [seen] = upstream.received
    assert seen.header("Authorization") == ["Bearer reader"]
    assert seen.header("X-Trace") == []
    assert seen.header("TE") == []


# A comma is what a proxy in front makes of one header sent twice (Envoy joins them): two.
MALFORMED_TOKENS = [
    (
        "a comma splits it for some readers",
        b"Authorization: Bearer a,b\r\n",
        "multiple_credentials",
    ),
    ("a space splits it", b"Authorization: Bearer a b\r\n", "ambiguous_request"),
    ("a quote", b'Authorization: Bearer "a"\r\n', "ambiguous_request"),
    ("two spaces before it", b"Authorization: Bearer  reader\r\n", "ambiguous_request"),
    ("an API token with a comma", b"x-api-token: a,b\r\n", "multiple_credentials"),
]


@pytest.mark.parametrize(
    ("auth", "reason"), [c[1:] for c in MALFORMED_TOKENS], ids=[c[0] for c in MALFORMED_TOKENS]
)
async def test_a_token_a_server_could_split_or_unquote_is_refused(
    auth: bytes, reason: str, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS, api_tokens="app_scopes", app_scopes=["deals:read"])
    status, _, body = await raw_request(client, call(b"/v1/deals", auth=auth))
    assert (status, envelope(body)["scope_proxy"]["reason"]) == (400, reason)
    assert upstream.received == []
