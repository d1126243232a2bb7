"""Prometheus metrics, one registry per app. Labels are bounded sets, never raw paths.

Under ``serve --workers N`` the supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a private
directory before starting the workers, so that a scrape of any worker reports all of them.

A request's count is tallied in plain Python first and added to Prometheus' values about once a
second and before every scrape (``labels`` looks its label set up on every call); its duration
goes to the histogram's own ``observe`` (adding a second's durations at once would save about
0.5 % of a call's instructions, measured, not worth a private name of prometheus_client:
``bench/private_names.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

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
        self.lifecycle_calls = Counter(
            "scope_proxy_lifecycle_calls",
            "Calls to endpoints that are not current, by lifecycle (deprecated, out_of_support, "
            "removed): an app that Pipedrive may break without notice.",
            ["lifecycle"],
            registry=self.registry,
        )
        # 1 for the proxy's version and the catalogue a live process runs (0 once replaced by
        # a reload): a replica still on an old catalogue shows beside the others.
        self.build_info = Gauge(
            "scope_proxy_build_info",
            "The proxy's version and the version of the catalogue it runs (value 1).",
            ["version", "catalogue"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self._running: tuple[str, str] | None = None
        self.drift = Counter(
            "scope_proxy_drift",
            "Pipedrive's answers that disagree with the catalogue, by kind (too_generous, "
            "too_strict, missing; grant_mismatch for a grant the proxy did not learn).",
            ["kind"],
            registry=self.registry,
        )
        self.log_errors = Counter(
            "scope_proxy_log_errors",
            "Log lines the sink could not write (a closed pipe, a full disk); serving goes on.",
            registry=self.registry,
        )
        self.unknown_tokens = Gauge(
            "scope_proxy_unknown_tokens",
            "Tokens seen in the last hour whose scopes the proxy has not learned (refused as "
            "unknown, or let through on the app's declared scopes): refreshed through the "
            "proxy, they are learned.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.unknown_tokens_count: Callable[[], int] | None = None
        self.upstream_duration = Histogram(
            "scope_proxy_upstream_duration_seconds",
            "Time from sending a forwarded call to the upstream's answer head, by API version.",
            ["version"],
            registry=self.registry,
            buckets=DURATION_BUCKETS,
        )
        self._upstream_children: dict[str, Histogram] = {}
        self.reloads = Counter(
            "scope_proxy_reloads",
            "Config reloads (SIGHUP) by result: applied, or failed (the old config kept).",
            ["result"],
            registry=self.registry,
        )
        self.last_reload = Gauge(
            "scope_proxy_last_reload_success_timestamp_seconds",
            "When the config was last loaded: at start, then each applied reload (UNIX time).",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.store_up = Gauge(
            "scope_proxy_store_up",
            "1 while the token store answers, 0 from a failure until it answers again.",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.store_up.set(1)
        self.store_is_up = True
        self.budget_spent = Gauge(
            "scope_proxy_budget_spent_tokens",
            "Tokens this app spent today of each company's daily budget (the count replicas "
            "share), by company: the API host of the tokens' OAuth exchange.",
            ["company"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.budget_remaining = Gauge(
            "scope_proxy_budget_remaining_tokens",
            "What is left of each company's daily budget: Pipedrive's latest "
            "x-daily-ratelimit-token-remaining less what the app spent since, by company.",
            ["company"],
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.budget_throttled = Counter(
            "scope_proxy_budget_throttled",
            "Calls the budget governor refused (in its report mode: would have refused), by "
            "kind: budget_exhausted (the day's share or budget) or burst_limit (a token's "
            "2-second window).",
            ["kind"],
            registry=self.registry,
        )
        # The budget's rows (company, spent, remaining or None), read at each flush.
        self.budget_rows: Callable[[], Iterable[tuple[str, int, int | None]]] | None = None
        self._budget_shown: set[str] = set()
        # Every label these take, at 0 from the start: an alert on increase() sees a first one.
        for result in ("applied", "failed"):
            self.reloads.labels(result)
        for kind in ("too_generous", "too_strict", "missing", "grant_mismatch"):
            self.drift.labels(kind)
        for state in ("deprecated", "out_of_support", "removed"):
            self.lifecycle_calls.labels(state)
        for kind in ("connect", "timeout", "disconnect", "malformed", "client_gone"):
            self.upstream_errors.labels(kind)
        for kind in ("budget_exhausted", "burst_limit"):
            self.budget_throttled.labels(kind)
        # The process_* metrics: this process's; with workers, each worker's (by its pid,
        # copied into the shared files at every flush), whichever worker a scrape reaches.
        self._process: ProcessCollector | None = None
        self._process_gauges: dict[str, Gauge] = {}
        if os.environ.get(MULTIPROCESS_DIR):
            self._process = ProcessCollector(registry=None)
        else:
            for collector in (ProcessCollector, PlatformCollector, GCCollector):
                collector(registry=self.registry)
        self._children: dict[tuple[str, str, str], Counter] = {}
        self._counted: Tally[tuple[str, str, str]] = Tally()
        self._task: asyncio.Task[None] | None = None

    def running(self, version: str, catalogue: str) -> None:
        """Say which version and catalogue this process runs (at start, and on every reload)."""
        if self._running == (version, catalogue):
            return
        if self._running is not None:
            self.build_info.labels(*self._running).set(0)
        self._running = (version, catalogue)
        self.build_info.labels(version, catalogue).set(1)

    def observe(self, verdict: str, reason: str, version: str | None, seconds: float) -> None:
        """Count one request (into Prometheus' values at the next flush) and its duration."""
        self._counted[(verdict, reason, version or "none")] += 1
        self.duration.observe(seconds)

    def upstream(self, version: str | None, seconds: float) -> None:
        """One forwarded call's upstream latency."""
        key = version or "none"
        child = self._upstream_children.get(key)
        if child is None:
            child = self._upstream_children[key] = self.upstream_duration.labels(key)
        child.observe(seconds)

    def flush(self) -> None:
        """Add what ``observe`` counted to Prometheus' values."""
        if self.unknown_tokens_count is not None:
            self.unknown_tokens.set(self.unknown_tokens_count())
        if self.budget_rows is not None:
            shown = set()
            for company, spent, remaining in self.budget_rows():
                shown.add(company)
                self.budget_spent.labels(company).set(spent)
                if remaining is not None:
                    self.budget_remaining.labels(company).set(remaining)
            for company in self._budget_shown - shown:  # a day over with no call since
                with contextlib.suppress(KeyError):
                    self.budget_spent.remove(company)
                with contextlib.suppress(KeyError):
                    self.budget_remaining.remove(company)
            self._budget_shown = shown
        if self._process is not None:
            for family in self._process.collect():
                for sample in family.samples:
                    gauge = self._process_gauges.get(sample.name)
                    if gauge is None:
                        gauge = self._process_gauges[sample.name] = Gauge(
                            sample.name, family.documentation, registry=self.registry,
                            multiprocess_mode="all",
                        )  # fmt: skip
                    gauge.set(sample.value)
        for key, count in self._counted.items():
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.requests.labels(*key)
            child.inc(count)
        self._counted.clear()

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
            PlatformCollector(registry=registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
