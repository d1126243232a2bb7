"""Canonical requests: accept one unambiguous form of a request, refuse everything else.

The proxy decides on the bytes it forwards. Anything a server or router might read in more than
one way (dot segments, encoded separators, disguised credential or override headers, a body the
next hop may read as another request) is refused with ``AmbiguousRequest`` rather than
normalized, so that what was authorized is exactly what goes upstream.

No message here quotes the request: a refused header or parameter may hold a token, and refusals
are both answered and logged. Messages name the rule that was broken, in the proxy's own words.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import unquote_plus

from proxy.core.errors import AmbiguousRequest, MalformedRequest

MAX_TARGET_LENGTH = 8000
SERVED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")  # as an Allow header lists them
METHODS = frozenset(SERVED_METHODS)
BODYLESS_METHODS = frozenset({"GET", "HEAD"})

_HEX = frozenset(b"0123456789abcdefABCDEF")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar, less ';' (a path-parameter separator for some servers).
_PATH_CHARS = bytes(sorted(_UNRESERVED | frozenset(b"!$&'()*+,=:@%/")))
# Printable ASCII less '#' (fragment), '\' and ';' (a parameter separator for some parsers).
_QUERY_CHARS = bytes(sorted(frozenset(range(0x21, 0x7F)) - frozenset(b"#\\;")))
_CONTROL = frozenset(range(0x20)) | {0x7F}
_NON_ASCII = frozenset(range(0x80, 0x100))
# Encoded bytes refused in the path: separators and escapes, anything that would spell a
# literal segment differently (unreserved), control characters, and every byte >= 0x80 (some
# servers decode and Unicode-normalize the path: %EF%BC%8F is a fullwidth '/', and overlong
# UTF-8 such as %C0%AF spells '/' for old decoders).
_PATH_ENCODED_REFUSED = frozenset(b"/\\.%;#?") | _UNRESERVED | _CONTROL | _NON_ASCII

# Pipedrive's OAuth server documents its refresh endpoint with a trailing slash.
TRAILING_SLASH_PATHS = frozenset({"/oauth/token/"})
OVERRIDE_NAMES = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override", "_method"}
)
_OVERRIDE_PARAMS = frozenset(name.replace("-", "_") for name in OVERRIDE_NAMES)
# Headers some frameworks route by instead of the request line (CVE-2018-14773).
PATH_OVERRIDE_NAMES = frozenset(
    {"x-original-url", "x-rewrite-url", "x-original-uri", "x-forwarded-uri", "x-override-url"}
)
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-token"})
# End-to-end headers the decision or the framing of the forwarded request depends on. A
# ``Connection`` header naming one would have the proxy drop it after deciding on it.
_DECIDING_HEADERS = CREDENTIAL_HEADERS | {
    "host",
    "content-length",
    "transfer-encoding",
    "content-encoding",
    "content-type",
}
# Header names that some servers read with '_' as '-': refused in disguise.
_SENSITIVE_HEADERS = (
    OVERRIDE_NAMES | PATH_OVERRIDE_NAMES | _DECIDING_HEADERS | {"upgrade", "connection"}
)
_CONNECTION_HEADERS = frozenset({"connection", "proxy-connection"})
_LENGTH = re.compile(rb"[0-9]{1,18}")  # what llhttp reads as a length: digits, no overflow
# The header names (lower case) a rule looks at, credentials included; and any name with '_'.
_WATCHED = (
    OVERRIDE_NAMES
    | PATH_OVERRIDE_NAMES
    | _CONNECTION_HEADERS
    | CREDENTIAL_HEADERS
    | {"upgrade", "transfer-encoding", "content-length"}
)


class CanonicalRequest(NamedTuple):
    """A request that passed every check. ``target`` is forwarded byte for byte."""

    method: str
    target: str
    path: str
    query: str
    query_pairs: tuple[tuple[str, str], ...]
    credential_headers: tuple[tuple[str, bytes], ...]  # Authorization, x-api-token


def canonicalize(
    method: str, target: str, headers: Sequence[tuple[bytes, bytes]]
) -> CanonicalRequest:
    """Check the raw request target and the headers; return the one reading. Which methods a
    path takes is for its handler to say (a 405 lists them)."""
    if method == "CONNECT":
        raise MalformedRequest("CONNECT asks for a tunnel, which the proxy does not open")
    credential_headers = check_headers(method, headers)
    if len(target) > MAX_TARGET_LENGTH:
        raise AmbiguousRequest(f"request target longer than {MAX_TARGET_LENGTH} bytes")
    if not target.startswith("/"):
        raise AmbiguousRequest("request target must be a path starting with '/'")
    path, question_mark, query = target.partition("?")
    if question_mark and not query:
        # No server reads "/p?" apart from "/p", but the upstream client can only send the
        # latter: the bytes forwarded must be the bytes authorized.
        raise AmbiguousRequest("an empty query ('?' with nothing after it)")
    check_path(path)
    pairs = parse_query(query)
    return CanonicalRequest(method, target, path, query, pairs, credential_headers)


def check_headers(
    method: str, headers: Sequence[tuple[bytes, bytes]]
) -> tuple[tuple[str, bytes], ...]:
    """Refuse overrides, upgrades, disguised headers, hidden bodies, a deceiving Connection,
    and body framing the two HTTP parsers (or the next hop) could read differently; return the
    headers that carry a credential, by lower-case name, for ``extract_credential``."""
    framing = 0
    credentials: list[tuple[str, bytes]] = []
    names = _HEADER_NAMES
    for raw_name, raw_value in headers:
        if not raw_value.isascii():
            raise AmbiguousRequest("a header value has non-ASCII bytes")
        name = names.get(raw_name)
        if name is None:
            name = raw_name.decode("latin-1").lower()
            if len(names) < _HEADER_NAMES_KEPT:
                names[raw_name] = name
        if name in _WATCHED or "_" in name:  # most headers are neither: nothing more to see
            if name in CREDENTIAL_HEADERS:
                credentials.append((name, raw_value))
            else:
                framing += _check_header(method, name, raw_value)
    if framing > 1:
        raise MalformedRequest("more than one of Content-Length and Transfer-Encoding")
    return tuple(credentials)


def _check_header(method: str, name: str, raw_value: bytes) -> int:
    """Check one header the rules name; 1 if it frames a body, else 0."""
    if name in OVERRIDE_NAMES:
        raise AmbiguousRequest(f"method-override header {name} is not accepted")
    if name in PATH_OVERRIDE_NAMES:
        raise AmbiguousRequest(f"path-override header {name} is not accepted")
    if name == "upgrade":
        raise AmbiguousRequest("protocol upgrades are not proxied")
    if "_" in name and name.replace("_", "-") in _SENSITIVE_HEADERS:
        raise AmbiguousRequest(
            f"a header name that reads as {name.replace('_', '-')} when '_' is read as '-'"
        )
    if name in _CONNECTION_HEADERS:
        _check_connection(name, raw_value)
    bodyless = method in BODYLESS_METHODS
    if name == "transfer-encoding":
        if bodyless:
            raise AmbiguousRequest(f"{method} takes no body (Transfer-Encoding)")
        if raw_value.strip().lower() != b"chunked":
            raise MalformedRequest("Transfer-Encoding other than chunked")
        return 1
    if name == "content-length":
        if not _LENGTH.fullmatch(raw_value.strip()):
            raise MalformedRequest("Content-Length is not a length")
        if bodyless and raw_value.strip() != b"0":
            raise AmbiguousRequest(f"{method} takes no body (Content-Length)")
        return 1
    return 0


def _check_connection(name: str, value: bytes) -> None:
    for token in value.decode("ascii").split(","):
        named = token.strip().lower().replace("_", "-")
        if named in _DECIDING_HEADERS:
            raise AmbiguousRequest(
                f"{name} names {named}, which the proxy decides on and would then drop"
            )


# Header names as sent -> lower case: the same few names come on every request.
_HEADER_NAMES: dict[bytes, str] = {}
_HEADER_NAMES_KEPT = 1024  # a client inventing names does not grow it past this

# Paths made of plain segments only (unreserved and sub-delim characters, no escapes, no dot
# or empty segments): what nearly every call is, accepted by one match; the rest get each check.
_PLAIN_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9\-._~!$&'()*+,=:@]+)+")


def check_path(path: str) -> None:
    if not _PLAIN_PATH.fullmatch(path):
        check_path_fully(path)


def check_path_fully(path: str) -> None:
    """Every path rule, one by one, so that a refusal says which."""
    raw = path.encode("utf-8", "surrogateescape")
    if not raw.isascii():
        raise AmbiguousRequest("non-ASCII bytes in the path")
    refused = raw.translate(None, _PATH_CHARS)  # what is left is not allowed
    if refused:
        raise AmbiguousRequest(f"{_describe(refused[0])} is not accepted in the path")
    segments = path.split("/")[1:] if path != "/" else []
    if path in TRAILING_SLASH_PATHS:
        segments.pop()
    for segment in segments:
        if segment == "":
            raise AmbiguousRequest("empty path segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise AmbiguousRequest("dot segment ('.' or '..') in the path")
    check_escapes(raw, _PATH_ENCODED_REFUSED, "path")


def check_escapes(raw: bytes, refused: frozenset[int], where: str) -> None:
    index = raw.find(b"%")
    while index != -1:
        pair = raw[index + 1 : index + 3]
        if len(pair) != 2 or not all(char in _HEX for char in pair):
            raise AmbiguousRequest(f"malformed percent-encoding in the {where}")
        byte = int(pair, 16)
        if byte in refused:
            raise AmbiguousRequest(f"percent-encoded %{byte:02X} in the {where}")
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
        raise AmbiguousRequest(f"{_describe(refused[0])} is not accepted in the query")
    check_escapes(raw, _CONTROL, "query")
    pairs = []
    for item in query.split("&"):
        name, _, value = item.partition("=")
        decoded = unquote_plus(name, errors="surrogateescape")
        if not _OVERRIDE_PARAMS.isdisjoint(parameter_readings(decoded)):
            raise AmbiguousRequest("a method-override query parameter (_method) is not accepted")
        pairs.append((decoded, unquote_plus(value, errors="surrogateescape")))
    return tuple(pairs)


# How query parameter names are mangled on their way to a name some server acts on.
_NAME_FOLD = str.maketrans({" ": "_", ".": "_", "[": "_", "-": "_", "+": "_"})
_NAME_PARTS = re.compile(r"[\[\].]")


def parameter_readings(name: str) -> set[str]:
    """The names servers on the way might read a (decoded) query parameter name as.

    PHP turns ' ', '.' and an unclosed '[' into '_' and drops leading spaces (``api.token`` is
    ``api_token``); some readers fold case or read '-' as '_'; bracket and dot syntax makes
    each part a name of its own to some parser (Node's ``qs`` reads ``[api_token]`` as
    ``api_token``); NFKC folds fullwidth spellings. Over-reading is the safe side: a name
    that reads as a credential or an override is refused or counted.
    """
    if name.isascii() and name.isidentifier() and name.islower():
        return {name}  # the common case: a plain name, read the same way by everyone
    text = unicodedata.normalize("NFKC", name) if not name.isascii() else name
    text = text.lower().strip(" \t\r\n\x0b\x0c")
    readings = {text.translate(_NAME_FOLD)}
    readings.update(part.strip().translate(_NAME_FOLD) for part in _NAME_PARTS.split(text))
    return readings


def _describe(byte: int) -> str:
    """A refused byte in words: printable punctuation as itself, anything else by its code."""
    char = chr(byte)
    return f"character {char!r}" if char in '\\;#"<>[]^`{|} ' else f"byte 0x{byte:02X}"
