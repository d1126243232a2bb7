"""Forwarding: send an authorized request upstream unchanged and stream the answer back.

One ``ClientSession`` per process. The URL is the configured upstream origin followed by the
request target exactly as received, passed pre-encoded so the client cannot re-normalize it.
Bodies stream in both directions and are never decompressed. Upstream failures are mapped to
the proxy's errors in ONE ``try``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias

import aiohttp
from aiohttp import StreamReader, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config import Upstream as UpstreamSettings
from proxy.errors import ProxyError, UpstreamTimeout, UpstreamUnavailable
from proxy.logs import RequestRecord
from proxy.metrics import Metrics
from proxy.responses import DECISION_HEADER

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
    }
)
# Headers aiohttp's client would add on its own; the app's request goes up without them.
_NO_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_BUFFERED = 256 * 1024
# Sees a buffered upstream answer (status, headers, body) and returns the headers and body to send.
Transform: TypeAlias = Callable[
    [int, CIMultiDict[str], bytes], Awaitable[tuple[CIMultiDict[str], bytes]]
]


def end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Headers minus hop-by-hop ones and those the ``Connection`` header names."""
    kept: CIMultiDict[str] = CIMultiDict(headers)  # a copy made in C; then remove, rarely
    named = [
        token.strip()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
        if token.strip()
    ]
    for name in (*HOP_BY_HOP, *named):
        if name in kept:
            kept.popall(name)
    return kept


async def send_continue(request: web.Request) -> None:
    """Answer ``Expect: 100-continue``: the client may now send the body."""
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(_CONTINUE)


async def read_limited(stream: StreamReader, limit: int, too_large: ProxyError) -> bytes:
    """A whole (small) body; ``too_large`` is raised past ``limit`` bytes."""
    chunks, size = [], 0
    async for chunk in stream.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class Upstream:
    """The pooled upstream client, owned by the app's ``cleanup_ctx``."""

    def __init__(self, settings: UpstreamSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.settings.connect_timeout,
            sock_connect=self.settings.connect_timeout,
            sock_read=self.settings.read_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, ttl_dns_cache=60),
            timeout=timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # never carry one app's cookies to another
            skip_auto_headers=_NO_AUTO_HEADERS,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(
        self,
        request: web.Request,
        origin: str,
        target: str,
        record: RequestRecord,
        *,
        body: bytes | None = None,
        transform: Transform | None = None,
    ) -> web.StreamResponse:
        """Send ``origin + target`` upstream, byte for byte, and stream its answer back.

        ``body``: the request body already read (else it streams from the client).
        ``transform``: read the (small) answer whole and let it see or change the body first.
        """
        assert self._session is not None, "Upstream.start() was not awaited"
        url = URL(origin + target, encoded=True)
        data: bytes | StreamReader | None = body
        if body is None and request.body_exists:
            data = request.content
            await send_continue(request)  # only now that the call is authorized
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(
                request.method,
                url,
                headers=end_to_end(request.headers),
                data=data,
                allow_redirects=False,
            ) as upstream:
                record.upstream_status = upstream.status
                if transform is not None:
                    return await self._buffered(upstream, record, transform)
                if upstream.content.is_eof():
                    # The whole body has already arrived with the headers: send both at once.
                    return self._complete(upstream, record, upstream.content.read_nowait())
                response = web.StreamResponse(
                    status=upstream.status,
                    reason=upstream.reason,
                    headers=end_to_end(upstream.headers),
                )
                response.headers[DECISION_HEADER] = record.decision
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            self._fail(record, "connect")
            raise UpstreamUnavailable(f"cannot connect to {url.host}") from error
        except (TimeoutError, aiohttp.SocketTimeoutError) as error:
            if response is not None and response.prepared:
                self._abort(request, record, "timeout")
                raise StreamAborted(response) from error
            self._fail(record, "timeout")
            raise UpstreamTimeout(
                f"no bytes from upstream for {self.settings.read_timeout:g} s"
            ) from error
        except (aiohttp.ClientError, ConnectionError) as error:
            if response is not None and response.prepared:
                transport = request.transport
                gone = transport is None or transport.is_closing()
                self._abort(request, record, "client_gone" if gone else "disconnect")
                raise StreamAborted(response) from error
            self._fail(record, "disconnect")
            raise UpstreamUnavailable("upstream closed the connection") from error

    async def _buffered(
        self, upstream: aiohttp.ClientResponse, record: RequestRecord, transform: Transform
    ) -> web.Response:
        too_large = UpstreamUnavailable(f"upstream answer over {MAX_BUFFERED} bytes")
        whole = await read_limited(upstream.content, MAX_BUFFERED, too_large)
        headers, body = await transform(upstream.status, end_to_end(upstream.headers), whole)
        headers.popall("Content-Length", None)
        headers[DECISION_HEADER] = record.decision
        return web.Response(
            status=upstream.status, reason=upstream.reason, headers=headers, body=body
        )

    def _complete(
        self, upstream: aiohttp.ClientResponse, record: RequestRecord, body: bytes
    ) -> web.Response:
        headers = end_to_end(upstream.headers)
        headers[DECISION_HEADER] = record.decision
        response = web.Response(
            status=upstream.status, reason=upstream.reason, headers=headers, body=body or None
        )
        return response

    def _fail(self, record: RequestRecord, kind: str) -> None:
        self.metrics.upstream_errors.labels(kind).inc()

    def _abort(self, request: web.Request, record: RequestRecord, kind: str) -> None:
        """Headers are already sent: cut the connection so the client sees a truncated body."""
        self._fail(record, kind)
        record.error = kind if kind == "client_gone" else f"upstream_{kind}_mid_body"
        if request.transport is not None:
            request.transport.abort()


class StreamAborted(Exception):
    """The response was cut off mid-stream; there is nothing left to send."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("response cut off mid-stream")
        self.response = response
