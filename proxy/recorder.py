"""Counting decided calls for the overreach report, without a store round trip per request.

Each process counts in memory and adds its counts to the store about once a second (and before
every report it serves), so replicas sharing a Redis report together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from proxy.logs import get_logger
from proxy.report import Call
from proxy.stores import CallCounts, StoreError

FLUSH_SECONDS = 1.0


class Recorder:
    def __init__(self, counts: CallCounts) -> None:
        self.counts = counts
        self._pending: Counter[Call] = Counter()
        self._task: asyncio.Task[None] | None = None

    def record(self, call: Call) -> None:
        """Count one call; cheap enough for the hot path."""
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

    async def calls(self) -> Counter[Call]:
        """Every call counted by every process sharing the store, this one's included."""
        await self.flush()
        return Counter(
            {Call.from_key(key): n for key, n in (await self.counts.call_counts()).items()}
        )

    async def reset(self) -> None:
        self._pending.clear()
        await self.counts.reset_calls()

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
