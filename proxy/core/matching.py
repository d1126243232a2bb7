"""Match a request path to an endpoint template, segment by segment.

A template segment is a literal (``deals``), a parameter (``{id}``, one non-empty segment) or a
parameter inside a segment (``by-{goalAssignee}``). When several templates match a path, the one
with a literal at the first position where they differ wins (``/deals/summary`` beats
``/deals/{id}``), which is how Pipedrive's router resolves them. Ambiguities this rule cannot
settle are refused when the table is compiled, never at request time.

Everything is compiled once into one trie per (version, method); a lookup walks the path's
segments, trying literal, then in-segment, then plain parameter children, backtracking when a
branch dead-ends. Cost grows with the path's length, not with the size of the catalogue.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from proxy.core.errors import AmbiguousRequest

T = TypeVar("T")

_PARAM = re.compile(r"^(?P<prefix>[^{}]*)\{[^{}]+\}(?P<suffix>[^{}]*)$")


class AmbiguousTemplates(ValueError):
    """Two templates that can match the same path, and precedence cannot choose."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One template segment: a literal, or a parameter with optional literal affixes."""

    literal: str | None
    prefix: str = ""
    suffix: str = ""

    @classmethod
    def parse(cls, text: str) -> Segment:
        if "{" not in text and "}" not in text:
            return cls(text)
        found = _PARAM.match(text)
        if found is None:
            raise ValueError(f"segment {text!r}: at most one '{{parameter}}' per segment")
        return cls(None, found["prefix"], found["suffix"])

    @property
    def is_plain_parameter(self) -> bool:
        return self.literal is None and not self.prefix and not self.suffix

    def accepts(self, value: str) -> bool:
        if self.literal is not None:
            return value == self.literal
        return (
            len(value) > len(self.prefix) + len(self.suffix)
            and value.startswith(self.prefix)
            and value.endswith(self.suffix)
        )

    def overlaps(self, other: Segment) -> bool:
        """Whether some segment value is accepted by both."""
        if self.literal is not None:
            return other.accepts(self.literal)
        if other.literal is not None:
            return self.accepts(other.literal)
        prefixes = (self.prefix, other.prefix)
        suffixes = (self.suffix, other.suffix)
        return max(prefixes, key=len).startswith(min(prefixes, key=len)) and max(
            suffixes, key=len
        ).endswith(min(suffixes, key=len))


def split_template(template: str) -> tuple[Segment, ...]:
    if not template.startswith("/") or "//" in template or template.endswith("/"):
        raise ValueError(f"template {template!r}: must be '/' followed by non-empty segments")
    return tuple(Segment.parse(part) for part in template[1:].split("/"))


@dataclass
class _Node(Generic[T]):
    literals: dict[str, _Node[T]] = field(default_factory=dict)
    folded: dict[str, str] = field(default_factory=dict)  # lower-case literal -> literal
    affixed: list[tuple[Segment, _Node[T]]] = field(default_factory=list)
    parameter: _Node[T] | None = None
    value: T | None = None

    def child(self, segment: Segment) -> _Node[T]:
        if segment.literal is not None:
            node = self.literals.get(segment.literal)
            if node is None:
                node = self.literals[segment.literal] = _Node()
                self.folded[segment.literal.lower()] = segment.literal
            return node
        if segment.is_plain_parameter:
            if self.parameter is None:
                self.parameter = _Node()
            return self.parameter
        for existing, node in self.affixed:
            if existing == segment:
                return node
        node = _Node()
        self.affixed.append((segment, node))
        return node

    def find(self, segments: tuple[str, ...], index: int) -> T | None:
        if index == len(segments):
            return self.value
        value = segments[index]
        literal = self.literals.get(value)
        if literal is not None:
            found = literal.find(segments, index + 1)
            if found is not None:
                return found
        elif value.lower() in self.folded:
            # A router that ignores case would take the literal; this trie would not.
            raise AmbiguousRequest(
                f"a path segment differs from {self.folded[value.lower()]!r} only in letter case"
            )
        for segment, node in self.affixed:
            if segment.accepts(value):
                found = node.find(segments, index + 1)
                if found is not None:
                    return found
        if self.parameter is not None:
            return self.parameter.find(segments, index + 1)
        return None


class Router(Generic[T]):
    """Templates compiled for lookup; one router holds one (version, method) table."""

    def __init__(self, routes: Iterable[tuple[str, T]]) -> None:
        self._root: _Node[T] = _Node()
        by_length: dict[int, list[tuple[str, tuple[Segment, ...]]]] = {}
        for template, value in routes:
            segments = split_template(template)
            same_length = by_length.setdefault(len(segments), [])
            for other, other_segments in same_length:
                if _unsettled(segments, other_segments):
                    raise AmbiguousTemplates(
                        f"{other!r} and {template!r} can match the same path and no literal "
                        "segment decides between them"
                    )
            same_length.append((template, segments))
            node = self._root
            for segment in segments:
                node = node.child(segment)
            node.value = value

    def match(self, segments: tuple[str, ...]) -> T | None:
        """The value of the best template matching these path segments, or None."""
        return self._root.find(segments, 0)


def _unsettled(a: tuple[Segment, ...], b: tuple[Segment, ...]) -> bool:
    """True when a path can match both templates and no literal decides between them."""
    if not all(x.overlaps(y) for x, y in zip(a, b, strict=True)):
        return False
    for x, y in zip(a, b, strict=True):
        if x != y:
            return x.literal is None and y.literal is None
    return True  # the same shape twice
