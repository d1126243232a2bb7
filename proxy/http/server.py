"""The HTTP server under the app: aiohttp's, with its defaults changed for a proxy.

1. Requests aiohttp's own HTTP parser refuses never reach a handler or a middleware; aiohttp
   answers them in plain text that quotes the offending line, which may hold a token. Here they
   are answered like every other refusal: Pipedrive's envelope, the decision header, a generic
   message, one log event (``proxy.http.observe.refuse_unparsed``).
2. The compiled parser and the pure-Python one (``AIOHTTP_NO_EXTENSIONS=1``, or platforms
   without the compiled extension) must not disagree on what reaches the proxy. The pure-Python
   one accepts any method token (upper-casing it), raw non-ASCII bytes in the request line,
   any HTTP/1.x version and lengths of any size, where the compiled one (llhttp) accepts only
   the methods it knows, in upper case, ASCII, HTTP/1.0 or 1.1 (and 0.9, which the app
   refuses) and lengths that fit; here it refuses what llhttp refuses. ``CONNECT`` (a tunnel,
   whose bytes the pure-Python parser would wait for) is refused by both as malformed.
3. Every request is handled by the app's one route, ``proxy.http.app.serve_request``, inside
   ``proxy.http.observe.observe`` (its refusals rendered, its decision header set, its one log
   event, metrics and report entry recorded), cheaper than a middleware. That route is matched
   once, at start-up, not by aiohttp's router on every request.
4. Client limits (config ``limits``): a connection past ``max_connections`` gets a 503 and is
   closed at once; a request head must arrive within ``header_timeout`` (from the connection's
   start, or from the first byte of a later request); idle keep-alive connections close after
   ``keepalive_timeout``. (``body_timeout`` is the forwarder's: ``proxy.http.forward``.)

Request bodies are never decompressed (``auto_decompress=False``, set on the application by
``create_app``): a proxy forwards the bytes it received, with the length they were declared with.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from proxy.config import Limits
from proxy.core.errors import HeaderTimeout, TooManyConnections
from proxy.http import private
from proxy.http.logs import get_logger
from proxy.http.observe import refuse_unparsed
from proxy.http.private import BadHttpMethod, BadStatusLine, InvalidHeader, InvalidURLError
from proxy.http.responses import raw_refusal
from proxy.http.state import METRICS, RUNTIME

_LENGTH = re.compile(rb"[0-9]{1,18}")
# The methods llhttp (aiohttp's compiled parser) accepts, less CONNECT; a test holds this to it.
LLHTTP_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH "
    b"UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE "
    b"UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)
_TOO_MANY = raw_refusal(TooManyConnections("try again when other calls have finished"))
_HEAD_TOO_SLOW = raw_refusal(HeaderTimeout("the request head did not arrive in time"))
_LOG_EVERY = 10.0  # seconds between two log lines about dropped connections
_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class ProxyRunner(private.RunnerBase):
    """``web.AppRunner`` whose connections speak the proxy's protocol (see the module doc)."""

    def make_server(self, made: private.ServerOptions) -> web.Server:
        return _ProxyServer(self.app, made)


class _ProxyServer(web.Server):
    def __init__(self, app: web.Application, made: private.ServerOptions) -> None:
        self.limits: Limits = app[RUNTIME].current.config.limits
        self.options = {
            **made.options,
            "keepalive_timeout": self.limits.keepalive_timeout,
            # After an answer, what is left of a request body is read and dropped for at most
            # this long (then the connection closes): a stalled upload holds nothing longer.
            "lingering_time": self.limits.body_timeout,
        }
        handler, request_factory = made.handler, made.request_factory
        matched_once = private.route_once(app)
        if matched_once is not None:
            # The app has one route, which takes every request: it is matched once, at
            # start-up, rather than by aiohttp's router on every request. Its handler,
            # proxy.http.app.serve_request, is given the web.Request the factory makes.
            [route] = app.router.routes()
            handler = cast(
                Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], route.handler
            )
            request_factory = matched_once
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made.loop,
            **self.options,
        )
        self.loop = made.loop
        self.app = app
        self._dropped: dict[str, int] = {}
        self._last_said = 0.0
        self._sweeping: asyncio.TimerHandle | None = None

    def watch_heads(self) -> None:
        """Check request heads' deadlines about four times per ``header_timeout`` (one timer
        for the server, rather than one per request)."""
        if self._sweeping is None:
            self._sweeping = self.loop.call_later(self._sweep_every, self._sweep)

    @property
    def _sweep_every(self) -> float:
        return min(1.0, self.limits.header_timeout / 4)

    def _sweep(self) -> None:
        self._sweeping = None
        deadline = self.loop.time() - self.limits.header_timeout
        for protocol in list(private.connections(self)):
            if isinstance(protocol, _ProxyProtocol) and protocol.head_late(deadline):
                protocol.head_too_slow()
        if private.connections(self):
            self.watch_heads()

    def __call__(self) -> web.RequestHandler:
        return _ProxyProtocol(self, loop=self.loop, **self.options)

    @property
    def full(self) -> bool:
        return len(private.connections(self)) >= self.limits.max_connections

    def dropped(self, reason: str) -> None:
        """Count a connection closed by a limit; say so in the log, at most every few seconds."""
        self.app[METRICS].connections_dropped.labels(reason).inc()
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._last_said >= _LOG_EVERY:
            self._last_said = now
            get_logger().warning("connections_dropped", **self._dropped)
            self._dropped = {}


class _ProxyProtocol(private.ProtocolBase):
    __slots__ = ("_head_begun", "_head_since", "_now", "_refused")

    def __init__(self, manager: _ProxyServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_since: float | None = None  # when the head waited for was due from
        self._head_begun = False
        self._refused = False
        self._now = self.loop.time
        self.hold_parser(_as_llhttp_would)

    @property
    def _server(self) -> _ProxyServer:
        manager = self.manager
        assert isinstance(manager, _ProxyServer)
        return manager

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        if server.full:
            self._refused = True
            assert isinstance(transport, asyncio.Transport)
            transport.write(_TOO_MANY)
            transport.close()
            server.dropped("too_many_connections")
            return
        super().connection_made(transport)
        self._head_since, self._head_begun = self._now(), False
        server.watch_heads()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._head_since = None
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and self.between_requests():
            if self._head_since is None:
                self._head_since = self._now()  # the first byte of a later request
            self._head_begun = True  # the first request's deadline runs from the connection
        web.RequestHandler.data_received(self, data)
        if self._head_since is not None and self.has_request():
            self._head_since = None

    def head_late(self, deadline: float) -> bool:
        return self._head_since is not None and self._head_since < deadline

    def head_too_slow(self) -> None:
        self._head_since = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._head_begun:
            transport.write(_HEAD_TOO_SLOW)  # a partial head: say why before closing
        self._server.dropped("header_timeout")
        self.force_close()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own report of an error it met outside any handler (a malformed chunk in the
        rest of a body it reads and drops after the answer, say): one event naming the kind of
        error, never its message, which may quote what the client sent."""
        error = kw.get("exc_info")
        get_logger().warning(
            "connection_error",
            error_type=type(error).__name__ if isinstance(error, BaseException) else None,
        )

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started: nothing else can be sent")
        return refuse_unparsed(self._server.app, exc, request.transport)


def _as_llhttp_would(lines: list[bytes]) -> None:
    """Refuse a request head the compiled parser (llhttp) would refuse, for the pure-Python one:
    an unknown method, non-ASCII in the request line, a version other than HTTP/1.0 or 1.1, a
    Content-Length that is not digits or overflows. Messages are generic: never shown."""
    method, _, rest = lines[0].partition(b" ")
    if method not in LLHTTP_METHODS:
        raise BadHttpMethod("method")
    if not rest.isascii():
        raise InvalidURLError("target")
    if not rest.endswith((b" HTTP/1.1", b" HTTP/1.0")):
        raise BadStatusLine("version")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length" and not _LENGTH.fullmatch(value.strip()):
            raise InvalidHeader("Content-Length")
