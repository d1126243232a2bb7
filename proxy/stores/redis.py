"""The shared store: Redis, for several replicas. A key's TTL is the token's remaining lifetime."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.config import StoreUrl
from proxy.stores.base import Clock, Learned
from proxy.stores.errors import StoreError

REPORT_KEY = "pipedrive-scope-proxy:report"  # hash: Call.key() -> count, shared by replicas
# Atomically count all but the ARGV[1] busiest tokens of the report under "other": fields are
# "<fingerprint>\t<rest>", so tokens fold without reading the rest.
_COMPACT = """
local all = redis.call('HGETALL', KEYS[1])
local totals, fps = {}, {}
for i = 1, #all, 2 do
  local fp = string.match(all[i], '^[^\t]*')
  if fp ~= 'other' then
    if totals[fp] == nil then table.insert(fps, fp); totals[fp] = 0 end
    totals[fp] = totals[fp] + tonumber(all[i + 1])
  end
end
local keep = tonumber(ARGV[1])
if #fps <= keep then return 0 end
table.sort(fps, function(a, b)
  if totals[a] ~= totals[b] then return totals[a] > totals[b] end
  return a < b
end)
local busiest = {}
for i = 1, keep do busiest[fps[i]] = true end
for i = 1, #all, 2 do
  local fp = string.match(all[i], '^[^\t]*')
  if fp ~= 'other' and not busiest[fp] then
    redis.call('HINCRBY', KEYS[1], 'other' .. string.sub(all[i], #fp + 1), all[i + 1])
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return #fps - keep
"""
PREFIX = "pipedrive-scope-proxy:token:"  # value: "<expires_at> <scope>,<scope>,..."


class RedisStore:
    def __init__(self, url: str, timeout: float = 1.0, clock: Clock = time.time) -> None:
        self.url = url
        self.shown = StoreUrl(url).redacted  # what messages say: never the password
        self.clock = clock
        # Fail fast when Redis is down (callers answer 503), and retry once so that a pooled
        # connection broken by a Redis restart is replaced without failing a request.
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )

    @asynccontextmanager
    async def _failing(self) -> AsyncIterator[None]:
        """Every Redis failure becomes a StoreError; the message never holds a password."""
        try:
            yield
        except (RedisError, OSError) as error:
            raise StoreError(f"{self.shown}: {error}") from None

    async def get(self, digest: str) -> Learned | None:
        async with self._failing():
            value = await self._client.get(PREFIX + digest)
        if value is None:
            return None
        expires_at, _, scopes = str(value).partition(" ")
        if float(expires_at) <= self.clock():
            return None  # Redis drops the key by its TTL; the proxy never serves past expiry
        return Learned(frozenset(filter(None, scopes.split(","))), float(expires_at))

    async def put(self, digest: str, scopes: frozenset[str], expires_at: float) -> None:
        milliseconds = int((expires_at - self.clock()) * 1000)
        if milliseconds <= 0:
            return
        async with self._failing():
            value = f"{expires_at:.3f} {','.join(sorted(scopes))}"
            await self._client.set(PREFIX + digest, value, px=milliseconds)

    async def forget(self, digest: str) -> None:
        async with self._failing():
            await self._client.delete(PREFIX + digest)

    async def add_calls(self, counts: Mapping[str, int]) -> None:
        async with self._failing(), self._client.pipeline(transaction=False) as pipe:
            for key, count in counts.items():
                pipe.hincrby(REPORT_KEY, key, count)
            await pipe.execute()

    async def call_counts(self) -> dict[str, int]:
        async with self._failing():
            found = await self._client.hgetall(REPORT_KEY)
        return {str(key): int(value) for key, value in found.items()}

    async def reset_calls(self) -> None:
        async with self._failing():
            await self._client.delete(REPORT_KEY)

    async def compact_calls(self, keep: int) -> None:
        async with self._failing():
            await self._client.eval(_COMPACT, 1, REPORT_KEY, keep)

    async def ping(self) -> None:
        async with self._failing():
            await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()
