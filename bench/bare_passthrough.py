"""The baseline the proxy is measured against: an aiohttp streaming pass-through that decides
nothing (one ClientSession, a body streamed up when the call has one, the answer streamed back),
on the event loop the proxy uses (uvloop's where it is installed, as ``serve`` does;
``BARE_LOOP=asyncio`` for asyncio's).

A call without a body goes up without one: handed the request's (empty) body stream, aiohttp's
client would send every GET with ``Transfer-Encoding: chunked``, an empty chunked body and a
``Content-Type``, a request other than the one received, from a task of its own, which costs it
about a fifth of its throughput here.

With ``BARE_PROCESSES=N``, N such processes share the port (``SO_REUSEPORT``), as
``serve --workers N`` does: the most a second process gives a pass-through on this machine.

    python bench/bare_passthrough.py PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

SESSION = web.AppKey("session", aiohttp.ClientSession)
_PR_SET_PDEATHSIG = 1  # prctl(2)


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


def main() -> None:
    processes = int(os.environ.get("BARE_PROCESSES", "1"))
    others: list[int] = []
    for _ in range(processes - 1):  # before any event loop exists
        pid = os.fork()
        if pid == 0:
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # and if it is killed
            others = []
            break
        others.append(pid)
    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_get("/ready", ready)
    app.router.add_route("*", "/{tail:.*}", forward)
    try:
        web.run_app(
            app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            loop=event_loop(), reuse_port=processes > 1,
        )  # fmt: skip
    finally:
        for pid in others:  # stopped (SIGTERM, SIGINT): the others stop too
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
