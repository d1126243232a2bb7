"""Template matching: precedence, in-segment parameters, ambiguity refused at load time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.errors import AmbiguousRequest
from proxy.core.matching import AmbiguousTemplates, Router, Segment, split_template
from tests.conftest import CATALOGUE, examples


def router(*templates: str) -> Router[str]:
    return Router((template, template) for template in templates)


def segments(path: str) -> tuple[str, ...]:
    return tuple(path[1:].split("/"))


@pytest.mark.parametrize(
    ("templates", "path", "expected"),
    [
        (["/deals/{id}", "/deals/summary"], "/deals/summary", "/deals/summary"),
        (["/deals/{id}", "/deals/summary"], "/deals/42", "/deals/{id}"),
        (["/deals/summary", "/deals/{id}/products"], "/deals/summary/products",
         "/deals/{id}/products"),
        (["/teams/{id}/users", "/teams/user/{id}"], "/teams/user/users", "/teams/user/{id}"),
        (["/goals/count/by-{assignee}"], "/goals/count/by-user", "/goals/count/by-{assignee}"),
        (["/goals/count/by-{assignee}"], "/goals/count/by-", None),
        (["/goals/count/by-{assignee}"], "/goals/count/user", None),
        (["/deals/{id}"], "/deals", None),
        (["/deals/{id}"], "/deals/1/2", None),
        (["/a/{x}/c", "/a/b/{y}"], "/a/b/c", "/a/b/{y}"),
        (["/a/{x}/c", "/a/b/{y}"], "/a/z/c", "/a/{x}/c"),
    ],
    ids=[
        "a literal beats a parameter",
        "a parameter takes what no literal claims",
        "a dead-end literal branch falls back to the parameter",
        "the legacy teams typo fix wins over the parameter",
        "a parameter inside a segment matches its affix",
        "an in-segment parameter needs a non-empty value",
        "an in-segment parameter needs its prefix",
        "a parameter needs a segment",
        "extra segments do not match",
        "the literal at the first differing position wins",
        "without that literal the other template matches",
    ],
)  # fmt: skip
def test_match(templates: list[str], path: str, expected: str | None) -> None:
    assert router(*templates).match(segments(path)) == expected


@pytest.mark.parametrize(
    "templates",
    [
        ["/deals/{id}", "/deals/{deal_id}"],
        ["/goals/{x}", "/goals/by-{y}"],
        ["/goals/by-{x}", "/goals/{y}-count"],
    ],
    ids=[
        "the same shape twice",
        "a plain and an in-segment parameter at the same place",
        "two in-segment parameters that overlap",
    ],
)
def test_ambiguity_the_rule_cannot_settle_is_refused_at_load(templates: list[str]) -> None:
    with pytest.raises(AmbiguousTemplates):
        router(*templates)


def test_a_segment_differing_from_a_literal_only_in_case_is_refused() -> None:
    with pytest.raises(AmbiguousRequest, match="only in letter case"):
        router("/users/me", "/users/{id}").match(segments("/users/Me"))


@pytest.mark.parametrize("bad", ["deals", "/deals/", "//deals", "/deals/{a}{b}", "/x/{a"])
def test_malformed_templates_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"template|segment"):
        split_template(bad)


def reference_match(templates: list[str], path: tuple[str, ...]) -> str | None:
    """The precedence rule written plainly: a scan over every template, for comparison."""
    matching = [
        t
        for t in templates
        if len(split_template(t)) == len(path)
        and all(s.accepts(v) for s, v in zip(split_template(t), path, strict=True))
    ]

    def rank(template: str) -> tuple[int, ...]:
        return tuple(0 if s.literal is not None else 1 for s in split_template(template))

    return min(matching, key=rank) if matching else None


V1_GET = [e.template for e in CATALOGUE.endpoints if e.version == "v1" and e.method == "GET"]
V1_GET_TRIE = Router((t, t) for t in V1_GET)
WORDS = sorted({part for t in V1_GET for part in t.split("/") if part and "{" not in part})


@settings(max_examples=examples(400), deadline=None)
@given(st.lists(st.sampled_from([*WORDS, "42", "by-user", "x"]), min_size=1, max_size=5))
def test_trie_agrees_with_a_plain_scan_on_the_real_catalogue(parts: list[str]) -> None:
    path = tuple(parts)
    assert V1_GET_TRIE.match(path) == reference_match(V1_GET, path)


def test_segment_overlap_is_symmetric_and_sound() -> None:
    cases = ["deals", "{id}", "by-{x}", "{x}-count", "by-{x}-count"]
    for a in cases:
        for b in cases:
            sa, sb = Segment.parse(a), Segment.parse(b)
            assert sa.overlaps(sb) == sb.overlaps(sa), (a, b)
    assert not Segment.parse("deals").overlaps(Segment.parse("by-{x}"))
    assert Segment.parse("by-{x}").overlaps(Segment.parse("{y}-count"))
