"""The baseline the proxy is measured against: an aiohttp streaming pass-through that decides
nothing (one ClientSession, a body streamed up when the call has one, the answer streamed back),
on the event loop the proxy uses (uvloop's where it is installed, as ``serve`` does;
``BARE_LOOP=asyncio`` for asyncio's).

A call without a body goes up without one: handed the request's (empty) body stream, aiohttp's
client would send every GET with ``Transfer-Encoding: chunked``, an empty chunked body and a
``Content-Type``, a request other than the one received, from a task of its own, which costs it
about a fifth of its throughput here.

    python bench/bare_passthrough.py PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

SESSION = web.AppKey("session", aiohttp.ClientSession)


async def forward(request: web.Request) -> web.StreamResponse:
    url = URL(f"http://127.0.0.1:{sys.argv[2]}{request.raw_path}", encoded=True)
    async with request.app[SESSION].request(
        request.method,
        url,
        headers=request.headers,
        data=request.content if request.body_exists else None,
    ) as answer:
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        await response.prepare(request)
        async for chunk in answer.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def session(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(auto_decompress=False)
    yield
    await app[SESSION].close()


def event_loop() -> asyncio.AbstractEventLoop:
    if os.environ.get("BARE_LOOP") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


if __name__ == "__main__":
    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_get("/ready", ready)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
        loop=event_loop(),
    )  # fmt: skip
