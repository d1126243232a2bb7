"""Prometheus metrics, one registry per app. Labels are bounded sets, never raw paths.

Under ``serve --workers N`` the supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a private
directory before starting the workers, so that a scrape of any worker reports all of them.

The two metrics every request updates (its count and its duration) are counted in plain Python
first and added to Prometheus' values about once a second and before every scrape: Prometheus'
own ``inc`` and ``observe`` take a lock and walk the buckets for each call, which would cost
more than the rest of the request's bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from bisect import bisect_left
from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.metrics import MetricWrapperBase

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
FLUSH_SECONDS = 1.0


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "scope_proxy_requests",
            "Requests by decision, reason and API version.",
            ["decision", "reason", "version"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "scope_proxy_request_duration_seconds",
            "Time from request to the last byte of the response.",
            registry=self.registry,
            buckets=DURATION_BUCKETS,
        )
        self.upstream_errors = Counter(
            "scope_proxy_upstream_errors",
            "Upstream failures by kind (connect, timeout, disconnect, client_gone).",
            ["kind"],
            registry=self.registry,
        )
        self.tokens_learned = Counter(
            "scope_proxy_tokens_learned",
            "Access tokens whose scopes were learned from an OAuth token response.",
            registry=self.registry,
        )
        self.store_errors = Counter(
            "scope_proxy_store_errors",
            "Token store failures by operation (get, put, forget, report).",
            ["operation"],
            registry=self.registry,
        )
        self.connections_dropped = Counter(
            "scope_proxy_connections_dropped",
            "Client connections closed by a limit (too_many_connections, header_timeout).",
            ["reason"],
            registry=self.registry,
        )
        self.log_errors = Counter(
            "scope_proxy_log_errors",
            "Log lines the sink could not write (a closed pipe, a full disk); serving goes on.",
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, str], MetricWrapperBase] = {}
        self._counted: Tally[tuple[str, str, str]] = Tally()
        self._bucket_counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last: over the largest
        self._seconds = 0.0
        self._task: asyncio.Task[None] | None = None

    def observe(self, verdict: str, reason: str, version: str | None, seconds: float) -> None:
        """Count one request and its duration (into Prometheus' values at the next flush)."""
        self._counted[(verdict, reason, version or "none")] += 1
        self._bucket_counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self._seconds += seconds

    def flush(self) -> None:
        """Add what ``observe`` counted to Prometheus' values."""
        for key, count in self._counted.items():
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.requests.labels(*key)
            child.inc(count)  # type: ignore[attr-defined]
        self._counted.clear()
        if self._seconds or any(self._bucket_counts):
            # A histogram holds a count per bucket (exposed cumulative) and a sum: added to
            # as ``Histogram.observe`` would, one bucket per observation, all at once.
            for bucket, count in zip(self.duration._buckets, self._bucket_counts, strict=True):
                if count:
                    bucket.inc(count)
            self.duration._sum.inc(self._seconds)
            self._bucket_counts = [0] * len(self._bucket_counts)
            self._seconds = 0.0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self.flush()

    def render(self) -> bytes:
        """This process's metrics; with ``serve --workers N``, those of all N processes summed."""
        self.flush()
        if os.environ.get(MULTIPROCESS_DIR):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
