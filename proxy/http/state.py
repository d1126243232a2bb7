"""What the app holds for its requests: typed keys, the runtime a reload swaps as one value, and
what a handler returns."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import NamedTuple

from aiohttp import web

from proxy.config import Config
from proxy.core.catalog import Catalogue
from proxy.core.decision import Decision, Grant, Policy
from proxy.http.budget import Budget, Note
from proxy.http.forward import UpstreamClient
from proxy.http.logs import get_logger
from proxy.http.metrics import Metrics
from proxy.http.recorder import Recorder
from proxy.http.unknown_tokens import UnknownTokens
from proxy.stores import Clock, Store


@dataclass(frozen=True)
class Runtime:
    """Everything a request reads that a config reload may replace, swapped as one value."""

    config: Config
    catalogue: Catalogue
    grants: dict[str, Grant]
    # The policy while the warm-up lasts (``warmup``): unknown tokens taken to hold the app's
    # declared scopes; None without one.
    warm_policy: Policy | None = None

    @classmethod
    def build(cls, config: Config, catalogue: Catalogue) -> Runtime:
        policy = config.policy
        warm = None
        if config.warmup > 0 and policy.unknown_tokens == "deny" and policy.app_scopes is not None:
            warm = replace(policy, unknown_tokens="app_scopes")
        return cls(config, catalogue, config.static_grants(), warm)


class RuntimeHolder:
    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime


class Listeners:
    """The ports of the admin listener (``admin_listen``), once serving has started; none
    without one. A request that came in on one of them may see only ``/_proxy/*``, and the
    main port then answers 404 for those."""

    def __init__(self) -> None:
        self.admin_ports: frozenset[int] = frozenset()


RUNTIME = web.AppKey("runtime", RuntimeHolder)
LISTENERS = web.AppKey("listeners", Listeners)
METRICS = web.AppKey("metrics", Metrics)
UPSTREAM = web.AppKey("upstream", UpstreamClient)
STORE = web.AppKey("store", Store)
RECORDER = web.AppKey("recorder", Recorder)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")  # UNIX time now: tests give one they can move
STARTED_AT = web.AppKey("started_at", float)  # when the app was made (the warm-up counts from it)
UNKNOWN_TOKENS = web.AppKey("unknown_tokens", UnknownTokens)
BUDGET = web.AppKey("budget", Budget)  # the budget governor (its policy's mode may be off)


class Handled(NamedTuple):
    """What a handler made of a request it does not refuse: the decision, and what answers it
    (forwarding it, say), which ``proxy.http.observe`` awaits knowing the decision, whatever
    then becomes of the answer. A refusal is raised instead, carrying its decision, if any."""

    decision: Decision
    answer: Awaitable[web.StreamResponse]
    note: Note | None = None  # what the budget governor charged the call


async def answered(response: web.StreamResponse) -> web.StreamResponse:
    """An answer made already (Envoy's 200, a redirect), as ``Handled`` takes one."""
    return response


# The request id the proxy made up for a request without X-Request-Id (``proxy.http.observe``),
# sent upstream with the call; None when the client sent one.
MADE_REQUEST_ID = web.RequestKey("made_request_id", str)


def store_failed(app: web.Application, operation: str, problem: str) -> None:
    """Count a token store failure; the first after it answered is an event, and the gauge 0."""
    metrics = app[METRICS]
    metrics.store_errors.labels(operation).inc()
    if metrics.store_is_up:
        metrics.store_is_up = False
        metrics.store_up.set(0)
        store = app[RUNTIME].current.config.store.redacted
        get_logger().warning("store_unreachable", store=store, operation=operation, problem=problem)


def store_answered(app: web.Application) -> None:
    """The store answered: after a failure, an event, and the gauge 1 again."""
    metrics = app[METRICS]
    if not metrics.store_is_up:
        metrics.store_is_up = True
        metrics.store_up.set(1)
        get_logger().info("store_back", store=app[RUNTIME].current.config.store.redacted)
