"""Properties of the canonical form: whatever is accepted has exactly one reading."""

from __future__ import annotations

from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.canonical import _PLAIN_PATH, canonicalize, check_path_fully
from proxy.core.errors import AmbiguousRequest, ProxyError
from tests.conftest import examples

# Path material that stresses the checks: separators, dots, escapes of all kinds, letters.
PIECES = st.sampled_from(
    ["/", "//", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%25", "%00", "%41", "%20", "%3b",
     ";", "\\", "#", "?", "deals", "v1", "api", "1", "-", "_", "~", "%", "%zz", "é", ":", "@"]
)  # fmt: skip


@settings(max_examples=examples(2000), deadline=None)
@given(st.lists(PIECES, min_size=1, max_size=12))
def test_an_accepted_path_decodes_to_the_same_segments(pieces: list[str]) -> None:
    target = "/" + "".join(pieces)
    try:
        request = canonicalize("GET", target, ())
    except (AmbiguousRequest, ProxyError):
        return
    if request.path == "/":
        return
    raw_segments = request.path.split("/")
    decoded_segments = unquote(request.path).split("/")
    # Decoding (as a server or router would) neither adds nor removes a separator ...
    assert len(decoded_segments) == len(raw_segments)
    # ... nor turns a segment into a dot segment or an empty one.
    assert all(s not in ("", ".", "..") for s in decoded_segments[1:])
    assert "\\" not in unquote(request.path)
    assert request.target == target  # and what is forwarded is exactly what was authorized


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60))
def test_query_is_forwarded_as_sent_or_refused(query: str) -> None:
    target = "/v1/deals?" + query
    try:
        request = canonicalize("GET", target, ())
    except ProxyError:
        return
    assert request.target == target
    assert "#" not in query
    assert request.query == query


@settings(max_examples=examples(2000), deadline=None)
@given(st.lists(PIECES, min_size=1, max_size=12))
def test_the_plain_path_shortcut_accepts_only_what_every_rule_accepts(pieces: list[str]) -> None:
    path = "/" + "".join(pieces)
    if _PLAIN_PATH.fullmatch(path):
        check_path_fully(path)  # raises if any rule refuses what the shortcut let through
