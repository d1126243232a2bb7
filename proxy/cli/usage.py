"""What every command shares: the one-line usage error, and reading scope names."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.core.catalog import unknown_scope


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit 2."""


def parse_scopes(text: str, known: Iterable[str], option: str = "--scopes") -> frozenset[str]:
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(names - set(known))
    if unknown:
        raise UsageError(f"{option}: {unknown_scope(unknown[0], known)}")
    return names
