"""Request bodies some server reads fields from: checked for what the query is checked for.

Symfony, Laravel, Rails and Express read a method override (``_method``) from a POST's form
fields, Rack and Symfony from multipart parts too, Laravel also from JSON input; and some read
a credential (``api_token``) from them. A call is authorized as sent, so a body that holds
either would have the next hop act on another method or token than the one decided on. The
bodies that a server on the way may parse into fields are read here, whole and within a bound,
before they are forwarded (the HTTP edge holds them; this module only reads bytes):

- a form: ``application/x-www-form-urlencoded`` (the media type as PHP reads it: cut at ``;``,
  ``,`` or a space), or no ``Content-Type`` at all (Rack reads a POST without one as a form);
- multipart: any ``multipart/*``;
- JSON: a type with ``/json`` or ``+json`` anywhere in it, as Laravel's ``isJson`` reads it.

Field names are read as the query's (``parameter_readings``: PHP's ``.``/``[``/`` `` to ``_``,
brackets, NFKC, and a NUL ending the name as PHP's ``strlen`` ends it); a name that reads as
``_method`` or as a credential is refused. A multipart body is read in one canonical form, the
one browsers, curl and every HTTP library send, and refused in any other (servers read the rest
each their own way: PHP joins a line with no colon to the one before, Rack names a part by its
``Content-ID``, parsers differ on quotes, folding and RFC 2231/2047): one ``boundary``; parts of
CRLF-ended header lines, ``Content-Disposition: form-data; name="..."`` (and ``filename``)
quoted plainly, and only the headers form parts carry. A JSON body is refused when Python's
parser cannot read it (another parser may: Ruby's reads unknown escapes, Node's decodes bytes
that are not UTF-8). Such a body with its own ``Content-Encoding`` cannot be read, so it is
refused; and so is a request with more than one ``Content-Type``. Every check is linear in the
body's size.

No message quotes the body: it may hold a token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Literal
from urllib.parse import unquote_plus

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
    lowered = content_type.lower().strip()
    essence = re.split(rb"[;, \t]", lowered, maxsplit=1)[0]
    found: list[Reading] = []
    if essence == b"application/x-www-form-urlencoded":
        found.append(FORM)
    if essence.startswith(b"multipart/"):
        found.append(MULTIPART)
    if b"/json" in lowered or b"+json" in lowered:
        found.append(JSON)
    return tuple(found)


def content_type(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The request's one ``Content-Type`` (``readings`` refused two)."""
    return next((value for name, value in headers if name.lower() == b"content-type"), None)


def check(found: Iterable[Reading], body: bytes, declared: bytes | None = None) -> None:
    """Refuse ``body`` (of the type ``declared``) when a reading of it holds a method override
    or a credential name, or cannot be read."""
    for reading in found:
        if reading == FORM:
            names: Iterable[str] = form_names(body)
        elif reading == MULTIPART:
            names = multipart_names(body, declared or b"")
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


_UNREADABLE_MULTIPART = (
    "a multipart body not in the form the proxy reads (one boundary; parts of CRLF-ended "
    'headers, Content-Disposition: form-data; name="..."): servers read such a body '
    "each their own way"
)
# RFC 2046's boundary characters, at most 70, quoted or not; the one parameter of its name.
_BCHARS = rb"0-9a-z'()+_,\-./:=?"
_BOUNDARY = re.compile(
    rb'boundary=(?:"([' + _BCHARS + rb" ]{1,69}[" + _BCHARS + rb'])"'
    rb"|([" + _BCHARS.replace(b",", b"") + rb"]{1,70}))(?:;|$)"
)
# The headers a form part carries, and the one way its Content-Disposition is read.
_PART_HEADERS = frozenset({b"content-disposition", b"content-type", b"content-transfer-encoding"})
_HEADER_LINE = re.compile(rb"([A-Za-z0-9-]+):[ \t]*([^\x00\r\n]*)")
_DISPOSITION = re.compile(rb'form-data((?:;[ \t]*(?:name|filename)="[^"\\\x00\r\n]*")+)[ \t]*')
_DISPOSITION_PARAMETER = re.compile(rb'(name|filename)="([^"]*)"')


def multipart_names(body: bytes, declared: bytes) -> Iterable[str]:
    """The part names of a multipart body in its canonical form; refused in any other."""
    lowered = declared.lower()
    first = lowered.find(b"boundary")  # where PHP looks: the first "boundary", whatever it is
    found = _BOUNDARY.match(lowered, first) if first > 0 else None
    if (
        found is None
        or not re.search(rb";[ \t]*$", lowered[:first])  # a parameter of its own
        or lowered.count(b"boundary=") != 1
    ):
        raise AmbiguousRequest(_UNREADABLE_MULTIPART)
    start = found.start(1) if found[1] is not None else found.start(2)
    boundary = declared[start : start + len(found[1] or found[2])]  # as declared, case kept
    delimiter = b"--" + boundary
    if not body.startswith(delimiter + b"\r\n"):
        raise AmbiguousRequest(_UNREADABLE_MULTIPART)
    closing = b"\r\n" + delimiter + b"--"
    end = body.rfind(closing)
    if end < 0 or body[end + len(closing) :] not in (b"", b"\r\n"):
        raise AmbiguousRequest(_UNREADABLE_MULTIPART)
    names = []
    for part in body[len(delimiter) + 2 : end].split(b"\r\n" + delimiter + b"\r\n"):
        head, blank, _ = part.partition(b"\r\n\r\n")
        if not blank:
            raise AmbiguousRequest(_UNREADABLE_MULTIPART)
        disposition = None
        for line in head.split(b"\r\n"):
            header = _HEADER_LINE.fullmatch(line)
            if header is None or header[1].lower() not in _PART_HEADERS:
                raise AmbiguousRequest(_UNREADABLE_MULTIPART)
            if header[1].lower() == b"content-disposition":
                if disposition is not None:
                    raise AmbiguousRequest(_UNREADABLE_MULTIPART)
                disposition = _DISPOSITION.fullmatch(header[2])
                if disposition is None:
                    raise AmbiguousRequest(_UNREADABLE_MULTIPART)
        if disposition is None:
            raise AmbiguousRequest(_UNREADABLE_MULTIPART)
        parameters = _DISPOSITION_PARAMETER.findall(disposition[1])
        keys = [key for key, _ in parameters]
        if keys.count(b"name") != 1 or keys.count(b"filename") > 1:
            raise AmbiguousRequest(_UNREADABLE_MULTIPART)
        for key, value in parameters:
            if key == b"name":
                if b"=?" in value:  # an RFC 2047 encoded word: no form sends one, some decode it
                    raise AmbiguousRequest(_UNREADABLE_MULTIPART)
                names.append(value)
    return [name.decode("utf-8", "surrogateescape") for name in names]


def json_names(body: bytes) -> Iterable[str]:
    """The top-level keys of a JSON object body (every one, duplicates included); none for
    JSON that is no object. A body Python cannot read as JSON (not UTF-8, -16 or -32, an
    unknown escape, nested too deeply, malformed) is refused: another parser may read it."""
    lowered = body.lower()
    if (
        body.isascii()
        and b"\0" not in body  # UTF-16 and -32 spell ASCII with NULs
        and b"\\" not in body  # no escape, known or not (Ruby reads "\e" as "e")
        and b"method" not in lowered
        and b"token" not in lowered
    ):
        return ()  # every key is spelled as written, and none can read as a name refused
    last: list[list[str]] = [[]]

    def keys(pairs: list[tuple[str, object]]) -> None:
        last[0] = [key for key, _ in pairs]  # the outermost object's come last
        return None  # nothing of it is kept

    try:  # numbers are not converted (an integer of 5,000 digits is no error)
        value = json.loads(body, object_pairs_hook=keys, parse_int=len, parse_float=len)
    except RecursionError:
        raise AmbiguousRequest("a JSON body nested too deeply to be read") from None
    except ValueError:
        raise AmbiguousRequest(
            "a JSON body that cannot be read as JSON (checked for method overrides and "
            "credentials before it is forwarded)"
        ) from None
    top = body.lstrip(b" \t\r\n\xef\xbb\xbf")
    return last[0] if value is None and top[:1] == b"{" else ()
