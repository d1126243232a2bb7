"""The proxy's HTTP server: both of aiohttp's parsers refuse the same request lines."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import http_parser
from aiohttp.http_exceptions import BadStatusLine

from proxy.http.server import LLHTTP_METHODS

CANDIDATES = sorted(
    {m.decode() for m in LLHTTP_METHODS}
    | {"CONNECT", "PRI", "FOO", "DELETEX", "GET_PARAMETER", "DESCRIBE", "S3CR3T", "get", "Get"}
)


class _Protocol(asyncio.Protocol):
    def resume_reading(self, **_: Any) -> None:
        pass


@pytest.mark.parametrize("method", CANDIDATES)
def test_the_pure_python_parser_is_held_to_the_methods_llhttp_accepts(method: str) -> None:
    compiled = getattr(http_parser, "HttpRequestParserC", None)
    assert compiled is not None, "aiohttp's compiled HTTP parser is not available"
    loop = asyncio.new_event_loop()
    try:
        parser = compiled(_Protocol(), loop, 2**16, max_line_size=8190, max_field_size=8190)
        try:
            parser.feed_data(method.encode() + b" /v1/deals HTTP/1.1\r\nHost: x\r\n\r\n")
            accepted = True
        except BadStatusLine:
            accepted = False
    finally:
        loop.close()
    assert accepted == (method.encode() in LLHTTP_METHODS or method == "CONNECT")
