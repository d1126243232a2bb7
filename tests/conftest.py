"""Shared fixtures: a fake Pipedrive that records what it receives, and the proxy in front of it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import http_parser, web, web_protocol
from aiohttp.test_utils import TestClient, TestServer

from proxy.app import create_app
from proxy.catalog import Catalogue
from proxy.config import Config, parse_config
from proxy.server import ProxyRunner

AiohttpServer = Callable[..., Awaitable[TestServer]]
AiohttpClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> FakePipedrive:
    fake = FakePipedrive()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = await aiohttp_server(app)  # test servers cancel handlers on disconnect
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


PARSERS = {
    "compiled parser": getattr(http_parser, "HttpRequestParserC", None),
    "pure-Python parser": http_parser.HttpRequestParserPy,
}


@pytest.fixture(params=list(PARSERS))
def http_parser_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test under each of aiohttp's HTTP request parsers (the compiled one, and the pure
    Python one that ``AIOHTTP_NO_EXTENSIONS=1`` or a platform without the extension selects):
    servers started during the test parse with it."""
    parser = PARSERS[request.param]
    if parser is None:
        pytest.fail("aiohttp's compiled HTTP parser is not available in this installation")
    monkeypatch.setattr(web_protocol, "HttpRequestParser", parser)
    return str(request.param)


def config_document(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "upstream": {
            "api_url": upstream_url,
            "oauth_url": upstream_url,
            "connect_timeout": 2,
            "read_timeout": 2,
        },
        "logging": {"format": "json", "level": "info"},
    }
    document.update(overrides)
    return document


def build_config(upstream_url: str, **overrides: Any) -> tuple[Config, Catalogue]:
    return parse_config(config_document(upstream_url, **overrides), env={})


def grants(**scopes_by_token: list[str]) -> list[dict[str, Any]]:
    """Static grants for plain test tokens: ``grants(reader=["deals:read"])``."""
    return [
        {"name": token, "sha256": sha(token), "scopes": scopes}
        for token, scopes in scopes_by_token.items()
    ]


ProxyFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


class ProxyTestServer(TestServer):
    """The proxy app served as ``serve`` serves it: on the proxy's own runner."""

    async def _make_runner(self, **kwargs: Any) -> ProxyRunner:
        return ProxyRunner(self.app, **kwargs)


async def proxy_client(
    aiohttp_client: AiohttpClient, app: web.Application
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(ProxyTestServer(app))


@pytest.fixture
def make_proxy(upstream: FakePipedrive, aiohttp_client: AiohttpClient) -> ProxyFactory:
    """Start the proxy in front of the fake upstream with config overrides."""

    async def start(**overrides: Any) -> TestClient[web.Request, web.Application]:
        config, catalogue = build_config(upstream.url, **overrides)
        return await proxy_client(aiohttp_client, create_app(config, catalogue))

    return start


async def raw_request(
    client: TestClient[Any, Any], data: bytes
) -> tuple[int, dict[str, str], bytes]:
    """Send bytes exactly as given; return status, headers and body of the answer."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(data)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def envelope(body: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(body)
    return document


class RedisServer:
    """A real redis-server on a free loopback port, which a test may stop and start again."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server for one test. Set REQUIRE_REDIS=1 (as CI does) to fail, not skip,
    where redis-server is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("REQUIRE_REDIS"):
            pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    server = RedisServer(binary, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
