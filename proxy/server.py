"""The HTTP server under the app: aiohttp's, with two of its defaults changed for a proxy.

1. Requests aiohttp's own HTTP parser refuses never reach a handler or a middleware; aiohttp
   answers them in plain text that quotes the offending line, which may hold a token. Here they
   are answered like every other refusal: Pipedrive's envelope, the decision header, a generic
   message, one log event (``proxy.observe.refuse_unparsed``).
2. The compiled parser and the pure-Python one (``AIOHTTP_NO_EXTENSIONS=1``, or platforms
   without the compiled extension) must not disagree on what reaches the proxy. The pure-Python
   one accepts any method token (upper-casing it), raw non-ASCII bytes in the request line and
   any HTTP/1.x version, where the compiled one (llhttp) accepts only the methods it knows, in
   upper case, ASCII, and HTTP/1.0 or 1.1 (and 0.9, which the app refuses); here it refuses
   what llhttp refuses. ``CONNECT`` (a tunnel, whose bytes the pure-Python
   parser would wait for) is refused by both as a malformed request.

Request bodies are never decompressed (``auto_decompress=False``, set on the application by
``create_app``): a proxy forwards the bytes it received, with the length they were declared with.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine, InvalidHeader, InvalidURLError
from aiohttp.http_parser import HttpRequestParserPy, RawRequestMessage

from proxy.observe import refuse_unparsed

_LENGTH = re.compile(rb"[0-9]{1,18}")
# The methods llhttp (aiohttp's compiled parser) accepts, less CONNECT; a test holds this to it.
LLHTTP_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH "
    b"UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE "
    b"UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)


class ProxyRunner(web.AppRunner):
    """``web.AppRunner`` whose connections speak the proxy's protocol (see the module doc)."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _ProxyServer(self.app, made)


class _ProxyServer(web.Server):
    def __init__(self, app: web.Application, made: web.Server) -> None:
        super().__init__(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )
        self.app = app

    def __call__(self) -> web.RequestHandler:
        return _ProxyProtocol(self, loop=self._loop, **self._kwargs)


class _ProxyProtocol(web.RequestHandler):
    __slots__ = ()

    def __init__(self, manager: _ProxyServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        parser = self._parser
        if isinstance(parser, HttpRequestParserPy):
            parse_message = parser.parse_message

            def parse_strictly(lines: list[bytes]) -> RawRequestMessage:
                method, _, rest = lines[0].partition(b" ")
                if method not in LLHTTP_METHODS:
                    raise BadHttpMethod("method")  # generic: the message is never shown
                if not rest.isascii():
                    raise InvalidURLError("target")
                if not rest.endswith((b" HTTP/1.1", b" HTTP/1.0")):
                    raise BadStatusLine("version")
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length" and not _LENGTH.fullmatch(value.strip()):
                        raise InvalidHeader("Content-Length")  # llhttp refuses what overflows
                return parse_message(lines)

            parser.parse_message = parse_strictly  # type: ignore[method-assign]

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started: nothing else can be sent")
        manager = self._manager
        assert isinstance(manager, _ProxyServer)
        return refuse_unparsed(manager.app, exc)
