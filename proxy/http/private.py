"""aiohttp's and prometheus_client's private parts, behind one fence.

Every name of those libraries that they do not publish, and that the proxy uses, is used here
and nowhere else (``tests/test_private.py`` holds every other module to that). Each is listed in
``NAMES`` with what it is for:

- ``security``: a rule the proxy's guarantees rest on, with the test of the attack it stops.
  aiohttp offers no public way to do it (a pooled connection that closes on unsolicited bytes,
  the pure-Python parser held to the compiled one's strictness, headers sent byte for byte,
  client limits on the server's own connections).
- ``speed``: work per call saved over the public way, measured side by side by
  ``bench/private_names.py`` (instructions per call under callgrind); kept only where the
  saving is more than 2 %, the measured gain noted beside each (``gain``). Each has a public
  way to fall back on.

At start-up ``verify()`` looks every name up in the installed libraries: a missing security name
stops the proxy (exit 2, naming it); a missing speed name turns its bypass off, and the proxy
takes the public way. A contract test per name fails, naming it, on an upgrade that changes it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.http_parser import HttpRequestParserPy, RawRequestMessage
from aiohttp.streams import DataQueue
from multidict import CIMultiDict
from yarl import URL

__all__ = [
    "NAMES",
    "BadHttpMethod",
    "BadStatusLine",
    "FenceError",
    "HttpProcessingError",
    "InvalidHeader",
    "InvalidURLError",
    "LineTooLong",
    "PayloadEncodingError",
    "Private",
    "ProtocolBase",
    "ResponsesBase",
    "RunnerBase",
    "ServerOptions",
    "in_use",
    "verify",
]

Tag = Literal["security", "speed"]


@dataclass(frozen=True)
class Private:
    """One private name: where it lives, what the proxy uses it for, the test that shows it,
    and how to look it up in the installed library."""

    name: str  # as the library spells it, e.g. "aiohttp.web.Server._connections"
    tag: Tag
    use: str  # what the proxy needs it for, in a sentence
    shown_by: str  # the test that fails without it (security) or the bench that measures it
    probe: Callable[[], bool]
    key: str = ""  # a speed name's short key (what the bench turns off): "route_once"
    gain: str = ""  # a speed name's measured saving, as bench/private_names.py last found it

    def present(self) -> bool:
        try:
            return bool(self.probe())
        except Exception:  # a probe that cannot even run: the name is not there as used
            return False


class FenceError(Exception):
    """A security name is missing from the installed aiohttp: the proxy cannot keep a
    guarantee it rests on, so it does not start."""


def _has(owner: Any, *names: str) -> bool:
    return all(hasattr(owner, name) for name in names)


def _sets(function: Callable[..., Any], *names: str) -> bool:
    """Whether ``function``'s code uses these attribute names (``self._x = ...``): an instance
    attribute looked up without building an instance, which keeps the start-up check light."""
    return set(names) <= set(function.__code__.co_names)


def _responses_have(*names: str) -> bool:
    """ResponseHandler's names: methods, slots, or attributes its (or DataQueue's) __init__
    sets."""
    return all(
        hasattr(ResponseHandler, name)
        or _slots(ResponseHandler, name)
        or _sets(ResponseHandler.__init__, name)
        or _sets(DataQueue.__init__, name)
        for name in names
    )


def _slots(owner: type, *names: str) -> bool:
    found = {slot for klass in owner.__mro__ for slot in getattr(klass, "__slots__", ())}
    return set(names) <= found


def _parameters(function: Callable[..., Any], *names: str) -> bool:
    return set(names) <= set(inspect.signature(function).parameters)


NAMES: tuple[Private, ...] = (
    # -- The server: the proxy's own protocol on aiohttp's connections.
    Private(
        "aiohttp.web.AppRunner._make_server, aiohttp.web.Server._kwargs, ._loop",
        "security",
        "serve the app on the proxy's own server and connection classes (client limits, the "
        "parser's strictness, the parser's refusals never quoted), with the options "
        "AppRunner gives its server",
        "tests/test_limits.py, tests/test_refusals_raw.py",
        lambda: (
            inspect.iscoroutinefunction(web.AppRunner._make_server)
            and _sets(web.Server.__init__, "_kwargs", "_loop", "request_handler", "request_factory")
        ),
    ),
    Private(
        "aiohttp.web.Server._connections",
        "security",
        "count the open client connections (max_connections) and find the ones whose request "
        "head is late (header_timeout)",
        "tests/test_limits.py",
        lambda: _sets(web.Server.__init__, "_connections"),
    ),
    Private(
        "aiohttp.web.RequestHandler._manager, ._messages, ._current_request, ._loop",
        "security",
        "tell when a connection waits for a request head, so that a slow or silent client is "
        "closed after header_timeout",
        "tests/test_limits.py",
        lambda: _slots(web.RequestHandler, "_manager", "_messages", "_current_request", "_loop"),
    ),
    Private(
        "aiohttp.web.RequestHandler._parser, aiohttp.http_parser.HttpRequestParserPy"
        ".parse_message, RawRequestMessage",
        "security",
        "hold the pure-Python HTTP parser to what the compiled one accepts (methods, ASCII "
        "targets, HTTP/1.0 and 1.1, lengths that fit), so both refuse the same requests",
        "tests/test_refusals_raw.py (under both parsers), tests/test_server.py",
        lambda: (
            _slots(web.RequestHandler, "_parser")
            and callable(HttpRequestParserPy.parse_message)
            and _has(RawRequestMessage, "method", "path", "version")
        ),
    ),
    Private(
        "aiohttp.http_exceptions: HttpProcessingError, BadHttpMethod, BadStatusLine, "
        "InvalidHeader, InvalidURLError, LineTooLong, PayloadEncodingError",
        "security",
        "answer a request the parser refused in Pipedrive's envelope, with a message that "
        "never quotes the request (aiohttp's own page quotes the line, which may hold a token)",
        "tests/attacks/test_echoed_secrets.py",
        lambda: all(
            issubclass(kind, HttpProcessingError)
            for kind in (
                BadHttpMethod,
                BadStatusLine,
                InvalidHeader,
                InvalidURLError,
                LineTooLong,
                PayloadEncodingError,
            )
        ),
    ),
    Private(
        "aiohttp.web.Application._make_request, aiohttp.web.Request._match_info, "
        "UrlMappingMatchInfo.add_app",
        "speed",
        "match the app's one route once, at start-up, rather than with aiohttp's router on "
        "every request",
        "bench/private_names.py",
        lambda: (
            _has(web.Application, "_make_request")
            and "_match_info" in web.Request.ATTRS
            and _has(web.UrlMappingMatchInfo, "add_app", "freeze")
        ),
        key="route_once",
        gain="5.3 % of the instructions per call (5.2-5.4 % over 4 rounds), 2026-12-07",
    ),
    # -- The upstream client.
    Private(
        "aiohttp.client_proto.ResponseHandler (._buffer, ._payload, ._reading_paused, "
        "._buffer_paused, ._exception), aiohttp.TCPConnector._factory",
        "security",
        "close, never reuse, a pooled upstream connection on which bytes arrive when no answer "
        "is due, or a second answer to one request (the next client would read them as its "
        "own answer)",
        "tests/attacks/test_smuggling.py (unsolicited bytes, extra answers)",
        lambda: (
            _responses_have(
                "_buffer",
                "_payload",
                "_reading_paused",
                "_buffer_paused",
                "_exception",
                "set_response_params",
                "data_received",
            )
            and _factory_settable()
        ),
    ),
    Private(
        "aiohttp.client_proto.ResponseHandler._reschedule_timeout, ._drop_timeout, "
        "._on_read_timeout, ._read_timeout",
        "security",
        "keep the upstream read timeout armed only while an answer is due: aiohttp re-arms it "
        "on a pooled connection that resumes reading after its answer completed, and it then "
        "fails the next call on that connection with a 504 before the call is sent",
        "tests/test_faults.py",
        lambda: _responses_have(
            "_reschedule_timeout", "_drop_timeout", "_read_timeout", "_on_read_timeout"
        ),
    ),
    Private(
        "aiohttp.ClientRequest(loop=, response_class=, timer=, session=), "
        "BaseConnector.connect, ResponseHandler.set_response_params, ClientRequest.send, "
        "ClientResponse.start",
        "security",
        "send a call upstream with its headers as received, every spelling of a name kept "
        "(ClientSession.request keeps only the last), and none of ClientSession.request's own "
        "doings (cookies, redirects, proxies or credentials from the environment)",
        "tests/test_forwarding.py (headers under several spellings), tests/test_faults.py",
        lambda: (
            _parameters(
                aiohttp.ClientRequest,
                "loop",
                "response_class",
                "timer",
                "session",
                "skip_auto_headers",
            )
            and _parameters(aiohttp.BaseConnector.connect, "req", "traces", "timeout")
            and _parameters(
                ResponseHandler.set_response_params,
                "skip_payload",
                "read_timeout",
                "read_until_eof",
                "auto_decompress",
            )
            and _has(aiohttp.ClientRequest, "send")
            and _has(aiohttp.ClientResponse, "start")
        ),
    ),
    Private(
        "aiohttp.ClientRequest.update_auto_headers, ._skip_auto_headers",
        "speed",
        "give every call the one set of headers aiohttp must not add, built once, rather than "
        "a new set per call (skip_auto_headers)",
        "bench/private_names.py",
        lambda: (
            _has(aiohttp.ClientRequest, "update_auto_headers")
            and _sets(aiohttp.ClientRequest.update_auto_headers, "_skip_auto_headers")
        ),
        key="headers_once",
        gain="4.0 % of the instructions per call (3.9-4.3 % over 4 rounds), 2026-12-07",
    ),
)
SPEED_KEYS = frozenset(item.key for item in NAMES if item.tag == "speed")


def _factory_settable() -> bool:
    """Whether aiohttp's connector still opens its connections with ``self._factory``."""
    return _sets(aiohttp.BaseConnector.__init__, "_factory") and _sets(
        aiohttp.TCPConnector._create_direct_connection, "_factory"
    )


# The speed bypasses in use (``verify`` sets them), and those a benchmark turned off.
_in_use: set[str] = set(SPEED_KEYS)
_turned_off: set[str] = set()


def turn_off(keys: Collection[str]) -> None:
    """Take the public way instead of these speed bypasses (what ``bench/private_names.py``
    measures them against); ``verify`` keeps them off."""
    unknown = set(keys) - SPEED_KEYS
    if unknown:
        raise ValueError(f"no speed bypass is called {sorted(unknown)[0]!r}")
    _turned_off.clear()
    _turned_off.update(keys)
    _in_use.difference_update(keys)


def verify() -> list[Private]:
    """Look every name up in the installed libraries. Raises ``FenceError`` naming a missing
    security name; turns off the speed bypasses whose names are missing, and returns those."""
    missing = [item for item in NAMES if not item.present()]
    broken = [item for item in missing if item.tag == "security"]
    if broken:
        names = "; ".join(f"{item.name} ({item.use})" for item in broken)
        raise FenceError(
            f"aiohttp {aiohttp.__version__} lacks what the proxy needs for its guarantees: "
            f"{names}. Install the aiohttp release pyproject.toml names, or a proxy release "
            "that supports this one"
        )
    _in_use.clear()
    _in_use.update(SPEED_KEYS - _turned_off - {item.key for item in missing})
    return missing


def in_use(key: str) -> bool:
    """Whether the speed bypass ``key`` is on (its names present, and not turned off)."""
    return key in _in_use


# -- The server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerOptions:
    """What ``web.AppRunner`` would build its server with: the router's handler and request
    factory, and the connection options it was given."""

    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
    request_factory: Callable[..., web.BaseRequest]
    handler_cancellation: bool
    loop: asyncio.AbstractEventLoop
    options: Mapping[str, Any]


class RunnerBase(web.AppRunner):
    """``web.AppRunner`` that serves its app on a server ``make_server`` builds."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        options = ServerOptions(
            made.request_handler,
            made.request_factory,
            made.handler_cancellation,
            made._loop,
            made._kwargs,
        )
        return self.make_server(options)

    def make_server(self, made: ServerOptions) -> web.Server:
        raise NotImplementedError


def route_once(app: web.Application) -> Callable[..., web.BaseRequest] | None:
    """A request factory that hands every request the app's one route, matched once here; None
    where that bypass is off (aiohttp's router then matches each request)."""
    if not in_use("route_once"):
        return None
    [route] = app.router.routes()
    matched = web.UrlMappingMatchInfo({}, route)
    matched.add_app(app)
    matched.freeze()

    def request_factory(
        message: Any, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> web.Request:
        request = app._make_request(message, payload, protocol, writer, task)
        request._match_info = matched
        return request

    return request_factory


def connections(server: web.Server) -> Collection[web.RequestHandler]:
    """The server's open client connections."""
    return server._connections


def server_loop(server: web.Server) -> asyncio.AbstractEventLoop:
    return server._loop


class ProtocolBase(web.RequestHandler):
    """A client connection whose state the proxy's limits read."""

    __slots__ = ()

    @property
    def manager(self) -> web.Server:
        manager = self._manager
        assert manager is not None
        return manager

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def between_requests(self) -> bool:
        """No request is being read or handled: what comes next starts a new head."""
        return self._current_request is None and not self._messages

    def has_request(self) -> bool:
        return bool(self._messages) or self._current_request is not None

    def hold_parser(self, check: Callable[[list[bytes]], None]) -> None:
        """Where this connection reads with the pure-Python parser, run ``check`` on each
        request head's lines first (it raises to refuse one)."""
        parser = self._parser
        if isinstance(parser, HttpRequestParserPy):
            parse_message = parser.parse_message

            def parse_strictly(lines: list[bytes]) -> RawRequestMessage:
                check(lines)
                return parse_message(lines)

            parser.parse_message = parse_strictly  # type: ignore[method-assign]


# -- The upstream client ---------------------------------------------------------------------


class ResponsesBase(ResponseHandler):
    """An upstream connection whose reading the proxy watches: the answers queued on it, its
    answer's body, and its read timeout, kept as a deadline (``read_deadline``) that the
    proxy checks and fires (``time_out``) rather than aiohttp's timer, and only while an answer
    is due (``awaiting``): aiohttp also re-arms its timer when a paused connection resumes
    reading, even where what it then parses completes the answer and the connection is back in
    the pool, idle, where the timer would fail the next call sent on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.awaiting = False  # an answer is due
        self.read_deadline: float | None = None  # when no byte has come by then: a timeout

    def answers(self) -> tuple[deque[Any], aiohttp.StreamReader | None]:
        """((message, payload), size) of the answers read and not yet taken, and the body of
        the answer being read."""
        return self._buffer, self._payload

    def reading_held(self) -> bool:
        """Paused (a slow client), or failed: a silence would not be the upstream's."""
        return self._reading_paused or self._buffer_paused or self._exception is not None

    def time_out(self) -> None:
        """Fail the answer being read as aiohttp's own read timer would."""
        self._on_read_timeout()

    def rearm(self) -> None:
        """Arm the read deadline again (an interim answer came; the final one is due)."""
        self._reschedule_timeout()

    def _reschedule_timeout(self) -> None:  # what aiohttp calls to (re)arm its timer
        timeout = self._read_timeout
        self.read_deadline = self._loop.time() + timeout if timeout and self.awaiting else None

    def _drop_timeout(self) -> None:  # what aiohttp calls to drop it
        self.read_deadline = None


def use_protocol(connector: aiohttp.TCPConnector, factory: Callable[[], ResponseHandler]) -> None:
    """Make ``connector`` open its connections with ``factory``'s protocol."""
    connector._factory = factory  # type: ignore[assignment]


# The headers aiohttp's client would add on its own; a call goes up without them.
NOT_ADDED = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")
_NOT_ADDED: CIMultiDict[None] = CIMultiDict((name, None) for name in NOT_ADDED)


class _AsSent(aiohttp.ClientRequest):
    """A request that goes upstream with the app's headers only: the set aiohttp must not add
    is built once, not per request as ``skip_auto_headers`` would."""

    def update_auto_headers(self, skip_auto_headers: Any) -> None:
        self._skip_auto_headers = _NOT_ADDED


async def send(
    session: aiohttp.ClientSession,
    loop: asyncio.AbstractEventLoop,
    method: str,
    url: URL,
    headers: CIMultiDict[str],
    data: Any,
    limits: aiohttp.ClientTimeout,
    reading: Mapping[str, Any],
    proxy: URL | None = None,
    proxy_headers: CIMultiDict[str] | None = None,
) -> aiohttp.ClientResponse:
    """Send one request on a pooled connection of ``session`` and read its answer's head:
    aiohttp's request and response classes, without ``ClientSession.request`` around them;
    through the forward ``proxy`` when given (CONNECT for https). Raises aiohttp's errors; the
    connection is closed if anything fails."""
    connector = session.connector
    assert connector is not None
    if in_use("headers_once"):
        request: aiohttp.ClientRequest = _AsSent(
            method, url, headers=headers, data=data, loop=loop,
            response_class=aiohttp.ClientResponse, session=session,
            proxy=proxy, proxy_headers=proxy_headers,
        )  # fmt: skip
    else:
        request = aiohttp.ClientRequest(
            method, url, headers=headers, data=data, loop=loop, skip_auto_headers=NOT_ADDED,
            response_class=aiohttp.ClientResponse, session=session,
            proxy=proxy, proxy_headers=proxy_headers,
        )  # fmt: skip
    try:
        connection = await connector.connect(request, [], limits)
    except TimeoutError as error:
        raise aiohttp.ConnectionTimeoutError(f"Connection timeout to {url.host}") from error
    protocol = connection.protocol
    assert protocol is not None
    protocol.set_response_params(
        skip_payload=method == "HEAD", read_timeout=limits.sock_read, **reading
    )
    try:
        response = await request.send(connection)
        try:
            await response.start(connection)
        except BaseException:
            response.close()
            raise
    except BaseException:
        connection.close()
        raise
    return response
