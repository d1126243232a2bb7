"""An HTTPS upstream, as Pipedrive's is: the proxy verifies its certificate against the CAs the
process trusts, forwards over TLS when it verifies, and refuses (a 502, nothing sent) when it
does not. ``serve`` runs as users run it; the upstream's certificate is made here by openssl
and trusted (or not) through ``SSL_CERT_FILE``."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.conftest import envelope, free_port, sha
from tests.fakes import TlsUpstream
from tests.processes import certificate, serving, wait_ready, write_config

pytestmark = pytest.mark.slow


async def call_through(tmp_path: Path, upstream: TlsUpstream, trusted: Path) -> tuple[int, bytes]:
    port = free_port()
    config = write_config(
        tmp_path,
        upstream={"api_url": upstream.url},
        tokens=[{"name": "reader", "sha256": sha("reader"), "scopes": ["deals:read"]}],
    )
    with serving(config, port, env={"SSL_CERT_FILE": str(trusted)}, log=tmp_path / "log"):
        await wait_ready(port)
        async with (
            aiohttp.ClientSession() as client,
            client.get(
                f"http://127.0.0.1:{port}/api/v2/deals/42",
                headers={"Authorization": "Bearer reader"},
            ) as answer,
        ):
            return answer.status, await answer.read()


async def test_a_call_goes_over_tls_to_an_upstream_whose_certificate_verifies(
    tmp_path: Path, tls_upstream: tuple[TlsUpstream, Path]
) -> None:
    upstream, cert = tls_upstream
    status, body = await call_through(tmp_path, upstream, trusted=cert)
    assert (status, envelope(body)["data"]) == (200, {"id": 42})
    assert upstream.received == [("GET", "/api/v2/deals/42", upstream.url.removeprefix("https://"))]


async def test_an_upstream_whose_certificate_does_not_verify_gets_nothing(
    tmp_path: Path, tls_upstream: tuple[TlsUpstream, Path]
) -> None:
    upstream, _ = tls_upstream
    (tmp_path / "other").mkdir()
    other, _ = certificate(tmp_path / "other")  # a certificate, but not the upstream's
    status, body = await call_through(tmp_path, upstream, trusted=other)
    assert (status, envelope(body)["scope_proxy"]["reason"]) == (502, "upstream_unavailable")
    assert "certificate did not verify" in envelope(body)["error"]  # not "cannot connect"
    assert upstream.received == []
