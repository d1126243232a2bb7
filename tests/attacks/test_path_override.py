"""Path-override headers: some frameworks route by a header instead of the request line.

Symfony's and Zend's ``X-Original-URL`` / ``X-Rewrite-URL`` support let a request authorized for
one path be routed to another (CVE-2018-14773); IIS and other stacks know more spellings. The
proxy authorizes the request line, so a header that could replace it is refused, as method
overrides are, in every spelling a server might fold to it.
"""

from __future__ import annotations

import pytest

from tests.conftest import ProxyFactory, envelope, grants, raw_request
from tests.fakes import FakePipedrive

OVERRIDES = [
    ("X-Original-URL (CVE-2018-14773)", b"X-Original-URL: /v1/activities"),
    ("X-Rewrite-URL (CVE-2018-14773)", b"X-Rewrite-URL: /v1/activities"),
    ("X_Original_URL, the underscore alias", b"X_Original_URL: /v1/activities"),
    ("X_Rewrite_URL, the underscore alias", b"X_Rewrite_URL: /v1/activities"),
    ("x-original-url in lower case", b"x-original-url: /v1/activities"),
    ("X-Original-URI (nginx auth_request setups)", b"X-Original-URI: /v1/activities"),
    ("X-Forwarded-Uri (Traefik forward auth)", b"X-Forwarded-Uri: /v1/activities"),
    ("X-Override-URL", b"X-Override-URL: /v1/activities"),
]


@pytest.mark.parametrize("header", [h for _, h in OVERRIDES], ids=[i for i, _ in OVERRIDES])
async def test_a_path_override_header_is_refused(
    header: bytes, http_parser_kind: str, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=grants(reader=["deals:read"]))
    status, headers, body = await raw_request(
        client,
        b"GET /v1/deals HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer reader\r\n"
        + header + b"\r\nConnection: close\r\n\r\n",
    )  # fmt: skip
    assert (status, envelope(body)["scope_proxy"]["reason"]) == (400, "ambiguous_request")
    assert headers["x-scope-proxy-decision"] == "deny"
    assert upstream.received == []
