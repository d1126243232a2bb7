"""The default store: a dict inside one process, lost on restart."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Mapping

from proxy.core.drift import merge_seen
from proxy.stores.base import Clock, Fold, Learned


class MemoryStore:
    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._tokens: dict[str, Learned] = {}
        self._calls: Counter[str] = Counter()
        self._seen: dict[str, tuple[str, str]] = {}
        self._generation = 0  # reset_calls counts up: a compaction under way is then void
        self._budget: dict[str, tuple[int, float]] = {}  # key -> (count, expires_at)

    async def get(self, digest: str) -> Learned | None:
        learned = self._tokens.get(digest)
        if learned is not None and learned.expires_at <= self.clock():
            del self._tokens[digest]
            return None
        return learned

    async def put(
        self, digest: str, scopes: frozenset[str], expires_at: float, company: str | None = None
    ) -> None:
        now = self.clock()
        if len(self._tokens) > 10_000:  # drop what has expired before growing further
            self._tokens = {d: t for d, t in self._tokens.items() if t.expires_at > now}
        self._tokens[digest] = Learned(scopes, expires_at, company)

    async def forget(self, digest: str) -> None:
        self._tokens.pop(digest, None)

    async def add_calls(self, counts: Mapping[str, int]) -> None:
        self._calls.update(counts)

    async def call_counts(self) -> dict[str, int]:
        return dict(self._calls)

    async def reset_calls(self) -> None:
        self._calls.clear()
        self._seen.clear()
        self._generation += 1

    async def compact_calls(self, fold: Fold) -> None:
        # The fold reads every counter: done in a thread, on a copy, so that requests go on.
        taken, generation = dict(self._calls), self._generation
        folded = await asyncio.to_thread(fold, taken)
        if folded is not None and generation == self._generation:  # not reset meanwhile
            for key, count in self._calls.items():  # what was added meanwhile
                added = count - taken.get(key, 0)
                if added:
                    folded[key] = folded.get(key, 0) + added
            self._calls = Counter(folded)

    async def add_seen(self, seen: Mapping[str, tuple[str, str]]) -> None:
        merge_seen(self._seen, seen)

    async def seen_times(self) -> dict[str, tuple[str, str]]:
        return dict(self._seen)

    async def forget_seen(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._seen.pop(key, None)

    async def draw_budget(self, key: str, want: int, cap: int, ttl: float) -> tuple[int, int]:
        now = self.clock()
        count, expires_at = self._budget.get(key, (0, now + ttl))
        if expires_at <= now:
            count, expires_at = 0, now + ttl
        granted = max(0, min(want, cap - count))
        if len(self._budget) > 10_000:  # drop the days that are over before growing further
            self._budget = {k: v for k, v in self._budget.items() if v[1] > now}
        self._budget[key] = (count + granted, expires_at)
        return granted, count + granted

    async def give_back_budget(self, key: str, amount: int) -> None:
        count, expires_at = self._budget.get(key, (0, 0.0))
        if key in self._budget:
            self._budget[key] = (max(0, count - amount), expires_at)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._tokens.clear()
