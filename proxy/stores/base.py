"""The protocols the stores implement: learned tokens, and the report's call counters.

Keys of the token store are token SHA-256 digests, never tokens. Each backend implements both
protocols over one connection, so replicas sharing a store share the report too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

Clock = Callable[[], float]  # UNIX time now; tests pass one they can move


@dataclass(frozen=True, slots=True)
class Learned:
    """What the proxy knows of a token: the scopes it was granted, until when (UNIX time)."""

    scopes: frozenset[str]
    expires_at: float


class TokenStore(Protocol):
    async def get(self, digest: str) -> Learned | None:
        """The token's scopes, or None if unknown or expired. Raises StoreError if unusable."""

    async def put(self, digest: str, scopes: frozenset[str], expires_at: float) -> None:
        """Remember a token's scopes until ``expires_at``."""

    async def forget(self, digest: str) -> None:
        """Drop a token (it was revoked)."""

    async def ping(self) -> None:
        """Return if the store is usable now; else raise ``StoreError`` saying why."""

    async def close(self) -> None:
        """Release connections and threads."""


class CallCounts(Protocol):
    """The overreach report's counters: one per kind of decided call (``Call.key()``)."""

    async def add_calls(self, counts: Mapping[str, int]) -> None:
        """Add to the counters."""

    async def call_counts(self) -> dict[str, int]:
        """Every counter, as shared by all processes using this store."""

    async def reset_calls(self) -> None:
        """Start a new report: drop every counter."""

    async def compact_calls(self, keep: int) -> None:
        """Count all but the ``keep`` busiest tokens under one, ``other`` (keys are
        ``<fingerprint>\t<rest>``): what a storm of new tokens leaves is bounded."""


class Store(TokenStore, CallCounts, Protocol):
    """A backend: both protocols over one connection."""


OTHER_TOKENS = "other"


def folded_counts(counts: Mapping[str, int], keep: int) -> dict[str, int] | None:
    """The counters with all but the ``keep`` busiest tokens moved under ``other``, or None
    when there is nothing to fold."""
    totals: dict[str, int] = {}
    for key, count in counts.items():
        fp = key.partition("\t")[0]
        totals[fp] = totals.get(fp, 0) + count
    totals.pop(OTHER_TOKENS, None)
    if len(totals) <= keep:
        return None
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    busiest = {fp for fp, _ in ranked[:keep]}
    folded: dict[str, int] = {}
    for key, count in counts.items():
        fp, _, rest = key.partition("\t")
        target = key if fp in busiest else f"{OTHER_TOKENS}\t{rest}"
        folded[target] = folded.get(target, 0) + count
    return folded
