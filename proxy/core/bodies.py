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
    # PHP measures a name with strlen: it ends at a NUL ("_method\0x" is "_method").
    for reading in (name, name.partition("\0")[0]) if "\0" in name else (name,):
        if not _OVERRIDES.isdisjoint(parameter_readings(reading)):
            raise AmbiguousRequest(f"a method-override {where} (_method) is not accepted")
        if parameter_credential(reading) is not None:
            raise AmbiguousRequest(
                f"a credential {where} (api_token, access_token) is not accepted: "
                "send the token in the Authorization header"
            )


def form_names(body: bytes) -> Iterable[str]:
    """The field names of an urlencoded body, decoded as the query's, each once; ``;``
    separates fields too (older Rack and Python's ``cgi`` read it so)."""
    raw_names = {field.partition(b"=")[0] for field in re.split(rb"[&;]", body)}
    raw_names.discard(b"")
    for raw in raw_names:
        yield unquote_plus(raw.decode("utf-8", "surrogateescape"), errors="surrogateescape")


# A header that names a part, anywhere in the body (at a line start or not: over-reading is the
# safe side), spelled with '-', '_' or nothing between the words: Content-Disposition, and
# Content-ID, which Rack names a part by when it has no Content-Disposition.
_NAMING = re.compile(rb"content[-_ ]?(disposition|id)[ \t]*:", re.IGNORECASE)
# Where a part's headers end, for some parser: a blank line of CRLFs (Rack, busboy), or of LFs
# (PHP splits header lines on LF only, so a bare CR is inside a line). A header is read to the
# later of the two, through every line in between (PHP adds a line without a ':' to the one
# before it), and never past the next naming header: each byte of the body is read once.
_BLANK_CRLF = re.compile(rb"\r\n\r\n")
_BLANK_LF = re.compile(rb"\n\r?\n")
# name=, name*=, name*0=, name*0*= ...; a value quoted with '"' or "'" (PHP takes either), or
# bare.
_PARAMETER = re.compile(
    r"""(?ix) (?<![a-z0-9_-]) (?P<key>name) (?P<star>\*[0-9]*\*?|[0-9]*\*)? \s*=\s*
    (?P<value>"(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?|[^;\s]*)"""
)


def multipart_names(body: bytes) -> Iterable[str]:
    """Every reading of every part name in ``body``, in time linear in its size."""
    matches = list(_NAMING.finditer(body))
    for index, match in enumerate(matches):
        limit = matches[index + 1].start() if index + 1 < len(matches) else len(body)
        ends = [
            found.start()
            for found in (_BLANK_CRLF.search(body, match.end(), limit),
                          _BLANK_LF.search(body, match.end(), limit))
            if found is not None
        ]  # fmt: skip
        header = body[match.end() : max(ends) if ends else limit]
        text = header.decode("utf-8", "surrogateescape")
        if match[1].lower() == b"id":  # Rack: the name is the value, to the line's end
            value = re.split(r"[\r\n]", text, maxsplit=1)[0].strip()
            yield value
            yield from _value_readings(value, extended=False)
            continue
        continued: dict[str, list[tuple[int, str]]] = {}
        for parameter in _PARAMETER.finditer(text):
            key, star, value = parameter["key"].lower(), parameter["star"] or "", parameter["value"]
            yield from _value_readings(value, extended=star.endswith("*"))
            digits = star.strip("*")
            if digits:
                continued.setdefault(key, []).append((int(digits[:6]), value))
        for pieces in continued.values():  # RFC 2231 continuations: name*0=_me; name*1=thod
            joined = "".join(_unquoted(value) for _, value in sorted(pieces))
            yield joined
            yield from _value_readings(joined, extended=True)


def _value_readings(value: str, extended: bool) -> Iterable[str]:
    plain = _unquoted(value)
    yield plain
    yield value.strip("\"'")  # escapes left as they are
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
    if len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]:
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value.strip("\"'")


def json_names(body: bytes) -> Iterable[str]:
    """The top-level keys of a JSON object body (every one, duplicates included); none for
    JSON that is no object. A body that cannot be read as JSON (not UTF-8, -16 or -32; nested
    past what can be read; malformed) is refused: another parser may read it (Node's decodes
    bytes that are not UTF-8 with replacement characters, and nests deeper)."""
    lowered = body.lower()
    if (
        body.isascii()
        and b"\0" not in body  # UTF-16 and -32 spell ASCII with NULs
        and b"\\u" not in body
        and b"method" not in lowered
        and b"token" not in lowered
    ):
        return ()  # every key is spelled as written, and none can read as a name refused
    objects: list[list[str]] = []

    def keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
        objects.append([key for key, _ in pairs])  # inner objects first, the outermost last
        return {}  # nothing of it is kept

    try:  # numbers are not converted (an integer of 5,000 digits is no error)
        value = json.loads(body, object_pairs_hook=keys, parse_int=len, parse_float=len)
    except RecursionError:
        raise AmbiguousRequest("a JSON body nested too deeply to be read") from None
    except ValueError:
        raise AmbiguousRequest(
            "a JSON body that cannot be read as JSON (checked for method overrides and "
            "credentials before it is forwarded)"
        ) from None
    return objects[-1] if isinstance(value, dict) else ()
