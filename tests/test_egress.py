"""Egress through a forward proxy, as companies whose outbound traffic must pass one run it.

A real tinyproxy (Debian's package) between the proxy and the upstream: ``HTTPS_PROXY`` (a
CONNECT tunnel to an https upstream), ``HTTP_PROXY`` (an http upstream), ``NO_PROXY`` honoured,
and ``upstream.proxy`` over the environment. The upstream still receives exactly the call
that was authorized; tinyproxy's log shows what went through it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.conftest import free_port, sha
from tests.fakes import FakePipedrive, TlsUpstream
from tests.processes import serving, wait_ready, write_config

pytestmark = pytest.mark.slow

TOKENS = [{"name": "writer", "sha256": sha("writer"), "scopes": ["deals:full"]}]
BODY = b'{"title":"Big deal","value":1000}'


@contextmanager
def tinyproxy(folder: Path) -> Iterator[tuple[int, Path]]:
    binary = shutil.which("tinyproxy")
    if binary is None:
        pytest.fail("tinyproxy is not installed (apt-get install -y tinyproxy)")
    port, log = free_port(), folder / "tinyproxy.log"
    config = folder / "tinyproxy.conf"
    config.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\nAllow 127.0.0.1\n"
        f'LogFile "{log}"\nLogLevel Connect\nDisableViaHeader Yes\n'
    )
    process = subprocess.Popen([binary, "-d", "-c", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(200):
            assert process.poll() is None, "tinyproxy exited while starting"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)
        yield port, log
    finally:
        process.terminate()
        process.wait(timeout=10)


async def post(port: int, target: str) -> int:
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            URL(f"http://127.0.0.1:{port}{target}", encoded=True), data=BODY,
            headers={"Authorization": "Bearer writer", "Content-Type": "application/octet-stream"},
        ) as answer,
    ):  # fmt: skip
        await answer.read()
        return answer.status


async def test_an_https_upstream_through_https_proxy_is_a_tunnel_and_no_proxy_is_honoured(
    tmp_path: Path, tls_upstream: tuple[TlsUpstream, Path]
) -> None:
    upstream, cert = tls_upstream
    config = write_config(tmp_path, upstream={"api_url": upstream.url}, tokens=TOKENS)
    with tinyproxy(tmp_path) as (proxy_port, log):
        env = {"SSL_CERT_FILE": str(cert), "HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}",
               "NO_PROXY": "", "no_proxy": ""}  # fmt: skip
        port = free_port()
        with serving(config, port, env=env, log=tmp_path / "a.log"):
            await wait_ready(port)
            assert await post(port, "/v1/deals?x=%2F1") == 200
        tunnelled = log.read_text()
        port = free_port()
        bypass = {**env, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        with serving(config, port, env=bypass, log=tmp_path / "b.log"):
            await wait_ready(port)
            assert await post(port, "/v1/deals?x=%2F2") == 200
        after = log.read_text()
    assert f"CONNECT 127.0.0.1:{upstream.url.rsplit(':', 1)[1]}" in tunnelled.replace('"', "")
    assert after.count("CONNECT") == tunnelled.count("CONNECT")  # NO_PROXY: straight there
    assert [(m, p) for m, p, _ in upstream.received] == [
        ("POST", "/v1/deals?x=%2F1"), ("POST", "/v1/deals?x=%2F2"),
    ]  # fmt: skip


async def test_an_http_upstream_through_http_proxy_and_upstream_proxy_over_the_environment(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    with tinyproxy(tmp_path) as (proxy_port, log):
        through = f"http://127.0.0.1:{proxy_port}"
        config = write_config(tmp_path, upstream={"api_url": upstream.url}, tokens=TOKENS)
        port = free_port()
        env = {"HTTP_PROXY": through, "http_proxy": through, "NO_PROXY": "", "no_proxy": ""}
        with serving(config, port, env=env, log=tmp_path / "a.log"):
            await wait_ready(port)
            assert await post(port, "/v1/deals?from=env") == 200
        # upstream.proxy: none goes straight there whatever the environment says
        config = write_config(
            tmp_path, upstream={"api_url": upstream.url, "proxy": "none"}, tokens=TOKENS
        )
        port = free_port()
        with serving(config, port, env=env, log=tmp_path / "b.log"):
            await wait_ready(port)
            assert await post(port, "/v1/deals?from=none") == 200
        # and a configured proxy is used with no variable set
        config = write_config(
            tmp_path, upstream={"api_url": upstream.url, "proxy": through}, tokens=TOKENS
        )
        port = free_port()
        with serving(config, port, env={"NO_PROXY": "", "no_proxy": ""}, log=tmp_path / "c.log"):
            await wait_ready(port)
            assert await post(port, "/v1/deals?from=config") == 200
        relayed = log.read_text()
    assert relayed.count("/v1/deals?from=env") == 1
    assert "/v1/deals?from=none" not in relayed
    assert relayed.count("/v1/deals?from=config") == 1
    seen = [(r.method, r.raw_path, r.body, r.header("Authorization")) for r in upstream.received]
    assert seen == [
        ("POST", f"/v1/deals?from={source}", BODY, ["Bearer writer"])
        for source in ("env", "none", "config")
    ]
