"""What ships: the wheel carries the catalogue, and the Docker files point at real paths."""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from proxy.http.forward import UpstreamClient

ROOT = Path(__file__).parent.parent


@pytest.mark.slow  # builds a wheel
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


def test_dockerfile_builds_in_stages_on_python_image_and_runs_as_a_number() -> None:
    """What the Dockerfile says, read statically; tests/test_image.py builds and runs it."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
        assert (ROOT / source).exists(), source
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", dockerfile, re.M)
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == ["${PYTHON_IMAGE}"] * 2
    assert re.search(r"^COPY --from=build /opt/pipedrive-scope-proxy ", dockerfile, re.M)
    [user] = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user
    assert re.search(r'^    CMD \["pipedrive-scope-proxy", "health"\]$', dockerfile, re.M)
    assert "PIPEDRIVE_SCOPE_PROXY_CONFIG=/etc/pipedrive-scope-proxy/proxy.yaml" in dockerfile


def test_hadolint_finds_nothing_at_warning_or_above() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    broken = (ROOT / "Dockerfile").read_text() + "RUN apt-get install -y curl\n"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "warning", "-"],
        input=broken, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "DL3008" in result.stdout  # unpinned packages: the check is awake


def test_the_benchmarks_httpx_variant_stands_in_for_the_upstream_client() -> None:
    """bench/httpx_variant.py swaps httpx in for ``UpstreamClient``: the same methods, taking
    the same arguments, or the benchmark measures error pages."""
    spec = importlib.util.spec_from_file_location(
        "httpx_variant", ROOT / "bench" / "httpx_variant.py"
    )
    assert spec is not None
    assert spec.loader is not None
    variant = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variant)
    for name in ("start", "close", "forward", "fetch"):
        ours = inspect.signature(getattr(UpstreamClient, name))
        theirs = inspect.signature(getattr(variant.HttpxUpstream, name))
        assert list(theirs.parameters) == list(ours.parameters), name
