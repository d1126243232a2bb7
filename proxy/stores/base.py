"""The protocol every token store implements; keys are token SHA-256 digests, never tokens."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


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

    async def add_calls(self, counts: Mapping[str, int]) -> None:
        """Add to the report's call counters (keys are ``Call.key()`` strings)."""

    async def call_counts(self) -> dict[str, int]:
        """Every report counter, as shared by all processes using this store."""

    async def reset_calls(self) -> None:
        """Start a new report: drop every counter."""

    async def ping(self) -> bool:
        """Whether the store is usable now."""

    async def close(self) -> None:
        """Release connections and threads."""
