"""Token stores: where learned tokens' scopes live, keyed by the token's SHA-256 digest.

``memory`` (one process), ``sqlite://`` (one machine, survives restarts) and ``redis://``
(shared by replicas) behind one small protocol. Raw tokens never reach a store.
"""

from __future__ import annotations

import time

from proxy.config import StoreUrl
from proxy.stores.base import CallCounts, Clock, Learned, Store, TokenStore
from proxy.stores.cached import CachedStore
from proxy.stores.errors import StoreError
from proxy.stores.memory import MemoryStore
from proxy.stores.redis import RedisStore
from proxy.stores.sqlite import SqliteStore


def open_store(store: StoreUrl, clock: Clock = time.time) -> Store:
    """The store a config's ``store`` names, with a per-process cache where it is remote."""
    if store.kind == "sqlite":
        return CachedStore(SqliteStore(store.sqlite_path, clock), clock=clock)
    if store.kind == "redis":
        return CachedStore(RedisStore(store.url, clock=clock), clock=clock)
    return MemoryStore(clock)


__all__ = [
    "CachedStore", "CallCounts", "Clock", "Learned", "MemoryStore", "RedisStore", "SqliteStore",
    "Store", "StoreError", "TokenStore", "open_store",
]  # fmt: skip
