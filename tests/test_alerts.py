"""The example alert rules (deploy/prometheus/): valid for Prometheus' promtool, their unit
tests passing, and every metric they name one the proxy exports."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ProxyFactory, grants
from tests.processes import ROOT

RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS_OWN = {"up"}  # what Prometheus itself records about a scrape


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (apt-get install -y prometheus)")
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent, check=False
    )


def test_the_rules_pass_promtool_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts.test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


async def test_every_metric_the_rules_name_is_one_the_proxy_exports(
    make_proxy: ProxyFactory,
) -> None:
    client = await make_proxy(tokens=grants(reader=["deals:read"]))
    await client.get("/v1/deals/1", headers={"Authorization": "Bearer reader"})  # upstream latency
    exported = set(
        re.findall(
            r"^# TYPE (\S+) (\S+)$", await (await client.get("/_proxy/metrics")).text(), re.M
        )
    )
    names = set()
    for name, kind in exported:
        names |= {name} | ({f"{name}_total"} if kind == "counter" else set())
        names |= (
            {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else set()
        )
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert len(rules) >= 8
    named = set()
    for rule in rules:
        named |= set(re.findall(r"\b([a-z_]+)\{", rule["expr"])) | set(
            re.findall(r"\b((?:scope_proxy|process)_[a-z_]+)\b", rule["expr"])
        )
    unknown = (
        named - names - PROMETHEUS_OWN - {"rate", "increase", "sum", "min", "histogram_quantile"}
    )
    assert not unknown, f"the rules name metrics the proxy does not export: {sorted(unknown)}"
