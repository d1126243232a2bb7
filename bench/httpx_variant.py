"""The proxy's own pipeline with httpx (or httpx2) as its upstream client instead of aiohttp's:
what the design decision for aiohttp's client is measured against, in ``bench/performance.py``.

    python bench/httpx_variant.py httpx CONFIG      # or httpx2

Everything but the upstream client is the proxy's: the same app, server, decision, log event.
Not for use: httpx removes dot segments from the paths it sends (see bench/upstream_clients.py).
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from proxy.config import load
from proxy.core.drift import PEEK_BYTES
from proxy.core.errors import DECISION_HEADER, UpstreamTimeout, UpstreamUnavailable
from proxy.http.app import create_app
from proxy.http.forward import PEEKED, Fetched, end_to_end
from proxy.http.logs import configure_logging
from proxy.http.server import ProxyRunner
from proxy.http.state import UPSTREAM


class HttpxUpstream:
    """``UpstreamClient``'s interface over an httpx ``AsyncClient``."""

    def __init__(self, module: Any, read_timeout: float) -> None:
        self.module = module
        self.read_timeout = read_timeout
        self.client: Any = None

    async def start(self) -> None:
        limits = self.module.Limits(max_connections=1024, max_keepalive_connections=1024)
        self.client = self.module.AsyncClient(
            limits=limits, timeout=self.read_timeout, follow_redirects=False
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def forward(
        self,
        request: web.Request,
        url: str,
        request_id: str | None = None,
        verdict: str = "allow",
        peek: bool = False,
        held: bytes | None = None,
    ) -> web.StreamResponse:
        body: Any = held if held is not None else None
        if held is None and request.body_exists:
            body = request.content.iter_any()
        headers = end_to_end(request.headers)
        if request_id is not None:
            headers["X-Request-Id"] = request_id
        outgoing = self.client.build_request(
            request.method, url, headers=list(headers.items()), content=body
        )
        try:
            answer = await self.client.send(outgoing, stream=True)
        except self.module.TimeoutException as error:
            raise UpstreamTimeout("no answer in time", kind="timeout") from error
        except self.module.HTTPError as error:
            raise UpstreamUnavailable("upstream failed", kind="disconnect") from error
        try:
            headers = CIMultiDict(answer.headers.multi_items())
            for name in ("connection", "keep-alive", "transfer-encoding"):
                headers.popall(name, None)
            headers[DECISION_HEADER] = verdict
            response = web.StreamResponse(status=answer.status_code, headers=headers)
            await response.prepare(request)
            peek = peek and answer.status_code == 403
            if peek:
                request[PEEKED] = b""
            async for chunk in answer.aiter_raw():
                if peek and len(request[PEEKED]) < PEEK_BYTES:
                    request[PEEKED] = (request[PEEKED] + chunk)[:PEEK_BYTES]
                await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            await answer.aclose()

    async def fetch(
        self, method: str, url: str, headers: CIMultiDict[str], body: bytes, limit: int
    ) -> Fetched:
        answer = await self.client.request(method, url, headers=list(headers.items()), content=body)
        return Fetched(
            answer.status_code, None, CIMultiDict(answer.headers.multi_items()), answer.content
        )


async def serve(module_name: str, config_path: str) -> None:
    config, catalogue = load(config_path)
    configure_logging(config.logging.format, config.logging.level)
    app = create_app(config, catalogue)
    module = importlib.import_module(module_name)
    client: Any = HttpxUpstream(module, config.upstream.read_timeout)
    app[UPSTREAM] = client  # the same interface as UpstreamClient's
    runner = ProxyRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.listen.host, config.listen.port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
