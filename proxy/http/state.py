"""What the app holds for its requests: typed keys, and the runtime a reload swaps as one value."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from proxy.config import Config
from proxy.core.catalog import Catalogue
from proxy.core.decision import Decision, Grant
from proxy.http.forward import UpstreamClient
from proxy.http.metrics import Metrics
from proxy.http.recorder import Recorder
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


class Notes:
    """What handling one request established: read by ``proxy.observe`` for the request's log
    event, metrics, report entry and decision header. ``observe`` gives every request one."""

    __slots__ = ("called", "check", "decision", "made_request_id")

    def __init__(self) -> None:
        self.decision: Decision | None = None  # set once, by the handler that decides it
        self.check = False  # Envoy's check of a call (``/_proxy/authz/...``): never forwarded
        # The endpoint (template or shape) and version of a call refused before its decision
        # (no token, an unknown one): for its log line.
        self.called: tuple[str, str] | None = None
        # The request id the proxy made up for a request without X-Request-Id: sent upstream.
        self.made_request_id: str | None = None


NOTES = web.RequestKey("notes", Notes)
