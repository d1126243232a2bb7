"""Shared fixtures: the proxy in front of a fake Pipedrive that records what it receives.

The catalogue is loaded once per test run; each proxy gets a clock the test can move.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import http_parser, web, web_protocol
from aiohttp.test_utils import TestClient, TestServer

from proxy.config import Config, catalogue_for, parse_config
from proxy.core.catalog import Catalogue, load_catalogue
from proxy.http.app import create_app
from proxy.http.server import ProxyRunner
from tests.fakes import FakeClock, FakePipedrive, TlsUpstream
from tests.processes import certificate

CATALOGUE = load_catalogue()  # the shipped one, compiled once for the whole run

# The property tests draw their full count of examples where PROXY_TESTS=thorough (.ci/run
# sets it) and a quarter of it otherwise, so that plain `pytest` after a change stays quick.
THOROUGH = os.environ.get("PROXY_TESTS") == "thorough"


def examples(full: int) -> int:
    """How many examples a property test draws: ``full`` where the tests run thorough."""
    return full if THOROUGH else max(25, full // 4)


AiohttpServer = Callable[..., Awaitable[TestServer]]
AiohttpClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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


def shipped_or_extended(extra: Sequence[Path]) -> Catalogue:
    return CATALOGUE if not extra else load_catalogue(extra)


def build_config(upstream_url: str, **overrides: Any) -> tuple[Config, Catalogue]:
    config = parse_config(config_document(upstream_url, **overrides), env={})
    return config, catalogue_for(config, shipped_or_extended)


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
def clock() -> FakeClock:
    """The proxy's clock: a test moves it instead of sleeping until a token expires."""
    return FakeClock()


@pytest.fixture
def make_proxy(
    upstream: FakePipedrive, aiohttp_client: AiohttpClient, clock: FakeClock
) -> ProxyFactory:
    """Start the proxy in front of the fake upstream with config overrides."""

    async def start(**overrides: Any) -> TestClient[web.Request, web.Application]:
        config, catalogue = build_config(upstream.url, **overrides)
        return await proxy_client(aiohttp_client, create_app(config, catalogue, clock=clock))

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts a real redis-server is one of the slow, end-to-end ones."""
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
async def tls_upstream(tmp_path: Path) -> AsyncIterator[tuple[TlsUpstream, Path]]:
    """An HTTPS upstream on a certificate made by openssl for 127.0.0.1, and that certificate."""
    cert, key = certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    upstream = TlsUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    upstream.url = f"https://127.0.0.1:{port}"
    yield upstream, cert
    await runner.cleanup()
