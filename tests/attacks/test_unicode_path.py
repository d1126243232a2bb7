"""Non-ASCII in the path: bytes that a decoding, Unicode-normalizing server reads as separators.

Percent-encoded UTF-8 is decoded, and often NFKC-normalized, by frameworks and by filesystems
behind them: ``%EF%BC%8F`` (FULLWIDTH SOLIDUS) becomes ``/``, ``%E2%80%A5`` (TWO DOT LEADER)
becomes ``..``; overlong UTF-8 (``%C0%AF``) spells ``/`` for old decoders (CVE-2000-0884, the IIS
Unicode traversal). No Pipedrive path needs a byte >= 0x80, so every such percent-encoding in the
path is refused; raw non-ASCII bytes are refused by the HTTP parser itself. The query keeps them
(search terms are UTF-8).
"""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote_to_bytes

import pytest

from tests.conftest import ProxyFactory, envelope, grants, raw_request
from tests.fakes import FakePipedrive

SPELLINGS = [
    ("fullwidth solidus, NFKC '/'", b"/v1/deals%EF%BC%8F1"),
    ("fullwidth reverse solidus, NFKC '\\'", b"/v1/deals%EF%BC%BC1"),
    ("fullwidth full stop, NFKC '.'", b"/v1/%EF%BC%8E%EF%BC%8E/users"),
    ("one dot leader, NFKC '.'", b"/v1/deals/%E2%80%A4%E2%80%A4/users"),
    ("two dot leader, NFKC '..'", b"/v1/deals/%E2%80%A5/users"),
    ("overlong '/' (CVE-2000-0884)", b"/v1/deals%C0%AF1"),
    ("overlong '.'", b"/v1/deals/%C0%AE%C0%AE/users"),
    ("a lone continuation byte", b"/v1/deals/%80"),
    ("an accented letter", b"/v1/deals/%C3%A9"),
    ("lower-case hex", b"/v1/deals%ef%bc%8f1"),
]


@pytest.mark.parametrize("target", [t for _, t in SPELLINGS], ids=[i for i, _ in SPELLINGS])
async def test_a_percent_encoded_byte_above_0x7f_in_the_path_is_refused(
    target: bytes, http_parser_kind: str, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=grants(reader=["deals:read"]))
    status, _, body = await raw_request(
        client,
        b"GET " + target + b" HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer reader\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert (status, envelope(body)["scope_proxy"]["reason"]) == (400, "ambiguous_request")
    assert upstream.received == []


def test_the_table_holds_what_it_claims() -> None:
    """The NFKC rows really do normalize to separators: the cases test what they name."""
    readings = {
        b"%EF%BC%8F": "/", b"%EF%BC%BC": "\\", b"%EF%BC%8E": ".", b"%E2%80%A4": ".",
        b"%E2%80%A5": "..",
    }  # fmt: skip
    for encoded, meant in readings.items():
        assert unicodedata.normalize("NFKC", unquote_to_bytes(encoded).decode()) == meant


async def test_encoded_utf8_in_the_query_is_kept(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=grants(reader=["deals:read"]))
    target = b"/api/v2/deals/search?term=%EF%BC%8F%C3%A9"
    status, _, _ = await raw_request(
        client,
        b"GET " + target + b" HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer reader\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status == 200
    assert [r.raw_path.encode() for r in upstream.received] == [target]
