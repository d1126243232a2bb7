"""The table of requests the proxy refuses for their shape alone, as raw bytes, with the
status and reason it answers each with: the same under both of aiohttp's HTTP parsers. Each
carries a token holding every scope, so only the request's shape can refuse it."""

from __future__ import annotations

from tests.conftest import CATALOGUE

ALL = sorted(CATALOGUE.scopes)
AUTH = b"Authorization: Bearer everything\r\n"


def get(target: bytes, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return (
        method + b" " + target + b" HTTP/1.1\r\nHost: proxy.test\r\n" + AUTH + extra
        + b"Connection: close\r\n\r\n"
    )  # fmt: skip


AMBIGUOUS, MALFORMED, MULTIPLE = "ambiguous_request", "malformed_request", "multiple_credentials"
NOT_ALLOWED = "method_not_allowed"

# (what the request is, its bytes, the status and the reason the proxy answers with): the same
# under both of aiohttp's HTTP parsers.
REFUSED = [
    ("absolute-form target", get(b"http://evil.example:8443/v1/deals"), 400, AMBIGUOUS),
    (
        "authority-form target",
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        400,
        MALFORMED,
    ),
    ("path without leading slash", get(b"v1/deals"), 400, MALFORMED),
    ("empty segment", get(b"/v1//deals"), 400, AMBIGUOUS),
    ("leading double slash", get(b"//evil.example/v1/deals"), 400, AMBIGUOUS),
    ("trailing slash", get(b"/v1/deals/"), 400, AMBIGUOUS),
    ("dot segment", get(b"/v1/./deals"), 400, AMBIGUOUS),
    ("dot-dot segment", get(b"/v1/deals/../users"), 400, AMBIGUOUS),
    ("dot-dot escaping the prefix", get(b"/v1/../admin"), 400, AMBIGUOUS),
    ("encoded slash", get(b"/v1/deals%2F1"), 400, AMBIGUOUS),
    ("encoded lower-case slash", get(b"/v1/deals%2f1"), 400, AMBIGUOUS),
    ("encoded backslash", get(b"/v1/deals%5C1"), 400, AMBIGUOUS),
    ("encoded dot-dot", get(b"/v1/deals/%2e%2e/users"), 400, AMBIGUOUS),
    ("encoded single dot", get(b"/v1/%2E/deals"), 400, AMBIGUOUS),
    ("encoded percent", get(b"/v1/deals/%251"), 400, AMBIGUOUS),
    ("encoded semicolon", get(b"/v1/deals/1%3Bx"), 400, AMBIGUOUS),
    ("encoded hash", get(b"/v1/deals/1%23x"), 400, AMBIGUOUS),
    ("encoded question mark", get(b"/v1/deals/1%3Fx"), 400, AMBIGUOUS),
    ("encoded NUL", get(b"/v1/deals/1%00"), 400, AMBIGUOUS),
    ("encoded newline", get(b"/v1/deals/1%0A"), 400, AMBIGUOUS),
    ("encoded NUL in the query", get(b"/v1/deals?term=a%00b"), 400, AMBIGUOUS),
    ("encoded letter spelling a literal", get(b"/v1/de%61ls"), 400, AMBIGUOUS),
    ("encoded byte >= 0x80 in the path", get(b"/v1/deals/%C3%A9"), 400, AMBIGUOUS),
    ("malformed percent-encoding", get(b"/v1/deals/%zz"), 400, AMBIGUOUS),
    ("truncated percent-encoding", get(b"/v1/deals/1%2"), 400, AMBIGUOUS),
    ("raw backslash", get(b"/v1/deals\\1"), 400, AMBIGUOUS),
    ("raw semicolon path parameter", get(b"/v1/deals;x=1/1"), 400, AMBIGUOUS),
    ("raw semicolon in the query", get(b"/v1/deals?a=1;api_token=x"), 400, AMBIGUOUS),
    ("raw hash", get(b"/v1/deals#frag"), 400, AMBIGUOUS),
    ("empty query the upstream client would drop", get(b"/v1/deals?"), 400, AMBIGUOUS),
    ("non-ASCII byte in the path", get(b"/v1/deals/\xc3\xa9"), 400, MALFORMED),
    ("over-long target", get(b"/v1/deals?term=" + b"a" * 8000), 400, AMBIGUOUS),
    ("request line over aiohttp's limit", get(b"/v1/deals?term=" + b"a" * 9000), 400, MALFORMED),
    ("lower-case method", get(b"/v1/deals", method=b"get"), 400, MALFORMED),
    ("case variant of a literal", get(b"/v1/users/ME"), 400, AMBIGUOUS),
    (
        "X-HTTP-Method-Override",
        get(b"/v1/deals", b"X-HTTP-Method-Override: DELETE\r\n"),
        400,
        AMBIGUOUS,
    ),
    ("X-HTTP-Method", get(b"/v1/deals", b"X-HTTP-Method: DELETE\r\n"), 400, AMBIGUOUS),
    ("X-Method-Override", get(b"/v1/deals", b"X-Method-Override: DELETE\r\n"), 400, AMBIGUOUS),
    ("_method query parameter", get(b"/v1/deals?_method=DELETE"), 400, AMBIGUOUS),
    ("encoded _method query parameter", get(b"/v1/deals?%5Fmethod=DELETE"), 400, AMBIGUOUS),
    (
        "bracketed [_method], as Node's qs reads it",
        get(b"/v1/deals?[_method]=DELETE"),
        400,
        AMBIGUOUS,
    ),
    (".method, as PHP reads it", get(b"/v1/deals?.method=DELETE"), 400, AMBIGUOUS),
    ("+_method, a leading space PHP drops", get(b"/v1/deals?+_method=DELETE"), 400, AMBIGUOUS),
    ("%20_method, an encoded leading space", get(b"/v1/deals?%20_method=DELETE"), 400, AMBIGUOUS),
    ("Upgrade header", get(b"/v1/deals", b"Upgrade: websocket\r\n"), 400, AMBIGUOUS),
    ("X_Api_Token header", get(b"/v1/deals", b"X_Api_Token: abc\r\n"), 400, AMBIGUOUS),
    (
        "X_HTTP_Method_Override header",
        get(b"/v1/deals", b"X_HTTP_Method_Override: DELETE\r\n"),
        400,
        AMBIGUOUS,
    ),
    ("second Authorization header", get(b"/v1/deals", AUTH), 400, MULTIPLE),
    ("Bearer plus x-api-token", get(b"/v1/deals", b"x-api-token: abc\r\n"), 400, MULTIPLE),
    ("Bearer plus api_token parameter", get(b"/v1/deals?api_token=abc"), 400, MULTIPLE),
    ("upper-case API_TOKEN parameter", get(b"/v1/deals?API_TOKEN=abc"), 400, MULTIPLE),
    ("bracketed api_token parameter", get(b"/v1/deals?api_token[]=abc"), 400, MULTIPLE),
    ("non-ASCII header value", get(b"/v1/deals", b"X-Note: caf\xc3\xa9\r\n"), 400, AMBIGUOUS),
    (
        "Content-Length beside Transfer-Encoding (request smuggling)",
        get(b"/v1/deals", b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"POST"),
        400,
        MALFORMED,
    ),
    (
        "Transfer_Encoding header",
        get(b"/v1/deals", b"Transfer_Encoding: chunked\r\n"),
        400,
        AMBIGUOUS,
    ),
    ("HTTP/0.9 request line, no version", b"GET /v1/deals\r\n\r\n", 400, MALFORMED),
    ("HTTP/1.2", get(b"/v1/deals").replace(b"HTTP/1.1", b"HTTP/1.2"), 400, MALFORMED),
    ("HTTP/9.9", get(b"/v1/deals").replace(b"HTTP/1.1", b"HTTP/9.9"), 400, MALFORMED),
    (
        "Content-Length past what a 64-bit length holds",
        get(b"/v1/deals", b"Content-Length: 99999999999999999999999\r\n", b"POST"),
        400,
        MALFORMED,
    ),
    (
        "empty Transfer-Encoding beside Content-Length",
        get(b"/v1/deals", b"Transfer-Encoding:\r\nContent-Length: 5\r\n", b"POST") + b"hello",
        400,
        MALFORMED,
    ),
    (
        "Transfer-Encoding gzip, chunked (the coding would be dropped)",
        get(b"/v1/deals", b"Transfer-Encoding: gzip, chunked\r\n", b"POST") + b"0\r\n\r\n",
        400,
        MALFORMED,
    ),
    ("PROPFIND method", get(b"/v1/deals", method=b"PROPFIND"), 405, NOT_ALLOWED),
    ("OPTIONS method", get(b"/v1/deals", method=b"OPTIONS"), 405, NOT_ALLOWED),
    ("TRACE method", get(b"/v1/deals", method=b"TRACE"), 405, NOT_ALLOWED),
]
