"""Fakes the tests run the proxy against: Pipedrive's API and OAuth server, an upstream that
answers before reading bodies (on raw sockets, so what it parses is exactly what the proxy
sent), and a clock."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web


class FakeClock:
    """UNIX time, standing still until a test moves it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Received:
    """One request as the fake upstream saw it."""

    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass
class FakePipedrive:
    """Records every request; answers with ``respond`` (replaceable per test)."""

    received: list[Received] = field(default_factory=list)
    respond: Callable[[web.Request, Received], Awaitable[web.StreamResponse]] | None = None
    url: str = ""
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
            seen = Received(
                request.method,
                request.raw_path,
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
                body,
            )
            self.received.append(seen)
            if self.respond is not None:
                return await self.respond(request, seen)
            return web.json_response(
                {"success": True, "data": {"path": request.raw_path}},
                headers={"x-correlation-id": "abc-123", "x-ratelimit-remaining": "39"},
            )
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@dataclass
class Parsed:
    """One request head as the upstream parsed it, and the body it then read."""

    connection: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")


@dataclass
class EagerUpstream:
    """An HTTP/1.1 server that answers as soon as a request head arrives and only then reads
    the body the head declares, as Node's ``http`` and Go's ``net/http`` do.

    ``ignore_get_body``: read no body on GET and HEAD, whatever their head declares, as servers
    open to CL.0 and TE.0 desynchronisation do: such a body is read as the next request.
    ``unsolicited``: bytes written, a moment after its first answer, on each connection that is
    then idle (a misbehaving upstream or middlebox). Every head it parses is recorded, garbage
    included, with the connection it came on.
    """

    ignore_get_body: bool = False
    unsolicited: bytes = b""
    received: list[Parsed] = field(default_factory=list)
    cut_mid_body: list[int] = field(default_factory=list)  # connections closed inside a body
    connections: int = 0
    unsolicited_sent: int = 0  # how many times the unsolicited bytes went out
    url: str = ""
    _server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request = parse_head(connection, head)
                self.received.append(request)
                if request.method == "<garbage>":
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    return
                answer = json.dumps(
                    {"connection": connection, "method": request.method,
                     "target": request.target, "request_id": request.request_id}
                ).encode()  # fmt: skip
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer
                )
                await writer.drain()
                if self.unsolicited and len(self.received) == 1:
                    asyncio.get_running_loop().call_later(0.1, self._unsolicited, writer)
                if self.ignore_get_body and request.method in ("GET", "HEAD"):
                    continue
                try:
                    request.body = await read_body(reader, request.headers)
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    self.cut_mid_body.append(connection)
                    return
        finally:
            writer.close()

    def _unsolicited(self, writer: asyncio.StreamWriter) -> None:
        writer.write(self.unsolicited)
        self.unsolicited_sent += 1


def parse_head(connection: int, head: bytes) -> Parsed:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return Parsed(connection, "<garbage>", lines[0], {})
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Parsed(connection, parts[0], parts[1], headers)


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return body
            body += chunk[:-2]
    return await reader.readexactly(int(headers.get("content-length", "0")))


class FakeOAuth:
    """Pipedrive's token endpoint: hands out a fresh token with the scopes a test chooses.

    ``tokens``: the access tokens to hand out, in order (random ones after those).
    ``encoding``: how the answer is encoded. ``identity``, ``gzip``, ``deflate`` or ``br`` (the
    proxy reads no brotli: opaque bytes stand for it), always; or ``negotiate``, which picks
    from the request's ``Accept-Encoding`` like a real server: br, then gzip, then identity.
    """

    def __init__(
        self,
        scope: str = "base,deals:read",
        expires_in: float = 3599,
        encoding: str = "identity",
        tokens: tuple[str, ...] = (),
    ) -> None:
        self.scope = scope
        self.tokens = list(tokens)
        self.expires_in = expires_in
        self.encoding = encoding
        self.issued: list[str] = []
        self.accepted: list[str | None] = []  # each token request's Accept-Encoding

    async def respond(self, request: web.Request, seen: Received) -> web.StreamResponse:
        if not seen.raw_path.startswith("/oauth/"):
            return web.json_response({"success": True, "data": []})  # an ordinary API call
        if seen.raw_path == "/oauth/revoke":
            return web.json_response({})
        form = dict(pair.split("=", 1) for pair in seen.body.decode().split("&"))
        if form.get("code") == "spent" or form.get("refresh_token") == "spent":
            return web.json_response({"success": False, "message": "Invalid grant"}, status=400)
        token = (
            self.tokens.pop(0)
            if self.tokens
            else f"v1u:{secrets.token_urlsafe(48)}:{secrets.token_urlsafe(24)}"
        )
        self.issued.append(token)
        body = json.dumps(
            {"access_token": token, "token_type": "Bearer", "refresh_token": "1:1:" + "ab" * 20,
             "scope": self.scope, "expires_in": self.expires_in,
             "api_domain": "https://acme.pipedrive.com"},
            separators=(",", ":"),
        ).encode()  # fmt: skip
        headers = {"Content-Type": "application/json", "x-correlation-id": "oauth-1"}
        accept = request.headers.get("Accept-Encoding")
        self.accepted.append(accept)
        encoding = self.encoding
        if encoding == "negotiate":
            offered = (accept or "").replace(" ", "").split(",")
            encoding = next((c for c in ("br", "gzip") if c in offered), "identity")
        if encoding != "identity":
            body = _ENCODERS[encoding](body)
            headers["Content-Encoding"] = encoding
        return web.Response(body=body, headers=headers)


_ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": lambda body: os.urandom(len(body)),  # brotli the proxy cannot read, whatever it holds
}


# Pipedrive's own refusal for want of a scope (observed 2024; see ../shared/pipedrive/FACTS.md).
SCOPE_MISMATCH = (
    b'{"success":false,"error":"Scope and URL mismatch","errorCode":403,'
    b'"error_info":"Please check developers.pipedrive.com"}'
)


class ScopedPipedrive:
    """Pipedrive deciding as it does: each token holds the scopes Pipedrive gave it (through
    ``oauth``'s token endpoint, or ``held`` for a personal API token or a token a test says
    was granted elsewhere), and a call is answered 403 "Scope and URL mismatch" when none of
    them accepts the endpoint, 404 when there is no such endpoint, and 200 otherwise.

    Which scopes accept an endpoint is the shipped catalogue's, as ``differs`` overrides it
    (``"GET /v1/goals/find": {"admin"}``; a path of its own adds an endpoint the catalogue does
    not know): the catalogue as Pipedrive proves it wrong. ``encoding`` compresses refusals
    (``gzip``, ``deflate``, ``raw-deflate``) as a server does for a client that accepts it.
    """

    def __init__(
        self,
        oauth: FakeOAuth | None = None,
        held: dict[str, frozenset[str]] | None = None,
        differs: dict[str, set[str]] | None = None,
        encoding: str = "identity",
    ) -> None:
        from proxy.core.catalog import load_catalogue

        self.oauth = oauth or FakeOAuth()
        self.held = dict(held or {})
        self.differs = differs or {}
        self.encoding = encoding
        self.catalogue = load_catalogue()
        self.answered: list[tuple[str, int]] = []  # (method and path, status)

    def accepting(self, method: str, path: str) -> set[str] | None:
        from proxy.core.catalog import api_route

        if f"{method} {path}" in self.differs:
            return self.differs[f"{method} {path}"]
        route = api_route(path)
        endpoint = self.catalogue.match(route, method) if route is not None else None
        if endpoint is None:
            return None
        return self.differs.get(endpoint.name, set(endpoint.scopes))

    async def respond(self, request: web.Request, seen: Received) -> web.StreamResponse:
        if seen.raw_path.startswith("/oauth/"):
            answer = await self.oauth.respond(request, seen)
            for token in self.oauth.issued:
                self.held.setdefault(token, frozenset(self.oauth.scope.split(",")))
            return answer
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        token = request.query.get("api_token") or request.headers.get("x-api-token") or bearer
        path = seen.raw_path.partition("?")[0]
        accepting = self.accepting(request.method, path)
        if accepting is None:
            status, body = 404, b'{"success":false,"error":"Unknown method ."}'
        elif "base" in accepting or accepting & self.held.get(token, frozenset()):
            status, body = 200, b'{"success":true,"data":{"id":1}}'
        else:
            status, body = 403, SCOPE_MISMATCH
        self.answered.append((f"{request.method} {path}", status))
        headers = {"Content-Type": "application/json", "x-correlation-id": "scoped-1"}
        if status == 403 and self.encoding != "identity":
            body = _REFUSAL_ENCODERS[self.encoding](body)
            headers["Content-Encoding"] = self.encoding.removeprefix("raw-")
        return web.Response(status=status, body=body, headers=headers)


def _raw_deflate(body: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


_REFUSAL_ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress, "deflate": zlib.compress, "raw-deflate": _raw_deflate,
}  # fmt: skip


class TlsUpstream:
    def __init__(self) -> None:
        self.received: list[tuple[str, str, str | None]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((request.method, request.raw_path, request.headers.get("Host")))
        return web.json_response({"success": True, "data": {"id": 42}})
