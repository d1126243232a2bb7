"""The default store: a dict inside one process, lost on restart."""

from __future__ import annotations

import time


class MemoryStore:
    def __init__(self) -> None:
        self._tokens: dict[str, tuple[frozenset[str], float]] = {}

    async def get(self, digest: str) -> frozenset[str] | None:
        found = self._tokens.get(digest)
        if found is None:
            return None
        scopes, expires_at = found
        if expires_at <= time.time():
            del self._tokens[digest]
            return None
        return scopes

    async def put(self, digest: str, scopes: frozenset[str], expires_at: float) -> None:
        self._tokens[digest] = (scopes, expires_at)

    async def forget(self, digest: str) -> None:
        self._tokens.pop(digest, None)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._tokens.clear()
