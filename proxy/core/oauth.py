"""Learning granted scopes from Pipedrive's OAuth token exchange.

Pipedrive's access tokens are opaque and no API endpoint reports their scopes: the only place
they appear is the ``scope`` field of the ``/oauth/token`` response. So apps point their OAuth
host at the proxy too, and the proxy reads each successful response as it passes.

Pure functions on bytes; ``proxy.token_exchange`` does the I/O.
"""

from __future__ import annotations

import json
import math
import re
import time
import zlib
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from proxy.core.credentials import token_digest

TOKEN_PATHS = frozenset({"/oauth/token", "/oauth/token/"})
REVOKE_PATH = "/oauth/revoke"
AUTHORIZE_PATH = "/oauth/authorize"  # the browser's consent page: redirected, never forwarded
MAX_BODY = 256 * 1024  # token requests and responses are a few hundred bytes
# What the proxy asks the OAuth server for: it must read every token answer (brotli, which
# axios and so the official Node client accept, it could not).
ACCEPT_ENCODING = "identity"
# Longest token lifetime believed; Pipedrive's access tokens live about an hour.
MAX_LIFETIME = 366 * 24 * 3600
_API_DOMAIN = re.compile(rb'("api_domain"\s*:\s*)"(?:[^"\\]|\\.)*"')


class UntrustedTokenResponse(ValueError):
    """A token answer with an access token whose lifetime cannot be believed."""


@dataclass(frozen=True, slots=True)
class LearnedToken:
    """A token response's access token, by digest only, with its scopes and expiry."""

    digest: str
    scopes: frozenset[str]
    expires_at: float
    company: str | None = None  # the company's API host (api_domain), as Pipedrive named it


def decode_body(body: bytes, content_encoding: str, limit: int = MAX_BODY) -> bytes | None:
    """The body without its content codings, or None where the proxy cannot read it.

    Reads gzip (multi-member too), deflate (zlib-wrapped or raw, as servers send both) and
    identity, applied in the order ``Content-Encoding`` lists them; at most ``limit`` bytes.
    """
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    try:
        for coding in reversed(codings):
            if coding in ("gzip", "x-gzip"):
                body = _inflate(body, wbits=31, limit=limit, members=True)
            elif coding == "deflate":
                try:
                    body = _inflate(body, wbits=15, limit=limit, members=False)
                except zlib.error:
                    body = _inflate(body, wbits=-15, limit=limit, members=False)
            elif coding != "identity":
                return None
    except (zlib.error, _TooLarge):
        return None
    return body


class _TooLarge(Exception):
    pass


def _inflate(data: bytes, wbits: int, limit: int, members: bool) -> bytes:
    out = bytearray()
    while True:
        inflater = zlib.decompressobj(wbits=wbits)
        out += inflater.decompress(data, limit + 1 - len(out))
        if len(out) > limit or inflater.unconsumed_tail:
            raise _TooLarge()
        if not inflater.eof:
            raise zlib.error("truncated stream")
        data = inflater.unused_data
        if not (members and data):
            return bytes(out)


def is_json_object(body: bytes) -> bool:
    """Whether a body parses as one JSON object, as every token answer does."""
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


def read_token_response(body: bytes, now: float | None = None) -> LearnedToken | None:
    """What a successful token response teaches, or None when it teaches nothing.

    Raises ``UntrustedTokenResponse`` for an access token whose ``expires_in`` is not a finite
    number of seconds between 0 and a year (``1e999``, ``NaN``, negative): learn nothing.
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
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
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
        return None
    if not (math.isfinite(lifetime) and 0 < lifetime <= MAX_LIFETIME):
        raise UntrustedTokenResponse(
            f"expires_in must be a number of seconds between 0 and {MAX_LIFETIME}"
        )
    scopes = frozenset(name for name in re.split(r"[\s,]+", scope) if name)
    started = time.time() if now is None else now
    company = company_of(document.get("api_domain"))
    return LearnedToken(token_digest(token), scopes, started + float(lifetime), company)


_COMPANY_HOST = re.compile(
    r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+"
)


def company_of(api_domain: object) -> str | None:
    """The company a token belongs to: the host of the ``api_domain`` Pipedrive answered with
    (``https://acme.pipedrive.com`` -> ``acme.pipedrive.com``); None when there is none that
    reads as a host name."""
    if not isinstance(api_domain, str):
        return None
    host = urlsplit(api_domain.strip()).hostname if "://" in api_domain else None
    return host if host is not None and _COMPANY_HOST.fullmatch(host) else None


def revoked_token_digest(form: bytes) -> str | None:
    """Digest of the one token a revoke request names (form field ``token``), as the form
    parser reads it: decoded once, exactly as the OAuth server decodes it. Anything else (no
    token, two different ones, a body that is not a form) names nothing to forget."""
    try:
        fields = parse_qsl(form.decode("ascii"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return None
    tokens = {value for name, value in fields if name == "token" and value}
    return token_digest(tokens.pop()) if len(tokens) == 1 else None


def rewrite_api_domain(body: bytes, public_url: str) -> bytes:
    """The body with ``api_domain``'s value replaced, every other byte as it was."""
    replacement = json.dumps(public_url).encode()
    return _API_DOMAIN.sub(lambda match: match.group(1) + replacement, body, count=1)
