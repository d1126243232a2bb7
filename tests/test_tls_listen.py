"""TLS on the listeners: ``listen.tls`` (and ``admin_listen.tls``), certificates made here by
openssl, clients that verify them, a SIGHUP that swaps a renewed certificate in, and
``health`` against it. ``serve`` runs as users run it."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port, sha
from tests.fakes import FakePipedrive
from tests.processes import certificate, run, serving, write_config
from tests.waiting import eventually, log_events

pytestmark = pytest.mark.slow


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def presented(port: int, cert: Path) -> bytes:
    """The certificate the listener presents, as DER, checked against ``cert``."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        trusting(cert).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


async def wait_tls(port: int, cert: Path) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(200):
            try:
                async with client.get(
                    f"https://127.0.0.1:{port}/_proxy/health", ssl=trusting(cert)
                ) as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"no TLS listener on {port}")


async def test_a_tls_listener_verified_by_a_client_and_a_renewed_certificate_swapped_in(
    tmp_path: Path, upstream: FakePipedrive
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    cert, key = certificate(first)
    renewed, renewed_key = certificate(second)
    live_cert, live_key = tmp_path / "tls.pem", tmp_path / "tls.key"
    shutil.copy(cert, live_cert)
    shutil.copy(key, live_key)
    port = free_port()
    config = write_config(
        tmp_path, listen={"host": "127.0.0.1", "port": port,
                          "tls": {"cert_file": "tls.pem", "key_file": "tls.key"}},
        upstream={"api_url": upstream.url},
        tokens=[{"name": "reader", "sha256": sha("reader"), "scopes": ["deals:read"]}],
    )  # fmt: skip
    log = tmp_path / "proxy.log"
    with serving(config, port, log=log) as proxy:
        await wait_tls(port, cert)
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"https://127.0.0.1:{port}/v1/deals/1", ssl=trusting(cert),
                       headers={"Authorization": "Bearer reader"}) as answer,
        ):  # fmt: skip
            assert answer.status == 200
        with pytest.raises(aiohttp.ClientError):  # plain HTTP on a TLS port: no answer
            async with (
                aiohttp.ClientSession() as client,
                client.get(f"http://127.0.0.1:{port}/_proxy/health") as answer,
            ):
                await answer.read()
        healthy = await asyncio.to_thread(run, "health", "--config", config)
        assert healthy.returncode == 0, healthy.stderr
        assert healthy.stdout.startswith(f"https://127.0.0.1:{port}/_proxy/health: status ok")
        assert presented(port, cert) == ssl.PEM_cert_to_DER_cert(cert.read_text())
        # a bad pair at a reload: refused, the running certificate kept
        shutil.copy(renewed, live_cert)  # with the old key: they do not belong together
        proxy.send_signal(signal.SIGHUP)
        await eventually(lambda: bool(log_events(log, "reload_failed")), "the bad pair refused")
        assert presented(port, cert) == ssl.PEM_cert_to_DER_cert(cert.read_text())
        # the renewed pair: new connections present it
        shutil.copy(renewed_key, live_key)
        proxy.send_signal(signal.SIGHUP)
        await eventually(lambda: bool(log_events(log, "reloaded")), "reloaded")
        assert presented(port, renewed) == ssl.PEM_cert_to_DER_cert(renewed.read_text())
    [failed] = log_events(log, "reload_failed")
    assert "listen.tls" in failed["problem"]
    [reloaded] = log_events(log, "reloaded")
    assert "tls" in reloaded["applied"]


def test_check_names_a_missing_or_mismatched_tls_file(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = certificate(other)
    missing = write_config(
        tmp_path, listen={"tls": {"cert_file": "nope.pem", "key_file": str(key)}}
    )
    result = run("check", "--config", missing)
    assert result.returncode == 2
    assert "listen.tls.cert_file: cannot read" in result.stderr
    mismatched = write_config(
        tmp_path, admin_listen={"port": free_port(), "tls": {"cert_file": str(cert), "key_file": str(other_key)}}
    )  # fmt: skip
    result = run("check", "--config", mismatched)
    assert result.returncode == 2
    assert result.stderr.startswith("pipedrive-scope-proxy: admin_listen.tls: cannot use ")
