"""Learning granted scopes from Pipedrive's OAuth token exchange.

Pipedrive's access tokens are opaque and no API endpoint reports their scopes: the only place
they appear is the ``scope`` field of the ``/oauth/token`` response. So apps point their OAuth
host at the proxy too, and the proxy reads each successful response as it passes.

Pure functions on bytes; the handler in ``proxy.app`` does the I/O.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from proxy.credentials import token_digest

TOKEN_PATHS = frozenset({"/oauth/token", "/oauth/token/"})
REVOKE_PATH = "/oauth/revoke"
MAX_BODY = 256 * 1024  # token requests and responses are a few hundred bytes
_API_DOMAIN = re.compile(rb'("api_domain"\s*:\s*)"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True, slots=True)
class LearnedToken:
    """A token response's access token, by digest only, with its scopes and expiry."""

    digest: str
    scopes: frozenset[str]
    expires_at: float


def decode_body(body: bytes, content_encoding: str) -> bytes | None:
    """The body without its content coding, or None for a coding the proxy does not read."""
    coding = content_encoding.strip().lower()
    if coding in ("", "identity"):
        return body
    try:
        if coding in ("gzip", "x-gzip"):
            return zlib.decompress(body, wbits=31)
        if coding == "deflate":
            return zlib.decompress(body)
    except zlib.error:
        return None
    return None


def read_token_response(body: bytes, now: float | None = None) -> LearnedToken | None:
    """What a successful token response teaches, or None when it teaches nothing."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    token, scope, lifetime = (
        document.get("access_token"),
        document.get("scope"),
        document.get("expires_in"),
    )
    if not isinstance(token, str) or not token or not isinstance(scope, str):
        return None
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
        return None
    scopes = frozenset(name for name in re.split(r"[\s,]+", scope) if name)
    started = time.time() if now is None else now
    return LearnedToken(token_digest(token), scopes, started + float(lifetime))


def revoked_token_digests(form: bytes) -> set[str]:
    """Digests of the token a revoke request names (form field ``token``).

    The official Node client percent-encodes the access token twice, so the once-decoded value
    may still be encoded: both readings are forgotten. Forgetting one too many is harmless.
    """
    try:
        fields = parse_qsl(form.decode("ascii"), keep_blank_values=True)
    except UnicodeDecodeError:
        return set()
    tokens = [value for name, value in fields if name == "token" and value]
    if len(tokens) != 1:
        return set()
    return {token_digest(tokens[0]), token_digest(unquote(tokens[0]))}


def rewrite_api_domain(body: bytes, public_url: str) -> bytes:
    """The body with ``api_domain``'s value replaced, every other byte as it was."""
    replacement = json.dumps(public_url).encode()
    return _API_DOMAIN.sub(lambda match: match.group(1) + replacement, body, count=1)
