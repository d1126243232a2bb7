"""What the app holds for its requests: typed keys, and the runtime a reload swaps as one value."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from proxy.catalog import Catalogue
from proxy.config import Config
from proxy.decision import Decision, Grant
from proxy.forward import UpstreamClient
from proxy.metrics import Metrics
from proxy.recorder import Recorder
from proxy.stores import Clock, Store


@dataclass(frozen=True)
class Runtime:
    """Everything a request reads that a config reload may replace, swapped as one value."""

    config: Config
    catalogue: Catalogue
    grants: dict[str, Grant]

    @classmethod
    def build(cls, config: Config, catalogue: Catalogue) -> Runtime:
        return cls(config, catalogue, config.static_grants())


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
# Set once per request, by the handler that decides it; read by ``proxy.observe``.
DECISION = web.RequestKey("decision", Decision)
# Set on Envoy's checks (``/_proxy/authz/...``): decided, never forwarded.
CHECK = web.RequestKey("check", bool)
# The endpoint (template or shape) and version of a call refused before its decision (no
# token, an unknown one): for its log line.
CALLED = web.RequestKey("called", tuple)
# The request id the proxy made up for a request that came without X-Request-Id: sent upstream.
MADE_REQUEST_ID = web.RequestKey("made_request_id", str)
