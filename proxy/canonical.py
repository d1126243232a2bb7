"""Canonical requests: accept one unambiguous form of a request target, refuse everything else.

The proxy decides on the bytes it forwards. Anything a server or router might read in more than
one way (dot segments, encoded separators, duplicate or disguised credential headers, method
overrides) is refused with ``AmbiguousRequest`` rather than normalized, so that what was
authorized is exactly what goes upstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus

from proxy.errors import AmbiguousRequest, MethodNotAllowed

MAX_TARGET_LENGTH = 8000
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})

_HEX = frozenset(b"0123456789abcdefABCDEF")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar, less ';' (a path-parameter separator for some servers).
_PATH_CHARS = bytes(sorted(_UNRESERVED | frozenset(b"!$&'()*+,=:@%/")))
# Printable ASCII less '#' (fragment), '\' and ';' (a parameter separator for some parsers).
_QUERY_CHARS = bytes(sorted(frozenset(range(0x21, 0x7F)) - frozenset(b"#\\;")))
_CONTROL = frozenset(range(0x20)) | {0x7F}
# Encoded bytes refused in the path: separators and escapes, anything that would spell a
# literal segment differently (unreserved), control characters.
_PATH_ENCODED_REFUSED = frozenset(b"/\\.%;#?") | _UNRESERVED | _CONTROL

# Pipedrive's OAuth server documents its refresh endpoint with a trailing slash.
TRAILING_SLASH_PATHS = frozenset({"/oauth/token/"})
OVERRIDE_NAMES = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override", "_method"}
)
_OVERRIDE_PARAMS = frozenset(name.replace("-", "_") for name in OVERRIDE_NAMES)
# Header names that some servers read with '_' as '-': refused in disguise.
_SENSITIVE_HEADERS = OVERRIDE_NAMES | {
    "authorization",
    "x-api-token",
    "upgrade",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
}


@dataclass(frozen=True, slots=True)
class CanonicalRequest:
    """A request target that passed every check. ``target`` is forwarded byte for byte."""

    method: str
    target: str
    path: str
    query: str
    query_pairs: tuple[tuple[str, str], ...]


def canonicalize(
    method: str, target: str, headers: Sequence[tuple[bytes, bytes]]
) -> CanonicalRequest:
    """Check the method, the raw request target and the header names; return the one reading."""
    if method not in METHODS:
        raise MethodNotAllowed(f"method {method[:20]!r} is not one the Pipedrive API serves")
    check_headers(headers)
    if len(target) > MAX_TARGET_LENGTH:
        raise AmbiguousRequest(f"request target longer than {MAX_TARGET_LENGTH} bytes")
    if not target.startswith("/"):
        raise AmbiguousRequest("request target must be a path starting with '/'")
    path, _, query = target.partition("?")
    check_path(path)
    pairs = parse_query(query)
    return CanonicalRequest(method, target, path, query, pairs)


def check_headers(headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Refuse method overrides, ``Upgrade`` and credential headers disguised with ``_``."""
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        if name in OVERRIDE_NAMES:
            raise AmbiguousRequest(f"method-override header {name!r} is not accepted")
        if name == "upgrade":
            raise AmbiguousRequest("protocol upgrades are not proxied")
        if "_" in name and name.replace("_", "-") in _SENSITIVE_HEADERS:
            raise AmbiguousRequest(f"header name {name!r} reads as {name.replace('_', '-')!r}")
        if not raw_value.isascii():
            raise AmbiguousRequest(f"header {name!r} has a non-ASCII value")


def check_path(path: str) -> None:
    raw = path.encode("utf-8", "surrogateescape")
    if not raw.isascii():
        raise AmbiguousRequest("non-ASCII bytes in the path")
    refused = raw.translate(None, _PATH_CHARS)  # what is left is not allowed
    if refused:
        raise AmbiguousRequest(f"character {chr(refused[0])!r} is not accepted in the path")
    segments = path.split("/")[1:] if path != "/" else []
    if path in TRAILING_SLASH_PATHS:
        segments.pop()
    for segment in segments:
        if segment == "":
            raise AmbiguousRequest("empty path segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise AmbiguousRequest(f"dot segment {segment!r} in the path")
    check_escapes(raw, _PATH_ENCODED_REFUSED, "path")


def check_escapes(raw: bytes, refused: frozenset[int], where: str) -> None:
    index = raw.find(b"%")
    while index != -1:
        pair = raw[index + 1 : index + 3]
        if len(pair) != 2 or not all(char in _HEX for char in pair):
            raise AmbiguousRequest(f"malformed percent-encoding in the {where}")
        if int(pair, 16) in refused:
            raise AmbiguousRequest(f"percent-encoded %{pair.decode().upper()} in the {where}")
        index = raw.find(b"%", index + 3)


def parse_query(query: str) -> tuple[tuple[str, str], ...]:
    """Decoded (name, value) pairs of the query, which itself is forwarded untouched."""
    if not query:
        return ()
    raw = query.encode("utf-8", "surrogateescape")
    if not raw.isascii():
        raise AmbiguousRequest("non-ASCII bytes in the query")
    refused = raw.translate(None, _QUERY_CHARS)
    if refused:
        raise AmbiguousRequest(f"character {chr(refused[0])!r} is not accepted in the query")
    check_escapes(raw, _CONTROL, "query")
    pairs = []
    for item in query.split("&"):
        name, _, value = item.partition("=")
        decoded = unquote_plus(name, errors="surrogateescape")
        if decoded.lower().replace("-", "_") in _OVERRIDE_PARAMS:
            raise AmbiguousRequest(f"method-override parameter {decoded!r} is not accepted")
        pairs.append((decoded, unquote_plus(value, errors="surrogateescape")))
    return tuple(pairs)
