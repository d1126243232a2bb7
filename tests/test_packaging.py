"""What ships: the wheel carries the catalogue, and the Docker files point at real paths."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from proxy.config import load_config

ROOT = Path(__file__).parent.parent


def test_the_wheel_carries_the_catalogue_and_the_console_script(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = tmp_path.glob("pipedrive_scope_proxy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "pipedrive-scope-proxy = proxy.cli:main" in archive.read(entry_points).decode()
    assert "proxy/data/catalog.json" in names
    assert "proxy/stores/redis.py" in names
    assert not any(name.startswith(("catalog/", "tests/")) for name in names)


def test_dockerfile_runs_unprivileged_with_a_healthcheck_and_the_mounted_config() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (ROOT / source).exists(), source
    assert re.search(r"^FROM python:3\.\d+-slim", dockerfile, re.M)
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile
    assert "/_proxy/health" in dockerfile
    assert "PIPEDRIVE_SCOPE_PROXY_CONFIG=/etc/pipedrive-scope-proxy/proxy.yaml" in dockerfile


def test_compose_runs_the_proxy_beside_an_app_and_redis_on_a_valid_config() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"proxy", "redis", "example-app"} <= set(services)
    [mount] = services["proxy"]["volumes"]
    source, target = mount.split(":")[:2]
    assert target == "/etc/pipedrive-scope-proxy/proxy.yaml"
    config = load_config(str(ROOT / source), env={})
    assert config.store.url.startswith("redis://redis:")
