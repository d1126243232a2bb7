"""The container image, built from the Dockerfile and run, as a user's ``docker build`` and
``docker run`` would: no Docker engine is needed. ``mmdebstrap`` makes a Debian bookworm root
file system with Python, ``buildah`` commits it as a local base image and builds the Dockerfile
on it (``PYTHON_IMAGE``), then runs the image's own entrypoint and command with a mounted
config. Skipped, saying why, where buildah cannot run; ``REQUIRE_IMAGE=1`` (as CI sets) makes
that a failure.

The image is built once per build context: its storage is kept in a cache directory named by
the digest of what goes into the build (the Dockerfile, the files it copies, this module), and
the first test process to need it builds it behind a file lock while the others wait for it.
A changed context builds anew and removes the older build."""

from __future__ import annotations

import asyncio
import configparser
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import free_port, sha
from tests.fakes import FakePipedrive
from tests.processes import ROOT, write_config

pytestmark = pytest.mark.slow
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
CONFIG_IN_IMAGE = "/etc/pipedrive-scope-proxy/proxy.yaml"
TOKEN = "v1u:aW1hZ2UtdGVzdC10b2tlbg==:c2VjcmV0"


BUILDAH = shutil.which("buildah") or "buildah"
MMDEBSTRAP = shutil.which("mmdebstrap") or "mmdebstrap"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / (
    "pipedrive-scope-proxy-tests"
)
# What the Dockerfile copies (see .dockerignore), and what says how the image is built.
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "proxy", "config")


def context_digest() -> str:
    """The digest of the build context and of this module (which builds the base image)."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for name in CONTEXT:
        top = ROOT / name
        files = sorted(top.rglob("*")) if top.is_dir() else [top]
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def unavailable() -> str | None:
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install -y buildah mmdebstrap)"
    if os.geteuid() != 0:
        return "buildah --isolation chroot needs root on this machine"
    return None


@dataclass
class Image:
    """The built image and how to run things in containers made from it."""

    name: str
    storage: list[str]  # buildah's global options: its own storage, away from the host's
    config: dict[str, Any]  # the OCI image config: Entrypoint, Cmd, User, Env, ...
    # The Dockerfile's HEALTHCHECK, e.g. ["CMD", "pipedrive-scope-proxy", "health"].
    healthcheck: list[str]
    containers: list[str] = field(default_factory=list)  # made by this test process

    def buildah(self, *args: str, timeout: float = 120) -> str:
        return buildah(self.storage, *args, timeout=timeout)

    def container(self) -> str:
        """A new container from the image, removed when the module's tests are done."""
        made = self.buildah("from", self.name).strip()
        self.containers.append(made)
        return made

    def run_command(self, container: str, config: str, *command: str) -> list[str]:
        """``buildah run`` in ``container`` with ``config`` mounted where the image reads it."""
        return [
            BUILDAH, *self.storage, "run", "--isolation", "chroot",
            "--volume", f"{config}:{CONFIG_IN_IMAGE}:ro", container, "--", *command,
        ]  # fmt: skip


def buildah(storage: list[str], *args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [BUILDAH, *storage, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"buildah {args[0]}: {result.stderr[-3000:]}"
    return result.stdout


def pip_settings(work: Path) -> list[str]:
    """What pip inside the build needs to reach the package index as it does on this machine:
    the host's pip.conf (plus its PIP_* index variables) and CA bundle, mounted for the build
    only. The Dockerfile itself knows nothing of them."""
    settings = configparser.ConfigParser()
    settings.read("/etc/pip.conf")
    if not settings.has_section("global"):
        settings.add_section("global")
    for variable, key in (("PIP_INDEX_URL", "index-url"),
                          ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
                          ("PIP_TRUSTED_HOST", "trusted-host")):  # fmt: skip
        if os.environ.get(variable):
            settings.set("global", key, os.environ[variable])
    volumes = []
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.exists():
        settings.set("global", "cert", str(bundle))
        volumes += ["--volume", f"{bundle}:{bundle}:ro"]
    conf = work / "pip.conf"
    with conf.open("w") as file:
        settings.write(file)
    return [*volumes, "--volume", f"{conf}:/etc/pip.conf:ro"]


def step(message: str) -> float:
    print(f"image: {message}", flush=True)
    return time.monotonic()


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    reason = unavailable()
    if reason is not None:
        if os.environ.get("REQUIRE_IMAGE"):
            pytest.fail(f"REQUIRE_IMAGE is set, but {reason}")
        pytest.skip(reason)
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"image-{context_digest()}"
    storage = ["--root", str(work / "storage"), "--runroot", str(work / "run"),
               "--storage-driver", "vfs"]  # fmt: skip
    with (CACHE / "image.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builds; the others wait for its image
        built = work / "inspect.json"
        if not built.exists():
            for older in CACHE.glob("image-*"):
                remove_build(older)
            build(work, storage)
            built.write_text(buildah(storage, "inspect", "--type", "image", IMAGE))
        inspected = json.loads(built.read_text())
    image = Image(
        name=IMAGE,
        storage=storage,
        config=inspected["OCIv1"]["config"],
        healthcheck=inspected["Docker"]["config"]["Healthcheck"]["Test"],
    )
    try:
        yield image
    finally:
        for container in image.containers:
            subprocess.run([BUILDAH, *storage, "rm", container], capture_output=True, check=False)


IMAGE = "localhost/pipedrive-scope-proxy:test"


def build(work: Path, storage: list[str]) -> None:
    """A Debian bookworm base with Python (mmdebstrap), then the Dockerfile on it."""
    base = work / "base"
    base.mkdir(parents=True)
    started = step("mmdebstrap: a Debian bookworm root file system with Python")
    debian = subprocess.run(
        [MMDEBSTRAP, "--variant=apt", "--mode=root",
         "--include=python3,python3-venv,python3-pip,ca-certificates",
         "bookworm", str(base / "rootfs.tar"), DEBIAN_MIRROR],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert debian.returncode == 0, debian.stderr[-3000:]
    (base / "Containerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["python3"]\n')
    options = ["bud", "--isolation", "chroot", "--format", "docker"]
    buildah(storage, *options, "-t", "localhost/bookworm-python:test", str(base), timeout=300)
    (base / "rootfs.tar").unlink()
    started = step(f"base image in {time.monotonic() - started:.0f} s; building the Dockerfile")
    buildah(
        storage, *options, "--build-arg", "PYTHON_IMAGE=localhost/bookworm-python:test",
        *pip_settings(work), "-t", IMAGE, str(ROOT), timeout=900,
    )  # fmt: skip
    step(f"image built in {time.monotonic() - started:.0f} s")


def remove_build(work: Path) -> None:
    """An older build's storage: buildah's own removal first (it may hold mounts)."""
    storage = ["--root", str(work / "storage"), "--runroot", str(work / "run"),
               "--storage-driver", "vfs"]  # fmt: skip
    for cleanup in (["rm", "--all"], ["rmi", "--all", "--force"]):
        subprocess.run([BUILDAH, *storage, *cleanup], capture_output=True, check=False)
    shutil.rmtree(work, ignore_errors=True)


def start(command: list[str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True)


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # the real uid
    raise AssertionError(f"no Uid line for {pid}")


async def wait_healthy(url: str, container: subprocess.Popen[str]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as client:
        for _ in range(300):
            assert container.poll() is None, "the container exited"
            try:
                async with client.get(url) as response:
                    if response.status == 200:
                        found: dict[str, Any] = await response.json()
                        return found
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the proxy in the image did not start")


def test_the_image_is_built_as_the_dockerfile_says(image: Image) -> None:
    config = image.config
    assert config["Entrypoint"] == ["pipedrive-scope-proxy"]
    assert config["Cmd"] == ["serve"]
    user = config["User"].split(":")[0]
    assert user.isdigit(), "the user by number, so that runAsNonRoot can check it"
    assert int(user) != 0
    assert f"PIPEDRIVE_SCOPE_PROXY_CONFIG={CONFIG_IN_IMAGE}" in config["Env"]
    assert config["StopSignal"] == "SIGTERM"
    # Only the virtual environment and the config were copied in: no sources, caches or tools.
    container = image.container()
    root = Path(image.buildah("mount", container).strip())
    try:
        assert (root / CONFIG_IN_IMAGE.lstrip("/")).is_file()
        venv = root / "opt" / "pipedrive-scope-proxy"
        assert (venv / "bin" / "pipedrive-scope-proxy").is_file()
        for absent in ("src", "root/.cache/pip", "opt/pipedrive-scope-proxy/bin/pip",
                       "usr/bin/gcc", "usr/bin/git"):  # fmt: skip
            assert not (root / absent).exists(), absent
        assert "scope-proxy:x:" + user in (root / "etc" / "passwd").read_text()
        # Where a sqlite store can live: the image's user owns it.
        state = (root / "var" / "lib" / "pipedrive-scope-proxy").stat()
        assert (state.st_uid, state.st_gid) == (int(user), int(user))
    finally:
        image.buildah("umount", container)


async def test_the_image_serves_forwards_and_refuses_as_a_non_root_user(
    image: Image, upstream: FakePipedrive, tmp_path: Path
) -> None:
    # Ports the image does not default to: the HEALTHCHECK must find them in the config.
    port, admin = free_port(), free_port()
    config = write_config(
        tmp_path,
        listen={"host": "127.0.0.1", "port": port},
        admin_listen={"host": "127.0.0.1", "port": admin},
        upstream={"api_url": upstream.url, "oauth_url": upstream.url},
        tokens=[{"name": "reader", "sha256": sha(TOKEN), "scopes": ["deals:read"]}],
        store="sqlite:///var/lib/pipedrive-scope-proxy/tokens.db",  # the user's own directory
    )
    tmp_path.chmod(0o755)  # the image's user reads the mounted config
    Path(config).chmod(0o644)
    container = image.container()
    command = image.run_command(container, config, *image.config["Entrypoint"],
                                *image.config["Cmd"])  # fmt: skip
    log = tmp_path / "container.log"
    process = start(command, log)
    try:
        health = await wait_healthy(f"http://127.0.0.1:{admin}/_proxy/health", process)
        assert process_uid(health["pid"]) == int(image.config["User"].split(":")[0]) != 0

        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{admin}/_proxy/ready") as ready:
                assert (ready.status, (await ready.json())["store"]) == (200, "ok")
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            async with client.get(f"http://127.0.0.1:{port}/v1/deals/1", headers=bearer) as ok:
                assert ok.status == 200
                assert ok.headers["X-Scope-Proxy-Decision"] == "allow"
            url = f"http://127.0.0.1:{port}/api/v2/deals/1"
            async with client.delete(url, headers=bearer) as refused:
                assert refused.status == 403
                body = await refused.json()
                assert body["success"] is False
                assert body["scope_proxy"]["accepted_scopes"] == ["deals:full"]
        assert [(r.method, r.raw_path) for r in upstream.received] == [("GET", "/v1/deals/1")]

        # The image's own HEALTHCHECK, run inside the container as Docker would run it.
        kind, *check = image.healthcheck
        assert kind == "CMD"
        healthcheck = await asyncio.to_thread(
            subprocess.run, image.run_command(container, config, *check),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert healthcheck.returncode == 0, healthcheck.stdout + healthcheck.stderr
        assert f"http://127.0.0.1:{admin}/_proxy/health: status ok" in healthcheck.stdout

        # SIGTERM (docker stop) reaches the proxy: it drains and exits 0.
        os.kill(health["pid"], signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    names = [event["event"] for event in events]
    assert names[0] == "startup", names
    assert "shutting_down" in names, names
    decisions = [(e["decision"], e["reason"]) for e in events if e["event"] == "request"]
    assert decisions == [("allow", "in_scope"), ("deny", "out_of_scope")]
    assert {e["token_fp"] for e in events if e["event"] == "request"} == {sha(TOKEN)[:12]}
    assert TOKEN not in log.read_text()  # tokens only as fingerprints
