"""Reading token responses and revocations: pure functions on bytes."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from proxy.oauth import decode_body, read_token_response, revoked_token_digests, rewrite_api_domain
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
        response(expires_in=0),
        response(expires_in="3599"),
        response(expires_in=True),
        b'{"success": false, "message": "Invalid grant"}',
        b"not json",
        b"[1, 2]",
    ],
    ids=["no token", "no scope", "no lifetime", "zero lifetime", "string lifetime",
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
    assert decode_body(gzip.compress(b"x"), "gzip") == b"x"
    assert decode_body(zlib.compress(b"x"), "deflate") == b"x"
    assert decode_body(b"x", "br") is None
    assert decode_body(b"not gzip", "gzip") is None


def test_revocation_names_one_token_read_both_ways() -> None:
    assert revoked_token_digests(b"token=v1u%3Aab&token_type_hint=access_token") == {
        sha("v1u:ab"), sha("v1u:ab"),
    }  # fmt: skip
    assert revoked_token_digests(b"token=v1u%253Aab") == {sha("v1u%3Aab"), sha("v1u:ab")}
    assert revoked_token_digests(b"token_type_hint=access_token") == set()
    assert revoked_token_digests(b"token=a&token=b") == set()
