"""The shared store: Redis, for several replicas. A key's TTL is the token's remaining lifetime."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, WatchError

from proxy.config import StoreUrl
from proxy.stores.base import Clock, Fold, Learned
from proxy.stores.errors import StoreError

REPORT_KEY = "pipedrive-scope-proxy:report"  # hash: Call.key() -> count, shared by replicas
# A compaction rewrites the report's hash in a transaction that fails if another replica
# changed it meanwhile (WATCH); it is tried again, at most this many times, else left for later.
COMPACT_TRIES = 5
SEEN_KEY = "pipedrive-scope-proxy:report:seen"  # hash: seen key -> "<first> <last>"
# Of each key, the earliest first and the latest last, in one step whichever replica adds.
_MERGE_SEEN = """
for i = 1, #ARGV, 3 do
  local first, last = ARGV[i + 1], ARGV[i + 2]
  local known = redis.call('HGET', KEYS[1], ARGV[i])
  if known then
    local was_first, was_last = string.match(known, '^(%S+) (%S+)$')
    if was_first and was_first < first then first = was_first end
    if was_last and was_last > last then last = was_last end
  end
  redis.call('HSET', KEYS[1], ARGV[i], first .. ' ' .. last)
end
"""
BUDGET_PREFIX = "pipedrive-scope-proxy:budget:"  # + app, company, day: tokens drawn
# A draw: up to ARGV[1] added to the count, never past ARGV[2], in one step whichever replica
# draws; the count expires ARGV[3] milliseconds after it was made.
_DRAW = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local granted = math.max(0, math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - count))
if granted > 0 then count = redis.call('INCRBY', KEYS[1], granted) end
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('SET', KEYS[1], count, 'PX', ARGV[3])
end
return {granted, count}
"""
_GIVE_BACK = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count > 0 then redis.call('SET', KEYS[1], math.max(0, count - tonumber(ARGV[1])), 'KEEPTTL') end
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
        self._merge_seen = self._client.register_script(_MERGE_SEEN)
        self._draw = self._client.register_script(_DRAW)
        self._give_back = self._client.register_script(_GIVE_BACK)

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
        learned = read_token_value(str(value))
        if learned.expires_at <= self.clock():
            return None  # Redis drops the key by its TTL; the proxy never serves past expiry
        return learned

    async def put(
        self, digest: str, scopes: frozenset[str], expires_at: float, company: str | None = None
    ) -> None:
        milliseconds = int((expires_at - self.clock()) * 1000)
        if milliseconds <= 0:
            return
        async with self._failing():
            value = token_value(scopes, expires_at, company)
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
            await self._client.delete(REPORT_KEY, SEEN_KEY)

    async def compact_calls(self, fold: Fold) -> None:
        async with self._failing(), self._client.pipeline(transaction=True) as pipe:
            for _ in range(COMPACT_TRIES):
                try:
                    await pipe.watch(REPORT_KEY)
                    current = await pipe.hgetall(REPORT_KEY)
                    counts = {str(key): int(value) for key, value in current.items()}
                    folded = await asyncio.to_thread(fold, counts)  # off the event loop
                    if folded is None:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.delete(REPORT_KEY)
                    if folded:
                        values: dict[Any, Any] = folded
                        pipe.hset(REPORT_KEY, mapping=values)
                    await pipe.execute()
                    return
                except WatchError:  # another replica added its counts: read them too
                    continue

    async def add_seen(self, seen: Mapping[str, tuple[str, str]]) -> None:
        values = [part for key, (first, last) in seen.items() for part in (key, first, last)]
        async with self._failing():
            await self._merge_seen(keys=[SEEN_KEY], args=values)

    async def seen_times(self) -> dict[str, tuple[str, str]]:
        async with self._failing():
            found = await self._client.hgetall(SEEN_KEY)
        times: dict[str, tuple[str, str]] = {}
        for key, value in found.items():
            first, _, last = str(value).partition(" ")
            times[str(key)] = (first, last)
        return times

    async def forget_seen(self, keys: Iterable[str]) -> None:
        dropped = list(keys)
        if dropped:
            async with self._failing():
                await self._client.hdel(SEEN_KEY, *dropped)

    async def draw_budget(self, key: str, want: int, cap: int, ttl: float) -> tuple[int, int]:
        async with self._failing():
            granted, count = await self._draw(
                keys=[BUDGET_PREFIX + key], args=[want, cap, max(1, int(ttl * 1000))]
            )
        return int(granted), int(count)

    async def give_back_budget(self, key: str, amount: int) -> None:
        async with self._failing():
            await self._give_back(keys=[BUDGET_PREFIX + key], args=[amount])

    async def ping(self) -> None:
        async with self._failing():
            await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()


# A learned token's value: "<expires_at> <scopes>" (the first format), or, since the company is
# kept, "2 <expires_at> <scopes> <company or ->". A value of the first format, written by an
# earlier version that another replica may still run, reads as a token of no known company.
VALUE_FORMAT = "2"


def token_value(scopes: frozenset[str], expires_at: float, company: str | None) -> str:
    return f"{VALUE_FORMAT} {expires_at:.3f} {','.join(sorted(scopes))} {company or '-'}"


def read_token_value(value: str) -> Learned:
    fields = value.split(" ")
    if fields[0] == VALUE_FORMAT and len(fields) == 4:
        _, expires_at, scopes, company = fields
        known = company if company != "-" else None
        return Learned(frozenset(filter(None, scopes.split(","))), float(expires_at), known)
    expires_at, _, scopes = value.partition(" ")  # the first format
    return Learned(frozenset(filter(None, scopes.split(","))), float(expires_at))
