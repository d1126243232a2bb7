"""What the app holds for its requests: typed keys, and the runtime a reload swaps as one value."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from proxy.catalog import Catalogue
from proxy.config import Config
from proxy.decision import Grant
from proxy.forward import Upstream
from proxy.logs import RequestRecord
from proxy.metrics import Metrics
from proxy.recorder import Recorder
from proxy.stores import TokenStore


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


RUNTIME = web.AppKey("runtime", RuntimeHolder)
METRICS = web.AppKey("metrics", Metrics)
UPSTREAM = web.AppKey("upstream", Upstream)
STORE = web.AppKey("store", TokenStore)
RECORDER = web.AppKey("recorder", Recorder)
RECORD = web.RequestKey("record", RequestRecord)
