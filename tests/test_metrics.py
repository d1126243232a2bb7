"""Metrics counted in plain Python and added to Prometheus' values in batches read exactly as
if each request had been observed by Prometheus itself."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.http.metrics import DURATION_BUCKETS, Metrics


def exposition(registry: CollectorRegistry) -> list[str]:
    return sorted(
        line for line in generate_latest(registry).decode().splitlines()
        if line.startswith(("scope_proxy_requests_total", "scope_proxy_request_duration_seconds"))
    )  # fmt: skip


def test_batched_counts_and_durations_equal_prometheus_own_observations() -> None:
    metrics = Metrics()
    reference = CollectorRegistry()
    requests = Counter(
        "scope_proxy_requests", "", ["decision", "reason", "version"], registry=reference
    )
    duration = Histogram(
        "scope_proxy_request_duration_seconds", "", registry=reference, buckets=DURATION_BUCKETS
    )
    chosen = random.Random(7)
    edges = [*DURATION_BUCKETS, 0.0, 45.0]  # the bounds themselves, and both ends
    for n in range(3000):
        seconds = edges[n] if n < len(edges) else chosen.expovariate(20)
        key = chosen.choice([("allow", "in_scope", "v1"), ("deny", "out_of_scope", None)])
        metrics.observe(*key, seconds)
        requests.labels(key[0], key[1], key[2] or "none").inc()
        duration.observe(seconds)
        if n % 997 == 0:
            metrics.flush()  # batches of any size add up the same
    metrics.render()  # a scrape flushes what is pending
    mine = [line for line in exposition(metrics.registry) if "_created" not in line]
    theirs = [line for line in exposition(reference) if "_created" not in line]
    mine_sum, theirs_sum = (next(x for x in lines if "_sum " in x) for lines in (mine, theirs))
    assert float(mine_sum.split()[1]) == pytest.approx(float(theirs_sum.split()[1]))
    assert [x for x in mine if "_sum " not in x] == [x for x in theirs if "_sum " not in x]
    assert any('le="0.001"' in line for line in mine)
