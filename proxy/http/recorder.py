"""Counting decided calls for the overreach report, without a store round trip per request.

Each process counts in memory and adds its counts to the store about once a second (and before
every report it serves), so replicas sharing a Redis report together. What a storm of new
tokens or made-up paths can leave in the store is bounded: the store keeps the calls of at most
``STORED_TOKENS_PER_SHOWN`` times as many tokens as the report shows (the busiest; the rest are
counted as ``other``), and of the paths no catalogue entry matches, as many as a report names
(``report.fold_shapes``). Each bound is restored by compacting the store once that many new
tokens, or new (token, path) pairs, have been added to it since the last compaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Mapping

from proxy.http.logs import get_logger, timestamp
from proxy.report.model import UNKNOWN_PAIRS, Call, fold_shapes, fold_tokens, unknown_shape
from proxy.stores import CallCounts, StoreError

FLUSH_SECONDS = 1.0
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
    def __init__(self, counts: CallCounts, shown_tokens: int) -> None:
        self.counts = counts
        self.stored_tokens = shown_tokens * STORED_TOKENS_PER_SHOWN
        self._pending: Counter[Call] = Counter()
        # Flushed since the store was last compacted: tokens, and (token, unknown path) pairs.
        self._new_tokens: set[str] = set()
        self._new_shapes: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self.since = timestamp()  # when counting began: start-up, or the last reset through here

    def record(self, call: Call) -> None:
        """Count a call (``Call.of`` a decision, or ``refused_before``); cheap on the hot path."""
        self._pending[call] += 1

    async def flush(self) -> None:
        """Add the pending counts to the store; on failure they stay pending for the next try."""
        if not self._pending:
            return
        batch, self._pending = self._pending, Counter()
        try:
            await self.counts.add_calls({call.key(): count for call, count in batch.items()})
        except StoreError:
            self._pending.update(batch)
            raise
        self._new_tokens.update(call.token_fp for call in batch)
        self._new_shapes.update(
            (call.token_fp, str(call.endpoint)) for call in batch if unknown_shape(call)
        )
        shapes = len(self._new_shapes)
        if len(self._new_tokens) > self.stored_tokens or shapes > UNKNOWN_PAIRS:
            self._new_tokens.clear()
            self._new_shapes.clear()
            keep = self.stored_tokens
            await self.counts.compact_calls(lambda counts: compacted(counts, keep))

    async def calls(self) -> Counter[Call]:
        """Every call counted by every process sharing the store, this one's included."""
        await self.flush()
        found: Counter[Call] = Counter()
        for key, count in (await self.counts.call_counts()).items():
            found[Call.from_key(key)] += count
        return found

    async def reset(self) -> str:
        """Start a new run; the time it starts from, which the caller logs."""
        self._pending.clear()
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
