"""A short per-process cache in front of a shared store, so the hot path rarely leaves the process.

Only known tokens are cached, each for at most ``ttl`` seconds and never past its own expiry: a
token learned by another replica is seen at once, and a revocation elsewhere within ``ttl``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from proxy.stores.base import Clock, Fold, Learned, Store


class CachedStore:
    def __init__(
        self, inner: Store, ttl: float = 5.0, size: int = 10_000, clock: Clock = time.time
    ) -> None:
        self.inner = inner
        self.clock = clock
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[str, tuple[Learned, float]] = OrderedDict()

    async def get(self, digest: str) -> Learned | None:
        now = self.clock()
        entry = self._entries.get(digest)
        if entry is not None:
            learned, valid_until = entry
            if valid_until > now:
                return learned
            del self._entries[digest]
        learned_now = await self.inner.get(digest)
        if learned_now is not None:
            self._remember(digest, learned_now)
        return learned_now

    async def put(
        self, digest: str, scopes: frozenset[str], expires_at: float, company: str | None = None
    ) -> None:
        await self.inner.put(digest, scopes, expires_at, company)
        self._remember(digest, Learned(scopes, expires_at, company))

    async def forget(self, digest: str) -> None:
        self._entries.pop(digest, None)
        await self.inner.forget(digest)

    async def add_calls(self, counts: Mapping[str, int]) -> None:
        await self.inner.add_calls(counts)

    async def call_counts(self) -> dict[str, int]:
        return await self.inner.call_counts()

    async def reset_calls(self) -> None:
        await self.inner.reset_calls()

    async def compact_calls(self, fold: Fold) -> None:
        await self.inner.compact_calls(fold)

    async def add_seen(self, seen: Mapping[str, tuple[str, str]]) -> None:
        await self.inner.add_seen(seen)

    async def seen_times(self) -> dict[str, tuple[str, str]]:
        return await self.inner.seen_times()

    async def forget_seen(self, keys: Iterable[str]) -> None:
        await self.inner.forget_seen(keys)

    async def draw_budget(self, key: str, want: int, cap: int, ttl: float) -> tuple[int, int]:
        return await self.inner.draw_budget(key, want, cap, ttl)

    async def give_back_budget(self, key: str, amount: int) -> None:
        await self.inner.give_back_budget(key, amount)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        self._entries.clear()
        await self.inner.close()

    def _remember(self, digest: str, learned: Learned) -> None:
        valid_until = min(self.clock() + self.ttl, learned.expires_at)
        self._entries[digest] = (learned, valid_until)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
