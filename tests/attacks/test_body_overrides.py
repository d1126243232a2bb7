"""Method overrides and credentials in request bodies: refused before anything is forwarded.

Symfony, Laravel, Rails and Express read ``_method`` from a POST's form fields (Rack and
Symfony from multipart parts too, Laravel from JSON input), and some read a token from them:
the call would be authorized as a POST and run as another method, or with another token. Every
spelling here is sent as raw bytes; the upstream must see none of them, and a clean body of
each kind byte for byte.
"""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest

from proxy.core import bodies
from proxy.core.errors import AmbiguousRequest
from tests.conftest import ProxyFactory, envelope, grants, raw_request
from tests.fakes import FakePipedrive

TOKENS = grants(writer=["deals:full"], reader=["deals:read"])
FORM = "application/x-www-form-urlencoded"


def post(
    body: bytes,
    content_type: str | None = FORM,
    extra: dict[str, str] | None = None,
    target: str = "/v1/deals",
    token: str = "writer",
) -> bytes:
    lines = [f"POST {target} HTTP/1.1", "Host: proxy.test", f"Authorization: Bearer {token}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    if "Transfer-Encoding" not in (extra or {}):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def part(name_parameters: str, value: bytes = b"GET", boundary: str = "b") -> bytes:
    return (
        f"--{boundary}\r\nContent-Disposition: form-data; {name_parameters}\r\n\r\n".encode()
        + value
        + b"\r\n"
    )


MULTIPART = "multipart/form-data; boundary=b"
FILE = part('name="file"; filename="deal.pdf"', b"%PDF-1.4 ... _method=GET ...")

REFUSED = [
    ("a form field", b"_method=GET", FORM),
    ("a percent-encoded name", b"%5Fmethod=GET", FORM),
    ("after another field", b"title=Big+deal&_method=GET", FORM),
    ("after a ';'", b"title=x;_method=GET", FORM),
    ("upper case", b"_METHOD=GET", FORM),
    ("in brackets", b"deal[_method]=GET", FORM),
    ("a dotted credential", b"api.token=another", FORM),
    ("an access token", b"title=x&access_token=another", FORM),
    ("the type in capitals, with a charset", b"_method=GET",
     "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8"),
    ("no Content-Type at all (Rack reads a form)", b"_method=DELETE", None),
    ("a multipart part", FILE + part('name="_method"') + b"--b--\r\n", MULTIPART),
    ("a part named last, after a file", FILE + part("name=_method") + b"--b--\r\n", MULTIPART),
    ("an RFC 2231 name", part("name*=utf-8''%5Fmethod") + b"--b--\r\n", MULTIPART),
    ("an RFC 2231 continuation", part('name*0="_me"; name*1="thod"') + b"--b--\r\n", MULTIPART),
    ("an RFC 2047 name", part('name="=?utf-8?b?X21ldGhvZA==?="') + b"--b--\r\n", MULTIPART),
    ("a folded header", b'--b\r\nContent-Disposition: form-data;\r\n name="_method"\r\n\r\nGET'
     b"\r\n--b--\r\n", MULTIPART),
    ("LF line ends", b'--b\nContent-Disposition: form-data; name="_method"\n\nGET\n--b--\n',
     MULTIPART),
    ("another boundary than declared", part('name="_method"', boundary="other")
     + b"--other--\r\n", MULTIPART),
    ("multipart/mixed", part('name="_method"') + b"--b--\r\n", "multipart/mixed; boundary=b"),
    ("a multipart credential", part('name="api_token"', b"another") + b"--b--\r\n", MULTIPART),
    ("a NUL ending the name (PHP's strlen)", b"_method%00x=PUT", FORM),
    ("a credential ending in a NUL", b"title=a&api_token%00=stolen", FORM),
    ("a part name ending in a NUL", part('name="_method\x00"') + b"--b--\r\n", MULTIPART),
    ("a part name in single quotes (PHP)", part("name='_method'") + b"--b--\r\n", MULTIPART),
    ("a header line with no colon (PHP adds it to the one before)",
     b'--b\r\nContent-Disposition: form-data\r\n; name="_method"\r\n\r\nPUT\r\n--b--\r\n',
     MULTIPART),
    ("a bare CR inside a header (PHP splits on LF)",
     b'--b\r\nContent-Disposition: form-data; name="x"\r; name="_method"\r\n\r\nPUT\r\n'
     b"--b--\r\n", MULTIPART),
    ("a header line over 16 KiB",
     part('x="' + "A" * 20000 + '"; name="_method"') + b"--b--\r\n", MULTIPART),
    ("a part named by Content-ID (Rack)", b"--b\r\nContent-ID: _method\r\n\r\nPUT\r\n--b--\r\n",
     MULTIPART),
    ("a top-level JSON key", b'{"title": "x", "_method": "GET"}', "application/json"),
    ("a JSON key beside an integer of 5,000 digits",
     b'{"_method": "PUT", "x": ' + b"1" * 5000 + b"}", "application/json"),
    ("JSON nested deeper than Python reads",
     b'{"_method": "PUT", "x": ' + b"[" * 1500 + b"]" * 1500 + b"}", "application/json"),
    ("JSON with bytes that are not UTF-8", b'{"_method": "PUT", "x": "\xff"}', "application/json"),
    ("JSON in UTF-16", '{"_method": "PUT"}'.encode("utf-16-le"),
     "application/json; charset=utf-16le"),
    ("JSON that is no JSON", b'{"_method": ', "application/json"),
    ("a JSON key with an unknown escape (Ruby reads \\e as e)", b'{"title":"x","_m\\ethod":"PUT"}',
     "application/json"),
    ("a JSON credential with an unknown escape", b'{"api_t\\oken":"stolen"}', "application/json"),
    ("a naming header's name inside the disposition (content-id:)",
     b'--b\r\nContent-Disposition: form-data; x="content-id:"; name="_method"\r\n\r\nPUT\r\n'
     b"--b--\r\n", MULTIPART),
    ("a name split across lines (PHP joins them)",
     b'--b\r\nContent-Disposition: form-data; na\r\nme="_method"\r\n\r\nPUT\r\n--b--\r\n',
     MULTIPART),
    ("a quote never closed (PHP stops at the line's end)",
     b'--b\r\nContent-Disposition: form-data; name="_method\r\nContent-Type: text/plain\r\n\r\n'
     b"PUT\r\n--b--\r\n", MULTIPART),
    ("a Content-ID value on the next line (Rack)",
     b"--b\r\nContent-ID:\r\n_method\r\n\r\nPUT\r\n--b--\r\n", MULTIPART),
    ("RFC 2047 encoded words by the thousand",
     part('name="' + "=?utf-8?q?a?=" * 5000 + '"') + b"--b--\r\n", MULTIPART),
    ("the boundary PHP would read first (boundaryx=)", part('name="x"') + b"--b--\r\n",
     "multipart/form-data; boundaryx=a; boundary=b"),
    ("a JSON key spelled with an escape", b'{"\\u005fmethod": "GET"}', "application/json"),
    ("a JSON credential", b'{"api_token": "another"}', "application/vnd.api+json"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED]
)
async def test_an_override_or_credential_in_a_body_is_refused_and_nothing_forwarded(
    body: bytes, content_type: str | None, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS)
    status, headers, answer = await raw_request(client, post(body, content_type))
    assert status == 400
    assert headers["x-scope-proxy-decision"] == "deny"
    refusal = envelope(answer)
    assert refusal["scope_proxy"]["reason"] == "ambiguous_request"
    assert b"another" not in answer  # never quoted
    assert upstream.received == []


@pytest.mark.parametrize("mode", ["enforce", "report"])
async def test_a_chunked_form_is_read_as_a_whole_and_refused_in_either_mode(
    mode: str, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS, mode=mode)
    chunked = b"6\r\ntitle=\r\n3\r\nx&_\r\n a\r\nmethod=GET\r\n0\r\n\r\n"
    status, _, _ = await raw_request(client, post(chunked, FORM, {"Transfer-Encoding": "chunked"}))
    assert status == 400
    assert upstream.received == []


async def test_a_checked_body_with_its_own_encoding_is_refused(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS)
    for content_type in (FORM, MULTIPART, "application/json", None):
        status, _, answer = await raw_request(
            client, post(gzip.compress(b"_method=GET"), content_type, {"Content-Encoding": "gzip"})
        )
        assert status == 400, content_type
        assert "Content-Encoding" in envelope(answer)["error"]
    status, _, _ = await raw_request(
        client,
        post(gzip.compress(b"x"), "application/octet-stream", {"Content-Encoding": "gzip"}),
    )
    assert status == 200  # a body no server reads fields from goes as it came
    assert len(upstream.received) == 1


async def test_a_form_over_the_bound_is_413_and_never_forwarded(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS, limits={"max_checked_body": 2048})
    large = b"title=" + b"x" * 3000
    declared = await raw_request(client, post(large))
    chunked_body = f"{len(large):x}\r\n".encode() + large + b"\r\n0\r\n\r\n"
    chunked = await raw_request(client, post(chunked_body, FORM, {"Transfer-Encoding": "chunked"}))
    for status, headers, answer in (declared, chunked):
        assert (status, headers["x-scope-proxy-decision"]) == (413, "deny")
        assert "limits.max_checked_body" in envelope(answer)["error"]
    upload = b"x" * 10_000  # over the bound, but no form: streamed, unread
    status, _, _ = await raw_request(client, post(upload, "application/octet-stream"))
    assert status == 200
    assert [seen.body for seen in upstream.received] == [upload]


CLEAN = [
    ("a form", b"title=Big+deal&value=1000&currency=EUR&method=card", FORM),
    ("a form with a near miss", b"methods=a&_methodical=b&token=c&api_tokens=d", FORM),
    ("multipart with a file", FILE + part('name="deal_id"', b"7") + b"--b--\r\n", MULTIPART),
    ("JSON", b'{"title": "Big deal", "custom": {"_method": "nested, not read"}}',
     "application/json"),
    ("JSON that is not an object", b'["_method", "GET"]', "application/json"),
    ("a file named like a credential",
     part('name="file"; filename="api_token.txt"', b"x") + b"--b--\r\n", MULTIPART),
    ("a browser's boundary that happens to spell json",
     b"------WebKitFormBoundaryqJsOnZ1b2c3d4e5f\r\nContent-Disposition: form-data; name=\"file\"; "
     b'filename="deal.pdf"\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.4 {"_method": \r\n'
     b"------WebKitFormBoundaryqJsOnZ1b2c3d4e5f--\r\n",
     "multipart/form-data; boundary=----WebKitFormBoundaryqJsOnZ1b2c3d4e5f"),
    ("a mail file whose part type names an attachment",
     b'--b\r\nContent-Disposition: form-data; name="file"; filename="note.eml"\r\n'
     b'Content-Type: message/rfc822; name="api_token.txt"\r\n\r\nFrom: a\r\n--b--\r\n', MULTIPART),
    ("an HTML file holding a Rails form",
     part('name="file"; filename="form.html"', b'<input type="hidden" name="_method" value="put">')
     + b"--b--\r\n", MULTIPART),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type"), [case[1:] for case in CLEAN], ids=[case[0] for case in CLEAN]
)
async def test_a_clean_body_is_forwarded_byte_for_byte(
    body: bytes, content_type: str, make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    client = await make_proxy(tokens=TOKENS)
    status, _, _ = await raw_request(client, post(body, content_type))
    assert status == 200
    [seen] = upstream.received
    assert seen.body == body
    assert seen.header("Content-Length") == [str(len(body))]
    assert seen.header("Content-Type") == [content_type]


async def test_a_refused_call_reads_no_body_and_sends_no_continue(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    """The body is read only once the call is authorized: a token that may not make the call
    gets its 403 without a 100 Continue; one that may gets the 100, then its answer."""
    client = await make_proxy(tokens=TOKENS)
    assert client.server.port is not None
    answers = {}
    for token in ("reader", "writer"):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        head = post(b"title=x", FORM, {"Expect": "100-continue"}, token=token)
        writer.write(head[: -len(b"title=x")])
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        if first.startswith(b"HTTP/1.1 100 "):
            writer.write(b"title=x")
            first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            answers[token] = "continued, " + first.split(b"\r\n")[0].decode()
        else:
            answers[token] = first.split(b"\r\n")[0].decode()
        writer.close()
    assert answers == {"reader": "HTTP/1.1 403 Forbidden", "writer": "continued, HTTP/1.1 200 OK"}
    assert [seen.body for seen in upstream.received] == [b"title=x"]


async def test_envoys_check_reads_the_body_it_is_sent(
    make_proxy: ProxyFactory, upstream: FakePipedrive
) -> None:
    """The check path (what Envoy asks): the body it carries is read as forwarding reads it,
    and one Envoy could only send in part (over the bound) is 413."""
    client = await make_proxy(tokens=TOKENS)
    check = "/_proxy/authz/v1/deals"
    refused = await raw_request(client, post(b"_method=GET", target=check))
    clean = await raw_request(client, post(b"title=x", target=check))
    partial = await raw_request(
        client, post(b"title=x", target=check, extra={"x-envoy-auth-partial-body": "true"})
    )
    assert [refused[0], clean[0], partial[0]] == [400, 200, 413]
    assert upstream.received == []


def test_every_refused_spelling_is_refused_by_the_pure_check() -> None:
    passed = []
    for name, body, content_type in REFUSED:
        declared = content_type.encode() if content_type else None
        try:
            bodies.check(bodies.readings_of(declared), body, declared)
        except AmbiguousRequest:
            continue
        passed.append(name)
    assert passed == []
    for _name, body, content_type in CLEAN:
        declared = content_type.encode()
        bodies.check(bodies.readings_of(declared), body, declared)  # nothing raised


def test_two_content_types_are_refused() -> None:
    with pytest.raises(AmbiguousRequest, match="more than one Content-Type"):
        bodies.readings([(b"Content-Type", b"application/json"), (b"content-type", FORM.encode())])


def test_a_deeply_nested_json_body_is_refused_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    bodies.check(("json",), json.dumps({"a": 1}).encode() + b" ")
    with pytest.raises(AmbiguousRequest, match="nested too deeply"):
        bodies.check(("json",), b'{"method": ' + deep + b"}")


def test_a_multipart_body_is_read_in_one_pass_of_its_parts() -> None:
    """The bodies that took the first reader seconds to minutes (a naming header repeated
    with no line end; 10 MiB of parts) are refused at once, or read part by part."""
    with pytest.raises(AmbiguousRequest):
        bodies.multipart_names(b"content-disposition:name=a " * 19_418, MULTIPART.encode())
    many = part('name="deal_id"', b"7") * 100_000 + b"--b--\r\n"
    assert set(bodies.multipart_names(many, MULTIPART.encode())) == {"deal_id"}
