"""Log injection: what a client sends is written to the logs as printable ASCII only.

A request id and a user agent are values of a client's own in every log line, refused or not.
A C1 control (U+009B is CSI to a terminal, U+0085 a line break to some readers), U+2028 (a
line break to JavaScript log viewers), an ESC sequence or a CR, raw in a log, can forge lines
or rewrite a terminal; and a backslash could fake an escape. Sent as raw bytes, each must come
out escaped, in the JSON lines and in the console format alike; and Pipedrive's own
``x-correlation-id`` likewise.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog
from aiohttp import web

from proxy.http import logs
from tests.conftest import ProxyFactory, grants, raw_request
from tests.fakes import FakePipedrive, Received

TOKENS = grants(reader=["deals:read"])
HOSTILE = [
    ("a C1 CSI", "\u009b2J".encode(), "\\x9b2J"),
    ("a C1 next-line", "a\u0085b".encode(), "a\\x85b"),
    ("a line separator", "a\u2028b".encode(), "a\\u2028b"),
    ("an ESC sequence", b"a\x1b[31mred", None),  # aiohttp's parser refuses the request
    ("a tab", b"a\tb", "a\\x09b"),
    ("a backslash that looks like an escape", b"a\\x1b", "a\\\\x1b"),
    ("a byte that is no UTF-8", b"a\xffb", "a\\udcffb"),
]  # fmt: skip


@pytest.fixture(params=["json", "console"])
def sink(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    stream, saved = io.StringIO(), logs.SINK.stream
    logs.SINK.stream = stream
    logs.configure_logging(request.param, "info")
    yield stream
    logs.SINK.flush()
    logs.SINK.stream = saved
    structlog.reset_defaults()
    logs._fast_requests = False  # as before configure_logging: request events through structlog


def written(sink: io.StringIO) -> str:
    logs.SINK.flush()
    return sink.getvalue()


def assert_printable(text: str) -> None:
    for line in text.splitlines():
        assert line.isascii(), repr(line)
        assert line.isprintable(), repr(line)


@pytest.mark.parametrize(
    ("value", "escaped"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE]
)
async def test_a_hostile_request_id_is_logged_escaped_allowed_or_refused(
    value: bytes, escaped: str | None, sink: io.StringIO, make_proxy: ProxyFactory
) -> None:
    client = await make_proxy(tokens=TOKENS)
    head = b"GET /v1/deals/1 HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer reader\r\n"
    statuses = []
    for extra in (b"", b"X-Api-Token: also\r\n"):  # answered, then refused (two credentials)
        request = head + extra + b"X-Request-Id: " + value + b"\r\nUser-Agent: ua-" + value
        status, _, _ = await raw_request(client, request + b"\r\nConnection: close\r\n\r\n")
        statuses.append(status)
    text = written(sink)
    assert_printable(text)
    if escaped is None:  # refused before it was read: the id logged is one the proxy made
        assert statuses == [400, 400]
        assert "malformed_request" in text
    elif text.lstrip().startswith("{"):
        events = [json.loads(line) for line in text.splitlines()]
        requests = [event for event in events if event["event"] == "request"]
        assert [event["request_id"] for event in requests].count(escaped) == 2
        assert [event["user_agent"] for event in requests].count("ua-" + escaped) == 2
    else:
        assert text.count(escaped) == 4  # the request id and the user agent, twice
    assert 400 in statuses


async def test_pipedrives_correlation_id_is_logged_escaped(
    sink: io.StringIO, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    async def hostile(request: web.Request, seen: Received) -> web.StreamResponse:
        response = web.json_response({"success": True})
        response.headers["X-Correlation-Id"] = "id\u2028\u009bend"
        return response

    upstream.respond = hostile
    client = await make_proxy(tokens=TOKENS)
    status, _, _ = await raw_request(
        client,
        b"GET /v1/deals/1 HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer reader\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status in (200, 502)  # aiohttp may refuse to send such a header on
    text = written(sink)
    assert_printable(text)


def test_printable_leaves_ordinary_ids_alone_and_escapes_everything_else() -> None:
    assert logs.printable("4f3c2a-abc_DEF.123~") == "4f3c2a-abc_DEF.123~"
    assert logs.printable("a\rb\nc\x7fd\u00e9") == "a\\x0db\\x0ac\\x7fd\\xe9"
    for code in range(0x110000):
        if 0xD800 <= code < 0xE000 and code not in (0xD800, 0xDCFF):
            continue  # surrogates: two of them stand for all
        out = logs.printable(chr(code))
        assert out.isascii()
        assert out.isprintable()
