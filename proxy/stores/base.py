"""The protocols the stores implement: learned tokens, and the report's call counters.

Keys of the token store are token SHA-256 digests, never tokens. Each backend implements both
protocols over one connection, so replicas sharing a store share the report too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

Clock = Callable[[], float]  # UNIX time now; tests pass one they can move


@dataclass(frozen=True, slots=True)
class Learned:
    """What the proxy knows of a token: the scopes it was granted, until when (UNIX time), and
    the company it belongs to (its API host; None when not known, as for tokens learned by an
    earlier version)."""

    scopes: frozenset[str]
    expires_at: float
    company: str | None = None


class TokenStore(Protocol):
    async def get(self, digest: str) -> Learned | None:
        """The token's scopes, or None if unknown or expired. Raises StoreError if unusable."""

    async def put(
        self, digest: str, scopes: frozenset[str], expires_at: float, company: str | None = None
    ) -> None:
        """Remember a token's scopes (and company) until ``expires_at``."""

    async def forget(self, digest: str) -> None:
        """Drop a token (it was revoked)."""

    async def ping(self) -> None:
        """Return if the store is usable now; else raise ``StoreError`` saying why."""

    async def close(self) -> None:
        """Release connections and threads."""


# How a store's call counters are compacted: the counters in, the counters to keep instead out
# (or None: nothing to change). The store applies it atomically (see ``CallCounts``).
Fold = Callable[[Mapping[str, int]], dict[str, int] | None]


class CallCounts(Protocol):
    """The overreach report's counters: one per kind of decided call (``Call.key()``)."""

    async def add_calls(self, counts: Mapping[str, int]) -> None:
        """Add to the counters."""

    async def call_counts(self) -> dict[str, int]:
        """Every counter, as shared by all processes using this store."""

    async def reset_calls(self) -> None:
        """Start a new report: drop every counter, and every sighting."""

    async def compact_calls(self, fold: Fold) -> None:
        """Replace the counters with what ``fold`` makes of them, as one change: no process's
        additions are lost meanwhile. What a storm of new tokens or made-up paths leaves is
        bounded so (see ``proxy.http.recorder``)."""

    async def add_seen(self, seen: Mapping[str, tuple[str, str]]) -> None:
        """Note when things were first and last seen (ISO 8601 UTC times, which sort as
        text): of each key, the earliest first and the latest last are kept."""

    async def seen_times(self) -> dict[str, tuple[str, str]]:
        """Every key's first and last sighting, as shared by all processes."""

    async def forget_seen(self, keys: Iterable[str]) -> None:
        """Drop these keys' sightings (their counters were folded away by a compaction)."""


class BudgetCounts(Protocol):
    """The budget governor's shared counts: what each app spent of each company's day
    (``proxy.core.budget``), drawn in chunks so that no call waits for the store."""

    async def draw_budget(self, key: str, want: int, cap: int, ttl: float) -> tuple[int, int]:
        """Add up to ``want`` to the count ``key`` without taking it past ``cap``, as one
        step whichever replica draws; the count lives ``ttl`` seconds. Returns what was
        granted and the count after."""

    async def give_back_budget(self, key: str, amount: int) -> None:
        """Take ``amount`` drawn but not spent off the count (a process stopping)."""


class Store(TokenStore, CallCounts, BudgetCounts, Protocol):
    """A backend: the three protocols over one connection."""
