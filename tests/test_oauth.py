"""Reading token responses and revocations: pure functions on bytes."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from proxy.core.oauth import (
    UntrustedTokenResponse,
    decode_body,
    read_token_response,
    revoked_token_digest,
    rewrite_api_domain,
)
from tests.conftest import sha


def response(**fields: object) -> bytes:
    base: dict[str, object] = {
        "access_token": "tok",
        "scope": "base,deals:read",
        "expires_in": 3599,
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("base,deals:full,contacts:read", {"base", "deals:full", "contacts:read"}),
        ("base, deals:full , contacts:read", {"base", "deals:full", "contacts:read"}),
        ("base deals:full", {"base", "deals:full"}),
        ("", set()),
    ],
    ids=["comma-separated", "with spaces", "space-separated", "empty"],
)
def test_scope_string_is_read_tolerantly(scope: str, expected: set[str]) -> None:
    learned = read_token_response(response(scope=scope), now=1000.0)
    assert learned is not None
    assert learned.scopes == expected
    assert learned.digest == sha("tok")
    assert learned.expires_at == 1000.0 + 3599


@pytest.mark.parametrize(
    "body",
    [
        response(access_token=None),
        response(scope=None),
        response(expires_in=None),
        response(expires_in="3599"),
        response(expires_in=True),
        b'{"success": false, "message": "Invalid grant"}',
        b"not json",
        b"[1, 2]",
    ],
    ids=["no token", "no scope", "no lifetime", "string lifetime",
         "boolean lifetime", "an error body", "not JSON", "not an object"],
)  # fmt: skip
def test_responses_that_teach_nothing(body: bytes) -> None:
    assert read_token_response(body) is None


def test_api_domain_is_replaced_and_every_other_byte_kept() -> None:
    body = b'{"access_token":"t","api_domain":"https://acme.pipedrive.com","scope":"base"}'
    assert rewrite_api_domain(body, "http://proxy:8080") == (
        b'{"access_token":"t","api_domain":"http://proxy:8080","scope":"base"}'
    )
    spaced = b'{"api_domain" : "https://a.pipedrive.com" }'
    assert rewrite_api_domain(spaced, "http://p") == b'{"api_domain" : "http://p" }'


def test_content_codings() -> None:
    assert decode_body(b"x", "") == b"x"
    assert decode_body(b"x", "identity") == b"x"
    assert decode_body(gzip.compress(b"x"), "gzip") == b"x"
    assert decode_body(gzip.compress(b"x"), "x-gzip") == b"x"
    assert decode_body(zlib.compress(b"x"), "deflate") == b"x"
    assert decode_body(b"x", "br") is None
    assert decode_body(b"not gzip", "gzip") is None


def test_gzip_members_and_raw_deflate_are_read_whole() -> None:
    two_members = gzip.compress(b'{"a":') + gzip.compress(b"1}")
    assert decode_body(two_members, "gzip") == b'{"a":1}'
    raw = zlib.compressobj(wbits=-15)
    assert decode_body(raw.compress(b"plain") + raw.flush(), "deflate") == b"plain"
    assert decode_body(gzip.compress(zlib.compress(b"x")), "deflate, gzip") == b"x"


def test_truncated_or_oversized_codings_are_unreadable() -> None:
    assert decode_body(gzip.compress(b"x" * 100)[:-12], "gzip") is None
    bomb = gzip.compress(b"0" * (2 * 1024 * 1024))
    assert decode_body(bomb, "gzip", limit=256 * 1024) is None


def test_revocation_forgets_only_the_token_the_form_parser_reads() -> None:
    assert revoked_token_digest(b"token=v1u%3Aab&token_type_hint=access_token") == sha("v1u:ab")
    # Decoded once, as the OAuth server decodes it: never a second reading of another token.
    assert revoked_token_digest(b"token=v1u%253Aab") == sha("v1u%3Aab")
    assert revoked_token_digest(b"token_type_hint=access_token") is None
    assert revoked_token_digest(b"token=a&token=b") is None
    assert revoked_token_digest(b"token=a&token=a") == sha("a"), "the same token twice is one"
    assert revoked_token_digest(b"token=\xff") is None


@pytest.mark.parametrize("lifetime", ["1e999", "-1e999", "NaN", "-5", "0", "40000000"])
def test_an_unbelievable_lifetime_teaches_nothing(lifetime: str) -> None:
    body = ('{"access_token":"t","scope":"base","expires_in":' + lifetime + "}").encode()
    with pytest.raises(UntrustedTokenResponse):
        read_token_response(body)
