"""Forwarding: send an authorized request upstream unchanged and stream the answer back.

One ``ClientSession`` per process. The URL is the configured upstream origin followed by the
request target exactly as received, passed pre-encoded so the client cannot re-normalize it.
Bodies stream in both directions and are never decompressed. Upstream failures are mapped to
the proxy's errors in ONE ``try``.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import StreamReader, web
from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from proxy.config import UpstreamSettings
from proxy.core.drift import PEEK_BYTES
from proxy.core.errors import (
    DECISION_HEADER,
    MalformedRequest,
    RequestTimeout,
    UpstreamFailure,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.http import private
from proxy.http.private import HttpProcessingError, ResponsesBase

HOP_BY_HOP = tuple(  # istr: looked up without being case-folded again on every request
    istr(name)
    for name in (
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
    )
)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_UPSTREAM_FAILURES = (aiohttp.ClientError, ConnectionError, TimeoutError)
# Sent again, once, on another connection when the pooled one turns out closed (as
# ``ClientSession.request`` does): the methods RFC 9110 calls idempotent.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# How an upstream answer is read (aiohttp's defaults): its body as it comes, never decompressed,
# to the end of the connection where it declares no length; a head of at most 128 lines of at
# most 8190 bytes. ``read_timeout`` and ``skip_payload`` are set per call; there is no total
# timeout, and the read timeout is ``_ReadDeadlines``'.
_READING: dict[str, Any] = {
    "read_until_eof": True,
    "auto_decompress": False,
    "read_bufsize": 2**16,
    "timeout_ceil_threshold": 5,
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 128,
}
# Control characters an upstream header may not carry (HTAB aside): the server would refuse to
# send them on, after the status was already decided.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A copy of the first bytes (``PEEK_BYTES``) of an upstream 403 answer, kept when the forwarder
# is asked to (``peek``): whether Pipedrive refused the call for want of a scope is read from
# it once the answer is sent (``proxy.core.drift``).
PEEKED = web.RequestKey("peeked", bytes)
# Seconds from sending a forwarded call to its answer's head (the upstream latency histogram).
UPSTREAM_SECONDS = web.RequestKey("upstream_seconds", float)


class _ExactResponses(ResponsesBase):
    """An upstream connection that reads only the answers it asked for.

    aiohttp's pool keeps a connection on which the upstream writes while it is idle (an
    unsolicited or extra answer), and the next request on it would read those bytes as its
    own answer: every later client would get the previous one's. Here a connection that
    receives a byte when no answer is due, or a second final answer to one request, is closed.

    Its read timeout (``sock_read``) is a deadline that ``_ReadDeadlines`` checks, rather than
    aiohttp's timer, made and cancelled again for every read.
    """

    def __init__(self, loop: Any, deadlines: _ReadDeadlines) -> None:
        super().__init__(loop)
        self._deadlines = deadlines

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._deadlines.watch(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._deadlines.forget(self)
        super().connection_lost(exc)

    def set_response_params(self, **params: Any) -> None:
        self.awaiting = True
        super().set_response_params(**params)

    def data_received(self, data: bytes) -> None:
        if not self.awaiting:
            if data:
                self._refuse()
            return
        ResponsesBase.data_received(self, data)
        queued, payload = self.answers()
        if len(queued) > 1 and sum(not _interim(answer[0].code) for answer, _ in queued) > 1:
            self._refuse()
            return
        if payload is not None and payload.is_eof():
            if not (queued and _interim(queued[-1][0][0].code)):
                self.awaiting = False  # the final answer is whole: nothing more is due
                self.read_deadline = None
            elif self.read_deadline is None and not self.reading_held():
                # aiohttp drops the timeout with an interim answer's (empty) body, but the
                # final answer is still due: an upstream that stalls now must still time out.
                self.rearm()

    def _refuse(self) -> None:
        self.force_close()
        if self.transport is not None:
            self.transport.close()


class _ReadDeadlines:
    """The upstream read timeout of every pooled connection, checked by one timer about four
    times per timeout (at least once a second): a connection that has waited past its deadline
    for a byte of its answer fails as aiohttp's own timer would fail it, up to a quarter of the
    timeout later."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self._loop = loop
        self._every = min(1.0, timeout / 4) if timeout else 1.0
        self._connections: set[_ExactResponses] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, connection: _ExactResponses) -> None:
        self._connections.add(connection)
        if self._timer is None:
            self._timer = self._loop.call_later(self._every, self._sweep)

    def forget(self, connection: _ExactResponses) -> None:
        self._connections.discard(connection)
        if not self._connections and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        now = self._loop.time()
        for connection in list(self._connections):  # a timeout may close, and forget, one
            deadline = connection.read_deadline
            if deadline is not None and deadline <= now:
                connection.time_out()  # clears the deadline, as it drops aiohttp's timer
        self._timer = self._loop.call_later(self._every, self._sweep)


def _interim(code: int) -> bool:
    """1xx answers other than 101 precede the final answer to the same request."""
    return 100 <= code < 200 and code != 101


class _Connector(aiohttp.TCPConnector):
    """aiohttp's pooled connector, with connections that read only what they asked for."""

    def __init__(self, read_timeout: float | None, **options: Any) -> None:
        super().__init__(**options)
        loop = asyncio.get_running_loop()
        deadlines = _ReadDeadlines(loop, read_timeout)
        private.use_protocol(self, functools.partial(_ExactResponses, loop, deadlines))


class IncompleteBody(Exception):
    """The client's body did not have the length it declared: the upstream connection it was
    sent on must not carry another request."""


class BodyStalled(Exception):
    """The client sent no body bytes for the stall timeout."""


class ClientBody:
    """The client's request body, passed upstream chunk by chunk as it arrives.

    The server's parser already delivers exactly ``Content-Length`` bytes (bodies are never
    decompressed) and raises when the client goes away mid-body. Here a body that somehow ends
    early or runs long raises, so aiohttp's client closes the upstream connection instead of
    pooling one whose next request the upstream would misread; and a client that sends nothing
    for ``stall_timeout`` seconds has its call cut off, upstream included (``stalled``).
    """

    def __init__(self, stream: StreamReader, declared: int | None, stall_timeout: float) -> None:
        self.stream = stream
        self.declared = declared
        self.stall_timeout = stall_timeout
        self.stalled = False

    async def chunks(self) -> AsyncIterator[bytes]:
        sent = 0
        while True:
            try:
                async with asyncio.timeout(self.stall_timeout):
                    chunk = await self.stream.readany()
            except TimeoutError:
                self.stalled = True
                raise BodyStalled() from None  # not a TimeoutError: aiohttp would call it ours
            if not chunk:
                break
            sent += len(chunk)
            yield chunk
        if self.declared is not None and sent != self.declared:
            raise IncompleteBody(f"request body of {sent} bytes where {self.declared} declared")


@dataclass(frozen=True, slots=True)
class Fetched:
    """A small upstream answer, read whole."""

    status: int
    reason: str | None
    headers: CIMultiDict[str]
    body: bytes


def end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Headers minus hop-by-hop ones and those the ``Connection`` header names."""
    kept: CIMultiDict[str] = CIMultiDict(headers)  # a copy made in C; then remove, rarely
    for name in HOP_BY_HOP:
        if name in kept:
            kept.popall(name)
    for value in headers.getall("Connection", ()):
        for token in value.split(","):
            token = token.strip()
            if token and token in kept:
                kept.popall(token)
    return kept


def answer_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    """The upstream answer's end-to-end headers; a control character in them, or in its reason
    phrase, is a malformed answer (the server could not send it on)."""
    headers = end_to_end(upstream.headers)
    if has_control(" ".join(headers.values())) or has_control(upstream.reason or ""):
        raise UpstreamUnavailable("upstream sent a malformed header", kind="malformed")
    return headers


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character other than HTAB. Every such character is
    unprintable, so text ``isprintable`` (nearly every header, at a fraction of the search's
    cost) has none; the rest (a tab, a byte over 127, ...) is searched."""
    return not text.isprintable() and _CONTROL.search(text) is not None


async def send_continue(request: web.Request) -> None:
    """Answer ``Expect: 100-continue``: the client may now send the body. An HTTP/1.0 client's
    expectation is ignored (RFC 9110, 10.1.1): it cannot read an interim answer."""
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(_CONTINUE)


async def read_limited(
    stream: StreamReader, limit: int, too_large: Exception, stall_timeout: float | None = None
) -> bytes:
    """A whole (small) body; ``too_large`` past ``limit`` bytes, ``RequestTimeout`` when no
    byte comes for ``stall_timeout`` seconds, ``MalformedRequest`` when its framing breaks."""
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(stall_timeout):
                chunk = await stream.readany()
        except TimeoutError:
            raise RequestTimeout(f"no body bytes for {stall_timeout:g} s") from None
        except HttpProcessingError:  # a chunk the parser refused mid-body: never quoted
            raise MalformedRequest("malformed body framing") from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)


def forward_proxy(
    configured: str | None, url: URL, env: Mapping[str, str] | None = None
) -> tuple[URL | None, CIMultiDict[str] | None]:
    """Where a call to ``url`` goes first: ``upstream.proxy`` when set (``none``: straight to
    the upstream), else the environment as curl and requests read it: ``https_proxy`` or
    ``HTTPS_PROXY`` for an https upstream, ``http_proxy``/``HTTP_PROXY`` for http, else
    ``all_proxy``; none for a host ``no_proxy``/``NO_PROXY`` names. The proxy's user and password
    (``http://user:pass@host:port``) become its ``Proxy-Authorization`` (sent to the proxy
    alone, never to the upstream)."""
    if configured == "none":
        return None, None
    text = configured
    if text is None:
        proxies = urllib.request.getproxies_environment() if env is None else _proxies_of(env)
        text = proxies.get(url.scheme) or proxies.get("all")
        if not text or (url.host and _bypassed(url.host, proxies)):
            return None, None
    proxy = URL(text if "://" in text else f"http://{text}")
    headers = None
    if proxy.user is not None:
        credentials = aiohttp.encode_basic_auth(proxy.user, proxy.password or "")
        headers = CIMultiDict({"Proxy-Authorization": credentials})
        proxy = proxy.with_user(None)
    return proxy, headers


_BYPASS = "proxy_bypass_environment"


def _bypassed(host: str, proxies: dict[str, str]) -> bool:
    """Whether ``no_proxy`` names ``host`` (urllib's reading, as requests has it)."""
    bypass: Any = getattr(urllib.request, _BYPASS)  # not in typeshed
    return bool(bypass(host, proxies))


def _proxies_of(env: Mapping[str, str]) -> dict[str, str]:
    """``urllib.request.getproxies_environment`` over a given environment (tests)."""
    found: dict[str, str] = {}
    for name, value in env.items():
        lowered = name.lower()
        if value and lowered.endswith("_proxy"):
            found.setdefault(lowered[: -len("_proxy")], value)
    for name, value in env.items():  # the lower-case spelling wins, as urllib has it
        if value and name.endswith("_proxy") and name.islower():
            found[name[: -len("_proxy")]] = value
    return found


class UpstreamClient:
    """The pooled upstream client, owned by the app's ``cleanup_ctx``. It knows nothing of
    decisions: it sends what it is given and maps the upstream's failures to the proxy's."""

    def __init__(self, settings: UpstreamSettings, body_timeout: float) -> None:
        self.settings = settings
        self.body_timeout = body_timeout
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str | None], tuple[URL | None, CIMultiDict[str] | None]] = {}
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # The session holds the connector (the pool); how each call is sent and its answer read
        # is ``_exchange``'s (``self._timeout``, ``_READING``), not the session's defaults.
        self._session = aiohttp.ClientSession(
            connector=_Connector(self.settings.read_timeout, limit=1024, ttl_dns_cache=60),
            cookie_jar=aiohttp.DummyCookieJar(),  # never carry one app's cookies to another
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(
        self,
        request: web.Request,
        url: str,
        request_id: str | None = None,
        verdict: str = "allow",
        peek: bool = False,
        held: bytes | None = None,
    ) -> web.StreamResponse:
        """Send the request to ``url`` (origin + target, byte for byte) and stream the answer
        back, with ``X-Request-Id: request_id`` added when given (the client sent none), and
        ``X-Scope-Proxy-Decision: verdict`` on the answer (in place of any the upstream sent).
        With ``peek``, a copy of a 403 answer's first bytes is kept as ``request[PEEKED]``.
        ``held``: the request's body, already read whole (and checked), sent as it came.
        Raises ``UpstreamFailure`` before the answer starts, ``StreamAborted`` after."""
        target = URL(url, encoded=True)
        body: ClientBody | None = None
        data: AsyncIterator[bytes] | None = None
        if held is not None:
            data = _once(held)  # framed as a streamed body is: the client's length, or chunks
        elif request.body_exists:
            body = ClientBody(request.content, request.content_length, self.body_timeout)
            data = body.chunks()
            await send_continue(request)  # only now that the call is authorized
        response: web.StreamResponse | None = None
        headers = end_to_end(request.headers)
        if request_id is not None:
            headers["X-Request-Id"] = request_id
        try:
            sent = time.perf_counter()
            upstream = await self._exchange(request.method, target, headers, data)
            request[UPSTREAM_SECONDS] = time.perf_counter() - sent
            async with upstream:  # then its connection goes back to the pool, or is closed
                answered = answer_headers(upstream)
                answered[DECISION_HEADER] = verdict
                peek = peek and upstream.status == 403
                if upstream.content.is_eof():
                    # The whole body has already arrived with the headers: send both at once.
                    whole = upstream.content.read_nowait() or None
                    if peek:
                        request[PEEKED] = (whole or b"")[:PEEK_BYTES]
                    return web.Response(
                        status=upstream.status, reason=upstream.reason, headers=answered, body=whole
                    )
                response = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason, headers=answered
                )
                await response.prepare(request)
                if peek:
                    request[PEEKED] = b""
                async for chunk in upstream.content.iter_any():
                    if peek and len(request[PEEKED]) < PEEK_BYTES:
                        request[PEEKED] = (request[PEEKED] + chunk)[:PEEK_BYTES]
                    await response.write(chunk)
                await response.write_eof()
                return response
        except _UPSTREAM_FAILURES as error:
            if body is not None and body.stalled:
                if response is not None and response.prepared:
                    raise StreamAborted(response, "client_stalled") from error
                raise RequestTimeout(f"no body bytes for {self.body_timeout:g} s") from error
            if response is not None and response.prepared:
                kind = _mid_body_kind(request, error)
                if request.transport is not None:  # the client sees a truncated body
                    request.transport.abort()
                raise StreamAborted(response, kind) from error
            raise self._failure(error, target) from error

    async def fetch(
        self, method: str, url: str, headers: CIMultiDict[str], body: bytes | None, limit: int
    ) -> Fetched:
        """A small exchange read whole (the OAuth endpoints); an answer over ``limit`` bytes is
        an ``UpstreamUnavailable``. Failures map as in ``forward``."""
        target = URL(url, encoded=True)
        try:
            async with await self._exchange(method, target, headers, body) as upstream:
                too_large = UpstreamUnavailable(f"upstream answer over {limit} bytes")
                whole = await read_limited(upstream.content, limit, too_large)
                return Fetched(upstream.status, upstream.reason, answer_headers(upstream), whole)
        except _UPSTREAM_FAILURES as error:
            raise self._failure(error, target) from error

    async def _exchange(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        data: bytes | AsyncIterator[bytes] | None,
    ) -> aiohttp.ClientResponse:
        """Send one request on a pooled connection and read its answer's head.

        This is what ``ClientSession.request`` does with the proxy's calls, less what it does
        for calls the proxy never makes: cookies, redirects, auth and proxies from the URL or the
        environment, traces, middlewares, a total timeout. That general case costs about 64k
        instructions a call here, more than a tenth of the proxy's whole per-call work. The
        session's connector, request and response classes, and so the bytes sent and how the
        answer is read, are aiohttp's own.
        """
        session = self._session
        assert session is not None, "UpstreamClient.start() was not awaited"
        connector = session.connector
        assert connector is not None
        again = method in _IDEMPOTENT and not isinstance(data, AsyncIterator)  # a body sent once
        proxy, proxy_headers = self._forward_proxy(url)
        while True:
            try:
                return await private.send(
                    session, self._loop, method, url, headers, data, self._timeout, _READING,
                    proxy, proxy_headers,
                )  # fmt: skip
            except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError):
                raise  # no connection was made: nothing to send again
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                if not again:
                    raise
                again = False  # the pooled connection had been closed: once more, on another
            except aiohttp.ClientError:
                raise
            except OSError as error:  # as ClientSession.request: a plain OSError is a client's
                if error.errno is None and isinstance(error, TimeoutError):
                    raise
                raise aiohttp.ClientOSError(*error.args) from error

    def _forward_proxy(self, url: URL) -> tuple[URL | None, CIMultiDict[str] | None]:
        """The forward proxy for a call to ``url``'s origin, worked out once per origin."""
        origin = (url.scheme, url.host)
        found = self._proxies.get(origin)
        if found is None:
            found = self._proxies[origin] = forward_proxy(self.settings.proxy, url)
        return found

    def _failure(self, error: BaseException, url: URL) -> UpstreamFailure:
        """The one mapping of upstream client failures to the proxy's errors."""
        if isinstance(error, aiohttp.ClientConnectorCertificateError):
            return UpstreamUnavailable(
                f"{url.host}'s certificate did not verify against the CAs this process trusts "
                "(SSL_CERT_FILE)", kind="connect",
            )  # fmt: skip
        if isinstance(error, aiohttp.ClientProxyConnectionError):
            return UpstreamUnavailable("cannot connect to the forward proxy", kind="connect")
        if isinstance(error, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
            return UpstreamUnavailable(f"cannot connect to {url.host}", kind="connect")
        if isinstance(error, TimeoutError | aiohttp.SocketTimeoutError):
            return UpstreamTimeout(
                f"no bytes from upstream for {self.settings.read_timeout:g} s", kind="timeout"
            )
        return UpstreamUnavailable("upstream closed the connection", kind="disconnect")


async def _once(body: bytes) -> AsyncIterator[bytes]:
    if body:
        yield body


def _mid_body_kind(request: web.Request, error: BaseException) -> str:
    if isinstance(error, TimeoutError | aiohttp.SocketTimeoutError):
        return "timeout"
    transport = request.transport
    return "client_gone" if transport is None or transport.is_closing() else "disconnect"


class StreamAborted(Exception):
    """The response was cut off mid-stream (``kind``: ``timeout``, ``disconnect`` or
    ``client_gone``); there is nothing left to send."""

    def __init__(self, response: web.StreamResponse, kind: str) -> None:
        super().__init__("response cut off mid-stream")
        self.response = response
        self.kind = kind
