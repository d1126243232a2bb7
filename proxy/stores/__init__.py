"""Token stores: where learned tokens' scopes live, keyed by the token's SHA-256 digest.

``memory`` (one process), ``sqlite://`` (one machine, survives restarts) and ``redis://``
(shared by replicas) behind one small protocol. Raw tokens never reach a store.
"""

from __future__ import annotations

from proxy.stores.base import Learned, TokenStore
from proxy.stores.cached import CachedStore
from proxy.stores.errors import StoreError
from proxy.stores.memory import MemoryStore
from proxy.stores.redis import RedisStore
from proxy.stores.sqlite import SqliteStore


def sqlite_path(url: str) -> str:
    """``sqlite:///var/lib/tokens.db`` -> ``/var/lib/tokens.db``; ``sqlite://t.db`` -> ``t.db``."""
    return url.removeprefix("sqlite://")


def open_store(url: str) -> TokenStore:
    """The store a config's ``store`` value names, with a per-process cache where it is remote."""
    if url == "memory":
        return MemoryStore()
    if url.startswith("sqlite://"):
        return CachedStore(SqliteStore(sqlite_path(url)))
    if url.startswith(("redis://", "rediss://")):
        return CachedStore(RedisStore(url))
    raise StoreError(f"unknown store {url!r}")


__all__ = [
    "CachedStore", "Learned", "MemoryStore", "RedisStore", "SqliteStore", "StoreError",
    "TokenStore", "open_store",
]  # fmt: skip
