"""Counting decided calls for the overreach report, without a store round trip per request.

Each process counts in memory and adds its counts to the store about once a second (and before
every report it serves), so replicas sharing a Redis report together. What a storm of new
tokens or made-up paths can leave in the store is bounded as the calls are counted, at no cost
that grows with the store: each process names at most ``STORED_TOKENS_PER_SHOWN`` times as
many tokens as the report shows, and as many paths no catalogue entry matches as a report names
(``report.model.fold_shapes``), between two compactions; the rest are counted at once as
``other`` and ``(other unknown paths)``. A compaction keeps the busiest of those the store holds
(the report's own fold) and lets new ones be named again; it reads and rewrites the whole
store, so it runs at most every ``COMPACT_SECONDS``, with its work off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace

from proxy.core.drift import merge_seen
from proxy.http.logs import get_logger, timestamp
from proxy.report.model import (
    BEFORE,
    OTHER_TOKENS,
    UNKNOWN_PAIRS,
    UNKNOWN_SHAPES,
    Call,
    fold_shapes,
    fold_tokens,
    other_paths,
    other_paths_of,
    seen_key,
    unknown_shape,
)
from proxy.stores import CallCounts, StoreError

FLUSH_SECONDS = 1.0
COMPACT_SECONDS = 300.0
STORED_TOKENS_PER_SHOWN = 10


def compacted(counts: Mapping[str, int], keep_tokens: int) -> dict[str, int] | None:
    """A store's counters (``Call.key()`` -> count) with the unknown paths and the tokens past
    their bounds folded as the report folds them; None when nothing folds."""
    calls: Counter[Call] = Counter()
    for key, count in counts.items():
        calls[Call.from_key(key)] += count
    folded = fold_tokens(fold_shapes(calls), keep_tokens)
    if len(folded) == len(counts):
        return None
    return {call.key(): count for call, count in folded.items()}


class Recorder:
    def __init__(
        self, counts: CallCounts, shown_tokens: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.counts = counts
        self.stored_tokens = shown_tokens * STORED_TOKENS_PER_SHOWN
        self.clock = clock
        self._pending: Counter[Call] = Counter()
        self._seen: dict[str, tuple[str, str]] = {}  # drifts' first and last sightings, pending
        # Named since the store was last compacted: tokens, unknown paths, (token, path) pairs.
        self._tokens: set[str] = {BEFORE, OTHER_TOKENS}
        self._shapes: set[str] = set()
        self._pairs: set[tuple[str, str]] = set()
        self._compacted_at = clock()
        self._task: asyncio.Task[None] | None = None
        self.since = timestamp()  # when counting began: start-up, or the last reset through here

    def record(self, call: Call, seen: str | None = None) -> None:
        """Count a call (``Call.of`` a decision, or ``refused_before``); cheap on the hot path.
        A token or an unknown path past what may be named is counted as the others at once.
        A drift is noted as ``seen`` at that time (its log line's)."""
        if call.token_fp not in self._tokens:
            if len(self._tokens) < self.stored_tokens + 2:
                self._tokens.add(call.token_fp)
            else:
                call = replace(call, token_fp=OTHER_TOKENS, grant=None, granted_scopes=())
        if unknown_shape(call):
            call = self._named(call)
        self._pending[call] += 1
        if call.drift is not None and seen is not None:
            merge_seen(self._seen, {seen_key(call.drift, call.endpoint): (seen, seen)})

    def _named(self, call: Call) -> Call:
        shape = str(call.endpoint)
        pair = (call.token_fp, shape)
        if pair in self._pairs:
            return call
        known = shape in self._shapes
        if len(self._pairs) >= UNKNOWN_PAIRS or (not known and len(self._shapes) >= UNKNOWN_SHAPES):
            return replace(call, endpoint=other_paths(call.method, call.version))
        self._pairs.add(pair)
        self._shapes.add(shape)
        return call

    @property
    def saturated(self) -> bool:
        """As many tokens or unknown paths named as may be until the next compaction."""
        return (
            len(self._tokens) >= self.stored_tokens + 2
            or len(self._pairs) >= UNKNOWN_PAIRS
            or len(self._shapes) >= UNKNOWN_SHAPES
        )

    async def flush(self) -> None:
        """Add the pending counts to the store; on failure they stay pending for the next try.
        Compact the store when what may be named is used up, at most every COMPACT_SECONDS."""
        if not self._pending:
            return
        batch, self._pending = self._pending, Counter()
        seen, self._seen = self._seen, {}
        try:
            await self.counts.add_calls({call.key(): count for call, count in batch.items()})
        except StoreError:
            self._pending.update(batch)
            merge_seen(self._seen, seen)
            raise
        try:
            if seen:
                await self.counts.add_seen(seen)
        except StoreError:
            merge_seen(self._seen, seen)  # the counts are in: only the times wait
            raise
        now = self.clock()
        if self.saturated and now - self._compacted_at >= COMPACT_SECONDS:
            self._compacted_at = now
            keep = self.stored_tokens
            await self.counts.compact_calls(lambda counts: compacted(counts, keep))
            self._forget_names()
            await self._forget_folded_sightings()

    async def _forget_folded_sightings(self) -> None:
        """The sightings of drifts at unknown paths a compaction folded away go to what they
        were folded into (``other_paths``), so that they do not pile up and stay dated."""
        sightings = await self.counts.seen_times()
        if not sightings:
            return
        counted = {seen_key(call.drift, call.endpoint) for call in (await self.calls(flush=False))
                   if call.drift is not None}  # fmt: skip
        stale = sightings.keys() - counted
        if not stale:
            return
        moved: dict[str, tuple[str, str]] = {}
        for key in stale:
            kind, _, shape = key.partition("\t")
            into = seen_key(kind, other_paths_of(shape))
            if into in counted:
                merge_seen(moved, {into: sightings[key]})
        if moved:
            await self.counts.add_seen(moved)
        await self.counts.forget_seen(stale)

    def _forget_names(self) -> None:
        self._tokens = {BEFORE, OTHER_TOKENS}
        self._shapes.clear()
        self._pairs.clear()

    async def calls(self, flush: bool = True) -> Counter[Call]:
        """Every call counted by every process sharing the store, this one's included."""
        if flush:
            await self.flush()
        found: Counter[Call] = Counter()
        for key, count in (await self.counts.call_counts()).items():
            found[Call.from_key(key)] += count
        return found

    async def seen(self) -> dict[str, tuple[str, str]]:
        """When each drift was first and last seen, by every process (``calls`` flushed)."""
        return await self.counts.seen_times()

    async def reset(self) -> str:
        """Start a new run; the time it starts from, which the caller logs."""
        self._pending.clear()
        self._seen.clear()
        self._forget_names()
        await self.counts.reset_calls()
        self.since = timestamp()
        return self.since

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.flush()
        except StoreError as error:
            get_logger().error("report_counts_lost", problem=str(error), kinds=len(self._pending))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except StoreError as error:
                get_logger().warning("report_flush_failed", problem=str(error))
