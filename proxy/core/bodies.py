"""Request bodies some server reads fields from: checked for what the query is checked for.

Symfony, Laravel, Rails and Express read a method override (``_method``) from a POST's form
fields, Rack and Symfony from multipart parts too, Laravel also from JSON input; and some read
a credential (``api_token``) from them. A call is authorized as sent, so a body that holds
either would have the next hop act on another method or token than the one decided on. The
bodies that a server on the way may parse into fields are read here, whole and within a bound,
before they are forwarded (the HTTP edge holds them; this module only reads bytes):

- a form: ``application/x-www-form-urlencoded``, or no ``Content-Type`` at all (Rack reads a
  POST without one as a form);
- multipart: any ``multipart/*`` (Rack parses ``multipart/mixed`` and ``related`` too);
- JSON: a type naming ``json`` (``application/json``, ``application/vnd.api+json``), as
  Laravel's ``isJson`` reads it: its top-level keys.

A body may be read in more than one way (``application/json; x=multipart``): it is checked in
each. Field names are read as the query's (``parameter_readings``: PHP's ``.``/``[``/`` `` to
``_``, brackets, NFKC); a name that reads as ``_method`` or as a credential is refused. Such a
body with its own ``Content-Encoding`` cannot be read, so it is refused; and so is a request
with more than one ``Content-Type``. Multipart part names are looked for in every
``Content-Disposition`` header in the body, whatever the boundary (parsers disagree on which
``boundary`` parameter counts), with RFC 2231 (``name*=``), RFC 2047 (``=?utf-8?b?...?=``),
quoted strings and folded lines each read as some parser reads them.

No message quotes the body: it may hold a token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from email.header import decode_header
from typing import Literal
from urllib.parse import unquote, unquote_plus

from proxy.core.canonical import OVERRIDE_NAMES, parameter_readings
from proxy.core.credentials import parameter_credential
from proxy.core.errors import AmbiguousRequest

Reading = Literal["form", "multipart", "json"]
FORM: Reading = "form"
MULTIPART: Reading = "multipart"
JSON: Reading = "json"
DEFAULT_BOUND = 10 * 1024 * 1024  # bytes: limits.max_checked_body

_OVERRIDES = frozenset(name.replace("-", "_") for name in OVERRIDE_NAMES)


def readings(headers: Sequence[tuple[bytes, bytes]]) -> tuple[Reading, ...]:
    """How a server on the way may read this request's body into fields (none: it streams
    unread). Refuses a request whose body cannot be read as it will be (two ``Content-Type``
    headers; a ``Content-Encoding`` on a body that must be read)."""
    content_types: list[bytes] = []
    encoded = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-type":
            content_types.append(value)
        elif lowered == b"content-encoding":
            encoded = True
    if len(content_types) > 1:
        raise AmbiguousRequest("more than one Content-Type")
    found = readings_of(content_types[0] if content_types else None)
    if found and encoded:
        kinds = " and ".join(found)
        raise AmbiguousRequest(
            f"a {kinds} body with its own Content-Encoding (it cannot be checked for "
            "method overrides and credentials)"
        )
    return found


def readings_of(content_type: bytes | None) -> tuple[Reading, ...]:
    if content_type is None or not content_type.strip():
        return (FORM,)
    lowered = content_type.lower()
    found: list[Reading] = []
    if b"urlencoded" in lowered:
        found.append(FORM)
    if b"multipart" in lowered:
        found.append(MULTIPART)
    if b"json" in lowered:
        found.append(JSON)
    return tuple(found)


def check(found: Iterable[Reading], body: bytes) -> None:
    """Refuse ``body`` when a reading of it holds a method override or a credential name."""
    for reading in found:
        if reading == FORM:
            names: Iterable[str] = form_names(body)
        elif reading == MULTIPART:
            names = multipart_names(body)
        else:
            names = json_names(body)
        where = _WHERE[reading]
        for name in names:
            _check_name(name, where)


_WHERE = {FORM: "form field", MULTIPART: "multipart part", JSON: "top-level JSON key"}


def _check_name(name: str, where: str) -> None:
    if not _OVERRIDES.isdisjoint(parameter_readings(name)):
        raise AmbiguousRequest(f"a method-override {where} (_method) is not accepted")
    if parameter_credential(name) is not None:
        raise AmbiguousRequest(
            f"a credential {where} (api_token, access_token) is not accepted: "
            "send the token in the Authorization header"
        )


def form_names(body: bytes) -> Iterable[str]:
    """The field names of an urlencoded body, decoded as the query's; ``;`` separates fields
    too (older Rack and Python's ``cgi`` read it so)."""
    text = body.decode("utf-8", "surrogateescape")
    for field in re.split(r"[&;]", text):
        name = field.partition("=")[0]
        if name:
            yield unquote_plus(name, errors="surrogateescape")


# A Content-Disposition header anywhere in the body (at a line start or not: over-reading is
# the safe side), its name spelled with '-', '_' or nothing between the words.
_DISPOSITION = re.compile(rb"content[-_ ]?disposition[ \t]*:", re.IGNORECASE)
_LINE_END = re.compile(rb"\r\n|\n|\r")
_HEADER_BOUND = 16 * 1024  # bytes of one (folded) header line read
# name=, name*=, name*0=, name*0*= ... and filename= (Rack names a part without a name by it).
_PARAMETER = re.compile(
    r"""(?ix) (?<![a-z0-9_-]) (?P<key>(?:file)?name) (?P<star>\*[0-9]*\*?|[0-9]*\*)? \s*=\s*
    (?P<value>"(?:[^"\\]|\\.)*"?|[^;\s]*)"""
)


def multipart_names(body: bytes) -> Iterable[str]:
    """Every reading of every part name (and file name) in ``body``."""
    for match in _DISPOSITION.finditer(body):
        line = _header_line(body, match.end())
        text = line.decode("utf-8", "surrogateescape")
        continued: dict[str, list[tuple[int, str]]] = {}
        for parameter in _PARAMETER.finditer(text):
            key, star, value = parameter["key"].lower(), parameter["star"] or "", parameter["value"]
            yield from _value_readings(value, extended=star.endswith("*"))
            digits = star.strip("*")
            if digits:
                continued.setdefault(key, []).append((int(digits), value))
        for pieces in continued.values():  # RFC 2231 continuations: name*0=_me; name*1=thod
            joined = "".join(_unquoted(value) for _, value in sorted(pieces))
            yield joined
            yield from _value_readings(joined, extended=True)


def _header_line(body: bytes, start: int) -> bytes:
    """The header's value from ``start``, with its folded continuation lines, bounded."""
    end = start
    limit = min(len(body), start + _HEADER_BOUND)
    while end < limit:
        found = _LINE_END.search(body, end, limit)
        if found is None:
            return body[start:limit]
        following = found.end()
        if following < len(body) and body[following] in b" \t":
            end = following  # a folded line: the header goes on
            continue
        return body[start : found.start()]
    return body[start:limit]


def _value_readings(value: str, extended: bool) -> Iterable[str]:
    plain = _unquoted(value)
    yield plain
    yield value.strip('"')  # escapes left as they are
    if extended or "'" in plain:  # RFC 2231: charset'language'percent-encoded
        yield unquote(plain.rpartition("'")[2], errors="surrogateescape")
    if "%" in plain:
        yield unquote(plain, errors="surrogateescape")
    if "=?" in plain:  # RFC 2047 encoded words
        try:
            parts = decode_header(plain)
        except Exception:  # a malformed encoded word is read as it is
            return
        yield "".join(
            part.decode(charset or "utf-8", "replace") if isinstance(part, bytes) else part
            for part, charset in parts
        )


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value.strip('"')


def json_names(body: bytes) -> Iterable[str]:
    """The top-level keys of a JSON object body (every one, duplicates included). A body that
    is no JSON, or no object, has none: no server reads fields from it."""
    lowered = body.lower()
    if (
        body.isascii()
        and b"\\u" not in body
        and b"method" not in lowered
        and b"token" not in lowered
    ):
        return ()  # every key is spelled as written, and none can read as a name refused
    objects: list[list[str]] = []

    def keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
        objects.append([key for key, _ in pairs])  # inner objects first, the outermost last
        return dict(pairs)

    try:
        value = json.loads(body, object_pairs_hook=keys)
    except (ValueError, RecursionError):
        return ()
    return objects[-1] if isinstance(value, dict) else ()
