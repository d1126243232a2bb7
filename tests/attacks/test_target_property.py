"""A property over request targets built from the risky alphabet: refused, or forwarded as
exactly the bytes authorized, to an endpoint the token's scopes accept however the next hop
reads them.

Targets are built from ``A-Za-z0-9%./;\\#?~-+[]``, percent-encodings of those characters and
of bytes >= 0x80, and pieces of real paths. Each goes to a live proxy over a raw socket with a
token holding only ``deals:read``. When the upstream receives anything, it must be the target
byte for byte, and every reading a lenient server might make of it (percent-decoding, Unicode
NFKC, ``\\`` as ``/``, dot segments resolved, ``//`` merged, ``;params`` dropped, letter case
folded) that lands on a catalogue endpoint must land on one ``deals:read`` accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import socket
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from proxy.core.catalog import Catalogue, api_route
from proxy.core.decision import accepts
from proxy.core.errors import ProxyError
from proxy.http.app import create_app
from proxy.http.server import ProxyRunner
from tests.conftest import CATALOGUE, build_config, examples, grants

GRANTED = frozenset({"deals:read"})
RISKY = "ABCXYZabcxyz0189%./;\\#?~-+[]"
PIECES = st.one_of(
    st.sampled_from(list(RISKY)),
    st.sampled_from([f"%{ord(c):02X}" for c in RISKY] + [f"%{ord(c):02x}" for c in RISKY]),
    st.integers(0x80, 0xFF).map(lambda byte: f"%{byte:02X}"),
    st.sampled_from(["%EF%BC%8F", "%EF%BC%BC", "%EF%BC%8E", "%E2%80%A5", "%C0%AF", "%C0%AE"]),
)
WORDS = st.sampled_from(["deals", "activities", "users", "me", "summary", "1", "42", "..", "."])
SEGMENTS = st.lists(st.one_of(WORDS, PIECES), min_size=1, max_size=3).map("".join)
PREFIXES = {"v1": ["/v1", "/api/v1"], "v2": ["/api/v2"]}
# Free-form targets, and real templates whose parameters are filled with risky segments (a
# parameter accepts any segment, so that is where a second reading hides).
FREE_FORM = st.builds(
    lambda prefix, segments: prefix + "/" + "/".join(segments),
    st.sampled_from(["/v1", "/api/v1", "/api/v2", "", "/v1/deals"]),
    st.lists(SEGMENTS, min_size=1, max_size=7),
)
GET_ENDPOINTS = sorted((e for e in CATALOGUE.endpoints if e.method == "GET"), key=lambda e: e.name)


@st.composite
def from_templates(draw: st.DrawFn) -> str:
    endpoint = draw(st.sampled_from(GET_ENDPOINTS))
    prefix = draw(st.sampled_from(PREFIXES[endpoint.version]))
    segments = [
        draw(SEGMENTS) if "{" in part else part for part in endpoint.template[1:].split("/")
    ]
    return prefix + "/" + "/".join(segments)


TARGETS = st.one_of(FREE_FORM, from_templates())


@dataclass
class Live:
    port: int
    catalogue: Catalogue
    received: list[bytes] = field(default_factory=list)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    """The proxy in front of a recording upstream, served from a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runners: list[web.AppRunner] = []

    async def start() -> Live:
        recorded: list[bytes] = []

        async def record(request: web.Request) -> web.Response:
            recorded.append(request.raw_path.encode("utf-8", "surrogateescape"))
            return web.json_response({"success": True})

        upstream_app = web.Application()
        upstream_app.router.add_route("*", "/{tail:.*}", record)
        upstream_runner = web.AppRunner(upstream_app)
        await upstream_runner.setup()
        upstream_site = web.TCPSite(upstream_runner, "127.0.0.1", 0)
        await upstream_site.start()
        upstream_port = upstream_runner.addresses[0][1]
        config, catalogue = build_config(
            f"http://127.0.0.1:{upstream_port}", tokens=grants(reader=sorted(GRANTED))
        )
        proxy_runner = ProxyRunner(create_app(config, catalogue), handler_cancellation=True)
        await proxy_runner.setup()
        await web.TCPSite(proxy_runner, "127.0.0.1", 0).start()
        runners.extend([proxy_runner, upstream_runner])
        return Live(proxy_runner.addresses[0][1], catalogue, recorded)

    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    finally:
        for runner in runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def send(port: int, target: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: proxy.test\r\n"
            b"Authorization: Bearer reader\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def readings(path: str) -> set[str]:
    """How servers on the way might read a path: decoded, normalized, resolved, folded."""
    decoded = unquote(path, errors="surrogateescape")
    forms = {path, decoded}
    with contextlib.suppress(UnicodeDecodeError):
        forms.add(unicodedata.normalize("NFKC", unquote(path, errors="strict")))
    resolved = set()
    for form in forms:
        form = form.replace("\\", "/")
        segments = [segment.split(";", 1)[0] for segment in form.split("/")]
        merged = "/".join(s for s in segments if s)
        resolved.add("/" + merged)
        resolved.add(posixpath.normpath("/" + merged))
    return forms | resolved | {form.lower() for form in forms | resolved}


def endpoints_read(catalogue: Catalogue, path: str) -> list[str]:
    """The catalogue endpoints any reading of ``path`` lands on, refused readings aside."""
    found = []
    for reading in readings(path):
        route = api_route(reading)
        if route is None:
            continue
        try:
            endpoint = catalogue.match(route, "GET")
        except ProxyError:
            continue
        if endpoint is not None:
            found.append(
                endpoint.name if accepts(GRANTED, endpoint) else "REFUSED " + endpoint.name
            )
    return found


@settings(
    max_examples=examples(600),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(TARGETS)
def test_a_target_is_refused_or_reaches_the_upstream_as_authorized(live: Live, text: str) -> None:
    target = text.encode("latin-1")
    before = len(live.received)
    status = send(live.port, target)
    forwarded = live.received[before:]
    event(f"answered {status}")
    if status != 200:
        assert forwarded == [], f"{target!r} answered {status} yet reached the upstream"
        return
    assert forwarded == [target], "forwarded bytes differ from the authorized target"
    path = target.decode("latin-1").split("#", 1)[0].split("?", 1)[0]
    refused = [name for name in endpoints_read(live.catalogue, path) if name.startswith("REFUSED")]
    assert refused == [], f"{target!r} may be read by the next hop as {refused}"
