"""Token stores: where learned tokens' scopes live, keyed by the token's SHA-256 digest.

Interchangeable backends behind one small protocol. Raw tokens never reach a store.
"""

from __future__ import annotations

from typing import Protocol

from proxy.stores.memory import MemoryStore


class StoreError(Exception):
    """The store cannot be reached or answered nonsense: callers fail closed."""


class TokenStore(Protocol):
    async def get(self, digest: str) -> frozenset[str] | None:
        """The scopes learned for this token digest, or None if unknown or expired."""

    async def put(self, digest: str, scopes: frozenset[str], expires_at: float) -> None:
        """Remember a token's scopes until ``expires_at`` (a UNIX timestamp)."""

    async def forget(self, digest: str) -> None:
        """Drop a token (revoked)."""

    async def ping(self) -> bool:
        """Whether the store is usable now."""

    async def close(self) -> None: ...


def open_store(url: str) -> TokenStore:
    """The store a config's ``store`` value names."""
    if url == "memory":
        return MemoryStore()
    raise StoreError(f"store {url.split('://', 1)[0]!r} is not available in this version")


__all__ = ["MemoryStore", "StoreError", "TokenStore", "open_store"]
