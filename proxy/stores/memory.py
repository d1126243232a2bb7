"""The default store: a dict inside one process, lost on restart."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping

from proxy.stores.base import Clock, Fold, Learned


class MemoryStore:
    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._tokens: dict[str, Learned] = {}
        self._calls: Counter[str] = Counter()

    async def get(self, digest: str) -> Learned | None:
        learned = self._tokens.get(digest)
        if learned is not None and learned.expires_at <= self.clock():
            del self._tokens[digest]
            return None
        return learned

    async def put(self, digest: str, scopes: frozenset[str], expires_at: float) -> None:
        now = self.clock()
        if len(self._tokens) > 10_000:  # drop what has expired before growing further
            self._tokens = {d: t for d, t in self._tokens.items() if t.expires_at > now}
        self._tokens[digest] = Learned(scopes, expires_at)

    async def forget(self, digest: str) -> None:
        self._tokens.pop(digest, None)

    async def add_calls(self, counts: Mapping[str, int]) -> None:
        self._calls.update(counts)

    async def call_counts(self) -> dict[str, int]:
        return dict(self._calls)

    async def reset_calls(self) -> None:
        self._calls.clear()

    async def compact_calls(self, fold: Fold) -> None:
        folded = fold(self._calls)
        if folded is not None:
            self._calls = Counter(folded)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._tokens.clear()
